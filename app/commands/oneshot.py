"""``medseg oneshot``: learn a structure from one annotated slice (PerSAM / PerSAM-F), segment other images.

2D targets write ``DIR/<target file stem>.png`` (0/255); 3D targets write ``DIR/<stem>.nii.gz``, a
label map on the target's grid with every slice segmented (value 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from adapters.persam_f import ITERATIONS
from adapters.persam_oneshot import BODY_MASK, LOCATION_GATE, METHODS, fit_oneshot, segment_images
from app.commands.common import add_model_args, apply_local_clicks_arg, check_outputs, say
from app.errors import UsageError
from data.pictures import exif_mismatch, read_mask_image, refuse_lossy_mask, visible_pixels
from data.readers import StudyError, read_study
from data.study_errors import without_cli_advice
from data.volume import Volume
from data.windowing import default_window, slice_to_rgb
from data.writers import write_label_nifti, write_png_mask
from models.registry import load_segmenter


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "oneshot",
        help="one-shot segmentation: learn a structure from one annotated slice, find it in other images",
        description="PerSAM (training-free) or PerSAM-F (2 weights trained on the reference) on a SAM-family "
        "model. 2D targets write DIR/<stem>.png; 3D targets write DIR/<stem>.nii.gz with every slice segmented.",
    )
    p.add_argument(
        "--method", choices=METHODS, default="persam",
        help="persam (training-free), persam_f (2 weights trained on the reference), persam_box (PerSAM's location "
        "prior as a box of the reference's size: for box-trained models such as LiteMedSAM); default persam",
    )
    p.add_argument(
        "--ref", required=True, metavar="IMAGE", help="reference image: PNG/JPEG, NIfTI, DICOM file or series"
    )
    p.add_argument(
        "--ref-mask", required=True, metavar="MASK", help="its annotation (PNG or label NIfTI on the same grid)"
    )
    p.add_argument("--ref-slice", type=int, default=None, metavar="K", help="slice K of a 3D --ref (and of its mask)")
    p.add_argument(
        "--ref-label", type=int, default=None, metavar="V",
        help="label value of the structure in --ref-mask (default: every non-zero pixel)",
    )
    p.add_argument("--targets", required=True, nargs="+", metavar="IMAGE", help="images or volumes to segment")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--window", default=None,
        help="intensity window for every image: abdomen|lung|bone|brain (CT), percentile, minmax; "
        "default: abdomen for CT, 0.5-99.5 percentile of non-zero voxels otherwise",
    )
    p.add_argument("--iterations", type=int, default=ITERATIONS, help=f"PerSAM-F training steps (default {ITERATIONS})")
    p.add_argument(
        "--parity", action="store_true",
        help="reproduce the official code's quirks (mask normalisation, query_pe leak, stretched prior)",
    )
    p.add_argument(
        "--location-gate", choices=("on", "off"), default="on" if LOCATION_GATE else "off",
        help="keep the positive point on target pixels whose grey value lies within the reference structure's "
        "1st-99th percentile (so it does not land in the air outside the head); never in --parity; "
        f"default {'on' if LOCATION_GATE else 'off'}",
    )
    p.add_argument(
        "--body-mask", choices=("on", "off"), default="on" if BODY_MASK else "off",
        help="keep the positive point inside each slice's body (pixels above the window's floor, holes filled), the "
        f"reference's too; never in --parity; default {'on' if BODY_MASK else 'off'}",
    )
    p.add_argument(
        "--sized-candidates", choices=("on", "off"), default="on",
        help="PerSAM's and PerSAM-F's point prompts try boxes of 0.5, 1 and 1.5 times the reference structure's "
        "size (off: the fixed 5, 10, 20 mm of a lone click); never in --parity; default on",
    )
    p.add_argument(
        "--position-gate", choices=("on", "off"), default="on",
        help="keep the positive point near where the reference structure was (its box x1.5, at the same place "
        "relative to the slice); never in --parity; default on",
    )
    add_model_args(p)
    return p


def output_stem(path: Path) -> str:
    """File stem without .nii.gz/.nii/.png/... ; a DICOM series folder gives its folder name."""
    name = path.resolve().name if path.is_dir() else path.name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_image(path: str | Path) -> Volume:
    """``read_study`` without the CLI's --allow-uneven and --series advice: oneshot takes neither flag, and its
    refusal of a series with a slice missing told the user to pass one (session 25)."""
    try:
        return read_study(path)
    except StudyError as e:
        raise StudyError(without_cli_advice(str(e))) from None


def reference_slice(ref: Volume, k: int | None, path: str) -> int:
    """The annotated slice of --ref: 0 for 2D, --ref-slice K (required, in range) for 3D."""
    n = ref.num_slices
    if k is None:
        if ref.is_2d:
            return 0
        raise UsageError(f"--ref {path} has {n} slices: choose the annotated one with --ref-slice K (0..{n - 1})")
    if not 0 <= k < n:
        raise UsageError(f"--ref-slice {k} is out of range: --ref {path} has slices 0..{n - 1}")
    return k


def reference_mask(args: argparse.Namespace, ref: Volume, k: int) -> np.ndarray:
    """(H, W) bool mask of the structure on reference slice K."""
    mask_vol = read_image(args.ref_mask)
    if mask_vol.source.exif_orientation != ref.source.exif_orientation:  # a square photo: a mask lying turned on it
        raise UsageError(f"--ref-mask {args.ref_mask}: " + exif_mismatch(
            "reference image", "mask", ref.source.exif_orientation, mask_vol.source.exif_orientation))
    if mask_vol.array.shape[:3] != ref.array.shape[:3]:
        raise UsageError(
            f"--ref-mask {args.ref_mask} has grid {mask_vol.array.shape[:3]} but --ref {args.ref} has "
            f"{ref.array.shape[:3]} (slices, rows, columns): give the annotation of that very image"
        )
    if ref.grid_to_compare(mask_vol) and (differs := ref.grid_difference(mask_vol)):  # flipped or shifted
        raise UsageError(f"--ref-mask {args.ref_mask} is not on the grid of --ref {args.ref}: {differs}; "
                         "give the annotation of that very image")
    if args.ref_label is None and mask_vol.source is not None and mask_vol.source.format in ("png", "jpeg"):
        mask = read_mask_image(Path(args.ref_mask))  # the painted pixels: not those a transparent layer hides
    else:
        s = np.asarray(mask_vol.slice(0 if mask_vol.is_2d else k))
        if s.ndim == 3:  # an RGB annotation (PerSAM's own masks are red): any channel
            s = s.max(axis=2)
        mask = s == args.ref_label if args.ref_label is not None else s > 0
        if mask_vol.source is not None and mask_vol.source.format in ("png", "jpeg"):
            # with --ref-label too (session 21): a JPEG's faint pixels are not the label's, nor a transparent layer's
            # hidden ones (read as an image, a layer whose hidden pixels hold the label's grey was the whole image)
            refuse_lossy_mask(Path(args.ref_mask), "JPEG" if mask_vol.source.format == "jpeg" else None)
            visible = visible_pixels(Path(args.ref_mask))
            mask = mask & visible if visible is not None else mask
    if not mask.any():
        what = f"label {args.ref_label}" if args.ref_label is not None else "no non-zero pixel"
        raise UsageError(f"--ref-mask {args.ref_mask}: slice {k} has {what}: choose the slice with --ref-slice K")
    return mask


def run(args: argparse.Namespace) -> int:
    if args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if getattr(args, "backend", "torch") not in ("torch", "auto"):
        raise UsageError("one-shot methods hook the PyTorch mask decoder: use --backend torch")
    out_dir = Path(args.output)
    targets = [Path(t) for t in args.targets]
    missing = next((t for t in targets if not t.exists()), None)
    if missing is not None:  # a typo in the last target surfaced after learning and writing all the others
        raise UsageError(f"--targets {missing}: no such file or folder")
    stems = [output_stem(t) for t in targets]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise UsageError(f"--targets: several targets would write {dupes[0]!r} in {out_dir}; give distinct file names")
    check_outputs([out_dir / f"{stem}{ext}" for stem in stems for ext in (".png", ".nii.gz")],
                             [args.ref, args.ref_mask, *targets])
    ref = read_image(args.ref)
    k = reference_slice(ref, args.ref_slice, args.ref)
    ref_image = slice_to_rgb(ref, k, default_window(ref, args.window))
    mask = reference_mask(args, ref, k)
    apply_local_clicks_arg(args)
    segmenter = load_segmenter(args.model, args.checkpoint, args.device)
    t0 = time.perf_counter()
    oneshot = fit_oneshot(
        segmenter, ref_image, mask, method=args.method, parity=args.parity, iterations=args.iterations,
        location_gate=args.location_gate == "on", body=args.body_mask == "on", sized=args.sized_candidates == "on",
    )
    say(f"learnt {args.method} from {args.ref} slice {k} ({int(mask.sum())} px) in {time.perf_counter() - t0:.1f} s")
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, stem in zip(targets, stems):
        volume = read_image(target)
        window = default_window(volume, args.window)
        images = [slice_to_rgb(volume, i, window) for i in range(volume.num_slices)]
        t1 = time.perf_counter()
        results = segment_images(
            segmenter, oneshot, images, location_gate=args.location_gate == "on", body=args.body_mask == "on",
            position=args.position_gate == "on",
        )
        if volume.is_2d:
            path = write_png_mask(results[0].mask, out_dir / f"{stem}.png",
                                  exif_orientation=volume.source.exif_orientation)
        else:
            labels = np.stack([r.mask for r in results]).astype(np.uint8)
            path = write_label_nifti(labels, volume, out_dir / f"{stem}.nii.gz")
        area = sum(int(r.mask.sum()) for r in results)
        say(f"{path}: {area} pixels on {len(results)} slice(s) in {time.perf_counter() - t1:.1f} s")
    return 0
