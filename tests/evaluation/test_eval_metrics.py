"""Metrics against hand computations and against MONAI called directly (table-driven)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

from evaluation.metrics import CaseMetrics, EmptyPolicy, MetricAccumulator, case_metrics, image_diagonal_mm


def square(shape=(6, 6), rows=(1, 4), cols=(1, 4)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


GT = square()  # 3 x 3 at rows 1..3, cols 1..3
SHIFTED = square(cols=(2, 5))  # the same square one column to the right

# (name, pred, gt, spacing (row, col), NSD tolerance mm, expected dice, iou, hd95, nsd)
# Shifted square: overlap 6 of 9 + 9 -> Dice 12/18, IoU 6/12. Every boundary pixel is 0 or 1 column
# from the other boundary -> HD95 = one column spacing. Of the 8 boundary pixels on each side,
# 4 lie on the other boundary -> NSD at a tolerance below 1 mm = 8/16. With 2 mm columns and a
# 1 mm tolerance, one more pixel per side passes: the other square's centre-row boundary pixel
# lies one 1 mm row away -> 10/16.
CASES = [
    ("identical", GT, GT, (1.0, 1.0), 1.0, 1.0, 1.0, 0.0, 1.0),
    ("shift 1 col, 1 mm", SHIFTED, GT, (1.0, 1.0), 1.0, 2 / 3, 0.5, 1.0, 1.0),
    ("shift 1 col, col spacing 2 mm", SHIFTED, GT, (1.0, 2.0), 1.0, 2 / 3, 0.5, 2.0, 10 / 16),
    ("shift 1 col, row spacing 2 mm", SHIFTED, GT, (2.0, 1.0), 1.0, 2 / 3, 0.5, 1.0, 1.0),
    ("shift 1 col, tight tolerance", SHIFTED, GT, (1.0, 1.0), 0.5, 2 / 3, 0.5, 1.0, 0.5),
    ("disjoint", square(rows=(0, 1), cols=(5, 6)), square(rows=(5, 6), cols=(0, 1)), (1.0, 1.0), 1.0, 0.0, 0.0, math.hypot(5, 5), 0.0),
]


@pytest.mark.parametrize("name,pred,gt,spacing,tol,dice,iou,hd95,nsd", CASES, ids=[c[0] for c in CASES])
def test_hand_computed(name, pred, gt, spacing, tol, dice, iou, hd95, nsd):
    m = case_metrics(pred, gt, spacing, nsd_tolerance_mm=tol)
    assert m.dice == pytest.approx(dice, abs=1e-6)
    assert m.iou == pytest.approx(iou, abs=1e-6)
    assert m.hd95 == pytest.approx(hd95, abs=1e-6)
    assert m.nsd == pytest.approx(nsd, abs=1e-6)


def _monai(pred, gt, spacing, tol):
    t = lambda a: torch.from_numpy(a.astype(np.float32))[None, None]  # noqa: E731
    return (
        float(compute_dice(t(pred), t(gt))),
        float(compute_iou(t(pred), t(gt))),
        float(compute_hausdorff_distance(t(pred), t(gt), include_background=True, percentile=95, spacing=list(spacing))),
        float(compute_surface_dice(t(pred), t(gt), [tol], include_background=True, spacing=list(spacing))),
    )


@pytest.mark.parametrize("seed,spacing,tol", [(0, (1.0, 1.0), 2.0), (1, (0.957, 0.957), 2.0), (2, (1.5, 0.7), 1.0)])
def test_matches_monai_on_blobs(seed, spacing, tol):
    """Non-trivial shapes: our wrapper must equal MONAI called directly (spacing in row, col order)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    gt = ndimage.binary_dilation(rng.random((64, 80)) > 0.995, iterations=6)
    pred = ndimage.binary_dilation(np.roll(gt, (2, -3), axis=(0, 1)), iterations=1)
    ours = case_metrics(pred, gt, spacing, nsd_tolerance_mm=tol)
    assert np.allclose(list(ours.as_dict().values()), _monai(pred, gt, spacing, tol), atol=1e-6)
    assert 0 < ours.dice < 1 and ours.hd95 > 0


