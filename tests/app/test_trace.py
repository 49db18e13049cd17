"""app.trace: the latency marks benchmarks/ui_latency.py --trace lines up with the browser's (epoch ms, one line
each, from any thread); nothing is written unless $MEDSEG_TRACE names a file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from app import trace


def test_marks_are_json_lines_on_the_epoch_clock_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    monkeypatch.delenv("MEDSEG_TRACE", raising=False)
    trace.mark("off")
    with trace.span("off"):
        pass
    assert not path.exists()

    monkeypatch.setenv("MEDSEG_TRACE", str(path))
    before = time.time() * 1000
    with trace.span("decode"):
        worker = threading.Thread(target=trace.mark, args=("action.arrive",), kwargs={"id": "7"}, name="w")
        worker.start()
        worker.join()
    marks = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["event"] for m in marks] == ["decode.start", "action.arrive", "decode.end"]
    assert marks[1]["thread"] == "w" and marks[1]["id"] == "7"
    assert before - 1 <= marks[0]["t"] <= marks[1]["t"] <= marks[2]["t"] <= time.time() * 1000 + 1


def test_ui_latency_splits_a_click_into_the_model_turn_and_the_rest(tmp_path):
    """The GPU estimate of docs/ui.md adds this 'outside the model turn' share to a GPU server's turn: it must be
    the whole click minus the server's locked section, per click, and skip clicks without an answer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_latency", Path(__file__).parents[2] / "benchmarks" / "ui_latency.py")
    ui_latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui_latency)
    marks = []
    for i, (t0, turn) in enumerate([(1000.0, 40.0), (2000.0, 50.0)]):
        cid = str(i)
        marks += [{"t": t0, "thread": "browser", "event": "action.queued", "kind": "point", "id": cid},
                  {"t": t0 + 2, "thread": "worker", "event": "action.arrive", "kind": "point", "id": cid},
                  {"t": t0 + 3, "thread": "worker", "event": "action.locked"},
                  {"t": t0 + 3 + turn, "thread": "worker", "event": "action.answer"},
                  {"t": t0 + 10 + turn, "thread": "browser", "event": "action.applied", "id": cid}]
    marks.append({"t": 3000.0, "thread": "browser", "event": "action.queued", "kind": "point", "id": "9"})  # unanswered
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(m) + "\n" for m in marks))
    share = ui_latency.outside_model_turn(trace)
    assert share["n"] == 2 and share["p50"] == 10.0 and share["p95"] == 10.0
