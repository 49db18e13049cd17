"""How a model's input frame relates to the original image: sizes, prompt coordinates, logits back.

Each class moves image size, points, boxes and logits together (the idea of segment_anything's
``utils/transforms.py::ResizeLongestSide``), so a model only declares which one it uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LongestSide:
    """Scale the long side to ``target`` keeping the aspect ratio, pad bottom/right to a square.

    ``integer_boxes``: boxes are mapped as ``int(v * target / max(H, W))``, the rule of the
    upstream LiteMedSAM inference script (``resize_box_to_256``); points always scale as floats.
    """

    target: int
    integer_boxes: bool = False

    def input_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """(newh, neww) after resizing, before padding (segment_anything's rounding)."""
        h, w = original
        scale = self.target / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def apply_coords(self, xy: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        h, w = original
        newh, neww = self.input_size(original)
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0] = out[..., 0] * (neww / w)
        out[..., 1] = out[..., 1] * (newh / h)
        return out

    def apply_box(self, box: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        box = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        if self.integer_boxes:
            ratio = self.target / max(original)
            return np.floor(box * ratio).astype(np.float32)
        return self.apply_coords(box.reshape(-1, 2, 2), original).reshape(-1, 4)

    def logits_to_original(self, low_res: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        """(B, K, h, w) low-res logits -> (B, K, H, W): up to the padded input, crop, up to H x W."""
        if low_res.shape[-1] != self.target:
            low_res = F.interpolate(low_res, (self.target, self.target), mode="bilinear", align_corners=False)
        newh, neww = self.input_size(original)
        low_res = low_res[..., :newh, :neww]
        return F.interpolate(low_res, tuple(original), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Stretch:
    """Resize both sides to ``target`` (no aspect ratio, no padding)."""

    target: int

    def input_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return self.target, self.target

    def apply_coords(self, xy: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        h, w = original
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0] = out[..., 0] * (self.target / w)
        out[..., 1] = out[..., 1] * (self.target / h)
        return out

    def apply_box(self, box: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        return self.apply_coords(np.asarray(box, dtype=np.float32).reshape(-1, 2, 2), original).reshape(-1, 4)

    def logits_to_original(self, low_res: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(low_res, tuple(original), mode="bilinear", align_corners=False)


def low_res_to_input_frame(mask: np.ndarray, geometry: LongestSide | Stretch, low_res_size: int) -> np.ndarray:
    """Resample an original-size (H, W) mask into the model's low-res frame (h, w) as 0/1 float.

    Used to turn a user-drawn mask into a mask prompt. Nearest-neighbour keeps it binary.
    """
    h, w = mask.shape
    newh, neww = geometry.input_size((h, w))
    scale = low_res_size / geometry.target
    th, tw = max(1, math.ceil(newh * scale)), max(1, math.ceil(neww * scale))
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    small = F.interpolate(t, (th, tw), mode="nearest")[0, 0]
    out = torch.zeros((low_res_size, low_res_size))
    out[:th, :tw] = small[:low_res_size, :low_res_size]
    return out.numpy()
