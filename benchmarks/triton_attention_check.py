"""TinyViT window attention on the GPU: the Triton kernel (runtime/triton_attention.py) against SDPA with
the bias as a mask, at LiteMedSAM's three attention stages and batch 128. A diagnostic for choosing
``DEFAULT_CONFIGS`` and for docs/benchmarks.md, not a benchmark of record.

The inputs are real: the first attention block of stages 1-3 of LiteMedSAM (bf16 weights) on the
activations a batch of slices produces (captured with forward pre-hooks). One JSON line per result:

* ``part: "accuracy"``: max abs diff of the attention core (qkv -> per-head output) against SDPA, in
  fp32 and bf16, and both against a float64 reference on a subset of windows;
* ``part: "time"``: median ms of the attention core, SDPA as the model runs it now (permutes, mask
  cast and the output transpose included) and the kernel under each launch config of a small greedy
  sweep (windows / heads per program, blocks, then num_warps x num_stages), with the HBM bandwidth
  the q/k/v/out bytes would need at that time;
* ``part: "encoder"``: the whole encoder, eager bf16, every window attention on "triton" vs "sdpa".

    python3 benchmarks/triton_attention_check.py --out $OUT/triton_attention.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.registry import load_segmenter  # noqa: E402
from models.tiny_vit import Attention  # noqa: E402
from runtime.fast import set_window_attention  # noqa: E402
from runtime.triton_attention import LaunchConfig, default_config, launch, reference  # noqa: E402


def emit(row: dict, out: str | None) -> None:
    row = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def cuda_ms(fn, warmup: int = 3, repeat: int = 15) -> float:
    """Median of CUDA-event timings of single calls (after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def slice_batch(seg, batch: int) -> torch.Tensor:
    bench = ROOT / ".bench" / "slices.npz"
    if bench.is_file():
        image = np.load(bench)["ct_slice"]
    else:  # a smooth synthetic slice
        yy, xx = np.mgrid[0:256, 0:256] / 256.0
        gray = (127 + 100 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.uint8)
        image = np.repeat(gray[..., None], 3, 2)
    return seg.preprocess(image).to("cuda").expand(batch, -1, -1, -1).contiguous()


def captured_inputs(encoder, x: torch.Tensor) -> dict[int, tuple[Attention, torch.Tensor]]:
    """The input of the first attention module of stages 1-3 (windows, n, dim) for this batch."""
    seen: dict[int, tuple[Attention, torch.Tensor]] = {}
    def keep(stage: int):
        def hook(module, args) -> None:
            seen.setdefault(stage, (module, args[0].clone()))

        return hook

    hooks = [encoder.layers[s].blocks[0].attn.register_forward_pre_hook(keep(s)) for s in (1, 2, 3)]
    with torch.inference_mode():
        encoder(x.to(torch.bfloat16))
    for h in hooks:
        h.remove()
    return seen


def sweep_rounds(n: int, heads: int) -> list[list[dict]]:
    """A greedy sweep: each round overrides some fields of the best config found so far."""
    if n <= 64:
        shapes = [{"windows": w, "heads": h} for w in (1, 2, 4, 8, 16) for h in sorted({1, heads})]
    else:
        blocks = [(64, 64), (128, 64), (64, 128), (128, 128), (256, 64)]
        shapes = [{"block_m": bm, "block_n": bn, "windows": w, "heads": 1} for bm, bn in blocks for w in (1, 2)]
        shapes.append({"block_m": 64, "block_n": 64, "windows": 1, "heads": heads})
        # one key block for all n keys, so the bias tile stays in registers across the program's windows
        # (8 warps for the wider score tile). H100 run 15: 2.2-3.3 ms vs 1.5 for 64 x 128; kept as a check
        one = triton.next_power_of_2(n)
        shapes += [{"block_m": bm, "block_n": one, "windows": w, "heads": 1, "num_warps": nw}
                   for bm, nw in ((32, 4), (64, 8)) for w in (1, 2, 4)]
    return [shapes, [{"num_warps": nw, "num_stages": ns} for nw in (2, 4, 8) for ns in (1, 2, 3)]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget-s", type=float, default=80.0, help="sweep time over all stages (compiles included)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--best-out", default=None, help="write the fastest config per window length here (JSON "
                    '{"attention": {n: config}}; bench_vs_official.py --triton-tuning)')
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.time()
    seg = load_segmenter("litemedsam", device="cuda")
    encoder = copy.deepcopy(seg.model.image_encoder).eval().to(torch.bfloat16)
    base = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
            "triton": triton.__version__}
    inputs = captured_inputs(encoder, slice_batch(seg, args.batch))
    fastest: dict[str, dict] = {}

    for stage, (attn, x) in sorted(inputs.items()):
        heads, n, hd = attn.num_heads, x.shape[1], attn.head_dim
        scale = hd**-0.5
        info = {**base, "stage": stage, "windows": x.shape[0], "n": n, "heads": heads}
        with torch.inference_mode():
            qkv16 = attn.qkv(attn.norm(x))
            bias = attn.attention_biases[:, attn.attention_bias_idxs].float()
            a32 = copy.deepcopy(attn).float()
            qkv32 = a32.qkv(a32.norm(x.float()))
            sub = slice(0, min(2048, x.shape[0]))
            exact = reference(qkv32[sub].double(), bias.double(), heads, scale)
            row = {**info, "part": "accuracy"}
            for name, qkv in (("fp32", qkv32), ("bf16", qkv16)):
                ours, sdpa = launch(qkv, bias, heads, scale), reference(qkv, bias, heads, scale)
                row[f"{name}_vs_sdpa"] = (ours.float() - sdpa.float()).abs().max().item()
                row[f"{name}_ours_vs_fp64"] = (ours[sub].double() - exact).abs().max().item()
                row[f"{name}_sdpa_vs_fp64"] = (sdpa[sub].double() - exact).abs().max().item()
            row["out_absmax"] = exact.abs().max().item()
            emit(row, args.out)
            del a32, qkv32, exact

            io_bytes = qkv16.numel() * 2 + qkv16.numel() // 3 * 2
            sdpa_ms = cuda_ms(lambda: reference(qkv16, bias, heads, scale))
            emit({**info, "part": "time", "impl": "sdpa", "ms": sdpa_ms, "gb_per_s": io_bytes / sdpa_ms / 1e6}, args.out)

            best = default_config(n)
            best_ms = cuda_ms(lambda: launch(qkv16, bias, heads, scale, best))
            emit({**info, "part": "time", "impl": "triton", "config": vars(best), "default": True, "ms": best_ms,
                  "gb_per_s": io_bytes / best_ms / 1e6, "speedup_vs_sdpa": sdpa_ms / best_ms}, args.out)
            tried, deadline = {best}, time.time() + args.budget_s / len(inputs)
            for round_ in ([] if args.no_sweep else sweep_rounds(n, heads)):
                anchor = best
                for override in round_:
                    cfg = dataclasses.replace(anchor, **override)
                    if cfg in tried or heads % cfg.heads or time.time() > deadline:
                        continue
                    tried.add(cfg)
                    try:
                        ms = cuda_ms(lambda: launch(qkv16, bias, heads, scale, cfg))
                    except Exception as e:  # noqa: BLE001 - a sweep: report the failure and go on
                        emit({**info, "part": "time", "impl": "triton", "config": vars(cfg), "error": repr(e)[:300]},
                             args.out)
                        continue
                    emit({**info, "part": "time", "impl": "triton", "config": vars(cfg), "ms": ms,
                          "gb_per_s": io_bytes / ms / 1e6, "speedup_vs_sdpa": sdpa_ms / ms}, args.out)
                    if ms < best_ms:
                        best, best_ms = cfg, ms
            emit({**info, "part": "best", "config": vars(best), "ms": best_ms, "sdpa_ms": sdpa_ms,
                  "speedup_vs_sdpa": sdpa_ms / best_ms}, args.out)
            fastest.setdefault(str(n), vars(best))  # one config per window length: stage 1's for 49 (its largest user)
        del qkv16

    if args.best_out:
        Path(args.best_out).write_text(json.dumps({"attention": fastest}))
    # the whole encoder, eager bf16: every window attention through the kernel vs through SDPA
    with torch.inference_mode():
        x = slice_batch(seg, 8).to(torch.bfloat16)
        ref = encoder(x).float()
        set_window_attention(encoder, "triton", max_tokens=10**6)
        got = encoder(x).float()
    emit({**base, "part": "encoder", "batch": 8, "max_abs_diff": (got - ref).abs().max().item(),
          "ref_absmax": ref.abs().max().item(), "mean_abs_diff": (got - ref).abs().mean().item(),
          "elapsed_s": time.time() - t_start}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
