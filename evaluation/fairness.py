"""FairSeg's equity-scaled metrics (Tian et al., ICLR 2024, "FairSeg").

``ES-M = M_all / (1 + sum_g |M_g - M_all|)``, with ``M_g`` the mean per-case metric of the cases
in group g of an attribute and ``M_all`` the mean per-case metric over all cases. This follows
the official code (Harvard-Ophthalmology-AI-Lab/FairSeg, ``SAMed/utils.py::equity_scaled_perf``
with ``alpha=1``, called from ``SAMed/test.py``): there ``M_all`` is the mean over *every* test
case, including those whose attribute is unknown (label -1), while unknown cases are left out of
the groups. ``overall="all"`` (default) does the same; ``overall="grouped"`` takes ``M_all`` over
the cases of known groups only.

The formula is meant for metrics where higher is better (Dice, IoU, NSD); ES of a distance
(HD95) is not meaningful and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from evaluation.metrics import HIGHER_IS_BETTER, nan_mean

# Attribute values that mean "not known": left out of the groups (FairSeg's -1).
UNKNOWN_GROUP_VALUES = frozenset({"", "unknown", "na", "n/a", "nan", "none", "-1"})


class FairnessError(ValueError):
    """Equity scaling is undefined for this table (fewer than two groups, a distance metric...)."""


@dataclass(frozen=True)
class EquityResult:
    """ES-M with its parts, so a report can show where the disparity comes from."""

    metric: str
    es: float
    overall: float  # M_all
    group_means: dict[str, float]  # M_g
    group_counts: dict[str, int]
    disparity: float  # sum_g |M_g - M_all|

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "es": self.es,
            "overall": self.overall,
            "disparity": self.disparity,
            "groups": {g: {"mean": self.group_means[g], "n": self.group_counts[g]} for g in self.group_means},
        }


def is_unknown_group(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in UNKNOWN_GROUP_VALUES


def equity_scaled(
    values: Sequence[float],
    groups: Sequence[object],
    *,
    metric: str = "dice",
    overall: str = "all",
) -> EquityResult:
    """ES of one metric from per-case ``values`` and each case's ``groups`` value (same order).

    NaN values (undefined metrics) are left out of every mean. Raises :class:`FairnessError`
    when fewer than two known groups have a value.
    """
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} metric values but {len(groups)} group values")
    if overall not in ("all", "grouped"):
        raise ValueError(f"overall must be 'all' or 'grouped', got {overall!r}")
    if not HIGHER_IS_BETTER.get(metric, True):
        raise FairnessError(f"equity scaling needs a metric where higher is better; {metric!r} is a distance")
    vals = np.asarray(values, dtype=np.float64)
    by_group: dict[str, list[float]] = {}
    for v, g in zip(vals, groups):
        if is_unknown_group(g) or not np.isfinite(v):
            continue
        by_group.setdefault(str(g).strip(), []).append(float(v))
    if len(by_group) < 2:
        found = ", ".join(sorted(by_group)) or "none"
        raise FairnessError(
            f"equity-scaled {metric} needs at least two known groups with values; found {len(by_group)} ({found})"
        )
    if overall == "all":
        m_all = nan_mean(vals)
    else:
        m_all = nan_mean(v for vs in by_group.values() for v in vs)
    group_means = {g: float(np.mean(vs)) for g, vs in sorted(by_group.items())}
    disparity = float(sum(abs(m - m_all) for m in group_means.values()))
    return EquityResult(
        metric=metric,
        es=m_all / (1.0 + disparity),
        overall=m_all,
        group_means=group_means,
        group_counts={g: len(by_group[g]) for g in group_means},
        disparity=disparity,
    )


def equity_table(
    rows: Sequence[Mapping[str, object]],
    *,
    group_column: str,
    metrics: Sequence[str] = ("dice", "iou", "nsd"),
    structure_column: str = "structure",
    overall: str = "all",
) -> dict[str, dict[str, dict]]:
    """ES per structure (and ``"all"`` structures pooled) for each metric, from per-case rows.

    Returns ``{structure: {metric: EquityResult.as_dict() | {"error": why}}}``: a structure that
    lies in a single group (e.g. every thalamus case is MR) gets the error instead of a number,
    so one such structure does not stop the whole table.
    """
    structures = ["all", *sorted({str(r[structure_column]) for r in rows})]
    out: dict[str, dict[str, dict]] = {}
    for s in structures:
        sel = [r for r in rows if s == "all" or str(r[structure_column]) == s]
        out[s] = {}
        for m in metrics:
            try:
                res = equity_scaled([float(r[m]) for r in sel], [r.get(group_column) for r in sel], metric=m, overall=overall)
                out[s][m] = res.as_dict()
            except FairnessError as e:
                out[s][m] = {"metric": m, "error": str(e)}
    return out
