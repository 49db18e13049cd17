"""A click's model time on the CPU, before and after the decoders ran in ONNX Runtime, interleaved in one process.

    .venv/bin/python benchmarks/cpu_click_decoders.py --rounds 30 --json docs/bench/cpu_click_decoders.jsonl

Each click is ``Segmenter.predict`` as the UI calls it (``app.interaction``: the server's one torch thread,
``runtime.threads``), with its postprocessing, on real slices of the shared set (``/work/shared/data``,
every ``--step``-th case of ``manifest.csv``, encoded once by ``onnx-int8-fast``), three kinds:

* ``box``: the GT box + 5 px (the base decoder);
* ``click``: a positive corrective click after that box (``evaluation.clicks.next_click``), with the box and
  the box's logits fed back (the click model's refiner);
* ``lone``: a lone first click inside the structure, multimask (``models.point_prompts``: three box
  candidates through the base decoder, each refined).

Paths: ``before``, the ``onnx-int8-fast`` segmenter as it was (``decoder.onnx`` for the base decoder, the torch
refiner), ``after`` as ``runtime.load_segmenter`` gives it now (the exports of ``runtime.onnx_decoder_export``,
``runtime.threads.decoder_threads`` threads), ``after-Nt`` the same with N decoder threads (no spin-waiting).
Every round runs each kind on each path, the order of the paths alternating; the masks of every path are
compared with ``before``'s.
Prints p50 / p95 per kind and path, the median CPU time of the process (all its threads: the work, which
the load does not change), the differing pixels, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from evaluation.clicks import box_from_mask, next_click  # noqa: E402
from models.registry import checkpoint_path  # noqa: E402
from evaluation.manifest import CaseLoader, read_manifest  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime.onnx_backend import OnnxSegmenter  # noqa: E402
from runtime.threads import configure_serving  # noqa: E402

DATA = Path(os.environ.get("MEDSEG_DATA", "/work/shared/data"))
KINDS = ("box", "click", "lone")


def paths(names: list[str]) -> dict[str, OnnxSegmenter]:
    """The segmenters compared, sharing the base model and the int8 encoder's file."""
    after = runtime.load_segmenter("litemedsam", backend="onnx-int8-fast")
    out = {}
    for name in names:
        if name == "before":
            decoder = runtime.plain_decoder_file(after.base, str(checkpoint_path("litemedsam").resolve()))
            out[name] = OnnxSegmenter(after.base, after.encoder_path, decoder, label="onnx-int8-fast")
        elif name == "after":
            out[name] = after  # as load_segmenter gives it (runtime.threads.decoder_threads)
        elif name.startswith("after-"):
            threads = int(name.split("-")[1].rstrip("t"))
            out[name] = OnnxSegmenter(after.base, after.encoder_path, after.decoder_path, label="onnx-int8-fast",
                                      refiner_path=after.refiner_path, decoder_threads=threads)
        else:
            raise SystemExit(f"--paths: unknown path {name!r} (before, after, after-<N>t)")
    return out


def cases(step: int) -> list[dict]:
    """Every ``step``-th shared slice: image, GT box + 5 px, the corrective and the lone click."""
    specs, _ = read_manifest(DATA / "manifest.csv")
    loader = CaseLoader(DATA / "manifest.csv")
    out = []
    for spec in specs[::step]:
        case = loader.load(spec)
        first = next_click(case.gt, np.zeros_like(case.gt))
        out.append({"id": spec.case_id, "case": case, "box": box_from_mask(case.gt, 5),
                    "lone": np.array([[first.x, first.y]], np.float32)})
    return out


def prompts_of(kind: str, c: dict, box_logits: np.ndarray, box_mask: np.ndarray) -> tuple[Prompts, bool]:
    if kind == "box":
        return Prompts(box=c["box"]), False
    if kind == "click":
        fix = next_click(c["case"].gt, box_mask)
        point = c["lone"] if fix is None or not fix.positive else np.array([[fix.x, fix.y]], np.float32)
        return Prompts(points=point, point_labels=np.array([1]), box=c["box"], mask_logits=box_logits), False
    return Prompts(points=c["lone"], point_labels=np.array([1]), pixel_spacing=c["case"].spacing), True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="clicks of each kind on each path")
    ap.add_argument("--step", type=int, default=4, help="every n-th case of the shared manifest")
    ap.add_argument("--paths", default="before,after,after-2t")
    ap.add_argument("--json", type=Path, help="write one JSON line per click here")
    args = ap.parse_args()
    torch_threads = configure_serving("cpu", "onnx-int8-fast")
    segs = paths(args.paths.split(","))
    ref = segs["before"] if "before" in segs else next(iter(segs.values()))
    rows = cases(args.step)
    for c in rows:  # one encode per slice; every path reads the same embedding
        c["emb"] = ref.embed(c["case"].image)
        boxed = ref.predict(c["emb"], Prompts(box=c["box"]))
        c["prompts"] = {k: prompts_of(k, c, boxed.best_logits, boxed.best_mask) for k in KINDS}
    load_before = os.getloadavg()
    times = {(k, p): [] for k in KINDS for p in segs}
    cpu = {(k, p): [] for k in KINDS for p in segs}  # CPU time of the process's threads: the work, whatever the load
    diffs = {(k, p): [0, 0] for k in KINDS for p in segs}  # differing pixels, pixels
    log = args.json.open("w") if args.json else None
    for r in range(args.rounds):
        c = rows[r % len(rows)]
        for kind in KINDS:
            prompts, multimask = c["prompts"][kind]
            order = list(segs) if r % 2 == 0 else list(segs)[::-1]
            masks = {}
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                result = segs[name].predict(c["emb"], prompts, multimask_output=multimask)
                ms, cpu_ms = (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0
                times[(kind, name)].append(ms)
                cpu[(kind, name)].append(cpu_ms)
                masks[name] = result.masks
                if log:
                    log.write(json.dumps({"round": r, "case": c["id"], "kind": kind, "path": name,
                                          "ms": round(ms, 2), "cpu_ms": round(cpu_ms, 2)}) + "\n")
            for name, m in masks.items():
                diffs[(kind, name)][0] += int((m != masks[ref_name(segs, ref)]).sum())
                diffs[(kind, name)][1] += int(m.size)
    load_after = os.getloadavg()
    print(f"# {args.rounds} clicks of each kind on each path, {len(rows)} shared slices, torch threads "
          f"{torch_threads}, load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print("| kind | path | p50 ms | p95 ms | CPU time p50 ms | pixels differing from before |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for kind in KINDS:
        for name in segs:
            v = np.array(times[(kind, name)])
            d, n = diffs[(kind, name)]
            p50, p95 = float(np.percentile(v, 50)), float(np.percentile(v, 95))
            cpu50 = float(np.percentile(cpu[(kind, name)], 50))
            summary[f"{kind}/{name}"] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                                         "cpu_p50_ms": round(cpu50, 1), "diff_px": d, "px": n}
            print(f"| {kind} | {name} | {p50:.0f} | {p95:.0f} | {cpu50:.0f} | {d} of {n} |")
    if log:
        log.write(json.dumps({"summary": summary, "load_before": load_before, "load_after": load_after,
                              "cases": [c["id"] for c in rows]}) + "\n")
        log.close()
    return 0


def ref_name(segs: dict, ref) -> str:
    return next(k for k, v in segs.items() if v is ref)


if __name__ == "__main__":
    raise SystemExit(main())
