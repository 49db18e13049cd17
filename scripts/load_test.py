"""Load test: N concurrent simulated UI sessions on one server context for a bounded time.

Each session (a thread) does what a clinician's page does through the UI's action layer
(``app.controller``: the functions the Gradio handlers call, with the same SessionStore,
ModelRunner lock and prefetcher as ``medseg serve``, minus HTTP): open the bundled CT, pick its
own slices, draw boxes (two clicks) and refine with a positive click, start new objects, and
export NIfTI. Afterwards every session's action list is replayed alone, serially, in a fresh
context; its concurrent export must equal the replay's bit for bit (no cross-talk between
sessions, no lost or foreign edits). Reports click latency (p50/p95), errors and process RSS.

    .venv/bin/python scripts/load_test.py --sessions 4 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import controller  # noqa: E402
from app.controller import AppContext  # noqa: E402
from app.interaction import ModelRunner, Prefetcher  # noqa: E402
from app.session import SessionStore  # noqa: E402
from data.readers import read_study  # noqa: E402

SAMPLE = "CT head (DICOM series, 12 slices)"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_context(root: Path) -> AppContext:
    runner = ModelRunner("cpu")
    return AppContext(store=SessionStore(root), runner=runner, prefetcher=Prefetcher(runner, radius=0))


def plan(i: int, rng: random.Random, n_slices: int) -> list[tuple]:
    """One session's scripted actions: its own two slices, boxes and refining clicks (display pixels)."""
    actions: list[tuple] = [("open",)]
    for k in (i % n_slices, (i + 5) % n_slices):
        actions += [("slice", k), ("warm",)]  # the page encodes a newly shown slice before the first click
        for _ in range(2):
            x0, y0 = rng.uniform(150, 300), rng.uniform(150, 300)
            w, h = rng.uniform(60, 160), rng.uniform(60, 160)
            actions += [("mode", "box"), ("click", x0, y0), ("click", x0 + w, y0 + h)]
            actions += [("mode", "point +"), ("click", x0 + w / 2, y0 + h / 2), ("new",)]
    actions.append(("export",))
    return actions


def perform(ctx: AppContext, sid: str, action: tuple) -> float:
    """Run one action; returns its wall time (s)."""
    t0 = time.perf_counter()
    kind = action[0]
    if kind == "open":
        controller.open_sample(ctx, sid, SAMPLE)
    elif kind == "slice":
        controller.set_slice(ctx, sid, action[1])
    elif kind == "warm":
        controller.warm(ctx, sid)
    elif kind == "mode":
        controller.set_display(ctx, sid, "default", 40.0, 400.0, 0.45, action[1])
    elif kind == "click":
        controller.click(ctx, sid, action[1], action[2])
    elif kind == "new":
        controller.new_object(ctx, sid)
    elif kind == "export":
        controller.export(ctx, sid, "nifti")
    return time.perf_counter() - t0


def exported(ctx: AppContext, sid: str) -> np.ndarray:
    path, _ = controller.export(ctx, sid, "nifti")
    return read_study(path).array


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0, help="stop starting new rounds after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the session folders (default: delete them)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="medseg-load-"))
    ctx = make_context(work / "concurrent")
    first = controller.start(ctx, None).session_id
    controller.open_sample(ctx, first, SAMPLE)
    controller.warm(ctx, first)  # load the model and encode once, so RSS starts from a warm server
    n_slices = 12
    plans = {i: plan(i, random.Random(args.seed * 1000 + i), n_slices) for i in range(args.sessions)}
    done: dict[int, list[tuple]] = {i: [] for i in plans}
    sids: dict[int, str] = {}
    clicks: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    t_start = time.perf_counter()

    def monitor() -> None:
        while not stop.wait(0.5):
            rss.append((time.perf_counter() - t_start, rss_mib()))

    def user(i: int) -> None:
        sid = controller.start(ctx, None).session_id
        sids[i] = sid
        rounds = 0
        while rounds == 0 or time.perf_counter() - t_start < args.seconds:
            for action in plans[i] if rounds == 0 else plans[i][1:]:  # later rounds refine the same study
                try:
                    dt = perform(ctx, sid, action)
                except Exception as e:  # noqa: BLE001 - the load test counts every failure
                    with lock:
                        errors.append(f"session {i} {action}: {type(e).__name__}: {e}")
                    continue
                done[i].append(action)
                if action[0] == "click":
                    with lock:
                        clicks.append(dt)
            rounds += 1

    threading.Thread(target=monitor, daemon=True).start()
    rss.append((0.0, rss_mib()))
    threads = [threading.Thread(target=user, args=(i,)) for i in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    stop.set()
    concurrent = {i: exported(ctx, sids[i]) for i in plans}

    # replay each session alone: its export must be exactly what its own actions give
    mismatches = []
    for i in plans:
        solo = make_context(work / f"solo{i}")
        sid = controller.start(solo, None).session_id
        for action in done[i]:
            perform(solo, sid, action)
        alone = exported(solo, sid)
        if alone.shape != concurrent[i].shape or not np.array_equal(alone, concurrent[i]):
            mismatches.append(i)
        elif not concurrent[i].any():
            mismatches.append(i)  # nothing segmented: the check would be vacuous
    half = [m for t, m in rss if t >= elapsed / 2]
    figures = {
        "sessions": args.sessions,
        "seconds": round(elapsed, 1),
        "actions": sum(len(v) for v in done.values()),
        "clicks": len(clicks),
        "click_p50_ms": round(1000 * statistics.median(clicks), 1) if clicks else None,
        "click_p95_ms": round(1000 * float(np.percentile(clicks, 95)), 1) if clicks else None,
        "click_max_ms": round(1000 * max(clicks), 1) if clicks else None,
        "errors": errors,
        "cross_talk_sessions": mismatches,
        "rounds_per_session": {i: done[i].count(("export",)) for i in plans},
        "rss_start_mib": round(rss[0][1]),
        "rss_peak_mib": round(max(m for _, m in rss)),
        "rss_second_half_min_max_mib": [round(min(half)), round(max(half))] if half else None,
        "rss_end_mib": round(rss_mib()),
    }
    print(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if not errors and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
