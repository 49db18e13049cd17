"""Triton kernels for TinyViT's convolution blocks (stage-0 MBConv, PatchMerging) on channels-last data.

Why: at batch 128 the LiteMedSAM encoder's stage 0 is memory-bound. Compiled, each MBConv writes and
re-reads several 256-channel tensors (4.3 GB each in bf16): conv1's GEMM output, its GELU (padded),
the depthwise output. Here a block is two kernels and one 256-channel tensor:

* ``pointwise``: ``GELU(x @ W1^T + b1)`` over the rows of an NHWC tensor (conv1 + act1);
* ``depthwise_pointwise``: ``[GELU](GELU(dw3x3(h) + b_dw) @ W3^T + b3 [+ residual])``. The 9 taps are
  read straight from the unpadded NHWC hidden (zero padding by masks), summed in fp32 per chunk of
  channels, and fed to ``tl.dot`` with the matching rows of W3, so the depthwise output never
  reaches memory.

Both accumulate in fp32 and write the input's dtype; fp32 inputs use exact (IEEE) dots, not TF32.
Each launch is a ``torch.library.custom_op`` (``medseg::pointwise_gelu``, ``medseg::dw_pointwise``)
so that ``torch.compile`` of the whole encoder keeps it as one opaque call.

:func:`use_triton_convs` swaps every MBConv and PatchMerging of a Conv+BN-folded TinyViT
(``runtime.conv_forms.fuse_batchnorm``) for :class:`FusedMBConv` / :class:`FusedPatchMerging`.
Offsets are int64: 128 x 256 x 256 x 256 elements is 2^31.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import nn

from runtime.conv_forms import PointwiseConv, ShiftedDepthwiseConv
from models.tiny_vit import MBConv, PatchMerging

# Launch parameters, per kernel; benchmarks/triton_convs_check.py sweeps them. Read at every call,
# so changing them takes effect without recompiling an encoder that calls the custom ops.
# tests/runtime/test_triton_convs.py compiles the defaults for sm_90 offline and bounds their register spills.
TUNING: dict[str, dict[str, int]] = {
    # the fastest of benchmarks/triton_convs_check.py's sweeps for stage 0's MBConv on the H100, batch 128,
    # tanh GELU (docs/bench/h100_triton_convs_run4.jsonl: conv1 2.43 ms; the row-walking
    # depthwise-pointwise 5.64 ms; PatchMerging 0's direct kernel 1.44 ms)
    "pointwise": {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2},
    "depthwise_pointwise": {"TILE_H": 4, "TILE_W": 16, "BLOCK_C": 64, "BLOCK_N": 64, "UNROLL_TAPS": 0,
                            "num_warps": 4, "num_stages": 2},
    # stride 1 (MBConv): the row-walking kernel, whose running sums hold TILE_W x C fp32 per program.
    # PREFETCH loads the next row before this row's arithmetic (run 3: 10.4 -> 9.1 ms erf, 6.5 tanh).
    # 4 warps spill ~370 bytes a thread on sm_90 and still beat 8 warps without spills (5.64 vs 6.06-6.14
    # ms in run 4): the spills stay in L1, and two programs fit on an SM.
    "dw_rows": {"enabled": 1, "TILE_W": 16, "ROWS": 64, "max_channels": 256, "num_warps": 4, "num_stages": 1,
                "PREFETCH": 1, "maxnreg": 0},  # maxnreg 0: no register cap
}


# GELU variants (the kernels' ``GELU`` constexpr). The erf form costs ~37 instructions a value on
# sm_90 (libdevice's erff), more than the rest of these kernels' work per value; the tanh form,
# nn.GELU(approximate="tanh"), costs ~8 and differs from erf by < 5e-4, under bf16's rounding of the
# values it feeds. It is opt-in (``fast_gelu``; ``runtime.fast.tuned(gelu="tanh")``, bf16 only there).
GELU_ERF, GELU_TANH_SFU, GELU_TANH_EXP = 0, 1, 2


@triton.jit
def _gelu(x, GELU: tl.constexpr = 0):
    """GELU of fp32 ``x``: 0 exact (erf), as nn.GELU(); 1 tanh form with the SFU's tanh.approx.f32
    (GPU); 2 the same tanh form as x * sigmoid(2u), for the interpreter (no inline PTX there)."""
    if GELU == 0:
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    u = x * (0.7978845608028654 + 0.035677408136300125 * x * x)  # sqrt(2/pi) * (x + 0.044715 x^3)
    if GELU == 1:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
        h = 0.5 * x
        return h + h * t
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _pointwise_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, K, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
    GELU: tl.constexpr = 0,
):
    """y[m, n] = GELU(sum_k x[m, k] * w[k, n] + b[n]); x (M, K), w = W1^T (K, N), y (M, N), all row-major."""
    pid = tl.program_id(0)  # one grid axis (M / BLOCK_M passes 65535); n fastest: x tiles reused from L2
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    row0 = pid_m.to(tl.int64) * BLOCK_M  # the only 64-bit product: M * N reaches 2^31 at batch 128
    x_ptr += row0 * K
    y_ptr += row0 * N
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M - row0
    nmask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        a = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + ks[:, None] * N + cols[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    acc += tl.load(b_ptr + cols, mask=nmask, other=0.0).to(tl.float32)[None, :]
    y = _gelu(acc, GELU)
    ymask = rmask[:, None] & nmask[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def _tap(h_ptr, wdw_ptr, oy, ox, pmask, cs, cmask, tap, H, W, C, STRIDE: tl.constexpr):
    """Tap ``tap`` (ky * 3 + kx) of the 3x3 depthwise conv for pixels (oy, ox) and channels cs, fp32."""
    iy = oy * STRIDE + (tap // 3 - 1)
    ix = ox * STRIDE + (tap % 3 - 1)
    ok = pmask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    v = tl.load(h_ptr + (iy * W + ix)[:, None] * C + cs[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
    wk = tl.load(wdw_ptr + tap * C + cs, mask=cmask, other=0.0)
    return v.to(tl.float32) * wk.to(tl.float32)[None, :]


@triton.jit
def _depthwise_pointwise_kernel(
    h_ptr, wdw_ptr, bdw_ptr, w3_ptr, b3_ptr, res_ptr, out_ptr,
    H, W, C, HO, WO, N, tiles_h, tiles_w,
    STRIDE: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_RES: tl.constexpr, OUT_GELU: tl.constexpr, IEEE: tl.constexpr,
    UNROLL_TAPS: tl.constexpr, GELU: tl.constexpr = 0,
):
    """One program: a TILE_H x TILE_W tile of output pixels of one image, BLOCK_N output channels.

    h (B, H, W, C) NHWC; wdw (9, C) taps row-major over (ky, kx); w3 = W3^T (C, N); res/out (B, HO, WO, N).
    """
    num_n = tl.cdiv(N, BLOCK_N)
    pid_n = tl.program_id(0) % num_n  # n fastest: programs sharing a tile of h run together
    pid = tl.program_id(0) // num_n
    tx = pid % tiles_w
    t = pid // tiles_w
    ty = t % tiles_h
    b = (t // tiles_h).to(tl.int64)
    h_ptr += b * H * W * C  # 64-bit image bases; offsets inside one image fit in 32 bits
    out_ptr += b * HO * WO * N
    res_ptr += b * HO * WO * N
    p = tl.arange(0, TILE_H * TILE_W)
    oy = ty * TILE_H + p // TILE_W
    ox = tx * TILE_W + p % TILE_W
    pmask = (oy < HO) & (ox < WO)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    acc = tl.zeros((TILE_H * TILE_W, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        d = tl.zeros((TILE_H * TILE_W, BLOCK_C), dtype=tl.float32)
        if UNROLL_TAPS:  # 9 loads in flight, but more registers and shared memory (sm_90: up to 2x)
            for tap in tl.static_range(9):
                d += _tap(h_ptr, wdw_ptr, oy, ox, pmask, cs, cmask, tap, H, W, C, STRIDE)
        else:
            for tap in range(9):
                d += _tap(h_ptr, wdw_ptr, oy, ox, pmask, cs, cmask, tap, H, W, C, STRIDE)
        d += tl.load(bdw_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        d = _gelu(d, GELU)
        w3 = tl.load(w3_ptr + cs[:, None] * N + ns[None, :], mask=cmask[:, None] & nmask[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(d.to(w3.dtype), w3, input_precision="ieee")
        else:
            acc += tl.dot(d.to(w3.dtype), w3)
    acc += tl.load(b3_ptr + ns, mask=nmask, other=0.0).to(tl.float32)[None, :]
    opix = oy * WO + ox
    omask = pmask[:, None] & nmask[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + opix[:, None] * N + ns[None, :], mask=omask, other=0.0).to(tl.float32)
    if OUT_GELU:
        acc = _gelu(acc, GELU)
    tl.store(out_ptr + opix[:, None] * N + ns[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _row3(h_ptr, r, H, W, xs, cs, ok_l, ok_c, ok_r, C: tl.constexpr):
    """Input row ``r`` at columns xs - 1, xs, xs + 1 (zero outside the image), in the input dtype."""
    row_ok = (r >= 0) & (r < H)
    row = h_ptr + r * W * C
    left = tl.load(row + (xs - 1)[:, None] * C + cs[None, :], mask=(ok_l & row_ok)[:, None], other=0.0)
    mid = tl.load(row + xs[:, None] * C + cs[None, :], mask=(ok_c & row_ok)[:, None], other=0.0)
    right = tl.load(row + (xs + 1)[:, None] * C + cs[None, :], mask=(ok_r & row_ok)[:, None], other=0.0)
    return left, mid, right


@triton.jit
def _dw_rows_kernel(
    h_ptr, wdw_ptr, bdw_ptr, w3_ptr, b3_ptr, res_ptr, out_ptr, H, W, tiles_w, row_blocks,
    C: tl.constexpr, N: tl.constexpr, TILE_W: tl.constexpr, ROWS: tl.constexpr,
    HAS_RES: tl.constexpr, OUT_GELU: tl.constexpr, IEEE: tl.constexpr, GELU: tl.constexpr = 0,
    PREFETCH: tl.constexpr = 0,
):
    """Stride-1 ``depthwise_pointwise`` that reads each hidden row 3 times instead of 9.

    One program: ``ROWS`` output rows x ``TILE_W`` columns of one image, all C (a power of two)
    channels and all N output channels. It walks down the input rows; each row is loaded at three
    column shifts and added, with the three kernel rows' weights, to three running sums: the output
    row above it (now complete: GELU, then the 1x1 projection by ``tl.dot``, stored), the row itself
    and the row below. The direct kernel loads every tap (9 loads a value); here the row sums stay
    in registers between rows. ``PREFETCH``: the next row's loads are issued before this row's
    arithmetic, so that their latency overlaps it (one or two programs per SM leave few warps to switch to).
    """
    pid = tl.program_id(0)
    rb = pid % row_blocks
    t = pid // row_blocks
    tx = t % tiles_w
    b = (t // tiles_w).to(tl.int64)
    h_ptr += b * H * W * C  # 64-bit image bases; offsets inside one image fit in 32 bits
    out_ptr += b * H * W * N
    res_ptr += b * H * W * N
    xs = tx * TILE_W + tl.arange(0, TILE_W)
    cs = tl.arange(0, C)
    ns = tl.arange(0, N)
    ok_l = (xs >= 1) & (xs - 1 < W)
    ok_c = xs < W
    ok_r = xs + 1 < W
    w00 = tl.load(wdw_ptr + 0 * C + cs).to(tl.float32)[None, :]
    w01 = tl.load(wdw_ptr + 1 * C + cs).to(tl.float32)[None, :]
    w02 = tl.load(wdw_ptr + 2 * C + cs).to(tl.float32)[None, :]
    w10 = tl.load(wdw_ptr + 3 * C + cs).to(tl.float32)[None, :]
    w11 = tl.load(wdw_ptr + 4 * C + cs).to(tl.float32)[None, :]
    w12 = tl.load(wdw_ptr + 5 * C + cs).to(tl.float32)[None, :]
    w20 = tl.load(wdw_ptr + 6 * C + cs).to(tl.float32)[None, :]
    w21 = tl.load(wdw_ptr + 7 * C + cs).to(tl.float32)[None, :]
    w22 = tl.load(wdw_ptr + 8 * C + cs).to(tl.float32)[None, :]
    bdw = tl.load(bdw_ptr + cs).to(tl.float32)[None, :]
    w3 = tl.load(w3_ptr + cs[:, None] * N + ns[None, :])
    b3 = tl.load(b3_ptr + ns).to(tl.float32)[None, :]
    y0 = rb * ROWS
    above = tl.zeros((TILE_W, C), dtype=tl.float32)  # running sum of output row r - 1
    here = tl.zeros((TILE_W, C), dtype=tl.float32)  # ... of output row r
    if PREFETCH:
        next_l, next_m, next_r = _row3(h_ptr, y0 - 1, H, W, xs, cs, ok_l, ok_c, ok_r, C)
    for r in range(y0 - 1, y0 + ROWS + 1):  # input rows; output row r - 1 completes at row r
        if PREFETCH:
            left, mid, right = next_l, next_m, next_r
            next_l, next_m, next_r = _row3(h_ptr, r + 1, H, W, xs, cs, ok_l, ok_c, ok_r, C)
        else:
            left, mid, right = _row3(h_ptr, r, H, W, xs, cs, ok_l, ok_c, ok_r, C)
        left = left.to(tl.float32)
        mid = mid.to(tl.float32)
        right = right.to(tl.float32)
        done = above + left * w20 + mid * w21 + right * w22
        above = here + left * w10 + mid * w11 + right * w12
        here = left * w00 + mid * w01 + right * w02
        o = r - 1
        d = _gelu(done + bdw, GELU)
        if IEEE:
            acc = tl.dot(d.to(w3.dtype), w3, input_precision="ieee")
        else:
            acc = tl.dot(d.to(w3.dtype), w3)
        acc += b3
        omask = (ok_c & (o >= y0) & (o < y0 + ROWS) & (o < H))[:, None]
        offs = (o * W + xs)[:, None] * N + ns[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + offs, mask=omask, other=0.0).to(tl.float32)
        if OUT_GELU:
            acc = _gelu(acc, GELU)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=omask)


def _dot_block(n: int, cap: int) -> int:
    """A tl.dot dimension: a power of two >= 16, at most ``cap`` unless n needs more lanes than that."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current device), e.g. a worker's cuda:1."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_device(x: torch.Tensor) -> None:
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("the Triton MBConv/PatchMerging kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")


