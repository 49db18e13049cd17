"""Which answer to "points, no box" is best? Every variant of ``models.point_prompts`` on one manifest.

Each slice is embedded once (cached in ``--cache``), the points are ``medseg eval``'s
(``evaluation.clicks.sample_points`` with the per-case seed of ``evaluation.runner.case_rng``), and
each variant decodes them: ``old`` (the click refiner on the points alone, what ``points:N`` gave
before), and box candidates of several half-side sets, refined or not, chosen by the base decoder's
predicted IoU; ``oracle`` picks the candidate of best Dice (an upper bound, not a method).

    python experiments/point_prompt_variants.py /work/shared/data/manifest.csv --cache /tmp/emb_shared.pt
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
from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from evaluation.runner import case_rng  # noqa: E402
from models import point_prompts  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402
from models.segmenter import Embedding  # noqa: E402

SIZES = {"ui3": (5.0, 10.0, 20.0), "s5": (5.0, 10.0, 20.0, 40.0, 80.0)}
GROW = (0, 3)


def embeddings(segmenter, cases, cache: Path | None) -> dict[str, Embedding]:
    stored = torch.load(cache, weights_only=True) if cache and cache.is_file() else {}
    out = {}
    for case in cases:
        cid = case.spec.case_id
        if cid not in stored:
            stored[cid] = segmenter.embed(case.image).features
        out[cid] = Embedding(features=stored[cid], original_size=case.gt.shape,
                             input_size=segmenter.geometry.input_size(case.gt.shape), model_name=segmenter.name)
    if cache:
        torch.save(stored, cache)
    return out


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = float(np.logical_and(pred, gt).sum())
    return 2.0 * inter / max(float(pred.sum() + gt.sum()), 1.0)


def mask_of(segmenter, emb: Embedding, low: torch.Tensor) -> np.ndarray:
    return (segmenter.geometry.logits_to_original(low, emb.original_size) > 0)[0].cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (.pt), reused across runs")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 5], help="points:N protocols")
    ap.add_argument("--json", type=Path, default=None, help="write per-case Dice here")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="half-side sets to try")
    ap.add_argument("--grow", type=int, nargs="+", default=list(GROW), help="growth steps to try")
    ap.add_argument("--every", type=int, default=1, help="every K-th case of the manifest (a quicker look)")
    args = ap.parse_args(argv)

    seg = load_segmenter("litemedsam")
    specs, _ = read_manifest(args.manifest)
    specs = specs[:: args.every]
    loader = CaseLoader(args.manifest)
    cases = [loader.load(s) for s in specs]
    t0 = time.perf_counter()
    embs = embeddings(seg, cases, args.cache)
    print(f"{len(cases)} cases embedded/loaded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    per: dict[str, dict[str, list[float]]] = {}
    sets = {k: SIZES[k] for k in args.sizes}
    all_sizes = tuple(sorted({v for sizes in sets.values() for v in sizes}))
    with torch.inference_mode():
        for n in args.n:
            rows = per.setdefault(f"points:{n}", {})
            for case in cases:
                emb = embs[case.spec.case_id]
                pts, labels = sample_points(case.gt, n, case_rng(0, case.spec.case_id))
                prompts = Prompts(points=pts, point_labels=labels, pixel_spacing=case.spacing)
                # every distinct start box once: its base IoU and Dice, grown or not; the IoU-chosen one refined
                found: dict[tuple, dict[int, tuple]] = {}
                for box in point_prompts.candidate_boxes(pts, labels, case.gt.shape, case.spacing, all_sizes):
                    found[tuple(box.tolist())] = per_grow = {}
                    for grow in args.grow:
                        base, iou, final = point_prompts.decode_box(seg, emb, box, grow)
                        per_grow[grow] = (float(iou[0, 0]), dice(mask_of(seg, emb, base), case.gt), base)
                line = {"case": case.spec.case_id}
                low, _ = seg.decode_prompts(emb, prompts, n == 1)  # the old answer: the refiner on the points alone
                line["old"] = dice(mask_of(seg, emb, low[:, :1]), case.gt)
                for sname, sizes in sets.items():
                    boxes = [tuple(b.tolist()) for b in point_prompts.candidate_boxes(pts, labels, case.gt.shape,
                                                                                     case.spacing, sizes)]
                    for grow in args.grow:
                        best = max(boxes, key=lambda b: found[b][grow][0])
                        corrective = Prompts(points=pts, point_labels=labels, mask_logits=found[best][grow][2][0].cpu().numpy())
                        r, _ = seg.decode_prompts(emb, corrective, False)
                        line[f"{sname}/g{grow}/none"] = found[best][grow][1]
                        line[f"{sname}/g{grow}/none/oracle"] = max(found[b][grow][1] for b in boxes)
                        line[f"{sname}/g{grow}/points"] = dice(mask_of(seg, emb, r[:, :1]), case.gt)
                for key, value in line.items():
                    if key != "case":
                        rows.setdefault(key, []).append(value)
                print(json.dumps({"n": n, **line}), flush=True)
            print(f"points:{n} ({len(cases)} cases)", flush=True)
            for name, values in rows.items():
                print(f"  {name:28s} {np.mean(values):.3f}", flush=True)
    if args.json:
        ids = [c.spec.case_id for c in cases]
        args.json.write_text(json.dumps({"cases": ids, "dice": per}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
