"""The window the model sees: exact values on the bundled studies (what every mask depends on)."""

from __future__ import annotations

import numpy as np
import pytest

from data.readers import read_study
from data.volume import Volume
from data.windowing import CT_PRESETS, Window, default_window, percentile_window, slice_to_rgb
from tests.conftest import DATA, SAMPLES

COLIN = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


@pytest.fixture(scope="module")
def colin():
    return read_study(COLIN)


def test_mr_window_is_the_percentiles_of_the_non_zero_voxels(colin):
    """shared/data/README.md: Colin27 slab A is windowed 11..158. A quarter of its voxels are background
    zeros; counting them would give 0..155."""
    assert (colin.array == 0).mean() > 0.2
    window = default_window(colin)
    assert (window.lo, window.hi, window.name) == (11.0, 158.0, "percentile")
    assert percentile_window(colin) == window
    assert read_study(DATA / "mr_t1_colin27_slabA_image.nii.gz").array.tobytes() == colin.array.tobytes()


def test_mr_slice_to_rgb_is_clip_scale_round(colin):
    """MedSAM's preprocessing, written out: clip to 11..158, scale to 0..255, round."""
    k = colin.num_slices // 2
    expected = np.round((np.clip(colin.array[k].astype(np.float64), 11, 158) - 11) / (158 - 11) * 255)
    rgb = slice_to_rgb(colin, k, default_window(colin))
    assert rgb.shape == colin.array[k].shape + (3,) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], expected.astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_ct_default_window_is_level_40_width_400():
    ct = read_study(SAMPLES / "ct_head_0051_series")
    window = default_window(ct)
    assert (window.lo, window.hi) == (-160.0, 240.0) and CT_PRESETS["abdomen"] == (40.0, 400.0)
    assert Window(-160.0, 240.0).apply(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])).tolist() == [0, 0, 128, 255, 255]


def _volume(array, modality: str) -> Volume:
    return Volume(array=np.asarray(array), modality=modality)


@pytest.mark.parametrize(
    "preset, expected",
    [("abdomen", (-160.0, 240.0)), ("lung", (-1350.0, 150.0)), ("bone", (-450.0, 1050.0)), ("brain", (0.0, 80.0))],
)
def test_ct_presets_are_level_width(preset, expected):
    ct = _volume(np.zeros((1, 2, 2)), "CT")
    window = default_window(ct, preset)
    assert (window.lo, window.hi, window.name) == (*expected, preset)


def test_percentile_and_minmax_presets_on_any_volume():
    values = np.arange(1, 201, dtype=np.float64).reshape(1, 10, 20)
    values[0, 0, :5] = 0  # zeros are background: left out of the percentiles, kept by min-max
    vol = _volume(values, "CT")
    p = default_window(vol, "percentile")
    nonzero = values[values != 0]
    assert (p.lo, p.hi, p.name) == (*np.percentile(nonzero, [0.5, 99.5]), "percentile")
    assert percentile_window(vol, 10, 90) == Window(*np.percentile(nonzero, [10, 90]), "percentile")
    m = default_window(vol, "minmax")
    assert (m.lo, m.hi, m.name) == (0.0, 200.0, "minmax")
    with pytest.raises(ValueError, match="unknown window 'soft'; expected one of abdomen, lung, bone, brain, percentile"):
        default_window(vol, "soft")


def test_a_volume_without_non_zero_voxels_gets_the_unit_window():
    window = percentile_window(_volume(np.zeros((1, 3, 3)), "MR"))
    assert (window.lo, window.hi, window.name) == (0.0, 1.0, "percentile")
    one = percentile_window(_volume(np.array([[[0.0, 7.0]]]), "MR"))  # one non-zero value: against the zeros
    assert (one.lo, one.hi) == (0.0, 7.0)


