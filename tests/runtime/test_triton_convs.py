"""The Triton MBConv / PatchMerging kernels (runtime/triton_convs.py) compute the folded TinyViT blocks.

CPU: the Triton interpreter in a subprocess (TRITON_INTERPRET=1 must precede the kernels' decoration,
and other tests import triton first), fp32, LiteMedSAM's real blocks at small sizes. GPU (device
machine): real sizes, fp32 and bf16, against the folded originals.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.conv_forms import fuse_batchnorm
from runtime.fast import use_tanh_gelu
from models.tiny_vit import TinyViT, TinyViTConfig

SCRIPT = Path(__file__).with_name("triton_convs_interpret.py")


CASES = ("mbconv", "patch_merging", "patch_merging_stride1", "encoder", "tanh_gelu", "half")


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Every case's result from one interpreter subprocess: each run of the script spent ~5.5 s of CPU importing
    torch and Triton before its case (6 runs, ~27 s a suite); a case that raises is reported in its own line."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *CASES], env=env, capture_output=True, text=True,
                          timeout=120 * len(CASES))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith('{"case"')]
    return {line["case"]: line for line in lines}


def _interpret(interpreted: dict, case: str) -> dict:
    r = interpreted[case]
    assert "error" not in r, r["error"]
    return r


@pytest.mark.parametrize("case", ["mbconv", "patch_merging", "patch_merging_stride1", "encoder"])
def test_fused_blocks_equal_the_folded_originals_in_fp32(interpreted, case):
    """Stage-0 MBConv (20 x 20, not a tile multiple), PatchMerging stride 2 (NCHW and odd-sized tokens) and
    stride 1 (320 outputs: several channel blocks), a whole small encoder eager and compiled."""
    r = _interpret(interpreted, case)
    assert r["shape_ok"]
    assert r["max_abs"] <= 1e-6 * max(r["scale"], 1.0) + 1e-5, r
    if case == "mbconv":
        assert r["channels_last"]
    if case == "encoder":
        assert r["count"] == r["count_after_decompose"] == 5  # 2 MBConv + 3 PatchMerging


def test_tanh_gelu_blocks_equal_the_originals_with_tanh_gelu(interpreted):
    """fast_gelu computes nn.GELU(approximate="tanh") everywhere in the block (fp32, interpreter's exp form),
    which differs measurably from the erf blocks."""
    r = _interpret(interpreted, "tanh_gelu")
    assert r["shape_ok"]
    assert r["max_abs"] <= 1e-6 * max(r["scale"], 1.0) + 1e-5, r
    assert r["erf_vs_tanh"] > 1e-5, r


def test_fused_blocks_in_half_precision_are_as_close_as_the_originals(interpreted):
    """fp16 through the interpreter (its bf16 is unusable): the kernels' low-precision dot and casts
    stay as close to fp32 as the original blocks run in fp16."""
    r = _interpret(interpreted, "half")
    assert r["shape_ok"]
    assert r["fused_err"] <= 1.5 * r["original_err"] + 1e-3 * r["scale"], r


def test_use_triton_convs_refuses_an_unfolded_encoder():
    from runtime.triton_convs import use_triton_convs

    encoder = TinyViT(TinyViTConfig(img_size=16, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)))
    with pytest.raises(ValueError, match="fuse_batchnorm"):
        use_triton_convs(encoder)


def _sm90_ptxas(kernel, signature: dict, constexprs: dict, num_warps: int, num_stages: int) -> str:
    """Compile ``kernel`` offline for an H100 (no GPU needed) as the JIT would specialise it for
    16-divisible sizes and aligned tensors; returns ``ptxas -v``'s report."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip("triton's bundled ptxas is not installed")
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t != "constexpr"}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        cmd = [str(ptxas), "-arch=sm_90a", "-v", f.name, "-o", os.devnull]
        done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@pytest.mark.parametrize("gelu", [0, 1], ids=["erf", "tanh"])
