"""app.trace: the latency marks benchmarks/ui_latency.py --trace lines up with the browser's (epoch ms, one line
each, from any thread); nothing is written unless $MEDSEG_TRACE names a file."""

from __future__ import annotations

import json
import threading
import time

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
