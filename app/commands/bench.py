"""``medseg bench``: encoder, decoder and click latency of a variant per backend, on a real slice.

With ``--json``: one JSON object per line per backend with ``backend``, ``encoder_ms`` (batch 1),
``slices_per_s`` (best batch), ``batch`` (that batch), ``decoder_ms`` (prompt encoder + mask
decoder), ``box_ms`` (end to end for a box: prompt in, mask at original size out, cached embedding) and
``click_ms`` (the same for a corrective click after that box, which a click model's refiner answers); for a SAM 2
model also ``frame_ms`` (memory propagation through the sample series, per slice segmented) and ``frames``.
"""

from __future__ import annotations

import argparse
import json

from app.errors import UsageError
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from runtime import BACKENDS as LOADER_BACKENDS
from models.registry import PROJECT_ROOT
from runtime import load_segmenter
from runtime.timing import measure_segmenter

SAMPLE = PROJECT_ROOT / "samples" / "ct_head_0051_series"
LOADER_ONLY = tuple(b for b in LOADER_BACKENDS if b != "torch")  # built by runtime.load_segmenter (onnxruntime, torch-fp16)
# torch-triton: bf16 weights, compiled, with the Triton window-attention and MBConv/PatchMerging kernels
# (runtime/triton_attention.py, runtime/triton_convs.py); torch-triton-tanh: the same with every GELU in the
# tanh form (runtime.fast.use_tanh_gelu) and inductor's kernels tuned (runtime.fast.TUNED_KERNELS), the
# fastest batched GPU path (docs/benchmarks.md, run 16); its compile takes minutes per batch size
TRITON_BACKENDS = ("torch-triton", "torch-triton-tanh", "torch-triton-fp16")
BACKENDS = ("torch", "torch-bf16", "torch-compile", *TRITON_BACKENDS, *LOADER_ONLY)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure encoder/decoder/click latency per backend")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backends", default="torch", help=f"comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes tried for slices_per_s")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object per line per backend")
    return p


def _segmenter(args: argparse.Namespace, backend: str):
    from runtime.fast import TUNED_KERNELS, tuned

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend in TRITON_BACKENDS and args.device != "cuda":
        raise UsageError(f"backend {backend} runs Triton GPU kernels: use --device cuda")
    if backend in LOADER_ONLY:
        return load_segmenter(args.model, args.checkpoint, args.device, backend=backend)
    base = load_segmenter(args.model, args.checkpoint, args.device)
    if backend == "torch":
        return base
    if getattr(base, "memory_tracking", False):
        raise UsageError(f"{args.model} runs with --backends torch only (benchmarks/bench_sam2.py times bf16 and the "
                         "official compiled predictor against ours)")
    if backend == "torch-bf16":
        return tuned(base, precision="bf16")
    if backend == "torch-compile":
        return tuned(base, precision="bf16", compile=True)
    if backend == "torch-triton-fp16":  # bf16's rows fail issue 22's Dice rule; fp16 keeps it (docs/benchmarks.md, E)
        return tuned(base, precision="fp16", compile=True, cast_weights=True, attention="triton", triton_convs=True,
                     gelu="tanh", inductor_options=TUNED_KERNELS)
    if backend == "torch-triton-tanh":
        return tuned(base, precision="bf16", compile=True, cast_weights=True, attention="triton", triton_convs=True,
                     gelu="tanh", inductor_options=TUNED_KERNELS)
    return tuned(base, precision="bf16", compile=True, cast_weights=True, attention="triton", triton_convs=True)


def measure_memory_walk(segmenter, volume, device: str) -> dict:
    """SAM 2: a box on the middle slice carried through the whole sample series by the memory engine
    (``app.propagation``), after one untimed walk -> ms per slice segmented (preprocessing and encoding included)."""
    import time

    import numpy as np
    import torch

    from app.propagation import PropagationSettings, propagate
    from models.prompts import Prompts

    h, w = volume.slice_shape
    box = Prompts(box=np.array([0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h], dtype=np.float32))
    settings = PropagationSettings(min_area_px=1, stride=1)  # every slice: the per-slice cost
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run_once = lambda: propagate(segmenter, volume, volume.num_slices // 2, box,  # noqa: E731
                                 window=default_window(volume), settings=settings)
    run_once()
    sync()
    t0 = time.perf_counter()
    result = run_once()
    sync()
    walked = len(result.scores)
    return {"frame_ms": round((time.perf_counter() - t0) * 1000.0 / max(walked, 1), 2), "frames": walked}


def run(args: argparse.Namespace) -> int:
    volume = read_study(SAMPLE)
    image = slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))
    batches = [int(b) for b in args.batches.split(",")]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        seg = _segmenter(args, backend)
        row = {"model": args.model, "backend": backend, "device": args.device, "image": list(image.shape[:2])}
        row.update(measure_segmenter(seg, image, device=args.device, batches=batches, repeat=args.repeat))
        if getattr(seg, "memory_tracking", False):
            row.update(measure_memory_walk(seg, volume, args.device))
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            walk = f", memory propagation {row['frame_ms']:.1f} ms/slice ({row['frames']} slices)" if "frame_ms" in row else ""
            print(
                f"{args.model:>12} {backend:>13} {args.device}: encoder {row['encoder_ms']:.1f} ms, "
                f"{row['slices_per_s']:.1f} slices/s (batch {row['batch']}), decoder {row['decoder_ms']:.2f} ms, "
                f"box {row['box_ms']:.2f} ms, click {row['click_ms']:.2f} ms{walk}",
                flush=True,
            )
    return 0
