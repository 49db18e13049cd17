"""Fast paths keep the numbers: SDPA attention in SAM's ViT, bf16 encoder, ONNX Runtime backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from runtime.fast import SDPAAttention, tuned, use_sdpa_attention
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


def test_tuned_runs_a_sam_vits_attention_through_sdpa(monkeypatch):
    """tuned() gives a SAM ViT's encoder copy the fused attention (on a GPU in half precision the flash kernel
    with the folded bias; before, the product's SAM ViT-B materialised every bias: network 7.7 ms against
    4.2 ms on an H100). fp32 output equal within rounding; the original model keeps its own attention."""
    from models.geometry import LongestSide
    from models.segmenter import Segmenter

    holder = torch.nn.Module()
    holder.image_encoder = _tiny_vit()
    seg = Segmenter(holder, geometry=LongestSide(64))
    calls = []
    forward = SDPAAttention.forward
    monkeypatch.setattr(SDPAAttention, "forward", lambda self, x: calls.append(1) or forward(self, x))
    fast = tuned(seg, precision="fp32", channels_last=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        got = fast.encode(x)[0]
        ref = holder.image_encoder(x)
    assert len(calls) == 2  # both blocks, windowed and global
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    assert all(type(b.attn) is not SDPAAttention for b in holder.image_encoder.blocks)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(PARITY / "litemedsam_real" / "golden.npz"))


@pytest.fixture(scope="module")
def fp32_embedding(litemedsam, golden):
    """The default (fp32) embedding of the parity slice: the reference of every encoder path below, encoded once."""
    return litemedsam.embed(golden["image"])


@pytest.fixture(scope="module")
def bf16_erf(litemedsam, golden):
    """``tuned(precision="bf16")`` and its embedding of the parity slice (bf16 on a CPU is slow: encoded once)."""
    fast = tuned(litemedsam, precision="bf16")
    return fast, fast.embed(golden["image"])


def test_bf16_encoder_keeps_the_box_mask(litemedsam, golden, fp32_embedding, bf16_erf):
    """bf16 autocast changes the embedding a little, the mask barely (real weights, real slice)."""
    g = golden
    fast, b = bf16_erf
    a = fp32_embedding
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


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8),  # TinyViT local conv / MBConv depthwise
        torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False),  # PatchMerging's strided depthwise
        torch.nn.Conv2d(8, 16, 1),  # MBConv expand / project
    ],
    ids=["depthwise", "depthwise-stride2", "pointwise"],
)
def test_decomposed_convolutions_compute_the_same_layer(conv):
    from runtime.conv_forms import decompose_convs

    torch.manual_seed(0)
    layer = torch.nn.Sequential(conv).eval()
    fast = copy.deepcopy(layer)
    assert decompose_convs(fast) == 1 and type(fast[0]) is not torch.nn.Conv2d
    x = torch.randn(2, 8, 13, 13).contiguous(memory_format=torch.channels_last)  # odd size: the padding edges
    with torch.no_grad():
        ref, out = layer(x), fast(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_decomposed_litemedsam_encoder_keeps_the_embedding(litemedsam, golden, fp32_embedding):
    """The compiled GPU path's rewrite, run eagerly on the CPU: same embedding within fp32 rounding."""
    image = golden["image"]  # (300, 400, 3) uint8
    ref = fp32_embedding.features
    fast = tuned(litemedsam, precision="fp32", decompose=True, channels_last=True).embed(image).features
    assert (fast - ref).abs().max().item() < 2e-5  # measured 3.4e-6 (embedding values up to ~0.6)


def test_batched_preprocessing_equals_the_per_slice_pipeline(litemedsam):
    """MedSAM's resize + min-max + pad, done for a batch with the arithmetic on the model's device,
    gives exactly the per-slice inputs (sizes that need a resize, padding, a constant slice)."""
    rng = np.random.default_rng(0)
    images = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in [(256, 256), (217, 181), (512, 300), (100, 400)]]
    images.append(np.full((64, 64, 3), 7, np.uint8))
    batch = litemedsam.preprocess_batch(images)
    assert batch.shape == (5, 3, 256, 256)
    for i, image in enumerate(images):
        assert torch.equal(batch[i : i + 1], litemedsam.preprocess(image))


