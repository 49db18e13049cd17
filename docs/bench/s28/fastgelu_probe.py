"""Issue 21 probe (session 28): the default CPU encoder with ORT's Gelu (erf) swapped for FastGelu (tanh).

ORT fuses the exported erf pattern into ``Gelu`` when it loads the encoder; this saves that optimized graph
(EXTENDED level), renames each ``Gelu`` node to ``FastGelu`` (same domain, same single input), and runs both
graphs at 1 thread on every slice of the bundled CT: median time a slice and the embedding's relative L2 change.
A probe, not a backend: Dice under the 0.005 rule is not measured here.

    .venv/bin/python docs/bench/s28/fastgelu_probe.py --backend onnx-int8-conv
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from data.readers import read_study  # noqa: E402
from data.windowing import default_window, slice_to_rgb  # noqa: E402
from runtime import load_segmenter  # noqa: E402


def session(path: Path, level) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.graph_optimization_level = level
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="onnx-int8-conv")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    seg = load_segmenter("litemedsam", backend=args.backend)
    vol = read_study(ROOT / "samples" / "ct_head_0051_series")
    xs = [seg.preprocess(slice_to_rgb(vol, k, default_window(vol))).numpy() for k in range(vol.num_slices)]
    tmp = Path(tempfile.mkdtemp())
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    o.optimized_model_filepath = str(tmp / "erf.onnx")
    ort.InferenceSession(str(seg.encoder_path), o, providers=["CPUExecutionProvider"])
    m = onnx.load(str(tmp / "erf.onnx"))
    n = 0
    for node in m.graph.node:
        if node.op_type == "Gelu":
            node.op_type, n = "FastGelu", n + 1
    onnx.save(m, str(tmp / "tanh.onnx"))
    runs = {name: session(tmp / f"{name}.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_ALL) for name in ("erf", "tanh")}
    times = {name: [] for name in runs}
    out = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, s in runs.items():  # interleaved
            for x in xs:
                t = time.perf_counter()
                e = s.run(None, {"image": x})[0]
                times[name].append(time.perf_counter() - t)
                if r == 0:
                    out[name].append(e)
    rel = [float(np.linalg.norm(a - b) / np.linalg.norm(a)) for a, b in zip(out["erf"], out["tanh"])]
    import os
    print(f"# {args.backend}, {n} Gelu nodes -> FastGelu, 1 thread, {len(xs)} CT slices x {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}")
    for name in runs:
        print(f"{name}: median {1000 * statistics.median(times[name]):.1f} ms a slice")
    print(f"embedding change (relative L2): mean {np.mean(rel):.2e}, max {np.max(rel):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
