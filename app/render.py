"""What the user sees: a plane of the volume, windowed, at its physical aspect, with overlays.

Views are anatomical, found from the direction cosines (a "coronal" acquisition opens in the
coronal view): each numpy axis of ``array[k, j, i]`` is matched to the LPS axis it runs along.
Displayed in the radiological convention: axial with anterior up and the patient's right on
the screen's left; coronal with superior up and right on the left; sagittal with superior up
and anterior on the left. A plane is a numpy view of the grid (no resampling), so the model
sees it voxel for voxel and a mask maps back exactly; only the display is stretched to the
physical aspect, and display clicks map back with :func:`display_to_plane`.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from data.volume import Volume
from data.windowing import CT_PRESETS, Window, default_window

VIEWS = ("axial", "coronal", "sagittal")
DISPLAY_LONG_SIDE = 512  # pixels of the longer displayed side
POSITIVE = (40, 220, 40)
NEGATIVE = (240, 40, 40)
BOX = (0, 170, 255)


@dataclass(frozen=True)
class Plane:
    """One anatomical view of a volume, as numpy axes of ``array[k, j, i]``.

    fixed: the axis held at ``index``; rows / cols: the axes shown down and across;
    flip_rows / flip_cols: reverse them so the view follows the radiological convention.
    """

    view: str
    fixed: int
    rows: int
    cols: int
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def of(cls, volume: Volume, view: str) -> "Plane":
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
        if volume.is_2d:
            if view != "axial":
                raise ValueError(f"a 2D image has only one view (axial), not {view}")
            return cls(view, fixed=0, rows=1, cols=2)
        return _plane_of_direction(tuple(float(d) for d in volume.direction), view)

    def count(self, shape_kji: tuple[int, ...]) -> int:
        """How many planes of this view the grid has."""
        return int(shape_kji[self.fixed])

    def extract(self, array: np.ndarray, index: int) -> np.ndarray:
        """Plane ``index`` of ``array[k, j, i(, c)]`` as (H, W(, c)); a view, not a copy."""
        n = self.count(array.shape)
        if not 0 <= index < n:
            raise IndexError(f"{self.view} plane {index} is out of range: 0..{n - 1}")
        where: list = [slice(None)] * 3
        where[self.fixed] = index
        plane = array[tuple(where)]
        if self.rows > self.cols:
            plane = plane.swapaxes(0, 1)
        if self.flip_rows:
            plane = plane[::-1]
        if self.flip_cols:
            plane = plane[:, ::-1]
        return plane

    def assign(self, array: np.ndarray, index: int, plane: np.ndarray) -> None:
        """Write a (H, W) plane back into ``array`` (the inverse of :meth:`extract`)."""
        self.extract(array, index)[...] = plane

    def spacing(self, volume: Volume) -> tuple[float, float]:
        """(row, column) spacing of this plane in mm."""
        numpy_order = volume.spacing[::-1]  # spacing is (i, j, k); numpy axes are (k, j, i)
        return float(numpy_order[self.rows]), float(numpy_order[self.cols])


# view -> (LPS axis held fixed, LPS axis down the rows, LPS axis across the columns)
_VIEW_AXES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}


def _lps_axis_of_direction(direction: tuple[float, ...]) -> dict[int, tuple[int, int]]:
    """Each numpy axis (0 = k, 1 = j, 2 = i) of a grid with these direction cosines -> the LPS axis it runs
    along most and its sign. Oblique grids take the one-to-one assignment with the largest total alignment.
    """
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    d = np.abs(m)  # d[lps, ijk]
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(d[perm[c], c] for c in range(3)))
    out = {}
    for c, lps in enumerate(best):  # c: ITK axis i=0, j=1, k=2
        sign = 1 if m[lps, c] >= 0 else -1
        out[2 - c] = (lps, sign)
    return out


@functools.lru_cache(maxsize=256)
def _plane_of_direction(direction: tuple[float, ...], view: str) -> Plane:
    """:meth:`Plane.of` for a 3D grid: it depends on the direction cosines alone. Cached (Plane is frozen):
    a click asks for its plane ~10 times, and the permutation search was ~15 % of a click's interpreter
    time in py-spy's samples of the 20-session server (docs/benchmarks.md, H)."""
    lps_axis = _lps_axis_of_direction(direction)  # numpy axis -> (LPS axis 0/1/2, sign)
    by_lps = {lps: (axis, sign) for axis, (lps, sign) in lps_axis.items()}
    fixed_lps, row_lps, col_lps = _VIEW_AXES[view]
    (rows, row_sign), (cols, col_sign) = by_lps[row_lps], by_lps[col_lps]
    # rows grow toward P (axial) or I (coronal, sagittal); columns toward L (axial, coronal) or P (sagittal)
    row_flip = row_sign < 0 if row_lps == 1 else row_sign > 0
    return Plane(view, fixed=by_lps[fixed_lps][0], rows=rows, cols=cols, flip_rows=row_flip, flip_cols=col_sign < 0)


