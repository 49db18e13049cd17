"""Measure 3D propagation (3D Dice against the labels) on the CT head and Colin27 slabs.

    .venv/bin/python experiments/eval_propagation.py [--embeddings /tmp/emb] [--mricron DIR] [--out docs/img/propagation_dice.csv]

Each structure starts on the slice where its ground truth is largest, from the tight GT box on
that slice + 5 px; the walk then goes up and down the slab (``app.propagation``, the engine the
CLI and the UI use). Parts (``--parts``):

- ``rules``: prompt rules and stop rules, 3D Dice per structure;
- ``anchor``: for each structure under 0.5 with the default rule, the GT mask of its worst slice
  (lowest 2D Dice among the GT slices) is added as one anchor and the volume re-propagated;
- ``fill``: two GT slices (at 25 % and 75 % of the GT extent) as anchors; the slices between
  filled by the model (both ends, blended), by shape interpolation (signed distance), and by the model
  prompted with the shape (``PropagationSettings.fill``).

``--mricron DIR``: the extracted Debian package ``mricron-data`` (``dpkg-deb -x mricron-data_*.deb DIR``);
adds the held-out set: another slab of Colin27 (axial z = 34..65, never used to choose anything)
with the AAL hippocampi and amygdalae and the brain mask.
``--embeddings DIR`` keeps every slice's embedding on disk (re-runs skip the encoder).

Question: which propagation rule gives the best 3D Dice, and what do anchors add? Result: docs/evaluation.md, section 3D propagation.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.embedding_cache import EmbeddingCache, volume_key, window_key  # noqa: E402
from app.propagation import (  # noqa: E402
    MEDSAM_RULE,
    PropagationSettings,
    box_around,
    propagate,
    propagate_anchors,
)
from app.propagation_defaults import default_propagation, describe  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.windowing import default_window  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402
from runtime import load_segmenter as runtime_segmenter  # noqa: E402
from models.segmenter import Embedding  # noqa: E402

DATA = Path(os.environ.get("MEDSEG_SHARED", ROOT.parent / "shared")) / "data"
AAL = {71: "caudate L", 72: "caudate R", 73: "putamen L", 74: "putamen R", 75: "pallidum L", 76: "pallidum R",
       77: "thalamus L", 78: "thalamus R"}
HELD_OUT_AAL = {37: "hippocampus L", 38: "hippocampus R", 41: "amygdala L", 42: "amygdala R"}
HELD_OUT_Z = (34, 66)  # Colin27 axial slices of the held-out slab (the shared slab A is 66..97)

DEFAULT = PropagationSettings()
NO_STOP = replace(MEDSAM_RULE)
RULES: dict[str, PropagationSettings] = {
    "medsam (box+3, stop empty)": MEDSAM_RULE,
    "mask prompt only": replace(NO_STOP, prompt="mask"),
    "mask+box": replace(NO_STOP, prompt="mask+box"),
    "box+3, stop IoU<0.5 (old default)": replace(MEDSAM_RULE, min_area_px=10, min_score=0.5),
    "default": DEFAULT,
    "default, mask+box": replace(DEFAULT, prompt="mask+box"),
    "default, mask": replace(DEFAULT, prompt="mask"),
    # the click model's predicted IoU is not the base model's: its stops on IoU are off, the overlap stop stays
    "mask+box, overlap stop": replace(DEFAULT, prompt="mask+box", min_score=0.0, score_drop=0.0),
    # the box answer of each slice as a guard (PropagationSettings.guard): the stops read the base model's IoU
    "mask+box, guard 0.5": replace(DEFAULT, prompt="mask+box", guard=0.5),
    "mask+box, guard 0.7": replace(DEFAULT, prompt="mask+box", guard=0.7),
    # fast path: every 2nd / 3rd slice segmented, the skipped ones blended where their neighbours agree (Dice >= 0.9)
    "default, stride 1": replace(DEFAULT, stride=1),  # the default until session 10
    "default, stride 2": replace(DEFAULT, stride=2),  # = default since session 10
    "default, stride 3": replace(DEFAULT, stride=3),
    "mask+box, guard 0.7, stride 1": replace(DEFAULT, prompt="mask+box", guard=0.7, stride=1),
    "mask+box, guard 0.7, stride 2": replace(DEFAULT, prompt="mask+box", guard=0.7, stride=2),
    # session 18: the guard's threshold on int8, where 0.7 lost (docs/evaluation.md, "Session 18: the guard on int8")
    "mask+box, guard 0.5, stride 2": replace(DEFAULT, prompt="mask+box", guard=0.5, stride=2),
    "mask+box, guard 0.8, stride 2": replace(DEFAULT, prompt="mask+box", guard=0.8, stride=2),
    "mask+box, guard 0.9, stride 2": replace(DEFAULT, prompt="mask+box", guard=0.9, stride=2),
}
BACKEND_DEFAULT = "backend default"  # the rule the CLI, the UI and MONAI Label run on --backend (app.propagation_defaults)


def cases(mricron: Path | None, workdir: Path):
    """(dataset, image, label, structure, values) for the shared set and, with mricron, the held-out slab."""
    ct = DATA / "ct_head_0051_slabA_label.nii.gz"
    yield "CT head", DATA / "ct_head_0051_slabA_image.nii.gz", ct, "head (1|2)", (1, 2)
    yield "CT head", DATA / "ct_head_0051_slabA_image.nii.gz", ct, "skull (2)", (2,)
    mr = DATA / "mr_t1_colin27_slabA_image.nii.gz"
    for v, name in AAL.items():
        yield "Colin27", mr, DATA / "mr_t1_colin27_slabA_label.nii.gz", name, (v,)
    yield "Colin27", mr, DATA / "mr_t1_colin27_slabA_brainmask.nii.gz", "brain (mask)", (1,)
    if mricron is None:
        return
    image, labels, brain = held_out_slab(mricron, workdir)
    for v, name in HELD_OUT_AAL.items():
        yield "held-out Colin27 z34-65", image, labels, name, (v,)
    yield "held-out Colin27 z34-65", image, brain, "brain (held-out slab)", (1,)


def held_out_slab(mricron: Path, workdir: Path) -> tuple[Path, Path, Path]:
    """Axial slab z = 34..65 of mricron-data's ch2 / aal / ch2bet (>0), written as NIfTI (geometry kept)."""
    import SimpleITK as sitk

    templates = mricron / "usr" / "share" / "mricron" / "templates"
    out = []
    for name, binarise in (("ch2", False), ("aal", False), ("ch2bet", True)):
        img = sitk.ReadImage(str(templates / f"{name}.nii.gz"))
        slab = img[:, :, HELD_OUT_Z[0] : HELD_OUT_Z[1]]
        if binarise:
            slab = sitk.Cast(slab > 0, sitk.sitkUInt8)
        path = workdir / f"heldout_{name}_z{HELD_OUT_Z[0]}-{HELD_OUT_Z[1] - 1}.nii.gz"
        sitk.WriteImage(slab, str(path))
        out.append(path)
    return out[0], out[1], out[2]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def cache_for(seg, volume, window, store: Path | None, batch_size: int = 4) -> EmbeddingCache:
    """An EmbeddingCache holding the whole volume, filled from / saved to ``store`` when given."""
    cache = EmbeddingCache(max_items=max(volume.num_slices, 8))
    vkey, wkey = volume_key(volume), window_key(window)
    path = store / f"{seg.name}_{vkey}.pt" if store else None
    if path is not None and path.exists():
        for k, (f, o, i) in torch.load(path, weights_only=True).items():
            cache.put((vkey, k, seg.name, wkey), Embedding(f, tuple(o), tuple(i), seg.name))
        return cache
    embs = cache.embeddings(seg, volume, list(range(volume.num_slices)), window, vkey=vkey, batch_size=batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: (e.features, list(e.original_size), list(e.input_size)) for k, e in embs.items()}, path)
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "propagation_dice.csv"))
    parser.add_argument("--start-margin", type=float, default=5.0)
    parser.add_argument("--parts", nargs="+", default=["rules", "anchor", "fill"], choices=["rules", "anchor", "fill", "fillgap"])
    parser.add_argument("--rules", nargs="+", metavar="RULE",
                        help=f"only these rules (of: {', '.join(RULES)}, {BACKEND_DEFAULT}: the default rule of "
                        "--backend, written as 'backend default (BACKEND: the rule)')")
    parser.add_argument("--only", nargs="+", metavar="STRUCTURE", help="only these structures (e.g. 'thalamus L')")
    parser.add_argument("--mricron", type=Path, help="extracted mricron-data package: adds the held-out slab")
    parser.add_argument("--embeddings", type=Path, help="folder to keep slice embeddings in between runs")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--encode-batch", type=int, default=4,
                        help="slices encoded at a time (the GPU propagation's benchmark encodes 32: bench_propagation.py)")
    parser.add_argument("--device", default="cpu", help="cuda: a GPU backend's 3D Dice (with --backend torch-fp16)")
    parser.add_argument("--backend", default="torch",
                        help="runtime backend (e.g. onnx-int8-conv, the CPU default): its 3D Dice against torch's "
                        "(use its own --embeddings folder: the cache files are named by model)")
    parser.add_argument("--anchor-rule", choices=("box", "backend"), default="box",
                        help="the walk that --parts anchor/fill correct and re-propagate: box = PropagationSettings() "
                        "(the box rule, as every run before session 17), backend = the default of --backend "
                        "(app.propagation_defaults: what medseg propagate and the UI run)")
    parser.add_argument("--worst", choices=("dice", "error"), default="dice",
                        help="the slice --parts anchor corrects: dice = the lowest 2D Dice (an end slice, often), "
                        "error = the most wrong pixels (the slice that looks worst)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from --out")
    parser.add_argument("--overlay", nargs="+", metavar="STRUCTURE",
                        help="draw these structures' propagation (default rule) over the image -> docs/img/propagation_overlay.png")
    parser.add_argument("--merge", nargs="+", metavar="CSV", help="concatenate these CSVs (runs split with --only) into --out")
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
    if args.backend == "torch" and args.device == "cpu":
        seg = load_segmenter(args.model)
    else:
        seg = runtime_segmenter(args.model, device=args.device, backend=args.backend)
    rules = {r: RULES[r] for r in (args.rules or RULES) if r != BACKEND_DEFAULT}
    if args.rules and BACKEND_DEFAULT in args.rules:
        chosen = default_propagation(args.backend)
        rules[f"{BACKEND_DEFAULT} ({args.backend}: {describe(chosen.for_model(seg))})"] = chosen
    walk = DEFAULT if args.anchor_rule == "box" else default_propagation(args.backend).for_model(seg)
    volumes, caches, rows, overlays = {}, {}, [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, image_path, label_path, structure, values in cases(args.mricron, Path(tmp)):
            if args.only and structure not in args.only:
                continue
            key = str(image_path)
            if key not in volumes:
                volumes[key] = read_study(image_path)
                caches[key] = cache_for(seg, volumes[key], default_window(volumes[key]), args.embeddings, args.encode_batch)
            volume, cache = volumes[key], caches[key]
            window = default_window(volume)
            gt = np.isin(read_study(label_path).array, values)
            areas = gt.reshape(len(gt), -1).sum(axis=1)
            k0 = int(np.argmax(areas))
            box = box_around(gt[k0], args.start_margin)
            base = {"dataset": dataset, "structure": structure, "start_slice": k0,
                    "gt_slices": f"{np.flatnonzero(areas).min()}..{np.flatnonzero(areas).max()}"}
            default_res = None
            if args.overlay:
                if structure in args.overlay:
                    res = propagate(seg, volume, k0, Prompts(box=box), window=window, cache=cache, settings=DEFAULT)
                    overlays.append((f"{dataset}: {structure}", volume, window, gt, res))
                continue
            if "rules" in args.parts or "anchor" in args.parts:
                for rule, settings in ({**rules, "default": walk} if "anchor" in args.parts else rules).items():
                    res = propagate(seg, volume, k0, Prompts(box=box), window=window, cache=cache, settings=settings)
                    if rule == "default":
                        default_res = res
                    if rule not in rules:
                        continue
                    got = res.slices
                    rows.append({**base, "part": "rules", "rule": rule, "dice3d": round(dice(res.masks, gt), 4),
                                 "pred_slices": f"{got[0]}..{got[-1]}" if got else "",
                                 "stopped": ";".join(f"{d}:{r}" for d, r in res.stopped.items())})
                    report(rows[-1])
            if "anchor" in args.parts and default_res is not None and dice(default_res.masks, gt) < 0.5:
                rows.append(anchor_row(seg, volume, window, cache, gt, default_res, base, walk, args.worst))
                report(rows[-1])
            if "fillgap" in args.parts:
                for row in fill_gap_rows(seg, volume, window, cache, gt, base, walk):
                    rows.append(row)
                    report(row)
            if "fill" in args.parts:
                filled = fill_rows(seg, volume, window, cache, gt, base, walk)
                rows.extend(filled)
                for row in filled:
                    report(row)
    if args.overlay:
        print(f"wrote {draw_overlay(overlays, ROOT / 'docs' / 'img' / 'propagation_overlay.png')}")
        return 0
    out = Path(args.out)
    write_rows(rows, out)
    print(f"({time.perf_counter() - t0:.0f} s)")
    summarise(rows)
    plot(out)
    return 0


def anchor_row(seg, volume, window, cache, gt, res, base: dict, walk: PropagationSettings = DEFAULT,
               worst_by: str = "dice") -> dict:
    """One correction: the GT mask of the worst GT slice (lowest Dice, or most wrong pixels) becomes an anchor;
    re-propagate from both with ``walk``."""
    gt_ks = np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1))
    others = [k for k in gt_ks if k != res.start_slice]
    if worst_by == "error":
        worst = int(max(others, key=lambda k: int((res.masks[k] != gt[k]).sum())))
    else:
        worst = int(min(others, key=lambda k: dice(res.masks[k], gt[k])))
    anchors = {res.start_slice: res.masks[res.start_slice], worst: gt[worst]}
    after = propagate_anchors(seg, volume, anchors, window=window, cache=cache, settings=walk)
    before_d, after_d = dice(res.masks, gt), dice(after.masks, gt)
    return {**base, "part": "anchor", "rule": f"default + GT anchor on slice {worst} (worst by {worst_by})",
            "dice3d": round(after_d, 4),
            "dice3d_before": round(before_d, 4), "gain": round(after_d - before_d, 4),
            "pred_slices": f"{after.slices[0]}..{after.slices[-1]}",
            "stopped": ";".join(f"{d}:{r}" for d, r in after.stopped.items())}


