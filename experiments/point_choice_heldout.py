"""The point route's chooser on the held-out sets: ``medseg eval``'s code (``evaluation.runner.evaluate``) for
``points:N``, each variant of ``$MEDSEG_POINT_CHOICE`` and candidate half-sides, one embedding cache per
manifest (so every variant sees the same embeddings). Writes each run's per-case CSV (``medseg eval``'s
``per_case.csv`` columns, via ``evaluation.report``) and one summary line per run.

    python experiments/point_choice_heldout.py --backend torch --variants iou:5,10,20 refined-iou:5,10,20 \
        --out docs/clicks/point_choice_s10/heldout_torch
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

from app.embedding_cache import EmbeddingCache  # noqa: E402
from evaluation.clicks import parse_protocol  # noqa: E402
from evaluation.runner import EvalSettings, evaluate  # noqa: E402
from models import point_prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETS = {"shared": Path("/work/shared/data/manifest.csv"),
        "mni152": ROOT / "weights/devdata/click_model/mni152/manifest.csv",
        "colin27_other": ROOT / "weights/devdata/click_model/colin27_other/manifest.csv"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", help="runtime backend; 'auto' is medseg eval's default")
    ap.add_argument("--variants", nargs="+", default=["iou:5,10,20"], help="CHOOSER:HALF,SIDES,MM")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    seg = load_segmenter("litemedsam", None, "cpu", args.backend)
    summary = (args.out / "summary.txt").open("a")
    summary.write(f"# evaluation.runner.evaluate, backend {args.backend} ({type(seg).__name__}), CPU, "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}\n")
    for name in args.sets:
        cache = EmbeddingCache(seg)
        for variant in args.variants:
            chooser, sizes = variant.split(":")
            os.environ[point_prompts.CHOICE_ENV] = chooser
            point_prompts.HALF_SIDES_MM = tuple(float(s) for s in sizes.split(","))
            for n in args.n:
                t0 = time.process_time()
                run = evaluate(seg, SETS[name], EvalSettings(protocol=parse_protocol(f"points:{n}")), progress=False,
                               cache=cache)
                last = {r.case_id: r.dice for r in run.rows}  # points:N is one step per case; the last if more
                dice = list(last.values())
                tag = f"{chooser.replace('*', 'x')}_{sizes.replace(',', '-')}_{name}_points{n}"
                with (args.out / f"{tag}.csv").open("w") as f:
                    f.write("case_id,dice\n" + "".join(f"{c},{d:.6f}\n" for c, d in last.items()))
                line = (f"{chooser} {sizes} {name} points:{n} {len(dice)} {np.mean(dice):.4f} "
                        f"(cpu {time.process_time() - t0:.0f} s, load {os.getloadavg()[0]:.2f})")
                print(line, flush=True)
                summary.write(line + "\n")
                summary.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
