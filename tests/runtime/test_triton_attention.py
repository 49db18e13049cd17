"""The Triton window attention (runtime/triton_attention.py) computes what TinyViT's SDPA path computes.

CPU: the kernel runs in Triton's interpreter, in a subprocess, because TRITON_INTERPRET must be set
before the kernel is decorated and other tests import triton first. The interpreter mishandles
bf16, so the CPU checks are fp32; bf16 and real batch sizes are checked on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

# (dim, heads, window) of LiteMedSAM's stages 1-3 (stage index in the checkpoint: 1, 2, 3)
STAGES = [(128, 4, 7), (160, 5, 14), (320, 10, 7)]

_INTERPRETED = r"""
import json, sys, torch
from pathlib import Path
from models.tiny_vit import Attention
from runtime.fast import set_window_attention

torch.set_num_threads(1)
ckpt = Path("weights/lite_medsam.pth")
state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
state = state.get("model", state) if state is not None else None
gen = torch.Generator().manual_seed(0)
rows = []
for stage, (dim, heads, window) in enumerate(json.loads(sys.argv[1]), start=1):
    attn = Attention(dim, heads, window).eval()
    prefix = f"image_encoder.layers.{stage}.blocks.0.attn."
    if state is not None:
        attn.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    else:
        with torch.no_grad():
            for p in attn.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    # 5 short windows: a partly filled last program (4 windows a program); 2 long ones: 4 key blocks each
    x = torch.randn(5 if window == 7 else 2, window * window, dim, generator=gen)
    with torch.no_grad():
        attn.impl = "sdpa"
        ref = attn(x)
        set_window_attention(attn, "triton", max_tokens=10**6)
        out = attn(x)
        # once: the op's fake (shape-only) version lets a full-graph compile keep it as one call
        compiled = torch.compile(attn, backend="aot_eager", fullgraph=True)(x) if stage == 1 else out
    rows.append({"n": window * window, "real_weights": state is not None, "scale": ref.abs().max().item(),
                 "diff": (out - ref).abs().max().item(), "compiled_diff": (compiled - out).abs().max().item()})
print(json.dumps(rows))
"""


def test_triton_window_attention_matches_sdpa_in_the_interpreter():
    """fp32, real LiteMedSAM attention weights (49- and 196-token windows): the Attention module gives
    the same output with impl "triton" as with "sdpa", eager and as one op in a full-graph compile."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _INTERPRETED, json.dumps(STAGES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["n"] for r in rows] == [49, 196, 49]
    for r in rows:
        assert r["scale"] > 0.1, r  # a real output, not zeros on both sides
        assert r["diff"] < 2e-5 * max(1.0, r["scale"]), r
        assert r["compiled_diff"] == 0.0, r


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs CPU tensors")
def test_triton_window_attention_refuses_cpu_tensors():
    from runtime.triton_attention import window_attention

    qkv = torch.zeros(1, 49, 4 * 96)
    with pytest.raises(RuntimeError, match="CUDA"):
        window_attention(qkv, torch.zeros(4, 49, 49), 4, 32**-0.5)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dim,heads,window", STAGES)
def test_triton_window_attention_on_gpu(dim, heads, window):
    """The attention core at LiteMedSAM's stage sizes (two 256 x 256 slices' windows): fp32 equals SDPA
    within rounding; in bf16 its error against an fp32 reference is no larger than SDPA's own bf16
    error (up to rounding); compiled, it is the same op."""
    from runtime.triton_attention import reference, window_attention

    torch.manual_seed(0)
    grid = {7: (128 if dim == 128 else 64), 14: 64}[window]
    windows = 2 * (-(-grid // window)) ** 2
    n = window * window
    qkv = torch.randn(windows, n, 3 * dim, device="cuda")
    bias = torch.randn(heads, n, n, device="cuda") * 2
    scale = (dim // heads) ** -0.5
    exact = reference(qkv.double(), bias.double(), heads, scale)
    assert (window_attention(qkv, bias, heads, scale).double() - exact).abs().max().item() < 1e-4
    q16 = qkv.bfloat16()
    ours = (window_attention(q16, bias, heads, scale).double() - exact).abs().max().item()
    theirs = (reference(q16, bias, heads, scale).double() - exact).abs().max().item()
    assert ours <= 1.25 * theirs + 1e-3, (ours, theirs)
    compiled = torch.compile(lambda t: window_attention(t, bias, heads, scale), fullgraph=True)
    assert torch.equal(compiled(q16), window_attention(q16, bias, heads, scale))
