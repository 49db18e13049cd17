"""500 clicks on one label through the viewer's action path (app.viewer.actions.act, what the browser's
requests run), real LiteMedSAM on the CPU, the bundled CT's coronal slice 7. Per click: the journal record's
bytes (app.save_journal.append, wrapped), the state's JSON bytes, the action's process CPU time, and the CPU
time of session.to_json() + json.dumps (what the journal and state.json serialise on every click).

PYTHONPATH=$PWD .venv/bin/python docs/bench/s13/prompt_history_clicks.py [--clicks 500] [--new-object-every N]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from app import controller, save_journal
from app.controller import AppContext
from app.interaction import ModelRunner, PlaneEmbeddings, Prefetcher
from app.session import SessionStore
from app.viewer import actions
from app.viewer.geometry import from_plane

p = argparse.ArgumentParser()
p.add_argument("--clicks", type=int, default=500)
p.add_argument("--new-object-every", type=int, default=0, help="0: every click refines one prompt")
args = p.parse_args()

records: list[int] = []
real_append = save_journal.append


def counting_append(directory, seq, view, index, after, state):
    before = (Path(directory) / save_journal.JOURNAL).stat().st_size if (Path(directory) / save_journal.JOURNAL).exists() else 0
    real_append(directory, seq, view, index, after, state)
    records.append((Path(directory) / save_journal.JOURNAL).stat().st_size - before)


save_journal.append = counting_append
runner = ModelRunner("cpu")
ctx = AppContext(SessionStore(Path(tempfile.mkdtemp()) / "sessions"), runner, Prefetcher(runner, radius=0))
sid = controller.start(ctx, None).session_id
controller.open_sample(ctx, sid, "CT head (DICOM series, 12 slices)")
session = ctx.store.get(sid)
session.view.index["coronal"] = 7
session.runtime["embeddings"] = PlaneEmbeddings()
rows = []
for n in range(1, args.clicks + 1):
    x, y = 100.0 + (n * 7) % 40, 70.0 + (n * 11) % 30
    fresh = bool(args.new_object_every and n % args.new_object_every == 1)  # a new object starts positive
    body = {"kind": "point", "view": "coronal", "mm": from_plane(session.volume, "coronal", 7, x, y),
            "positive": fresh or n % 3 != 0, "new_object": fresh}
    t0, w0 = time.process_time(), time.perf_counter()
    actions.act(ctx, session, body)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    t1 = time.process_time()
    text = json.dumps(session.to_json(), separators=(",", ":"))
    ser = time.process_time() - t1
    hist = sum(len(v) for v in session.history.values())
    rows.append({"click": n, "journal_record_bytes": records[-1], "state_json_bytes": len(text), "history_records": hist,
                 "history_points": sum(len(r.get("points", [])) for v in session.history.values() for r in v),
                 "action_cpu_s": round(cpu, 5), "action_wall_s": round(wall, 5), "serialise_cpu_s": round(ser, 5)})
for r in rows:
    if r["click"] in (1, 2, 10, 50, 100, 200, 300, 400, 500) or r["click"] == args.clicks:
        print(json.dumps(r))
first, last = rows[:20], rows[-20:]
med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
print(json.dumps({"summary": True, "clicks": args.clicks, "new_object_every": args.new_object_every,
                  "journal_bytes_total": sum(records),
                  "action_cpu_median_first20": med([r["action_cpu_s"] for r in first]),
                  "action_cpu_median_last20": med([r["action_cpu_s"] for r in last]),
                  "serialise_cpu_median_last20": med([r["serialise_cpu_s"] for r in last]),
                  "loadavg": os.getloadavg()}))
