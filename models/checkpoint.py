"""Safe checkpoint loading: weights-only, strict key check that names differences, sha256 pins."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message says which file and what to do."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path, *, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.pth``/``.pt`` (weights-only) or ``.safetensors``.

    Accepts a plain state dict or one wrapped as ``{'model': sd}`` / ``{'state_dict': sd}``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if expected_sha256 is not None:
        digest = sha256_of(path)
        if digest != expected_sha256:
            raise CheckpointError(
                f"checkpoint {path} has sha256 {digest}, expected {expected_sha256}: "
                "the file is corrupt or a different model; fetch it again (make weights)"
            )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # a refused class is named as a "global"; else corrupt
            raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch file (corrupt or not a checkpoint)") from e
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects that a weights-only load refuses "
            f"(often an optimizer). If you trust this file, convert it once with: "
            f"medseg convert-checkpoint {path} {path.with_suffix('.safetensors')} --trust"
        ) from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch file: {e}") from e
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: str | Path = "<memory>") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return dict(obj)


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, model_name: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names missing, unexpected and misshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"checkpoint {source} does not fit model {model_name!r} ({'; '.join(parts)}); "
            "is it the checkpoint of another model?"
        )
    model.load_state_dict(state_dict, strict=True)
