"""LiteMedSAM's host preprocessing in threads (batches of PARALLEL_MIN_ITEMS and more) and, on CUDA, through
pinned memory with a non-blocking copy: the same bytes and the same embeddings as the serial, pageable path.

Real slices of several sizes: CT 256 x 256 (no resize), MR 217 x 181 and Shepp-Logan 400 x 400 (resize and
padding), the parity slice 300 x 400, and a constant slice (span clipped to 1e-8).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import models.litemedsam as lm
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from tests.conftest import DATA, PARITY


def _volume_slices(name: str, ks) -> list[np.ndarray]:
    volume = read_study(DATA / name)
    window = default_window(volume)
    return [slice_to_rgb(volume, k, window) for k in ks]


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    """19 slices of 5 sizes, interleaved so every thread's chunk mixes them."""
    ct = _volume_slices("ct_head_0051_slabA_image.nii.gz", range(8, 16))
    mr = _volume_slices("mr_t1_colin27_slabA_image.nii.gz", range(10, 18))
    out = [im for pair in zip(ct, mr) for im in pair]
    out += _volume_slices("synthetic_shepp_logan_image.nii.gz", [0])
    out.append(np.load(PARITY / "litemedsam_real" / "golden.npz")["image"])
    out.append(np.full((64, 64, 3), 7, np.uint8))
    assert len({im.shape for im in out}) == 5
    return out


@pytest.fixture()
def two_workers(monkeypatch):
    """Threads even on a 1-core runner (2 at most: this machine's budget)."""
    monkeypatch.setattr(lm, "WORKERS", 2)


def _serial(monkeypatch) -> None:
    monkeypatch.setattr(lm, "PARALLEL_MIN_ITEMS", 10**9)


def test_threaded_host_inputs_equal_the_serial_ones_bit_for_bit(litemedsam, slices, two_workers, monkeypatch):
    threaded = litemedsam.upstream_host_inputs(slices)
    _serial(monkeypatch)
    serial = litemedsam.upstream_host_inputs(slices)
    assert threaded.keys() == serial.keys() == {"pixels", "lo", "span", "size"}
    for k in serial:
        assert threaded[k].dtype == serial[k].dtype and threaded[k].shape == serial[k].shape, k
        assert np.array_equal(threaded[k], serial[k]), k


def test_host_inputs_follow_medsam_and_overwrite_every_byte(litemedsam, slices, two_workers):
    """Buffers start uninitialised (and pinned ones are recycled): filled over 0xFF garbage, each slice
    holds its INTER_AREA resize, zeros in the padding, its min and max - min and its resized size."""
    n = len(slices)
    out = {k: np.empty((n, *shape), dtype) for k, (shape, dtype, _) in lm.HOST_LAYOUT.items()}
    for v in out.values():
        v.view(np.uint8)[...] = 0xFF
    litemedsam._fill_host_inputs(slices, out)
    for i, image in enumerate(slices):
        h, w = image.shape[:2]
        newh, neww = int(h * 256 / max(h, w) + 0.5), int(w * 256 / max(h, w) + 0.5)  # segment_anything rounding
        small = image if (newh, neww) == (h, w) else cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
        expected = np.zeros((256, 256, 3), np.uint8)
        expected[:newh, :neww] = small
        assert np.array_equal(out["pixels"][i], expected), i
        assert out["lo"][i] == small.min()
        assert out["span"][i] == max(float(small.max()) - float(small.min()), np.float32(1e-8))
        assert tuple(out["size"][i]) == (newh, neww)


def test_embed_batch_is_unchanged_by_the_threads(litemedsam, slices, two_workers, monkeypatch):
    monkeypatch.setattr(lm, "PARALLEL_MIN_ITEMS", 2)  # two slices threaded: 4 CPU encodes, not 16
    batch = slices[:2]  # CT as is, MR resized and padded
    threaded = litemedsam.embed_batch(batch)
    _serial(monkeypatch)
    serial = litemedsam.embed_batch(batch)
    for a, b in zip(threaded, serial):
        assert a.input_size == b.input_size
        assert torch.equal(a.features, b.features)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_litemedsam():
    from models.registry import load_segmenter

    return load_segmenter("litemedsam", device="cuda")


def _pageable_inputs(segmenter, images: list[np.ndarray]) -> torch.Tensor:
    """The path before pinning: a blocking copy from pageable numpy arrays."""
    host = segmenter.upstream_host_inputs(images)
    return segmenter.upstream_device_inputs(**{k: torch.from_numpy(v).to(segmenter.device) for k, v in host.items()})


@pytest.mark.gpu
@gpu
def test_pinned_non_blocking_inputs_give_the_pageable_embedding(cuda_litemedsam, slices):
    """Several batches queued back to back without a synchronisation (pinned buffers freed and recycled
    while their copies may still be in flight): each equals the pageable path, input and embedding."""
    seg = cuda_litemedsam
    batches = [slices[s : s + 9] for s in range(0, len(slices) - 8, 2)]  # overlapping, all threaded
    with torch.inference_mode():
        queued = [seg.preprocess_batch(b) for b in batches]
        embeddings = [seg.embed_batch(b) for b in batches]
        torch.cuda.synchronize()
        for b, x, embs in zip(batches, queued, embeddings):
            ref = _pageable_inputs(seg, b)
            assert torch.equal(x, ref)
            ref_features = seg.encode(ref)[0]
            for i, e in enumerate(embs):
                assert torch.equal(e.features, ref_features[i : i + 1])
