"""tuned(..., cuda_graphs=True): one graph per encode batch size and per prompt shape, same numbers as without.

The CPU tests run the graphs' static-shape code without a graph (split preprocessing, packed prompt
buffers, the host-sync-free prompt encoder) against the plain segmenter; the GPU tests compare graph
replays with the same segmenter's un-graphed path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.fast import tuned
from models.click_refiner import refiner_for
from models.prompts import Prompts
from tests.conftest import PARITY

GOLDEN = PARITY / "litemedsam_real" / "golden.npz"


def _prompt_sets(g) -> dict[str, Prompts]:
    """Every prompt kind the UI sends: box, clicks without a box (SAM pads them), box + click, mask fed back."""
    return {
        "box": Prompts(box=g["box__box"]),
        "one click": Prompts(points=g["point1__point_coords"], point_labels=g["point1__point_labels"]),
        "two clicks": Prompts(points=g["points2__point_coords"], point_labels=g["points2__point_labels"]),
        "box + click": Prompts(
            points=g["box_point__point_coords"], point_labels=g["box_point__point_labels"], box=g["box_point__box"]
        ),
        "clicks + mask": Prompts(
            points=g["mask__point_coords"], point_labels=g["mask__point_labels"], mask_logits=g["mask__mask_input"]
        ),
    }


@pytest.fixture(scope="module")
def golden_embedding(litemedsam):
    """The plain segmenter's embedding of the golden slice: the reference of three tests below, encoded once."""
    return litemedsam.embed(np.load(GOLDEN)["image"])


def test_static_decoder_equals_the_plain_prompt_encoder_and_decoder(litemedsam_base):
    """The prompt encoder without boolean indexing + packed point buffers: bit-identical logits and IoU
    (the base model: no click refiner, so every prompt kind goes through the static path)."""
    g = np.load(GOLDEN)
    emb = litemedsam_base.embed(g["image"])
    fast = tuned(litemedsam_base, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)
    fast.decode_prompts.fallback = None  # the static path must answer every prompt here
    for name, prompts in _prompt_sets(g).items():
        for multimask in (False, True):
            ref_logits, ref_iou = litemedsam_base.decode_prompts(emb, prompts, multimask)
            logits, iou = fast.decode_prompts(emb, prompts, multimask)
            assert torch.equal(logits, ref_logits), (name, multimask)
            assert torch.equal(iou, ref_iou), (name, multimask)
    result = fast.predict(emb, _prompt_sets(g)["box"])
    assert np.array_equal(result.masks, litemedsam_base.predict(emb, _prompt_sets(g)["box"]).masks)


def test_graphs_take_every_prompt_the_click_model_and_the_base_decoder_answer(litemedsam, golden_embedding):
    """With the shipped click model, a box alone (propagation's prompt) goes through the base decoder's graph and
    every point or mask prompt through the click refiner's, residual add included, as ``Segmenter.decode_prompts``
    routes them: bit-identical logits and IoU, nothing left to the eager fallback. Before, the click model's
    prompts all fell back, so a GPU click ran ~150 eager kernels (docs/benchmarks.md, H)."""
    g = np.load(GOLDEN)
    emb = golden_embedding
    fast = tuned(litemedsam, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)
    fast.decode_prompts.fallback = None  # the static path must answer every prompt here
    routes = set()
    for name, prompts in _prompt_sets(g).items():
        for multimask in (False, True):
            routes.add(refiner_for(litemedsam.model, prompts, multimask) is not None)
            logits, iou = fast.decode_prompts(emb, prompts, multimask)
            ref_logits, ref_iou = litemedsam.decode_prompts(emb, prompts, multimask)
            assert torch.equal(logits, ref_logits) and torch.equal(iou, ref_iou), (name, multimask)
    assert routes == {True, False}  # both decoders were exercised
    one = _prompt_sets(g)["clicks + mask"]
    assert np.array_equal(fast.predict(emb, one).masks, litemedsam.predict(emb, one).masks)


