"""SAM-UNet (Yang et al., 2024): SAM ViT-B at 256 with a ResNet-50 branch, U-Net style.

Facts from Hhankyangg/sam-unet @ a0b84c5 (``sam_unet/models/sam_unet_model.py``, ``wrapped.py``,
``resnet.py``, ``modeling/common.py::Reshaper``), recorded in ``shared/parity/sam_unet/manifest.json``:

* torchvision's ``resnet50`` split into ``stage0`` (stem) and ``stage1..4``; its four stage
  outputs are reshaped to 768 x 16 x 16 (``adapters_in``) and ADDED to the ViT tokens before the
  global blocks 2, 5, 8, 11;
* after global blocks 2, 5, 8 the tokens go through ``adapters_bridge[2, 1, 0]`` to 32 x 64 x 64;
  with ``embedding_encoder(image_embedding)`` they sum to a multi-scale feature;
* the decoder keeps SAM's two-way transformer and upscaling but predicts ONE mask from its own
  ``med_token`` through ``hf_mlp`` against ``embedding_maskfeature(upscaled) + multi-scale
  feature``; there is no IoU head (scores are NaN).

Preprocessing: PIL-bilinear long side to 256, ImageNet mean/std, zero-pad (as SAM at 256).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn
from torchvision.models import resnet50

from models.geometry import LongestSide
from models.sam import normalize_and_pad, resize_longest_side
from models.segmenter import Embedding, Segmenter

INPUT_SIZE = 256
EMBED_SIZE = INPUT_SIZE // 16
LOW_RES_SIZE = 4 * EMBED_SIZE
GLOBAL_BLOCKS = (2, 5, 8, 11)
RESNET_CHANNELS = (256, 512, 1024, 2048)
VIT_DIM = 768
PROMPT_DIM = 256


class ResNetBranch(nn.Module):
    """torchvision ResNet-50 as four stages; returns the outputs of stages 1..4 (strides 4..32)."""

    def __init__(self):
        super().__init__()
        net = resnet50(weights=None)
        self.stage0 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stage1, self.stage2, self.stage3, self.stage4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
            feats.append(x)
        return feats


class Reshaper(nn.Module):
    """(B, c_in, s_in, s_in) -> (B, c_out, s_out, s_out) by strided convs or transposed convs.

    Halving: per factor 2 a 3x3 stride-2 conv doubling the channels, LayerNorm2d, GELU; doubling:
    a 2x2 stride-2 transposed conv halving the channels, LayerNorm2d, GELU; then a 1x1 conv.
    """

    def __init__(self, size_in: int, c_in: int, size_out: int, c_out: int):
        super().__init__()
        layers: list[nn.Module] = []
        if size_in != size_out:
            steps = math.log2(max(size_in, size_out) / min(size_in, size_out))
            if not steps.is_integer():
                raise ValueError(f"Reshaper sizes must differ by a power of 2, got {size_in} and {size_out}")
            for _ in range(int(steps)):
                if size_in > size_out:
                    layers += [nn.Conv2d(c_in, c_in * 2, 3, stride=2, padding=1), LayerNorm2d(c_in * 2), nn.GELU()]
                    c_in *= 2
                else:
                    layers += [nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2), LayerNorm2d(c_in // 2), nn.GELU()]
                    c_in //= 2
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=1))
        self.reshaper = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.reshaper:
            x = layer(x)
        return x


def _up4(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two 2x2 stride-2 transposed convs (x4 in size) with LayerNorm2d and GELU between."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_mid, 2, stride=2),
        LayerNorm2d(c_mid),
        nn.GELU(),
        nn.ConvTranspose2d(c_mid, c_out, 2, stride=2),
    )


class _ImageEncoderWrap(nn.Module):
    """Holds the ViT as ``sam_img_encoder`` (the official wrapper's state-dict prefix); SamUNet drives it."""

    def __init__(self, vit: ImageEncoderViT):
        super().__init__()
        self.sam_img_encoder = vit


class _PromptEncoderWrap(nn.Module):
    """``SAMPromptEncodeWrapper``: SAM's prompt encoder under the name ``sam_prompt_encoder``."""

    def __init__(self, prompt_encoder: PromptEncoder):
        super().__init__()
        self.sam_prompt_encoder = prompt_encoder

    def forward(self, points=None, boxes=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam_prompt_encoder(points=points, boxes=boxes, masks=masks)

    def get_dense_pe(self) -> torch.Tensor:
        return self.sam_prompt_encoder.get_dense_pe()


class _SamUpscaler(nn.Module):
    """The parts of SAM's MaskDecoder that SAM-UNet keeps: the transformer and the upscaling."""

    def __init__(self):
        super().__init__()
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(PROMPT_DIM, PROMPT_DIM // 4, 2, stride=2),
            LayerNorm2d(PROMPT_DIM // 4),
            nn.GELU(),
            nn.ConvTranspose2d(PROMPT_DIM // 4, PROMPT_DIM // 8, 2, stride=2),
            nn.GELU(),
        )


class MedTokenDecoder(nn.Module):
    """``SAMMaskDecoderWrapper_Med``: one mask from the ``med_token``, refined by the multi-scale feature."""

    def __init__(self):
        super().__init__()
        self.sam_mask_decoder = _SamUpscaler()
        self.med_token = nn.Embedding(1, PROMPT_DIM)
        self.hf_mlp = MLP(PROMPT_DIM, PROMPT_DIM, PROMPT_DIM // 8, 3)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(PROMPT_DIM // 8, PROMPT_DIM // 4, 3, 1, 1),
            LayerNorm2d(PROMPT_DIM // 4),
            nn.GELU(),
            nn.Conv2d(PROMPT_DIM // 4, PROMPT_DIM // 8, 3, 1, 1),
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multi_scale_feature: torch.Tensor,
    ) -> torch.Tensor:
        """-> (B, 1, 64, 64) low-res logits."""
        med = self.med_token.weight[None].expand(sparse_prompt_embeddings.shape[0], -1, -1)
        tokens = torch.cat((med, sparse_prompt_embeddings), dim=1)
        src = image_embeddings + dense_prompt_embeddings
        b, c, h, w = src.shape
        hs, src = self.sam_mask_decoder.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
        up = self.sam_mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        up = self.embedding_maskfeature(up) + multi_scale_feature
        hyper = self.hf_mlp(hs[:, 0])[:, None]
        b, c, h, w = up.shape
        return (hyper @ up.view(b, c, h * w)).view(b, 1, h, w)


class SamUNet(nn.Module):
    """The SAM-UNet network with the official state-dict names (661 entries)."""

    def __init__(self):
        super().__init__()
        vit = ImageEncoderViT(
            img_size=INPUT_SIZE,
            patch_size=16,
            embed_dim=VIT_DIM,
            depth=12,
            num_heads=12,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=GLOBAL_BLOCKS,
            window_size=14,
            out_chans=PROMPT_DIM,
        )
        self.image_encoder = _ImageEncoderWrap(vit)
        prompt_encoder = PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
            input_image_size=(INPUT_SIZE, INPUT_SIZE),
            mask_in_chans=16,
        )
        self.prompt_encoder = _PromptEncoderWrap(prompt_encoder)
        self.mask_decoder = MedTokenDecoder()
        self.resnet = ResNetBranch()
        sizes = (INPUT_SIZE // 4, INPUT_SIZE // 8, INPUT_SIZE // 16, INPUT_SIZE // 32)
        self.adapters_in = nn.ModuleList(Reshaper(s, c, EMBED_SIZE, VIT_DIM) for s, c in zip(sizes, RESNET_CHANNELS))
        self.adapters_bridge = nn.ModuleList(_up4(VIT_DIM, PROMPT_DIM, PROMPT_DIM // 8) for _ in range(3))
        self.embedding_encoder = _up4(PROMPT_DIM, PROMPT_DIM // 4, PROMPT_DIM // 8)

    @property
    def vit(self) -> ImageEncoderViT:
        return self.image_encoder.sam_img_encoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 256, 256) normalised -> image embedding (B, 256, 16, 16), multi-scale feature (B, 32, 64, 64)."""
        feats = self.resnet(x)
        bridges: list[torch.Tensor | None] = [None, None, None]
        t = self.vit.patch_embed(x) + self.vit.pos_embed
        for i, g in enumerate(GLOBAL_BLOCKS):
            t = self.vit.blocks[3 * i](t)
            t = self.vit.blocks[3 * i + 1](t)
            t = t + self.adapters_in[i](feats[i]).permute(0, 2, 3, 1)
            t = self.vit.blocks[g](t)
            if i < len(bridges):
                bridges[2 - i] = self.adapters_bridge[2 - i](t.permute(0, 3, 1, 2))
        embedding = self.vit.neck(t.permute(0, 3, 1, 2))
        msf = self.embedding_encoder(embedding) + bridges[0] + bridges[1] + bridges[2]
        return embedding, msf


def build_sam_unet() -> SamUNet:
    return SamUNet()


class SamUNetSegmenter(Segmenter):
    name = "sam_unet"
    low_res_size = LOW_RES_SIZE
    has_iou_head = False

    def __init__(self, model: SamUNet, *, device: str | torch.device = "cpu"):
        super().__init__(model, geometry=LongestSide(INPUT_SIZE), device=device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        return normalize_and_pad(resize_longest_side(image, INPUT_SIZE, self.device), INPUT_SIZE)

    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        embedding, msf = self.model.encode(batch)
        return embedding, {"multi_scale_feature": msf}

    def decode(
        self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask whatever ``multimask_output`` says; the IoU output is NaN (no IoU head)."""
        low_res = self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multi_scale_feature=embedding.extras["multi_scale_feature"],
        )
        return low_res, torch.full(low_res.shape[:2], float("nan"), device=low_res.device)