def acquisition_view(volume: Volume) -> str:
    """The view showing the stored slices (full in-plane resolution): the one holding k fixed."""
    if volume.is_2d:
        return "axial"
    return next(v for v in VIEWS if Plane.of(volume, v).fixed == 0)


def display_size(
    plane_hw: tuple[int, int], spacing_rc: tuple[float, float], long_side: int = DISPLAY_LONG_SIDE
) -> tuple[int, int]:
    """(H, W) pixels of the display: physical aspect, longer side ``long_side``."""
    h_mm, w_mm = plane_hw[0] * spacing_rc[0], plane_hw[1] * spacing_rc[1]
    scale = long_side / max(h_mm, w_mm)
    return max(1, int(round(h_mm * scale))), max(1, int(round(w_mm * scale)))


def display_to_plane(
    xy: tuple[float, float], plane_hw: tuple[int, int], shown_hw: tuple[int, int]
) -> tuple[float, float]:
    """A click at display pixel (x, y) -> (x, y) on the plane grid (pixel centres map to centres)."""
    (h, w), (dh, dw) = plane_hw, shown_hw
    x = (float(xy[0]) + 0.5) * w / dw - 0.5
    y = (float(xy[1]) + 0.5) * h / dh - 0.5
    return float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))


def plane_to_display(xy: np.ndarray, plane_hw: tuple[int, int], shown_hw: tuple[int, int]) -> np.ndarray:
    """(N, 2) plane (x, y) -> display (x, y)."""
    (h, w), (dh, dw) = plane_hw, shown_hw
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return np.stack([(xy[:, 0] + 0.5) * dw / w - 0.5, (xy[:, 1] + 0.5) * dh / h - 0.5], axis=1)


def window_choices() -> list[str]:
    """Display window names: the study default, CT presets, MR percentiles, min-max, free level/width."""
    return ["default", *CT_PRESETS, "percentile", "minmax", "custom"]


def display_window(volume: Volume, name: str, level: float | None = None, width: float | None = None) -> Window | None:
    """The window for display only (the model keeps the study's default window)."""
    if name == "custom":
        if level is None or width is None:
            raise ValueError("a custom window needs a level and a width")
        return Window.from_level_width(float(level), float(width))
    return default_window(volume, None if name == "default" else name)


def to_rgb(plane: np.ndarray, window: Window | None) -> np.ndarray:
    """(H, W) voxels or (H, W, 3|4) colour -> (H, W, 3) uint8."""
    if plane.ndim == 3:
        return np.ascontiguousarray(plane[..., :3]).astype(np.uint8, copy=False)
    grey = window.apply(plane) if window is not None else np.asarray(plane).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


@dataclass(frozen=True)
class Markers:
    """Prompt marks on the plane grid: points (N, 2) (x, y), their labels, a box, a pending corner."""

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    corner: tuple[float, float] | None = None


def compose(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    colours: dict[int, tuple[int, int, int]],
    *,
    shown_hw: tuple[int, int],
    opacity: float = 0.4,
    markers: Markers | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 plane + (H, W) label plane -> (dh, dw, 3) uint8 display image.

    Labels are filled with ``opacity`` and outlined at full colour (so a thin structure stays
    visible at low opacity); values without a colour are drawn white.
    """
    dh, dw = shown_hw
    img = cv2.resize(image_rgb, (dw, dh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    lab = cv2.resize(labels.astype(np.int32), (dw, dh), interpolation=cv2.INTER_NEAREST)
    for value in np.unique(lab):
        if value == 0:
            continue
        colour = np.asarray(colours.get(int(value), (255, 255, 255)), dtype=np.float32)
        where = lab == value
        img[where] = (1.0 - opacity) * img[where] + opacity * colour
        contours, _ = cv2.findContours(where.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, tuple(float(c) for c in colour), 1)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if markers is not None:
        _draw_markers(out, markers, labels.shape[:2], shown_hw)
    return out


def _draw_markers(out: np.ndarray, m: Markers, plane_hw: tuple[int, int], shown_hw: tuple[int, int]) -> None:
    radius = max(3, min(shown_hw) // 90)
    if m.box is not None:
        (x0, y0), (x1, y1) = plane_to_display(np.asarray(m.box).reshape(2, 2), plane_hw, shown_hw).round().astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX, 2)
    if m.points is not None:
        for (x, y), positive in zip(plane_to_display(m.points, plane_hw, shown_hw).round().astype(int), m.point_labels):
            colour = POSITIVE if positive else NEGATIVE
            cv2.circle(out, (int(x), int(y)), radius, colour, -1)
            cv2.circle(out, (int(x), int(y)), radius, (255, 255, 255), 1)
    if m.corner is not None:
        (x, y), = plane_to_display(np.asarray(m.corner), plane_hw, shown_hw).round().astype(int)
        cv2.drawMarker(out, (int(x), int(y)), BOX, cv2.MARKER_CROSS, 4 * radius, 2)
