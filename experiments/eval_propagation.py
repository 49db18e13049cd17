"""Measure 3D propagation (3D Dice against the labels) on the CT head and Colin27 slabs.

    .venv/bin/python experiments/eval_propagation.py [--out docs/img/propagation_dice.csv]

Each structure starts on the slice where its ground truth is largest, from the tight GT box on
that slice + 5 px (the 2D baseline's middle setting); the walk then goes up and down the slab.
Rules compared: MedSAM's own (previous box + 3 px, no mask prompt, stop on empty) and variants
with a wider margin, the previous logits as a mask prompt, and a predicted-IoU stop.
Every slice is encoded once (one EmbeddingCache per volume) and reused by all rules.

Question: which propagation rule gives the best 3D Dice? Result: docs/evaluation.md, section 3D propagation.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.embedding_cache import EmbeddingCache  # noqa: E402
from app.propagation import MEDSAM_RULE, PropagationSettings, box_around, propagate  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.windowing import default_window  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

DATA = Path("/work/shared/data")
AAL = {71: "caudate L", 72: "caudate R", 73: "putamen L", 74: "putamen R", 75: "pallidum L", 76: "pallidum R",
       77: "thalamus L", 78: "thalamus R"}

RULES: dict[str, PropagationSettings] = {
    "medsam (box+3, no mask, stop empty)": MEDSAM_RULE,
    "box+3, mask prompt": replace(MEDSAM_RULE, use_mask_prompt=True),
    "box+5": replace(MEDSAM_RULE, margin_px=5),
    "box+3, stop IoU<0.5": replace(MEDSAM_RULE, min_area_px=10, min_score=0.5),
    "box+3, stop IoU<0.7": replace(MEDSAM_RULE, min_area_px=10, min_score=0.7),
    "box+3, mask prompt, stop IoU<0.5": replace(MEDSAM_RULE, use_mask_prompt=True, min_area_px=10, min_score=0.5),
}


def cases():
    ct = DATA / "ct_head_0051_slabA_label.nii.gz"
    yield "CT head", DATA / "ct_head_0051_slabA_image.nii.gz", ct, "head (1|2)", (1, 2)
    yield "CT head", DATA / "ct_head_0051_slabA_image.nii.gz", ct, "skull (2)", (2,)
    mr = DATA / "mr_t1_colin27_slabA_image.nii.gz"
    for v, name in AAL.items():
        yield "Colin27", mr, DATA / "mr_t1_colin27_slabA_label.nii.gz", name, (v,)
    yield "Colin27", mr, DATA / "mr_t1_colin27_slabA_brainmask.nii.gz", "brain (mask)", (1,)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "propagation_dice.csv"))
    parser.add_argument("--start-margin", type=float, default=5.0)
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from --out")
    parser.add_argument("--only", nargs="+", metavar="STRUCTURE",
                        help="run these structures only (e.g. 'head (1|2)' 'thalamus L'), to split the run over processes")
    parser.add_argument("--merge", nargs="+", metavar="CSV", help="concatenate these CSVs into --out and plot")
    args = parser.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in csv.DictReader(open(f))]
        write_rows(rows, Path(args.out))
        summarise(rows)
        plot(Path(args.out))
        return 0
    if args.plot_only:
        plot(Path(args.out))
        return 0
    torch.set_num_threads(2)
    seg = load_segmenter("litemedsam")
    volumes, caches, rows = {}, {}, []
    t0 = time.perf_counter()
    for dataset, image_path, label_path, structure, values in cases():
        if args.only and structure not in args.only:
            continue
        if image_path not in volumes:
            volumes[image_path] = read_study(image_path)
            caches[image_path] = EmbeddingCache(max_items=64)
        volume = volumes[image_path]
        window = default_window(volume)
        gt = np.isin(read_study(label_path).array, values)
        areas = gt.reshape(len(gt), -1).sum(axis=1)
        k0 = int(np.argmax(areas))
        box = box_around(gt[k0], args.start_margin)
        for rule, settings in RULES.items():
            res = propagate(seg, volume, k0, Prompts(box=box), window=window, cache=caches[image_path], settings=settings)
            gt_slices = np.flatnonzero(areas)
            got = res.slices
            in_gt = [res.scores[k] for k in res.scores if areas[k] > 0]
            out_gt = [res.scores[k] for k in res.scores if areas[k] == 0]
            rows.append({
                "dataset": dataset, "structure": structure, "rule": rule, "start_slice": k0,
                "dice3d": round(dice(res.masks, gt), 4),
                "start_dice2d": round(dice(res.masks[k0], gt[k0]), 4),
                "gt_slices": f"{gt_slices.min()}..{gt_slices.max()}",
                "pred_slices": f"{got[0]}..{got[-1]}" if got else "",
                "stopped": ";".join(f"{d}:{r}" for d, r in res.stopped.items()),
                "mean_iou_pred_in_gt": round(float(np.mean(in_gt)), 3) if in_gt else "",
                "mean_iou_pred_off_gt": round(float(np.mean(out_gt)), 3) if out_gt else "",
            })
            print(f"{dataset:8s} {structure:14s} {rule:36s} dice3d {rows[-1]['dice3d']:.3f} "
                  f"gt {rows[-1]['gt_slices']:7s} pred {rows[-1]['pred_slices']:7s} {rows[-1]['stopped']}", flush=True)
    out = Path(args.out)
    write_rows(rows, out)
    print(f"({time.perf_counter() - t0:.0f} s)")
    summarise(rows)
    plot(out)
    return 0


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


def summarise(rows: list[dict]) -> None:
    print("mean 3D Dice per rule:")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for rule in dict.fromkeys(r["rule"] for r in rows):
            d = [float(r["dice3d"]) for r in rows if r["rule"] == rule and r["dataset"] == dataset]
            print(f"  {dataset:8s} {rule:36s} {np.mean(d):.3f}  (n={len(d)})")


def plot(csv_path: Path) -> Path:
    """Bar chart of 3D Dice per structure and rule -> docs/img/propagation_dice.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    structures = list(dict.fromkeys(f"{r['dataset']}: {r['structure']}" for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(rules)
    for n, rule in enumerate(rules):
        d = {f"{r['dataset']}: {r['structure']}": float(r["dice3d"]) for r in rows if r["rule"] == rule}
        ax.bar(np.arange(len(structures)) + n * width, [d.get(s, np.nan) for s in structures], width, label=rule)
    ax.set_xticks(np.arange(len(structures)) + 0.4 - width / 2, structures, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("3D Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("LiteMedSAM 3D propagation from one box on the largest GT slice")
    fig.tight_layout()
    png = csv_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
