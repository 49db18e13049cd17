"""Shared test fixtures: paths to the real data and weights, one loaded LiteMedSAM per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEDSEG_SHARED", ROOT.parent / "shared"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
DATA = SHARED / "data"
PARITY = SHARED / "parity"
SAMPLES = ROOT / "samples"

# The goldens were made with 2 threads; fix the count so numbers are comparable run to run.
torch.set_num_threads(int(os.environ.get("MEDSEG_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM (upstream pipeline) on the CPU, loaded once."""
    from models.registry import load_segmenter

    return load_segmenter("litemedsam", device="cpu")
