"""Latency of the browser viewer (issue 19), measured in headless Chromium with the browser's clock.

    .venv/bin/python benchmarks/ui_latency.py [--clicks 40] [--frames 100] [--device cpu] [--json out.json]

Starts ``medseg serve``'s app on a free loopback port, opens the bundled CT, waits for the shown slice
to be encoded, then
- click to overlay: refinement clicks on the cached embedding, each timed with ``performance.now()``
  from the prompt entering the viewer's queue to the label plane written and drawn (the server's
  decoder, the JSON round trip, the texture update); ``click_to_answer_ms``: the same clicks until the
  server's answer arrived (the rest is the browser writing and drawing the plane);
- paging and window/level: one slice step (or one W/L change through the viewer's ``applyWindow``) and the
  next animation frame, ``performance.now()`` before the step and in the ``requestAnimationFrame`` callback
  after it; ``window_all_layers_frame_ms``: the same W/L change by NiiVue's ``updateGLVolume`` (every layer
  again, what the viewer did before), in the same page for comparison.
With ``--trace FILE``: every step of each request, on the server (``app.trace``) and in the page, on one clock,
and ``click_steps_p50_ms`` (where a click's time goes).
Prints p50/p95, the backend the server ran (the default unless $MEDSEG_BACKEND says) and the machine's load
average (a shared machine's figures are pessimistic).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_USER_BACKEND = os.environ.get("MEDSEG_BACKEND")
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

# Importing the test fixtures pins the test suite's backend (tests/conftest.py: MEDSEG_BACKEND=torch); the
# benchmark measures the server's default unless the user set one (until 2026-12-05 every run measured torch).
if _USER_BACKEND is None:
    os.environ.pop("MEDSEG_BACKEND", None)

PAGING_JS = """async ([n, kind]) => {
  const v = window.medsegViewer, out = [];
  const vol = v.nv.volumes[0];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    if (kind === 'page') v.page(i % 20 < 10 ? 1 : -1);
    else if (kind === 'window') v.applyWindow({ level: vol.cal_min + 30 + (i % 10) * 10, width: 60 + (i % 10) * 20 });
    else { vol.cal_max = vol.cal_min + 60 + (i % 10) * 20; v.nv.updateGLVolume(); }  // every layer again
    await new Promise(requestAnimationFrame);
    out.push(performance.now() - t0);
  }
  return out;
}"""


STEPS = [  # (from, to) marks of one click, browser (b) or server (s); app.trace, viewer/src/action_queue.ts
    ("b:action.queued", "b:action.sent"), ("b:action.sent", "s:action.arrive"), ("s:action.arrive", "s:action.locked"),
    ("s:action.locked", "s:decode.start"), ("s:decode.start", "s:decode.end"), ("s:decode.end", "s:action.answer"),
    ("s:action.answer", "b:action.received"), ("b:action.received", "b:action.applied"),
]


def _click_marks(path: Path) -> list[dict[str, float]]:
    """Each counted click's marks ("b:..." browser, "s:..." server), from a --trace file."""
    marks = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda m: m["t"])
    server = [m for m in marks if m["thread"] != "browser"]
    clicks = []
    for q in (m for m in marks if m["event"] == "action.queued" and m.get("kind") == "point"):
        mine = {"b:" + m["event"]: m["t"] for m in marks if m["thread"] == "browser" and m.get("id") == q["id"]}
        arrive = next((m for m in server if m["event"] == "action.arrive" and m.get("id") == q["id"]), None)
        if arrive is None or "b:action.applied" not in mine:
            continue
        after = [m for m in server if m["t"] >= arrive["t"] and m["thread"] == arrive["thread"]]
        for m in after:  # the first of each mark on the request's thread, up to its answer
            mine.setdefault("s:" + m["event"], m["t"])
            if m["event"] == "action.answer":
                break
        clicks.append(mine)
    return clicks


def click_steps(path: Path) -> dict[str, float]:
    """Median ms of each step of the counted clicks, from a --trace file: where a click's time goes."""
    steps: dict[str, list[float]] = {f"{a} -> {b}": [] for a, b in STEPS}
    for mine in _click_marks(path):
        for a, b in STEPS:
            if a in mine and b in mine:
                steps[f"{a} -> {b}"].append(mine[b] - mine[a])
    return {k: round(float(np.median(v)), 1) for k, v in steps.items() if v}


