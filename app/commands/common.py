"""Arguments and steps shared by several subcommands (one place for each)."""

from __future__ import annotations

import argparse

import numpy as np

from app.errors import UsageError
from data.readers import read_study
from data.volume import Volume
from data.windowing import default_window, slice_to_rgb
from models.prompts import Prompts


def add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="NIfTI file, DICOM file or series folder, PNG/JPEG")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when a folder holds several series")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="litemedsam", help="registry name (see `medseg models`); default litemedsam")
    p.add_argument("--checkpoint", metavar="FILE", help="weights file; default: the registry's file in weights/")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    p.add_argument(
        "--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "onnx-int8-all", "onnx-int8-fast"],
        help="default torch; onnx runs onnxruntime; onnx-int8 also runs most of the encoder's linear layers "
        "in int8, onnx-int8-all all of them (faster on the CPU, Dice -0.004), onnx-int8-fast all of them in an "
        "encoder graph rewritten for onnxruntime (the fastest on the CPU, Dice -0.003)",
    )
    p.add_argument("--adapter", metavar="DIR", help="apply a fine-tuned adapter (the --output of medseg finetune)")
    p.add_argument("--no-click-model", action="store_true",
                   help="litemedsam without its click model (= --model litemedsam-base): the official decoder for clicks too")


def model_name(args: argparse.Namespace) -> str:
    """--model, with --no-click-model turning litemedsam into litemedsam-base."""
    if getattr(args, "no_click_model", False) and args.model == "litemedsam":
        return "litemedsam-base"
    return args.model


def segmenter_from_args(args: argparse.Namespace):
    """The shared, cached segmenter that --model/--checkpoint/--device/--backend (and --adapter) name."""
    from models.registry import load_segmenter

    if getattr(args, "adapter", None):
        from adapters.io import load_adapted

        return load_adapted(
            args.adapter, model=model_name(args), checkpoint=args.checkpoint, device=args.device, backend=getattr(args, "backend", "torch")
        )
    return load_segmenter(model_name(args), args.checkpoint, args.device, getattr(args, "backend", "torch"))


def add_slice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--slice",
        type=int,
        default=None,
        metavar="K",
        help="slice index K of a 3D study: SimpleITK.GetArrayFromImage(volume)[K] (for a DICOM series, "
        "the K-th image in position order); required for 3D input",
    )
    p.add_argument(
        "--window",
        default=None,
        help="intensity window the model sees: abdomen|lung|bone|brain (CT presets), percentile, minmax; "
        "default: abdomen for CT, 0.5-99.5 percentile of non-zero voxels otherwise",
    )


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box in pixels (x = column)")
    p.add_argument(
        "--point",
        type=float,
        nargs=3,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="a click in pixels; LABEL 1 = foreground, 0 = background; repeat for more",
    )


def prompts_from_args(args: argparse.Namespace) -> Prompts:
    if args.box is None and not args.point:
        raise UsageError("give a prompt: --box X0 Y0 X1 Y1 and/or --point X Y LABEL")
    points = labels = None
    if args.point:
        arr = np.asarray(args.point, dtype=np.float32)
        if not np.isin(arr[:, 2], (0, 1)).all():
            raise UsageError(f"--point LABEL must be 1 (foreground) or 0 (background), got {arr[:, 2].tolist()}")
        points, labels = arr[:, :2], arr[:, 2].astype(np.int64)
    return Prompts(points=points, point_labels=labels, box=args.box)


def resolve_slice(volume: Volume, k: int | None) -> int:
    if k is None:
        if volume.is_2d:
            return 0
        raise UsageError(f"this study has {volume.num_slices} slices: choose one with --slice K (0..{volume.num_slices - 1})")
    if not 0 <= k < volume.num_slices:
        raise UsageError(f"--slice {k} is out of range: this study has slices 0..{volume.num_slices - 1}")
    return k


def load_slice(args: argparse.Namespace) -> tuple[Volume, int, np.ndarray]:
    """Read the study, pick slice K and window it -> (volume, k, (H, W, 3) uint8)."""
    volume = read_study(args.input, series_uid=args.series)
    k = resolve_slice(volume, args.slice)
    return volume, k, slice_to_rgb(volume, k, default_window(volume, args.window))
