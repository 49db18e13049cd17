"""Do the point sessions' candidates look like inference's? The chosen box candidate (models.point_prompts,
base decoder, no refiner) for one positive point, on INIA19 training slices at their physical spacing (and
with the spacing multiplied by --scales: a human-sized brain seen through the same mm boxes) against the
held-out sets at theirs. Reported: mean Dice of the chosen candidate, and the share of candidates under half
/ over twice the structure's area. The refiner learns to correct what it is given: if training candidates
are mostly right-sized where inference's are too small, it never learns to grow them.

    python experiments/point_candidate_scale.py --stride 16 --scales 1 2.5 --out docs/clicks/point_candidate_scale.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.click_train import (ClickTrainer, ClickTrainSettings, LARGE_SHARE, draw_structure,  # noqa: E402
                                  structure_mask, structures_on, volume_slices)
from evaluation.clicks import sample_points  # noqa: E402
from models import point_prompts  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

DATA = ROOT / "weights" / "devdata" / "click_model"


def stats(cands: list[np.ndarray], gts: list[np.ndarray]) -> dict:
    d, ratio = [], []
    for c, g in zip(cands, gts):
        d.append(2 * (c & g).sum() / max(1, c.sum() + g.sum()))
        ratio.append(c.sum() / max(1, g.sum()))
    ratio = np.asarray(ratio)
    return {"n": len(d), "dice": float(np.mean(d)), "under_half": float(np.mean(ratio < 0.5)),
            "over_twice": float(np.mean(ratio > 2)), "median_area_ratio": float(np.median(ratio))}


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stride", type=int, default=16, help="every N-th original (variant 0) training slice")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.5])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--skip-heldout", action="store_true", help="the training side only")
    args = p.parse_args()
    torch.set_num_threads(1)
    seg = load_segmenter("litemedsam-base")
    lines = []
    vol = np.load(DATA / "train_inia19.npz")
    slices = [s for s in volume_slices(vol["image"], vol["labels"], vol["brain"], spacing=vol["spacing"])
              if s.volume_key[0] == 0][:: args.stride]
    trainer = ClickTrainer(seg, slices, ClickTrainSettings(device="cpu"), exclude=set())
    for scale in args.scales:
        rng = np.random.default_rng(0)
        idx, prompts, gts, large = [], [], [], []
        for i, s in enumerate(slices):
            value = draw_structure(structures_on(s.labels), rng, LARGE_SHARE)
            large.append(value <= 0)
            g = structure_mask(s.labels, value)
            pts, labs = sample_points(g, 1, rng)
            idx.append(i)
            prompts.append(Prompts(points=pts, point_labels=labs, pixel_spacing=tuple(v * scale for v in s.spacing)))
            gts.append(g)
        low = trainer.point_candidates(idx, prompts)
        cands = [(low[b, 0, : g.shape[0], : g.shape[1]] > 0).cpu().numpy() for b, g in enumerate(gts)]
        lines.append(f"train INIA19 (every {args.stride}th slice), spacing x {scale}: {stats(cands, gts)}")
        for name, want in (("large (brain, halves)", True), ("parcels", False)):
            sub = [k for k, is_large in enumerate(large) if is_large == want]
            lines.append(f"    {name}: {stats([cands[k] for k in sub], [gts[k] for k in sub])}")
        print("\n".join(lines[-3:]), flush=True)
    if args.skip_heldout:
        index = []
    else:
        z = np.load(DATA / "eval_slices.npz")
        index = json.loads(str(z["index"]))
    per_set: dict[str, tuple[list, list]] = {}
    for i, row in enumerate(index):
        gt = z[f"gt_{i}"].astype(bool)
        rng = np.random.default_rng([0, i])
        pts, labs = sample_points(gt, 1, rng)
        emb = seg.embed(z[f"image_{i}"])
        prompts = Prompts(points=pts, point_labels=labs, pixel_spacing=tuple(row["spacing"]))
        low, _, _ = point_prompts.decode_points(seg, emb, prompts, False, refine="none")
        mask = seg.to_result(emb, low, torch.zeros(1, 1)).masks[0]
        per_set.setdefault(row["set"], ([], []))[0].append(mask)
        per_set[row["set"]][1].append(gt)
    for name, (cands, gts) in per_set.items():
        lines.append(f"held out {name}: {stats(cands, gts)}")
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
