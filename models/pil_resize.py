"""Pillow's bilinear resize of uint8 images, computed with torch on any device, bit for bit.

Why: SAM's preprocessing (``ResizeLongestSide.apply_image``) resizes with PIL on the CPU; on a GPU that
resize cost SAM ViT-B 16.6 ms of its 20.4 ms end to end (docs/benchmarks.md). ``F.interpolate`` is not a
drop-in: Pillow quantises its filter weights to 22-bit fixed point, rounds the horizontal pass to uint8
before the vertical one, and widens the filter when shrinking; each of these moves pixels by one grey
level, which moves mask borders. This module reproduces Pillow's arithmetic (``libImaging/Resample.c``:
``precompute_coeffs``, ``normalize_coeffs_8bpc``, horizontal then vertical pass, ``clip8``) with integer
gathers, so the resized image, and thus every mask, equals PIL's exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


@functools.lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear taps for one axis: (out_size, K) source indices and int32 weights (sum ~ 2**22)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int64)
    weight = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)]
        total = sum(k)
        for x, w in enumerate(k):
            w = w / total if total != 0.0 else w
            weight[xx, x] = int(0.5 + w * (1 << PRECISION_BITS))  # weights are >= 0 for bilinear
            index[xx, x] = x + xmin
    return index, weight


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_coefficients` as tensors on ``device`` (copied there once per size)."""
    index, weight = _coefficients(in_size, out_size)
    return torch.as_tensor(index, device=device), torch.as_tensor(weight, dtype=torch.int32, device=device)


def _pass(x: torch.Tensor, axis: int, out_size: int) -> torch.Tensor:
    """Resample int32 ``x`` (..., H, W, C) along ``axis`` (-3 rows or -2 columns); result rounded to 0..255."""
    idx, w = _taps(x.shape[axis], out_size, x.device)
    taps = x.index_select(axis, idx.reshape(-1))  # (..., out*K, ...) along axis
    shape = list(x.shape)
    shape[axis : axis + 1] = [out_size, idx.shape[1]]
    taps = taps.reshape(shape)
    w = w.reshape([out_size, idx.shape[1]] + [1] * (-axis - 1))
    acc = (taps * w).sum(dim=axis if axis < 0 else axis + 1, dtype=torch.int32) + (1 << (PRECISION_BITS - 1))
    return (acc >> PRECISION_BITS).clamp_(0, 255)  # clip8


def pil_bilinear_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, C) uint8 -> (h, w, C) uint8, equal to ``np.array(PIL.Image.fromarray(image).resize((w, h),
    Image.BILINEAR))``, on ``image``'s device."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {tuple(image.shape)} {image.dtype}")
    h, w = size
    x = image.to(torch.int32)
    # Pillow resizes horizontally first (into a uint8 image), then vertically; an axis of unchanged size is skipped
    if w != x.shape[1]:
        x = _pass(x, -2, w)
    if h != x.shape[0]:
        x = _pass(x, -3, h)
    return x.to(torch.uint8)
