"""One entry point for saving a label volume: the output name picks the format.

``.nii`` / ``.nii.gz`` -> a NIfTI label map on the source grid (any source);
``.dcm`` -> a DICOM-SEG referencing the source series (DICOM sources only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from data.dicom_seg import Deidentifier, DicomSegError, write_dicom_seg
from data.volume import Volume
from data.writers import write_label_nifti

EXPORT_SUFFIXES = (".nii", ".nii.gz", ".dcm")


class ExportError(ValueError):
    """A label volume that cannot be written under this name; the message says what to use."""


def export_format(path: str | Path) -> str:
    """'nifti' or 'dicom-seg' from the file name; ExportError naming the accepted suffixes otherwise."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".dcm"):
        return "dicom-seg"
    raise ExportError(f"{path}: unknown output format; name it .nii.gz (NIfTI labels) or .dcm (DICOM-SEG)")


def export_labels(
    labels: np.ndarray,
    volume: Volume,
    path: str | Path,
    label_names: Mapping[int, str] | None = None,
    colours: Mapping[int, Sequence[int]] | None = None,
    model_name: str = "litemedsam",
    *,
    deidentify: Deidentifier | None = None,
) -> Path:
    """Write ``labels`` ((K, H, W) integers on ``volume``'s grid, 0 = background) to ``path``.
    A DICOM-SEG also takes a (S, K, H, W) stack of overlapping 0/1 masks (see ``write_dicom_seg``).

    NIfTI keeps the label values; DICOM-SEG writes one segment per value with its name, colour
    and the model that made it (see ``data.dicom_seg``). Raises ExportError when the format does
    not fit the source (DICOM-SEG from a NIfTI or PNG study).
    """
    fmt = export_format(path)
    labels = np.asarray(labels)
    if labels.shape[-3:] != volume.array.shape[:3] or labels.ndim != (4 if labels.ndim == 4 and fmt == "dicom-seg" else 3):
        raise ExportError(f"{path}: label array {labels.shape} does not match the study grid {volume.array.shape[:3]}")
    if fmt == "nifti":
        return write_label_nifti(labels, volume, path)
    if volume.source.format not in ("dicom-series", "dicom"):
        raise ExportError(
            f"{path}: DICOM-SEG needs a DICOM study, this one is {volume.source.format or 'not from a file'}; "
            "use a .nii.gz output name"
        )
    try:
        return write_dicom_seg(
            labels, volume, path, label_names=label_names, colours=colours, model_name=model_name, deidentify=deidentify
        )
    except DicomSegError as e:
        raise ExportError(str(e)) from e
