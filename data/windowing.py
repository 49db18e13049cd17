"""Intensity windows: raw voxels -> the (H, W, 3) uint8 slice that every model takes.

MedSAM's preprocessing: CT clipped to a level/width window, MR clipped to the 0.5-99.5
percentiles of the non-zero voxels of the whole volume, then scaled to 0..255 and rounded.
RGB (ultrasound, photographs) is taken as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.volume import Volume

CT_PRESETS: dict[str, tuple[float, float]] = {  # name -> (level, width), Hounsfield units
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (300.0, 1500.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_PRESET = "abdomen"


@dataclass(frozen=True)
class Window:
    """Clip to [lo, hi] and scale to 0..255."""

    lo: float
    hi: float
    name: str = "custom"

    @classmethod
    def from_level_width(cls, level: float, width: float, name: str = "custom") -> "Window":
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        return cls(level - width / 2.0, level + width / 2.0, name)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Any numeric array -> uint8 of the same shape.

        MONAI's ``ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0, b_max=255, clip=True)`` (float64 arithmetic,
        a float32 result: its default ``dtype``), then rounded: the same IEEE operations in the same order, done
        in place in numpy, so the bytes are MONAI's
        (``tests/data/test_windowing_monai.py``) without its per-call tensor conversions, which held the GIL
        for ~5 ms a slice and starved the GPU encoder's launches while a volume was windowed in threads."""
        if not self.hi > self.lo:
            return np.zeros(np.shape(values), dtype=np.uint8)
        x = np.array(values, dtype=np.float64)  # a copy: the caller's voxels stay as they are
        x -= self.lo
        x /= self.hi - self.lo
        x *= 255.0  # MONAI's (b_max - b_min); its "+ b_min" adds 0.0, which changes no byte
        np.clip(x, 0.0, 255.0, out=x)
        y = x.astype(np.float32)
        return np.round(y, out=y).astype(np.uint8)


def percentile_window(volume: Volume, lower: float = 0.5, upper: float = 99.5) -> Window:
    """MR window: percentiles of the non-zero, finite voxels of the whole volume. When those hold one value
    (a 0/1 mask opened as an image), the finite range of the volume: a window of width 0 showed a black slice."""
    finite = np.isfinite(volume.array)
    values = volume.array[finite & (volume.array != 0)]
    if values.size == 0:
        return Window(0.0, 1.0, "percentile")
    lo, hi = np.percentile(values, [lower, upper])
    if not hi > lo:
        everything = volume.array[finite]
        lo, hi = min(float(everything.min()), lo), max(float(everything.max()), hi)
    return Window(float(lo), float(hi), "percentile")


def default_window(volume: Volume, preset: str | None = None) -> Window | None:
    """The window a model sees for this study; None means 'use the pixels as they are' (RGB)."""
    if volume.is_rgb:
        return None
    if preset is not None:
        if preset in CT_PRESETS:
            return Window.from_level_width(*CT_PRESETS[preset], name=preset)
        if preset == "percentile":
            return percentile_window(volume)
        if preset == "minmax":
            return Window(float(np.nanmin(volume.array)), float(np.nanmax(volume.array)), "minmax")
        raise ValueError(f"unknown window {preset!r}; expected one of {', '.join([*CT_PRESETS, 'percentile', 'minmax'])}")
    if volume.modality == "CT":
        return Window.from_level_width(*CT_PRESETS[DEFAULT_CT_PRESET], name=DEFAULT_CT_PRESET)
    if volume.modality in ("US", "OT") and volume.array.dtype == np.uint8:
        return None
    return percentile_window(volume)


def slice_to_rgb(volume: Volume, k: int, window: Window | None) -> np.ndarray:
    """Slice k -> (H, W, 3) uint8."""
    s = volume.slice(k)
    if volume.is_rgb:
        return np.ascontiguousarray(s[..., :3]).astype(np.uint8, copy=False)
    grey = window.apply(s) if window is not None else np.asarray(s).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
