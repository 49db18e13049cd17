"""A lone point's candidate boxes read from the picture (``models.picture_boxes``), and the switch that gives them
to the point route (``$MEDSEG_POINT_BOXES``): the region of similar grey level around the point, which a fixed
5/10/20 mm box never holds for a large structure (MNI152's tissues: points:1 0.03 with the mm boxes). Not the
default: it loses on small nuclei (docs/clicks.md, "A lone point's boxes from the picture")."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.clicks import parse_protocol
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.runner import EvalSettings, evaluate_case
from models import point_prompts
from models.picture_boxes import MARGIN_PX, TOLERANCES, grey, picture_boxes
from models.prompts import Prompts
from models.registry import load_segmenter
from tests.conftest import ROOT

HELDOUT = ROOT / "weights" / "devdata" / "click_model"


def _disc(noise: float = 6.0, seed: int = 0) -> np.ndarray:
    """A 200 x 300 dark picture with a bright disc of radius 40 at (x 180, y 90) and noise."""
    yy, xx = np.mgrid[:200, :300]
    picture = np.where((xx - 180) ** 2 + (yy - 90) ** 2 <= 40 ** 2, 170.0, 60.0)
    picture += np.random.default_rng(seed).normal(0, noise, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def test_a_point_in_a_structure_gets_the_structures_box_at_every_tolerance():
    boxes = picture_boxes(_disc(), np.array([170.0, 100.0]), (1.0, 1.0))
    assert boxes.shape == (len(TOLERANCES), 4) and boxes.dtype == np.float32
    tight = np.array([140, 50, 220, 130], np.float32) + np.array([-MARGIN_PX, -MARGIN_PX, MARGIN_PX, MARGIN_PX])
    np.testing.assert_allclose(boxes, np.repeat(tight[None], len(TOLERANCES), axis=0), atol=3)
    # noise of 15 grey levels (a noisy CT, speckle): the tolerance never falls under the noise, the disc is found
    np.testing.assert_allclose(picture_boxes(_disc(noise=15.0), np.array([170.0, 100.0]), (1.0, 1.0)),
                               np.repeat(tight[None], len(TOLERANCES), axis=0), atol=4)
    # outside the disc, the background's region: the whole picture, clipped to it
    np.testing.assert_allclose(picture_boxes(_disc(), np.array([10.0, 10.0]))[0], [0, 0, 299, 199])


def test_a_flat_picture_a_point_off_the_picture_and_rgb_are_answered():
    flat = np.full((40, 50), 7, np.uint8)  # a phantom's flat patch: the spread floor still gives a region
    np.testing.assert_allclose(picture_boxes(flat, np.array([3.0, 3.0]))[0], [0, 0, 49, 39])
    edge = picture_boxes(_disc(), np.array([-20.0, 500.0]))  # clamped to the nearest pixel, never an IndexError
    assert edge.shape == (len(TOLERANCES), 4) and (edge[:, 2] <= 299).all() and (edge[:, 3] <= 199).all()
    rgb = np.stack([_disc()] * 3, axis=2)
    assert np.array_equal(grey(rgb), _disc()) and grey(_disc()) is not None


class _Embedding:
    def __init__(self, picture):
        self.picture, self.original_size = picture, (200, 300)


def test_the_switch_gives_a_lone_positive_point_the_pictures_boxes_and_nothing_else(monkeypatch):
    one = Prompts(points=np.array([[170.0, 100.0]]), point_labels=[1], pixel_spacing=(1.0, 1.0))
    mm = point_prompts.candidate_boxes(one.points, one.point_labels, (200, 300), (1.0, 1.0))
    pictured = picture_boxes(_disc(), np.array([170.0, 100.0]), (1.0, 1.0))
    monkeypatch.delenv(point_prompts.BOXES_ENV, raising=False)
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(_disc()), one, None), mm)  # the default
    monkeypatch.setenv(point_prompts.BOXES_ENV, "mm+picture")
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(_disc()), one, None), np.concatenate([mm, pictured]))
    monkeypatch.setenv(point_prompts.BOXES_ENV, "picture")
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(_disc()), one, None), pictured)
    # a negative point beside it changes nothing: the region is the positive's
    with_negative = Prompts(points=np.array([[170.0, 100.0], [10.0, 10.0]]), point_labels=[1, 0])
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(_disc()), with_negative, None), pictured)
    # two positives, an embedding made without its picture, or sizes from the caller (PerSAM): the mm boxes
    two = Prompts(points=np.array([[170.0, 100.0], [190.0, 80.0]]), point_labels=[1, 1], pixel_spacing=(1.0, 1.0))
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(_disc()), two, None),
                               point_prompts.candidate_boxes(two.points, two.point_labels, (200, 300), (1.0, 1.0)))
    np.testing.assert_allclose(point_prompts._candidates(_Embedding(None), one, None), mm)
    sized = Prompts(points=one.points, point_labels=[1], pixel_spacing=(1.0, 1.0), candidate_half_sides_mm=(5.0, 10.0))
    assert point_prompts._candidates(_Embedding(_disc()), sized, None).shape == (2, 4)
    monkeypatch.setenv(point_prompts.BOXES_ENV, "regions")
    with pytest.raises(ValueError, match="MEDSEG_POINT_BOXES must be one of mm, picture, mm\\+picture, got 'regions'"):
        point_prompts._candidates(_Embedding(_disc()), one, None)


@pytest.mark.skipif(not (HELDOUT / "mni152" / "manifest.csv").is_file(),
                    reason="make weights/devdata/click_model/sources.json builds the held-out sets")
def test_with_the_switch_a_lone_point_on_a_large_structure_held_out_gets_the_structure(monkeypatch):
    """MNI152 (never trained on), white matter and brain, one point each, through ``medseg eval``'s points:1:
    the picture's boxes against the 5/10/20 mm boxes (measured: docs/clicks.md)."""
    manifest = HELDOUT / "mni152" / "manifest.csv"
    specs, _ = read_manifest(manifest)
    chosen = [s for s in specs if s.case_id in ("mni152_axial_white_matter_k087", "mni152_coronal_brain_k101",
                                                "mni152_sagittal_brain_k086")]
    assert len(chosen) == 3, [s.case_id for s in specs]
    loader = CaseLoader(manifest)
    seg = load_segmenter("litemedsam")
    monkeypatch.delenv(point_prompts.BOXES_ENV, raising=False)
    assert seg.embed(_disc()).picture is None  # by default the encode path keeps no picture
    settings = EvalSettings(protocol=parse_protocol("points:1"))
    dice = {True: [], False: []}
    for spec in chosen:
        case = loader.load(spec)
        monkeypatch.setenv(point_prompts.BOXES_ENV, "picture")  # the encode keeps the picture only when asked
        emb = seg.embed(case.image)
        assert emb.picture is not None and emb.picture.shape == case.gt.shape
        for route in (True, False):
            monkeypatch.setenv(point_prompts.BOXES_ENV, "picture" if route else "mm")
            (row,) = evaluate_case(seg, case, settings, embedding=emb)
            dice[route].append(row.dice)
    print(f"points:1 picture {np.round(dice[True], 3)}, mm {np.round(dice[False], 3)}")
    # measured: picture 0.098 / 0.642 / 0.239, mm 0.057 / 0.050 / 0.012
    assert np.mean(dice[True]) >= np.mean(dice[False]) + 0.15 and all(np.greater(dice[True], dice[False]))
