"""``medseg propagate``: a box on slice K and/or annotated slices (``--anchor K:MASK.png``) -> the structure
on every slice it reaches -> NIfTI or DICOM-SEG. The engine is ``app.propagation`` (shared with the UI)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.commands.common import (
    add_identity_args,
    add_model_args,
    add_output_arg,
    add_slice_args,
    add_study_args,
    backend_choice,
    check_outputs,
    deidentify_hook,
    dicomweb_target,
    finite_float,
    read_input,
    resolve_slice,
    save_labels,
    say,
    segmenter_from_args,
    study_files,
)
from app.embedding_cache import EmbeddingCache
from app.errors import UsageError
from app.propagation import PropagationResult, PropagationSettings, interpolate_shapes, propagate, propagate_anchors
from app.propagation_defaults import BOX_RULE, GUARD_BY_BACKEND, GUARD_RULE, default_propagation, rule_of
from data.pictures import read_mask_image
from data.readers import read_study
from data.untrusted import LONE_SURROGATE
from data.volume import Volume
from data.export import export_format
from data.windowing import default_window
from models.prompts import Prompts, check_box_area

DEFAULTS = BOX_RULE  # the settings no backend changes; --prompt, --guard, --stride: default_propagation(backend)
GUARDED = "; ".join(f"--guard {g:g} on {b}" for b, g in sorted(GUARD_BY_BACKEND.items())) or "no backend yet"
PER_BACKEND = (f"default per backend (app/propagation_defaults.py, docs/evaluation.md): {GUARD_RULE.prompt} with "
               f"{GUARDED}, where that was measured to be better; {BOX_RULE.prompt} with --guard {BOX_RULE.guard:g} "
               "on the others")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "propagate",
        help="segment a structure on slice K from a box (and/or annotated slices) and carry it through the volume",
        description="Segment one structure on slice K from a box, then carry the mask up and down the volume "
        "(each slice prompted by its segmented neighbour: --prompt) until the structure ends (the stop rule: "
        "--min-score, --score-drop, --area-drop, --min-overlap). Annotated slices (--anchor K:MASK.png, "
        "repeatable) are kept as drawn; the slices between two of them are filled (--fill), those beyond "
        "the outermost are walked outward. Writes a label map (value 1) on the source grid: .nii/.nii.gz (any 3D "
        "study) or .dcm (DICOM-SEG, DICOM series only). With a SAM 2 model (sam2*_hiera_*, medsam2) the slices are the "
        "frames of a video carried by SAM 2's memory: the box (and every anchor) is a conditioning frame, each walk stops "
        "at the first slice with fewer than --min-area pixels, and --prompt, --margin, --min-score, --score-drop, "
        "--area-drop and --min-overlap do not apply (docs/models.md).",
    )
    add_study_args(p)
    add_slice_args(p)
    p.add_argument("--box", type=finite_float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box on slice K in pixels (x = column, y = row), inclusive corners")
    p.add_argument("--anchor", action="append", default=[], metavar="K:MASK.png",
                   help="slice K annotated by a 2D mask image (non-zero = structure, the slice's size), kept as it "
                   "is; repeatable. Without --box, two or more anchors fill the slices between them")
    p.add_argument("--fill", choices=["model", "shape", "guided"],
                   help="the slices between two anchors: shape = signed-distance interpolation of the anchors (the "
                   "default on every backend: measured best, docs/evaluation.md), model = the model walked from both "
                   "ends, guided = the model prompted with the shape. --fill shape given with anchors and no --box: "
                   "the interpolation alone (no model, nothing beyond the outermost anchors)")
    add_model_args(p)
    add_identity_args(p)
    add_output_arg(p, ".nii, .nii.gz or .dcm (DICOM-SEG)")
    p.add_argument("--label", default="structure", help="segment name written in a DICOM-SEG (default: structure)")
    p.add_argument("--margin", type=finite_float, default=DEFAULTS.margin_px,
                   help=f"pixels added around the previous mask's box (default {DEFAULTS.margin_px:g})")
    p.add_argument("--prompt", choices=["auto", "box", "mask", "mask+box"], default=None,
                   help="what a slice gets from its segmented neighbour: the box of its mask (+ --margin), its "
                   "low-res logits as SAM's mask prompt, or both; auto = mask+box where the model's click model was "
                   f"trained on neighbouring-slice masks, else box ({PER_BACKEND})")
    p.add_argument("--mask-prompt", action="store_true", help="the same as --prompt mask+box (kept for old scripts)")
    p.add_argument("--min-score", type=finite_float, default=DEFAULTS.min_score,
                   help=f"stop where the predicted IoU falls below this (default {DEFAULTS.min_score:g}; 0 = never)")
    p.add_argument("--score-drop", type=finite_float, default=DEFAULTS.score_drop,
                   help=f"stop where the predicted IoU falls below this fraction of the neighbour's (default {DEFAULTS.score_drop:g})")
    p.add_argument("--area-drop", type=finite_float, default=DEFAULTS.area_drop,
                   help=f"stop where the area falls below this fraction of the neighbour's (default {DEFAULTS.area_drop:g})")
    p.add_argument("--min-overlap", type=finite_float, default=DEFAULTS.min_overlap,
                   help=f"stop where the Dice with the neighbour's mask falls below this (default {DEFAULTS.min_overlap:g})")
    p.add_argument("--guard", type=finite_float, default=None,
                   help="with a mask prompt: also segment each slice from the neighbour's box alone and keep that answer "
                   "where the two masks agree (Dice) less than this; the stops then read the box answer's predicted IoU "
                   f"(0 = off; {PER_BACKEND})")
    p.add_argument("--min-area", type=int, default=DEFAULTS.min_area_px,
                   help=f"stop where the mask has fewer pixels than this (default {DEFAULTS.min_area_px})")
    p.add_argument("--max-slices", type=int, default=None, help="walk at most N slices each way")
    p.add_argument("--stride", type=int, default=None,
                   help="segment every N-th slice beyond the prompted one and fill the slices between from their "
                   f"neighbours' logits where those agree (Dice >= {DEFAULTS.stride_agree:g}), else segment them too; "
                   f"fewer slices to encode (default {BOX_RULE.stride} on every backend; 1 segments every slice; "
                   "docs/evaluation.md)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-slice progress on stderr")
    return p


def check_label_text(label: str) -> None:
    """UsageError for a --label that is not UTF-8 (a name typed in a Latin-1 terminal: Python keeps its bytes as
    lone surrogates, which the DICOM-SEG writer refused after the whole propagation, naming a codec)."""
    for i, c in enumerate(label):
        if "\udc80" <= c <= "\udcff":  # os.fsdecode's escape of one undecodable byte
            raise UsageError(f"--label: not UTF-8 text (byte 0x{ord(c) - 0xdc00:02x} at character {i + 1}); set the "
                             "terminal to UTF-8 or type the name in ASCII")
    if (broken := LONE_SURROGATE.search(label)) is not None:
        raise UsageError(f"--label: not valid text (a broken character at character {broken.start() + 1})")


def read_anchors(specs: list[str], volume: Volume) -> dict[int, np.ndarray]:
    """``K:MASK.png`` strings -> slice -> (H, W) bool, refusing bad K, unreadable, mis-sized or empty masks."""
    anchors: dict[int, np.ndarray] = {}
    for spec in specs:
        k_text, sep, path = spec.partition(":")
        # isdecimal: '²' is a digit to isdigit but not to int(), which named no flag ("invalid literal for int()")
        if not sep or not path or not k_text.strip().lstrip("-").isdecimal():
            raise UsageError(f"--anchor {spec!r}: expected K:MASK.png (a slice index, a colon, a mask image)")
        k = int(k_text)
        if not 0 <= k < volume.num_slices:
            raise UsageError(f"--anchor {spec}: slice {k} is out of range 0..{volume.num_slices - 1}")
        if k in anchors:
            raise UsageError(f"--anchor {spec}: slice {k} is annotated twice")
        image = read_study(path)
        if not image.is_2d:
            raise UsageError(f"--anchor {spec}: {path} is not a 2D mask image")
        if image.source is not None and image.source.format in ("png", "jpeg"):
            # the painted pixels, as the UI's mask file and oneshot --ref-mask read them: a JPEG's ringing was taken
            # as annotation, and a mask on a transparent layer whose hidden pixels are white as the whole slice
            mask = read_mask_image(Path(path))
        else:
            mask = np.asarray(image.slice(0))
            mask = (mask.max(axis=2) if mask.ndim == 3 else mask) > 0
        if mask.shape != volume.slice_shape:
            raise UsageError(f"--anchor {spec}: mask is {mask.shape[0]}x{mask.shape[1]} (rows x columns), slice {k} "
                             f"is {volume.slice_shape[0]}x{volume.slice_shape[1]}")
        if not mask.any():
            raise UsageError(f"--anchor {spec}: the mask has no non-zero pixel")
        if image.size_is_physical and volume.size_is_physical and (off := anchor_off_slice(image, volume, k)):
            raise UsageError(f"--anchor {spec}: {path} {off}")
        anchors[k] = mask
    return anchors


def anchor_off_slice(image: Volume, volume: Volume, k: int) -> str:
    """'' when a placed 2D mask (a NIfTI or DICOM slice, which carries its position) lies on slice ``k`` of
    ``volume``, else where it lies. Why: only its size was compared, so a one-slice NIfTI exported from slice 7 (or a
    numpy mask saved by nibabel with an identity affine, transposed on reading) was taken as slice 3's annotation
    because K said so (session 21); ``oneshot --ref-mask`` and ``eval`` already compare a placed mask's grid."""
    def shown(values) -> str:
        return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

    axes, own = volume.direction_matrix[:, :2], image.direction_matrix[:, :2]
    if np.abs(np.subtract(image.spacing[:2], volume.spacing[:2])).max() > 1e-3 * max(1.0, *volume.spacing[:2]):
        return f"has pixels of {shown(image.spacing[:2])} mm where the slices have {shown(volume.spacing[:2])} mm"
    if np.abs(own - axes).max() > 1e-4:
        return (f"lies along {shown(own.T.ravel())} where the slices lie along {shown(axes.T.ravel())} (row and column "
                "directions): it is turned or flipped against them")
    origin = np.asarray(image.origin)
    if np.abs(origin - volume.index_to_physical(np.array([0.0, 0.0, k]))).max() <= 1e-2:
        return ""
    normal = volume.direction_matrix[:, 2]
    at = int(round(float(np.dot(origin - np.asarray(volume.origin), normal)) / float(volume.spacing[2])))
    if 0 <= at < volume.num_slices and np.abs(origin - volume.index_to_physical(np.array([0.0, 0.0, at]))).max() <= 1e-2:
        return f"lies on slice {at} of the volume, not slice {k} (its origin {shown(origin)} mm): give --anchor {at}:..."
    return (f"is not on slice {k} of the volume: its origin {shown(origin)} mm, the slice's "
            f"{shown(volume.index_to_physical(np.array([0.0, 0.0, k])))} mm")


