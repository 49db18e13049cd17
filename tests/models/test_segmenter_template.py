"""``models.segmenter.Segmenter``, the encode -> prompt -> decode -> postprocess template every model runs,
checked on the real LiteMedSAM against the official code's goldens (shared/parity/litemedsam_real) and the
shipped click model's routing.

Fast by construction (issue 26's mutation runs call these tests hundreds of times): the golden image is
encoded once per process (``_warm``); only the encoding test runs the encoder. Under mutmut
(``scripts/mutants.py``) the fork server imports this module once and forks a child per mutant, so warming
at import there spares each child the model load and the encode. Tolerances: the fixture README's
(``test_litemedsam_parity.py``).
"""

from __future__ import annotations

import copy
import functools
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from models import point_prompts
from models.litemedsam import LiteMedSAMSegmenter
from models.prompts import PromptError, Prompts
from models.segmenter import as_rgb_uint8
from tests.conftest import PARITY

SETS = ["point1", "points2", "box", "box_point", "mask"]


@functools.cache
def _warm() -> dict:
    from models.registry import load_segmenter

    golden = dict(np.load(PARITY / "litemedsam_real" / "golden.npz"))
    base = LiteMedSAMSegmenter(load_segmenter("litemedsam-base", device="cpu").model, pipeline="pkg")
    clicks = LiteMedSAMSegmenter(load_segmenter("litemedsam", device="cpu").model, pipeline="pkg")
    embedding = base.embed(golden["image"])
    return {"golden": golden, "base": base, "clicks": clicks, "embedding": embedding}


if "mutmut" in sys.modules:  # the mutation run's fork server: warm once, every mutant's child inherits it
    _warm()


def _prompts(g: dict, p: str, **kw) -> Prompts:
    return Prompts(
        points=g.get(f"{p}__point_coords"), point_labels=g.get(f"{p}__point_labels"), box=g.get(f"{p}__box"),
        mask_logits=g.get(f"{p}__mask_input"), **kw,
    )


def test_slices_become_rgb_uint8_or_are_refused_by_shape_and_dtype():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = as_rgb_uint8(grey)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and all((rgb[..., c] == grey).all() for c in range(3))
    np.testing.assert_array_equal(as_rgb_uint8(grey[..., None]), rgb)
    rgba = np.dstack([rgb + 1, np.full((3, 4), 200, np.uint8)])
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgb + 1)
    assert as_rgb_uint8(rgba).flags.c_contiguous
    with pytest.raises(ValueError, match=r"^a slice image must be uint8 \(window it first\), got float32$"):
        as_rgb_uint8(grey.astype(np.float32))
    with pytest.raises(ValueError, match=r"^a slice image must be \(H, W\) or \(H, W, 3\), got shape \(3, 4, 2\)$"):
        as_rgb_uint8(np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 3\)$"):
        as_rgb_uint8(np.zeros((2, 3, 4, 3), np.uint8))


def test_a_batch_encodes_each_slice_as_the_official_code_does():
    """Two slices of different sizes in one pass: each embedding is its own slice's (the golden's for the golden
    image, within the README's 1e-4), with its own sizes and the model's name."""
    w = _warm()
    g, base = w["golden"], w["base"]
    crop = g["image"][:200, :100, 0]  # a grey slice, 200 x 100
    first, second = base.embed_batch([crop, g["image"]])
    np.testing.assert_allclose(second.features.numpy(), g["image_embedding"], rtol=1e-4, atol=1e-4)
    assert second.features.shape == (1, 256, 64, 64) and first.features.shape == (1, 256, 64, 64)
    assert second.original_size == (300, 400) and first.original_size == (200, 100)
    assert second.input_size == base.geometry.input_size((300, 400)) and first.input_size == (256, 256)
    assert first.model_name == second.model_name == "litemedsam" and first.extras == {} == second.extras
    assert not torch.allclose(first.features, second.features, atol=1e-2)