def fill_rows(seg, volume, window, cache, gt, base: dict, walk: PropagationSettings = DEFAULT) -> list[dict]:
    """Two GT slices as anchors (25 % and 75 % of the extent): Dice on the slices strictly between, for each
    ``PropagationSettings.fill`` (model, shape, guided) on top of ``walk``."""
    gt_ks = np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1))
    a, b = int(np.percentile(gt_ks, 25)), int(np.percentile(gt_ks, 75))
    if b - a < 2:
        return []
    anchors = {a: gt[a], b: gt[b]}
    between = slice(a + 1, b)
    rows = []
    for fill, name in FILLS:
        m = propagate_anchors(seg, volume, anchors, window=window, cache=cache, settings=replace(walk, fill=fill), beyond=()).masks
        rows.append({**base, "part": "fill", "rule": f"fill {a}..{b}: {name}", "dice3d": round(dice(m[between], gt[between]), 4),
                     "pred_slices": f"{a}..{b}", "stopped": ""})
    return rows


FILL_GAPS = (4, 8, 12, 16, 24)
FILLS = (("model", "model"), ("shape", "shape (SDF)"), ("guided", "guided (model prompted by the shape)"))


def fill_gap_rows(seg, volume, window, cache, gt, base: dict, walk: PropagationSettings = DEFAULT) -> list[dict]:
    """Fill Dice against the distance between two GT anchors: for each gap G of ``FILL_GAPS``, anchors at the middle
    of the GT extent -+ G/2 (both must hold the structure); Dice on the G - 1 slices strictly between, per fill."""
    gt_ks = np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1))
    centre = (int(gt_ks.min()) + int(gt_ks.max())) // 2
    rows = []
    for gap in FILL_GAPS:
        a, b = centre - gap // 2, centre - gap // 2 + gap
        if a < 0 or b >= len(gt) or not gt[a].any() or not gt[b].any():
            continue
        anchors, between = {a: gt[a], b: gt[b]}, slice(a + 1, b)
        for fill, name in FILLS:
            m = propagate_anchors(seg, volume, anchors, window=window, cache=cache, settings=replace(walk, fill=fill),
                                  beyond=()).masks
            rows.append({**base, "part": "fillgap", "rule": f"gap {gap}: {name}", "gap": gap,
                         "dice3d": round(dice(m[between], gt[between]), 4), "pred_slices": f"{a}..{b}", "stopped": ""})
    return rows


