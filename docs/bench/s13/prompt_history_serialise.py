"""CPU time and bytes of serialising a label's prompt history after 500 clicks refining one prompt, the old way
(every record holds the prompt's whole point list) against the new (``app.session.log_prompt``), interleaved in
one process, 20 rounds each: what the journal (with every click) and state.json (every save) serialise.

PYTHONPATH=$PWD .venv/bin/python docs/bench/s13/prompt_history_serialise.py
"""
import json
import os
import time

from app.session import PromptState, log_prompt

points, labels, old, new = [], [], [], []
for n in range(500):
    points.append((100.0 + n % 37 + 0.333333, 80.0 + n % 23 + 0.666667))
    labels.append(int(n % 3 != 2))
    record = PromptState("coronal", 7, 1, points=tuple(points), point_labels=tuple(labels)).record("click+")
    old.append(record)
    log_prompt(new, dict(record))
times = {"old": [], "new": []}
for _ in range(20):
    for name, history in (("old", old), ("new", new)):
        t = time.process_time()
        text = json.dumps({"history": {"1": history}}, separators=(",", ":"))
        times[name].append(time.process_time() - t)
        times[name + "_bytes"] = len(text)
for name in ("old", "new"):
    xs = sorted(times[name])
    print(json.dumps({"history": name, "bytes": times[name + "_bytes"], "cpu_ms_median": round(1e3 * xs[10], 3),
                      "cpu_ms_min": round(1e3 * xs[0], 3)}))
print(json.dumps({"loadavg": os.getloadavg()}))
