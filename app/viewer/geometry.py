"""World millimetres (the viewer's RAS) <-> a plane of the study grid (the model's pixels).

NiiVue reports positions in RAS millimetres; ``data.volume`` keeps LPS geometry and arrays
``[k, j, i]``; ``app.render.Plane`` says which numpy axes a view shows and how they are flipped.
"""

from __future__ import annotations

import numpy as np

from app.render import Plane
from data.volume import Volume


def ras_to_kji(volume: Volume, ras_mm) -> np.ndarray:
    """RAS millimetres (x, y, z) -> continuous array index (k, j, i)."""
    x, y, z = (float(v) for v in ras_mm)
    lps = np.array([-x, -y, z])
    affine = volume.direction_matrix @ np.diag(volume.spacing)  # ijk -> LPS offset
    ijk = np.linalg.solve(affine, lps - np.asarray(volume.origin, float))
    return ijk[::-1]


def kji_to_ras(volume: Volume, kji) -> list[float]:
    """Continuous array index (k, j, i) -> RAS millimetres."""
    lps = volume.index_to_physical(np.asarray(kji, float)[::-1])
    return [float(-lps[0]), float(-lps[1]), float(lps[2])]


def to_plane(volume: Volume, view: str, ras_mm) -> tuple[int, float, float]:
    """A world point seen in ``view`` -> (plane index, x, y) on that plane's grid (clipped to it)."""
    plane = Plane.of(volume, view)
    kji = ras_to_kji(volume, ras_mm)
    shape = volume.array.shape[:3]
    index = int(np.clip(round(kji[plane.fixed]), 0, shape[plane.fixed] - 1))
    row, col = kji[plane.rows], kji[plane.cols]
    if plane.flip_rows:
        row = shape[plane.rows] - 1 - row
    if plane.flip_cols:
        col = shape[plane.cols] - 1 - col
    x = float(np.clip(col, 0, shape[plane.cols] - 1))
    y = float(np.clip(row, 0, shape[plane.rows] - 1))
    return index, x, y


def from_plane(volume: Volume, view: str, index: int, x: float, y: float) -> list[float]:
    """(x, y) on plane ``index`` of ``view`` -> RAS millimetres (where the browser draws a marker)."""
    plane = Plane.of(volume, view)
    shape = volume.array.shape[:3]
    kji = [0.0, 0.0, 0.0]
    kji[plane.fixed] = float(index)
    kji[plane.rows] = shape[plane.rows] - 1 - y if plane.flip_rows else y
    kji[plane.cols] = shape[plane.cols] - 1 - x if plane.flip_cols else x
    return kji_to_ras(volume, kji)
