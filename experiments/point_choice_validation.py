"""Which candidate box should a lone point take? The IoU head (shipped) against other choosers, on the click
model's VALIDATION slices (experiments/click_locality.py's 223 INIA19 cases, never trained on).

For ``points:N`` (``medseg eval``'s points, per-case seeds), every candidate box of ``models.point_prompts``
(half-sides ``--sizes`` mm) goes through the base decoder, and every candidate is refined with the points by
the click model (one batched call each, ``models.decode_many``, as the point route does). A candidate's
refined mask does not depend on which chooser picks it, so each chooser and each leading subset of
``--sizes`` (``--subsets``: the first 3, 4, ... half-sides) is scored from the same decodes. Choosers:
``iou`` (the base decoder's predicted IoU, shipped), ``stability`` (SAM's stability score of the base mask:
area at logit > +1 over area at > -1), ``iou*stability``, ``refined-iou`` (the click refiner's predicted IoU
of each refined candidate), ``oracle`` (best Dice of the unrefined candidates) and ``oracle-refined`` (best
Dice of the refined ones): upper bounds, not methods. ``--raw`` writes one JSON line per case and N.

    python experiments/point_choice_validation.py --cache /tmp/clk18_val_emb.pt --n 1 5 \
        --sizes 5 10 20 40 80 --subsets 3 4 5 --raw docs/clicks/point_choice_s10/validation_cases.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.clicks import sample_points  # noqa: E402
from evaluation.runner import case_rng  # noqa: E402
from experiments.click_locality import dice, embed_all, validation_cases  # noqa: E402
from models import point_prompts  # noqa: E402
from models.decode_many import decode_prompts_many  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

CHOOSERS = ("iou", "stability", "iou*stability", "refined-iou", "oracle", "oracle-refined")


def stability(low: torch.Tensor, offset: float = 1.0) -> float:
    hi, lo = (low > offset).sum().item(), (low > -offset).sum().item()
    return hi / lo if lo else 0.0


def score_case(seg, emb, case: dict, n: int, sizes: tuple[float, ...]) -> dict:
    """Every candidate of one case: base IoU, stability, refined IoU, Dice unrefined and refined."""
    pts, labels = sample_points(case["gt"], n, case_rng(0, case["case_id"]))
    boxes = point_prompts.candidate_boxes(pts, labels, case["gt"].shape, case["spacing"], sizes)
    base = decode_prompts_many(seg, [emb] * len(boxes), [Prompts(box=b, base_decoder=True) for b in boxes], False)
    lows = [d[0][:, :1].float() for d in base]
    refined = decode_prompts_many(seg, [emb] * len(boxes), [
        Prompts(points=pts, point_labels=labels, mask_logits=low[0].cpu().numpy()) for low in lows], False)
    for r in (*base, *refined):
        if isinstance(r, Exception):
            raise r

    def dice_of(low: torch.Tensor) -> float:
        return dice((seg.geometry.logits_to_original(low, emb.original_size) > 0)[0, 0].cpu().numpy(), case["gt"])

    return {"case_id": case["case_id"], "n": n, "sizes": list(sizes),
            "iou": [float(d[1][0, 0]) for d in base], "stability": [stability(low) for low in lows],
            "refined_iou": [float(r[1][0, 0]) for r in refined],
            "dice": [dice_of(low) for low in lows], "dice_refined": [dice_of(r[0][:, :1].float()) for r in refined]}


def choose(rec: dict, k: int) -> dict[str, float]:
    """Refined Dice of each chooser's pick among the first ``k`` candidates (oracle: unrefined Dice)."""
    iou, stab = np.asarray(rec["iou"][:k]), np.asarray(rec["stability"][:k])
    d, dr = rec["dice"][:k], rec["dice_refined"][:k]
    picks = {"iou": np.argmax(iou), "stability": np.argmax(stab), "iou*stability": np.argmax(iou * stab),
             "refined-iou": np.argmax(rec["refined_iou"][:k])}
    out = {c: dr[int(j)] for c, j in picks.items()}
    out["oracle"], out["oracle-refined"] = max(d), max(dr)
    return out


def describe(records: list[dict]) -> None:
    """Per candidate: mean refined Dice, mean predicted IoUs, how often each chooser picks it; and how well
    each IoU head ranks (Pearson r over every case and candidate)."""
    for n in sorted({r["n"] for r in records}):
        rs = [r for r in records if r["n"] == n]
        sizes = rs[0]["sizes"]
        print(f"points:{n}, {len(rs)} cases; per candidate half-side {sizes} mm")
        for key in ("dice_refined", "dice", "refined_iou", "iou"):
            print(f"  mean {key:14s} " + " ".join(f"{v:6.3f}" for v in np.mean([r[key] for r in rs], axis=0)))
        picks = (("iou", "iou picks"), ("refined_iou", "refined-iou picks"), ("dice_refined", "best refined"))
        for key, label in picks:
            counts = np.bincount([int(np.argmax(r[key])) for r in rs], minlength=len(sizes))
            print(f"  {label:19s} " + " ".join(f"{c:6d}" for c in counts))
        for head, target in (("refined_iou", "dice_refined"), ("iou", "dice")):
            x = np.ravel([r[head] for r in rs])
            y = np.ravel([r[target] for r in rs])
            print(f"  r({head}, {target}) = {np.corrcoef(x, y)[0, 1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--n", type=int, nargs="+", default=[1])
    ap.add_argument("--sizes", type=float, nargs="+", default=list(point_prompts.HALF_SIDES_MM))
    ap.add_argument("--subsets", type=int, nargs="+", default=None, help="leading subsets of --sizes to score")
    ap.add_argument("--raw", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--describe", type=Path, default=None, help="a --raw file: describe it, decode nothing")
    args = ap.parse_args(argv)
    if args.describe:
        describe([json.loads(line) for line in args.describe.open()])
        return 0
    torch.set_num_threads(args.threads)
    sizes = tuple(args.sizes)
    subsets = args.subsets or [len(sizes)]
    seg = load_segmenter("litemedsam")
    cases = validation_cases()
    t0 = time.perf_counter()
    embs = embed_all(seg, cases, args.cache)
    print(f"{len(cases)} validation cases, {len({c['slice'] for c in cases})} slices embedded "
          f"({time.perf_counter() - t0:.0f} s)")
    raw = args.raw.open("w") if args.raw else None
    for n in args.n:
        t0 = time.perf_counter()
        records = []
        with torch.inference_mode():
            for case in cases:
                records.append(score_case(seg, embs[case["slice"]], case, n, sizes))
                if raw:
                    raw.write(json.dumps(records[-1]) + "\n")
        print(f"points:{n}, {len(cases)} validation cases, refined Dice of the pick ({time.perf_counter() - t0:.0f} s)")
        print("  half-sides (mm)      " + " ".join(f"{c:>14s}" for c in CHOOSERS))
        for k in subsets:
            means = {c: np.mean([choose(r, k)[c] for r in records]) for c in CHOOSERS}
            label = ",".join(f"{s:g}" for s in sizes[:k])
            print(f"  {label:20s} " + " ".join(f"{means[c]:14.4f}" for c in CHOOSERS))
    if raw:
        raw.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
