"""Where a CPU ONNX encoder's time goes: ONNX Runtime's own profiler, per op type and per TinyViT stage.

Runs the backend's encoder file (``load_segmenter(..., backend).encoder_path``) on the bundled CT's middle slice,
``--runs`` times with ``SessionOptions.enable_profiling``, and sums each node's median kernel time (the first
run left out) by stage (``patch_embed``, ``layers.0``-``layers.3``, ``neck``; fused nodes that lost their name,
such as ORT's Gelu, by their output shape) and by (stage, op type):

    .venv/bin/python benchmarks/cpu_encoder_profile.py --backend onnx-int8-fast --threads 1 \\
        > docs/bench/cpu21/profile_onnx-int8-fast_1thread.txt

Kernel times are wall clock per node: at 1 thread on a loaded machine they include time the thread was
preempted, so read the shares, and say the load (printed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import onnxruntime as ort

    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb
    from runtime import load_segmenter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="onnx-int8-fast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    seg = load_segmenter("litemedsam", backend=args.backend)
    volume = read_study(ROOT / "samples" / "ct_head_0051_series")
    x = seg.preprocess(slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))).numpy()
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = args.threads
    options.profile_file_prefix = str(Path("/tmp") / f"ort_profile_{os.getpid()}")
    session = ort.InferenceSession(str(seg.encoder_path), options, providers=["CPUExecutionProvider"])
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        session.run(None, {"image": x})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    times: dict[str, list[float]] = collections.defaultdict(list)
    info: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000.0)
            info[e["name"][: -len("_kernel_time")]] = e["args"]
    by_stage: dict[str, float] = collections.defaultdict(float)
    by_op: dict[str, float] = collections.defaultdict(float)
    by_stage_op: dict[tuple[str, str], float] = collections.defaultdict(float)
    for name, t in times.items():
        ms = statistics.median(t[1:] or t)
        m = re.search(r"(patch_embed|layers\.\d|neck)", name)
        stage = m.group(1) if m else f"(unnamed, output {info[name].get('output_type_shape')})"
        op = info[name]["op_name"]
        by_stage[stage] += ms
        by_op[op] += ms
        by_stage_op[stage, op] += ms
    total = sum(by_stage.values())
    print(f"# {args.backend}: {seg.encoder_path.name}, {args.threads} thread(s), {args.runs} runs (median per node, "
          f"first left out), load average {load:.2f} -> {os.getloadavg()[0]:.2f}; sum of node times {total:.1f} ms")
    for title, table in (("by stage", by_stage), ("by op type", by_op), ("by stage and op type", by_stage_op)):
        print(f"\n## {title}")
        for key, ms in sorted(table.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"{ms:8.1f} ms {100 * ms / total:5.1f} %  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
