"""CPU batch encode (what a volume's background encode and the propagation walk run), one after another on all
cores vs side by side on one thread each (``runtime.onnx_backend.OnnxSegmenter._encode_parallel``), interleaved.

Both modes run in one process, in alternating order each round, on the same batch of slices of the 512 x 512
CT that ``bench_propagation.py`` builds, so both see the same load on average. Each row carries the median
wall time and the median process CPU time per slice (the load-independent figure on a shared machine), and the
1-min load average before and after:

    .venv/bin/python benchmarks/cpu_batch_encode.py --backends onnx-int8-fast,onnx-int8-conv --rounds 8 \\
        --out docs/bench/cpu21/batch_encode_<run>.jsonl
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import runtime.onnx_backend as onnx_backend  # noqa: E402
from bench_propagation import big_ct  # noqa: E402
from cpu_backends import cpu_name  # noqa: E402
from data.windowing import default_window, slice_to_rgb  # noqa: E402
from runtime import load_segmenter  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="onnx-int8-fast")
    ap.add_argument("--batch", type=int, default=4, help="slices a batch (bench_propagation.py's default)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--gap-ms", type=float, default=200.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    volume = big_ct(args.batch * 4, 512)
    window = default_window(volume)
    rgb = [slice_to_rgb(volume, k, window) for k in range(2, volume.num_slices, 4)][: args.batch]
    workers = onnx_backend.batch_workers(["CPUExecutionProvider"])
    modes = {"one after another": lambda providers: 1, f"side by side ({workers} at once)": onnx_backend.batch_workers}
    segs = {b: load_segmenter("litemedsam", backend=b) for b in args.backends.split(",")}
    runs = [(b, m) for b in segs for m in modes]
    real = onnx_backend.batch_workers
    outputs = {}
    for b, m in runs:  # warm-up, and the two modes' embeddings compared
        onnx_backend.batch_workers = modes[m]
        outputs[b, m] = segs[b].embed_features(rgb)[0].numpy()
    onnx_backend.batch_workers = real
    load_before = os.getloadavg()[0]
    wall = {r: [] for r in runs}
    cpu = {r: [] for r in runs}
    for i in range(args.rounds):
        for r in runs if i % 2 == 0 else list(reversed(runs)):
            onnx_backend.batch_workers = modes[r[1]]
            time.sleep(args.gap_ms / 1000.0)
            c0, t0 = time.process_time(), time.perf_counter()
            segs[r[0]].embed_features(rgb)
            wall[r].append((time.perf_counter() - t0) * 1000.0 / len(rgb))
            cpu[r].append((time.process_time() - c0) * 1000.0 / len(rgb))
    onnx_backend.batch_workers = real
    load_after = os.getloadavg()[0]
    lines = []
    for b, m in runs:
        same = bool(np.array_equal(outputs[b, m], outputs[b, next(iter(modes))]))
        lines.append(json.dumps({
            "backend": b, "mode": m, "batch": len(rgb), "wall_ms_per_slice": round(statistics.median(wall[b, m]), 1),
            "cpu_ms_per_slice": round(statistics.median(cpu[b, m]), 1), "rounds": args.rounds,
            "same_embedding_as_one_after_another": same, "load_before": round(load_before, 2),
            "load_after": round(load_after, 2), "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
        }))
    text = "".join(line + "\n" for line in lines)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
