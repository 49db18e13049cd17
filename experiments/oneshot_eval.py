"""Measure one-shot PerSAM / PerSAM-F on LiteMedSAM against the GT-box Dice (docs/oneshot.md).

For each structure of ``shared/data/manifest.csv`` the first listed slice is the reference (its GT
mask is the one annotation) and the structure's other listed slices, elsewhere in the slab, are the
targets. Slices are made exactly as the manifest says (transform, clip to norm_lo..norm_hi, 0..255).

    .venv/bin/python experiments/oneshot_eval.py --out /tmp/oneshot_eval.csv

Question: how close does one-shot come to the GT box? Result: docs/oneshot.md.

``--volume IMAGE --label LABELS`` instead: one subject, one structure (``--label-values``, optionally
hole-filled per slice), slices read exactly as ``medseg oneshot`` reads them (``data.readers.read_study``,
``default_window``, ``slice_to_rgb``; slices along the volume's slice axis). The rule is fixed by the
arguments, not by results: reference = the slice with the largest area, targets = every ``--every``-th
slice from the reference whose area is >= ``--min-area`` of the largest. ``--save-mask`` writes the
structure for the CLI's ``--ref-mask``; ``--cli-output`` scores a ``medseg oneshot`` output on the same
targets (docs/clicks.md, "One-shot from one slice on held-out subjects").
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
from data.writers import write_label_nifti  # noqa: E402
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


def parse_values(text: str | None) -> list[int] | None:
    """'91-116' or '1,2,3' (or a mix) -> label values; None = every non-zero voxel."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def structure_volume(label: np.ndarray, values: list[int] | None, fill: bool) -> np.ndarray:
    """(K, H, W) bool structure of a label array; fill: holes filled slice by slice (brain from a cortical atlas)."""
    from scipy import ndimage

    mask = label > 0 if values is None else np.isin(label, values)
    if fill:
        mask = np.stack([ndimage.binary_fill_holes(m) for m in mask])
    return mask


def volume_targets(areas: np.ndarray, every: int, min_area: float) -> tuple[int, list[int]]:
    """(reference slice, target slices): the largest slice; every `every`-th slice from it with area >= min_area * max."""
    ref = int(np.argmax(areas))
    keep = np.flatnonzero(areas >= min_area * areas[ref])
    return ref, [int(k) for k in keep if k != ref and (k - ref) % every == 0]


def fit_methods(seg, methods, ref_img, ref_gt, ref_emb, iterations):
    fits = {
        "persam": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam", ref_embedding=ref_emb),
        "persam_parity": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam", parity=True, ref_embedding=ref_emb),
        "persam_box": lambda: fit_oneshot(seg, ref_img, ref_gt, method="persam_box", ref_embedding=ref_emb),
        "persam_f": lambda: fit_oneshot(
            seg, ref_img, ref_gt, method="persam_f", iterations=iterations, ref_embedding=ref_emb
        ),
    }
    return {name: fits[name]() for name in methods}


def gt_box(gt: np.ndarray) -> np.ndarray:
    """Tight box x0, y0, x1, y1 (inclusive pixel indices, as the manifest's bbox_xyxy)."""
    rows, cols = np.nonzero(gt)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)


