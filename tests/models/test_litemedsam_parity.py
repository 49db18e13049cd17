"""LiteMedSAM network parity with the official code's goldens (shared/parity/litemedsam*).

Tolerances are those the fixture README measured and recommends (section 4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_strict
from models.litemedsam import LiteMedSAMSegmenter, build_litemedsam
from models.prompts import Prompts
from tests.conftest import PARITY, memoised_embeddings
from tests.synthetic_weights import check_against_manifest, synthetic_state_dict

PROMPT_SETS = ["point1", "points2", "box", "box_point", "mask"]


@pytest.fixture(scope="module")
def synthetic_pkg() -> LiteMedSAMSegmenter:
    """LiteMedSAM with the fixture's synthetic weights, loaded strictly, in the package's pipeline."""
    state = synthetic_state_dict(PARITY / "litemedsam")
    check_against_manifest(PARITY / "litemedsam", state)
    model = build_litemedsam()
    load_strict(model, state, source="synthetic litemedsam", model_name="litemedsam")
    return LiteMedSAMSegmenter(model, pipeline="pkg")


@pytest.fixture(scope="module")
def real_pkg(litemedsam_base) -> LiteMedSAMSegmenter:
    """The real weights (shared with the session fixture, without the click model) in the package's pipeline.
    Both tests of the real weights embed the golden's image: encoded once (``memoised_embeddings``)."""
    segmenter = LiteMedSAMSegmenter(litemedsam_base.model, pipeline="pkg")
    with memoised_embeddings(segmenter):
        yield segmenter


def _prompts(g: np.lib.npyio.NpzFile, p: str) -> Prompts:
    return Prompts(
        points=g[f"{p}__point_coords"] if f"{p}__point_coords" in g else None,
        point_labels=g[f"{p}__point_labels"] if f"{p}__point_labels" in g else None,
        box=g[f"{p}__box"] if f"{p}__box" in g else None,
        mask_logits=g[f"{p}__mask_input"] if f"{p}__mask_input" in g else None,
    )


def _check_fixture(segmenter: LiteMedSAMSegmenter, fixture: str) -> None:
    g = np.load(PARITY / fixture / "golden.npz")
    x = segmenter.preprocess(g["image"])
    np.testing.assert_allclose(x.numpy(), g["input_tensor"], rtol=0, atol=1e-6)
    with torch.inference_mode():
        features = segmenter.model.image_encoder(torch.from_numpy(g["input_tensor"]))
    np.testing.assert_allclose(features.numpy(), g["image_embedding"], rtol=1e-4, atol=1e-4)
    embedding = segmenter.embed(g["image"])
    for p in PROMPT_SETS:
        prompts = _prompts(g, p)
        sparse, _ = segmenter.encode_prompts(embedding, prompts)
        np.testing.assert_allclose(sparse.detach().numpy(), g[f"{p}__sparse_embeddings"], rtol=1e-5, atol=1e-5, err_msg=p)
        result = segmenter.predict(embedding, prompts, multimask_output=bool(g[f"{p}__multimask_output"]))
        np.testing.assert_allclose(result.low_res_logits, g[f"{p}__low_res_logits"], rtol=1e-4, atol=1e-4, err_msg=p)
        np.testing.assert_allclose(result.scores, g[f"{p}__iou_predictions"], rtol=0, atol=1e-5, err_msg=p)
        _check_masks(segmenter, embedding, result.low_res_logits, result.masks, g[f"{p}__masks"], p)


def _check_masks(segmenter, embedding, low_res, masks, golden, name) -> None:
    """Pixels may differ only where our own upscaled logit is within 1e-3 of 0, and at most 0.01 %."""
    up = segmenter.geometry.logits_to_original(torch.from_numpy(low_res)[None], embedding.original_size)[0].numpy()
    differ = masks != golden
    assert differ.mean() <= 1e-4, f"{name}: {differ.sum()} mask pixels differ"
    assert np.all(np.abs(up[differ]) < 1e-3), f"{name}: a mask pixel differs where the logit is not near 0"


def test_synthetic_litemedsam_matches_official(synthetic_pkg):
    _check_fixture(synthetic_pkg, "litemedsam")


def test_real_litemedsam_matches_official(real_pkg):
    _check_fixture(real_pkg, "litemedsam_real")


def test_real_weights_box_prediction_matches_predict_array(real_pkg):
    """The package's own predict_array output (sigmoid > 0.5 at 256 x 256) for the box prompt."""
    g = np.load(PARITY / "litemedsam_real" / "golden.npz")
    result = real_pkg.predict(real_pkg.embed(g["image"]), Prompts(box=g["box__box"]))
    ours = (result.low_res_logits[0] > 0).astype(np.uint8)
    assert (ours != g["predict_array_box__mask"]).sum() == 0
