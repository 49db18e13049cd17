"""The shipped click model: LiteMedSAM's click refiner, on by default for model ``litemedsam``.

``weights/click_model/`` (in the repository, no download) holds ``click_model.safetensors`` (the
refiner's tensors: a residual copy of the prompt encoder and mask decoder, see
``models.click_refiner``) and ``adapter.json`` (its sha256, the base weights' sha256, every
training volume with package, version, path and sha256, and the measured results).

Loading checks both digests: a changed weights file is refused (CheckpointError naming the file);
base weights other than the ones it was trained on get no refiner (``attach_click_model`` returns
False), since a refiner on other embeddings would give wrong masks. ``litemedsam-base`` is the
plain base model (parity checks, ``--no-click-model``). A box alone never reaches the refiner,
so box masks are the base model's bit for bit.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from torch import nn

from models.click_refiner import ATTRIBUTE, ClickRefiner
from models.checkpoint import CheckpointError, sha256_of

log = logging.getLogger(__name__)
CLICK_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "click_model"
WEIGHTS_FILE = "click_model.safetensors"
META_FILE = "adapter.json"
PREFIX = f"{ATTRIBUTE}."


def read_meta(directory: Path = CLICK_MODEL_DIR) -> dict:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the click model's metadata ({e})") from e
    for key in ("base_model", "base_sha256", "weights_sha256", "scope"):
        if key not in meta:
            raise CheckpointError(f"{path} lacks the field {key!r}")
    return meta


@functools.lru_cache(maxsize=2)
def _load_state(directory: str, expected_sha256: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"the click model {path} is missing; it ships with the repository (git checkout weights/)")
    digest = sha256_of(path)
    if digest != expected_sha256:
        raise CheckpointError(
            f"{path} has sha256 {digest}, but {Path(directory) / META_FILE} records {expected_sha256}: "
            "the file is damaged or was replaced; restore it with git checkout weights/click_model"
        )
    return {k: v.float() for k, v in load_file(str(path)).items()}


def build_refiner(model: nn.Module, state: dict[str, torch.Tensor], scope: str = "prompts") -> ClickRefiner:
    """A ClickRefiner shaped after ``model``'s decoder, loaded (strict) from refiner tensors."""
    refiner = ClickRefiner(model.prompt_encoder, model.mask_decoder, scope=scope)
    inner = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    try:
        refiner.load_state_dict(inner, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the click model does not fit this decoder: {e}") from e
    return refiner.eval().requires_grad_(False)


def attach_click_model(model: nn.Module, base_sha256: str, directory: Path = CLICK_MODEL_DIR) -> bool:
    """Put the shipped refiner on ``model`` (in place) when ``base_sha256`` is what it was trained on."""
    meta = read_meta(directory)
    if base_sha256 != meta["base_sha256"]:
        log.warning("base weights sha256 %s differ from the click model's (%s): clicks use the base decoder",
                    base_sha256[:12], meta["base_sha256"][:12])
        return False
    state = _load_state(str(Path(directory)), meta["weights_sha256"])
    device = next(model.parameters()).device
    refiner = build_refiner(model, state, meta["scope"]).to(device)
    refiner.weights_file = Path(directory) / WEIGHTS_FILE  # what exports of it are checked against (runtime/)
    setattr(model, ATTRIBUTE, refiner)
    return True


def refiner_state(refiner: ClickRefiner, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """What ``click_model.safetensors`` holds: the refiner's tensors under ``click_refiner.``."""
    return {PREFIX + k: v.detach().to(dtype).contiguous().cpu() for k, v in refiner.state_dict().items()}
