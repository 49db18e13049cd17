"""Which rule keeps a corrective click local? Variants of ``models.click_locality`` on the click model's
VALIDATION slices (INIA19 structures held out of training), never on the held-out evaluation sets.

The validation cases are those of the click model's training run (``scripts/train_click_model.py``): the
48 original-variant INIA19 slices it validated on, and on each every structure of
``adapter.json``'s ``validation.heldout_inia19_labels`` (never trained on) of at least 40 px. Each slice
is embedded once (``--cache``); each variant runs ``medseg eval``'s simulated user
(``evaluation.clicks.simulate``, ``box+clicks:5``, margin 5, the per-case seeds of
``evaluation.runner.case_rng``, logits fed back) with the click model's answer to each corrective click
passed through the variant's rule (the same ``models.click_locality.localise`` the product runs).

    python experiments/click_locality.py --cache /tmp/clk18_val_emb.pt --json docs/clicks/locality_validation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["MEDSEG_LOCAL_CLICKS"] = "0"  # the segmenter answers as the plain refiner; the variants are applied here

from adapters.click_train import structures_on, volume_slices  # noqa: E402
from evaluation.clicks import box_from_mask, next_click, parse_protocol, simulate  # noqa: E402
from evaluation.runner import case_rng  # noqa: E402
from models import click_locality  # noqa: E402
from models.prompts import MaskResult, Prompts  # noqa: E402
from models.registry import load_segmenter  # noqa: E402
from models.segmenter import Embedding  # noqa: E402

DATA = ROOT / "weights" / "devdata" / "click_model"
INIA19_MM = 0.5
VARIANTS: dict[str, dict | None] = {
    "off": None,
    "any/t2/prev": dict(change="any", touch_px=2, fallback="previous"),
    "any/t2/new": dict(change="any", touch_px=2, fallback="new"),
    "signed/t2/new": dict(change="signed", touch_px=2, fallback="new"),
    "any/t2/new/r1": dict(change="any", touch_px=2, fallback="new", radius=1.0),
    "any/t2/new/r2": dict(change="any", touch_px=2, fallback="new", radius=2.0),
    "signed/t2/new/r1": dict(change="signed", touch_px=2, fallback="new", radius=1.0),
    "signed/t2/new/r2": dict(change="signed", touch_px=2, fallback="new", radius=2.0),
}


def validation_cases(max_slices: int = 48) -> list[dict]:
    """The training run's validation slices and their held-out structures: {case_id, image, gt, spacing}."""
    vol = np.load(DATA / "train_inia19.npz")
    slices = volume_slices(vol["image"], vol["labels"], vol["brain"])
    meta = json.loads((ROOT / "weights" / "click_model" / "adapter.json").read_text())
    val = set(meta["validation"]["heldout_inia19_labels"])
    idx = [i for i, s in enumerate(slices) if s.volume_key[0] == 0 and s.k % 4 == 2
           and any(v in val for v in structures_on(s.labels))]
    idx = [idx[i] for i in np.linspace(0, len(idx) - 1, min(max_slices, len(idx))).astype(int)]
    longest = {"axial": 206, "coronal": 168, "sagittal": 206}  # the slice's longest side before resizing to 256
    cases = []
    for i in idx:
        s = slices[i]
        view = s.volume_key[1]
        mm = INIA19_MM * longest[view] / max(s.image.shape)
        for v in structures_on(s.labels):
            if v in val:
                cases.append({"case_id": f"inia19_{view}_k{s.k:03d}_label{v}", "slice": i, "image": s.image,
                              "gt": s.labels == v, "spacing": (mm, mm)})
    return cases


def embed_all(seg, cases: list[dict], cache: Path | None) -> dict[int, Embedding]:
    stored = torch.load(cache, weights_only=True) if cache and cache.is_file() else {}
    out = {}
    for c in cases:
        key = str(c["slice"])
        if key not in stored:
            stored[key] = seg.embed(c["image"]).features
        out[c["slice"]] = Embedding(features=stored[key], original_size=c["gt"].shape,
                                    input_size=seg.geometry.input_size(c["gt"].shape), model_name=seg.name)
    if cache:
        torch.save(stored, cache)
    return out


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2.0 * float((pred & gt).sum()) / max(float(pred.sum() + gt.sum()), 1.0)


def run_variant(seg, emb: Embedding, case: dict, rule: dict | None, protocol) -> list[float]:
    """One case through ``evaluation.clicks.simulate`` itself (slow: one decoder call at a time); used to check
    :func:`run_lockstep` on a few cases."""
    def predict(prompts: Prompts, multimask: bool) -> MaskResult:
        result = seg.predict(emb, prompts, multimask_output=multimask)
        if rule is None or prompts.points is None or prompts.mask_logits is None:
            return result
        low = click_locality.localise_result(seg, emb, prompts, torch.from_numpy(result.low_res_logits)[None], **rule)
        return seg.to_result(emb, low, torch.from_numpy(result.scores)[None], result.boxes)

    steps = simulate(predict, case["gt"], protocol, margin=5, rng=case_rng(0, case["case_id"]), spacing=case["spacing"])
    return [dice(s.mask, case["gt"]) for s in steps]


