"""TinyViT window attention as one Triton kernel, for batched GPU throughput.

TinyViT attends within 7 x 7 (49-token) and 14 x 14 (196-token) windows with head dim 32 and a
learned (heads, n, n) bias. ``F.scaled_dot_product_attention`` with that bias as a mask runs the
memory-efficient kernel, one tiny 49 x 49 x 32 problem per thread block plus the permutes around
it: about 6x the time the q/k/v/out bytes need at HBM bandwidth. This kernel reads q, k and v
straight from the qkv linear's output ``(windows, n, heads * 3 * hd)`` (per head ``[q, k, v]``),
writes ``(windows, n, heads * hd)`` (the layout ``proj`` takes), and lets one program handle
several windows and heads, so the per-program overhead is shared.

Numerics follow SDPA: scores and softmax in fp32, the probabilities cast to the input dtype
before ``@ v``, fp32 accumulation, output in the input dtype. fp32 inputs use IEEE dot products
(not TF32). :func:`window_attention` is a ``torch.library`` custom op, so ``torch.compile`` of
the whole encoder keeps it as one opaque call.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: Triton 3.6 refuses plain globals in kernels


@dataclass(frozen=True)
class LaunchConfig:
    """How the work is cut into programs: ``windows`` x ``heads`` (window, head) pairs per program,
    query rows in blocks of ``block_m``, keys in blocks of ``block_n`` (online softmax over them)."""

    windows: int = 4
    heads: int = 1
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


# Defaults per window length: the fastest of benchmarks/triton_attention_check.py's sweep on the H100
# (docs/bench/h100_triton_attention_run1.jsonl, batch 128: stage 1 1.05 ms vs SDPA 2.66; stage 2
# 1.52 vs 2.96; stage 3 took windows=4 at 0.78 vs 1.81, within 7 % of windows=8's 0.84).
DEFAULT_CONFIGS: dict[int, LaunchConfig] = {
    49: LaunchConfig(windows=8, heads=1, block_m=64, block_n=64, num_warps=4, num_stages=2),
    196: LaunchConfig(windows=1, heads=1, block_m=64, block_n=128, num_warps=4, num_stages=2),
}


def default_config(n: int) -> LaunchConfig:
    if n in DEFAULT_CONFIGS:
        return DEFAULT_CONFIGS[n]
    block = max(16, triton.next_power_of_2(n))
    return LaunchConfig(windows=1, block_m=min(block, 64), block_n=min(block, 64))


@triton.jit
def _window_attention_kernel(
    qkv_ptr,
    bias_ptr,
    out_ptr,
    num_windows,
    scale,
    N: tl.constexpr,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    WINDOWS: tl.constexpr,
    HEADS_PER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (pid0, pid1, pid2): windows [pid0 * WINDOWS, +WINDOWS), heads [pid1 * HEADS_PER,
    +HEADS_PER), query rows [pid2 * BLOCK_M, +BLOCK_M)."""
    in_row: tl.constexpr = HEADS * 3 * HEAD_DIM
    out_row: tl.constexpr = HEADS * HEAD_DIM
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < N
    for hh in tl.static_range(HEADS_PER):
        head = tl.program_id(1) * HEADS_PER + hh
        bias_head = bias_ptr + head * N * N
        if N <= BLOCK_N:
            # one key block: this head's bias tile stays in registers for all the windows
            bias_one = tl.load(
                bias_head + rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & (cols < N)[None, :], other=0.0
            )
            bias_one = tl.where((cols < N)[None, :], bias_one * LOG2E, float("-inf"))
        for wi in range(WINDOWS):
            window = tl.program_id(0) * WINDOWS + wi
            live = window < num_windows
            base = qkv_ptr + window.to(tl.int64) * (N * in_row) + head * (3 * HEAD_DIM)
            q_mask = (row_ok & live)[:, None]
            q = tl.load(base + rows[:, None] * in_row + dims[None, :], mask=q_mask, other=0.0)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            for start in tl.static_range(0, N, BLOCK_N):
                keys = start + cols
                key_ok = keys < N
                kv_mask = (key_ok & live)[:, None]
                k = tl.load(base + HEAD_DIM + keys[:, None] * in_row + dims[None, :], mask=kv_mask, other=0.0)
                v = tl.load(base + 2 * HEAD_DIM + keys[:, None] * in_row + dims[None, :], mask=kv_mask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
                if N <= BLOCK_N:
                    s = s * (scale * LOG2E) + bias_one
                else:
                    b = tl.load(
                        bias_head + rows[:, None] * N + keys[None, :],
                        mask=row_ok[:, None] & key_ok[None, :],
                        other=0.0,
                    )
                    s = tl.where(key_ok[None, :], s * (scale * LOG2E) + b * LOG2E, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.math.exp2(m_i - m_new)
                p = tl.math.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
            out = acc / l_i[:, None]
            dst = out_ptr + window.to(tl.int64) * (N * out_row) + head * HEAD_DIM
            tl.store(dst + rows[:, None] * out_row + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=q_mask)


def launch(
    qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Window attention on the qkv linear's output ``(windows, n, heads * 3 * hd)``; returns
    ``(windows, n, heads * hd)``. ``bias`` is the dense ``(heads, n, n)`` attention bias."""
    windows, n, width = qkv.shape
    head_dim = width // (3 * num_heads)
    if width != 3 * num_heads * head_dim or head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"qkv width {width} is not heads ({num_heads}) x 3 x a power-of-two head dim >= 16")
    if bias.shape != (num_heads, n, n):
        raise ValueError(f"bias must be {(num_heads, n, n)}, got {tuple(bias.shape)}")
    if qkv.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {qkv.dtype}")
    if not qkv.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton window attention needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    cfg = config or default_config(n)
    if num_heads % cfg.heads:
        raise ValueError(f"{cfg.heads} heads per program do not divide {num_heads} heads")
    qkv = qkv.contiguous()
    bias = bias.to(torch.float32).contiguous()
    out = torch.empty((windows, n, num_heads * head_dim), dtype=qkv.dtype, device=qkv.device)
    if windows == 0:
        return out
    grid = (triton.cdiv(windows, cfg.windows), num_heads // cfg.heads, triton.cdiv(n, cfg.block_m))
    # Triton launches on the current device: follow the tensors (e.g. a worker's cuda:1)
    with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():
        _launch(grid, qkv, bias, out, windows, scale, n, num_heads, head_dim, cfg)
    return out


def _launch(grid, qkv, bias, out, windows: int, scale: float, n: int, num_heads: int, head_dim: int,
            cfg: LaunchConfig) -> None:
    _window_attention_kernel[grid](
        qkv,
        bias,
        out,
        windows,
        scale,
        N=n,
        HEADS=num_heads,
        HEAD_DIM=head_dim,
        WINDOWS=cfg.windows,
        HEADS_PER=cfg.heads,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


@torch.library.custom_op("medseg::window_attention", mutates_args=())
def window_attention(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v per window and head (see the module docstring for layouts)."""
    return launch(qkv, bias, num_heads, scale)


@window_attention.register_fake
def _(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    windows, n, width = qkv.shape
    return qkv.new_empty((windows, n, width // 3))


def reference(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """The same product through SDPA with the bias as a mask, permutes included (tests, benchmark)."""
    b, n, width = qkv.shape
    hd = width // (3 * num_heads)
    q, k, v = qkv.view(b, n, num_heads, 3 * hd).permute(0, 2, 1, 3).split(hd, dim=3)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
    return out.transpose(1, 2).reshape(b, n, -1)


__all__ = ["LaunchConfig", "DEFAULT_CONFIGS", "default_config", "launch", "window_attention", "reference"]
