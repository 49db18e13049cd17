"""Latency trace of the viewer's requests, off unless ``$MEDSEG_TRACE`` names a file.

Why: a click in the browser took ~2 s where the same action in process took ~0.5 s; finding where the
rest went needs timestamps at each step of one request (arrival, lock taken, model turn, decode, save,
answer) from several threads, on the same clock as the browser's (epoch milliseconds:
``performance.timeOrigin + performance.now()`` there). ``benchmarks/ui_latency.py --trace`` turns it
on and lines the browser's marks up with these. Off, :func:`mark` is one dict lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any, Iterator

_LOCK = threading.Lock()


def enabled() -> bool:
    return bool(os.environ.get("MEDSEG_TRACE"))


def mark(event: str, **fields: Any) -> None:
    """Append one line ``{"t": epoch ms, "thread": name, "event": event, **fields}`` to ``$MEDSEG_TRACE``."""
    path = os.environ.get("MEDSEG_TRACE")
    if not path:
        return
    line = json.dumps({"t": round(time.time() * 1000.0, 2), "thread": threading.current_thread().name,
                       "event": event, **fields})
    with _LOCK, open(path, "a") as f:
        f.write(line + "\n")


@contextlib.contextmanager
def span(event: str, **fields: Any) -> Iterator[None]:
    """``event.start`` and ``event.end`` marks around a block (nothing when tracing is off)."""
    if not enabled():
        yield
        return
    mark(event + ".start", **fields)
    try:
        yield
    finally:
        mark(event + ".end", **fields)