def _gelu_mode(fast_gelu: bool) -> int:
    """The kernels' ``GELU`` constexpr: exact erf, or the tanh form (SFU on a GPU, exp in the interpreter)."""
    if not fast_gelu:
        return GELU_ERF
    return GELU_TANH_EXP if _interpreting() else GELU_TANH_SFU


def pointwise(
    x: torch.Tensor, w1t: torch.Tensor, b1: torch.Tensor, fast_gelu: bool = False, **tuning: int
) -> torch.Tensor:
    """GELU(x @ w1t + b1) over the last dim of an NHWC (..., K) tensor; w1t is (K, N). Eager launcher.
    ``fast_gelu``: the tanh form of GELU (see ``_gelu``) instead of erf."""
    _check_device(x)
    cfg = {**TUNING["pointwise"], **tuning}
    x = x.contiguous()
    k, n = w1t.shape
    if x.shape[-1] != k:
        raise ValueError(f"pointwise: x has {x.shape[-1]} channels, the weight {k}")
    m = x.numel() // k
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    bm, bn, bk = cfg["BLOCK_M"], _dot_block(n, cfg["BLOCK_N"]), _dot_block(k, cfg["BLOCK_K"])
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    with _on(x.device):
        _pointwise_kernel[grid](
            x, w1t.to(x.dtype).contiguous(), b1.contiguous(), y, m, k, n,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, IEEE=x.dtype == torch.float32, GELU=_gelu_mode(fast_gelu),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    return y


def depthwise_pointwise(
    h: torch.Tensor, wdw: torch.Tensor, bdw: torch.Tensor, w3t: torch.Tensor, b3: torch.Tensor,
    residual: torch.Tensor | None = None, stride: int = 1, out_gelu: bool = False, fast_gelu: bool = False,
    **tuning: int,
) -> torch.Tensor:
    """[GELU](GELU(dw3x3(h, stride, pad 1) + bdw) @ w3t + b3 [+ residual]) on NHWC ``h`` (B, H, W, C).

    wdw (9, C): the 3x3 taps row-major; w3t (C, N); residual (B, HO, WO, N). Eager launcher.
    ``fast_gelu``: both GELUs in the tanh form (see ``_gelu``) instead of erf.
    """
    _check_device(h)
    rows = {**TUNING["dw_rows"], **tuning.pop("dw_rows", {})}  # a sweep may pass either kernel's settings
    cfg = {**TUNING["depthwise_pointwise"], **tuning}
    h = h.contiguous()
    bsz, hh, ww, c = h.shape
    n = w3t.shape[1]
    if wdw.shape != (9, c) or w3t.shape[0] != c:
        raise ValueError(
            f"depthwise_pointwise: hidden has {c} channels, taps {tuple(wdw.shape)}, W3^T {tuple(w3t.shape)}"
        )
    ho, wo = (hh - 1) // stride + 1, (ww - 1) // stride + 1
    out = torch.empty(bsz, ho, wo, n, dtype=h.dtype, device=h.device)
    if residual is not None:
        if residual.shape != out.shape:
            raise ValueError(f"depthwise_pointwise: residual {tuple(residual.shape)}, output {tuple(out.shape)}")
        residual = residual.contiguous()
    if rows["enabled"] and stride == 1 and _pow2(c) and _pow2(n) and c <= rows["max_channels"]:
        return _dw_rows(h, wdw, bdw, w3t, b3, residual, out, out_gelu, fast_gelu, rows)
    th, tw = cfg["TILE_H"], cfg["TILE_W"]
    bc, bn = _dot_block(c, cfg["BLOCK_C"]), _dot_block(n, cfg["BLOCK_N"])
    tiles_h, tiles_w = triton.cdiv(ho, th), triton.cdiv(wo, tw)
    grid = (bsz * tiles_h * tiles_w * triton.cdiv(n, bn),)
    with _on(h.device):
        _depthwise_pointwise_kernel[grid](
            h, wdw.contiguous(), bdw.contiguous(), w3t.to(h.dtype).contiguous(), b3.contiguous(),
            out if residual is None else residual, out,
            hh, ww, c, ho, wo, n, tiles_h, tiles_w,
            STRIDE=stride, TILE_H=th, TILE_W=tw, BLOCK_C=bc, BLOCK_N=bn,
            HAS_RES=residual is not None, OUT_GELU=out_gelu, IEEE=h.dtype == torch.float32,
            UNROLL_TAPS=bool(cfg["UNROLL_TAPS"]), GELU=_gelu_mode(fast_gelu), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    return out


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _dw_rows(h, wdw, bdw, w3t, b3, residual, out, out_gelu: bool, fast_gelu: bool, cfg: dict) -> torch.Tensor:
    """Launch :func:`_dw_rows_kernel` (stride 1; C and N powers of two)."""
    bsz, hh, ww, c = h.shape
    n = w3t.shape[1]
    tiles_w, row_blocks = triton.cdiv(ww, cfg["TILE_W"]), triton.cdiv(hh, cfg["ROWS"])
    with _on(h.device):
        _dw_rows_kernel[(bsz * tiles_w * row_blocks,)](
            h, wdw.contiguous(), bdw.contiguous(), w3t.to(h.dtype).contiguous(), b3.contiguous(),
            out if residual is None else residual, out, hh, ww, tiles_w, row_blocks,
            C=c, N=n, TILE_W=cfg["TILE_W"], ROWS=cfg["ROWS"], HAS_RES=residual is not None, OUT_GELU=out_gelu,
            IEEE=h.dtype == torch.float32, GELU=_gelu_mode(fast_gelu), PREFETCH=bool(cfg.get("PREFETCH", 0)),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}),
        )
    return out