def test_graph_ready_embed_equals_embed_for_any_slice_shape(litemedsam, golden_embedding):
    """The split preprocessing (host half into fixed 256 x 256 buffers, device half after the copy) gives
    the plain embedding for a slice that needs a resize and padding and for one that needs neither."""
    rng = np.random.default_rng(0)
    images = [np.load(GOLDEN)["image"], (rng.random((256, 256)) * 255).astype(np.uint8)]
    fast = tuned(litemedsam, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)
    references = [golden_embedding, litemedsam.embed(images[1])]
    for image, reference in zip(images, references):
        emb = fast.embed(image)
        assert emb.original_size == image.shape[:2]
        assert torch.equal(emb.features, reference.features)


def test_a_padded_batch_returns_each_slices_own_embedding(litemedsam, golden_embedding, monkeypatch):
    """Three slices of different shapes run in the batch-4 graph: each comes back as its own embedding,
    the spare row dropped, and a later batch reuses the buffers without leaking the earlier rows."""
    from runtime import cuda_graphs
    from runtime.cuda_graphs import POWERS_OF_TWO, graph_batch

    assert [graph_batch(n, POWERS_OF_TWO) for n in (1, 2, 3, 5, 33, 64, 65)] == [1, 2, 4, 8, 64, 64, None]
    assert [graph_batch(n) for n in (1, 2)] == [1, None]  # the default: batch 1 only, until measured on a GPU
    monkeypatch.setattr(cuda_graphs, "GRAPH_BATCHES", POWERS_OF_TWO)
    rng = np.random.default_rng(2)
    images = [np.load(GOLDEN)["image"], (rng.random((200, 300)) * 255).astype(np.uint8), (rng.random((256, 256, 3)) * 255).astype(np.uint8)]
    fast = tuned(litemedsam, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)
    reference = [golden_embedding.features] + [litemedsam.embed(im).features for im in images[1:]]
    for order in ([0, 1, 2], [2, 0, 1]):  # the 4-row buffers twice, the slices in another order
        embs = fast.embed_batch([images[i] for i in order])
        assert len(embs) == 3
        for i, emb in zip(order, embs):
            assert emb.original_size == images[i].shape[:2]
            assert torch.allclose(emb.features, reference[i], atol=1e-5, rtol=0), (order, i)


def test_cuda_graphs_refuse_a_graph_compile_mode(litemedsam):
    with pytest.raises(ValueError, match="cuda_graphs"):
        tuned(litemedsam, compile="reduce-overhead", cuda_graphs=True)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_litemedsam():
    from models.registry import load_segmenter

    return load_segmenter("litemedsam", device="cuda")


@pytest.mark.gpu
@gpu
def test_graphed_embed_replays_equal_the_ungraphed_encode(cuda_litemedsam):
    """One graph serves every slice shape; each replay equals the same segmenter's un-graphed path, and
    an embedding returned earlier is not overwritten by later replays."""
    fast = tuned(cuda_litemedsam, precision="bf16", cast_weights=True, cuda_graphs=True)
    rng = np.random.default_rng(1)
    images = [np.load(GOLDEN)["image"]] + [(rng.random(s) * 255).astype(np.uint8) for s in [(256, 256, 3), (512, 200)]]
    first = [fast.embed(im) for im in images]
    kept = [e.features.clone() for e in first]
    for _ in range(3):
        for im, e in zip(images, first):
            again = fast.embed(im).features
            ref = fast.embed_features.fallback([np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im])[0]
            assert torch.equal(again, ref)
            assert torch.equal(again, e.features)
    for e, k in zip(first, kept):
        assert torch.equal(e.features, k)


