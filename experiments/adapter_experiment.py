"""Fine-tune LiteMedSAM with an adapter on many structures; measure box / box+clicks:5 before and after.

The goal (issue #8): after fine-tuning, box+5 clicks at least 3 Dice points above the box alone,
without losing box Dice, on structures the adapter never saw. So the split is by structure:

* **training** (``--train-rows`` rows, drawn evenly over structures and views): the AAL atlas
  regions of the whole Colin27 brain (``mricron-data``'s ``aal.nii.gz`` on ``ch2.nii.gz``; the
  shared slab keeps only AAL 71-78) as single regions and as lobes, in axial, coronal and sagittal
  views, plus the CT head on the CT slab's slices. Never: the thalamus (AAL 77/78, held out), the
  validation structures, a slice of ``shared/data/manifest.csv`` (every axial slice it uses is left
  out), a validation slice; the caudate, putamen and pallidum (AAL 71-76, in the manifest) only on
  axial slices the manifest does not use (never in the coronal/sagittal views, which cross those slices);
* **validation** (checkpoint selection, ``--val-rows`` rows): structures never trained on, on axial
  slices never trained on: insula, middle cingulum, hippocampus (each L and R) and the occipital
  lobe (L, R; its regions AAL 43-54 are not trained on either);
* ``heldout`` evaluation: the manifest's thalamus, brain and phantom rows (16 cases; never trained on);
* ``all`` evaluation: the whole manifest (42 cases; no slice trained on; caudate/putamen/pallidum
  and CT head seen on other slices).

One-time preparation (here, not on the device; writes ``weights/devdata/colin27``, about 11 MB):

    apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb /tmp/mricron
    python experiments/adapter_experiment.py --prepare-colin27 /tmp/mricron/usr/share/mricron/templates

Run (``--stage train`` then ``--stage eval`` reuse ``--out``; ``--stage all`` does both):

    python experiments/adapter_experiment.py --out out/adapter_exp --data weights/devdata --device cuda
    python experiments/adapter_experiment.py --out /tmp/exp --limit 3 --max-steps 2     # CPU smoke run

Writes OUT/manifests/{train,val,heldout,all}.csv, OUT/adapter/ (``medseg finetune``),
OUT/eval/<set>_<before|after>_<protocol>/ (``medseg eval``), OUT/results.md and OUT/results.json.
Every step is a ``medseg`` command, printed before it runs; they run in this process so the model
and the CUDA context are loaded once.

Question answered and where: docs/adapters.md (raw runs in docs/adapter_runs/).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data") if not (ROOT.parent / "shared" / "data").is_dir() else ROOT.parent / "shared" / "data"
COLIN27 = ROOT / "weights" / "devdata" / "colin27"
PROTOCOLS = ("box", "box+clicks:5")
SLAB_Z0 = 66  # the shared MR slab is axial slices z = 66..97 of the whole Colin27 (checked by --prepare-colin27)
VIEWS = ("axial", "coronal", "sagittal")
# (view) -> axes of the whole volume (i, j, k as nibabel loads it) put in (i, j, k) order, so that
# the manifest's ``rot90`` of slice k shows the view with the top of the head up
VIEW_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
MANIFEST_MR = range(71, 79)  # caudate, putamen, pallidum, thalamus L/R: the manifest's MR structures
NEVER_TRAINED = (77, 78)  # thalamus: a heldout structure
VAL_GROUPS = {
    "insula_L": (29,), "insula_R": (30,), "cingulum_mid_L": (33,), "cingulum_mid_R": (34,),
    "hippocampus_L": (37,), "hippocampus_R": (38,),
    "occipital_lobe_L": tuple(range(43, 55, 2)), "occipital_lobe_R": tuple(range(44, 55, 2)),
}
LOBES = {  # trained as structures too: large shapes, not only small regions
    "frontal_lobe_L": tuple(range(1, 29, 2)), "frontal_lobe_R": tuple(range(2, 29, 2)),
    "parietal_lobe_L": tuple(range(57, 71, 2)), "parietal_lobe_R": tuple(range(58, 71, 2)),
    "temporal_lobe_L": tuple(range(79, 91, 2)), "temporal_lobe_R": tuple(range(80, 91, 2)),
    "cerebellum_L": tuple(range(91, 109, 2)), "cerebellum_R": tuple(range(92, 109, 2)), "vermis": tuple(range(109, 117)),
}
VAL_SLICE = (8, 4)  # axial z with z % 8 == 4 hold the validation rows (none is a manifest slice)
HELDOUT = ("thalamus", "brain", "outer_ring", "interior", "dark_ellipse")
MIN_AREA = 30
COLUMNS = ("set", "case_id", "modality", "view", "image", "label", "slice_index", "transform", "structure",
           "label_values", "norm", "norm_lo", "norm_hi")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(rows: list[dict], path: Path, columns: tuple[str, ...] | None = None) -> Path:
    if not rows:
        raise RuntimeError(f"{path}: no rows; check --data and --colin27")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _absolute(row: dict, data: Path) -> dict:
    return {**row, "image": str(data / row["image"]), "label": str(data / row["label"])}


# --- one-time preparation ---------------------------------------------------------------------------
def prepare_colin27(templates: Path, data: Path, dest: Path) -> None:
    """The whole Colin27 T1 and AAL atlas from ``mricron-data``, one NIfTI per view, into ``dest``.

    Checks first that they are the brain of the shared slab (voxel for voxel, z = 66..97) and that
    the slab's labels are these AAL codes 71-78, so the manifest's slices can be left out exactly.
    """
    import nibabel as nib

    image = np.asarray(nib.load(templates / "ch2.nii.gz").dataobj)
    aal = np.asarray(nib.load(templates / "aal.nii.gz").dataobj)
    slab = np.asarray(nib.load(data / "mr_t1_colin27_slabA_image.nii.gz").dataobj)
    slab_labels = np.asarray(nib.load(data / "mr_t1_colin27_slabA_label.nii.gz").dataobj)
    z = slice(SLAB_Z0, SLAB_Z0 + slab.shape[2])
    if image.shape != aal.shape or not np.array_equal(image[:, :, z], slab):
        raise SystemExit(f"{templates}: ch2.nii.gz is not the brain of {data}'s MR slab (z {SLAB_Z0}..); "
                         "give mricron-data's templates folder")
    kept = np.where(np.isin(aal[:, :, z], MANIFEST_MR), aal[:, :, z], 0)
    if not np.array_equal(kept, slab_labels):
        raise SystemExit(f"{templates}: aal.nii.gz does not match the slab's labels (AAL 71-78)")
    dest.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)  # 1 mm isotropic; the views are 2D training slices, their world position is not used
    for view, axes in VIEW_AXES.items():
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(axes)), affine), dest / f"{view}_image.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(aal.transpose(axes)), affine), dest / f"{view}_aal.nii.gz")
    (dest / "aal_names.txt").write_text((templates / "aal.nii.txt").read_text())
    (dest / "README.txt").write_text(
        "Colin27 T1 (ch2.nii.gz) and the AAL atlas (aal.nii.gz) from Debian mricron-data 1.2.20211006+dfsg-4\n"
        "(licences: shared/data/README.md), one file per view: axial = the source array, coronal and sagittal =\n"
        f"its axes {VIEW_AXES['coronal']} and {VIEW_AXES['sagittal']} (slice k, then rot90 as the manifest's MR rows).\n"
        "Written by experiments/adapter_experiment.py --prepare-colin27; for the adapter experiment only.\n")
    print(f"wrote {dest}: " + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(dest.iterdir())))


# --- manifests --------------------------------------------------------------------------------------
def _aal_names(colin: Path) -> dict[int, str]:
    names = {}
    for line in (colin / "aal_names.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1].lower()
    return names


def structure_groups(colin: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """-> (training structures, validation structures): name -> AAL codes."""
    names = _aal_names(colin)
    val_codes = {c for codes in VAL_GROUPS.values() for c in codes}
    train = {names[c]: (c,) for c in sorted(names) if c not in val_codes and c not in NEVER_TRAINED}
    train.update(LOBES)
    overlap = {n for n, codes in train.items() if set(codes) & (val_codes | set(NEVER_TRAINED))}
    if overlap:
        raise RuntimeError(f"training structures {sorted(overlap)} contain validation or heldout codes")
    return train, dict(VAL_GROUPS)


def _areas(label_path: Path, groups: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """name -> (slices,) area in px of the structure on each slice (the view does not change an area)."""
    from data.readers import read_study

    vol = read_study(label_path)
    counts = np.stack([np.bincount(vol.slice(k).ravel().astype(np.int64), minlength=256) for k in range(vol.num_slices)])
    return {name: counts[:, list(codes)].sum(axis=1) for name, codes in groups.items()}


def _spread(groups: dict[tuple, list[dict]], n: int, rng: np.random.Generator) -> list[dict]:
    """Up to ``n`` rows, round-robin over the groups (each shuffled): every structure and view gets its share."""
    pools = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(groups.items()) if g]
    out: list[dict] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        for i in rng.permutation(len(pools)):
            if depth < len(pools[i]) and len(out) < n:
                out.append(pools[i][depth])
        depth += 1
    return out


def build_manifests(data: Path, colin: Path, out: Path, n_train: int, n_val: int, seed: int,
                    limit: int | None) -> dict[str, Path]:
    """The four manifests (see the module doc); refuses any slice shared by training and validation/evaluation."""
    shared = [_absolute(r, data) for r in _rows(data / "manifest.csv")]
    mr = next(r for r in shared if r["modality"] == "MR-T1")
    ct = next(r for r in shared if r["structure"] == "head")
    manifest_z = {SLAB_Z0 + int(r["slice_index"]) for r in shared if r["image"] == mr["image"]}
    val_z = {z for z in range(256) if z % VAL_SLICE[0] == VAL_SLICE[1]}
    if val_z & manifest_z:
        raise RuntimeError("a validation slice is a manifest slice")
    train_groups, val_groups = structure_groups(colin)
    rng = np.random.default_rng(seed)

    def row(view: str, k: int, name: str, codes: tuple[int, ...], kind: str) -> dict:
        return {"set": kind, "case_id": f"{kind}_colin27_{view}_{name}_k{k:03d}", "modality": "MR-T1", "view": view,
                "image": str(colin / f"{view}_image.nii.gz"), "label": str(colin / f"{view}_aal.nii.gz"),
                "slice_index": str(k), "transform": "rot90", "structure": name,
                "label_values": "|".join(map(str, codes)), "norm": mr["norm"], "norm_lo": mr["norm_lo"], "norm_hi": mr["norm_hi"]}

    train_pool: dict[tuple, list[dict]] = {}
    for view in VIEWS:
        areas = _areas(colin / f"{view}_aal.nii.gz", train_groups)
        for name, codes in train_groups.items():
            if view != "axial" and set(codes) & set(MANIFEST_MR):
                continue  # these views cross the manifest's axial slices
            for k in np.flatnonzero(areas[name] >= MIN_AREA):
                if view == "axial" and (k in manifest_z or k in val_z):
                    continue
                train_pool.setdefault((view, name), []).append(row(view, int(k), name, codes, "train"))
    val_areas = _areas(colin / "axial_aal.nii.gz", val_groups)
    val_pool = {(name,): [row("axial", int(k), name, codes, "val") for k in np.flatnonzero(val_areas[name] >= MIN_AREA)
                          if k in val_z] for name, codes in val_groups.items()}
    ct_used = {int(r["slice_index"]) for r in shared if r["image"] == ct["image"]}
    ct_areas = _areas(Path(ct["label"]), {"head": (1, 2)})["head"]
    ct_rows = [{"set": "train", "case_id": f"train_ct_head_0051_head_k{k:03d}", "modality": "CT", "view": "coronal",
                "image": ct["image"], "label": ct["label"], "slice_index": str(k), "transform": ct["transform"],
                "structure": "head", "label_values": "1|2", "norm": ct["norm"], "norm_lo": ct["norm_lo"], "norm_hi": ct["norm_hi"]}
               for k in np.flatnonzero(ct_areas >= MIN_AREA) if k not in ct_used]
    if limit:  # a smoke run: a few rows of each
        n_train, n_val, ct_rows = limit, limit, ct_rows[:1]
    train = _spread(train_pool, n_train, rng) + ct_rows
    val = _spread(val_pool, n_val, rng)
    heldout = [r for r in shared if r["structure"].startswith(HELDOUT)]
    # the guarantees, checked on the final rows
    axial = str(colin / "axial_image.nii.gz")
    train_axial = {int(r["slice_index"]) for r in train if r["image"] == axial}
    if train_axial & (manifest_z | val_z) or {(r["image"], r["slice_index"]) for r in train} & {(r["image"], r["slice_index"]) for r in shared + val}:
        raise RuntimeError("a training slice is also a validation or evaluation slice; this script must never do that")
    if {r["structure"] for r in train} & ({r["structure"] for r in val} | {"thalamus_l", "thalamus_r"}):
        raise RuntimeError("a validation or heldout structure is in the training rows")
    return {
        "train": _write(train, out / "manifests" / "train.csv", COLUMNS),
        "val": _write(val, out / "manifests" / "val.csv", COLUMNS),
        "heldout": _write(heldout, out / "manifests" / "heldout.csv"),
        "all": _write(shared, out / "manifests" / "all.csv"),
    }


# --- running ----------------------------------------------------------------------------------------
def medseg(*args: str) -> None:
    """One ``medseg`` command, printed, run in this process (the model is loaded once per process)."""
    from app.cli import main as cli

    print("$ medseg " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    code = cli(list(args))
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if code != 0:
        raise SystemExit(f"medseg {args[0]} failed with exit code {code}")


def _dice(summary_path: Path) -> dict[str, float]:
    s = json.loads(summary_path.read_text())
    means = s["means"]["all"]
    clicks = [str(c) for c in s["clicks"]]
    return {"box": means[clicks[0]]["dice"], "last": means[clicks[-1]]["dice"], "n_cases": s["n_cases"]}


def train_stage(args: argparse.Namespace, out: Path) -> dict:
    manifests = build_manifests(args.data.resolve(), args.colin27.resolve(), out, args.train_rows, args.val_rows,
                                args.seed, args.limit)
    train_rows, val_rows = _rows(manifests["train"]), _rows(manifests["val"])
    print(f"{len(train_rows)} training rows ({len({r['structure'] for r in train_rows})} structures), "
          f"{len(val_rows)} validation rows ({len({r['structure'] for r in val_rows})} structures never trained on)", flush=True)
    adapter_dir = out / "adapter"
    train_args = [str(manifests["train"]), "--model", "litemedsam", "--adapter", args.adapter, "--epochs", str(args.epochs),
                  "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--decoder-lr-scale", str(args.decoder_lr_scale),
                  "--warmup-steps", str(args.warmup_steps), "--val-manifest", str(manifests["val"]),
                  "--val-every", str(args.val_every), "--patience", str(args.patience), "--output", str(adapter_dir),
                  "--device", args.device, "--seed", str(args.seed)]
    if args.max_minutes:
        train_args += ["--max-minutes", str(args.max_minutes)]
    if args.max_steps:
        train_args += ["--max-steps", str(args.max_steps)]
    if not args.no_train_decoder:
        train_args.append("--train-decoder")
    if args.click_prompts:
        train_args.append("--train-click-prompts")
    if args.click_refiner:
        train_args.append("--click-refiner")
    if args.click_schedule != "uniform":
        train_args += ["--click-schedule", args.click_schedule]
    if args.encoder_lr_scale != 1.0:
        train_args += ["--encoder-lr-scale", str(args.encoder_lr_scale)]
    if args.no_progress:
        train_args.append("--no-progress")
    if (adapter_dir / "checkpoint.pt").exists():
        train_args.append("--resume")
    medseg("finetune", *train_args)
    return {"train_rows": len(train_rows), "train_structures": len({r["structure"] for r in train_rows}),
            "val_rows": len(val_rows), "val_structures": sorted({r["structure"] for r in val_rows})}


def eval_stage(args: argparse.Namespace, out: Path) -> dict:
    adapter_dir = out / "adapter"
    if not (adapter_dir / "adapter.json").is_file():
        raise SystemExit(f"{adapter_dir}: no adapter; run --stage train first with the same --out")
    results: dict = {}
    for name in [s for s in args.sets.split(",") if s]:
        manifest = out / "manifests" / f"{name}.csv"
        results[name] = {}
        for tag, extra in (("before", []), ("after", ["--adapter", str(adapter_dir)])):
            for protocol in PROTOCOLS:
                folder = out / "eval" / f"{name}_{tag}_{protocol.replace('+', '_').replace(':', '')}"
                summary = folder / "summary.json"
                if summary.is_file() and summary.stat().st_mtime > (adapter_dir / "adapter.json").stat().st_mtime:
                    print(f"kept {folder} (newer than the adapter): a rerun of --stage eval goes on where it stopped", flush=True)
                    results[name][f"{tag} {protocol}"] = _dice(summary)
                    continue
                limit = ["--limit", str(args.limit)] if args.limit else []
                medseg("eval", str(manifest), "--model", "litemedsam", "--device", args.device, "--protocol",
                       protocol, "--output", str(folder), "--no-progress", *limit, *extra)
                results[name][f"{tag} {protocol}"] = _dice(folder / "summary.json")
    return results


def write_results(out: Path, results: dict) -> None:
    lines = ["| set | cases | before: box | before: box+5 clicks | after: box | after: box+5 clicks | box change | clicks gain after | goal met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["sets"].items():
        b_box, b_clk = r["before box"]["box"], r["before box+clicks:5"]["last"]
        a_box, a_clk = r["after box"]["box"], r["after box+clicks:5"]["last"]
        met = a_clk - a_box >= 0.03 and a_box >= b_box
        lines.append(f"| {name} | {r['before box']['n_cases']} | {b_box:.4f} | {b_clk:.4f} | {a_box:.4f} | {a_clk:.4f} | "
                     f"{100 * (a_box - b_box):+.1f} pts | {100 * (a_clk - a_box):+.1f} pts | {'yes' if met else 'no'} |")
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    results["validation"] = meta.get("validation", {})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(lines) + f"\n\nbest validation: {results['validation']}\n")
    print("\n".join(lines))
    print(f"best validation: {results['validation']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (required unless --prepare-colin27)")
    p.add_argument("--prepare-colin27", type=Path, metavar="TEMPLATES",
                   help="mricron-data's templates folder: write --colin27 and exit")
    p.add_argument("--stage", choices=["train", "eval", "all"], default="all")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data (manifest.csv and its volumes)")
    p.add_argument("--colin27", type=Path, default=COLIN27, help="the prepared whole Colin27 views")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--adapter", default="sam_med2d", choices=["sam_med2d", "sam_adapter", "lora"])
    p.add_argument("--train-rows", type=int, default=1600, help="training rows drawn from the atlas (CT head rows added)")
    p.add_argument("--val-rows", type=int, default=48)
    p.add_argument("--epochs", type=int, default=20, help="an upper bound; --max-minutes usually ends training")
    p.add_argument("--max-minutes", type=float, default=5.0, help="training time budget, validations included")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--decoder-lr-scale", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--val-every", type=int, default=40)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train-decoder", action="store_true", help="adapter only (the decoder stays frozen)")
    p.add_argument("--click-prompts", action="store_true",
                   help="also train the click and mask-prompt embeddings (with --no-train-decoder: box path = adapter only)")
    p.add_argument("--click-refiner", action="store_true",
                   help="train a residual click decoder (with --no-train-decoder: box path = adapter only)")
    p.add_argument("--encoder-lr-scale", type=float, default=1.0, help="0: the encoder adapter stays the identity")
    p.add_argument("--click-schedule", choices=["uniform", "full"], default="uniform")
    p.add_argument("--limit", type=int, default=None, help="a smoke run: N training and validation rows, N cases per evaluation")
    p.add_argument("--sets", default="heldout,all", help="evaluation sets, comma-separated (heldout, all)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.prepare_colin27:
        prepare_colin27(args.prepare_colin27, args.data, args.colin27)
        return 0
    if args.out is None:
        p.error("--out is required")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "results.json"
    results = json.loads(state_path.read_text()) if state_path.is_file() else {}
    results.setdefault("seconds", {})
    t0 = time.perf_counter()
    if args.stage in ("train", "all"):
        results.update(train_stage(args, out), adapter=args.adapter, train_decoder=not args.no_train_decoder,
                       click_prompts=args.click_prompts)
        results["seconds"]["train"] = round(time.perf_counter() - t0, 1)
        state_path.write_text(json.dumps(results, indent=2))
    if args.stage in ("eval", "all"):
        t1 = time.perf_counter()
        results["sets"] = eval_stage(args, out)
        results["seconds"]["eval"] = round(time.perf_counter() - t1, 1)
        write_results(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
