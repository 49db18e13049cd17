"""Measure one-shot PerSAM / PerSAM-F on LiteMedSAM against the GT-box Dice (docs/oneshot.md).

For each structure of ``shared/data/manifest.csv`` the first listed slice is the reference (its GT
mask is the one annotation) and the structure's other listed slices, elsewhere in the slab, are the
targets. Slices are made exactly as the manifest says (transform, clip to norm_lo..norm_hi, 0..255).

    .venv/bin/python experiments/oneshot_eval.py --out /tmp/oneshot_eval.csv

Question: how close does one-shot come to the GT box? Result: docs/oneshot.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.persam_oneshot import fit_oneshot  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

CONTRALATERAL = {"_L": "_R", "_R": "_L"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def load_2d(data: Path, row: dict, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 slice and (H, W) bool GT of a manifest row."""
    def arr(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(data / name)))  # [k, j, i]
        return cache[name]

    k = int(row["slice_index"])
    def plane(a: np.ndarray) -> np.ndarray:
        vol_k = a[k].T  # = nibabel vol[:, :, k]
        return np.rot90(vol_k) if row["transform"] == "rot90" else vol_k.T

    img = plane(arr(row["image"])).astype(np.float64)
    lo, hi = float(row["norm_lo"]), float(row["norm_hi"])
    img = np.round((np.clip(img, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    values = [int(v) for v in row["label_values"].split("|")]
    gt = np.isin(plane(arr(row["label"])), values)
    return np.ascontiguousarray(img), np.ascontiguousarray(gt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/oneshot_eval.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--model", default="litemedsam", help="litemedsam (with the click model) or litemedsam-base")
    ap.add_argument("--structures", nargs="*", help="only these structures (e.g. brain head)")
    ap.add_argument("--methods", nargs="*", default=["persam", "persam_parity", "persam_box", "persam_f"])
    ap.add_argument("--no-point-route", action="store_true",
                    help="PerSAM's points alone through the base decoder, not models.point_prompts (as before issue 18)")
    args = ap.parse_args()
    if args.no_point_route:
        import adapters.persam

        adapters.persam.POINT_ROUTE = False
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        data = Path("/work/shared/data")
    rows = [
        r for r in csv.DictReader(open(data / "manifest.csv"))
        if r["set"] == "shared" and "shepp" not in r["case_id"] and (not args.structures or r["structure"] in args.structures)
    ]
    by_structure: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_structure[(r["image"], r["structure"])].append(r)
    seg = load_segmenter(args.model)
    cache: dict = {}
    emb_cache: dict = {}

    def embed(row):
        key = (row["image"], row["slice_index"])
        if key not in emb_cache:
            emb_cache[key] = seg.embed(load_2d(data, row, cache)[0])
        return emb_cache[key]

    out_rows = []
    t_start = time.time()
    for (image, structure), group in by_structure.items():
        group = sorted(group, key=lambda r: int(r["slice_index"]))
        ref = group[0]
        ref_img, ref_gt = load_2d(data, ref, cache)
        t0 = time.time()
        fits = {
            "persam": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam", ref_embedding=embed(ref)),
            "persam_parity": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam", parity=True, ref_embedding=embed(ref)),
            "persam_box": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam_box", ref_embedding=embed(ref)),
            "persam_f": lambda: fit_oneshot(
                seg, ref_img, ref_gt, method="persam_f", iterations=args.iterations, ref_embedding=embed(ref)
            ),
        }
        models = {name: fits[name]() for name in args.methods}
        fit_s = time.time() - t0
        other = None
        for suffix, opp in CONTRALATERAL.items():
            if structure.endswith(suffix):
                other = next((r for r in rows if r["structure"] == structure[:-2] + opp), None)
        for tgt in group[1:]:
            img, gt = load_2d(data, tgt, cache)
            emb = embed(tgt)
            x0, y0, x1, y1 = (float(v) for v in tgt["bbox_xyxy"].split(","))
            box_mask = seg.predict(emb, Prompts(box=np.array([x0, y0, x1, y1]))).best_mask
            rec = {
                "structure": structure, "modality": tgt["modality"], "ref_k": ref["slice_index"],
                "target_k": tgt["slice_index"], "gt_area_px": int(gt.sum()),
                "dice_gt_box": round(dice(box_mask, gt), 4),
            }
            other_gt = None
            if other is not None:
                o = dict(other, slice_index=tgt["slice_index"])
                other_gt = load_2d(data, o, cache)[1]
            for name, model in models.items():
                res = model.segment(seg, emb)
                rec[f"dice_{name}"] = round(dice(res.mask, gt), 4)
                rec[f"pos_in_gt_{name}"] = bool(gt[res.positive_xy[1], res.positive_xy[0]])
                if other_gt is not None:
                    rec[f"dice_other_side_{name}"] = round(dice(res.mask, other_gt), 4)
            rec["fit_s"] = round(fit_s, 1)
            out_rows.append(rec)
            print(rec, flush=True)
    keys = list(dict.fromkeys(k for r in out_rows for k in r))
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(out_rows)
    print(f"wrote {args.out} ({len(out_rows)} rows) in {time.time() - t_start:.0f} s")
    for name in ("gt_box", *args.methods):
        for mod in ("MR-T1", "CT"):
            v = [r[f"dice_{name}"] for r in out_rows if r["modality"] == mod]
            if v:
                print(f"{name:14s} {mod:6s} mean Dice {np.mean(v):.3f} (n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
