"""Where the GPU time of an encode goes: preprocessing vs the network, per compile mode and batch,
and the top CUDA kernels (torch.profiler). A diagnostic for docs/benchmarks.md, not a benchmark
of record (that is bench_vs_official.py, ours and the official code in one run).

    python3 benchmarks/profile_gpu.py --model litemedsam --out $OUT/profile_lite.jsonl
    python3 benchmarks/profile_gpu.py --model sam_vit_b --out $OUT/profile_sam.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.conv_forms import fuse_batchnorm  # noqa: E402
from runtime.fast import use_sdpa_attention  # noqa: E402
from models.registry import load_segmenter  # noqa: E402
from runtime.timing import median_ms  # noqa: E402


def emit(row: dict, out: str | None) -> None:
    row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def network(seg, precision: str, mode: str | None, channels_last: bool = True):
    """The bare encoder (folded, optional bf16 weights) as a function of a device tensor."""
    import copy

    enc = copy.deepcopy(seg.model.image_encoder)
    fuse_batchnorm(enc)
    if channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    if precision == "bf16w":
        enc = enc.to(torch.bfloat16)
    fn = enc
    if mode is not None:
        fn = torch.compile(enc, dynamic=False, mode=None if mode == "default" else mode)

    @torch.inference_mode()
    def run(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if precision == "bf16w":
            return fn(x.to(torch.bfloat16))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return fn(x)

    return run


def top_kernels(fn, x, n: int = 25) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn(x)
        torch.cuda.synchronize()
    from torch.autograd import DeviceType

    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    rows = [{"kernel": "(all GPU kernels and copies)", "cuda_ms_per_call_of_fn": busy / 1000 / 5,
             "count_per_fn": sum(e.count for e in events if e.device_type == DeviceType.CUDA) // 5}]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:n]:
        rows.append({"kernel": e.key[:110], "cuda_ms_per_call_of_fn": e.self_device_time_total / 1000 / 5,
                     "count_per_fn": e.count // 5})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="litemedsam", choices=["litemedsam", "sam_vit_b"])
    ap.add_argument("--batches", default=None)
    ap.add_argument("--modes", default="eager,default,max-autotune-no-cudagraphs,reduce-overhead")
    ap.add_argument("--precisions", default="fp32,bf16,bf16w")
    ap.add_argument("--profile-batch", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = "cuda"
    slices = np.load(ROOT / ".bench" / "slices.npz")
    image = slices["ct_slice"]
    tmp = tempfile.TemporaryDirectory()
    if args.model == "litemedsam":
        seg = load_segmenter("litemedsam", device=dev)
        batches = [int(b) for b in (args.batches or "1,64,128,256").split(",")]
    else:
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        ckpt = Path(tmp.name) / "vit_b.pth"
        torch.save(sam_model_registry["vit_b"]().state_dict(), ckpt)
        seg = load_segmenter("sam_vit_b", checkpoint=ckpt, device=dev)
        use_sdpa_attention(seg.model)
        batches = [int(b) for b in (args.batches or "1,8").split(",")]
    base = {"model": args.model, "device": torch.cuda.get_device_name()}

    # preprocessing (CPU, as embed_batch does it) and the host-to-device copy
    for b in batches:
        pre = median_ms(lambda: torch.cat([seg.preprocess(image) for _ in range(b)]), device=dev, repeat=5)
        x_cpu = torch.cat([seg.preprocess(image) for _ in range(b)])
        h2d = median_ms(lambda: x_cpu.to(dev), device=dev, repeat=5)
        emit({**base, "part": "preprocess (CPU) + copy", "batch": b, "preprocess_ms": pre, "h2d_ms": h2d}, args.out)

    x1 = seg.preprocess(image).to(dev)
    for precision in args.precisions.split(","):
        for mode in args.modes.split(","):
            m = None if mode == "eager" else mode
            try:
                fn = network(seg, precision, m)
                for b in batches:
                    x = x1.expand(b, -1, -1, -1).contiguous()
                    ms = median_ms(lambda: fn(x), device=dev, warmup=3, repeat=10)
                    emit({**base, "part": "network", "precision": precision, "mode": mode, "batch": b,
                          "ms": ms, "slices_per_s": 1000 * b / ms}, args.out)
            except Exception as e:  # noqa: BLE001 - a diagnostic: report the failure and go on
                emit({**base, "part": "network", "precision": precision, "mode": mode, "error": repr(e)[:300]}, args.out)
            torch.compiler.reset()
    pb = args.profile_batch or batches[-1]
    for precision, mode in (("bf16", "default"),):
        fn = network(seg, precision, mode)
        x = x1.expand(pb, -1, -1, -1).contiguous()
        for r in top_kernels(fn, x):
            emit({**base, "part": "kernel", "precision": precision, "mode": mode, "batch": pb, **r}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