def _predict_many(seg, embs: list[Embedding], prompts: list[Prompts], chunk: int = 32) -> list[MaskResult]:
    out = []
    for i in range(0, len(embs), chunk):
        for r in seg.predict_many(embs[i : i + chunk], prompts[i : i + chunk], multimask_output=False):
            if isinstance(r, Exception):
                raise r
            out.append(r)
    return out


def run_lockstep(seg, embs: list[Embedding], cases: list[dict], rule: dict | None, n_clicks: int,
                 box_results: list[MaskResult]) -> list[list[float]]:
    """``simulate``'s ``box+clicks:N`` (margin 5, no jitter: the box, then the centre of the largest error, points
    accumulated, the logits fed back, a case without error left repeats its mask) for every case at once, each
    click's decoder calls batched over the cases (``Segmenter.predict_many``)."""
    gts = [c["gt"] for c in cases]
    masks = [r.best_mask for r in box_results]
    prompts = [Prompts(box=box_from_mask(g, 5), mask_logits=r.best_logits, pixel_spacing=c["spacing"])
               for g, r, c in zip(gts, box_results, cases)]
    dices = [[dice(m, g)] for m, g in zip(masks, gts)]
    for _ in range(n_clicks):
        active = []
        for i, (g, m) in enumerate(zip(gts, masks)):
            click = next_click(g, m)
            if click is not None:
                prompts[i] = prompts[i].with_click(click.x, click.y, click.positive)
                active.append(i)
        results = _predict_many(seg, [embs[i] for i in active], [prompts[i] for i in active])
        for i, r in zip(active, results):
            if rule is not None:
                low = click_locality.localise_result(seg, embs[i], prompts[i], torch.from_numpy(r.low_res_logits)[None],
                                                     **rule)
                r = seg.to_result(embs[i], low, torch.from_numpy(r.scores)[None], r.boxes)
            masks[i] = r.best_mask
            p = prompts[i]
            prompts[i] = Prompts(points=p.points, point_labels=p.point_labels, box=p.box, mask_logits=r.best_logits,
                                 pixel_spacing=p.pixel_spacing)
        for i in range(len(cases)):
            dices[i].append(dice(masks[i], gts[i]))
    return dices


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (.pt) of the validation slices")
    ap.add_argument("--json", type=Path, default=None, help="write per-case Dice per step here")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--protocol", default="box+clicks:5")
    ap.add_argument("--check", type=int, default=0, help="compare with evaluation.clicks.simulate on the first K cases")
    args = ap.parse_args(argv)
    seg = load_segmenter("litemedsam")
    cases = validation_cases()
    t0 = time.perf_counter()
    embs = embed_all(seg, cases, args.cache)
    print(f"{len(cases)} validation cases on {len(embs)} slices, embedded/loaded in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    protocol = parse_protocol(args.protocol)
    if protocol.kind != "box+clicks":
        raise SystemExit("only box+clicks:N")
    emb_list = [embs[c["slice"]] for c in cases]
    per: dict[str, list[list[float]]] = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        boxes = _predict_many(seg, emb_list, [Prompts(box=box_from_mask(c["gt"], 5), pixel_spacing=c["spacing"])
                                              for c in cases])
        print(f"box step in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for k in range(args.check):  # the lockstep runner is medseg eval's simulate, batched
            for name in ("off", args.variants[-1]):
                one = run_variant(seg, emb_list[k], cases[k], VARIANTS[name], protocol)
                many = run_lockstep(seg, emb_list[k : k + 1], cases[k : k + 1], VARIANTS[name], protocol.n, boxes[k : k + 1])[0]
                print(f"check {cases[k]['case_id']} {name}: simulate {np.round(one, 4).tolist()} "
                      f"lockstep {np.round(many, 4).tolist()}", file=sys.stderr)
        for name in args.variants:
            t0 = time.perf_counter()
            rows = per[name] = run_lockstep(seg, emb_list, cases, VARIANTS[name], protocol.n, boxes)
            mean = np.mean(np.asarray(rows), axis=0)
            gains = np.diff(mean)
            print(f"{name:18s} " + " ".join(f"{m:.4f}" for m in mean) + f"   min step {gains.min():+.4f}"
                  f"   mean 1..5 {mean[1:].mean():.4f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"protocol": args.protocol, "cases": [c["case_id"] for c in cases],
                                         "dice": per}, indent=0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
