"""Rendering: anatomical views in the radiological convention, physical aspect, click mapping, overlays."""

from __future__ import annotations

import numpy as np
import pytest

from app.render import (
    VIEWS,
    Markers,
    Plane,
    acquisition_view,
    compose,
    display_size,
    display_to_plane,
    display_window,
    plane_to_display,
)
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"  # stored coronal (orientation LIP)
MR = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"  # stored axial, i -> R, j -> A


@pytest.fixture(scope="module")
def studies():
    return {"ct": read_study(CT), "mr": read_study(MR)}


@pytest.mark.parametrize(
    "study, acquired, shapes",
    [
        ("ct", "coronal", {"axial": (12, 256), "coronal": (256, 256), "sagittal": (256, 12)}),
        ("mr", "axial", {"axial": (217, 181), "coronal": (32, 181), "sagittal": (32, 217)}),
    ],
)
def test_views_follow_the_anatomy_not_the_array_order(studies, study, acquired, shapes):
    volume = studies[study]
    assert acquisition_view(volume) == acquired
    for view in VIEWS:
        plane = Plane.of(volume, view)
        assert plane.extract(volume.array, 0).shape == shapes[view]


# Along the rows (down the screen) and columns (rightwards), which LPS coordinate must grow:
# axial: rows -> posterior (+y), columns -> patient's left (+x); coronal: rows -> inferior (-z),
# columns -> left (+x); sagittal: rows -> inferior (-z), columns -> posterior (+y).
RADIOLOGICAL = {"axial": ((1, +1), (0, +1)), "coronal": ((2, -1), (0, +1)), "sagittal": ((2, -1), (1, +1))}


@pytest.mark.parametrize("study", ["ct", "mr"])
@pytest.mark.parametrize("view", VIEWS)
def test_display_orientation_is_radiological(studies, study, view):
    volume = studies[study]
    plane = Plane.of(volume, view)
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.array.shape[:3]], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1)  # continuous index per voxel, (i, j, k) order
    p = plane.extract(ijk, plane.count(volume.array.shape) // 2)
    top, bottom = volume.index_to_physical(p[0, 0]), volume.index_to_physical(p[-1, 0])
    left, right = volume.index_to_physical(p[0, 0]), volume.index_to_physical(p[0, -1])
    (row_axis, row_sign), (col_axis, col_sign) = RADIOLOGICAL[view]
    assert np.sign(bottom[row_axis] - top[row_axis]) == row_sign
    assert np.sign(right[col_axis] - left[col_axis]) == col_sign


def test_assign_writes_back_exactly_where_extract_read(studies):
    volume = studies["mr"]
    labels = np.zeros(volume.array.shape, np.uint16)
    for value, view in enumerate(VIEWS, start=1):
        plane = Plane.of(volume, view)
        drawn = np.zeros(plane.extract(labels, 5).shape, np.uint16)
        drawn[0, 0] = value  # the displayed top-left corner
        plane.assign(labels, 5, drawn)
        assert plane.extract(labels, 5)[0, 0] == value and int((labels == value).sum()) == 1


@pytest.mark.parametrize(
    "plane_hw, spacing, expected",
    [
        ((256, 256), (0.957, 0.957), (512, 512)),
        ((12, 256), (1.5, 0.957), (38, 512)),  # 18 mm x 245 mm: 512 * 18 / 245 = 37.6
        ((217, 181), (1.0, 1.0), (512, 427)),
        ((10, 10), (2.0, 1.0), (512, 256)),
    ],
)
def test_display_keeps_the_physical_aspect(plane_hw, spacing, expected):
    assert display_size(plane_hw, spacing) == expected


def test_clicks_map_back_to_the_plane_grid():
    plane_hw, shown = (12, 256), (38, 512)
    assert display_to_plane((0, 0), plane_hw, shown) == (0.0, 0.0)
    # the last display pixel's centre lands at (255.25, 11.34): clipped to the last plane pixel
    assert display_to_plane((511, 37), plane_hw, shown) == (255.0, 11.0)
    assert display_to_plane((256, 19), plane_hw, shown) == pytest.approx((127.75, 5.66), abs=0.01)
    pts = np.array([[10.0, 3.0], [200.0, 7.5]])
    back = [display_to_plane(tuple(p), plane_hw, shown) for p in plane_to_display(pts, plane_hw, shown)]
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_overlay_blends_with_opacity_and_outlines_in_full_colour():
    image = np.full((20, 20, 3), 100, np.uint8)
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1
    out = compose(image, labels, {1: (255, 0, 0)}, shown_hw=(20, 20), opacity=0.5)
    np.testing.assert_allclose(out[10, 10], (177, 50, 50), atol=1)  # 0.5 * 100 + 0.5 * colour
    np.testing.assert_array_equal(out[5, 10], (255, 0, 0))  # outline
    np.testing.assert_array_equal(out[0, 0], (100, 100, 100))  # background untouched
    none = compose(image, labels, {1: (255, 0, 0)}, shown_hw=(20, 20), opacity=0.0)
    np.testing.assert_array_equal(none[10, 10], (100, 100, 100))


def test_markers_are_drawn_where_the_prompts_are():
    image = np.zeros((100, 100, 3), np.uint8)
    m = Markers(
        points=np.array([[20.0, 30.0], [70.0, 80.0]]), point_labels=np.array([1, 0]), box=np.array([10, 10, 90, 50.0])
    )
    out = compose(image, np.zeros((100, 100), np.uint8), {}, shown_hw=(200, 200), markers=m)
    assert tuple(out[61, 41]) == (40, 220, 40)  # positive point at (20, 30) -> display (40.5, 60.5)
    assert tuple(out[161, 141]) == (240, 40, 40)  # negative point
    assert tuple(out[21, 100]) == (0, 170, 255)  # box top edge at y = 10 -> 20.5


@pytest.mark.parametrize(
    "name, level, width, lo, hi", [("brain", None, None, 0.0, 80.0), ("custom", 50, 100, 0.0, 100.0)]
)
def test_display_windows(studies, name, level, width, lo, hi):
    w = display_window(studies["ct"], name, level, width)
    assert (w.lo, w.hi) == (lo, hi)


def test_custom_window_needs_level_and_width(studies):
    with pytest.raises(ValueError, match="level and a width"):
        display_window(studies["ct"], "custom", None, 100)
