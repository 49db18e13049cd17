"""Latency measurement for `medseg bench` and benchmarks/: median of repeats after warm-up,
synchronising CUDA so device work is inside the timed region."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch


def median_ms(fn: Callable[[], object], *, device: str, warmup: int = 3, repeat: int = 10) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def measure_segmenter(segmenter, image: np.ndarray, *, device: str, batches: list[int], repeat: int) -> dict:
    """The latencies `medseg bench` reports for one segmenter on one (H, W, 3) uint8 slice.

    encoder_ms: embed() at batch 1, preprocessing included; network_ms: the encoder network alone on an
    input already on the device (batch 1); slices_per_s: embed_batch() at the best of ``batches``;
    decoder_ms: prompt encoder + mask decoder on a cached embedding (a box); box_ms: predict() end to end for
    that box (prompt in, mask at the original size out); click_ms: predict() end to end for a corrective click
    after it: a positive point with the box and the box answer's logits fed back, as ``medseg eval``'s simulated
    user and the UI send. Why both: a box alone never reaches a click model's refiner (``models.click_refiner``),
    so until session 9 ``click_ms``, which timed the box, said nothing about the refiner's latency.
    """
    from models.prompts import Prompts

    h, w = image.shape[:2]
    prompts = Prompts(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], dtype=np.float32))
    encoder_ms = median_ms(lambda: segmenter.embed(image), device=device, repeat=repeat)
    with torch.inference_mode():
        x = segmenter.preprocess_batch([image])
        network_ms = median_ms(lambda: segmenter.encode(x), device=device, repeat=repeat)
    best = (0.0, 1)
    for b in batches:
        ms = median_ms(lambda: segmenter.embed_batch([image] * b), device=device, warmup=2, repeat=max(3, repeat // 2))
        best = max(best, (1000.0 * b / ms, b))
    emb = segmenter.embed(image)
    with torch.inference_mode():
        decoder_ms = median_ms(lambda: segmenter.decode_prompts(emb, prompts, False), device=device, repeat=repeat * 3)
    box_ms = median_ms(lambda: segmenter.predict(emb, prompts), device=device, repeat=repeat * 3)
    answer = segmenter.predict(emb, prompts)
    click = Prompts(points=np.array([[w * 0.5, h * 0.5]], np.float32), point_labels=np.array([1]), box=prompts.box,
                    mask_logits=answer.best_logits)
    click_ms = median_ms(lambda: segmenter.predict(emb, click), device=device, repeat=repeat * 3)
    return {
        "encoder_ms": round(encoder_ms, 3),
        "network_ms": round(network_ms, 3),
        "slices_per_s": round(best[0], 2),
        "batch": best[1],
        "decoder_ms": round(decoder_ms, 3),
        "box_ms": round(box_ms, 3),
        "click_ms": round(click_ms, 3),
    }
