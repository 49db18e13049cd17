"""Many sessions' prompts decoded together (models/decode_many.py, app/decode_batcher.py's worker): each
request's mask is the one it gets alone, requests of one prompt shape share a decoder call, and a bad
request fails alone. Real LiteMedSAM with its click model, real slices of the shared set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.manifest import CaseLoader, read_manifest
from models.prompts import PromptError, Prompts
from models.registry import get_spec
from tests.conftest import DATA

MANIFEST = DATA / "manifest.csv"
CASES = ("mr_t1_colin27_slabA_thalamus_L_k024", "mr_t1_colin27_slabA_caudate_R_k001")
# batched vs alone, measured on 16 requests (box, box+clicks, points, points multimask; 4 shared slices):
# 0 mask pixels differ, low-res logits within 4.6e-5, IoU within 3.6e-7
LOGIT_ATOL = 1e-3

pytestmark = pytest.mark.skipif(not get_spec("litemedsam").available() or not MANIFEST.is_file(),
                                reason="needs weights/lite_medsam.pth and shared/data")


@pytest.fixture(scope="module")
def slices(litemedsam):
    specs, _ = read_manifest(MANIFEST)
    loader = CaseLoader(MANIFEST)
    cases = [loader.load(s) for s in specs if s.case_id in CASES]
    assert len(cases) == 2
    return [(litemedsam.embed(c.image), c.gt) for c in cases]


@pytest.fixture(scope="module")
def requests(litemedsam, slices) -> list[tuple[object, Prompts, str]]:
    """box, box + a positive and a negative click with the box's logits fed back, points alone, and points
    with the previous logits (no box), on each slice: two requests of each shape, on different images."""
    out = []
    for embedding, gt in slices:
        ys, xs = np.nonzero(gt)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        centre = np.array([[np.median(xs), np.median(ys)]], np.float32)
        logits = litemedsam.predict(embedding, Prompts(box=box)).best_logits
        two = np.concatenate([centre, [[xs.min(), ys.min()]]]).astype(np.float32)
        out += [
            (embedding, Prompts(box=box), "box"),
            (embedding, Prompts(box=box, points=two, point_labels=np.array([1, 0]), mask_logits=logits), "box+clicks"),
            (embedding, Prompts(points=centre, point_labels=np.array([1]), pixel_spacing=(1.0, 1.0)), "points"),
            (embedding, Prompts(points=centre, point_labels=np.array([1]), mask_logits=logits), "points+mask"),
        ]
    return out


def _count_decoder_calls(segmenter) -> tuple[list[int], list]:
    calls = [0]
    transformers = [segmenter.model.mask_decoder.transformer, segmenter.model.click_refiner.mask_decoder.transformer]
    hooks = [t.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for t in transformers]
    return calls, hooks


@pytest.mark.parametrize("multimask", [False, True])
def test_batched_masks_are_the_masks_of_each_request_alone(litemedsam, requests, multimask):
    embeddings, prompts = [r[0] for r in requests], [r[1] for r in requests]
    calls, hooks = _count_decoder_calls(litemedsam)
    try:
        alone = [litemedsam.predict(e, p, multimask_output=multimask) for e, p in zip(embeddings, prompts)]
        calls_alone, calls[0] = calls[0], 0
        together = litemedsam.predict_many(embeddings, prompts, multimask_output=multimask)
        calls_together = calls[0]
    finally:
        for h in hooks:
            h.remove()
    for (_, _, kind), a, b in zip(requests, alone, together):
        assert not isinstance(b, Exception), f"{kind}: {b}"
        assert a.masks.shape == b.masks.shape and a.masks.any(), kind
        assert np.array_equal(a.masks, b.masks), f"{kind}: {(a.masks != b.masks).sum()} pixels differ"
        np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=LOGIT_ATOL, err_msg=kind)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, err_msg=kind)
        if a.boxes is not None:
            np.testing.assert_array_equal(a.boxes, b.boxes)
    # alone: box 1, box+clicks 1, points 3 candidates + 1 or 3 refinements, points+mask 1 -> per slice;
    # together: one call per route and prompt shape (box, box+clicks, candidates, refinements, points+mask)
    assert calls_together == 5 and calls_alone == 2 * (6 + (3 if multimask else 1))


def test_a_bad_request_fails_alone_and_the_others_are_answered(litemedsam, slices, requests):
    requests = [r for r in requests if r[2] in ("box", "box+clicks")]
    embedding, gt = slices[0]
    h, w = gt.shape
    bad_box = Prompts(box=np.array([10, 10, w + 50, 20], np.float32))  # outside the image: caught before decoding
    good = requests[1][1]
    # a mask prompt of the wrong size in the same group as good box+clicks requests: fails in that group's call
    bad_mask = Prompts(box=good.box, points=good.points, point_labels=good.point_labels,
                       mask_logits=np.zeros((1, 64, 64), np.float32))
    embeddings = [embedding, *[r[0] for r in requests], embedding]
    prompts = [bad_box, *[r[1] for r in requests], bad_mask]
    out = litemedsam.predict_many(embeddings, prompts)
    assert isinstance(out[0], PromptError) and "outside the image" in str(out[0])
    assert isinstance(out[-1], PromptError) and "256, 256" in str(out[-1])
    for (e, p, kind), b in zip(requests, out[1:-1]):
        assert not isinstance(b, Exception), f"{kind}: {b}"
        assert np.array_equal(litemedsam.predict(e, p).masks, b.masks), kind


def test_an_embedding_of_another_model_is_refused_alone(litemedsam, slices):
    embedding, _ = slices[0]
    other = type(embedding)(features=embedding.features, original_size=embedding.original_size,
                            input_size=embedding.input_size, model_name="sam-vit-b")
    box = Prompts(box=np.array([40, 40, 120, 120], np.float32))
    out = litemedsam.predict_many([other, embedding], [box, box])
    assert isinstance(out[0], RuntimeError) and "sam-vit-b" in str(out[0])
    assert out[1].masks.shape[-2:] == embedding.original_size


def test_one_request_alone_takes_the_segmenters_own_decoder(litemedsam, slices):
    """A backend that replaced decode_prompts (ONNX, CUDA graphs) is not batched around."""
    from copy import copy

    embedding, _ = slices[0]
    seen = []
    replaced = copy(litemedsam)

    def decode_prompts(e, p, multimask_output):
        seen.append(p)
        return litemedsam.decode_prompts(e, p, multimask_output)

    replaced.decode_prompts = decode_prompts
    assert litemedsam.plain_torch_decoder() and not replaced.plain_torch_decoder()
    boxes = [Prompts(box=np.array([40, 40, 120 + k, 120], np.float32)) for k in range(3)]
    with torch.inference_mode():
        out = replaced.predict_many([embedding] * 3, boxes)
    assert len(seen) == 3 and all(not isinstance(r, Exception) for r in out)


def test_which_segmenters_can_batch_at_all(litemedsam, litemedsam_base):
    """``batches``: what the server's runner asks before it hands a prompt to the decode batcher. A replaced
    decoder batches only through a click refiner it leaves to torch; the CUDA graphs of ``torch-fp16`` replay the
    refiner too, so nothing of theirs batches (here built on the CPU, where the graphs run uncaptured)."""
    from copy import copy

    from models.decode_many import batches
    from runtime.fast import tuned

    def graphed(s):
        return tuned(s, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)

    replaced = copy(litemedsam)
    replaced.decode_prompts = litemedsam.decode_prompts  # e.g. ONNX decoders with the refiner left in torch
    assert batches(litemedsam) and batches(litemedsam_base) and batches(replaced)
    assert not batches(graphed(litemedsam)) and not batches(graphed(litemedsam_base))
    assert not batches(object())  # a look-alike without Segmenter.predict (app.serve_ray.RemoteSegmenter)
