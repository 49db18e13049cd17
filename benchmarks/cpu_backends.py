"""CPU slice encode per backend, as the app runs it (``embed()``: preprocessing + encoder), interleaved.

The default CPU backend is the fastest one that keeps fp32's Dice (``runtime/backend_choice.py``); its speed
order comes from here. On a shared machine the load moves wall-clock figures by 2-3x, so the backends take
turns within each round (every backend sees the same load on average), and each row also carries the median
CPU time of the process during one call and the load average before and after:

    .venv/bin/python benchmarks/cpu_backends.py --rounds 12 --out docs/bench/cpu_backends_<date>.jsonl

One JSON line per backend: ``backend``, ``wall_ms`` (median), ``wall_q1_ms``/``wall_q3_ms``, ``cpu_ms`` (median
process CPU time per call), ``load_before``/``load_after`` (1-min load average), ``threads``, ``cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.readers import read_study  # noqa: E402
from data.windowing import default_window, slice_to_rgb  # noqa: E402
from runtime import BACKENDS, GPU_ONLY_BACKENDS, load_segmenter  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(b for b in BACKENDS if b not in GPU_ONLY_BACKENDS))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--gap-ms", type=float, default=200.0, help="pause between calls (lets the turbo settle)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from runtime.onnx_quant import int8_dot_saturates

    volume = read_study(ROOT / "samples" / "ct_head_0051_series")
    image = slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))
    segs = {b: load_segmenter("litemedsam", backend=b) for b in args.backends.split(",")}
    for seg in segs.values():  # warm-up: first calls allocate
        seg.embed(image)
        seg.embed(image)
    load_before = os.getloadavg()[0]
    wall: dict[str, list[float]] = {b: [] for b in segs}
    cpu: dict[str, list[float]] = {b: [] for b in segs}
    for r in range(args.rounds):
        order = list(segs) if r % 2 == 0 else list(reversed(segs))
        for b in order:
            time.sleep(args.gap_ms / 1000.0)
            c0, t0 = time.process_time(), time.perf_counter()
            segs[b].embed(image)
            wall[b].append((time.perf_counter() - t0) * 1000.0)
            cpu[b].append((time.process_time() - c0) * 1000.0)
    load_after = os.getloadavg()[0]
    rows = []
    for b in segs:
        q = statistics.quantiles(wall[b], n=4)
        rows.append({"backend": b, "wall_ms": round(statistics.median(wall[b]), 1), "wall_q1_ms": round(q[0], 1),
                     "wall_q3_ms": round(q[2], 1), "cpu_ms": round(statistics.median(cpu[b]), 1),
                     "rounds": args.rounds, "load_before": round(load_before, 2), "load_after": round(load_after, 2),
                     "threads": torch.get_num_threads(), "cpu": cpu_name(), "u8_weights": int8_dot_saturates(),
                     "image": list(image.shape)})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
