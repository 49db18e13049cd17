"""``medseg eval``: run a model over an evaluation manifest with a simulated-user protocol."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from app.commands.common import add_model_args, finite_float, segmenter_from_args, say
from app.errors import UsageError
from evaluation.clicks import PROTOCOL_HELP, parse_protocol
from evaluation.manifest import read_manifest
from evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, EmptyPolicy
from evaluation.report import write_report
from evaluation.runner import EvalSettings, evaluate


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="measure a model on a manifest of labelled slices (Dice, IoU, HD95, NSD, per click, per group)",
        description="Evaluate a model on MANIFEST.csv (columns case_id,image,label; optional slice_index, "
        "label_values, structure, transform, norm_lo, norm_hi and attribute columns) with a simulated user. "
        "Writes DIR/per_case.csv, DIR/summary.json and DIR/report.md with plots.",
    )
    p.add_argument("manifest", metavar="MANIFEST.csv", help="evaluation manifest; paths are relative to its folder")
    add_model_args(p)
    p.add_argument("--protocol", default="box", help=f"simulated user: {PROTOCOL_HELP}; default box")
    p.add_argument("--margin", type=int, default=5, metavar="PX", help="px added to each side of the GT box; default 5")
    p.add_argument("--jitter", type=int, default=0, metavar="PX", help="move each box side by up to PX at random; default 0")
    p.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="attribute column for equity-scaled metrics (FairSeg ES-Dice); repeat for several",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random prompts; default 0")
    p.add_argument(
        "--nsd-tolerance",
        type=finite_float,
        default=DEFAULT_NSD_TOLERANCE_MM,
        metavar="MM",
        help=f"NSD boundary tolerance in mm; default {DEFAULT_NSD_TOLERANCE_MM:g}",
    )
    p.add_argument(
        "--hd-one-empty",
        choices=["diagonal", "nan"],
        default="diagonal",
        help="HD95 when exactly one mask is empty: the image diagonal in mm (default) or NaN (left out of means)",
    )
    p.add_argument("--no-feedback", action="store_true", help="do not feed the previous logits back on each click")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N cases (a quick look)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--output", "-o", default=None, metavar="DIR", help="output folder; default out/eval/<model>_<protocol>"
    )
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[EvalSettings, list]:
    """The checks and settings `medseg eval` and `medseg batch` share; reads the manifest once.

    Returns the settings and the manifest's cases (limited by ``--limit``, ``None`` = all).
    """
    protocol = parse_protocol(args.protocol)
    if args.margin < 0 or args.jitter < 0:
        raise UsageError(f"--margin and --jitter must be >= 0 px, got {args.margin} and {args.jitter}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    if args.seed < 0:  # numpy's 'expected non-negative integer' came after the model loaded, naming no flag
        raise UsageError(f"--seed must be a whole number >= 0, got {args.seed}")
    cases, attributes = read_manifest(args.manifest)
    for column in args.group_by:
        if column not in attributes and column != "structure":
            raise UsageError(
                f"--group-by {column}: no such column in {args.manifest}; attribute columns: {', '.join(attributes) or 'none'}"
            )
    settings = EvalSettings(
        protocol=protocol,
        margin=args.margin,
        jitter=args.jitter,
        seed=args.seed,
        nsd_tolerance_mm=args.nsd_tolerance,
        policy=EmptyPolicy(one_empty_hd=args.hd_one_empty),
        feed_logits=not args.no_feedback,
    )
    return settings, (cases[: args.limit] if args.limit else None)


def run(args: argparse.Namespace) -> int:
    settings, subset = settings_from_args(args)
    protocol = settings.protocol
    out = Path(args.output or Path("out") / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{args.model}_{protocol}"))
    segmenter = segmenter_from_args(args)
    result = evaluate(segmenter, args.manifest, settings, cases=subset, progress=not args.no_progress)
    summary = write_report(result, out, args.group_by)
    overall = summary["means"]["all"]
    last = str(summary["clicks"][-1])
    first = str(summary["clicks"][0])
    span = f"{overall[first]['dice']:.4f}" if first == last else f"{overall[first]['dice']:.4f} -> {overall[last]['dice']:.4f}"
    say(f"{out}: {summary['n_cases']} cases, {protocol}, mean Dice {span} (clicks {first}..{last}); see {out / 'report.md'}")
    return 0