def outside_model_turn(path: Path) -> dict[str, float]:
    """p50 / p95 ms of each click's time outside the server's model turn (``action.locked`` to ``action.answer``:
    the decode and the server's own steps around it): the browser, the way in and out, and the request's wait
    for its session. With a faster model server (a GPU) only the turn changes, so this share plus that
    server's turn estimates the click there (docs/ui.md)."""
    outside = [(m["b:action.applied"] - m["b:action.queued"]) - (m["s:action.answer"] - m["s:action.locked"])
               for m in _click_marks(path)
               if {"b:action.applied", "b:action.queued", "s:action.answer", "s:action.locked"} <= m.keys()]
    return {"n": len(outside), "p50": round(pct(outside, 50), 1), "p95": round(pct(outside, 95), 1)} if outside else {}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--trace", type=Path, default=None,
                        help="write the server's and the browser's marks of every request (app.trace) to this "
                             "JSON-lines file, one clock (epoch ms), and the median of each step of a click")
    args = parser.parse_args(argv)
    if args.trace:
        args.trace.unlink(missing_ok=True)
        os.environ["MEDSEG_TRACE"] = str(args.trace)

    from playwright.sync_api import sync_playwright

    from app.ui import launch
    from app.viewer.geometry import from_plane
    from data.readers import read_study

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = Path(tempfile.mkdtemp(prefix="medseg-ui-bench-"))
    demo = launch("127.0.0.1", port, "litemedsam", args.device, state_dir=state, prefetch_radius=0,
                  prevent_thread_lock=True)
    ct = read_study(ROOT / "samples" / "ct_head_0051_series")
    from app.model_catalog import backend_for

    result: dict = {"device": args.device, "backend": backend_for("litemedsam", args.device).backend,
                    "load_average": os.getloadavg()}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            if args.trace:
                page.add_init_script("window.medsegTrace = []")
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("window.medsegViewer && document.querySelector('#viewer-status')", timeout=120_000)
            result["page_ready_s"] = page.evaluate("performance.now()") / 1000
            page.locator("#open-sample").click()
            page.wait_for_function("document.querySelector('#medseg-viewer').dataset.study && "
                                   "document.querySelector('#viewer-status').textContent.includes('Ready')",
                                   timeout=600_000)
            box = page.locator("#viewer-canvas").bounding_box()

            def click(x: float, y: float) -> None:
                mm = from_plane(ct, "coronal", 6, x, y)
                pos = page.evaluate("([mm]) => medsegViewer.toCanvas(mm, 'coronal')", [mm])
                page.mouse.click(box["x"] + pos[0], box["y"] + pos[1])
                page.wait_for_function("document.querySelector('#medseg-viewer').dataset.busy === '0'",
                                       timeout=600_000)

            click(128, 120)  # the first click (candidates); not counted
            page.evaluate("medsegViewer.promptTimes.length = 0; medsegViewer.answerTimes.length = 0")
            rng = np.random.default_rng(0)
            for _ in range(args.clicks):
                click(*(np.array([128.0, 120.0]) + rng.uniform(-8, 8, 2)))
            clicks = page.evaluate("medsegViewer.promptTimes.slice()")
            answers = page.evaluate("medsegViewer.answerTimes.slice()")
            paging = page.evaluate(PAGING_JS, [args.frames, "page"])
            window = page.evaluate(PAGING_JS, [args.frames, "window"])
            window_all = page.evaluate(PAGING_JS, [args.frames, "window_all_layers"])
            if args.trace:
                with args.trace.open("a") as f:
                    for m in page.evaluate("window.medsegTrace"):
                        f.write(json.dumps({**m, "thread": "browser"}) + "\n")
            browser.close()
    finally:
        demo.close()
    for name, values in (("click_to_overlay_ms", clicks), ("click_to_answer_ms", answers),
                         ("paging_frame_ms", paging), ("window_frame_ms", window),
                         ("window_all_layers_frame_ms", window_all)):
        result[name] = {"n": len(values), "p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1)}
    result["load_average_end"] = os.getloadavg()
    if args.trace:
        result["click_steps_p50_ms"] = click_steps(args.trace)
        result["click_outside_model_turn_ms"] = outside_model_turn(args.trace)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
