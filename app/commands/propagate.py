"""``medseg propagate``: a box on slice K -> the structure on every slice it reaches -> NIfTI or DICOM-SEG."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from app.commands.common import (
    add_model_args,
    add_output_arg,
    add_slice_args,
    add_study_args,
    dicomweb_target,
    read_input,
    resolve_slice,
    save_labels,
    segmenter_from_args,
)
from app.embedding_cache import EmbeddingCache
from app.errors import UsageError
from app.propagation import PropagationSettings, propagate
from data.deidentify import deidentifier
from data.export import export_format
from data.windowing import default_window
from models.prompts import Prompts

DEFAULTS = PropagationSettings()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "propagate",
        help="segment a structure on slice K from a box and carry it through the volume",
        description="Segment one structure on slice K from a box, then carry the mask up and down the volume "
        "(each slice prompted with the box of the previous slice's mask plus a margin) until the structure ends. "
        "Writes a label map (value 1) on the source grid: .nii/.nii.gz (any 3D study) or .dcm (DICOM-SEG, DICOM "
        "series only).",
    )
    add_study_args(p)
    add_slice_args(p)
    p.add_argument("--box", type=float, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box on slice K in pixels (x = column, y = row), inclusive corners")
    add_model_args(p)
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM-SEG output: empty patient name/ID/birth date, study dates, accession number "
                   "(DICOM PS3.15 Annex E Basic Profile, UIDs kept)")
    add_output_arg(p, ".nii, .nii.gz or .dcm (DICOM-SEG)")
    p.add_argument("--label", default="structure", help="segment name written in a DICOM-SEG (default: structure)")
    p.add_argument("--margin", type=float, default=DEFAULTS.margin_px,
                   help=f"pixels added around the previous mask's box (default {DEFAULTS.margin_px:g})")
    p.add_argument("--mask-prompt", action="store_true",
                   help="also feed the previous slice's logits as a mask prompt (off by default, see docs/evaluation.md)")
    p.add_argument("--min-score", type=float, default=DEFAULTS.min_score,
                   help=f"stop where the predicted IoU falls below this (default {DEFAULTS.min_score:g}; 0 = never)")
    p.add_argument("--min-area", type=int, default=DEFAULTS.min_area_px,
                   help=f"stop where the mask has fewer pixels than this (default {DEFAULTS.min_area_px})")
    p.add_argument("--max-slices", type=int, default=None, help="walk at most N slices each way")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-slice progress on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    fmt = "dicom-seg" if dicomweb_target(args.output) is not None else export_format(out)
    volume = read_input(args.input, args.series, quiet=args.quiet, allow_uneven=getattr(args, "allow_uneven", False))
    if volume.is_2d:
        raise UsageError(f"{args.input} is a single 2D image: nothing to propagate; use `medseg segment`")
    if fmt == "dicom-seg" and volume.source.format != "dicom-series":
        raise UsageError(f"--output {out}: DICOM-SEG needs a DICOM series as input; use a .nii.gz name")
    k = resolve_slice(volume, args.slice)
    prompts = Prompts(box=args.box)
    prompts.validate(volume.slice_shape)
    settings = PropagationSettings(
        margin_px=args.margin,
        use_mask_prompt=args.mask_prompt,
        min_area_px=args.min_area,
        min_score=args.min_score,
        max_slices=args.max_slices,
    )
    segmenter = segmenter_from_args(args)

    def progress(done: int, total: int, message: str) -> None:
        if not args.quiet:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    result = propagate(
        segmenter, volume, k, prompts, window=default_window(volume, args.window),
        cache=EmbeddingCache(max_items=2 * settings.batch_size), settings=settings, progress=progress,
    )
    elapsed = time.perf_counter() - t0
    labels = result.masks.astype(np.uint8)
    where = save_labels(labels, volume, args.output, label_names={1: args.label}, model_name=args.model,
                        deidentify=deidentifier(args))
    span = f"slices {result.slices[0]}..{result.slices[-1]}" if result.slices else "no slice"
    stops = ", ".join(f"{d}: {r}" for d, r in result.stopped.items())
    print(f"{where}: {int(labels.sum())} voxels on {len(result.slices)} slices ({span}); stopped {stops}; "
          f"{elapsed:.1f} s ({args.device})")
    return 0