EMPTY = np.zeros((10, 20), dtype=bool)
SOME = square((10, 20), (2, 5), (3, 9))
DIAG = math.hypot(9 * 2.0, 19 * 0.5)  # (H-1) * row spacing, (W-1) * col spacing

# (name, pred, gt, policy, expected dice, iou, hd95, nsd); NaN = left out of means
EMPTY_CASES = [
    ("both empty, perfect", EMPTY, EMPTY, EmptyPolicy(), 1.0, 1.0, 0.0, 1.0),
    ("both empty, nan", EMPTY, EMPTY, EmptyPolicy(both_empty="nan"), math.nan, math.nan, math.nan, math.nan),
    ("missed structure, diagonal", EMPTY, SOME, EmptyPolicy(), 0.0, 0.0, DIAG, 0.0),
    ("hallucination, diagonal", SOME, EMPTY, EmptyPolicy(), 0.0, 0.0, DIAG, 0.0),
    ("missed structure, nan", EMPTY, SOME, EmptyPolicy(one_empty_hd="nan"), 0.0, 0.0, math.nan, 0.0),
]


@pytest.mark.parametrize("name,pred,gt,policy,dice,iou,hd95,nsd", EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES])
def test_empty_mask_policy(name, pred, gt, policy, dice, iou, hd95, nsd):
    m = case_metrics(pred, gt, (2.0, 0.5), policy=policy)
    np.testing.assert_allclose([m.dice, m.iou, m.hd95, m.nsd], [dice, iou, hd95, nsd], atol=1e-9, equal_nan=True)


def test_diagonal_is_the_largest_distance_on_the_image():
    assert image_diagonal_mm((10, 20), (2.0, 0.5)) == pytest.approx(DIAG)
    corner_a, corner_b = square((10, 20), (0, 1), (0, 1)), square((10, 20), (9, 10), (19, 20))
    assert case_metrics(corner_a, corner_b, (2.0, 0.5)).hd95 == pytest.approx(DIAG)


@pytest.mark.parametrize(
    "pred,gt,spacing,match",
    [(GT, GT[:5], (1.0, 1.0), "same"), (GT, GT, (0.0, 1.0), "spacing"), (GT, GT, (1.0,), "spacing")],
)
def test_bad_input_is_named(pred, gt, spacing, match):
    with pytest.raises(ValueError, match=match):
        case_metrics(pred, gt, spacing)


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="one_empty_hd"):
        EmptyPolicy(one_empty_hd="inf")


def test_accumulator_means_skip_undefined_values():
    acc = MetricAccumulator()
    acc.add(("brain", 0), CaseMetrics(0.8, 0.6, 2.0, 0.9))
    acc.add(("brain", 0), CaseMetrics(0.6, 0.4, math.nan, 0.7))
    acc.add(("skull", 0), CaseMetrics(0.1, 0.05, 30.0, 0.2))
    out = acc.aggregate(("brain", 0))
    assert out == pytest.approx({"dice": 0.7, "iou": 0.5, "hd95": 2.0, "nsd": 0.8, "count": 2})
    assert set(acc.keys()) == {("brain", 0), ("skull", 0)}


def test_every_documented_policy_value_is_accepted_and_a_zero_tolerance_is_allowed():
    """Mutation survivors: 'nan' / 'diagonal' spelled out, NSD at 0 mm (exact boundary agreement)."""
    from evaluation.metrics import nan_mean

    for both in ("perfect", "nan"):
        for hd in ("diagonal", "nan"):
            assert EmptyPolicy(both, hd) == EmptyPolicy(both_empty=both, one_empty_hd=hd)
    with pytest.raises(ValueError, match="one_empty_hd must be 'diagonal' or 'nan', got 'zero'"):
        EmptyPolicy(one_empty_hd="zero")
    square = np.zeros((8, 8), bool)
    square[2:6, 2:6] = True
    m = case_metrics(square, square, nsd_tolerance_mm=0.0)
    assert (m.dice, m.iou, m.hd95, m.nsd) == (1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="NSD tolerance must be a finite number >= 0 mm, got -1"):
        case_metrics(square, square, nsd_tolerance_mm=-1)
    assert math.isnan(nan_mean([])) and math.isnan(nan_mean([math.nan])) and nan_mean([1, math.inf, 3]) == 2.0
