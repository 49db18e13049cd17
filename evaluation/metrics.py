"""Per-case segmentation metrics (Dice, IoU, HD95, NSD) through MONAI, plus an accumulator.

Masks are 2D ``(H, W)`` bool arrays (rows, columns); ``spacing`` is ``(row_mm, col_mm)`` in the
same axis order, so HD95 is in millimetres and the NSD tolerance is in millimetres.

MONAI returns NaN or inf when a mask is empty; what an empty mask *means* is a choice, so it is
an argument (:class:`EmptyPolicy`, the idea of MONAI's ``compute_dice(ignore_empty=...)``):

* both masks empty (the model correctly found nothing): ``both_empty="perfect"`` (default) gives
  Dice 1, IoU 1, HD95 0, NSD 1; ``both_empty="nan"`` gives NaN for all four (left out of means).
* exactly one mask empty (a miss or a hallucination): Dice 0, IoU 0, NSD 0, and HD95 is
  ``one_empty_hd="diagonal"`` (default): the image diagonal in mm, the largest distance possible
  on this image, so a failed case counts as the worst case instead of vanishing from the mean;
  or ``one_empty_hd="nan"``: undefined, left out of means (MONAI's own answer is inf).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import torch

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "nsd")
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "iou": True, "hd95": False, "nsd": True}
DEFAULT_NSD_TOLERANCE_MM = 2.0  # the tolerance of the CVPR 2024 MedSAM-on-laptop challenge


@dataclass(frozen=True)
class EmptyPolicy:
    """What the metrics say when the prediction and/or the ground truth is empty (see module doc)."""

    both_empty: str = "perfect"  # "perfect" | "nan"
    one_empty_hd: str = "diagonal"  # "diagonal" | "nan"

    def __post_init__(self) -> None:
        if self.both_empty not in ("perfect", "nan"):
            raise ValueError(f"EmptyPolicy.both_empty must be 'perfect' or 'nan', got {self.both_empty!r}")
        if self.one_empty_hd not in ("diagonal", "nan"):
            raise ValueError(f"EmptyPolicy.one_empty_hd must be 'diagonal' or 'nan', got {self.one_empty_hd!r}")


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one mask against its ground truth. hd95 in mm; the others in [0, 1]."""

    dice: float
    iou: float
    hd95: float
    nsd: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_pair(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be 2D masks of the same (H, W)")
    if len(spacing) != 2 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be (row_mm, col_mm) > 0, got {spacing}")
    return pred.astype(bool), gt.astype(bool)


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool -> (1, 1, H, W) float: MONAI's one-channel batch layout."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def image_diagonal_mm(shape: tuple[int, int], spacing: tuple[float, float]) -> float:
    """Length of the image diagonal in mm: the largest distance between two pixels of it."""
    return float(math.hypot((shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]))


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float] = (1.0, 1.0),
    *,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    policy: EmptyPolicy = EmptyPolicy(),
) -> CaseMetrics:
    """Dice, IoU, HD95 (mm) and NSD at ``nsd_tolerance_mm`` of one (H, W) mask against its ground truth."""
    pred, gt = _check_pair(pred, gt, spacing)
    if not 0 <= nsd_tolerance_mm < float("inf"):  # NaN too
        raise ValueError(f"NSD tolerance must be a finite number >= 0 mm, got {nsd_tolerance_mm}")
    spacing = (float(spacing[0]), float(spacing[1]))
    p_empty, g_empty = not pred.any(), not gt.any()
    if p_empty and g_empty:
        if policy.both_empty == "nan":
            return CaseMetrics(math.nan, math.nan, math.nan, math.nan)
        return CaseMetrics(1.0, 1.0, 0.0, 1.0)
    if p_empty or g_empty:
        hd = image_diagonal_mm(gt.shape, spacing) if policy.one_empty_hd == "diagonal" else math.nan
        return CaseMetrics(0.0, 0.0, hd, 0.0)
    # here, not at the top: MONAI's import (it brings torchvision, pandas, scipy) was ~4 s of CPU in every `medseg`
    # process, `medseg serve` included, which imports this module for its Dice line
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

    yp, yt = _as_batch(pred), _as_batch(gt)
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument; nothing to act on.
        warnings.simplefilter("ignore", FutureWarning)
        dice = compute_dice(yp, yt, include_background=True)
        iou = compute_iou(yp, yt, include_background=True)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=list(spacing))
        nsd = compute_surface_dice(yp, yt, [float(nsd_tolerance_mm)], include_background=True, spacing=list(spacing))
    return CaseMetrics(float(dice), float(iou), float(hd95), float(nsd))


@dataclass
class MetricAccumulator:
    """Collects per-case metrics under a key (e.g. (structure, clicks)) and aggregates means.

    NaN values (undefined under the empty policy) are left out of a mean; ``count`` says how many
    values went into it. The pure-function/accumulator split follows MONAI's ``DiceMetric``.
    """

    values: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, key: tuple, metrics: CaseMetrics) -> None:
        slot = self.values.setdefault(key, {m: [] for m in METRICS})
        for name, value in metrics.as_dict().items():
            slot[name].append(float(value))

    def keys(self) -> list[tuple]:
        return list(self.values)

    def aggregate(self, key: tuple) -> dict[str, float]:
        """Mean of each metric over the cases under ``key`` (NaN-free values only)."""
        slot = self.values[key]
        out: dict[str, float] = {}
        for name in METRICS:
            out[name] = nan_mean(slot[name])
        out["count"] = len(slot["dice"])
        return out


def nan_mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none (no warning)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
