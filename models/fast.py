"""GPU fast paths that keep the numbers: fused attention for SAM's ViT, bf16, channels-last, compile.

* :func:`use_sdpa_attention` turns every ``segment_anything`` ViT ``Attention`` into one that calls
  ``scaled_dot_product_attention`` with the decomposed relative-position bias passed as an
  additive mask. Same parameters and state-dict keys (the class is swapped in place, nothing is
  forked), fp32 outputs within the parity tolerances (tests/test_fast_paths.py). TinyViT
  (LiteMedSAM, MobileSAM) already uses SDPA with its attention biases.
* :func:`tuned` returns a copy of a segmenter that encodes under bf16 autocast, with the encoder
  in channels-last memory format and optionally ``torch.compile``d. The copy shares the weights
  of the original; decoding stays fp32 (it is small and sets the mask edges).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder as sam_vit
from torch import nn

from models.segmenter import Segmenter


class SDPAAttention(sam_vit.Attention):
    """segment_anything's ViT attention computed by SDPA; the rel-pos bias is the attention mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, C)
        bias = None
        if self.use_rel_pos:
            rh = sam_vit.get_rel_pos(h, h, self.rel_pos_h)
            rw = sam_vit.get_rel_pos(w, w, self.rel_pos_w)
            r_q = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype) if bias is not None else None)
        return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def use_sdpa_attention(model: nn.Module) -> int:
    """Swap the class of every exact ``segment_anything`` ViT Attention module; returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is sam_vit.Attention:
            module.__class__ = SDPAAttention
            n += 1
    return n


def tuned(
    segmenter: Segmenter, *, precision: str = "bf16", channels_last: bool = True, compile: bool = False
) -> Segmenter:
    """A copy of ``segmenter`` whose encoder runs in ``precision`` ('fp32' or 'bf16').

    The copy shares the (read-only) weights; only its ``encode`` differs. Outputs are cast back
    to float32 so the decoder and everything after it are unchanged.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else None
    base_encode = segmenter.encode
    run = torch.compile(base_encode, dynamic=False) if compile else base_encode

    def encode(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(batch.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features, extras = run(batch)
        return features.float(), {k: v.float() for k, v in extras.items()}

    fast = copy.copy(segmenter)
    fast.encode = encode  # type: ignore[method-assign]
    fast.precision = precision
    return fast