def test_default_launch_parameters_compile_for_the_h100_without_register_spills(gelu):
    """bf16, the stage-0 shapes, both GELU forms: spills to local memory would cost the bandwidth the
    kernels exist to save. The row-walking kernel's 4-warp default is the exception measured on the H100
    (faster than 8 warps without spills; runtime/triton_convs.py): its spills stay under 512 bytes."""
    from runtime import triton_convs as tc

    pw, dw = tc.TUNING["pointwise"], tc.TUNING["depthwise_pointwise"]
    ptrs = {n: "*bf16" for n in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")}
    sig = {**ptrs, **dict.fromkeys(("M", "K", "N"), "i32"),
           **dict.fromkeys(("BLOCK_M", "BLOCK_N", "BLOCK_K", "IEEE", "GELU"), "constexpr")}
    reports = [_sm90_ptxas(tc._pointwise_kernel, sig, {"BLOCK_M": pw["BLOCK_M"], "BLOCK_N": pw["BLOCK_N"],
                                                       "BLOCK_K": pw["BLOCK_K"], "IEEE": False, "GELU": gelu},
                           pw["num_warps"], pw["num_stages"])]
    ptrs = {n: "*bf16" for n in ("h_ptr", "wdw_ptr", "bdw_ptr", "w3_ptr", "b3_ptr", "res_ptr", "out_ptr")}
    ints = dict.fromkeys(("H", "W", "C", "HO", "WO", "N", "tiles_h", "tiles_w"), "i32")
    consts = ("STRIDE", "TILE_H", "TILE_W", "BLOCK_C", "BLOCK_N", "HAS_RES", "OUT_GELU", "IEEE", "UNROLL_TAPS", "GELU")
    sig = {**ptrs, **ints, **dict.fromkeys(consts, "constexpr")}
    for stride, n_out, mbconv in ((1, 64, True), (2, 128, False)):  # MBConv, PatchMerging 0
        ce = {"STRIDE": stride, "TILE_H": dw["TILE_H"], "TILE_W": dw["TILE_W"], "BLOCK_C": dw["BLOCK_C"],
              "BLOCK_N": max(n_out, dw["BLOCK_N"]), "HAS_RES": mbconv, "OUT_GELU": mbconv, "IEEE": False,
              "UNROLL_TAPS": bool(dw["UNROLL_TAPS"]), "GELU": gelu}
        reports.append(_sm90_ptxas(tc._depthwise_pointwise_kernel, sig, ce, dw["num_warps"], dw["num_stages"]))
    rows = tc.TUNING["dw_rows"]
    ptrs = {n: "*bf16" for n in ("h_ptr", "wdw_ptr", "bdw_ptr", "w3_ptr", "b3_ptr", "res_ptr", "out_ptr")}
    sig = {**ptrs, **dict.fromkeys(("H", "W", "tiles_w", "row_blocks"), "i32"),
           **dict.fromkeys(("C", "N", "TILE_W", "ROWS", "HAS_RES", "OUT_GELU", "IEEE", "GELU", "PREFETCH"), "constexpr")}
    ce = {"C": 256, "N": 64, "TILE_W": rows["TILE_W"], "ROWS": rows["ROWS"], "HAS_RES": True, "OUT_GELU": True,
          "IEEE": False, "GELU": gelu, "PREFETCH": bool(rows["PREFETCH"])}  # stage 0's MBConv
    rows_report = _sm90_ptxas(tc._dw_rows_kernel, sig, ce, rows["num_warps"], rows["num_stages"])
    for report in reports:
        assert "0 bytes spill stores" in report, report
    spilled = re.search(r"(\d+) bytes spill stores", rows_report)
    assert spilled and int(spilled.group(1)) < 512, rows_report


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_block(litemedsam, block: str):
    """(folded fp32 block on the GPU, its fused class, a channels-last batch of 4 at 256 x 256)."""
    from runtime.triton_convs import FusedMBConv, FusedPatchMerging

    encoder = copy.deepcopy(litemedsam.model.image_encoder).eval()
    fuse_batchnorm(encoder)
    ref = encoder.layers[0].blocks[0] if block == "mbconv" else encoder.layers[0].downsample
    ref = ref.cuda().to(memory_format=torch.channels_last)
    make = FusedMBConv if block == "mbconv" else FusedPatchMerging
    torch.manual_seed(0)
    x = torch.randn(4, 64, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    return ref, make, x


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("block", ["mbconv", "patch_merging"])
def test_tanh_gelu_blocks_on_the_gpu_match_the_tanh_originals(litemedsam, block):
    """fast_gelu on the GPU (the SFU's tanh.approx.f32): bf16 no further from the fp32 block with
    nn.GELU(approximate="tanh") than the plain bf16 kernels are from the fp32 erf block, plus bf16 rounding."""
    ref, make, x = _gpu_block(litemedsam, block)
    with torch.inference_mode():
        ref16 = copy.deepcopy(ref).to(torch.bfloat16)
        plain16, fast16 = make(ref16), make(ref16)
        fast16.fast_gelu = True
        want_erf = ref(x).float()
        err_plain = (plain16(x.to(torch.bfloat16)).float() - want_erf).abs().max().item()
        use_tanh_gelu(ref)
        want = ref(x).float()
        err_fast = (fast16(x.to(torch.bfloat16)).float() - want).abs().max().item()
    scale = want.abs().max().item()
    assert err_fast <= 1.5 * err_plain + 2 ** -8 * scale, (err_fast, err_plain)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("block", ["mbconv", "patch_merging"])
def test_fused_blocks_on_the_gpu_match_the_originals(litemedsam, block):
    """Real LiteMedSAM blocks at 256 x 256, batch 4: fp32 within rounding; bf16 no further from the fp32
    reference than the original block run in bf16 (plus a margin of bf16 rounding)."""
    ref, make, x = _gpu_block(litemedsam, block)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            want = ref(x).float()
            got = make(ref)(x)
            ref16 = copy.deepcopy(ref).to(torch.bfloat16)
            got16 = make(ref16)(x.to(torch.bfloat16)).float()
            base16 = ref16(x.to(torch.bfloat16)).float()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    scale = want.abs().max().item()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6 * scale + 1e-4
    err16, base_err16 = (got16 - want).abs().max().item(), (base16 - want).abs().max().item()
    assert err16 <= 1.5 * base_err16 + 2 ** -8 * scale, (err16, base_err16)


def test_fused_blocks_refuse_cpu_tensors_with_a_clear_message(litemedsam):
    """Without a GPU (and without the interpreter) the kernels say what they need, not a driver error."""
    from runtime.triton_convs import FusedMBConv

    encoder = copy.deepcopy(litemedsam.model.image_encoder).eval()
    fuse_batchnorm(encoder)
    block = FusedMBConv(encoder.layers[0].blocks[0])
    x = torch.zeros(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        block(x)
