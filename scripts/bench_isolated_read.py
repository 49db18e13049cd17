"""What reading a study in a limited child costs (``data.isolated_read``) against reading it in process.

For the bundled CT series and Colin27 NIfTI: the fork server's start (once per server process),
then ``--repeat`` alternating opens each way; median and spread per open, with the load average.

    .venv/bin/python scripts/bench_isolated_read.py --repeat 20 --json docs/bench/isolated_read.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.isolated_read import ReadServer  # noqa: E402
from data.readers import read_study  # noqa: E402

STUDIES = {
    "ct_head_0051_series (DICOM, 12 x 256 x 256 int16)": ROOT / "samples" / "ct_head_0051_series",
    "colin27 slab A (NIfTI .nii.gz, 32 x 217 x 181 uint8)": ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    server = ReadServer()
    t0 = time.perf_counter()
    server.read(next(iter(STUDIES.values())))
    start_s = time.perf_counter() - t0
    loads = [os.getloadavg()[0]]
    results = {}
    for name, path in STUDIES.items():
        read_study(path)  # warm the page cache and this process's imports
        times: dict[str, list[float]] = {"in_process": [], "isolated": []}
        for _ in range(args.repeat):
            for way, fn in (("in_process", read_study), ("isolated", server.read)):
                t = time.perf_counter()
                fn(path)
                times[way].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        results[name] = {
            **{f"{k}_median_ms": round(v, 1) for k, v in med.items()},
            **{f"{k}_min_max_ms": [round(min(v) * 1000, 1), round(max(v) * 1000, 1)] for k, v in times.items()},
            "overhead_median_ms": round(med["isolated"] - med["in_process"], 1),
        }
    server.stop()
    figures = {"fork_server_start_s": round(start_s, 2), "repeat": args.repeat, "studies": results,
               "load_average_1min_min_max": [round(min(loads), 1), round(max(loads), 1)], "cpus": os.cpu_count()}
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
