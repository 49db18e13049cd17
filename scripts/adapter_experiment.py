"""Fine-tune LiteMedSAM with an adapter on the shared data and measure box / box+clicks:5 before and after.

Split (never the same slice on both sides):

* training: MR caudate, putamen and pallidum (AAL 71-76) and CT head, on the slabs'
  slices that ``shared/data/manifest.csv`` does NOT use (every manifest slice is left out);
* ``heldout`` evaluation: the manifest's thalamus, brain and phantom rows (structures never trained on);
* ``all`` evaluation: the whole manifest (its slices are never trained on; some structures are).

Writes OUT/manifests/{train,heldout,all}.csv, OUT/adapter/ (medseg finetune), OUT/eval/<set>_<before|after>_<protocol>/
(medseg eval) and OUT/results.md + OUT/results.json. Every step is a ``medseg`` command, printed before it runs.

    python scripts/adapter_experiment.py --out out/adapter_exp --device cuda --epochs 15
    python scripts/adapter_experiment.py --out /tmp/exp --max-steps 2 --limit 2          # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data") if not (ROOT.parent / "shared" / "data").is_dir() else ROOT.parent / "shared" / "data"
PROTOCOLS = ("box", "box+clicks:5")
MR_TRAIN = {"caudate_L": "71", "caudate_R": "72", "putamen_L": "73", "putamen_R": "74", "pallidum_L": "75", "pallidum_R": "76"}
# Not the skull: a thin ring whose box also fits the whole head (shared/data/README.md); training on
# it would teach the model that a box means a ring.
CT_TRAIN = {"head": "1|2"}
HELDOUT = ("thalamus", "brain", "outer_ring", "interior", "dark_ellipse")
MIN_AREA = 30


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _absolute(row: dict, data: Path) -> dict:
    return {**row, "image": str(data / row["image"]), "label": str(data / row["label"])}


def build_manifests(data: Path, out: Path, limit: int | None) -> dict[str, Path]:
    """The three manifests; training rows come from the label volumes on the slices the manifest leaves out."""
    from evaluation.manifest import CaseLoader, read_manifest

    shared = [_absolute(r, data) for r in _rows(data / "manifest.csv")]
    used = {(r["image"], int(r["slice_index"])) for r in shared}
    # a row of each slab whose label file holds the training structures (the MR brain rows use the brain mask)
    template = {r["modality"]: r for r in shared if r["structure"] in ("caudate_L", "head")}
    candidates = []
    for modality, structures in (("MR-T1", MR_TRAIN), ("CT", CT_TRAIN)):
        t = template[modality]
        n_slices = 32 if modality == "MR-T1" else 34
        for k in range(n_slices):
            if (t["image"], k) in used:
                continue
            for name, values in structures.items():
                candidates.append({**{c: "" for c in t}, "set": "train", "modality": modality, "image": t["image"],
                                   "label": t["label"], "slice_index": str(k), "transform": t["transform"],
                                   "structure": name, "label_values": values, "norm": t["norm"], "norm_lo": t["norm_lo"],
                                   "norm_hi": t["norm_hi"], "case_id": f"train_{Path(t['image']).name.split('_image')[0]}_{name}_k{k:03d}"})
    tmp = _write(candidates, out / "manifests" / "train_candidates.csv")
    loader = CaseLoader(tmp)
    specs, _ = read_manifest(tmp)
    train = [row for row, spec in zip(candidates, specs) if int(loader.load(spec).gt.sum()) >= MIN_AREA]
    if limit:  # a smoke run: spread the few cases over different slices
        train = [train[i] for i in np.linspace(0, len(train) - 1, limit).round().astype(int)]
    heldout = [r for r in shared if r["structure"].startswith(HELDOUT)]
    every = shared
    train_slices = {(r["image"], int(r["slice_index"])) for r in train}
    if train_slices & used:
        raise RuntimeError("a training slice is also an evaluation slice; this script must never do that")
    return {
        "train": _write(train, out / "manifests" / "train.csv"),
        "heldout": _write(heldout, out / "manifests" / "heldout.csv"),
        "all": _write(every, out / "manifests" / "all.csv"),
    }


def medseg(*args: str) -> None:
    cmd = [sys.executable, "-m", "app.cli", *args]
    print("$ medseg " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _dice(summary_path: Path) -> dict[str, float]:
    s = json.loads(summary_path.read_text())
    means = s["means"]["all"]
    clicks = [str(c) for c in s["clicks"]]
    return {"box": means[clicks[0]]["dice"], "last": means[clicks[-1]]["dice"], "n_cases": s["n_cases"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--adapter", default="sam_med2d", choices=["sam_med2d", "sam_adapter", "lora"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--no-train-decoder", action="store_true", help="adapter only (the decoder stays frozen)")
    p.add_argument("--limit", type=int, default=None, help="N training cases and the first N of each evaluation set")
    p.add_argument("--sets", default="heldout,all", help="evaluation sets, comma-separated (heldout, all)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    out = args.out.resolve()
    manifests = build_manifests(args.data, out, args.limit)
    n_train = len(_rows(manifests["train"]))
    print(f"{n_train} training rows in {manifests['train']}", flush=True)
    adapter_dir = out / "adapter"
    train_args = [str(manifests["train"]), "--model", "litemedsam", "--adapter", args.adapter, "--epochs", str(args.epochs),
                  "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--output", str(adapter_dir),
                  "--device", args.device, "--val-every", str(max(1, n_train // args.batch_size))]
    if args.max_steps:
        train_args += ["--max-steps", str(args.max_steps)]
    if not args.no_train_decoder:
        train_args.append("--train-decoder")
    if (adapter_dir / "checkpoint.pt").exists():
        train_args.append("--resume")
    medseg("finetune", *train_args)
    results: dict = {"train_rows": n_train, "adapter": args.adapter, "train_decoder": not args.no_train_decoder, "sets": {}}
    for name in [s for s in args.sets.split(",") if s]:
        results["sets"][name] = {}
        for tag, extra in (("before", []), ("after", ["--adapter", str(adapter_dir)])):
            for protocol in PROTOCOLS:
                folder = out / "eval" / f"{name}_{tag}_{protocol.replace('+', '_').replace(':', '')}"
                limit = ["--limit", str(args.limit)] if args.limit else []
                medseg("eval", str(manifests[name]), "--model", "litemedsam", "--device", args.device, "--protocol",
                       protocol, "--output", str(folder), "--no-progress", *limit, *extra)
                results["sets"][name][f"{tag} {protocol}"] = _dice(folder / "summary.json")
    lines = ["| set | cases | before: box | before: box+5 clicks | after: box | after: box+5 clicks | clicks gain after |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["sets"].items():
        b_box, b_clk = r["before box"]["box"], r["before box+clicks:5"]["last"]
        a_box, a_clk = r["after box"]["box"], r["after box+clicks:5"]["last"]
        lines.append(f"| {name} | {r['before box']['n_cases']} | {b_box:.4f} | {b_clk:.4f} | {a_box:.4f} | {a_clk:.4f} | "
                     f"{100 * (a_clk - a_box):+.1f} pts |")
    meta = json.loads((adapter_dir / "adapter.json").read_text())
    results["validation"] = meta.get("validation", {})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(lines) + f"\n\nbest validation: {results['validation']}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
