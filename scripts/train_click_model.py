"""Train the shipped click model (one command, one seed) and measure it per click on held-out data.

    python scripts/prepare_click_data.py ...            # once, here: writes weights/devdata/click_model
    python scripts/train_click_model.py --data weights/devdata/click_model --out weights/click_model \\
        --device cuda --minutes 6 --seed 0 [--checkpoint weights/lite_medsam.pth]

Trains ``adapters.click_train`` on the INIA19 macaque slices (validation: INIA19 structures held
out of training), writes ``click_model.safetensors`` (fp16 when fp16 changes no mask of the
held-out evaluation, else fp32), ``adapter.json`` (provenance: every training volume with package,
version, path inside it and sha256; the settings; validation), ``history.csv``, ``curves.png``,
and, from ``eval_slices.npz`` (cases no training step saw), ``heldout.json``: mean Dice per click for
the base model and the click model with ``medseg eval``'s simulated user (``box``, ``box+clicks:5``,
``points:1``, ``points:5``; margin 5, the same per-case seeds).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.click_train import ClickTrainer, ClickTrainSettings, structures_on, volume_slices  # noqa: E402
from evaluation.clicks import parse_protocol, simulate  # noqa: E402
from models.click_model import META_FILE, WEIGHTS_FILE, build_refiner, refiner_state  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

PROTOCOLS = ("box+clicks:5", "points:1", "points:5")


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """``evaluation.runner.case_rng`` (not imported: the runner needs SimpleITK, which the GPU machine lacks;
    tests/models/test_click_model.py checks that the two agree)."""
    import zlib

    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    t = int(a.sum()) + int(b.sum())
    return 1.0 if t == 0 else 2.0 * int((a & b).sum()) / t


def evaluate(seg, cases: list[dict]) -> dict:
    """{protocol: {set: [per-case [dice per step]]}} with medseg eval's simulated user."""
    out: dict = {}
    for case in cases:
        emb = seg.embed(case["image"])
        for proto in PROTOCOLS:
            steps = simulate(lambda p, mm: seg.predict(emb, p, multimask_output=mm), case["gt"], parse_protocol(proto),
                             margin=5, jitter=0, rng=case_rng(0, case["case_id"]), feed_logits=True,
                             spacing=case_spacing(case))
            out.setdefault(proto, {}).setdefault(case["set"], []).append([dice(s.mask, case["gt"]) for s in steps])
    return out


def masks_of(seg, cases: list[dict]) -> list[np.ndarray]:
    res = []
    for case in cases:
        emb = seg.embed(case["image"])
        for proto in PROTOCOLS:
            steps = simulate(lambda p, mm: seg.predict(emb, p, multimask_output=mm), case["gt"], parse_protocol(proto),
                             margin=5, jitter=0, rng=case_rng(0, case["case_id"]), feed_logits=True,
                             spacing=case_spacing(case))
            res.extend(s.mask for s in steps)
    return res


def case_spacing(case: dict) -> tuple[float, float] | None:
    """The case's (row, col) mm, as ``medseg eval`` passes it (points alone become boxes of physical sizes);
    None (1 mm) for an ``eval_slices.npz`` written before it carried the spacing."""
    return tuple(case["spacing"]) if case.get("spacing") is not None else None


def point_route_record(volume_spacing, slices) -> dict:
    """How the point sessions made their candidates (adapters.click_train.ClickTrainer.point_candidates)."""
    from models import point_prompts

    per_view = {}
    for s in slices:
        per_view.setdefault(s.volume_key[1], [round(v, 4) for v in s.spacing])
    return {"route": "models.point_prompts.decode_points_many(refine='none') on the base decoder; the chosen "
                     "candidate's low-res logits + the points to the refiner",
            "half_sides_mm": list(point_prompts.HALF_SIDES_MM), "chooser": point_prompts.choice(),
            "grow_steps": point_prompts.GROW_STEPS, "volume_spacing_mm": [float(v) for v in volume_spacing],
            "slice_spacing_mm_after_resize": per_view}


