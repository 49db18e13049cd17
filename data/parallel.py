"""Threads for per-slice host work (windowing, resizing): numpy and cv2 release the GIL.

One pool for the process (a forked child makes its own), created on first use and shared by every
caller, so a server with many sessions does not multiply threads. On a GPU machine this work, not the
network, bounded how fast a volume's slices reach the encoder (docs/benchmarks.md, 3D propagation); on
2 cores it gains little.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

WORKERS = min(8, os.cpu_count() or 1)
# From this many items on, the work goes to the threads; fewer stay serial, where the hand-off costs more.
PARALLEL_MIN_ITEMS = 8

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def host_pool() -> ThreadPoolExecutor:
    """The process's host threads, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="medseg-host")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child inherits the pool object but none of its threads; it makes its own on first use."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def map_slices(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, in the host threads when there are enough items; errors re-raised."""
    if len(items) < PARALLEL_MIN_ITEMS or WORKERS < 2:
        return [fn(x) for x in items]
    return list(host_pool().map(fn, items))
