"""Which candidate box should a lone point take? The IoU head (shipped) against training-free scores, on the
click model's VALIDATION slices (experiments/click_locality.py's 223 INIA19 cases, never trained on).

For ``points:N`` (``medseg eval``'s points, per-case seeds), every candidate box of ``models.point_prompts``
(half-sides ``--sizes`` mm) goes through the base decoder; a chooser picks one; the chosen one is refined
with the points by the click model, as the point route does. Choosers: ``iou`` (the base decoder's predicted
IoU, shipped), ``stability`` (SAM's stability score: IoU of the masks at logit > +1 and > -1),
``iou*stability``, ``oracle`` (best Dice: an upper bound, not a method).

    python experiments/point_choice_validation.py --cache /tmp/clk18_val_emb.pt --n 1
"""

from __future__ import annotations

import argparse
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


def stability(low: torch.Tensor, offset: float = 1.0) -> float:
    hi, lo = (low > offset).sum().item(), (low > -offset).sum().item()
    return hi / lo if lo else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--sizes", type=float, nargs="+", default=list(point_prompts.HALF_SIDES_MM))
    args = ap.parse_args(argv)
    seg = load_segmenter("litemedsam")
    cases = validation_cases()
    embs = embed_all(seg, cases, args.cache)
    choosers = ("iou", "stability", "iou*stability", "oracle")
    out = {c: [] for c in choosers}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for case in cases:
            emb = embs[case["slice"]]
            pts, labels = sample_points(case["gt"], args.n, case_rng(0, case["case_id"]))
            boxes = point_prompts.candidate_boxes(pts, labels, case["gt"].shape, case["spacing"], tuple(args.sizes))
            dec = decode_prompts_many(seg, [emb] * len(boxes), [Prompts(box=b, base_decoder=True) for b in boxes], False)
            lows = [d[0][:, :1].float() for d in dec]
            ious = [float(d[1][0, 0]) for d in dec]
            stab = [stability(low) for low in lows]
            picks = {"iou": int(np.argmax(ious)), "stability": int(np.argmax(stab)),
                     "iou*stability": int(np.argmax(np.asarray(ious) * np.asarray(stab)))}
            refined = {}
            for k in sorted(set(picks.values())):
                p = Prompts(points=pts, point_labels=labels, mask_logits=lows[k][0].cpu().numpy())
                low, _ = seg.decode_prompts(emb, p, False)
                mask = (seg.geometry.logits_to_original(low[:, :1], emb.original_size) > 0)[0, 0].cpu().numpy()
                refined[k] = dice(mask, case["gt"])
            for c, k in picks.items():
                out[c].append(refined[k])
            base_d = [dice((seg.geometry.logits_to_original(low, emb.original_size) > 0)[0, 0].cpu().numpy(), case["gt"])
                      for low in lows]
            out["oracle"].append(max(base_d))
    print(f"points:{args.n}, {len(cases)} validation cases, half-sides {args.sizes} mm ({time.perf_counter() - t0:.0f} s)")
    for c in choosers:
        print(f"  {c:14s} {np.mean(out[c]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
