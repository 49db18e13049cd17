"""FairSeg's equity-scaled metrics against hand computations on small tables."""

from __future__ import annotations

import math

import pytest

from evaluation.fairness import FairnessError, equity_scaled, equity_table

# Five cases, groups A, A, B, B and one unknown ("").
VALUES = [0.9, 0.8, 0.6, 0.7, 0.5]
GROUPS = ["A", "A", "B", "B", ""]

# (overall, M_all, {group: M_g}, sum |M_g - M_all|, ES)
# "all" (FairSeg's code): M_all over all 5 cases = 3.5 / 5 = 0.70; M_A 0.85, M_B 0.65;
#   disparity 0.15 + 0.05 = 0.20; ES = 0.70 / 1.20.
# "grouped": M_all over the 4 known cases = 0.75; disparity 0.10 + 0.10; ES = 0.75 / 1.20.
TABLE = [
    ("all", 0.70, {"A": 0.85, "B": 0.65}, 0.20, 0.70 / 1.20),
    ("grouped", 0.75, {"A": 0.85, "B": 0.65}, 0.20, 0.75 / 1.20),
]


@pytest.mark.parametrize("overall,m_all,group_means,disparity,es", TABLE)
def test_es_dice_by_hand(overall, m_all, group_means, disparity, es):
    r = equity_scaled(VALUES, GROUPS, metric="dice", overall=overall)
    assert r.overall == pytest.approx(m_all, abs=1e-12)
    assert r.group_means == pytest.approx(group_means, abs=1e-12)
    assert r.disparity == pytest.approx(disparity, abs=1e-12)
    assert r.es == pytest.approx(es, abs=1e-12)
    assert r.group_counts == {"A": 2, "B": 2}


def test_equal_groups_give_es_equal_to_the_mean():
    r = equity_scaled([0.8, 0.6, 0.8, 0.6], ["x", "x", "y", "y"])
    assert r.es == pytest.approx(0.7) and r.disparity == pytest.approx(0.0)


def test_three_groups_and_undefined_values():
    # NaN (undefined metric) is left out everywhere: M_all = (0.9+0.3+0.6)/3 = 0.6,
    # groups 0.9, 0.3, 0.6 -> disparity 0.3 + 0.3 + 0 = 0.6 -> ES 0.6 / 1.6.
    r = equity_scaled([0.9, math.nan, 0.3, 0.6], ["a", "a", "b", "c"], metric="iou")
    assert r.es == pytest.approx(0.6 / 1.6)
    assert r.group_counts == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize(
    "values,groups,metric,match",
    [
        ([0.9, 0.8], ["A", "A"], "dice", "at least two known groups"),
        ([0.9, 0.8], ["A", "unknown"], "dice", "found 1 \\(A\\)"),
        ([0.9, 0.8], ["", "NA"], "dice", "found 0"),
        ([3.0, 5.0], ["A", "B"], "hd95", "distance"),
    ],
)
def test_undefined_cases_are_clear_errors(values, groups, metric, match):
    with pytest.raises(FairnessError, match=match):
        equity_scaled(values, groups, metric=metric)


def test_table_per_structure_reports_single_group_structures_instead_of_failing():
    rows = [
        {"structure": "brain", "modality": "MR", "dice": 0.9, "iou": 0.8, "nsd": 0.9},
        {"structure": "brain", "modality": "MR", "dice": 0.7, "iou": 0.6, "nsd": 0.7},
        {"structure": "head", "modality": "CT", "dice": 0.5, "iou": 0.4, "nsd": 0.3},
        {"structure": "head", "modality": "CT", "dice": 0.3, "iou": 0.2, "nsd": 0.1},
    ]
    t = equity_table(rows, group_column="modality")
    # pooled: M_all 0.6, MR 0.8, CT 0.4 -> disparity 0.4 -> ES-Dice 0.6 / 1.4
    assert t["all"]["dice"]["es"] == pytest.approx(0.6 / 1.4)
    assert t["all"]["iou"]["es"] == pytest.approx(0.5 / 1.4)
    assert "error" in t["brain"]["dice"] and "MR" in t["brain"]["dice"]["error"]
