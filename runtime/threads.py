"""CPU threads for torch in the interactive server and in parallel test workers.

On the CPU the default backends encode with ONNX Runtime (its own thread pool), so torch only runs the
mask decoders: the click model, the base decoder's candidates, propagation walks. Those are small ops, and
with two OpenMP threads on two cores that are also busy (a background encode, another session, the
browser) the threads spin-wait on each other: one decoder click took 435 ms with one torch thread and
2695 ms with two, and 1265 ms against 4357 ms while an ONNX encode ran beside it (docs/benchmarks.md,
"CPU threads"). So the server gives torch one thread when its encoder is not torch. ``OMP_NUM_THREADS``,
set by the user, always wins (torch and ONNX Runtime both follow it).
"""

from __future__ import annotations

import os

import torch

ENV = "OMP_NUM_THREADS"
# ONNX Runtime threads for the decoders of onnx-int8-fast (base and click refiner): one, like torch's in the server.
# Interleaved on 2 shared cores at load ~5, a corrective click took 98 / 117 ms (p50 / p95) with one thread and
# 133 / 189 ms with two (docs/benchmarks.md, section J).
DECODER_THREADS = 1


def user_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, or None when unset (a bad value is an error naming it)."""
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a positive whole number, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{ENV} must be a positive whole number, got {raw!r}")
    return n


def configure_serving(device: str, backend: str) -> int:
    """Set torch's intra-op threads for a server whose default model runs on ``backend``; returns the count.

    CPU with an ONNX encoder: 1 (torch only decodes). A torch encoder, or a GPU: torch's default. The
    user's ``OMP_NUM_THREADS`` overrides both."""
    wanted = user_threads()
    if wanted is None and device == "cpu" and backend.startswith("onnx"):
        wanted = 1
    if wanted is not None:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def decoder_threads() -> int:
    """ONNX Runtime's intra-op threads for the CPU decoders: ``OMP_NUM_THREADS``, else :data:`DECODER_THREADS`."""
    return user_threads() or DECODER_THREADS
