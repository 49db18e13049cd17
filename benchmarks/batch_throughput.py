"""Throughput of ``medseg batch`` (Ray workers) against single-process ``medseg eval`` on the same cases.

Each command runs end to end as a user would run it (process start, model load, Ray start for
batch) into a fresh folder; prints one JSON line per command, then checks that both wrote the
same per_case.csv (all columns but ``seconds``).

    python benchmarks/batch_throughput.py --limit 4 --workers 2            # CPU smoke run
    python benchmarks/batch_throughput.py --device cuda --protocol box+clicks:5   # on the GPU box
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = Path(os.environ.get("MEDSEG_SHARED", ROOT.parent / "shared")) / "data" / "manifest.csv"


def per_case_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def device_name(device: str) -> str:
    if device == "cuda":
        try:
            import torch

            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        except Exception as e:  # noqa: BLE001 - only a label
            return f"cuda ({e})"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--protocol", default="box+clicks:2")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--limit", type=int, default=None, help="first N cases of the manifest (both commands)")
    p.add_argument("--workers", type=int, default=None, help="batch workers; default one per GPU / CPU")
    p.add_argument("--embed-batch", type=int, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--ray", default="local")
    p.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = p.parse_args(argv)

    medseg = [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = [str(args.manifest), "--model", args.model, "--protocol", args.protocol, "--device", args.device,
              "--no-progress"] + (["--limit", str(args.limit)] if args.limit else [])
    work = Path(tempfile.mkdtemp(prefix="batch_throughput_")) if args.keep is None else args.keep
    try:
        eval_out, batch_out = work / "eval", work / "batch"
        for d in (eval_out, batch_out):
            shutil.rmtree(d, ignore_errors=True)
        t_eval = timed([*medseg, "eval", *common, "--output", str(eval_out)], env)
        batch_extra = ["--ray", args.ray, "--embed-batch", str(args.embed_batch)]
        batch_extra += ["--gpus-per-worker", str(args.gpus_per_worker)] if args.device == "cuda" else []
        batch_extra += ["--workers", str(args.workers)] if args.workers else []
        t_batch = timed([*medseg, "batch", *common, *batch_extra, "--output", str(batch_out)], env)
        eval_rows, batch_rows = per_case_rows(eval_out / "per_case.csv"), per_case_rows(batch_out / "per_case.csv")
        n_cases = len({r["case_id"] for r in eval_rows})
        base = {"model": args.model, "protocol": args.protocol, "device": device_name(args.device), "cases": n_cases}
        for tool, seconds, out, extra in (
            ("medseg eval", t_eval, eval_out, {"workers": 1}),
            ("medseg batch", t_batch, batch_out,
             {"workers": args.workers or "auto", "embed_batch": args.embed_batch, "ray": args.ray,
              "gpus_per_worker": args.gpus_per_worker,
              "per_case_identical": batch_rows == eval_rows}),
        ):
            summary = json.loads((out / "summary.json").read_text())
            print(json.dumps({"tool": tool, **base, **extra, "wall_s": round(seconds, 2),
                              "cases_per_s": round(n_cases / seconds, 3),
                              "model_s": round(summary["seconds_total"], 2)}), flush=True)
        return 0 if batch_rows == eval_rows else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
