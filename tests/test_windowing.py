"""The window the model sees: exact values on the bundled studies (what every mask depends on)."""

from __future__ import annotations

import numpy as np
import pytest

from data.readers import read_study
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
