"""The walk rule of SAM 2 propagation (app/propagation_memory.py) on a scripted tracker: where walks start, stop
and how far they go. The official predictor's frame order is reproduced by the fake (``propagate_in_video``:
forward from ``start`` to ``min(start + max_frames, n - 1)``; reverse down to ``max(start - max_frames, 0)``,
nothing when ``start`` is 0). The real tracker is exercised end to end in test_propagation_sam2.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.propagation import PropagationSettings, propagate
from data.volume import Volume
from models.prompts import Prompts

N, H, W = 10, 8, 8
PRESENT = range(2, 7)  # the structure is on slices 2..6


class ScriptedTracker:
    def __init__(self, predictor, frames, h, w):
        self.cond: set[int] = set()
        self.calls: list[tuple[bool, int | None, int | None]] = []

    def _logits(self, k: int) -> np.ndarray:
        out = np.full((H, W), -5.0, np.float32)
        if k in PRESENT:
            out[2:6, 2:6] = 5.0
        return out

    def add_prompt(self, k, points=None, labels=None, box=None):
        self.cond.add(k)
        return self._logits(k)

    def add_mask(self, k, mask):
        self.cond.add(k)
        return np.where(mask, 5.0, -5.0).astype(np.float32)

    def object_score(self, k):
        return 0.9 if k in PRESENT else 0.1

    def propagate(self, *, reverse, start=None, max_frames=None):
        self.calls.append((reverse, start, max_frames))
        start = min(self.cond) if start is None else start
        max_frames = N if max_frames is None else max_frames
        order = (range(start, max(start - max_frames, 0) - 1, -1) if start > 0 else []) if reverse else \
            range(start, min(start + max_frames, N - 1) + 1)
        for k in order:
            yield k, self._logits(k)


@pytest.fixture
def segmenter(monkeypatch):
    import models.sam2_memory

    monkeypatch.setattr(models.sam2_memory, "MemoryTracker", ScriptedTracker)
    return SimpleNamespace(memory_tracking=True, variant=SimpleNamespace(preprocessing="image_predictor"),
                           frame_tensor=lambda rgb: None, device="cpu", model=None, name="fake")


@pytest.fixture
def volume():
    return Volume(array=np.zeros((N, H, W), np.float32), modality="CT")


def slices(result) -> list[int]:
    return result.slices


def test_walks_stop_where_the_object_is_gone(segmenter, volume):
    result = propagate(segmenter, volume, 4, Prompts(box=np.array([2.0, 2.0, 5.0, 5.0])), window=None)
    assert slices(result) == [2, 3, 4, 5, 6]
    assert result.stopped == {"up": "no object", "down": "no object"}
    assert result.scores[7] == pytest.approx(0.1) and result.scores[1] == pytest.approx(0.1)
    assert not result.masks[7].any() and not result.masks[1].any()  # the slice that stopped the walk stays empty


def test_max_slices_caps_each_walk(segmenter, volume):
    result = propagate(segmenter, volume, 4, Prompts(box=np.array([2.0, 2.0, 5.0, 5.0])), window=None,
                       settings=PropagationSettings(max_slices=1))
    assert slices(result) == [3, 4, 5]
    assert result.stopped == {"up": "max slices", "down": "max slices"}


def test_gaps_between_anchors_are_filled_even_without_the_up_walk(segmenter, volume):
    drawn = np.zeros((H, W), bool)
    drawn[1:7, 1:7] = True
    result = propagate(segmenter, volume, 2, start_mask=drawn, anchors={5: drawn}, window=None,
                       directions=("down",), settings=PropagationSettings(max_slices=3))
    assert result.anchors == [2, 5]
    assert np.array_equal(result.masks[2], drawn) and np.array_equal(result.masks[5], drawn)  # kept as drawn
    assert result.masks[3].any() and result.masks[4].any()  # the gap, from memory
    assert not result.masks[6].any()  # no "up" walk beyond the highest anchor, --max-slices notwithstanding
    assert result.stopped == {"gap 2..5": "filled", "down": "no object"}


def test_an_empty_start_propagates_nothing(segmenter, volume):
    result = propagate(segmenter, volume, 8, Prompts(box=np.array([2.0, 2.0, 5.0, 5.0])), window=None)
    assert slices(result) == [] and result.stopped == {"up": "empty start", "down": "empty start"}