def report(row: dict) -> None:
    extra = f" (before {row['dice3d_before']:.3f}, gain {row['gain']:+.3f})" if "gain" in row else ""
    print(f"{row['dataset']:24s} {row['structure']:14s} {row['rule']:36s} dice3d {row['dice3d']:.3f}{extra} "
          f"gt {row['gt_slices']:7s} pred {row.get('pred_slices', ''):7s} {row.get('stopped', '')}", flush=True)


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


def summarise(rows: list[dict]) -> None:
    print("mean 3D Dice per dataset and rule (Colin27: the 9 structures; held-out: its 5):")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for rule in dict.fromkeys(r["rule"] for r in rows if r["part"] == "rules"):
            d = [float(r["dice3d"]) for r in rows if r["rule"] == rule and r["dataset"] == dataset
                 and r["structure"] != "skull (2)"]
            if d:
                print(f"  {dataset:24s} {rule:36s} {np.mean(d):.3f}  (n={len(d)})")
        for part in ("fill", "anchor"):
            for kind in ("model", "shape", "guided", "GT anchor"):
                d = [float(r["dice3d"]) for r in rows if r["part"] == part and r["dataset"] == dataset
                     and (kind in r["rule"] if part == "anchor" else r["rule"].split(": ", 1)[-1].startswith(kind))]
                if d:
                    print(f"  {dataset:24s} {part} {kind:31s} {np.mean(d):.3f}  (n={len(d)})")


