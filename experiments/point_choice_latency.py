"""What a lone point costs with each ``$MEDSEG_POINT_CHOICE``: ``Segmenter.predict`` on a cached embedding
(prompt in, mask out), the choosers interleaved round by round in one process; process CPU time (the machine is
shared, so wall time depends on the load) and wall time, median over rounds.

    python experiments/point_choice_latency.py --backend torch --rounds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from models import point_prompts  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402

MANIFEST = Path("/work/shared/data/manifest.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--choosers", nargs="+", default=["iou", "refined-iou"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = load_segmenter("litemedsam", None, "cpu", args.backend)
    specs, _ = read_manifest(MANIFEST)
    case = CaseLoader(MANIFEST).load(specs[0])
    emb = seg.embed(case.image)
    ys, xs = np.nonzero(case.gt)
    prompts = Prompts(points=np.array([[xs.mean(), ys.mean()]]), point_labels=np.array([1]), pixel_spacing=case.spacing)
    cpu = {c: [] for c in args.choosers}
    wall = {c: [] for c in args.choosers}
    for r in range(args.rounds + 2):  # two warm-up rounds, not counted
        for c in args.choosers:
            os.environ[point_prompts.CHOICE_ENV] = c
            t0, w0 = time.process_time(), time.perf_counter()
            seg.predict(emb, prompts)
            if r >= 2:
                cpu[c].append(1000 * (time.process_time() - t0))
                wall[c].append(1000 * (time.perf_counter() - w0))
    print(f"backend {args.backend} ({type(seg).__name__}), {args.threads} torch thread(s), case {case.spec.case_id}, "
          f"{args.rounds} rounds, load {os.getloadavg()}")
    for c in args.choosers:
        print(f"  {c:12s} lone point: CPU {np.median(cpu[c]):6.1f} ms (median; p10-p90 {np.percentile(cpu[c], 10):.1f}-"
              f"{np.percentile(cpu[c], 90):.1f}), wall {np.median(wall[c]):6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
