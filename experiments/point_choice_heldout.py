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

from evaluation.clicks import parse_protocol  # noqa: E402
from evaluation.runner import EmbeddingCache, EvalSettings, evaluate  # noqa: E402
from models import point_prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETS = {"shared": Path("/work/shared/data/manifest.csv"),
        "mni152": ROOT / "weights/devdata/click_model/mni152/manifest.csv",
        "colin27_other": ROOT / "weights/devdata/click_model/colin27_other/manifest.csv"}


def compare(out: Path, base: str, other: str, sets: list[str], ns: list[int]) -> None:
    """Per protocol: each set's mean, the mean of the set means, and per case how often ``other`` beats ``base``."""
    import csv

    def load(tag: str) -> dict[str, float]:
        return {r["case_id"]: float(r["dice"]) for r in csv.DictReader((out / f"{tag}.csv").open())}

    for n in ns:
        means = {v: [] for v in (base, other)}
        for name in sets:
            a, b = (load(f"{v}_{name}_points{n}") for v in (base, other))
            d = np.array([b[c] - a[c] for c in a])
            means[base].append(np.mean(list(a.values())))
            means[other].append(np.mean(list(b.values())))
            print(f"points:{n} {name:14s} {base} {means[base][-1]:.4f}  {other} {means[other][-1]:.4f}  "
                  f"per case (|diff| > 0.001) better {(d > 1e-3).sum()} worse {(d < -1e-3).sum()} "
                  f"same {(abs(d) <= 1e-3).sum()}")
        print(f"points:{n} mean of the {len(sets)} set means: {base} {np.mean(means[base]):.4f}  {other} "
              f"{np.mean(means[other]):.4f}  diff {np.mean(means[other]) - np.mean(means[base]):+.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", help="runtime backend; 'auto' is medseg eval's default")
    ap.add_argument("--variants", nargs="+", default=["iou:5,10,20"], help="CHOOSER:HALF,SIDES,MM")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", nargs=2, metavar=("BASE", "OTHER"), default=None,
                    help="file tags (e.g. iou_5-10-20 refined-iou_5-10-20) of runs in --out: compare, decode nothing")
    args = ap.parse_args(argv)
    if args.compare:
        compare(args.out, *args.compare, args.sets, args.n)
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    seg = load_segmenter("litemedsam", None, "cpu", args.backend)
    summary = (args.out / "summary.txt").open("a")
    summary.write(f"# evaluation.runner.evaluate, backend {args.backend} ({type(seg).__name__}), CPU, "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}\n")
    for name in args.sets:
        cache = EmbeddingCache(seg, size=10_000)  # every slice of the set, for every variant
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
