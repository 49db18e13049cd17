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
def sam_vit_b_synthetic(tmp_path_factory):
    """SAM ViT-B with the parity fixture's synthetic weights, resizing with torch (on the CPU here)."""
    from models.registry import load_segmenter
    from tests.synthetic_weights import manifest, synth_array

    fixture = PARITY / "sam_vit_b"
    state = {k: torch.from_numpy(synth_array(k, tuple(s), d)) for k, s, d in manifest(fixture)["state_dict"]}
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b.pth"
    torch.save(state, path)
    del state
    seg = load_segmenter("sam_vit_b", checkpoint=str(path))
    fast = copy.copy(seg)
    fast.torch_resize = True
    path.unlink()
    return fast


@pytest.mark.slow
def test_sam_masks_with_the_torch_resize_match_the_official_goldens(sam_vit_b_synthetic):
    """The parity README's rule: at most 0.01 % of mask pixels differ, only where the logit is near 0."""
    from models.prompts import Prompts

    def assert_masks_match(mask, golden, logits, what):  # the parity README's rule (as tests of the zoo's parity)
        differ = mask != golden
        assert differ.sum() <= 1e-4 * differ.size, f"{what}: {int(differ.sum())} of {differ.size} pixels differ"
        assert np.all(np.abs(logits[differ]) < 1e-3), f"{what}: pixels with confident logits differ"

    g = dict(np.load(PARITY / "sam_vit_b" / "golden.npz"))
    seg = sam_vit_b_synthetic
    np.testing.assert_allclose(seg.preprocess(g["image"]).numpy(), g["input_tensor"], rtol=0, atol=1e-6)
    emb = seg.embed(g["image"])
    checked = 0
    for p in ("point1", "points2", "box", "box_point"):
        prompts = Prompts(points=g.get(f"{p}__point_coords"), point_labels=g.get(f"{p}__point_labels"),
                          box=g.get(f"{p}__box"))
        multimask = bool(g.get(f"{p}__multimask_output", False))
        result = seg.predict(emb, prompts, multimask_output=multimask)
        logits = seg.geometry.logits_to_original(torch.from_numpy(result.low_res_logits)[None], emb.original_size)
        for c in range(result.masks.shape[0]):
            assert_masks_match(result.masks[c], g[f"{p}__masks"][c], logits[0, c].numpy(), f"{p}[{c}]")
            checked += 1
    assert checked == 6


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
