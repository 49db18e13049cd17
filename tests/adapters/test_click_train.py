"""The click model's trainer (adapters/click_train.py) runs the prompts inference runs: a point session's
refiner gets the box candidate that ``models.point_prompts`` chooses at inference as its mask prompt (not
the points alone, which no inference prompt sends it), and a box alone never reaches the refiner."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import adapters.click_train as ct
from adapters.click_train import ClickTrainer, ClickTrainSettings, TrainSlice, resize_longest, volume_slices
from evaluation.manifest import CaseLoader, read_manifest
from models import point_prompts
from models.prompts import Prompts
from models.registry import get_spec
from tests.conftest import DATA, memoised_embeddings

MANIFEST = DATA / "manifest.csv"
# a small, a middle-sized and a large structure of the shared set (1 mm MR, 0.96 mm CT)
CASES = ("mr_t1_colin27_slabA_caudate_L_k011", "mr_t1_colin27_slabA_thalamus_R_k017", "ct_head_0051_slabA_head_k009")

needs_data = pytest.mark.skipif(not get_spec("litemedsam").available() or not MANIFEST.is_file(),
                                reason="needs weights/lite_medsam.pth and shared/data")


def test_slices_carry_their_pixel_spacing_after_the_resize():
    """The point sessions' candidate boxes are millimetres: each training slice's spacing is the volume's
    voxel size scaled by its resize to 256 (rows and columns from the right axes of each view)."""
    shape, spacing = (40, 100, 20), (1.0, 2.0, 3.0)
    image = np.full(shape, 100, np.uint8)
    labels = np.ones(shape, np.int16)
    slices = volume_slices(image, labels, labels > 0, min_brain_px=1, spacing=spacing)
    got = {s.volume_key[1]: (s.labels.shape, s.spacing) for s in slices}
    # axial (0, 1, 2): a 40 x 100 slice, rot90 -> 100 rows along axis 1 (2 mm) x 40 columns along axis 0 (1 mm)
    (h, w), (row_mm, col_mm) = got["axial"]
    assert (h, w) == (256, 102) and row_mm == pytest.approx(2.0 * 100 / 256) and col_mm == pytest.approx(1.0 * 40 / 102)
    # sagittal (1, 2, 0): 100 x 20 -> rot90 -> 20 rows along axis 2 (3 mm) x 100 columns along axis 1 (2 mm)
    (h, w), (row_mm, col_mm) = got["sagittal"]
    assert (h, w) == (51, 256) and row_mm == pytest.approx(3.0 * 20 / 51) and col_mm == pytest.approx(2.0 * 100 / 256)
    assert all(s.spacing is None for s in volume_slices(image, labels, labels > 0, min_brain_px=1))


@pytest.fixture(scope="module")
def trainer(litemedsam_base):
    specs, _ = read_manifest(MANIFEST)
    loader = CaseLoader(MANIFEST)
    slices = []
    for k, spec in enumerate(s for s in specs if s.case_id in CASES):
        case = loader.load(spec)
        h, w = case.gt.shape
        image, labels = resize_longest(case.image[..., 0], case.gt.astype(np.int32))
        spacing = (case.spacing[0] * h / image.shape[0], case.spacing[1] * w / image.shape[1])
        slices.append(TrainSlice(image, labels, (0, "axial"), k, spacing))
    settings = ClickTrainSettings(batch_size=len(slices), clicks=1, device="cpu")
    return ClickTrainer(litemedsam_base, slices, settings, exclude=set())


def _spy(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    real = ct.refine_batched

    def spy(refiner, features, points, boxes, masks):
        calls.append((points, boxes, masks))
        return real(refiner, features, points, boxes, masks)

    monkeypatch.setattr(ct, "refine_batched", spy)
    return calls


_EMBEDDED: dict[str, dict] = {}  # per segmenter: the trainer's slices as it encodes them, for every check below


def _assert_refiner_got_point_prompts_candidates(trainer, seg, call, scale: float) -> None:
    """``call`` (points, boxes, masks) to the refiner: for each session, masks = the candidate that
    ``models.point_prompts`` chooses for its points at the slice's spacing x ``scale``, on the segmenter's
    own embedding of the slice (the inference path; the slice is the "original" image here). The 5 checks of
    this file encode each of the 3 slices once (``memoised_embeddings``; 15 encodes before, nothing counts them)."""
    with memoised_embeddings(seg, memo=_EMBEDDED.setdefault(seg.name, {})):
        _check_refiner_call(trainer, seg, call, scale)


def _check_refiner_call(trainer, seg, call, scale: float) -> None:
    points, boxes, masks = call
    assert boxes is None and masks is not None, "points alone reach the refiner with the chosen candidate only"
    for b, sl in enumerate(trainer.slices):
        keep = points[1][b] >= 0  # padding rows are SAM's "not a point" (-1)
        pts, labels = points[0][b][keep].numpy(), points[1][b][keep].numpy()
        emb = seg.embed(sl.image)
        spacing = (sl.spacing[0] * scale, sl.spacing[1] * scale)
        prompts = Prompts(points=pts, point_labels=labels, pixel_spacing=spacing)
        low, _, _ = point_prompts.decode_points(seg, emb, prompts, False, refine="none")
        torch.testing.assert_close(masks[b : b + 1], low.float(), atol=2e-3, rtol=0)
        # and not some other candidate: at 1 mm the boxes (and the masks) would differ
        at_1mm = Prompts(points=pts, point_labels=labels)
        other, _, _ = point_prompts.decode_points(seg, emb, at_1mm, False, refine="none")
        assert (masks[b] - other[0]).abs().max() > 1e-2


@needs_data
def test_a_point_session_feeds_the_refiner_the_candidate_inference_chooses(trainer, litemedsam_base, monkeypatch):
    calls = _spy(monkeypatch)
    idx = list(range(len(trainer.slices)))
    for seed in range(3):  # the sessions' point counts and positions vary with the seed
        calls.clear()
        trainer._session(idx, "points", np.random.default_rng(seed), grad=False)
        _assert_refiner_got_point_prompts_candidates(trainer, litemedsam_base, calls[0], 1.0)


@needs_data
def test_point_mm_scale_multiplies_the_spacing_of_training_and_validation_sessions(trainer, litemedsam_base,
                                                                                  monkeypatch):
    calls = _spy(monkeypatch)
    idx = list(range(len(trainer.slices)))
    monkeypatch.setattr(trainer, "s", dataclasses.replace(trainer.s, point_mm_scale=(2.0, 2.0)))
    trainer._session(idx, "points", np.random.default_rng(5), grad=False)
    _assert_refiner_got_point_prompts_candidates(trainer, litemedsam_base, calls[0], 2.0)
    calls.clear()  # validation: the range's geometric middle, whatever the draw
    monkeypatch.setattr(trainer, "s", dataclasses.replace(trainer.s, point_mm_scale=(1.0, 4.0)))
    monkeypatch.setattr(trainer, "validating", True)
    trainer._session(idx, "points", np.random.default_rng(5), grad=False)
    _assert_refiner_got_point_prompts_candidates(trainer, litemedsam_base, calls[0], 2.0)


@needs_data
def test_a_box_alone_never_reaches_the_refiner_in_training(trainer, monkeypatch):
    calls = _spy(monkeypatch)
    idx = list(range(len(trainer.slices)))
    _, dices = trainer._session(idx, "box", np.random.default_rng(0), grad=False)
    assert len(dices) == 2 and len(calls) == 1  # the box step is the base decoder's; the click is refined
    points, boxes, masks = calls[0]
    assert points is not None and boxes is not None and masks is not None


def test_a_one_error_start_keeps_the_largest_error_and_corrects_the_rest():
    """Two error regions (a missed square of 16 px, a false blob of 4 px): the start keeps the large miss,
    turns the small blob to the label's sign at its own magnitude, and leaves right pixels as they were."""
    gt = np.zeros((1, 12, 12), bool)
    gt[0, 2:8, 2:8] = True
    low = np.where(gt, 3.0, -3.0).astype(np.float32)
    low[0, 2:6, 2:6] = -2.5  # a miss of 16 px
    low[0, 9:11, 9:11] = 4.0  # a false positive of 4 px
    out = ct.one_error_logits(low, gt, np.ones_like(gt))
    assert (out[0, 2:6, 2:6] == -2.5).all(), "the largest error stays for the click to find"
    assert (out[0, 9:11, 9:11] == -4.0).all(), "a smaller error is corrected, at its own magnitude"
    right = (low[0] > 0) == gt[0]
    assert (out[0][right] == low[0][right]).all()
    single = np.where(gt, 3.0, -3.0).astype(np.float32)
    single[0, 9:11, 9:11] = 4.0  # one error region only: nothing to correct
    assert np.array_equal(ct.one_error_logits(single, gt, np.ones_like(gt)), single)


