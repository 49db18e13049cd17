"""Encoder files against ``onnx-int8-fast``: process CPU time per encode, interleaved, and how far each moves the
embedding (relative L2 to the fp32 rewritten encoder) on the bundled CT's middle slice. Issue 21's screen for
candidate encoders before the Dice check (``medseg eval --backend NAME``), which decides.

    .venv/bin/python benchmarks/cpu_encoder_variants.py neck=/tmp/enc-neck.onnx int8-fast@ext=<its file> \\
        > docs/bench/cpu21/<run>.txt

``NAME=PATH``: an encoder file (input ``image``, static batch 1 or dynamic); a ``@ext`` / ``@basic`` suffix runs it
at ONNX Runtime's EXTENDED / BASIC graph optimisation level instead of ALL (the default, with NCHWc convolutions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVELS = {"ext": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


def session(path: Path, name: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    level = LEVELS.get(name.rpartition("@")[2]) if "@" in name else None
    if level:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb
    from runtime import load_segmenter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", help="NAME=PATH.onnx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    fast = load_segmenter("litemedsam", backend="onnx-int8-fast")
    volume = read_study(ROOT / "samples" / "ct_head_0051_series")
    x = fast.preprocess(slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))).numpy()
    paths = {"fp32-fast": fast.encoder_path.with_name("encoder-fast.onnx"), "int8-fast": fast.encoder_path}
    paths.update({k: Path(p) for k, _, p in (v.partition("=") for v in args.variants)})
    runs = {k: session(p, k, args.threads) for k, p in paths.items()}
    reference = runs["fp32-fast"].run(None, {"image": x})[0]
    for k, s in runs.items():
        y = s.run(None, {"image": x})[0]
        print(f"{k}: embedding relative L2 to fp32 {np.linalg.norm(y - reference) / np.linalg.norm(reference):.4f}")
    load = os.getloadavg()[0]
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in runs if r % 2 == 0 else list(reversed(runs)):
            time.sleep(0.1)
            c0 = time.process_time()
            runs[k].run(None, {"image": x})
            cpu[k].append((time.process_time() - c0) * 1000.0)
    base = statistics.median(cpu["int8-fast"])
    print(f"# {args.threads} thread(s), {args.rounds} rounds, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    for k, t in cpu.items():
        print(f"{k:24s} process CPU {statistics.median(t):7.1f} ms a call (x{statistics.median(t) / base:.3f} of int8-fast)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
