"""Build the hostile-input corpus, run ``medseg info`` on every case, judge and tabulate the results.

    .venv/bin/python -m tests.hostile DIR

Writes the cases under ``DIR/cases`` (with ``DIR/cases.json``: name, kind, path, expectation, for
uploading them elsewhere), runs them through ``tests.hostile.runner`` with
``MEDSEG_MAX_VOXELS=REFERENCE_VOXELS`` and prints one markdown row per case class, then the
memory figures. Exit code 1 when any case ends otherwise than expected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.hostile.corpus import REFERENCE_VOXELS, Case, build_corpus

ROOT = Path(__file__).resolve().parents[2]


def run(cases: list[Case], folder: Path, *, timeout: float = 60.0) -> dict:
    """Run every case in the fork-per-case runner (a subprocess); returns its results by case name."""
    spec, out = folder / "cases.json", folder / "results.json"
    spec.write_text(json.dumps([
        {"name": c.name, "kind": c.kind, "path": os.fsdecode(c.path), "expect": c.expect, "fragment": c.fragment,
         "argv": c.argv()} for c in cases
    ]))
    env = dict(os.environ, MEDSEG_MAX_VOXELS=str(REFERENCE_VOXELS))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    subprocess.run([sys.executable, "-m", "tests.hostile.runner", str(spec), str(out), "--timeout", str(timeout)],
                   cwd=ROOT, env=env, check=True, timeout=1800)
    return json.loads(out.read_text())


def verdict(case: Case, result: dict) -> str:
    """'' when the case ended as expected, else what went wrong (one phrase)."""
    if result["hang"]:
        return "hang"
    if result["signal"] is not None:
        return f"signal {result['signal']}"
    if "Traceback" in result["stderr"]:
        return "traceback"
    lines = result["stderr"].strip().splitlines()
    if case.expect == "refuse":
        if result["exit"] != 2:
            return f"exit {result['exit']} (accepted?)" if result["exit"] == 0 else f"exit {result['exit']}"
        if len(lines) != 1 or not lines[0].startswith("medseg info: error: "):
            return f"{len(lines)} stderr lines"
        if case.fragment not in lines[0]:
            return "other reason"
        return ""
    if result["exit"] != 0:
        return f"refused (exit {result['exit']})"
    if any(not line.startswith("medseg info: warning: ") for line in lines):
        return "stray stderr"
    if bool(case.fragment) != bool(lines) or (case.fragment and case.fragment not in result["stderr"]):
        return "warning missing or unexpected"
    return ""


def table(cases: list[Case], results: dict) -> str:
    rows: dict[str, list[int]] = {}
    for case in cases:
        r = results[case.name]
        row = rows.setdefault(case.kind, [0, 0, 0, 0])
        row[0] += 1
        row[1 if case.expect == "refuse" else 2] += 1
        row[3] += not verdict(case, r)
    base = results["__baseline__"]["maxrss_kb"]
    out = ["| case class | cases | refused (one line, exit 2) | opened exactly | as expected | max peak RSS over baseline |",
           "|---|---|---|---|---|---|"]
    for kind, (n, refused, opened, good) in rows.items():
        peak = max((results[c.name]["maxrss_kb"] - base) // 1024 for c in cases if c.kind == kind)
        out.append(f"| {kind} | {n} | {refused} | {opened} | {good}/{n} | {peak} MiB |")
    n, good = len(cases), sum(not verdict(c, results[c.name]) for c in cases)
    out.append(f"| **all** | **{n}** | {sum(r[1] for r in rows.values())} | {sum(r[2] for r in rows.values())} "
               f"| **{good}/{n}** | |")
    return "\n".join(out)


def main() -> int:
    folder = Path(sys.argv[1])
    t0 = time.monotonic()
    cases = build_corpus(folder / "cases")
    t1 = time.monotonic()
    results = run(cases, folder)
    t2 = time.monotonic()
    print(table(cases, results))
    base = results["__baseline__"]["maxrss_kb"]
    refs = [c for c in cases if c.reference]
    ref_peak = max(results[c.name]["maxrss_kb"] for c in refs)
    worst = max((c for c in cases if not c.reference), key=lambda c: results[c.name]["maxrss_kb"])
    print(f"\nbuilt {len(cases)} cases in {t1 - t0:.1f} s, ran them in {t2 - t1:.1f} s "
          f"(MEDSEG_MAX_VOXELS={REFERENCE_VOXELS})")
    print(f"peak RSS: baseline (warm medseg, no input) {base // 1024} MiB; largest legitimate study "
          f"{ref_peak // 1024} MiB (+{(ref_peak - base) // 1024}); worst other case {worst.name} "
          f"{results[worst.name]['maxrss_kb'] // 1024} MiB (+{(results[worst.name]['maxrss_kb'] - base) // 1024}), "
          f"{results[worst.name]['maxrss_kb'] / ref_peak:.2f}x")
    for c in cases:
        bad = verdict(c, results[c.name])
        if bad:
            print(f"UNEXPECTED {c.name}: {bad}: {results[c.name]['stderr'].strip()[-300:]!r}")
    return 1 if any(verdict(c, results[c.name]) for c in cases) else 0

