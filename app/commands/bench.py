"""``medseg bench``: encoder, decoder and click latency of a variant per backend, on a real slice.

With ``--json``: one JSON object per line per backend with ``backend``, ``encoder_ms`` (batch 1),
``slices_per_s`` (best batch), ``batch`` (that batch), ``decoder_ms`` (prompt encoder + mask
decoder) and ``click_ms`` (end to end: prompt in, mask at original size out, cached embedding).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from app.errors import UsageError
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from models.prompts import Prompts
from models.registry import PROJECT_ROOT, load_segmenter
from models.timing import median_ms

SAMPLE = PROJECT_ROOT / "samples" / "ct_head_0051_series"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure encoder/decoder/click latency per backend")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backends", default="torch", help="comma-separated: torch, torch-bf16, torch-compile, onnx")
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes tried for slices_per_s")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object per line per backend")
    return p


def _segmenter(args: argparse.Namespace, backend: str):
    from models.fast import tuned

    if backend == "onnx":
        return load_segmenter(args.model, args.checkpoint, args.device, backend="onnx")
    base = load_segmenter(args.model, args.checkpoint, args.device)
    if backend == "torch":
        return base
    if backend == "torch-bf16":
        return tuned(base, precision="bf16")
    if backend == "torch-compile":
        return tuned(base, precision="bf16", compile=True)
    raise UsageError(f"unknown backend {backend!r}; expected torch, torch-bf16, torch-compile or onnx")


def measure(segmenter, image: np.ndarray, *, device: str, batches: list[int], repeat: int) -> dict:
    """Latencies of one segmenter on one (H, W, 3) uint8 slice."""
    h, w = image.shape[:2]
    prompts = Prompts(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], dtype=np.float32))
    encoder_ms = median_ms(lambda: segmenter.embed(image), device=device, repeat=repeat)
    best = (0.0, 1)
    for b in batches:
        ms = median_ms(lambda: segmenter.embed_batch([image] * b), device=device, warmup=2, repeat=max(3, repeat // 2))
        best = max(best, (1000.0 * b / ms, b))
    emb = segmenter.embed(image)
    with torch.inference_mode():
        decoder_ms = median_ms(lambda: segmenter.decode_prompts(emb, prompts, False), device=device, repeat=repeat * 3)
    click_ms = median_ms(lambda: segmenter.predict(emb, prompts), device=device, repeat=repeat * 3)
    return {
        "encoder_ms": round(encoder_ms, 3),
        "slices_per_s": round(best[0], 2),
        "batch": best[1],
        "decoder_ms": round(decoder_ms, 3),
        "click_ms": round(click_ms, 3),
    }


def run(args: argparse.Namespace) -> int:
    volume = read_study(SAMPLE)
    image = slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))
    batches = [int(b) for b in args.batches.split(",")]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        seg = _segmenter(args, backend)
        row = {"model": args.model, "backend": backend, "device": args.device, "image": list(image.shape[:2])}
        row.update(measure(seg, image, device=args.device, batches=batches, repeat=args.repeat))
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{args.model:>12} {backend:>13} {args.device}: encoder {row['encoder_ms']:.1f} ms, "
                f"{row['slices_per_s']:.1f} slices/s (batch {row['batch']}), decoder {row['decoder_ms']:.2f} ms, "
                f"click {row['click_ms']:.2f} ms",
                flush=True,
            )
    return 0