def run_volume(args, seg) -> list[dict]:
    """One subject: reference slice -> target slices of the same volume (the module doc's rule)."""
    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb

    vol = read_study(args.volume)
    lab = read_study(args.label)
    if lab.array.shape[:3] != vol.array.shape[:3]:
        raise SystemExit(f"--label grid {lab.array.shape} differs from --volume {vol.array.shape}")
    mask = structure_volume(np.asarray(lab.array), parse_values(args.label_values), args.fill)
    if args.save_mask:
        write_label_nifti(mask.astype(np.uint8), vol, Path(args.save_mask))
        print(f"wrote {args.save_mask}")
    areas = mask.reshape(len(mask), -1).sum(axis=1)
    ref_k, target_ks = volume_targets(areas, args.every, args.min_area)
    print(f"{args.name}: reference slice {ref_k} ({areas[ref_k]} px), {len(target_ks)} targets {target_ks}")
    cli = read_study(args.cli_output).array > 0 if args.cli_output else None
    window = default_window(vol, args.window)
    ref_img = slice_to_rgb(vol, ref_k, window)
    t0 = time.time()
    models = fit_methods(seg, args.methods, ref_img, mask[ref_k], seg.embed(ref_img), args.iterations)
    fit_s = time.time() - t0
    out_rows = []
    for k in target_ks:
        gt = mask[k]
        img = slice_to_rgb(vol, k, window)
        emb = seg.embed(img)
        rec = {"structure": args.name, "modality": "MR-T1", "ref_k": ref_k, "target_k": k,
               "gt_area_px": int(gt.sum()), "dice_gt_box": round(dice(seg.predict(emb, Prompts(box=gt_box(gt))).best_mask, gt), 4)}
        for name, model in models.items():
            res = model.segment(seg, emb, img)
            rec[f"dice_{name}"] = round(dice(res.mask, gt), 4)
            rec[f"pos_in_gt_{name}"] = bool(gt[res.positive_xy[1], res.positive_xy[0]])
            rec[f"pos_xy_{name}"] = f"{int(res.positive_xy[0])} {int(res.positive_xy[1])}"
        if cli is not None:
            rec["dice_cli"] = round(dice(cli[k], gt), 4)
        rec["fit_s"] = round(fit_s, 1)
        out_rows.append(rec)
        print(rec, flush=True)
    return out_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/oneshot_eval.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--model", default="litemedsam", help="litemedsam (with the click model) or litemedsam-base")
    ap.add_argument("--structures", nargs="*", help="only these structures (e.g. brain head)")
    ap.add_argument("--methods", nargs="*", default=["persam", "persam_parity", "persam_box", "persam_f"])
    ap.add_argument("--volume", help="one subject's image volume (see the module doc); needs --label")
    ap.add_argument("--label", help="label volume on --volume's grid")
    ap.add_argument("--label-values", help="the structure's label values, e.g. 91-116 or 1,2,3 (default: non-zero)")
    ap.add_argument("--fill", action="store_true", help="fill the structure's holes on each slice")
    ap.add_argument("--name", default="structure", help="the structure's name in the CSV")
    ap.add_argument("--every", type=int, default=4, help="target every N-th slice from the reference")
    ap.add_argument("--min-area", type=float, default=0.25, help="targets: area >= this share of the largest")
    ap.add_argument("--window", default=None, help="as medseg oneshot --window (default: its default)")
    ap.add_argument("--save-mask", help="write the structure (0/1 NIfTI on --volume's grid) for the CLI's --ref-mask")
    ap.add_argument("--cli-output", help="a medseg oneshot output NIfTI to score on the same targets (dice_cli)")
    ap.add_argument("--no-point-route", action="store_true",
                    help="PerSAM's points alone through the base decoder, not models.point_prompts (as before issue 18)")
    ap.add_argument("--location-gate", choices=("on", "off"), default=None,
                    help="keep the positive point on pixels that look like the reference (default: the library's)")
    ap.add_argument("--sized-candidates", choices=("none", "persam", "persam_f", "both"), default=None,
                    help="which methods' point candidates follow the reference's size (default: the library's, "
                         "adapters.persam.SIZED_METHODS)")
    ap.add_argument("--body-mask", choices=("on", "off"), default=None,
                    help="keep the positive point inside the slice's body (default: the library's, BODY_MASK)")
    ap.add_argument("--position-gate", nargs="*", choices=("persam", "persam_f", "persam_box"), default=None,
                    help="methods whose positive point stays near where the reference structure was (default: the "
                         "library's, adapters.persam.POSITION_METHODS; no method given: none)")
    args = ap.parse_args()
    if args.position_gate is not None:
        import adapters.persam
        adapters.persam.POSITION_METHODS = frozenset(args.position_gate)
    if args.sized_candidates is not None:
        import adapters.persam
        adapters.persam.SIZED_METHODS = frozenset(
            {"none": (), "persam": ("persam",), "persam_f": ("persam_f",), "both": ("persam", "persam_f")}
            [args.sized_candidates])
    if args.body_mask is not None:
        import adapters.persam_oneshot

        adapters.persam_oneshot.BODY_MASK = args.body_mask == "on"
    if args.location_gate is not None:
        import adapters.persam_oneshot

        adapters.persam_oneshot.LOCATION_GATE = args.location_gate == "on"
    if args.no_point_route:
        import adapters.persam

        adapters.persam.POINT_ROUTE = False
    torch.set_num_threads(args.threads)
    if args.volume:
        if not args.label:
            ap.error("--volume needs --label")
        seg = load_segmenter(args.model)
        t_start = time.time()
        write_rows(run_volume(args, seg), args, t_start)
        return 0
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
        models = fit_methods(seg, args.methods, ref_img, ref_gt, embed(ref), args.iterations)
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
                res = model.segment(seg, emb, img)
                rec[f"dice_{name}"] = round(dice(res.mask, gt), 4)
                rec[f"pos_in_gt_{name}"] = bool(gt[res.positive_xy[1], res.positive_xy[0]])
                if other_gt is not None:
                    rec[f"dice_other_side_{name}"] = round(dice(res.mask, other_gt), 4)
            rec["fit_s"] = round(fit_s, 1)
            out_rows.append(rec)
            print(rec, flush=True)
    write_rows(out_rows, args, t_start)
    return 0


def write_rows(out_rows: list[dict], args, t_start: float) -> None:
    keys = list(dict.fromkeys(k for r in out_rows for k in r))
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(out_rows)
    print(f"wrote {args.out} ({len(out_rows)} rows) in {time.time() - t_start:.0f} s")
    for name in ("gt_box", *args.methods, "cli"):
        for mod in ("MR-T1", "CT"):
            v = [r[f"dice_{name}"] for r in out_rows if r["modality"] == mod and f"dice_{name}" in r]
            if v:
                print(f"{name:14s} {mod:6s} mean Dice {np.mean(v):.3f} (n={len(v)})")


if __name__ == "__main__":
    sys.exit(main())
