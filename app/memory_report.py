"""What the server's bounded caches hold now, for the soak (``scripts/load_test.py --soak``).

``MEDSEG_MEMORY_LOG_S=N`` makes ``medseg serve`` log one line every N seconds:
``medseg memory: {"sessions": 21, "plane_embeddings": 126, "study_embeddings": 240, ...}``, so
a rising RSS can be told apart into caches filling up to their bounds and anything else (a leak).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

log = logging.getLogger("medseg.memory")
PREFIX = "medseg memory: "


def report(store) -> dict:
    """Counts (and MiB) of what every in-memory session holds: plane and study embeddings, undo bytes."""
    from app.propagation_job import EMBEDDING_BYTES, study_embeddings_held
    from app.session import edit_nbytes

    planes = undo = 0
    ids = store.in_memory()
    for sid in ids:
        session = store.peek(sid)
        if session is None:
            continue
        cache = session.runtime.get("embeddings")
        planes += len(getattr(cache, "_items", ()))
        undo += sum(edit_nbytes(e) for e in list(session.undo_stack) + list(session.redo_stack))
    study = study_embeddings_held()
    return {"unix_time": round(time.time(), 1), "sessions": len(ids), "plane_embeddings": planes, "study_embeddings": study,
            "embeddings_mib": (planes + study) * EMBEDDING_BYTES // 2**20, "undo_mib": round(undo / 2**20, 1)}


def start(store) -> threading.Thread | None:
    """Log :func:`report` every ``$MEDSEG_MEMORY_LOG_S`` seconds (unset or 0: off)."""
    try:
        every = float(os.environ.get("MEDSEG_MEMORY_LOG_S", "0") or 0)
    except ValueError:
        every = 0.0
    if every <= 0:
        return None

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                print(PREFIX + json.dumps(report(store)), flush=True)
            except Exception:  # noqa: BLE001 - a diagnostic must never take the server down
                log.exception("memory report failed")

    thread = threading.Thread(target=loop, name="medseg-memory-report", daemon=True)
    thread.start()
    return thread
