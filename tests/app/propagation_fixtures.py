"""Fixtures the propagation tests share: the 12-slice CT series of the shared data and its head mask."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from data.readers import read_study
from tests.conftest import DATA

CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


@pytest.fixture(scope="module")
def ct():
    return read_study(CT_SERIES)


@pytest.fixture(scope="module")
def head():
    """Head (label 1 or 2) on the series grid: k 12..23 of the slab labels."""
    return np.isin(read_study(DATA / "ct_head_0051_slabA_label.nii.gz").array[12:24], (1, 2))


def held_walk(runner, session, k: int, at: int = 1, **kwargs):
    """Start a background propagation from slice ``k`` that waits after ``at`` slices until released, so a test can
    act while it runs: (job, release). Started under the session's lock, as the UI starts it."""
    from app.propagation_job import start_propagation

    reached, release = threading.Event(), threading.Event()

    def hold(job):
        if job.done >= at and not release.is_set():
            reached.set()
            release.wait(600)

    with session.lock:
        job = start_propagation(runner, session, k, observe=hold, **kwargs)
    assert reached.wait(600)
    return job, release


def cli_meets_the_cache(monkeypatch, cache) -> None:
    """``medseg propagate`` walks with the shared CT cache (``ct_series_embeddings``) instead of encoding the series
    again (8 to 12 encodes a run). The cache is keyed by the volume's voxels and geometry, the slice, the model and
    the window: a slice the command read, windowed or modelled otherwise than the app would miss, be encoded, and
    show as more than the series' 12 misses, which the tests using this assert against."""
    import app.commands.propagate

    monkeypatch.setattr(app.commands.propagate, "EmbeddingCache", lambda max_items: cache)