@pytest.mark.parametrize("impl", ["math", "flash"])
def test_window_attention_variants_compute_the_same_attention(impl):
    """The explicit and the bias-folded forms of TinyViT's 7x7 window attention equal the SDPA reference
    in fp32 (random weights and biases, fresh inputs), so only speed can differ on the GPU."""
    from models.tiny_vit import Attention

    torch.manual_seed(1)
    ref = Attention(dim=64, num_heads=2, window=7).eval()
    with torch.no_grad():
        ref.attention_biases.normal_(0, 2.0)  # biases start at zero: make them matter
    fast = copy.deepcopy(ref)
    fast.impl = impl
    x = torch.randn(6, 49, 64)
    with torch.no_grad():
        a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert (a - fast(torch.randn(6, 49, 64))).abs().max() > 0.1  # the check can fail: other inputs differ


@pytest.mark.parametrize("impl", ["math", "flash"])
def test_tuned_window_attention_keeps_the_litemedsam_embedding(litemedsam, golden, fp32_embedding, impl):
    """Real weights, real slice, fp32: the 4 short-window blocks (stages 1 and 3) switched, stage 2's
    14x14 windows left on SDPA, the embedding within fp32 rounding of the default (measured 3.8e-6)."""
    from runtime.fast import set_window_attention
    from models.tiny_vit import Attention

    encoder = copy.deepcopy(litemedsam.model.image_encoder)
    assert set_window_attention(encoder, impl) == 4
    assert sorted(m.impl for m in encoder.modules() if isinstance(m, Attention)) == [impl] * 4 + ["sdpa"] * 6
    ref = fp32_embedding.features
    fast = tuned(litemedsam, precision="fp32", attention=impl).embed(golden["image"]).features
    assert (fast - ref).abs().max().item() < 2e-5
    assert all(m.impl == "sdpa" for m in litemedsam.model.modules() if isinstance(m, Attention))  # original untouched


def test_tuned_rejects_unknown_window_attention(litemedsam):
    with pytest.raises(ValueError, match="attention must be one of"):
        tuned(litemedsam, attention="xformers")


def test_realize_option_computes_the_gelu_before_a_depthwise_conv_once():
    """Compiled (CPU) MBConv-like block, convs decomposed: by default inductor recomputes the GELU in front
    of the depthwise conv for each of its 9 taps; with REALIZE_STENCIL_INPUTS the output code has one
    erf per GELU, and the outputs stay those of the eager block."""
    import re

    from torch._inductor.utils import run_and_get_code

    from runtime.conv_forms import decompose_convs
    from runtime.fast import REALIZE_STENCIL_INPUTS

    torch.manual_seed(0)
    conv = torch.nn.Conv2d
    block = torch.nn.Sequential(conv(16, 64, 1), torch.nn.GELU(), conv(64, 64, 3, 1, 1, groups=64), torch.nn.GELU(),
                                conv(64, 16, 1)).eval()
    decompose_convs(block)
    x = torch.randn(2, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, codes = run_and_get_code(torch.compile(block, dynamic=False, options=REALIZE_STENCIL_INPUTS), x)
        ref = block(x)
    assert len(re.findall(r"\berf\(", codes[0])) == 2  # default options: 10 (9 taps + the GELU after)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_tuned_inductor_options_need_a_plain_compile(litemedsam):
    from runtime.fast import REALIZE_STENCIL_INPUTS

    with pytest.raises(ValueError, match="inductor_options"):
        tuned(litemedsam, compile="max-autotune", inductor_options=REALIZE_STENCIL_INPUTS)


@pytest.mark.parametrize("backend", ["torch-triton", "torch-triton-tanh"])
def test_medseg_bench_refuses_torch_triton_without_a_gpu(capsys, backend):
    """The Triton backends name their requirement instead of failing inside a kernel launch."""
    from app.cli import main

    code = main(["bench", "--backends", backend, "--device", "cpu", "--batches", "1"])
    err = capsys.readouterr().err
    assert code != 0
    assert backend in err and "--device cuda" in err


def test_linear_gelu_is_the_linear_layer_and_the_tanh_gelu():
    """One op for fc1 + GELU: fp32 equal to nn.Linear + nn.GELU(approximate="tanh"); bf16 under autocast
    (the LayerNorm in front returns fp32 there); torch.compile keeps it as one call."""
    from runtime.linear_gelu import LinearGELU

    torch.manual_seed(0)
    fc = torch.nn.Linear(64, 256)
    fused = LinearGELU(fc)
    x = torch.randn(2, 49, 64)
    with torch.inference_mode():
        want = torch.nn.functional.gelu(fc(x), approximate="tanh")
        torch.testing.assert_close(fused(x), want, rtol=0, atol=1e-6)
        assert (torch.nn.functional.gelu(fc(x)) - want).abs().max() > 1e-5  # erf: another function
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = fused(x)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), want, rtol=0.02, atol=0.02)
        graphs = []
        compiled = torch.compile(fused, backend=lambda gm, _: graphs.append(gm) or gm)
        torch.testing.assert_close(compiled(x), want, rtol=0, atol=1e-6)
    calls = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert torch.ops.medseg.linear_gelu.default in calls or torch.ops.medseg.linear_gelu in calls


