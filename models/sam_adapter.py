"""SAM-Adapter (Chen et al., 2023), official ``configs/cod-sam-vit-b.yaml`` layout: automatic, no prompts.

Facts from tianrun-chen/SAM-Adapter-PyTorch @ 665145d (``models/sam.py``,
``models/mmseg/models/sam/image_encoder.py``), recorded in ``shared/parity/sam_adapter/manifest.json``:

* SAM ViT-B at 1024 plus an EVP-style prompt generator: a high-pass FFT of the input image goes
  through a 16x16 patch conv to 24 channels (``prompt_generator.prompt_generator``), the patch
  tokens through a Linear 768->24 (``embedding_generator``); their sum passes, per block i,
  ``lightweight_mlp_i`` (Linear 24->24, GELU) and the shared Linear 24->768, and is added to the
  tokens before block i. We subclass segment_anything's ``ImageEncoderViT`` for that;
* no prompt encoder: the decoder sees no sparse tokens, the learned ``no_mask_embed`` as dense
  embedding and a top-level ``pe_layer``; one mask, multimask off;
* preprocessing: PIL-bilinear stretch to 1024 x 1024, /255, ImageNet mean/std (0-1 scale).

The model segments what it was trained on (e.g. camouflaged objects) without user input, so
:meth:`SamAdapterSegmenter.predict` ignores any prompt (``prompt_types=("auto",)``). Masks are
returned at the original image size (the official test script scores them at 1024 x 1024; see
:meth:`SamAdapterSegmenter.logits_at_input_size`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from models.geometry import Stretch
from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding, Segmenter

INPUT_SIZE = 1024
PATCH = 16
EMBED_SIZE = INPUT_SIZE // PATCH
PROMPT_DIM = 256
# SAM-Adapter normalises on the 0-1 scale (torchvision Normalize after ToTensor).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def highpass_fft(x: torch.Tensor, rate: float) -> torch.Tensor:
    """|ifft2(fft2(x) without its centred low-frequency square)|, the official ``PromptGenerator.fft``.

    The square has side ``2 * int(sqrt(H * W * rate) // 2)`` in the fftshift-ed spectrum.
    """
    h, w = x.shape[-2:]
    line = int((h * w * rate) ** 0.5 // 2)
    keep = torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device)
    keep[h // 2 - line : h // 2 + line, w // 2 - line : w // 2 + line] = 0
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1)) * keep
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="forward").real.abs()


class _PatchConv(nn.Module):
    """``PatchEmbed2``: a patch-sized stride-patch conv kept as ``proj`` (BCHW in, BCHW out)."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PromptGenerator(nn.Module):
    """Per-block prompts from a high-pass image and the patch tokens (scale factor 32 -> 24 channels)."""

    def __init__(self, embed_dim: int, depth: int, scale_factor: int = 32, freq_nums: float = 0.25, patch: int = PATCH):
        super().__init__()
        small = embed_dim // scale_factor
        self.depth = depth
        self.freq_nums = freq_nums
        self.shared_mlp = nn.Linear(small, embed_dim)
        self.embedding_generator = nn.Linear(embed_dim, small)
        for i in range(depth):
            self.add_module(f"lightweight_mlp_{i}", nn.Sequential(nn.Linear(small, small), nn.GELU()))
        self.prompt_generator = _PatchConv(3, small, patch)

    def embedding_feature(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) patch tokens -> (B, H*W, C/32).

        As the official ``init_embeddings``: the channels-last tokens are *reshaped* (not
        permuted) to (B, C, H*W) and then transposed, which mixes token positions and channels.
        The trained weights expect exactly this, so it is kept.
        """
        b, h, w, c = tokens.shape
        return self.embedding_generator(tokens.reshape(b, c, h * w).permute(0, 2, 1))

    def handcrafted_feature(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> (B, C/32, S/16, S/16)."""
        return self.prompt_generator(highpass_fft(image, self.freq_nums))

    def prompts(self, handcrafted: torch.Tensor, embedding: torch.Tensor) -> list[torch.Tensor]:
        """-> ``depth`` tensors (B, H*W, C), one per block."""
        b, c, h, w = handcrafted.shape
        mixed = handcrafted.view(b, c, h * w).permute(0, 2, 1) + embedding
        return [self.shared_mlp(getattr(self, f"lightweight_mlp_{i}")(mixed)) for i in range(self.depth)]


class PromptedImageEncoderViT(ImageEncoderViT):
    """segment_anything's ViT with SAM-Adapter's prompt generator added before every block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.prompt_generator = PromptGenerator(kwargs.get("embed_dim", 768), len(self.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = self.patch_embed(x)
        prompts = self.prompt_generator.prompts(
            self.prompt_generator.handcrafted_feature(image), self.prompt_generator.embedding_feature(x)
        )
        if self.pos_embed is not None:
            x = x + self.pos_embed
        b, h, w = x.shape[:3]
        for prompt, block in zip(prompts, self.blocks):
            x = block(prompt.reshape(b, h, w, -1) + x)
        return self.neck(x.permute(0, 3, 1, 2))


class SamAdapter(nn.Module):
    """The ``SAM`` module of SAM-Adapter (329 state-dict entries, official names)."""

    def __init__(self):
        super().__init__()
        self.image_encoder = PromptedImageEncoderViT(
            img_size=INPUT_SIZE,
            patch_size=PATCH,
            embed_dim=768,
            depth=12,
            num_heads=12,
            mlp_ratio=4,
            out_chans=PROMPT_DIM,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(2, 5, 8, 11),
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.pe_layer = PositionEmbeddingRandom(PROMPT_DIM // 2)
        self.no_mask_embed = nn.Embedding(1, PROMPT_DIM)

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 256, 64, 64) -> (B, 1, 256, 256) low-res logits, (B, 1) IoU prediction (``SAM.infer``)."""
        b = features.shape[0]
        sparse = torch.empty((b, 0, PROMPT_DIM), device=features.device)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, EMBED_SIZE, EMBED_SIZE)
        return self.mask_decoder(
            image_embeddings=features,
            image_pe=self.pe_layer((EMBED_SIZE, EMBED_SIZE)).unsqueeze(0),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )


def build_sam_adapter() -> SamAdapter:
    return SamAdapter()


class SamAdapterSegmenter(Segmenter):
    """Automatic segmentation: ``predict`` needs no prompt and ignores any given."""

    name = "sam_adapter"

    def __init__(self, model: SamAdapter, *, device: str | torch.device = "cpu"):
        super().__init__(model, geometry=Stretch(INPUT_SIZE), device=device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        resized = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(-1, 1, 1)
        return ((x - mean) / std)[None]

    @staticmethod
    def logits_at_input_size(low_res: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) -> (B, 1, 1024, 1024) logits, the official ``postprocess_masks`` output."""
        return F.interpolate(low_res, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(
        self, embedding: Embedding, prompts: Prompts | None = None, *, multimask_output: bool = False
    ) -> MaskResult:
        """One automatic mask at the original size; ``prompts`` and ``multimask_output`` are ignored."""
        if embedding.model_name != self.name:
            raise RuntimeError(
                f"this embedding was computed by {embedding.model_name!r}, not {self.name!r}: call embed() again"
            )
        low_res, iou = self.model.decode(embedding.features)
        logits = F.interpolate(
            self.logits_at_input_size(low_res), embedding.original_size, mode="bilinear", align_corners=False
        )
        return MaskResult(
            masks=(logits > 0.0)[0].cpu().numpy(),
            scores=iou[0].float().cpu().numpy(),
            low_res_logits=low_res[0].float().cpu().numpy(),
        )