# --- opaque ops for torch.compile -----------------------------------------------------------------
# Explicit schemas: no annotation inference (this module's annotations are strings).
@torch.library.custom_op("medseg::pointwise_gelu", mutates_args=(),
                         schema="(Tensor x, Tensor w1t, Tensor b1, bool fast_gelu=False) -> Tensor")
def pointwise_gelu_op(x: torch.Tensor, w1t: torch.Tensor, b1: torch.Tensor, fast_gelu: bool = False) -> torch.Tensor:
    return pointwise(x, w1t, b1, fast_gelu)


@pointwise_gelu_op.register_fake
def _(x, w1t, b1, fast_gelu=False):
    return x.new_empty(*x.shape[:-1], w1t.shape[1])


@torch.library.custom_op(
    "medseg::dw_pointwise", mutates_args=(),
    schema="(Tensor h, Tensor wdw, Tensor bdw, Tensor w3t, Tensor b3, Tensor? residual, int stride, "
    "bool out_gelu, bool fast_gelu=False) -> Tensor",
)
def dw_pointwise_op(
    h: torch.Tensor, wdw: torch.Tensor, bdw: torch.Tensor, w3t: torch.Tensor, b3: torch.Tensor,
    residual: torch.Tensor | None, stride: int, out_gelu: bool, fast_gelu: bool = False,
) -> torch.Tensor:
    return depthwise_pointwise(h, wdw, bdw, w3t, b3, residual, stride, out_gelu, fast_gelu)