@pytest.mark.gpu
@gpu
def test_batched_graph_replays_equal_the_ungraphed_encode_of_the_padded_batch(cuda_litemedsam):
    """A volume's batches (propagation) can replay as graphs (GRAPH_BATCHES = POWERS_OF_TWO): the rows equal the
    un-graphed encode of the same padded batch bit for bit, and a box's mask on each real MR slice keeps Dice >= 0.99
    with the mask from the unpadded eager batch."""
    from dataclasses import replace

    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb
    from runtime import cuda_graphs
    from tests.conftest import ROOT

    saved = cuda_graphs.GRAPH_BATCHES
    cuda_graphs.GRAPH_BATCHES = cuda_graphs.POWERS_OF_TWO
    try:
        fast = tuned(cuda_litemedsam, precision="fp16", cuda_graphs=True)
    finally:
        cuda_graphs.GRAPH_BATCHES = saved
    mr = read_study(ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz")
    window = default_window(mr)
    rgb = [slice_to_rgb(mr, k, window) for k in range(21)]
    h, w = rgb[0].shape[:2]
    box = Prompts(box=np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4], np.float32))
    for n, size in ((3, 4), (21, 32)):
        got = fast.embed_features(rgb[:n])[0]
        padded = fast.embed_features.fallback(rgb[:n] + [rgb[0]] * (size - n))[0][:n]
        assert torch.equal(got, padded), n
        eager = fast.embed_features.fallback(rgb[:n])[0]
        template = fast.embed_batch([rgb[0]])[0]
        for b in range(n):
            a, e = (fast.predict(replace(template, features=f[b : b + 1]), box).best_mask for f in (got, eager))
            assert 2 * (a & e).sum() / max(a.sum() + e.sum(), 1) >= 0.99, (n, b)


@pytest.mark.gpu
@gpu
def test_graphed_decoder_replays_equal_the_ungraphed_decoder(cuda_litemedsam):
    g = np.load(GOLDEN)
    fast = tuned(cuda_litemedsam, precision="bf16", cast_weights=True, cuda_graphs=True)
    emb = fast.embed(g["image"])
    earlier = None
    for _ in range(2):
        for name, prompts in _prompt_sets(g).items():
            for multimask in (False, True):
                logits, iou = fast.decode_prompts(emb, prompts, multimask)
                ref_logits, ref_iou = fast.decode_prompts.fallback(emb, prompts, multimask)
                assert torch.equal(logits, ref_logits), (name, multimask)
                assert torch.equal(iou, ref_iou), (name, multimask)
                if earlier is None:
                    earlier = (logits, logits.clone())
    assert torch.equal(*earlier)  # later replays did not write into a returned result


@pytest.mark.gpu
@gpu
def test_graphs_captured_while_other_threads_use_the_gpu_replay_equal(cuda_litemedsam):
    """A server meets a new prompt shape while other sessions encode and decode: its graph is captured with
    their GPU work in flight. Session 8's 20-session run failed there once (cudaErrorStreamCaptureInvalidated,
    the capture's default "global" mode); every capture here must succeed and replay the eager numbers."""
    import threading

    g = dict(np.load(GOLDEN))  # read now: an NpzFile read lazily from 3 threads fails in zlib (H100, session 12)
    fast = tuned(cuda_litemedsam, precision="fp16", cuda_graphs=True)
    emb = fast.embed(g["image"])
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy() -> None:  # another session: eager encodes and decodes, back to back
        try:
            while not stop.is_set():
                fast.embed_features.fallback([g["image"]] * 4)
                fast.decode_prompts.fallback(emb, _prompt_sets(g)["two clicks"], False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 7):  # a new shape each time: n clicks, with and without the fed-back mask
            points = np.array([[100.0 + 10 * i, 120.0] for i in range(n)], np.float32)
            labels = np.array([1] * n, np.int64)
            for mask in (None, g["mask__mask_input"]):
                prompts = Prompts(points=points, point_labels=labels, mask_logits=mask)
                logits, iou = fast.decode_prompts(emb, prompts, False)
                ref_logits, ref_iou = fast.decode_prompts.fallback(emb, prompts, False)
                assert torch.equal(logits, ref_logits) and torch.equal(iou, ref_iou), (n, mask is None)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]


@pytest.mark.gpu
@gpu
def test_a_batching_runner_on_torch_fp16_sends_prompts_straight_to_the_graphs():
    """``ModelRunner(batch_window_ms=4)`` on the GPU default: the click model's prompts replay its graphs one at a
    time, never through the decode batcher (issue 22: the batcher lost to one at a time on an H100,
    docs/benchmarks.md H), and the server's start-up line says so."""
    from app.interaction import ModelRunner

    runner = ModelRunner("cuda", backend="torch-fp16", batch_window_ms=4)
    assert runner.backend_choice("litemedsam").backend == "torch-fp16"
    assert not runner.batches_decodes("litemedsam")
    assert "prompts one at a time" in runner.serving("litemedsam")
    assert runner.segmenter("litemedsam").decodes_refiner
