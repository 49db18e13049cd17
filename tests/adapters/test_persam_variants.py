"""PerSAM on a variant whose decoder nests SAM's two-way transformer (SAM-UNet) and refusals.

SAM-UNet's official weights are not here and its encoder (ResNet-50 + ViT-B) is slow on the CPU, so
this runs the untrained network (seeded) on random image features: it checks the plumbing (hooks
found and removed, single-mask decoder, no IoU head), not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.decoder_hooks import UnsupportedDecoderError, two_way_transformer
from adapters.persam import persam_reference, persam_segment
from adapters.persam_oneshot import fit_oneshot
from models.segmenter import Embedding

SIZE = (200, 240)


@pytest.fixture(scope="module")
def sam_unet():
    from models.sam_unet import SamUNetSegmenter, build_sam_unet

    torch.manual_seed(0)
    return SamUNetSegmenter(build_sam_unet())


def fake_embedding(seg, seed: int) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(
        torch.randn(1, 256, 16, 16, generator=g), SIZE, seg.geometry.input_size(SIZE), seg.name,
        {"multi_scale_feature": torch.randn(1, 32, 64, 64, generator=g)},
    )


def test_persam_runs_on_sam_unet_and_leaves_no_hooks(sam_unet):
    mask = np.zeros(SIZE, bool)
    mask[50:120, 60:150] = True
    reference = persam_reference(sam_unet, fake_embedding(sam_unet, 1), mask)
    result = persam_segment(sam_unet, reference, fake_embedding(sam_unet, 2))
    assert [s.name for s in result.steps] == ["step1", "refine1", "refine2"]
    assert all(s.result.masks.shape == (1,) + SIZE for s in result.steps)  # one mask, NaN score
    assert result.attn_sim.shape == (1, 1, 1, 16 * 16)  # prior on SAM-UNet's 16 x 16 grid
    decoder = sam_unet.model.mask_decoder
    assert two_way_transformer(decoder) is decoder.sam_mask_decoder.transformer
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in decoder.modules()) == 0


def test_persam_f_refuses_a_single_mask_model(sam_unet):
    mask = np.zeros(SIZE, bool)
    mask[50:120, 60:150] = True
    with pytest.raises(ValueError, match="3 multimask outputs"):
        fit_oneshot(sam_unet, None, mask, method="persam_f", ref_embedding=fake_embedding(sam_unet, 1))


def test_prompt_free_model_is_refused():
    class PromptFree(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mask_decoder = torch.nn.Identity()

    class Seg:
        name, model = "sam_adapter", PromptFree()

    with pytest.raises(UnsupportedDecoderError, match="without prompts"):
        fit_oneshot(Seg(), np.zeros((8, 8), np.uint8), np.ones((8, 8), bool))


def test_unknown_method_is_refused(sam_unet):
    with pytest.raises(ValueError, match="persam_f"):
        fit_oneshot(sam_unet, None, np.ones(SIZE, bool), method="perSAM")
