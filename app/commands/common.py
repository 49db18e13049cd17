"""Arguments and steps shared by several subcommands (one place for each)."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from app.errors import UsageError
from app.reading import read_for_cli
from data.volume import Volume
from data.windowing import default_window, slice_to_rgb
from models.prompts import Prompts, check_box_area
from runtime import BACKENDS
from runtime.backend_choice import AUTO, ENV_VAR


INPUT_HELP = ("NIfTI file, DICOM file or series folder, PNG/JPEG, or a DICOMweb series URL "
              "http(s)://HOST/PREFIX/studies/{StudyInstanceUID}/series/{SeriesInstanceUID}")
DICOMWEB_OUTPUT = "dicomweb:"


def finite_float(text: str) -> float:
    """argparse's ``type=finite_float`` without NaN and infinities (float() takes "nan", "inf"): a --margin nan
    made NaN boxes mid-propagation, an --nsd-tolerance nan a report of NaN or zero NSDs."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help=INPUT_HELP)
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when a folder holds several series")
    add_allow_uneven_arg(p)


def add_allow_uneven_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-uneven", action="store_true",
        help="open a DICOM series with uneven slice spacing (or missing slices) at its mean spacing, with a "
        "warning, instead of refusing it; positions along the slice normal are then approximate",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="litemedsam", help="registry name (see `medseg models`); default litemedsam")
    p.add_argument("--checkpoint", metavar="FILE", help="weights file; default: the registry's file in weights/")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    add_backend_arg(p)
    p.add_argument("--adapter", metavar="DIR", help="apply a fine-tuned adapter (the --output of medseg finetune)")
    p.add_argument("--no-click-model", action="store_true",
                   help="litemedsam without its click model (= --model litemedsam-base): the official decoder for clicks too")
    add_local_clicks_arg(p)


def add_local_clicks_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-clicks", action="store_true",
                   help="keep each corrective click's change near the click: the click model's new mask only in the "
                   "changed region that reaches the click (models/click_locality.py; off by default, docs/clicks.md; "
                   "the same as MEDSEG_LOCAL_CLICKS=1)")


def apply_local_clicks_arg(args: argparse.Namespace) -> None:
    """--local-clicks: the switch is the environment variable, so Ray workers and the label server see it too."""
    if getattr(args, "local_clicks", False):
        from models.click_locality import ENV_VAR as LOCAL_CLICKS_ENV

        os.environ[LOCAL_CLICKS_ENV] = "1"


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", default=AUTO, choices=(AUTO, *BACKENDS),
        help=f"default auto (or ${ENV_VAR}): on the CPU the fastest backend whose Dice stays within 0.005 of fp32 "
        "torch on the shared set (runtime/backend_choice.py; `medseg info --json` prints the choice and why), torch "
        "on a GPU; torch runs PyTorch fp32; onnx runs onnxruntime; onnx-int8 also runs most of the encoder's linear "
        "layers in int8, onnx-int8-all all of them, onnx-int8-fast all of them in an encoder graph rewritten for "
        "onnxruntime, onnx-int8-conv that and the neck's 3x3 conv in int8",
    )


def backend_choice(args: argparse.Namespace):
    """The backend --backend / $MEDSEG_BACKEND / the rule picks for these arguments (runtime.backend_choice)."""
    from runtime.backend_choice import BackendError, choose

    try:
        return choose(model_name(args), args.device, getattr(args, "backend", AUTO),
                      adapter=bool(getattr(args, "adapter", None)))
    except BackendError as e:
        raise UsageError(str(e)) from None


def model_name(args: argparse.Namespace) -> str:
    """--model, with --no-click-model turning litemedsam into litemedsam-base."""
    if getattr(args, "no_click_model", False) and args.model == "litemedsam":
        return "litemedsam-base"
    return args.model


