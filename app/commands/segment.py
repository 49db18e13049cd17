"""``medseg segment``: one prompt on one slice -> a mask file."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.commands.common import (
    add_identity_args,
    add_model_args,
    add_output_arg,
    add_prompt_args,
    add_slice_args,
    add_study_args,
    check_outputs,
    deidentify_hook,
    dicomweb_target,
    load_slice,
    prompts_from_args,
    save_labels,
    say,
    segmenter_from_args,
    study_files,
)
from app.errors import UsageError
from data.writers import write_png_mask


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "segment",
        help="segment a structure from a box or clicks",
        description="Segment one structure on one slice. 2D input writes a PNG mask (0/255); 3D input writes a "
        "NIfTI label map on the source grid with the mask (value 1) on slice K.",
    )
    add_study_args(p)
    add_slice_args(p)
    add_prompt_args(p)
    add_model_args(p)
    p.add_argument("--multimask", action="store_true", help="ask for 3 candidate masks and keep the best-scored one")
    add_identity_args(p)
    add_output_arg(p, ".png (2D input), .nii/.nii.gz or .dcm (DICOM-SEG)")
    return p


def run(args: argparse.Namespace) -> int:
    prompts = prompts_from_args(args)
    to_pacs = dicomweb_target(args.output) is not None
    volume, k, image = load_slice(args)
    check_outputs([args.output], study_files(volume))
    prompts = replace(prompts, pixel_spacing=volume.pixel_spacing)  # points alone become boxes in mm
    out = Path(args.output)
    is_nifti = to_pacs or out.name.lower().endswith((".nii", ".nii.gz", ".dcm"))  # .dcm: DICOM-SEG via data.export
    if not volume.is_2d and not is_nifti:
        raise UsageError(f"--output {out}: a 3D study is written as a label map; use a .nii.gz (or .dcm) name")
    if volume.is_2d and not (is_nifti or out.suffix.lower() == ".png"):
        raise UsageError(f"--output {out}: expected a .png (or .nii.gz) name for 2D input")
    if (to_pacs or out.name.lower().endswith(".dcm")) and volume.source.format not in ("dicom-series", "dicom"):
        raise UsageError(f"--output {args.output}: DICOM-SEG needs a DICOM study, this one is "
                         f"{volume.source.format or 'not from a file'}; use a .nii.gz output name")
    if to_pacs or out.name.lower().endswith(".dcm"):
        from data.dicom_seg import check_seg_source

        check_seg_source(volume, args.output)  # before the model runs, not after it
    prompts.validate(image.shape[:2])
    segmenter = segmenter_from_args(args)
    t0 = time.perf_counter()
    embedding = segmenter.embed(image)
    t1 = time.perf_counter()
    result = segmenter.predict(embedding, prompts, multimask_output=args.multimask)
    t2 = time.perf_counter()
    mask = result.best_mask
    if is_nifti:
        labels = np.zeros(volume.array.shape[:3], dtype=np.uint8)
        labels[k] = mask
        where = save_labels(labels, volume, args.output, label_names={1: "structure"}, model_name=args.model,
                            deidentify=deidentify_hook(args))
    else:
        where = str(write_png_mask(mask, out, exif_orientation=volume.source.exif_orientation))
    score = result.scores[result.best_index]
    say(
        f"{where}: {int(mask.sum())} pixels on slice {k}, predicted IoU {score:.3f}; "
        f"encode {1000 * (t1 - t0):.0f} ms, prompt {1000 * (t2 - t1):.0f} ms ({args.device})"
    )
    return 0