def run(args: argparse.Namespace) -> int:
    check_label_text(args.label)
    out = Path(args.output)
    fmt = "dicom-seg" if dicomweb_target(args.output) is not None else export_format(out)
    volume = read_input(args.input, args.series, quiet=args.quiet, allow_uneven=getattr(args, "allow_uneven", False))
    check_outputs([args.output], study_files(volume))
    if volume.is_2d:
        raise UsageError(f"{args.input} is a single 2D image: nothing to propagate; use `medseg segment`")
    if fmt == "dicom-seg" and volume.source.format != "dicom-series":
        raise UsageError(f"--output {out}: DICOM-SEG needs a DICOM series as input; use a .nii.gz name")
    if fmt == "dicom-seg":
        from data.dicom_seg import check_seg_source

        check_seg_source(volume, args.output)  # before minutes of propagation, not after them
    anchors = read_anchors(args.anchor, volume)
    prompts = None
    if args.box is not None:
        k = resolve_slice(volume, args.slice)
        check_box_area(args.box)
        prompts = Prompts(box=args.box)
        prompts.validate(volume.slice_shape)
        if k in anchors:
            raise UsageError(f"--slice {k} has both --box and --anchor: give one of them")
    elif not anchors:
        raise UsageError("give a prompt: --slice K --box X0 Y0 X1 Y1, or annotated slices with --anchor K:MASK.png")
    if args.fill == "shape" and prompts is None and len(anchors) < 2:
        raise UsageError("--fill shape interpolates between annotated slices: give two or more --anchor")
    backend = backend_choice(args).backend
    settings, source = settings_from_args(args, backend)
    if args.fill == "shape" and prompts is None:
        labels = interpolate_shapes(anchors, volume.num_slices).astype(np.uint8)
        where = save_labels(labels, volume, args.output, label_names={1: args.label},
                            model_name="shape interpolation", deidentify=deidentify_hook(args))
        say(f"{where}: {int(labels.sum())} voxels on slices {min(anchors)}..{max(anchors)} (shape interpolation)")
        return 0
    segmenter = segmenter_from_args(args)

    def progress(done: int, total: int, message: str) -> None:
        if not args.quiet:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    window = default_window(volume, args.window)
    cache = EmbeddingCache(max_items=2 * settings.batch_size)
    result: PropagationResult
    if prompts is not None:
        result = propagate(segmenter, volume, k, prompts, anchors=anchors, window=window, cache=cache,
                           settings=settings, progress=progress)
    else:
        result = propagate_anchors(segmenter, volume, anchors, window=window, cache=cache, settings=settings,
                                   progress=progress)
    elapsed = time.perf_counter() - t0
    labels = result.masks.astype(np.uint8)
    where = save_labels(labels, volume, args.output, label_names={1: args.label}, model_name=args.model,
                        deidentify=deidentify_hook(args))
    span = f"slices {result.slices[0]}..{result.slices[-1]}" if result.slices else "no slice"
    stops = ", ".join(f"{d}: {r}" for d, r in result.stopped.items())
    rule = rule_of(settings, segmenter)
    say(f"{where}: {int(labels.sum())} voxels on {len(result.slices)} slices ({span}); stopped {stops}; "
          f"{elapsed:.1f} s ({args.device}); rule {rule} ({source})")
    return 0


