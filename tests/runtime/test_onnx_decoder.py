"""A click's decoders in ONNX Runtime (``runtime.onnx_decoder_export``, the ``onnx-int8-fast`` default on the CPU)
give the torch modules' masks on real slices: the box (base decoder), a corrective click (the click model's
refiner) and a lone click (box candidates, each refined), with the real weights.

Tolerance, as for the ONNX backend's other parity tests (tests/runtime/test_onnx.py): logits within
rtol 1e-4 / atol 2e-4, masks differing on at most 1e-4 of the pixels. Measured on all 42 shared slices:
no mask pixel differs, logits differ by at most ~5e-5 (docs/benchmarks.md, section J).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from evaluation.clicks import box_from_mask, next_click
from models.prompts import Prompts
from runtime import clear_caches, load_segmenter
from runtime.onnx_decoder_export import FastDecoderOnnx
from runtime.threads import decoder_threads

MASK_TOLERANCE = 1e-4  # fraction of pixels whose mask may differ


@pytest.fixture(scope="module")
def fast():
    """``onnx-int8-fast`` from the project's weights folder (its exports built once per machine, then reused)."""
    saved = os.environ.pop("MEDSEG_WEIGHTS", None)
    clear_caches()
    try:
        yield load_segmenter("litemedsam", backend="onnx-int8-fast")
    finally:
        clear_caches()
        if saved is not None:
            os.environ["MEDSEG_WEIGHTS"] = saved


# a small MR structure, a large one, and CT bone (all 42 shared slices: benchmarks/onnx_decoder_parity.py)
CASES = ("mr_t1_colin27_slabA_thalamus_L_k004", "mr_t1_colin27_slabA_brain_k011", "ct_head_0051_slabA_skull_bone_k017")


@pytest.fixture(scope="module")
def slices():
    from evaluation.manifest import CaseLoader, read_manifest
    from tests.conftest import DATA

    specs, _ = read_manifest(DATA / "manifest.csv")
    loader = CaseLoader(DATA / "manifest.csv")
    chosen = [loader.load(s) for s in specs if s.case_id in CASES]
    assert len(chosen) == len(CASES)
    return chosen


def _same(a, b, what: str) -> None:
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, rtol=1e-4, atol=2e-4, err_msg=what)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5, err_msg=what)
    assert a.masks.shape == b.masks.shape and (a.masks != b.masks).mean() <= MASK_TOLERANCE, what


def test_onnx_decoders_give_the_torch_masks_on_real_slices(fast, slices):
    assert fast.refiner is not None and fast.decoder_path.name == "decoder-fast.onnx"
    for session in (fast.decoder, fast.refiner):  # runtime.threads.decoder_threads, at load time
        assert session.get_session_options().intra_op_num_threads == decoder_threads()
    for case in slices:
        emb = fast.embed(case.image)
        same = dataclasses.replace(emb, model_name=fast.base.name)  # the torch modules on the same embedding
        box = Prompts(box=box_from_mask(case.gt, 5))
        boxed = fast.base.predict(same, box)
        _same(fast.predict(emb, box), boxed, f"{case.spec.case_id}: box")
        fix = next_click(case.gt, boxed.best_mask) or next_click(case.gt, np.zeros_like(case.gt))
        click = Prompts(points=np.array([[fix.x, fix.y]], np.float32), point_labels=np.array([int(fix.positive)]),
                        box=box.box, mask_logits=boxed.best_logits)
        _same(fast.predict(emb, click), fast.base.predict(same, click), f"{case.spec.case_id}: click after the box")
        first = next_click(case.gt, np.zeros_like(case.gt))
        lone = Prompts(points=np.array([[first.x, first.y]], np.float32), point_labels=np.array([1]),
                       pixel_spacing=case.spacing)
        a = fast.predict(emb, lone, multimask_output=True)
        b = fast.base.predict(same, lone, multimask_output=True)
        _same(a, b, f"{case.spec.case_id}: lone click")
        np.testing.assert_array_equal(a.boxes, b.boxes)  # the same candidate boxes, so the same pick


def test_the_base_decoders_export_keeps_a_mask_prompt(fast, litemedsam_base, slices):
    """Without the click model (``litemedsam-base``) a mask prompt reaches the base decoder: the export's
    patch-wise mask downscaling gives the torch module's logits (the export module itself, run by torch)."""
    case = slices[0]
    emb = dataclasses.replace(fast.embed(case.image), model_name=litemedsam_base.name)
    box = box_from_mask(case.gt, 5)
    prompts = Prompts(points=np.array([[box[0] + 4, box[1] + 4]], np.float32), point_labels=np.array([0]), box=box,
                      mask_logits=litemedsam_base.predict(emb, Prompts(box=box)).best_logits)
    model, geometry = litemedsam_base.model, litemedsam_base.geometry
    coords = np.concatenate([geometry.apply_coords(prompts.points, emb.original_size),
                             geometry.apply_box(box, emb.original_size).reshape(2, 2)])[None]
    module = FastDecoderOnnx(model.prompt_encoder, model.mask_decoder).eval()
    with torch.inference_mode():
        low, iou = litemedsam_base.decode_prompts(emb, prompts, True)
        out, scores = module(emb.features, torch.as_tensor(coords), torch.tensor([[0.0, 2.0, 3.0]]),
                             torch.as_tensor(prompts.mask_logits)[None], torch.ones(1))
    np.testing.assert_allclose(out[:, 1:].numpy(), low.numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(scores[:, 1:].numpy(), iou.numpy(), rtol=0, atol=1e-5)
    assert ((out[:, 1:] > 0) != (low > 0)).float().mean() <= MASK_TOLERANCE
