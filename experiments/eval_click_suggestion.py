"""Does a click at the suggested place (models.click_suggest) gain as much as the simulated error click?

For each case of a ``medseg eval`` manifest: the box (margin 5 px), then N clicks chosen by

* ``error``: ``evaluation.clicks.next_click`` (centre of the largest error region: it knows the truth);
* ``logits`` / ``candidates``: the point :func:`models.click_suggest.suggest_click` proposes, its sign
  given by the ground truth there (the user looks and decides: positive if it belongs to the structure).

Points accumulate and the logits are fed back, as in ``box+clicks:N``. Prints mean Dice per click.

    python experiments/eval_click_suggestion.py /work/shared/data/manifest.csv --clicks 3 [--model litemedsam]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.clicks import box_from_mask, next_click  # noqa: E402
from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from models.click_suggest import suggest_click  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

POLICIES = ("error", "logits", "candidates")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    t = int(a.sum()) + int(b.sum())
    return 1.0 if t == 0 else 2.0 * int((a & b).sum()) / t


def session(seg, emb, gt: np.ndarray, policy: str, clicks: int) -> list[float]:
    prompts = Prompts(box=box_from_mask(gt, 5))
    result = seg.predict(emb, prompts)
    out = [dice(result.best_mask, gt)]
    for _ in range(clicks):
        prompts = Prompts(points=prompts.points, point_labels=prompts.point_labels, box=prompts.box,
                          mask_logits=result.best_logits)
        if policy == "error":
            c = next_click(gt, result.best_mask)
            xy = None if c is None else (c.x, c.y, c.positive)
        else:
            s = suggest_click(seg, emb, prompts, result, method=policy)
            xy = None if s is None else (s.x, s.y, bool(gt[s.y, s.x]))
        if xy is None:
            out.append(out[-1])
            continue
        prompts = prompts.with_click(*xy)
        result = seg.predict(emb, prompts)
        out.append(dice(result.best_mask, gt))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    seg = load_segmenter(args.model, device=args.device)
    specs, _ = read_manifest(args.manifest)
    loader = CaseLoader(args.manifest)
    rows = {k: [] for k in POLICIES}
    for spec in specs:
        case = loader.load(spec)
        emb = seg.embed(case.image)
        for policy in POLICIES:
            rows[policy].append(session(seg, emb, case.gt, policy, args.clicks))
    summary = {k: np.mean(np.asarray(v), axis=0).round(4).tolist() for k, v in rows.items()}
    for k, v in summary.items():
        print(f"{k:>10}: " + ", ".join(f"{x:.3f}" for x in v))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "per_case": rows, "cases": [s.case_id for s in specs]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