def test_a_binary_volume_shows_its_object_not_a_black_slice():
    """A 0/1 NIfTI (a mask or thresholded map opened as an image): the percentiles of its non-zero voxels are 1 and
    1, a window of width 0, and the model saw a black slice (a box around the square gave a 280-pixel blob of
    IoU 0.6 that was the same on a flat image). Its one value now stands against the rest of the volume."""
    values = np.zeros((2, 64, 64))
    values[:, 20:40, 20:40] = 1.0
    vol = _volume(values, "MR")
    window = default_window(vol)
    assert (window.lo, window.hi, window.name) == (0.0, 1.0, "percentile")
    shown = slice_to_rgb(vol, 1, window)[..., 0]
    np.testing.assert_array_equal(shown, np.where(values[1] == 1.0, 255, 0))
    mostly = values.copy()
    mostly[0, 0, :3] = [2.0, -3.0, np.nan]  # >99.5 % of the non-zero voxels are 1: the finite range, NaN left out
    assert (percentile_window(_volume(mostly, "MR")).lo, percentile_window(_volume(mostly, "MR")).hi) == (-3.0, 2.0)
    flat = percentile_window(_volume(np.full((1, 4, 4), 7.0), "MR"))  # nothing to tell apart: flat as before
    assert (flat.lo, flat.hi) == (7.0, 7.0)


def test_rgb_and_8_bit_photos_are_taken_as_they_are():
    rgb = _volume((np.arange(2 * 3 * 4 * 3) % 256).astype(np.uint8).reshape(2, 3, 4, 3), "OT")
    assert default_window(rgb) is None
    out = slice_to_rgb(rgb, 1, None)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb.array[1])
    rgba = _volume(np.full((1, 2, 2, 4), 9, np.uint8), "OT")
    assert slice_to_rgb(rgba, 0, None).shape == (2, 2, 3)  # alpha dropped
    grey = _volume(np.array([[[0, 128], [255, 3]]], np.uint8), "US")
    assert default_window(grey) is None
    out = slice_to_rgb(grey, 0, None)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 1], grey.array[0])
    # an 8-bit image that is neither US nor OT (or US stored wider than 8 bits) is windowed
    assert default_window(_volume(np.array([[[1, 200]]], np.uint8), "MR")).name == "percentile"
    assert default_window(_volume(np.array([[[1, 200]]], np.int16), "US")).name == "percentile"


def test_window_edges_and_a_flat_window():
    w = Window.from_level_width(100, 50, name="x")
    assert (w.lo, w.hi, w.name) == (75.0, 125.0, "x")
    assert w.apply(np.array([[74.0, 75.0, 100.0, 125.0, 126.0]])).tolist() == [[0, 0, 128, 255, 255]]
    assert w.apply(np.array([80.0])).dtype == np.uint8 and w.apply(np.array([80.0])).tolist() == [26]  # 25.5 -> 26
    flat = Window(5.0, 5.0)
    np.testing.assert_array_equal(flat.apply(np.array([1.0, 5.0, 9.0])), [0, 0, 0])
    for width in (0, -1):
        with pytest.raises(ValueError, match=f"window width must be positive, got {width}"):
            Window.from_level_width(0, width)


def test_window_names_dtypes_and_the_smallest_width():
    """Mutation survivors: names shown in the UI, uint8 output of a flat window, widths below 1 allowed."""
    assert Window.from_level_width(0, 10).name == "custom"
    assert default_window(_volume(np.zeros((1, 2, 2)), "CT")).name == "abdomen"
    narrow = Window.from_level_width(0.0, 0.5)
    assert (narrow.lo, narrow.hi) == (-0.25, 0.25)
    flat = Window(5.0, 5.0).apply(np.array([1.0, 9.0]))
    assert flat.dtype == np.uint8
    assert default_window(_volume(np.array([[[0, 7]]], np.uint8), "OT")) is None  # a grey photo: as it is
    with pytest.raises(ValueError, match=r"expected one of abdomen, lung, bone, brain, percentile, minmax$"):
        default_window(_volume(np.zeros((1, 2, 2)), "CT"), "auto")
