"""``medseg batch``: ``medseg eval`` over a cohort on Ray workers, resumable, with the final masks as files."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import add_backend_arg, backend_choice, finite_float, say
from app.errors import UsageError
from app.commands.eval import settings_from_args
from evaluation.clicks import PROTOCOL_HELP
from evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "batch",
        help="evaluate / segment a cohort on Ray workers (local or a cluster); resumable; writes masks",
        description="Run `medseg eval`'s per-case work over MANIFEST.csv on Ray actors (one model per GPU or "
        "per CPU worker). Writes DIR/per_case.csv, summary.json and report.md exactly as `medseg eval`, plus "
        "DIR/masks/<case_id>.png (the final mask of each case, in the manifest's 2D view) and "
        "DIR/cases/<case_id>.json; run again with the same DIR to resume (finished cases are skipped).",
    )
    p.add_argument("manifest", metavar="MANIFEST.csv", help="evaluation manifest; paths are relative to its folder")
    p.add_argument("--model", default="litemedsam", help="registry name (see `medseg models`); default litemedsam")
    p.add_argument("--checkpoint", metavar="FILE", help="weights file; default: the registry's file in weights/")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one worker per GPU; default cpu")
    add_backend_arg(p)
    p.add_argument("--protocol", default="box", help=f"simulated user: {PROTOCOL_HELP}; default box")
    p.add_argument("--margin", type=int, default=5, metavar="PX", help="px added to each side of the GT box; default 5")
    p.add_argument("--jitter", type=int, default=0, metavar="PX",
                   help="move each box side by up to PX at random; default 0")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random prompts; default 0")
    p.add_argument("--nsd-tolerance", type=finite_float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                   help=f"NSD boundary tolerance in mm; default {DEFAULT_NSD_TOLERANCE_MM:g}")
    p.add_argument("--hd-one-empty", choices=["diagonal", "nan"], default="diagonal",
                   help="HD95 when exactly one mask is empty: the image diagonal in mm (default) or NaN")
    p.add_argument("--no-feedback", action="store_true", help="do not feed the previous logits back on each click")
    p.add_argument("--group-by", action="append", default=[], metavar="COLUMN",
                   help="attribute column for equity-scaled metrics; repeat for several")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N cases")
    p.add_argument("--ray", default="local", metavar="local|ADDRESS",
                   help="'local' starts Ray on this machine; an address (e.g. ray://head:10001 or auto) joins a "
                   "cluster whose nodes have medseg installed and can read the manifest's files; default local")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="model copies (Ray actors); default one per GPU with --device cuda, else one per CPU")
    p.add_argument("--gpus-per-worker", type=finite_float, default=1.0, metavar="F",
                   help="GPU share of each worker with --device cuda: 0.25 puts 4 model copies on each GPU, which "
                   "helps when the per-case CPU work (metrics, reading) is the bottleneck; default 1")
    p.add_argument("--embed-batch", type=int, default=1, metavar="B",
                   help="encode B distinct slices per forward pass (GPU throughput); 1 (default) encodes one at a "
                   "time, bit-identical to `medseg eval`")
    p.add_argument("--max-retries", type=int, default=3, metavar="R",
                   help="restarts of a dead worker and retries of its task; default 3")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (reuse it to resume)")
    return p


def run(args: argparse.Namespace) -> int:
    from evaluation.distributed import BatchJob, run_batch

    for flag, value in (("--workers", args.workers), ("--embed-batch", args.embed_batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 < args.gpus_per_worker <= 1:
        raise UsageError(f"--gpus-per-worker must be in (0, 1], got {args.gpus_per_worker}")
    if args.max_retries < 0:
        raise UsageError(f"--max-retries must be >= 0, got {args.max_retries}")
    settings, subset = settings_from_args(args)
    protocol = settings.protocol
    job = BatchJob(manifest=args.manifest, model=args.model, settings=settings, checkpoint=args.checkpoint,
                   device=args.device, embed_batch=args.embed_batch,
                   gpus_per_worker=args.gpus_per_worker, backend=backend_choice(args).backend)
    out = Path(args.output)
    result = run_batch(
        job,
        out,
        ray_address=args.ray,
        workers=args.workers,
        cases=subset,
        group_by=args.group_by,
        max_retries=args.max_retries,
        progress=not args.no_progress,
    )
    rows = result.run.rows
    last = max(r.clicks for r in rows)
    finals = [r.dice for r in rows if r.clicks == last]
    say(
        f"{out}: {result.run.n_cases} cases ({len(result.computed)} run, {len(result.skipped)} already done), "
        f"{protocol}, mean Dice at click {last} {sum(finals) / len(finals):.4f}; masks in {out / 'masks'}"
    )
    return 0
