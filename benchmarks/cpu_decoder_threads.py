"""A click's decoder time on the CPU with 1 and 2 torch threads, interleaved on one embedding, optionally
while another thread keeps encoding with ONNX Runtime (what the UI's prefetch does beside a click).

    .venv/bin/python benchmarks/cpu_decoder_threads.py --repeats 15 [--background-encode]

Prints the median and p95 per thread count (ms). The click: LiteMedSAM with its click model, a box then a
positive click with the box's logits fed back, on the bundled CT (slice 6), encoder `onnx-int8-fast`.
Why it matters: runtime/threads.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.windowing import default_window, slice_to_rgb  # noqa: E402
from models.prompts import Prompts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--background-encode", action="store_true", help="a second thread encodes slices meanwhile")
    args = ap.parse_args()
    seg = runtime.load_segmenter("litemedsam", backend="onnx-int8-fast")
    volume = read_study(ROOT / "samples" / "ct_head_0051_series")
    rgbs = [slice_to_rgb(volume, k, default_window(volume)) for k in range(volume.array.shape[0])]
    emb = seg.embed(rgbs[6])
    box = Prompts(box=np.array([60, 60, 200, 200], np.float32))
    click = Prompts(box=box.box, points=np.array([[130.0, 130.0]], np.float32), point_labels=np.array([1]),
                    mask_logits=seg.predict(emb, box).best_logits)
    stop = threading.Event()

    def encode_forever() -> None:
        k = 0
        while not stop.is_set():
            seg.embed(rgbs[k % len(rgbs)])
            k += 1

    worker = threading.Thread(target=encode_forever, daemon=True)
    if args.background_encode:
        worker.start()
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for n in times:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            seg.predict(emb, click)
            times[n].append((time.perf_counter() - t0) * 1000.0)
    stop.set()
    if args.background_encode:
        worker.join()
    for n, v in times.items():
        v = sorted(v)
        print(f"{n} torch thread(s){' + background encode' if args.background_encode else ''}: "
              f"median {statistics.median(v):.0f} ms, p95 {v[int(0.95 * (len(v) - 1))]:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
