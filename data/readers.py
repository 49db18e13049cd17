"""Read studies into a :class:`Volume`: NIfTI, DICOM series (folder), single DICOM, PNG/JPEG.

Every reader keeps the geometry (SimpleITK/ITK LPS convention, see ``data.volume``). A DICOM
series is ordered by position along the slice normal (ImagePositionPatient projected on
row x column of ImageOrientationPatient), never by file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image

from data.volume import SourceRef, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class StudyError(ValueError):
    """A study that cannot be read; the message names the file and what was expected."""


@dataclass(frozen=True)
class SeriesInfo:
    series_instance_uid: str
    modality: str
    description: str
    files: tuple[str, ...]  # ordered along the slice normal


def read_study(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read any supported study. ``series_uid`` picks one series of a folder that holds several."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(IMAGE_SUFFIXES):
        return read_image_file(path)
    if name.endswith(".dcm") or _has_dicom_magic(path):
        return read_dicom_file(path)
    raise StudyError(
        f"{path}: unsupported format; expected a NIfTI (.nii, .nii.gz), a DICOM file or series folder, or PNG/JPEG"
    )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# --- NIfTI ------------------------------------------------------------------------------------
def read_nifti(path: Path) -> Volume:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise StudyError(f"{path}: not a readable NIfTI file ({_first_line(e)})") from e
    if image.GetDimension() > 3:
        raise StudyError(f"{path}: a {image.GetDimension()}D NIfTI; expected a 2D or 3D image (one volume)")
    if image.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise StudyError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1 or 3")
    if 0 in image.GetSize():
        raise StudyError(f"{path}: empty image of size {image.GetSize()}")
    vol = Volume.from_sitk(image, source=SourceRef(path=str(path), format="nifti"))
    return Volume(
        array=vol.array,
        spacing=vol.spacing,
        origin=vol.origin,
        direction=vol.direction,
        modality=guess_modality(vol.array),
        source=vol.source,
    )


def guess_modality(array: np.ndarray) -> str:
    """NIfTI carries no modality: call it CT when it holds Hounsfield-like values below -500."""
    if array.size and np.issubdtype(array.dtype, np.number) and array.ndim == 3 and float(array.min()) <= -500:
        return "CT"
    return "MR"


# --- DICOM ------------------------------------------------------------------------------------
def list_series(folder: str | Path) -> list[SeriesInfo]:
    """All image series in a folder (recursively), each ordered along its slice normal."""
    folder = Path(folder)
    groups: dict[str, list[tuple[float, int, str, pydicom.Dataset]]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (a README, a thumbnail): skip
        if "SeriesInstanceUID" not in ds or getattr(ds, "SOPClassUID", None) == SEG_SOP_CLASS:
            continue
        if "Rows" not in ds:
            continue  # no image (structured report, presentation state)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((_position_along_normal(ds), _instance(ds), str(f), ds))
    series = []
    for uid, items in groups.items():
        items.sort(key=lambda t: (t[0], t[1]))
        first = items[0][3]
        series.append(
            SeriesInfo(
                series_instance_uid=uid,
                modality=str(getattr(first, "Modality", "OT")),
                description=str(getattr(first, "SeriesDescription", "")),
                files=tuple(t[2] for t in items),
            )
        )
    return series


def _position_along_normal(ds: pydicom.Dataset) -> float:
    iop = getattr(ds, "ImageOrientationPatient", None)
    ipp = getattr(ds, "ImagePositionPatient", None)
    if iop is None or ipp is None:
        return float(_instance(ds))
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))


def _instance(ds: pydicom.Dataset) -> int:
    try:
        return int(getattr(ds, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def read_dicom_series(folder: Path, *, series_uid: str | None = None) -> Volume:
    series = list_series(folder)
    if not series:
        raise StudyError(f"{folder}: no DICOM image series found in this folder")
    if series_uid is not None:
        chosen = [s for s in series if s.series_instance_uid == series_uid]
        if not chosen:
            raise StudyError(f"{folder}: no series {series_uid}; it holds {', '.join(s.series_instance_uid for s in series)}")
        info = chosen[0]
    elif len(series) > 1:
        listing = "; ".join(f"{s.series_instance_uid} ({s.modality}, {len(s.files)} files)" for s in series)
        raise StudyError(f"{folder}: holds {len(series)} series, pick one with --series UID: {listing}")
    else:
        info = series[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise StudyError(f"{folder}: the DICOM series could not be read ({_first_line(e)})") from e
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in info.files]
    first = heads[0]
    source = SourceRef(
        path=str(folder),
        format="dicom-series",
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "")) or None,
        series_instance_uid=info.series_instance_uid,
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")) or None,
        sop_instance_uids=tuple(str(h.SOPInstanceUID) for h in heads),
        sop_class_uid=str(getattr(first, "SOPClassUID", "")) or None,
        files=info.files,
    )
    return Volume.from_sitk(image, modality=info.modality, source=source)


def read_dicom_file(path: Path) -> Volume:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise StudyError(f"{path}: not a readable DICOM file ({_first_line(e)})") from e
    if getattr(ds, "SOPClassUID", None) == SEG_SOP_CLASS:
        raise StudyError(f"{path}: a DICOM-SEG (segmentation), not an image; open it as labels")
    if "PixelData" not in pydicom.dcmread(path, specific_tags=["PixelData"]) and "Rows" not in ds:
        raise StudyError(f"{path}: DICOM file without pixel data; expected an image")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise StudyError(f"{path}: DICOM pixel data could not be decoded ({_first_line(e)})") from e
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        pass  # single frame read as 3D: keep
    source = SourceRef(
        path=str(path),
        format="dicom",
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "")) or None,
        series_instance_uid=str(getattr(ds, "SeriesInstanceUID", "")) or None,
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "")) or None,
        sop_instance_uids=(str(getattr(ds, "SOPInstanceUID", "")),),
        sop_class_uid=str(getattr(ds, "SOPClassUID", "")) or None,
        files=(str(path),),
    )
    return Volume.from_sitk(image, modality=str(getattr(ds, "Modality", "OT")), source=source)


# --- PNG / JPEG -------------------------------------------------------------------------------
def read_image_file(path: Path) -> Volume:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
                mode = "RGB"
            array = np.asarray(im)
    except Exception as e:
        raise StudyError(f"{path}: not a readable PNG/JPEG image ({_first_line(e)})") from e
    if array.ndim == 3 and mode != "RGB":
        array = array[..., :3]
    if 0 in array.shape[:2]:
        raise StudyError(f"{path}: empty image of size {array.shape}")
    fmt = "png" if path.suffix.lower() == ".png" else "jpeg"
    return Volume(array=array[None], modality="OT", source=SourceRef(path=str(path), format=fmt))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:200] if text else type(e).__name__
