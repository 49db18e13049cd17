"""How far the ONNX Runtime decoders (``runtime.onnx_decoder_export``) are from the torch modules, on every
shared slice, for the prompts a user gives.

    .venv/bin/python benchmarks/onnx_decoder_parity.py [--step 1] [--json docs/bench/onnx_decoder_parity.json]

Each slice of ``/work/shared/data/manifest.csv`` is encoded once by ``onnx-int8-fast``; the same embedding is
then decoded by that backend (ONNX Runtime: base decoder and click refiner) and by the torch variant (torch
base decoder and refiner), for: the GT box + 5 px; a corrective click after it (box, point and the box's
logits, ``evaluation.clicks.next_click``); a second corrective click on that; a lone first click (multimask,
``models.point_prompts``). Prints per prompt kind the largest logit difference, the pixels whose mask differs
and the worst slice's fraction of differing pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from evaluation.clicks import box_from_mask, next_click  # noqa: E402
from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime.threads import configure_serving  # noqa: E402

DATA = Path(os.environ.get("MEDSEG_DATA", "/work/shared/data"))


def prompt_steps(case, box: np.ndarray, predict) -> list[tuple[str, Prompts, bool]]:
    """The prompts of one slice, each later one built on the torch path's previous answer (as a user would)."""
    out = [("box", Prompts(box=box), False)]
    prev = predict(out[0][1], False)
    points, labels = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    for k in (1, 2):
        fix = next_click(case.gt, prev.best_mask)
        if fix is None:
            break
        points = np.concatenate([points, [[fix.x, fix.y]]]).astype(np.float32)
        labels = np.concatenate([labels, [1 if fix.positive else 0]])
        p = Prompts(points=points, point_labels=labels, box=box, mask_logits=prev.best_logits)
        out.append((f"click {k} after the box", p, False))
        prev = predict(p, False)
    first = next_click(case.gt, np.zeros_like(case.gt))
    out.append(("lone click", Prompts(points=np.array([[first.x, first.y]], np.float32), point_labels=np.array([1]),
                                      pixel_spacing=case.spacing), True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step", type=int, default=1, help="every n-th case of the shared manifest")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    configure_serving("cpu", "onnx-int8-fast")
    seg = runtime.load_segmenter("litemedsam", backend="onnx-int8-fast")
    if seg.refiner is None:
        raise SystemExit("onnx-int8-fast has no ONNX refiner here: nothing to compare")
    specs, _ = read_manifest(DATA / "manifest.csv")
    loader = CaseLoader(DATA / "manifest.csv")
    stats: dict[str, dict] = {}
    for spec in specs[:: args.step]:
        case = loader.load(spec)
        emb = seg.embed(case.image)
        same = dataclasses.replace(emb, model_name=seg.base.name)  # the torch modules on the same embedding
        steps = prompt_steps(case, box_from_mask(case.gt, 5),
                             lambda p, mm: seg.base.predict(same, p, multimask_output=mm))
        for kind, prompts, multimask in steps:
            a = seg.predict(emb, prompts, multimask_output=multimask)
            b = seg.base.predict(same, prompts, multimask_output=multimask)
            s = stats.setdefault(kind, {"results": 0, "max_logit_diff": 0.0, "diff_px": 0, "px": 0,
                                        "worst_fraction": 0.0, "worst_case": None, "score_diff": 0.0})
            differ = int((a.masks != b.masks).sum())
            s["results"] += 1
            s["max_logit_diff"] = max(s["max_logit_diff"], float(np.abs(a.low_res_logits - b.low_res_logits).max()))
            s["score_diff"] = max(s["score_diff"], float(np.abs(a.scores - b.scores).max()))
            s["diff_px"] += differ
            s["px"] += int(a.masks.size)
            if differ / a.masks.size > s["worst_fraction"] or s["worst_case"] is None:
                s["worst_fraction"], s["worst_case"] = differ / a.masks.size, spec.case_id
    print(f"# {len(specs[::args.step])} shared slices, onnx-int8-fast's embedding, ONNX Runtime vs torch decoders")
    print("| prompt | results | largest logit difference | largest IoU-score difference | pixels differing "
          "| worst slice |")
    print("|---|---|---|---|---|---|")
    for kind, s in stats.items():
        print(f"| {kind} | {s['results']} | {s['max_logit_diff']:.2g} | {s['score_diff']:.2g} | "
              f"{s['diff_px']} of {s['px']} | "
              + (f"{s['worst_fraction']:.2g} ({s['worst_case']})" if s["diff_px"] else "none") + " |")
    if args.json:
        args.json.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