def test_the_monotone_hinge_is_zero_unless_the_click_made_the_mask_worse():
    gt = torch.zeros(2, 8, 8)
    gt[:, 2:6, 2:6] = 1
    valid = torch.ones(2, 8, 8)
    good = (gt * 20 - 10)[:, None]  # sigmoid ~ the label: soft Dice ~ 1
    assert ct.monotone_hinge(good, gt, valid, [0.9, 0.9]).item() == 0.0
    worse = torch.full((2, 1, 8, 8), -10.0)  # an empty mask after a click on a mask of Dice 0.8
    assert ct.monotone_hinge(worse, gt, valid, [0.8, 0.8]).item() == pytest.approx(0.8 - 1 / 17, abs=1e-3)
    worse.requires_grad_(True)
    ct.monotone_hinge(worse, gt, valid, [0.8, 0.8]).backward()
    assert worse.grad[:, 0, 3, 3].lt(0).all(), "the gradient pushes the missed pixels up"


@needs_data
def test_the_new_options_change_only_what_they_say(trainer, monkeypatch):
    """one_error_share 1: a box session's click starts from a mask at least as good as the base box mask;
    monotone_weight adds to the loss only; point_route False: points reach the refiner without a mask."""
    calls = _spy(monkeypatch)
    idx = list(range(len(trainer.slices)))
    _, plain = trainer._session(idx, "box", np.random.default_rng(0), grad=False)
    monkeypatch.setattr(trainer, "s", dataclasses.replace(trainer.s, one_error_share=1.0, monotone_weight=1.0))
    loss, fixed = trainer._session(idx, "box", np.random.default_rng(0), grad=True)
    assert np.mean(fixed[0]) >= np.mean(plain[0]) and loss.requires_grad
    monkeypatch.setattr(trainer, "validating", True)  # validation sessions keep the plain box start
    _, val = trainer._session(idx, "box", np.random.default_rng(0), grad=False)
    assert val[0] == plain[0]
    monkeypatch.setattr(trainer, "validating", False)
    calls.clear()
    monkeypatch.setattr(trainer, "s", dataclasses.replace(trainer.s, point_route=False))
    trainer._session(idx, "points", np.random.default_rng(1), grad=False)
    assert calls[0][2] is None and calls[0][0] is not None