def segmenter_from_args(args: argparse.Namespace):
    """The shared, cached segmenter that --model/--checkpoint/--device/--backend (and --adapter) name."""
    from runtime import load_segmenter

    apply_local_clicks_arg(args)

    backend = backend_choice(args).backend
    if getattr(args, "adapter", None):
        from adapters.io import load_adapted

        return load_adapted(
            args.adapter, model=model_name(args), checkpoint=args.checkpoint, device=args.device, backend=backend
        )
    return load_segmenter(model_name(args), args.checkpoint, args.device, backend)


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
    p.add_argument("--box", type=finite_float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box in pixels (x = column)")
    p.add_argument(
        "--point",
        type=finite_float,
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
        arr = np.asarray(args.point, dtype=np.float64)  # Prompts checks the range, then casts
        if not np.isin(arr[:, 2], (0, 1)).all():
            raise UsageError(f"--point LABEL must be 1 (foreground) or 0 (background), got {arr[:, 2].tolist()}")
        points, labels = arr[:, :2], arr[:, 2].astype(np.int64)
    check_box_area(args.box)
    return Prompts(points=points, point_labels=labels, box=args.box)


def resolve_slice(volume: Volume, k: int | None) -> int:
    if k is None:
        if volume.is_2d:
            return 0
        raise UsageError(f"this study has {volume.num_slices} slices: choose one with --slice K (0..{volume.num_slices - 1})")
    if not 0 <= k < volume.num_slices:
        raise UsageError(f"--slice {k} is out of range: this study has slices 0..{volume.num_slices - 1}")
    return k


def read_input(text: str, series_uid: str | None = None, *, quiet: bool = False, allow_uneven: bool = False) -> Volume:
    """The study INPUT names: a file or folder, or a DICOMweb series URL (retrieved with a progress bar
    on stderr into a temporary folder that lives until the command exits, since a DICOM-SEG written
    later reads its source headers from there)."""
    from data.dicomweb import fetch_series, is_url, parse_series_url

    url = parse_series_url(text)
    if url is None:
        if is_url(text):
            raise UsageError(f"{text}: a URL INPUT must name one series: "
                             "http(s)://HOST/PREFIX/studies/{StudyInstanceUID}/series/{SeriesInstanceUID}")
        return read_for_cli(text, series_uid=series_uid, allow_uneven=allow_uneven)
    from tqdm import tqdm

    from app.settings import get_settings

    settings = get_settings()
    bars = []  # the bar appears with the first image (an error before that prints only its one line)

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc="retrieving", total=total, unit="image", file=sys.stderr, disable=quiet, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        folder = fetch_series(url, max_voxels=settings.max_voxels, max_bytes=settings.max_upload_bytes,
                              max_instances=settings.max_upload_files, timeout=settings.dicomweb_timeout_s,
                              progress=progress)
    finally:
        for bar in bars:
            bar.close()
    atexit.register(shutil.rmtree, folder, True)
    return read_for_cli(folder, max_voxels=settings.max_voxels, allow_uneven=allow_uneven)


def study_files(volume: Volume) -> tuple[str, ...]:
    """The paths a study was read from: its file or folder and, for a series, every slice's file."""
    return tuple(p for p in (volume.source.path, *volume.source.files) if p)


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path],
                  option: str = "--output") -> None:
    """UsageError, before the model runs, when an output cannot be written or would be written where an input
    lies. Why: the writers rename their result over the target, so ``segment ct.nii.gz -o ct.nii.gz`` replaced
    the image by a label map (the same path, through a link or ``..``, or a hard link to it, count as one); and
    an unwritable folder failed only after the model's work, naming a temporary file."""
    def same(a: Path, b: Path) -> bool:
        if a.resolve() == b.resolve():
            return True
        try:
            return os.path.samefile(a, b)
        except OSError:  # one of them does not exist (yet)
            return False

    sources = [Path(p) for p in inputs]
    for out in [Path(o) for o in outputs if not str(o).lower().startswith(DICOMWEB_OUTPUT)]:  # a PACS: no file
        for src in sources:
            if same(out, src):
                raise UsageError(f"{option} {out}: {src} is an input of this command and would be replaced; "
                                 "write the labels under another name")
        folder = next(p for p in (out.parent, *out.parent.parents) if p.exists() or p == p.parent)
        if not folder.is_dir():
            raise UsageError(f"{option} {out}: cannot write there: {folder} is a file, not a folder")
        try:  # probe the nearest folder that exists: a refused command leaves no folder behind
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".medseg-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UsageError(f"{option} {out}: cannot write in {folder} ({e.strerror or e})") from None


