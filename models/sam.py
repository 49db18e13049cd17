"""SAM ViT-B/L/H (Kirillov et al., 2023) through the installed ``segment_anything`` package.

The network comes from ``segment_anything.sam_model_registry`` (built with ``checkpoint=None``; the
weights are loaded by :mod:`models.registry`, weights-only and strict). Preprocessing is
``SamPredictor.set_image``: ``ResizeLongestSide(1024).apply_image`` (PIL bilinear on uint8), then
``Sam.preprocess`` (ImageNet mean/std on 0-255, zero-pad bottom/right). The helpers here are shared
by the other SAM-shaped variants (MobileSAM, SAM-UNet).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from models.geometry import LongestSide
from models.pil_resize import pil_bilinear_resize
from models.segmenter import Segmenter

SAM_INPUT_SIZE = 1024
# segment_anything's Sam defaults (ImageNet statistics on the 0-255 scale).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")


def build_sam(variant: str) -> Sam:
    """An untrained SAM of ``variant`` ('vit_b', 'vit_l' or 'vit_h') with official state-dict names."""
    if variant not in SAM_VARIANTS:
        raise ValueError(f"SAM variant must be one of {SAM_VARIANTS}, got {variant!r}")
    return sam_model_registry[variant](checkpoint=None)


def resize_longest_side(
    image: np.ndarray, target: int, device: str | torch.device = "cpu", torch_resize: bool | None = None
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h', w') float32 on ``device``, PIL bilinear as ``ResizeLongestSide.apply_image``.

    ``torch_resize`` (default: on a GPU) resizes on ``device`` with ``models.pil_resize`` (Pillow's arithmetic,
    bit for bit): PIL's resize on the CPU was most of SAM's end-to-end time on a GPU. On the CPU, PIL itself
    (faster there than the gathers)."""
    device = torch.device(device)
    on_device = device.type != "cpu" if torch_resize is None else torch_resize
    if not on_device:
        resized = ResizeLongestSide(target).apply_image(image)
        return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float()
    h, w = ResizeLongestSide.get_preprocess_shape(image.shape[0], image.shape[1], target)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
    return pil_bilinear_resize(pixels, (h, w)).permute(2, 0, 1)[None].float()


def normalize_and_pad(x: torch.Tensor, target: int, mean=PIXEL_MEAN, std=PIXEL_STD) -> torch.Tensor:
    """(B, 3, h, w) on 0-255 -> (x - mean) / std, zero-padded bottom/right to target x target.

    The arithmetic of ``Sam.preprocess`` (for models without a ``Sam`` module, e.g. SAM-UNet).
    """
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    x = (x - m) / s
    h, w = x.shape[-2:]
    return F.pad(x, (0, target - w, 0, target - h))


class SamSegmenter(Segmenter):
    """Any network with ``Sam``'s parts and ``preprocess`` (SAM ViT-B/L/H, MobileSAM) at 1024."""

    # None: resize on the device where it is a GPU (resize_longest_side); False: PIL on the CPU whatever the
    # device (benchmarks/bench_sam_resize.py's "before"); True: torch even on the CPU (the parity test)
    torch_resize: bool | None = None

    def __init__(self, model: Sam, *, name: str, device: str | torch.device = "cpu"):
        self.name = name
        super().__init__(model, geometry=LongestSide(SAM_INPUT_SIZE), device=device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        x = resize_longest_side(image, SAM_INPUT_SIZE, self.device, self.torch_resize)
        return self.model.preprocess(x.to(self.device))
