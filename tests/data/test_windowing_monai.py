"""``Window.apply`` gives MONAI's ``ScaleIntensityRange`` bytes (float64 arithmetic, float32 result, rounded):
windowing moved from MONAI to in-place numpy for speed (issue 21: MONAI's per-call tensor conversions held
the GIL while a volume was windowed in threads), and every model input must stay the same."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import ScaleIntensityRange

from data.readers import read_study
from data.windowing import CT_PRESETS, Window, percentile_window
from tests.conftest import DATA


def monai_window(window: Window, values: np.ndarray) -> np.ndarray:
    """The former implementation of Window.apply, kept here as the reference."""
    scale = ScaleIntensityRange(a_min=window.lo, a_max=window.hi, b_min=0.0, b_max=255.0, clip=True)
    return np.round(np.asarray(scale(np.asarray(values, dtype=np.float64)), dtype=np.float64)).astype(np.uint8)


VOLUMES = ("ct_head_0051_slabA_image.nii.gz", "mr_t1_colin27_slabA_image.nii.gz", "synthetic_shepp_logan_image.nii.gz")


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [read_study(DATA / name).array for name in VOLUMES]
    return out + [
        rng.normal(0, 1000, (4, 64, 64)),
        rng.normal(0, 1, (4, 64, 64)).astype(np.float32),  # where MONAI's float32 result decides the rounding
        rng.integers(-32768, 32767, (3, 50, 50)).astype(np.int16),
        np.array([np.nan, np.inf, -np.inf, 0.0, 1e300, -1e300]),
    ]


def test_window_apply_is_monais_scale_intensity_range_byte_for_byte(arrays):
    windows = [Window.from_level_width(*lw) for lw in CT_PRESETS.values()]
    windows += [Window(11.0, 158.0), Window(-0.3, 0.7), Window(1e-9, 2e-9), Window(0.1, 0.10000001), Window(-1e6, 1e6)]
    windows += [percentile_window(read_study(DATA / name)) for name in VOLUMES]
    for values in arrays:
        for window in windows:
            with np.errstate(invalid="ignore", over="ignore"):
                expected, got = monai_window(window, values), window.apply(values)
            assert got.dtype == np.uint8 and got.shape == values.shape
            assert np.array_equal(got, expected), (window, values.dtype)


def test_window_apply_leaves_the_voxels_alone(arrays):
    before = arrays[0].copy()
    Window.from_level_width(40, 400).apply(arrays[0])
    assert np.array_equal(arrays[0], before)