def draw_overlay(items: list, png: Path, columns: int = 6) -> Path:
    """Rows of slices (start slice, then evenly spread over the GT extent and beyond): image, prediction
    (filled, red) and ground truth (contour, green), with the slice's 2D Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from data.windowing import slice_to_rgb

    red = ListedColormap(["red"])

    fig, axes = plt.subplots(len(items), columns, figsize=(2.2 * columns, 2.4 * len(items)), squeeze=False)
    for row, (title, volume, window, gt, res) in zip(axes, items):
        ks = np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1))
        lo, hi = max(0, ks.min() - 2), min(len(gt) - 1, ks.max() + 2)
        picks = sorted(set([res.start_slice] + [int(round(v)) for v in np.linspace(lo, hi, columns)]))[:columns]
        for ax, k in zip(row, picks):
            ax.imshow(slice_to_rgb(volume, k, window))
            ax.imshow(np.ma.masked_where(~res.masks[k], res.masks[k]), cmap=red, alpha=0.4, vmin=0, vmax=1)
            if gt[k].any():
                ax.contour(gt[k], levels=[0.5], colors="lime", linewidths=0.8)
            d = dice(res.masks[k], gt[k]) if (res.masks[k].any() or gt[k].any()) else float("nan")
            ax.set_title(f"k={k}{' (start)' if k == res.start_slice else ''}  Dice {d:.2f}", fontsize=7)
            ax.axis("off")
        row[0].text(-0.05, 0.5, title, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
        for ax in row[len(picks):]:
            ax.axis("off")
    fig.suptitle("LiteMedSAM propagation from one box on the start slice, default rule (red: prediction, green: ground "
                 "truth; slices as stored, k = slice index)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot(csv_path: Path) -> Path:
    """Bar chart of 3D Dice per structure and rule (the 'rules' part) -> the CSV's name .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["part"] == "rules"]
    structures = list(dict.fromkeys(f"{r['dataset']}: {r['structure']}" for r in rows))
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    fig, ax = plt.subplots(figsize=(13, 4.8))
    width = 0.8 / max(len(rules), 1)
    for n, rule in enumerate(rules):
        d = {f"{r['dataset']}: {r['structure']}": float(r["dice3d"]) for r in rows if r["rule"] == rule}
        ax.bar(np.arange(len(structures)) + n * width, [d.get(s, np.nan) for s in structures], width, label=rule)
    ax.set_xticks(np.arange(len(structures)) + 0.4 - width / 2, structures, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("3D Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("LiteMedSAM 3D propagation from one box on the largest GT slice")
    fig.tight_layout()
    png = csv_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
