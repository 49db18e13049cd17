"""SAM-Med2D (Cheng et al., 2023): SAM ViT-B at 256 with an adapter in every encoder block.

Facts from OpenGVLab/SAM-Med2D @ bfd2b93 (``segment_anything/modeling/image_encoder.py``,
``predictor_sammed.py``), recorded in ``shared/parity/sam_med2d/manifest.json``:

* each block computes ``x = x + mlp(norm2(x)) + Adapter(norm2(x))``; the adapter is a channel
  attention (avg-pool, Linear 768->192, ReLU, Linear 192->768, Sigmoid, times x) followed by a
  spatial branch (3x3 stride-2 conv, ReLU, 4x4 stride-2 transposed conv, ReLU) added to its input,
  then a LayerNorm. We plug it into segment_anything's own ``Block`` (:class:`AdapterBlock`);
* the encoder is segment_anything's ``ImageEncoderViT`` at 256 (16 x 16 grid, window 14);
* preprocessing: normalise first (ImageNet mean/std on 0-255), then nearest-resize to 256 x 256
  (no aspect ratio, no padding); logits go 64 -> 256 -> H x W bilinearly (no crop);
* ``predict`` returns only the mask with the best predicted IoU when asked for several.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, Sam
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from models.geometry import Stretch
from models.litemedsam import sam_prompt_parts
from models.sam import PIXEL_MEAN, PIXEL_STD
from models.segmenter import Embedding, Segmenter

INPUT_SIZE = 256
EMBED_SIZE = INPUT_SIZE // 16
LOW_RES_SIZE = 4 * EMBED_SIZE


class AdapterLayer(nn.Module):
    """SAM-Med2D's ``Adapter_Layer``: channel attention, then a spatial conv branch with a skip.

    (B, H, W, C) -> (B, H, W, C). State-dict names ``norm``, ``channel.{0,2}``, ``spatial.{0,2}``.
    """

    def __init__(self, dim: int, mlp_ratio: float = 0.25):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        b, c = x.shape[:2]
        weights = self.channel(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        x = x + self.spatial(weights * x)
        return self.norm(x.permute(0, 2, 3, 1))


class AdapterBlock(Block):
    """segment_anything's ViT ``Block`` with SAM-Med2D's adapter beside its MLP.

    Adopts the attention, norms and MLP of an existing block, so the state-dict names stay
    ``blocks.i.{norm1,attn,norm2,mlp}`` and the adapter adds ``blocks.i.Adapter``.
    """

    def __init__(self, block: Block, adapter: AdapterLayer):
        nn.Module.__init__(self)
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        self.Adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        x_norm = self.norm2(x)
        return x + self.mlp(x_norm) + self.Adapter(x_norm)


def add_adapters(encoder: ImageEncoderViT, mlp_ratio: float = 0.25) -> ImageEncoderViT:
    """Replace every block of a segment_anything ViT by an :class:`AdapterBlock` (in place)."""
    dim = encoder.pos_embed.shape[-1] if encoder.pos_embed is not None else encoder.patch_embed.proj.out_channels
    for i, block in enumerate(encoder.blocks):
        encoder.blocks[i] = AdapterBlock(block, AdapterLayer(dim, mlp_ratio))
    return encoder


def build_sam_med2d() -> Sam:
    """The SAM-Med2D ViT-B network (386 state-dict entries, official names)."""
    encoder = ImageEncoderViT(
        img_size=INPUT_SIZE,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=(2, 5, 8, 11),
        window_size=14,
        out_chans=256,
    )
    prompt_encoder, mask_decoder = sam_prompt_parts(INPUT_SIZE, EMBED_SIZE)
    return Sam(
        image_encoder=add_adapters(encoder),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


@dataclass(frozen=True)
class StretchTwoStep(Stretch):
    """``Stretch`` whose logits go up to the input size first, then to H x W (SammedPredictor)."""

    def logits_to_original(self, low_res: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(low_res, (self.target, self.target), mode="bilinear", align_corners=False)
        return F.interpolate(x, tuple(original), mode="bilinear", align_corners=False)


class SamMed2DSegmenter(Segmenter):
    name = "sam_med2d"
    low_res_size = LOW_RES_SIZE

    def __init__(self, model: Sam, *, device: str | torch.device = "cpu"):
        super().__init__(model, geometry=StretchTwoStep(INPUT_SIZE), device=device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32)
        std = torch.tensor(PIXEL_STD, dtype=torch.float32)
        x = (torch.from_numpy(np.array(image, dtype=np.float32)) - mean) / std  # (H, W, 3), normalised before resizing
        x = x.permute(2, 0, 1)[None]
        return F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="nearest")

    def decode(
        self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``SammedPredictor.predict_torch``: of several masks only the best-scored one is returned."""
        low_res, iou = super().decode(embedding, sparse, dense, multimask_output)
        if multimask_output:
            best = iou.argmax(dim=1)
            low_res = low_res[torch.arange(low_res.shape[0]), best][:, None]
            iou = iou.max(dim=1, keepdim=True).values
        return low_res, iou
