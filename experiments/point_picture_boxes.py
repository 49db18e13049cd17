"""points:1 with a lone point's candidate boxes from the mm route, the picture (``models.picture_boxes``), or both.

Each variant's candidates go through the base decoder; its predicted IoU picks one (``union_riou``: the click
refiner's IoU of each refined candidate picks), refined with the point as the point route does; ``oracle`` is the
best of the six by Dice (a bound, not a method). The four Colin27 nuclei of ``tests/models/test_point_prompts.py``
are reported apart. Torch backend; the embeddings are cached in the second argument.

    python experiments/point_picture_boxes.py /work/shared/data/manifest.csv /tmp/emb_shared.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from point_prompt_variants import dice, embeddings, mask_of  # noqa: E402

from evaluation.clicks import sample_points  # noqa: E402
from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from evaluation.runner import case_rng  # noqa: E402
from models import point_prompts  # noqa: E402
from models.picture_boxes import grey, picture_boxes  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402

NUCLEI = ("mr_t1_colin27_slabA_thalamus_L_k024", "mr_t1_colin27_slabA_thalamus_R_k017",
          "mr_t1_colin27_slabA_caudate_L_k011", "mr_t1_colin27_slabA_caudate_R_k001")
MM, PICTURE, BOTH = [0, 1, 2], [3, 4, 5], list(range(6))


def main(manifest: str, cache: Path) -> None:
    seg = load_segmenter("litemedsam")
    specs, _ = read_manifest(manifest)
    loader = CaseLoader(manifest)
    cases = [loader.load(s) for s in specs]
    embs = embeddings(seg, cases, cache)
    rows: dict[str, list[float]] = {}
    nuclei: dict[str, list[float]] = {}
    with torch.inference_mode():
        for case in cases:
            emb = embs[case.spec.case_id]
            pts, labels = sample_points(case.gt, 1, case_rng(0, case.spec.case_id))
            boxes = [*point_prompts.candidate_boxes(pts, labels, case.gt.shape, case.spacing),
                     *picture_boxes(grey(case.image), pts[0], case.spacing)]
            found = []  # (base IoU, Dice refined, refiner's IoU) per candidate
            for box in boxes:
                low, iou, _ = point_prompts.decode_box(seg, emb, box, 0)
                refined, refined_iou = seg.decode_prompts(
                    emb, Prompts(points=pts, point_labels=labels, mask_logits=low[0].cpu().numpy()), False)
                found.append((float(iou[0, 0]), dice(mask_of(seg, emb, refined[:, :1]), case.gt),
                              float(refined_iou[0, 0])))

            def pick(idx: list[int], by: int = 0) -> float:
                return found[max(idx, key=lambda i: found[i][by])][1]

            line = {"mm": pick(MM), "picture": pick(PICTURE), "union": pick(BOTH), "union_riou": pick(BOTH, 2),
                    "oracle": max(f[1] for f in found)}
            for key, value in line.items():
                rows.setdefault(key, []).append(value)
                if case.spec.case_id in NUCLEI:
                    nuclei.setdefault(key, []).append(value)
    print(Path(manifest).parent.name, len(cases), " ".join(f"{k}={np.mean(v):.3f}" for k, v in rows.items()))
    if nuclei:
        print("  gain cases", " ".join(f"{k}={np.mean(v):.3f}" for k, v in nuclei.items()))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