def first_per_set(cases: list[dict], n: int) -> list[dict]:
    """The first ``n`` cases of each held-out set: a smoke run still prints every set's row."""
    out, seen = [], {}
    for case in cases:
        seen[case["set"]] = seen.get(case["set"], 0) + 1
        if seen[case["set"]] <= n:
            out.append(case)
    return out


def load_eval(path: Path) -> list[dict]:
    z = np.load(path)
    index = json.loads(str(z["index"]))
    return [{**row, "image": z[f"image_{i}"], "gt": z[f"gt_{i}"].astype(bool)} for i, row in enumerate(index)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="LiteMedSAM weights (default: the registry's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=12, help="processes that simulate the clicks")
    p.add_argument("--slice-stride", type=int, default=1, help="keep every N-th training slice (CPU smoke runs)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="evaluate only the first N cases of each held-out set (smoke runs)")
    p.add_argument("--points-large-share", type=float, default=None,
                   help="share of the point sessions that prompt a large structure (default: as the others, 0.3)")
    p.add_argument("--point-mm-scale", type=float, nargs=2, default=(1.0, 1.0), metavar=("LO", "HI"),
                   help="each point session's pixel spacing x a log-uniform factor in [LO, HI] (default 1 1: the "
                        "slices' physical spacing; validation uses sqrt(LO x HI))")
    p.add_argument("--no-point-route", action="store_true",
                   help="point sessions give the refiner the points alone, no candidate's logits (the shipped model's "
                        "recipe before session 9)")
    p.add_argument("--one-error-share", type=float, default=0.0,
                   help="share of box sessions that start from the box mask with every error but the largest corrected")
    p.add_argument("--monotone-weight", type=float, default=0.0,
                   help="weight of the loss term relu(Dice before a click - soft Dice after it)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logf = open(args.out / "train_log.txt", "w")

    def log(line: str) -> None:
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    torch.manual_seed(args.seed)
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(args.workers) if args.workers > 1 else None  # before CUDA starts
    base = load_segmenter("litemedsam-base", args.checkpoint, args.device)
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    from models.checkpoint import sha256_of
    from models.registry import get_spec

    base_sha = sha256_of(ckpt or get_spec("litemedsam-base").default_checkpoint)
    vol = np.load(args.data / "train_inia19.npz")
    if "spacing" not in vol.files:
        raise SystemExit(f"{args.data / 'train_inia19.npz'} has no voxel spacing (the point sessions' mm boxes "
                         "need it): run scripts/prepare_click_data.py again")
    t0 = time.perf_counter()
    slices = volume_slices(vol["image"], vol["labels"], vol["brain"], spacing=vol["spacing"])[:: args.slice_stride]
    all_labels = sorted({v for s in slices for v in structures_on(s.labels) if v > 0})
    rng = np.random.default_rng(args.seed)
    val_labels = set(int(v) for v in rng.choice(all_labels, int(len(all_labels) * args.val_fraction), replace=False))
    settings = ClickTrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_minutes=args.minutes,
                                  seed=args.seed, device=args.device, points_large_share=args.points_large_share,
                                  point_mm_scale=tuple(args.point_mm_scale), point_route=not args.no_point_route,
                                  one_error_share=args.one_error_share, monotone_weight=args.monotone_weight)
    trainer = ClickTrainer(base, slices, settings, exclude=val_labels, pool=pool)
    # validation: original (variant 0) slices holding a held-out structure, every 4th, at most 48
    val_idx = [i for i, s in enumerate(slices) if s.volume_key[0] == 0 and s.k % 4 == 2
               and any(v in val_labels for v in structures_on(s.labels))]
    val_idx = [val_idx[i] for i in np.linspace(0, len(val_idx) - 1, min(48, len(val_idx))).astype(int)]
    trainer.val_idx = val_idx
    trainer.val_structures = [[v for v in structures_on(s.labels) if v in val_labels] or [0] for s in slices]
    log(f"{len(slices)} training slices (4 variants), {len(all_labels)} structures, {len(val_labels)} held out for "
        f"validation ({len(val_idx)} slices); encoded in {time.perf_counter() - t0:.0f} s")
    history = trainer.train(log)
    log(f"trained {max(r['step'] for r in history)} steps in {time.perf_counter() - t0:.0f} s; best validation at step {trainer.best_step}")

    # fp16 if it changes no mask of the held-out evaluation
    cases = load_eval(args.data / "eval_slices.npz")
    if args.eval_limit is not None:
        cases = first_per_set(cases, args.eval_limit)
    import copy

    click = copy.copy(base)  # a new model object: the base's own model must stay without a refiner
    click.model = copy.deepcopy(base.model)
    state32 = refiner_state(trainer.refiner, torch.float32)
    click.model.click_refiner = build_refiner(base.model, state32).to(args.device)
    click.name = "litemedsam"
    assert getattr(base.model, "click_refiner", None) is None
    m32 = masks_of(click, cases)
    state16 = refiner_state(trainer.refiner, torch.float16)
    click.model.click_refiner = build_refiner(base.model, state16).to(args.device)
    m16 = masks_of(click, cases)
    changed = sum(int(not np.array_equal(a, b)) for a, b in zip(m32, m16))
    state = state16 if changed == 0 else state32
    log(f"fp16 weights change {changed} of {len(m32)} held-out masks: saving {'fp16' if changed == 0 else 'fp32'}")
    if changed:
        click.model.click_refiner = build_refiner(base.model, state32).to(args.device)
    from safetensors.torch import save_file

    save_file(state, str(args.out / WEIGHTS_FILE))
    results = {"base": evaluate(base, cases), "click_model": evaluate(click, cases)}
    summary = {}
    for model, res in results.items():
        for proto, sets in res.items():
            for set_name, rows in sets.items():
                summary[f"{model}|{proto}|{set_name}"] = np.mean(np.asarray(rows), axis=0).round(4).tolist()
    for k, v in sorted(summary.items()):
        log(f"{k}: {v}")
    (args.out / "heldout.json").write_text(json.dumps({"summary": summary, "per_case": results,
                                                      "case_ids": [c["case_id"] for c in cases]}))
    sources = json.loads((args.data / "sources.json").read_text())
    meta = {
        "format": 1, "kind": "click_model", "base_model": "litemedsam", "base_sha256": base_sha,
        "weights_file": WEIGHTS_FILE, "weights_sha256": hashlib.sha256((args.out / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "dtype": "float16" if changed == 0 else "float32", "fp16_masks_changed": changed, "scope": "prompts",
        "training_volumes": [s for s in sources if s["use"] == "train"],
        "heldout_volumes": [s for s in sources if s["use"] == "heldout"]
        + [{"use": "heldout", "subject": "shared/data", "path": "shared/data/manifest.csv (Colin27 slab A, CT head 0051, phantom)"}],
        "training_data_file": {"path": "train_inia19.npz (scripts/prepare_click_data.py)",
                               "sha256": hashlib.sha256((args.data / "train_inia19.npz").read_bytes()).hexdigest()},
        "validation": {"heldout_inia19_labels": sorted(val_labels), "best_step": trainer.best_step,
                       **{k: v for k, v in history[-1].items() if k.startswith("val_") or k == "score"}},
        "training": {**asdict(settings), "kind_weights": list(settings.kind_weights),
                     "point_mm_scale": list(settings.point_mm_scale), "slices": len(slices),
                     "point_sessions": point_route_record(vol["spacing"], slices),
                     "command": "python scripts/train_click_model.py " + " ".join(sys.argv[1:]),
                     "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "heldout_summary": summary,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    cols = sorted({k for r in history for k in r})
    with open(args.out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
    plot_history(history, args.out / "curves.png")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    tr = [r for r in history if "loss" in r]
    steps, loss = np.array([r["step"] for r in tr]), np.array([r["loss"] for r in tr])
    a.plot(steps, loss, lw=0.4, alpha=0.4)
    k = max(5, len(loss) // 40)
    if len(loss) > k:
        a.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
        a.legend()
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    va = [r for r in history if "score" in r]
    for key in sorted({k for r in va for k in r if k.startswith("val_")}):
        b.plot([r["step"] for r in va], [r[key] for r in va], marker="o", ms=3, label=key[4:])
    b.set_xlabel("step")
    b.set_ylabel("validation Dice (INIA19 structures not trained on)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
