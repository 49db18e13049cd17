"""SAM's resize on the segmenter's device equals PIL's (issue 22: SAM end to end without PIL on the CPU).

``models.pil_resize`` reproduces Pillow's bilinear arithmetic; these tests run its torch code on the CPU
(the GPU runs the same ops) against PIL itself and against the official SAM ViT-B goldens.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from models.pil_resize import pil_bilinear_resize
from tests.conftest import PARITY


def _pil(image: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize("src, dst", [
    ((300, 400), (768, 1024)),  # the goldens' slice to SAM's 1024
    ((512, 512), (1024, 1024)),  # a CT slice
    ((217, 181), (1024, 854)),  # the shared MR slices (odd sizes)
    ((2000, 3000), (683, 1024)),  # shrinking: Pillow widens the filter
    ((1500, 900), (1024, 614)),
    ((7, 5), (30, 21)),
    ((100, 100), (100, 50)),  # one axis unchanged: Pillow skips that pass
])
def test_torch_resize_is_pils_bit_for_bit(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    noise = rng.integers(0, 256, (*src, 3), dtype=np.uint8)  # every rounding case, not only smooth ramps
    out = pil_bilinear_resize(torch.from_numpy(noise), dst).numpy()
    np.testing.assert_array_equal(out, _pil(noise, *dst))


def test_float_interpolate_is_not_enough():
    """Why the fixed-point code exists: torch's float bilinear rounds differently from PIL's on the goldens."""
    image = np.load(PARITY / "sam_vit_b" / "golden.npz")["image"]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    plain = torch.nn.functional.interpolate(x, (768, 1024), mode="bilinear", align_corners=False, antialias=True)
    plain = plain.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()
    assert (plain != _pil(image, 768, 1024)).any()


@pytest.fixture(scope="module")
def sam_vit_b():
    """SAM ViT-B's segmenter resizing with torch (on the CPU here). Untrained: the model input does not depend
    on the weights (Sam.preprocess normalises with fixed constants), and it is checked against the official one."""
    from models.sam import SamSegmenter, build_sam

    seg = SamSegmenter(build_sam("vit_b"), name="sam_vit_b")
    seg.torch_resize = True
    return seg


def test_sam_input_with_the_torch_resize_is_the_pil_paths_bit_for_bit(sam_vit_b):
    """On the goldens' slice, SAM ViT-B's model input with the torch resize equals the PIL path's bit for bit
    (and the official input tensor within 1e-6). The resize is the only step ``torch_resize`` changes, so the
    encoder and decoder then compute exactly what tests/models/test_zoo_parity.py checks against the official
    goldens on the PIL path with the fixture's synthetic weights (``test_preprocessing_and_embedding_match_official
    [sam_vit_b]``, ``test_prompt_set_matches_official[sam_vit_b-point1 / points2 / box / box_point ...]``, the
    parity README's mask rule). This test encoded that slice with ViT-B a second time (~27 s of a CI run) and
    compared the same masks again."""
    g = dict(np.load(PARITY / "sam_vit_b" / "golden.npz"))
    fast = sam_vit_b
    pil = copy.copy(fast)
    pil.torch_resize = False
    x = fast.preprocess(g["image"])
    assert torch.equal(x, pil.preprocess(g["image"]))
    np.testing.assert_allclose(x.numpy(), g["input_tensor"], rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_torch_resize_on_the_gpu_is_pils():
    """The same integer ops on CUDA (what SAM runs on a GPU): bit for bit PIL's, up and down."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(1)
    for src, dst in (((256, 256), (1024, 1024)), ((300, 400), (768, 1024)), ((2000, 3000), (683, 1024))):
        noise = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        out = pil_bilinear_resize(torch.from_numpy(noise).cuda(), dst).cpu().numpy()
        np.testing.assert_array_equal(out, _pil(noise, *dst))
