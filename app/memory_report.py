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


def _tensor_bytes(embeddings, seen: set[int]) -> int:
    """Bytes of the storages behind ``embeddings`` (features and extras), each storage once."""
    total = 0
    for emb in embeddings:
        for t in (emb.features, *emb.extras.values()):
            if not hasattr(t, "untyped_storage"):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def report(store) -> dict:
    """What every in-memory session holds, in true bytes: plane and study embeddings (their tensors'
    storages, each once), undo and redo steps of the open study and of the studies stashed beside it
    (``app.session.undo_nbytes``), and the process's RSS."""
    from app.propagation_job import live_study_caches
    from app.session import undo_nbytes

    planes = undo = plane_bytes = 0
    seen: set[int] = set()
    ids = store.in_memory()
    for sid in ids:
        session = store.peek(sid)
        if session is None:
            continue
        cache = session.runtime.get("embeddings")
        items = list(getattr(cache, "_items", {}).values())
        planes += len(items)
        plane_bytes += _tensor_bytes(items, seen)
        undo += sum(undo_nbytes(list(session.undo_stack) + list(session.redo_stack)))
        for kept in list(session.stashed.values()):
            undo += sum(undo_nbytes(list(kept.get("undo", ())) + list(kept.get("redo", ()))))
    caches = live_study_caches()
    study = sum(len(c) for c in caches)
    study_bytes = _tensor_bytes([emb for c in caches for _, emb in c.items()], seen)
    return {"unix_time": round(time.time(), 1), "sessions": len(ids), "plane_embeddings": planes, "study_embeddings": study,
            "embeddings_mib": round((plane_bytes + study_bytes) / 2**20, 1), "undo_mib": round(undo / 2**20, 1),
            "plane_mib": round(plane_bytes / 2**20, 1), "study_mib": round(study_bytes / 2**20, 1),
            "rss_mib": round(_rss_bytes() / 2**20), "bounds_mib": bounds_mib(store)}


def bounds_mib(store) -> dict:
    """What each cache may reach with this server's settings (MiB), and their sum: the server's cache budget.

    Per session in memory (at most ``store.max_in_memory``): plane embeddings and undo history;
    server-wide: study embeddings, plus the working set of the one session propagating (its own bound)."""
    from app.embedding_cache import EMBEDDING_BYTES
    from app.interaction import EMBEDDINGS_PER_SESSION
    from app.propagation_job import EMBEDDING_BYTES_BUDGET, budget_bytes
    from app.session import MAX_UNDO_BYTES

    n = store.max_in_memory
    out = {"plane": n * EMBEDDINGS_PER_SESSION * EMBEDDING_BYTES / 2**20, "undo": n * MAX_UNDO_BYTES / 2**20,
           "study": budget_bytes() / 2**20, "study_working_set": EMBEDDING_BYTES_BUDGET / 2**20}
    out["all"] = sum(out.values())
    return {k: round(v) for k, v in out.items()}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


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