@pytest.mark.parametrize("p", SETS)
def test_each_prompt_set_decodes_to_the_official_logits_scores_and_masks(p):
    w = _warm()
    g, base, embedding = w["golden"], w["base"], w["embedding"]
    prompts = _prompts(g, p)
    coords, labels, box, mask = base.prompt_arrays(embedding, prompts)
    if f"{p}__pe_point_coords" in g:
        np.testing.assert_allclose(coords, g[f"{p}__pe_point_coords"][0], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(labels, g[f"{p}__pe_point_labels"][0])
    else:
        assert coords is None and labels is None
    if f"{p}__pe_boxes" in g:
        np.testing.assert_allclose(np.asarray(box).reshape(-1), g[f"{p}__pe_boxes"].reshape(-1), rtol=0, atol=1e-4)
    else:
        assert box is None
    assert (mask is None) == (f"{p}__mask_input" not in g)
    points, boxes, masks = base.prompt_tensors(embedding, prompts)
    if points is not None:
        assert points[0].dtype == torch.float32 and points[1].dtype == torch.int64 and points[0].shape[0] == 1
    if masks is not None:
        assert masks.dtype == torch.float32 and masks.shape == (1, 1, 256, 256)
    sparse, _ = base.encode_prompts(embedding, prompts)
    np.testing.assert_allclose(sparse.detach().numpy(), g[f"{p}__sparse_embeddings"], rtol=1e-5, atol=1e-5)
    multimask = bool(g[f"{p}__multimask_output"])
    result = base.predict(embedding, prompts, multimask_output=multimask)
    np.testing.assert_allclose(result.low_res_logits, g[f"{p}__low_res_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.scores, g[f"{p}__iou_predictions"], rtol=0, atol=1e-5)
    assert result.masks.shape == g[f"{p}__masks"].shape and result.masks.dtype == bool and result.boxes is None
    up = base.geometry.logits_to_original(torch.from_numpy(result.low_res_logits)[None], (300, 400))[0].numpy()
    differ = result.masks != g[f"{p}__masks"]
    assert differ.mean() <= 1e-4 and np.all(np.abs(up[differ]) < 1e-3)
    np.testing.assert_array_equal(result.masks, up > 0)


def test_a_model_without_an_iou_head_scores_nan():
    w = _warm()
    silent = copy.copy(w["base"])
    silent.has_iou_head = False
    result = silent.predict(w["embedding"], _prompts(w["golden"], "point1"), multimask_output=True)
    assert result.scores.shape == (3,) and result.scores.dtype == np.float32 and np.isnan(result.scores).all()
    np.testing.assert_allclose(result.low_res_logits, w["golden"]["point1__low_res_logits"], rtol=1e-4, atol=1e-4)


def test_the_click_model_takes_points_and_masks_and_a_box_alone_stays_the_base_models():
    w = _warm()
    g, base, clicks = w["golden"], w["base"], w["clicks"]
    embedding = w["embedding"]
    with pytest.raises(RuntimeError, match="^this embedding was computed by 'litemedsam-base', not 'litemedsam': "
                                           "call embed\\(\\) again$"):
        clicks.predict(replace(embedding, model_name="litemedsam-base"), _prompts(g, "box"))
    box = clicks.predict(embedding, _prompts(g, "box"))
    np.testing.assert_array_equal(box.low_res_logits, base.predict(embedding, _prompts(g, "box")).low_res_logits)
    # a box and a point: the click model answers (not the base decoder), one mask, thrice when three are asked
    refined = clicks.predict(embedding, _prompts(g, "box_point"))
    assert np.abs(refined.low_res_logits - g["box_point__low_res_logits"]).max() > 0.1
    three = clicks.predict(embedding, _prompts(g, "box_point"), multimask_output=True)
    assert three.low_res_logits.shape == (3, 256, 256) and three.scores.shape == (3,)
    for k in range(3):
        np.testing.assert_allclose(three.low_res_logits[k], refined.low_res_logits[0], rtol=1e-5, atol=1e-5)
    # base_decoder: the click model steps aside
    own = clicks.predict(embedding, _prompts(g, "box_point", base_decoder=True))
    np.testing.assert_allclose(own.low_res_logits, g["box_point__low_res_logits"], rtol=1e-4, atol=1e-4)
    masked = clicks.predict(embedding, _prompts(g, "mask"))
    assert np.abs(masked.low_res_logits - g["mask__low_res_logits"]).max() > 0.1
    # points alone: boxes around them (models.point_prompts), the same answer as asking it directly
    lone = clicks.predict(embedding, _prompts(g, "point1"), multimask_output=True)
    assert lone.boxes is not None and lone.boxes.shape == (len(point_prompts.HALF_SIDES_MM), 4)
    x, y = g["point1__point_coords"][0]
    assert all(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in lone.boxes)  # boxes around the click


def test_a_prompt_outside_the_image_or_a_mask_of_another_size_is_refused():
    w = _warm()
    base, embedding = w["base"], w["embedding"]
    with pytest.raises(PromptError):
        base.predict(embedding, Prompts(box=(10, 10, 500, 200)))  # the image is 400 wide
    with pytest.raises(PromptError, match=r"^mask prompt must be \(256, 256\) low-res logits of this model, got "
                                          r"\(1, 64, 64\); use mask_prompt_from_mask\(\) for a drawn mask$"):
        base.predict(embedding, Prompts(mask_logits=np.zeros((1, 64, 64), np.float32)))


def test_a_drawn_mask_becomes_confident_logits_on_the_model_frame():
    base = _warm()["base"]
    drawn = np.zeros((300, 400), bool)
    drawn[:150, :200] = True  # the top-left quarter
    logits = base.mask_prompt_from_mask(drawn)
    assert logits.shape == (1, 256, 256) and logits.dtype == np.float32
    assert set(np.unique(logits)) <= {-8.0, 8.0} or np.abs(logits).max() == 8.0
    assert logits[0, 10, 10] == 8.0 and logits[0, 200, 200] == -8.0 and logits[0, 10, 200] == -8.0
    assert (logits[0] > 0).mean() == pytest.approx(0.25, abs=0.01)  # Stretch: the quarter stays a quarter
    assert base.mask_prompt_from_mask(drawn, strength=2.0)[0, 10, 10] == 2.0
    result = base.predict(_warm()["embedding"], Prompts(mask_logits=logits, box=(0, 0, 199, 149)))
    assert result.best_mask[:150, :200].mean() > 0.5 and result.best_mask[150:, 200:].mean() < 0.05


def test_a_new_segmenter_on_the_shared_model_and_the_postprocessing_threshold():
    w = _warm()
    w["base"].model.train()  # a model handed over in training mode is put in inference mode
    fresh = LiteMedSAMSegmenter(w["base"].model, pipeline="pkg")
    assert fresh.device == torch.device("cpu") and fresh.model is w["base"].model and not fresh.model.training
    assert fresh.geometry.input_size((300, 400)) == (256, 256)
    box = fresh.predict(w["embedding"], _prompts(w["golden"], "box"))
    np.testing.assert_allclose(box.low_res_logits, w["golden"]["box__low_res_logits"], rtol=1e-4, atol=1e-4)
    zeros = torch.zeros(1, 1, 256, 256)
    result = fresh.to_result(w["embedding"], zeros, torch.ones(1, 1))
    assert result.masks.shape == (1, 300, 400) and not result.masks.any()  # a logit of 0 is not in the mask
    assert result.scores.tolist() == [1.0] and result.boxes is None


def test_the_click_model_gets_exactly_the_prompts_it_takes():
    """Its answer is the refiner's own on the prompt tensors: points, box and mask all reach it; a mask alone too."""
    w = _warm()
    g, base, clicks, embedding = w["golden"], w["base"], w["clicks"], w["embedding"]
    refiner = clicks.model.click_refiner
    for p in ("box_point", "mask"):
        prompts = _prompts(g, p)
        with torch.inference_mode():
            low, _ = refiner(embedding.features, *clicks.prompt_tensors(embedding, prompts))
        np.testing.assert_array_equal(clicks.predict(embedding, prompts).low_res_logits, low[0].numpy())
    alone = Prompts(mask_logits=g["mask__mask_input"])
    assert np.abs(clicks.predict(embedding, alone).low_res_logits
                  - base.predict(embedding, alone).low_res_logits).max() > 0.1


def test_a_drawn_label_image_is_a_mask_like_any_other():
    base = _warm()["base"]
    drawn = np.zeros((300, 400), np.uint8)
    drawn[:150, :200] = 255
    np.testing.assert_array_equal(base.mask_prompt_from_mask(drawn), base.mask_prompt_from_mask(drawn > 0))


@pytest.mark.parametrize("shape", [(3000, 2), (1, 100000)])
def test_an_image_whose_short_side_rounds_to_0_at_the_model_input_is_refused_naming_its_size(litemedsam, shape):
    """A 3000 x 2 (or 1 x 100000) PNG reached cv2.resize with a 0-pixel side: `medseg segment` printed
    OpenCV's "(-215:Assertion failed) inv_scale_x > 0" traceback, the UI an internal error."""
    with pytest.raises(ValueError, match=rf"^the image is {shape[0]} x {shape[1]} pixels \(rows x columns\): at litemedsam's "
                                         r"256-pixel input its short side would be 0 pixels"):
        litemedsam.embed(np.zeros(shape, np.uint8))
    assert litemedsam.embed(np.zeros((3000, 6), np.uint8)).input_size == (256, 1)  # 0.51 px rounds to 1: still fine
