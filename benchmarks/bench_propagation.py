"""Benchmark: propagate one structure through a 300-slice 512 x 512 CT (issue 21's speed targets).

    # CPU (2 cores): the fastest CPU backend
    .venv/bin/python benchmarks/bench_propagation.py --device cpu --backend onnx-int8-fast --json
    .venv/bin/python benchmarks/bench_propagation.py --device cpu --backend onnx-int8-conv --json  # issue 21
    # GPU: batched encoding through runtime/fast.py, fp32 and bf16, with the 3D Dice cost of the fast path
    .venv/bin/python benchmarks/bench_propagation.py --device cuda --precision bf16 --batch 32 --dice-check --json
    # the walk's rule (app.propagation_defaults): the box rule or the guard rule (torch's default)
    .venv/bin/python benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 --stride 2 \
        --rule guard --json

The volume is the bundled CT head series (12 slices, 256 x 256) resampled to ``--slices`` x ``--size``
x ``--size`` (linear in z, bilinear in-plane): the head fills every slice, so the walk goes through all
of them (the worst case). Timed: encoding every slice in batches of ``--batch`` (what the UI starts
in the background when a study opens) and the walk itself (prompt encoder + mask decoder per slice),
end to end through ``app.propagation.propagate``. ``--slices-timed N`` times N slices and
extrapolates linearly to ``--slices`` (say so when you quote it). ``--dice-check`` (GPU): 3D Dice of
the fast path's head mask against the fp32 reference path on the 34-slice CT slab of the shared data.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.embedding_cache import EmbeddingCache  # noqa: E402
from app.propagation import PropagationSettings, box_around, propagate  # noqa: E402
from app.propagation_defaults import BOX_RULE, GUARD_RULE, default_propagation, describe  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.volume import Volume  # noqa: E402
from data.windowing import default_window  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402


def big_ct(slices: int, size: int) -> Volume:
    """The bundled CT series resampled to (slices, size, size), spacing scaled to keep the extent."""
    ct = read_study(ROOT / "samples" / "ct_head_0051_series")
    t = torch.from_numpy(ct.array.astype(np.float32))[None, None]
    big = F.interpolate(t, (slices, size, size), mode="trilinear", align_corners=False)[0, 0]
    k, h, w = ct.array.shape
    sx, sy, sz = ct.spacing
    return replace(ct, array=big.round().numpy().astype(ct.array.dtype), spacing=(sx * w / size, sy * h / size, sz * k / slices))


def segmenter(args):
    seg = load_segmenter("litemedsam", device=args.device, backend=args.backend)
    if args.device == "cuda" and args.precision:
        from runtime.fast import tuned

        seg = tuned(seg, precision=args.precision, compile=args.compile, cuda_graphs=args.cuda_graphs)
    if args.batch_refiner_eagerly and "decodes_refiner" in vars(seg):  # the graphed decoder (runtime.fast)
        seg.decodes_refiner = False  # the walks' refiner prompts batched eagerly around the graphs, as before
    return seg


def set_graph_batches(sizes: list[int] | None) -> None:
    """Override the batch sizes the encode replays as CUDA graphs (a before/after knob for one run)."""
    if sizes:
        import runtime.cuda_graphs as cg

        cg.GRAPH_BATCHES = tuple(sorted(sizes))


def head_box(volume: Volume, k: int) -> np.ndarray:
    return box_around(volume.array[k] > -300, 5)


def rule_settings(rule: str, backend: str) -> PropagationSettings:
    """--rule: box (the box rule, what this benchmark always timed), guard (the click model's mask + box guarded by
    the box answer) or default (the one ``medseg propagate`` runs on --backend); --stride and --batch go on top."""
    return {"box": BOX_RULE, "guard": GUARD_RULE}.get(rule) or default_propagation(backend)


def timed_run(seg, volume: Volume, batch: int, profile: bool = False, stride: int = 1,
              rule: PropagationSettings = BOX_RULE) -> dict:
    k0 = volume.num_slices // 2
    window = default_window(volume)
    settings = replace(rule, batch_size=batch, stride=stride)
    cache = EmbeddingCache(max_items=volume.num_slices + 1)
    if stride > 1:  # the walk encodes only the slices it segments: time the whole propagate, from an empty cache
        c0, t0 = time.process_time(), time.perf_counter()
        res = propagate(seg, volume, k0, Prompts(box=head_box(volume, k0)), window=window, cache=cache, settings=settings)
        c1, t1 = time.process_time(), time.perf_counter()
        return {"encode_s": None, "walk_s": None, "total_s": t1 - t0, "cpu_s": c1 - c0, "stride": stride,
                "slices_encoded": len(cache), "slices_reached": len(res.slices)}
    sync = torch.cuda.synchronize if torch.cuda.is_available() and seg.device.type == "cuda" else (lambda: None)
    sync()
    profiler = cProfile.Profile() if profile else None
    c0, t0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    cache.embeddings(seg, volume, list(range(volume.num_slices)), window, batch_size=batch)
    sync()
    t1 = t1w = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        print("--- encode", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(20)
        profiler = cProfile.Profile()
        profiler.enable()
    t1w = time.perf_counter()
    res = propagate(seg, volume, k0, Prompts(box=head_box(volume, k0)), window=window, cache=cache, settings=settings)
    sync()
    if profiler is not None:
        profiler.disable()
        print("--- walk", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    c2, t2 = time.process_time(), time.perf_counter()
    # process CPU time: on a shared machine, wall time measures the neighbours; CPU time / threads is
    # what the same work takes on idle cores (an estimate: it assumes the threads stay busy)
    return {"encode_s": t1 - t0, "walk_s": t2 - t1w, "total_s": (t1 - t0) + (t2 - t1w), "cpu_s": c2 - c0, "slices_reached": len(res.slices)}


def dice_check(args) -> dict:
    """3D Dice of the head: this path vs the plain fp32 torch path, on the 34-slice CT slab."""
    data = Path(os.environ.get("MEDSEG_SHARED", ROOT.parent / "shared")) / "data"
    vol = read_study(data / "ct_head_0051_slabA_image.nii.gz")
    gt = np.isin(read_study(data / "ct_head_0051_slabA_label.nii.gz").array, (1, 2))
    k0 = int(np.argmax(gt.reshape(len(gt), -1).sum(1)))
    box = Prompts(box=box_around(gt[k0], 5))
    out = {}
    reference = load_segmenter("litemedsam", device=args.device, backend="torch")  # eager fp32
    for name, seg in (("reference", reference), ("fast", segmenter(args))):
        res = propagate(seg, vol, k0, box, window=default_window(vol), cache=EmbeddingCache(64))
        out[name] = float(2 * (res.masks & gt).sum() / (res.masks.sum() + gt.sum()))
    out["cost"] = out["reference"] - out["fast"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="torch", help="CPU: torch or onnx-int8-fast (the fastest); GPU: torch or torch-fp16 (the GPU default)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="GPU: runtime.fast.tuned encoder precision")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the encoder (runtime.fast.tuned)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="GPU: the decoder (and batch-1 encodes) replayed as CUDA graphs (runtime.fast.tuned)")
    p.add_argument("--graph-batches", type=int, nargs="+", default=None,
                   help="GPU: the encode batch sizes replayed as CUDA graphs (runtime.cuda_graphs.GRAPH_BATCHES, "
                        "default 1; '1 2 4 8 16 32 64' is POWERS_OF_TWO, the batched graphs to measure)")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--slices-timed", type=int, default=None, help="time this many slices, extrapolate to --slices")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (GPU: kernels, compile)")
    p.add_argument("--runs", type=int, default=1, help="timed runs, each with an empty cache (the first may pay "
                   "for allocations the warm-up's smaller volume did not make); each run is reported in 'runs'")
    p.add_argument("--pad-short-batches", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: set app.embedding_cache.PAD_SHORT_GPU_BATCHES (a volume's short last batch padded to "
                        "--batch; on by default since 2026-12-05)")
    p.add_argument("--side-by-side", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU, ONNX: a batch's slices encoded side by side, one thread each (runtime.onnx_backend."
                        "batch_workers, on since 2026-12-05); --no-side-by-side: one after another on all threads")
    p.add_argument("--stride", type=int, default=1,
                   help="PropagationSettings.stride: > 1 times propagate alone from an empty cache (it encodes only "
                   "the slices it segments), with the number of slices encoded")
    p.add_argument("--rule", choices=["box", "guard", "default"], default="box",
                   help="the walk's rule (app/propagation_defaults.py): box (default: the figures so far), guard (the "
                   "click model's mask + box where the box answer agrees, Dice >= 0.7: torch's default), default (the "
                   "one medseg propagate runs on --backend); 'rule' in the JSON says what ran")
    p.add_argument("--batch-refiner-eagerly", action="store_true",
                   help="GPU, CUDA graphs: the walks' click-refiner prompts in one eager batched call, not one graph "
                   "replay each (the routing before the graphed decoder set decodes_refiner; a before/after knob)")
    p.add_argument("--dice-check", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile the timed walk (top 25 by own time, to stderr)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_graph_batches(args.graph_batches)
    import app.embedding_cache

    if args.pad_short_batches is not None:
        app.embedding_cache.PAD_SHORT_GPU_BATCHES = args.pad_short_batches
    if not args.side_by_side:
        import runtime.onnx_backend

        runtime.onnx_backend.batch_workers = lambda providers: 1
    seg = segmenter(args)
    n = args.slices_timed or args.slices
    volume = big_ct(n, args.size)
    rule = rule_settings(args.rule, args.backend)
    for _ in range(args.warmup):  # with the timed rule: the guard rule's click-model decoder path warms up too
        timed_run(seg, big_ct(min(n, 2 * args.batch), args.size), args.batch, rule=rule)
    runs = [timed_run(seg, volume, args.batch, args.profile and i == 0, args.stride, rule) for i in range(args.runs)]
    r = runs[-1]
    scale = args.slices / n
    out = {
        "device": args.device, "backend": args.backend, "precision": args.precision, "cuda_graphs": args.cuda_graphs,
        "graph_batches": list(__import__("runtime.cuda_graphs").cuda_graphs.GRAPH_BATCHES) if args.device == "cuda" else None,
        "batch": args.batch, "pad_short_batches": app.embedding_cache.PAD_SHORT_GPU_BATCHES,
        "batch_refiner_eagerly": args.batch_refiner_eagerly,
        "rule": describe(replace(rule, stride=args.stride).for_model(seg)),
        "side_by_side": args.side_by_side if args.device == "cpu" else None,
        "threads": args.threads, "size": args.size, "slices": args.slices, "slices_timed": n,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
        "per_slice_ms": round(1000 * r["total_s"] / n, 2),
        "total_s_extrapolated": round(r["total_s"] * scale, 2),
        "cpu_s_per_thread_extrapolated": round(r["cpu_s"] / args.threads * scale, 2) if args.device == "cpu" else None,
        "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    if args.runs > 1:
        out["runs"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()} for x in runs]
    if args.dice_check:
        out["dice3d"] = dice_check(args)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