# PropagationSettings' fields -> the flags that set them (their refusals name the flag, session 24)
SETTING_FLAGS = {"margin_px": "--margin", "min_area_px": "--min-area", "min_score": "--min-score",
                 "score_drop": "--score-drop", "area_drop": "--area-drop", "min_overlap": "--min-overlap",
                 "max_slices": "--max-slices", "guard": "--guard", "stride": "--stride", "prompt": "--prompt",
                 "fill": "--fill"}


def settings_from_args(args: argparse.Namespace, backend: str) -> tuple[PropagationSettings, str]:
    """The walk's settings: ``default_propagation(backend)`` with every flag given on top, and where they came from
    (for the report line): ``default for backend B``, with the rule's flags given, if any."""
    base = default_propagation(backend)
    flags = {"prompt": "mask+box" if args.mask_prompt else args.prompt, "guard": args.guard, "stride": args.stride,
             "fill": args.fill}
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = replace(
            base, margin_px=args.margin, min_area_px=args.min_area, min_score=args.min_score,
            score_drop=args.score_drop, area_drop=args.area_drop, min_overlap=args.min_overlap,
            max_slices=args.max_slices, **given,
        )
    except ValueError as e:  # the settings' words name their field (margin_px): the user typed the flag
        said = str(e)
        field = said.split(" ", 1)[0]
        raise UsageError(SETTING_FLAGS.get(field, field) + said[len(field):]) from None
    named = "".join(f", --{k} given" for k in given)
    return settings, f"default for backend {backend}{named}"
