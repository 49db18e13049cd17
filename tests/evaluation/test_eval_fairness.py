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


def test_unknown_group_spellings_and_padded_names():
    """FairSeg's -1 and the usual spellings of 'not known' are left out of the groups (not of M_all); names
    are compared without surrounding spaces."""
    values = [0.9, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8]
    groups = [" A", "A ", "B", None, math.nan, " N/A ", "-1", "None", "unknown"]
    r = equity_scaled(values, groups)
    # M_all over all 9 = 4.5 / 9 = 0.5; A = 0.8, B = 0.1; disparity 0.3 + 0.4 = 0.7; ES = 0.5 / 1.7
    assert r.group_counts == {"A": 2, "B": 1}
    assert r.overall == pytest.approx(0.5, abs=1e-12) and r.group_means == pytest.approx({"A": 0.8, "B": 0.1})
    assert r.es == pytest.approx(0.5 / 1.7, abs=1e-12)
    assert r.as_dict() == {"metric": "dice", "es": r.es, "overall": r.overall, "disparity": r.disparity,
                           "groups": {"A": {"mean": r.group_means["A"], "n": 2}, "B": {"mean": 0.1, "n": 1}}}
    assert list(equity_scaled([0.5, 0.6], ["z", "a"]).group_means) == ["a", "z"]  # sorted


def test_infinite_values_are_left_out_like_nan_and_grouped_overall_skips_unknown_cases():
    # inf in group A is left out; the unknown case counts in M_all ("all") but not in "grouped"
    values = [0.8, math.inf, 0.4, 0.0]
    groups = ["A", "A", "B", ""]
    r = equity_scaled(values, groups, metric="nsd", overall="grouped")
    assert r.group_counts == {"A": 1, "B": 1} and r.overall == pytest.approx(0.6) and r.metric == "nsd"
    assert r.disparity == pytest.approx(0.4) and r.es == pytest.approx(0.6 / 1.4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"values": [0.5], "groups": ["A", "B"]}, ValueError, "^1 metric values but 2 group values$"),
        ({"overall": "known"}, ValueError, "^overall must be 'all' or 'grouped', got 'known'$"),
        ({"metric": "hd95"}, FairnessError, "^equity scaling needs a metric where higher is better; 'hd95' is a "
                                            "distance$"),
        ({"groups": ["A", "A", "", "-1", "A"]}, FairnessError, r"^equity-scaled dice needs at least two known groups "
                                                               r"with values; found 1 \(A\)$"),
        ({"groups": ["", "", "", "", ""]}, FairnessError, r"^equity-scaled dice needs at least two known groups "
                                                          r"with values; found 0 \(none\)$"),
    ],
)
def test_refusals_name_the_problem(kwargs, error, message):
    args = {"values": VALUES, "groups": GROUPS, **kwargs}
    with pytest.raises(error, match=message):
        equity_scaled(args.pop("values"), args.pop("groups"), **args)


def test_table_structures_in_order_with_the_overall_choice_and_metric_names():
    rows = [
        {"structure": "liver", "site": "x", "dice": "0.9", "iou": 0.8},
        {"structure": "liver", "site": "y", "dice": 0.5, "iou": 0.4},
        {"structure": "aorta", "site": "x", "dice": 0.6, "iou": 0.5},
        {"structure": "aorta", "dice": 0.2, "iou": 0.1},  # no site: unknown
    ]
    t = equity_table(rows, group_column="site", metrics=("dice",), overall="grouped")
    assert list(t) == ["all", "aorta", "liver"] and list(t["all"]) == ["dice"]
    # pooled, grouped: known cases 0.9, 0.5, 0.6 -> M_all 2/3; x = 0.75, y = 0.5 -> ES = (2/3) / (1 + 1/12 + 1/6)
    assert t["all"]["dice"]["es"] == pytest.approx((2 / 3) / (1 + 1 / 12 + 1 / 6))
    assert t["all"]["dice"]["groups"] == {"x": {"mean": pytest.approx(0.75), "n": 2}, "y": {"mean": 0.5, "n": 1}}
    assert t["liver"]["dice"]["es"] == pytest.approx(0.7 / 1.4)
    assert t["aorta"]["dice"] == {"metric": "dice", "error": "equity-scaled dice needs at least two known groups "
                                                            "with values; found 1 (x)"}
    by_site = equity_table(rows[:3], group_column="structure", metrics=("iou",), structure_column="site")
    assert list(by_site) == ["all", "x", "y"] and by_site["x"]["iou"]["es"] == pytest.approx(0.65 / 1.3)
    assert equity_table(rows, group_column="site", metrics=("dice",))["all"]["dice"]["overall"] == pytest.approx(
        0.55)  # "all": the unknown case counts in M_all


def test_a_metric_of_its_own_name_is_scaled_and_each_table_entry_names_its_metric():
    r = equity_scaled([0.8, 0.6, 0.8, 0.6], ["x", "x", "y", "y"], metric="sensitivity")  # not a known distance
    assert r.metric == "sensitivity" and r.es == pytest.approx(0.7)
    rows = [{"structure": "s", "g": g, "iou": v, "hd95": 4.0} for g, v in (("a", 0.5), ("b", 0.7))]
    t = equity_table(rows, group_column="g", metrics=("iou", "hd95"))
    assert t["s"]["iou"]["metric"] == "iou" and t["s"]["iou"]["es"] == pytest.approx(0.6 / 1.2)
    assert t["s"]["hd95"] == {"metric": "hd95", "error": "equity scaling needs a metric where higher is better; "
                                                         "'hd95' is a distance"}
