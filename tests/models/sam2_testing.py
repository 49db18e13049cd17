"""A SAM 2.1 Hiera-T registered at a small input size, with synthetic weights, for CPU tests.

The network is the package's tiny config with the three overrides of MedSAM2's 512 config, at
256 (``tests.models.sam2_official.size_overrides``); its checkpoint is saved in the official file
form (``{'model': state_dict}``) and loaded through ``load_segmenter`` (weights-only, strict).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from models.registry import REGISTRY, ModelSpec, get_spec

TEST_MODEL = "sam2.1_hiera_tiny_test256"
TEST_SIZE = 256


def _build(state: dict[str, torch.Tensor], device: str):
    from dataclasses import replace

    from models.checkpoint import load_strict
    from models.sam2_hiera import SAM2_VARIANTS, Sam2Segmenter, build_sam2_network

    variant = replace(SAM2_VARIANTS["sam2.1_hiera_tiny"], name=TEST_MODEL, image_size=TEST_SIZE)
    model = build_sam2_network(variant)
    load_strict(model, state, source=f"{TEST_MODEL} checkpoint", model_name=TEST_MODEL)
    return Sam2Segmenter(model, variant=variant, device=device)


@contextmanager
def registered_test_model() -> Iterator[str]:
    """The 256 test variant in the registry for the duration of the block (other tests list the registry)."""
    get_spec("litemedsam")  # the built-in variants first
    REGISTRY[TEST_MODEL] = ModelSpec(
        name=TEST_MODEL, description="SAM 2.1 Hiera-T at 256 (tests only)", weight_file="none.pt",
        build=_build, input_size=TEST_SIZE,
    )
    try:
        yield TEST_MODEL
    finally:
        REGISTRY.pop(TEST_MODEL, None)


def save_synthetic_checkpoint(folder: Path) -> Path:
    """The synthetic weights of the official 256 tiny network, saved as the official file form."""
    from tests.models.sam2_official import official_model

    model = official_model(video=True, image_size=TEST_SIZE)
    path = folder / "sam2.1_hiera_tiny_test256.pt"
    torch.save({"model": model.state_dict()}, path)
    return path

