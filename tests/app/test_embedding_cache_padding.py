"""A volume's short last batch on a GPU is padded to the batch size; each slice keeps its own embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import app.embedding_cache as embedding_cache
from app.embedding_cache import EmbeddingCache
from data.volume import Volume
from data.windowing import Window
from models.segmenter import Embedding


class RecordingEncoder:
    """Stands in for a segmenter: records each batch's slices, and embeds a slice as its mean intensity
    (so a wrong slice under a key shows as a wrong number)."""

    name = "recorder"

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.batches: list[list[float]] = []

    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        means = [float(im.mean()) for im in images]
        self.batches.append(means)
        return [Embedding(features=torch.full((1, 1, 1, 1), m), original_size=(4, 4), input_size=(4, 4), model_name=self.name)
                for m in means]


@pytest.fixture
def volume() -> Volume:
    # slice k is constant 20 * k: its window-mapped mean differs from every other slice's
    return Volume(array=np.stack([np.full((4, 4), 20 * k, np.int16) for k in range(7)]), modality="CT")


def encode(device: str, volume: Volume, slices: list[int], pad: bool, monkeypatch) -> tuple[RecordingEncoder, dict]:
    monkeypatch.setattr(embedding_cache, "PAD_SHORT_GPU_BATCHES", pad)
    seg = RecordingEncoder(device)
    window = Window(0.0, 200.0)
    return seg, EmbeddingCache(16).embeddings(seg, volume, slices, window, batch_size=4)


def test_a_short_last_batch_on_the_gpu_runs_at_the_batch_size_and_keeps_each_slices_embedding(volume, monkeypatch):
    reference, ref = encode("cpu", volume, list(range(7)), False, monkeypatch)
    seg, out = encode("cuda", volume, list(range(7)), True, monkeypatch)
    assert [len(b) for b in seg.batches] == [4, 4]  # 4 + 3, the 3 padded with the last slice
    assert seg.batches[1][3] == seg.batches[1][2]
    assert sorted(out) == list(range(7))
    assert {k: float(e.features) for k, e in out.items()} == {k: float(e.features) for k, e in ref.items()}
    assert [len(b) for b in reference.batches] == [4, 3]  # on the CPU a padded slice would cost a whole encode


@pytest.mark.parametrize("slices, sizes", [([2], [1]), ([0, 1, 2, 3], [4])])
def test_a_lone_slice_and_a_full_batch_are_not_padded(volume, monkeypatch, slices, sizes):
    seg, out = encode("cuda", volume, slices, True, monkeypatch)
    assert [len(b) for b in seg.batches] == sizes and sorted(out) == slices


def test_padding_is_on_by_default_and_can_be_switched_off(volume, monkeypatch):
    assert embedding_cache.PAD_SHORT_GPU_BATCHES  # measured on an H100: the first propagation 3.06 -> 1.82 s
    seg, _ = encode("cuda", volume, list(range(7)), False, monkeypatch)
    assert [len(b) for b in seg.batches] == [4, 3]
