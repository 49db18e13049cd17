"""CPU of a command and every process it starts, by kind (Python, Chromium's renderer / GPU process / browser, ...).

``/usr/bin/time`` counts only the children a process waits for, and Chromium's renderers and GPU process are not
among them (docs/testing.md, session 29): an e2e file's user + sys said ~75 s where its processes used ~185 s.
This samples ``/proc/<pid>/stat`` of the command's process tree every 0.2 s and keeps each process's last
utime + stime (a process that ends loses at most its last 0.2 s). Usage:
``python3 benchmarks/proc_tree_cpu.py CMD ARGS...``; prints one ``PROCCPU {json}`` line and exits with CMD's status.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("renderer", "gpu-process", "utility", "zygote")


def kind(cmd: str) -> str:
    """The process's kind from its command line."""
    if "chrom" in cmd:
        return next((f"chromium-{k}" for k in KINDS if f"--type={k}" in cmd), "chromium-browser")
    if "node" in cmd or "playwright" in cmd:
        return "node-driver"
    return "python" if "python" in cmd else "other"


def snapshot() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (parent pid, CPU ticks, start time, command line) of every process."""
    procs = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19]), cmd)
    return procs


def main(argv: list[str]) -> int:
    root = subprocess.Popen(argv)
    seen: dict[tuple[int, int], list] = {}  # (pid, start) -> [ticks, kind]; a zombie's empty command keeps the kind
    t0 = time.time()
    while root.poll() is None:
        procs = snapshot()
        tree, grew = {root.pid}, True
        while grew:
            new = {p for p, (pp, *_) in procs.items() if pp in tree} - tree
            tree |= new
            grew = bool(new)
        for pid in tree & procs.keys():
            _, ticks, start, cmd = procs[pid]
            entry = seen.setdefault((pid, start), [0, kind(cmd) if cmd else "other"])
            entry[0] = ticks
            if cmd and entry[1] == "other":
                entry[1] = kind(cmd)
        time.sleep(0.2)
    by: collections.Counter[str] = collections.Counter()
    for ticks, k in seen.values():
        by[k] += ticks / TICK
    print("PROCCPU", json.dumps({"rc": root.returncode, "wall_s": round(time.time() - t0, 1),
                                 "cpu_s": round(sum(by.values()), 1),
                                 "by": {k: round(v, 1) for k, v in by.most_common()}}), flush=True)
    return root.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