def test_tanh_gelu_keeps_the_litemedsam_box_mask(litemedsam, golden, bf16_erf):
    """tuned(gelu="tanh"): every GELU of the encoder copy in the tanh form (10 MLPs as one GEMM each),
    the mask of the parity box as from the bf16 erf path; bf16 only."""
    from runtime.fast import use_tanh_gelu
    from runtime.linear_gelu import LinearGELU

    encoder = copy.deepcopy(litemedsam.model.image_encoder)
    changed = use_tanh_gelu(encoder)
    gelus = [m for m in encoder.modules() if isinstance(m, torch.nn.GELU)]
    assert sum(isinstance(m, LinearGELU) for m in encoder.modules()) == 10
    assert gelus and all(m.approximate == "tanh" for m in gelus) and changed == 10 + len(gelus)
    g = golden
    (erf, a), tanh = bf16_erf, tuned(litemedsam, precision="bf16", gelu="tanh")
    b = tanh.embed(g["image"])
    assert not a.features.equal(b.features)
    m1 = erf.predict(a, Prompts(box=g["box__box"])).best_mask
    m2 = tanh.predict(b, Prompts(box=g["box__box"])).best_mask
    assert 2 * (m1 & m2).sum() / (m1.sum() + m2.sum()) > 0.98
    with pytest.raises(ValueError, match="bf16"):
        tuned(litemedsam, precision="fp32", gelu="tanh")
    with pytest.raises(ValueError, match="gelu"):
        tuned(litemedsam, gelu="sigmoid")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_linear_gelu_on_the_gpu_is_the_tanh_gelu():
    """On CUDA the op is cuBLASLt's GELU epilogue: the tanh form, in fp32 and in bf16 (stage 1's MLP shape)."""
    from runtime.linear_gelu import LinearGELU

    torch.manual_seed(0)
    fc = torch.nn.Linear(128, 512).cuda()
    x = torch.randn(4096, 128, device="cuda")
    with torch.inference_mode():
        want = torch.nn.functional.gelu(fc(x), approximate="tanh")
        erf = torch.nn.functional.gelu(fc(x))
        got = LinearGELU(fc)(x)
        assert (got - want).abs().max() < 0.1 * (erf - want).abs().max()  # nearer tanh than erf
        fc16 = copy.deepcopy(fc).to(torch.bfloat16)
        got16 = LinearGELU(fc16)(x.to(torch.bfloat16)).float()
        want16 = torch.nn.functional.gelu(fc16(x.to(torch.bfloat16)).float(), approximate="tanh")
    torch.testing.assert_close(got16, want16, rtol=0.02, atol=0.02)
