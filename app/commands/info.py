"""``medseg info``: what a study is (modality, size, spacing, orientation, series), and which backend runs
the model here and why (``runtime.backend_choice``); without INPUT, only the latter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.commands.common import INPUT_HELP, add_allow_uneven_arg, add_backend_arg, backend_choice, read_input
from data.readers import list_series
from data.untrusted import one_line


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="show modality, shape, spacing, orientation and series of a study, and the "
                       "backend the model runs with here")
    p.add_argument("input", nargs="?", help=f"{INPUT_HELP}; without it, only the backend facts")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when a folder holds several series")
    add_allow_uneven_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="litemedsam", help="the model whose backend is reported; default litemedsam")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    add_backend_arg(p)
    return p


def runtime_facts(args: argparse.Namespace) -> dict:
    """Which backend the model runs with on this device, why, and who chose it (flag, env or the rule)."""
    choice = backend_choice(args)
    return {"model": args.model, "device": args.device, **choice.as_dict()}


def describe(path: str, series: str | None = None, *, allow_uneven: bool = False) -> dict:
    if Path(path).is_dir() and series is None:
        found = list_series(path)
        if len(found) > 1:
            return {
                "path": path,
                "series": [
                    {"uid": s.series_instance_uid, "modality": s.modality, "description": s.description, "files": len(s.files)}
                    for s in found
                ],
            }
    v = read_input(path, series, quiet=True, allow_uneven=allow_uneven)
    return {
        "path": path,
        "format": v.source.format,
        "modality": v.modality,
        "shape_kji": list(v.array.shape[:3]),
        "rgb": v.is_rgb,
        "dtype": str(v.array.dtype),
        "spacing_mm_ijk": [round(s, 6) for s in v.spacing],
        "origin_mm_lps": [round(o, 6) for o in v.origin],
        "orientation": v.orientation_code(),
        "direction": [round(d, 6) for d in v.direction],
        "geometry": v.source.geometry,
        "notes": list(v.source.notes),
        "study_instance_uid": v.source.study_instance_uid,
        "series_instance_uid": v.source.series_instance_uid,
    }


def run(args: argparse.Namespace) -> int:
    facts = describe(args.input, args.series, allow_uneven=args.allow_uneven) if args.input else {}
    facts["runtime"] = runtime_facts(args)
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key:>20}: {one_line(str(value))}")
    return 0