@dw_pointwise_op.register_fake
def _(h, wdw, bdw, w3t, b3, residual, stride, out_gelu, fast_gelu=False):
    b, hh, ww, _ = h.shape
    return h.new_empty(b, (hh - 1) // stride + 1, (ww - 1) // stride + 1, w3t.shape[1])


# --- modules -------------------------------------------------------------------------------------
def _pointwise_weights(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T (Cin, Cout), bias) of a folded 1x1 conv (nn.Conv2d with bias, or PointwiseConv)."""
    if isinstance(conv, PointwiseConv):
        w, b = conv.weight, conv.bias
    elif isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1:
        w, b = conv.weight.flatten(1), conv.bias
    else:
        raise _not_folded(conv)
    if b is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return w.detach().t().contiguous(), b.detach().clone()


def _depthwise_weights(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(taps (9, C), bias, stride) of a folded 3x3 depthwise conv with padding 1."""
    if isinstance(conv, ShiftedDepthwiseConv) and conv.weight.shape[-1] == 3 and conv.padding == 1:
        w, b, s = conv.weight, conv.bias, conv.stride
    elif (
        isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        and conv.groups == conv.in_channels == conv.out_channels and conv.stride[0] == conv.stride[1]
        and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    ):
        w, b, s = conv.weight[:, 0], conv.bias, conv.stride[0]
    else:
        raise _not_folded(conv)
    if b is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return w.detach().flatten(1).t().contiguous(), b.detach().clone(), s


def _not_folded(conv: nn.Module) -> ValueError:
    return ValueError(
        f"use_triton_convs needs a Conv+BN-folded TinyViT (runtime.conv_forms.fuse_batchnorm); found {type(conv).__name__}"
    )


class _FusedConvBlock(nn.Module):
    """The weights of a conv1 -> GELU -> dw3x3 -> GELU -> conv3 block, laid out for the two kernels.
    ``fast_gelu`` (set by ``runtime.fast.use_tanh_gelu``): every GELU of the block in the tanh form."""

    fast_gelu: bool = False

    def __init__(self, conv1: nn.Module, conv2: nn.Module, conv3: nn.Module):
        super().__init__()
        w1t, b1 = _pointwise_weights(conv1)
        wdw, bdw, self.stride = _depthwise_weights(conv2)
        w3t, b3 = _pointwise_weights(conv3)
        for name, t in (("w1t", w1t), ("b1", b1), ("wdw", wdw), ("bdw", bdw), ("w3t", w3t), ("b3", b3)):
            self.register_buffer(name, t)

    def _run(self, x: torch.Tensor, residual: torch.Tensor | None, out_gelu: bool) -> torch.Tensor:
        """NHWC in, NHWC out; weights follow the activations' dtype (autocast-style inputs)."""
        dt = x.dtype
        fast = self.fast_gelu
        h = pointwise_gelu_op(x, self.w1t.to(dt), self.b1, fast)
        return dw_pointwise_op(h, self.wdw, self.bdw, self.w3t.to(dt), self.b3, residual, self.stride, out_gelu, fast)


class FusedMBConv(_FusedConvBlock):
    """MBConv of a folded TinyViT in two Triton kernels: (B, C, H, W) -> (B, C, H, W), channels-last out."""

    def __init__(self, block: MBConv):
        super().__init__(block.conv1, block.conv2, block.conv3)
        if self.stride != 1:
            raise ValueError("MBConv's depthwise conv must have stride 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh = x.permute(0, 2, 3, 1).contiguous()  # no copy for a channels-last input
        return self._run(xh, xh, True).permute(0, 3, 1, 2)


class FusedPatchMerging(_FusedConvBlock):
    """PatchMerging of a folded TinyViT in two Triton kernels: (B, C, H, W) or (B, H*W, C) -> (B, H'*W', C')."""

    def __init__(self, block: PatchMerging):
        super().__init__(block.conv1, block.conv2, block.conv3)
        self.resolution = block.resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            xh = x.reshape(x.shape[0], self.resolution, self.resolution, x.shape[2])
        else:
            xh = x.permute(0, 2, 3, 1)
        out = self._run(xh.contiguous(), None, False)
        return out.flatten(1, 2)


def use_triton_convs(encoder: nn.Module) -> int:
    """Replace every MBConv and PatchMerging of a folded TinyViT by its fused Triton module; returns how many.

    Mutates ``encoder`` (call it on a copy, after ``fuse_batchnorm``; before or after ``decompose_convs``
    and the dtype cast). Raises ValueError if a block still has an unfolded Conv2d + BatchNorm.
    """
    n = 0
    for name, child in list(encoder.named_children()):
        if isinstance(child, MBConv):
            setattr(encoder, name, FusedMBConv(child))
            n += 1
        elif isinstance(child, PatchMerging):
            setattr(encoder, name, FusedPatchMerging(child))
            n += 1
        else:
            n += use_triton_convs(child)
    return n
