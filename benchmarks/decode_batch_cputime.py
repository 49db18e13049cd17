"""CPU time of N sessions' clicks answered one at a time (``Segmenter.predict`` each) against one batch
(``Segmenter.predict_many``, what ``app.decode_batcher`` runs), on the bundled CT's planes.

Process CPU time, not wall: the machine is shared, and CPU time is what 2 cores have to give. Rounds alternate
the two ways. The clicks are those of ``benchmarks/bench_sessions.py``: a lone first click (points alone, all
candidates, ``multimask``) and a refining click (box + points + the previous logits, the click model):

    python3 benchmarks/decode_batch_cputime.py --device cpu --sessions 20 --rounds 3 --out docs/bench/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.model_catalog import backend_for, load_model  # noqa: E402
from app.render import Plane, to_rgb  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.windowing import default_window  # noqa: E402
from models.prompts import Prompts  # noqa: E402

CT = ROOT / "samples" / "ct_head_0051_series"


def requests(seg, n: int, seed: int) -> dict[str, list]:
    volume = read_study(CT)
    plane = Plane.of(volume, "coronal")
    count = plane.count(volume.array.shape[:3])
    window = default_window(volume)
    embeddings = [seg.embed(to_rgb(np.ascontiguousarray(plane.extract(volume.array, k)), window)) for k in range(count)]
    rng = np.random.default_rng(seed)
    first, refine = [], []
    for i in range(n):
        e = embeddings[i % count]
        x, y = rng.uniform(100, 150, 2)
        pts = Prompts(points=np.array([[x, y]], np.float32), point_labels=np.array([1]), pixel_spacing=(1.0, 1.0))
        r = seg.predict(e, pts, multimask_output=True)
        box = r.boxes[r.best_index]
        two = np.array([[x, y], [x + 5, y + 3]], np.float32)
        first.append((e, pts))
        refine.append((e, Prompts(points=two, point_labels=np.array([1, 1]), box=box,
                                  mask_logits=r.low_res_logits[r.best_index][None])))
    return {"first_click": first, "refining_click": refine}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seg = load_model("litemedsam", args.device, args.backend)
    reqs = requests(seg, args.sessions, 0)
    rows = []
    for kind, rs in reqs.items():
        mm = kind == "first_click"
        seg.predict_many([e for e, _ in rs[:2]], [p for _, p in rs[:2]], multimask_output=mm)  # warm-up
        times = {"one_at_a_time": [], "batched": []}
        for _ in range(args.rounds):
            for way in times:
                t0, w0 = time.process_time(), time.perf_counter()
                if way == "batched":
                    seg.predict_many([e for e, _ in rs], [p for _, p in rs], multimask_output=mm)
                else:
                    for e, p in rs:
                        seg.predict(e, p, multimask_output=mm)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[way].append((time.process_time() - t0, time.perf_counter() - w0))
        row = {"kind": kind, "sessions": args.sessions, "device": args.device,
               "backend": backend_for("litemedsam", args.device, args.backend).backend,
               "torch_threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)}
        for way, ts in times.items():
            row[f"{way}_cpu_ms_per_click"] = round(1000 * float(np.median([t[0] for t in ts])) / args.sessions, 1)
            row[f"{way}_wall_ms_per_click"] = round(1000 * float(np.median([t[1] for t in ts])) / args.sessions, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