def add_identity_args(p: argparse.ArgumentParser) -> None:
    """A DICOM-SEG output is de-identified unless the user keeps the identifiers on purpose, as the UI's export
    is (*Keep patient identifiers*, off by default). ``--deidentify`` was the way to ask before it became the
    default; scripts that pass it keep working."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep-identifiers", action="store_true",
                   help="DICOM-SEG output: keep the source's patient and study identity (name, ID, birth date, "
                   "dates, accession number), e.g. for a SEG that goes back to its own PACS. Default: de-identified "
                   "by DICOM PS3.15 Annex E Basic Profile, UIDs kept (docs/reliability.md, De-identification); "
                   "a SEG stored on a PACS (-o dicomweb:...) keeps them, so the PACS files it with its images")
    g.add_argument("--deidentify", action="store_true",
                   help="DICOM-SEG output de-identified (the default for a file; for -o dicomweb:..., a "
                   "de-identified SEG on the PACS is filed apart from its source images)")


def deidentify_hook(args: argparse.Namespace):
    """``data.deidentify.deidentifier`` for this command's ``--output``: a file is de-identified unless
    ``--keep-identifiers``; a PACS (``dicomweb:``) keeps the identity unless ``--deidentify``."""
    from data.deidentify import deidentifier

    return deidentifier(args, to_pacs=str(args.output).lower().startswith(DICOMWEB_OUTPUT))


def add_output_arg(p: argparse.ArgumentParser, formats: str) -> None:
    p.add_argument("--output", "-o", required=True,
                   help=f"output: {formats}, or dicomweb:BASE_URL to store a DICOM-SEG on a PACS over STOW-RS "
                   "(e.g. dicomweb:http://pacs:8042/dicom-web)")


def say(text: str) -> None:
    """A command's result line on stdout, as one line: it names the user's files, and a file name may hold a
    newline or an escape sequence (error lines were already escaped; this line split in two)."""
    from data.untrusted import one_line

    print(one_line(text))


def dicomweb_target(output: str) -> str | None:
    """The PACS base URL of ``--output dicomweb:BASE_URL``, else None (a file name)."""
    if not str(output).lower().startswith(DICOMWEB_OUTPUT):
        return None
    from data.dicomweb import check_base_url

    return check_base_url(str(output)[len(DICOMWEB_OUTPUT):])


def save_labels(
    labels: np.ndarray,
    volume: Volume,
    output: str,
    *,
    label_names: Mapping[int, str],
    model_name: str,
    deidentify=None,
) -> str:
    """Write labels to a file (the name picks the format) or, for ``dicomweb:BASE_URL``, as a DICOM-SEG
    stored on the PACS (written to a temporary file first, removed after; the PACS gets all or nothing).
    Returns where they went."""
    from data.export import export_labels

    base = dicomweb_target(output)
    if base is None:
        path = export_labels(labels, volume, output, label_names=label_names, model_name=model_name,
                             deidentify=deidentify)
        if deidentify is None and path.suffix.lower() == ".dcm":  # kept on purpose: said, as the UI's export says it
            from data.deidentify import patient_data_note

            if note := patient_data_note(path):
                warnings.warn(f"{path}: {note} (--keep-identifiers; without it the export is de-identified)",
                              stacklevel=2)
        return str(path)
    from app.settings import get_settings
    from data.dicomweb import store

    with tempfile.TemporaryDirectory(prefix="medseg-stow-") as tmp:
        seg = export_labels(labels, volume, Path(tmp) / "seg.dcm", label_names=label_names, model_name=model_name,
                            deidentify=deidentify)
        (uid,) = store(base, [seg], timeout=get_settings().dicomweb_timeout_s)
    return f"{base} (DICOM-SEG {uid})"


def load_slice(args: argparse.Namespace) -> tuple[Volume, int, np.ndarray]:
    """Read the study, pick slice K and window it -> (volume, k, (H, W, 3) uint8)."""
    volume = read_input(args.input, args.series, allow_uneven=getattr(args, "allow_uneven", False))
    k = resolve_slice(volume, args.slice)
    return volume, k, slice_to_rgb(volume, k, default_window(volume, args.window))
