"""Write ``runtime/cpu_backends.json`` (what ``runtime.backend_choice`` decides from) from raw measurements.

Inputs, all kept in ``docs/bench/``: the per-case Dice of ``medseg eval`` for each backend (box + 5 px on the
42 shared slices) and a timing file of ``benchmarks/cpu_backends.py``. Run after measuring on a CPU of one
int8 kind (``u8w``: x86 without VNNI; ``s8w``: the others); the other kind's entry is kept.

    .venv/bin/python benchmarks/cpu_backend_table.py --kind u8w --evals docs/bench/cpu22 \
        --timing docs/bench/cpu22/timing.jsonl --measured "2026-12-04, AMD EPYC (AVX2), 2 cores" [--speed cpu_ms]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.backend_choice import MEASUREMENTS  # noqa: E402


def per_case(path: Path) -> dict[str, float]:
    return {r["case_id"]: float(r["dice"]) for r in csv.DictReader(open(path)) if r.get("clicks", "0") == "0"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", required=True, choices=["u8w", "s8w"])
    ap.add_argument("--evals", type=Path, required=True, help="folder of eval_box_<backend>.csv files")
    ap.add_argument("--timing", type=Path, required=True, help="benchmarks/cpu_backends.py output")
    ap.add_argument("--measured", required=True, help="when and on what")
    ap.add_argument("--speed", choices=["wall_ms", "cpu_ms"], default="wall_ms",
                    help="what orders the backends: wall clock (an idle machine) or process CPU time per call (a "
                    "loaded one, where wall clock mostly measures the other jobs); default wall_ms")
    args = ap.parse_args()
    args.evals, args.timing = args.evals.resolve(), args.timing.resolve()
    timing = {r["backend"]: r for r in map(json.loads, args.timing.read_text().splitlines())}
    reference = args.evals / "eval_box_torch.csv"
    torch_dice = per_case(reference)
    backends = {}
    for backend, t in timing.items():
        path = args.evals / f"eval_box_{backend}.csv"
        if not path.is_file():
            print(f"no Dice for {backend} ({path}): left out", file=sys.stderr)
            continue
        dice = per_case(path)
        changes = [dice[k] - torch_dice[k] for k in torch_dice]
        backends[backend] = {
            "encoder_ms": t[args.speed], "wall_ms": t["wall_ms"], "cpu_ms": t["cpu_ms"],
            "load": [t["load_before"], t["load_after"]],
            "mean_dice": round(sum(dice.values()) / len(dice), 4),
            "mean_dice_change": round(sum(changes) / len(changes), 5), "worst_case_change": round(min(changes), 5),
            "per_case": str(path.relative_to(ROOT)),
        }
    table = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.is_file() else {"models": [], "cpus": {}}
    table["models"] = ["litemedsam", "litemedsam-base"]  # one encoder; a box alone never reaches the click model
    table["cpus"][args.kind] = {
        "measured": args.measured, "per_case_torch": str(reference.relative_to(ROOT)),
        "timing": str(args.timing.relative_to(ROOT)), "encoder_ms_is": args.speed, "backends": backends,
    }
    MEASUREMENTS.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["cpus"][args.kind], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
