"""Fast paths keep the numbers: SDPA attention in SAM's ViT, bf16 encoder, ONNX Runtime backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from models.fast import SDPAAttention, tuned, use_sdpa_attention
from models.prompts import Prompts
from tests.conftest import PARITY


def _tiny_vit() -> ImageEncoderViT:
    torch.manual_seed(0)
    vit = ImageEncoderViT(
        img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=4, out_chans=16,
        use_rel_pos=True, window_size=3, global_attn_indexes=(1,),
    ).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)  # rel-pos tables start at zero: make them matter
    return vit


def test_sdpa_attention_matches_segment_anything_in_fp32():
    """Windowed (with padding: 8x8 grid, window 3) and global blocks, relative positions on."""
    reference = _tiny_vit()
    fast = copy.deepcopy(reference)
    assert use_sdpa_attention(fast) == 2
    assert all(type(b.attn) is SDPAAttention for b in fast.blocks)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)


def test_bf16_encoder_keeps_the_box_mask(litemedsam):
    """bf16 autocast changes the embedding a little, the mask barely (real weights, real slice)."""
    g = np.load(PARITY / "litemedsam_real" / "golden.npz")
    fast = tuned(litemedsam, precision="bf16")
    a, b = litemedsam.embed(g["image"]), fast.embed(g["image"])
    assert b.features.dtype == torch.float32
    rel = (a.features - b.features).norm() / a.features.norm()
    assert 1e-4 < rel < 0.15  # bf16 was really used (CPU autocast: ~8 % relative), and stays close
    m1 = litemedsam.predict(a, Prompts(box=g["box__box"])).best_mask
    m2 = fast.predict(b, Prompts(box=g["box__box"])).best_mask
    dice = 2 * (m1 & m2).sum() / (m1.sum() + m2.sum())
    assert dice > 0.95
    assert litemedsam.embed(g["image"]).features.equal(a.features)  # the shared model is untouched


def test_tuned_rejects_unknown_precision(litemedsam):
    with pytest.raises(ValueError, match="precision"):
        tuned(litemedsam, precision="fp8")


def test_folded_rel_pos_attention_matches_the_bias_mask(monkeypatch):
    """The half-precision GPU path (bias folded into q.k) computes the same function; checked in fp32."""
    reference = _tiny_vit()
    fast = copy.deepcopy(reference)
    use_sdpa_attention(fast)
    monkeypatch.setattr(SDPAAttention, "fold_bias", True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)
