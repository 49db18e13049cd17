"""Candidate boxes for a lone point, read from the picture: the region of similar intensity around the point.

Why: a model trained with boxes needs a box, and a lone click gives none. The fixed 5/10/20 mm boxes of
``models.point_prompts`` hold a nucleus, but never a whole brain or its white matter: on MNI152's tissues every one
of them is under half the structure, and points:1 stayed at 0.03 whatever the training (docs/clicks.md, session 29).
The picture says how far the structure goes: the pixels connected to the point whose grey level is close to the
point's. That region's box is what a user would have drawn; the base decoder segments it and the click refiner
refines it with the point, as for the mm boxes. Several tolerances give several candidates, and the base decoder's
predicted IoU picks one, as before (docs/clicks.md, "A lone point's boxes from the picture": the choice and figures).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TOLERANCES = (0.25, 0.35, 0.5)  # x the robust spread of grey levels near the point (docs/clicks.md: chosen on the shared set)
SMOOTH_PX = 1.0  # Gaussian sigma before the comparison: single noisy pixels neither join nor split the region
NEAR_MM = 10.0  # the spread and the noise are measured within this distance of the point
MIN_SPREAD = 2.0  # grey levels: a flat patch (a phantom's disc) still gets a tolerance
NOISE_K = 1.0  # the tolerance is at least this x the pixel noise (about 3.5 sigma of the smoothed noise): on a noisy
# image (CT, ultrasound speckle) a fraction of the spread would leave only a speckle-sized region
MIN_HALF_MM = 5.0  # no box is smaller than the point +- this (the mm route's smallest box)
MARGIN_PX = 5  # added on each side of the region's box, as the evaluation's box prompt (tight box + 5 px)


def grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (H, W) uint8, the channels' mean: what the picture boxes read."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.uint8, copy=False)
    return np.round(rgb[..., :3].astype(np.float32).mean(axis=2)).astype(np.uint8)


def picture_boxes(
    picture: np.ndarray,
    point: np.ndarray,
    spacing: tuple[float, float] | None = None,
    tolerances: tuple[float, ...] = TOLERANCES,
) -> np.ndarray:
    """(K, 4) float32 boxes x0, y0, x1, y1, one per tolerance: the box (+ ``MARGIN_PX``, clipped) of the
    4-connected region around ``point`` (x, y pixels) whose smoothed grey level is within tolerance x spread of
    the point's (the median of its 3 x 3 neighbourhood): the spread is the robust spread of grey levels within
    ``NEAR_MM`` of the point, and the tolerance never falls under ``NOISE_K`` x the pixel noise there. Each box holds
    at least the point +- ``MIN_HALF_MM``. ``spacing`` (row_mm, col_mm), 1 mm when unknown. K is always
    ``len(tolerances)``."""
    raw = np.asarray(picture, np.float32)
    g = ndimage.gaussian_filter(raw, SMOOTH_PX)
    h, w = g.shape
    x = int(min(max(round(float(point[0])), 0), w - 1))
    y = int(min(max(round(float(point[1])), 0), h - 1))
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    ry, rx = max(2, int(round(NEAR_MM / row_mm))), max(2, int(round(NEAR_MM / col_mm)))
    near = (slice(max(0, y - ry), y + ry + 1), slice(max(0, x - rx), x + rx + 1))
    spread = max(_mad(g[near]), MIN_SPREAD)
    noise = _mad(raw[near] - g[near])
    value = float(np.median(g[max(0, y - 1):y + 2, max(0, x - 1):x + 2]))
    hy, hx = MIN_HALF_MM / row_mm, MIN_HALF_MM / col_mm
    boxes = []
    for t in tolerances:
        labels, _ = ndimage.label(np.abs(g - value) <= max(t * spread, NOISE_K * noise))
        ys, xs = np.nonzero(labels == labels[y, x]) if labels[y, x] else (np.array([y]), np.array([x]))
        boxes.append((max(0.0, min(xs.min() - MARGIN_PX, x - hx)), max(0.0, min(ys.min() - MARGIN_PX, y - hy)),
                      min(w - 1.0, max(xs.max() + MARGIN_PX, x + hx)), min(h - 1.0, max(ys.max() + MARGIN_PX, y + hy))))
    return np.asarray(boxes, np.float32)


def _mad(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of Gaussian values, robust to edges."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))
