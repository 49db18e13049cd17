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


def plane_coords(volume: Volume, view: str, ras_mm) -> tuple[float, float, float]:
    """A world point seen in ``view`` -> continuous (plane index, x, y) on that plane's grid, not clipped."""
    plane = Plane.of(volume, view)
    kji = ras_to_kji(volume, ras_mm)
    shape = volume.array.shape[:3]
    row, col = kji[plane.rows], kji[plane.cols]
    if plane.flip_rows:
        row = shape[plane.rows] - 1 - row
    if plane.flip_cols:
        col = shape[plane.cols] - 1 - col
    return float(kji[plane.fixed]), float(col), float(row)


def past_edges(volume: Volume, view: str, coords: tuple[float, float, float]) -> tuple[float, float, float]:
    """How far continuous (plane index, x, y) lies past the image's edges on each axis (slices, pixels; 0 inside).
    The edges are the outer borders of the first and last pixels: -0.5 and n - 0.5."""
    plane = Plane.of(volume, view)
    shape = volume.array.shape[:3]
    sizes = (shape[plane.fixed], shape[plane.cols], shape[plane.rows])
    k, x, y = (max(-0.5 - v, v - (n - 0.5), 0.0) for v, n in zip(coords, sizes))
    return k, x, y


def outside_by(volume: Volume, view: str, coords: tuple[float, float, float]) -> float:
    """How far (in pixels or slices) continuous (plane index, x, y) lies past the image's edges (0 inside)."""
    return max(past_edges(volume, view, coords))


def to_plane(volume: Volume, view: str, ras_mm) -> tuple[int, float, float]:
    """A world point seen in ``view`` -> (plane index, x, y) on that plane's grid (clipped to it)."""
    return clip_to_plane(volume, view, plane_coords(volume, view, ras_mm))


def clip_to_plane(volume: Volume, view: str, coords: tuple[float, float, float]) -> tuple[int, float, float]:
    """Continuous (plane index, x, y) -> the nearest plane index and the nearest position on the plane."""
    plane = Plane.of(volume, view)
    shape = volume.array.shape[:3]
    k, col, row = coords
    index = int(np.clip(round(k), 0, shape[plane.fixed] - 1))
    return index, float(np.clip(col, 0, shape[plane.cols] - 1)), float(np.clip(row, 0, shape[plane.rows] - 1))


def from_plane(volume: Volume, view: str, index: int, x: float, y: float) -> list[float]:
    """(x, y) on plane ``index`` of ``view`` -> RAS millimetres (where the browser draws a marker)."""
    plane = Plane.of(volume, view)
    shape = volume.array.shape[:3]
    kji = [0.0, 0.0, 0.0]
    kji[plane.fixed] = float(index)
    kji[plane.rows] = shape[plane.rows] - 1 - y if plane.flip_rows else y
    kji[plane.cols] = shape[plane.cols] - 1 - x if plane.flip_cols else x
    return kji_to_ras(volume, kji)
