"""Read studies into a :class:`Volume`: NIfTI, DICOM series (folder), single DICOM, PNG/JPEG.

Every reader keeps the geometry (SimpleITK/ITK LPS convention, see ``data.volume``). A DICOM
series is ordered by position along the slice normal (ImagePositionPatient projected on
row x column of ImageOrientationPatient), never by file name.

Untrusted input: every reader raises :class:`StudyError` (never another exception) for a file
it cannot use. Sizes are checked from the header before pixels are decoded (``max_voxels``,
default ``$MEDSEG_MAX_VOXELS`` or 2**28); a DICOM series with a missing slice, two images at one
position or uneven slice spacing is refused (stacking it would give a wrong slice spacing);
NaN/-Inf voxels become the smallest finite value and +Inf the largest, with a warning.
"""

from __future__ import annotations

import os
import warnings
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
DEFAULT_MAX_VOXELS = 2**28  # 512 x 512 x 1024: a long CT; ~1 GiB as float32 while windowing
SPACING_TOLERANCE = 0.02  # relative deviation of one slice gap from the median gap still called even
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class StudyError(ValueError):
    """A study that cannot be read; the message names the file and what was expected."""


class StudyWarning(UserWarning):
    """A study that was read with a repair the user should know about (e.g. NaN voxels replaced)."""


def voxel_limit(max_voxels: int | None = None) -> int:
    """``max_voxels``, else ``$MEDSEG_MAX_VOXELS``, else DEFAULT_MAX_VOXELS (see app.settings)."""
    if max_voxels is not None:
        return int(max_voxels)
    text = os.environ.get("MEDSEG_MAX_VOXELS", "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_VOXELS
    except ValueError:
        raise StudyError(f"MEDSEG_MAX_VOXELS={text!r}: expected a whole number of voxels") from None


def _check_voxels(path: Path, shape: tuple[int, ...], limit: int) -> None:
    shape = tuple(int(n) for n in shape)
    if any(n <= 0 for n in shape):
        raise StudyError(f"{path}: empty image of size {shape}")
    if int(np.prod(shape, dtype=np.float64)) > limit:
        raise StudyError(
            f"{path}: {' x '.join(map(str, shape))} voxels is more than the limit of {limit} "
            "(raise MEDSEG_MAX_VOXELS, or crop/downsample the study)"
        )


@dataclass(frozen=True)
class SeriesInfo:
    series_instance_uid: str
    modality: str
    description: str
    files: tuple[str, ...]  # ordered along the slice normal


def read_study(path: str | Path, *, series_uid: str | None = None, max_voxels: int | None = None) -> Volume:
    """Read any supported study. ``series_uid`` picks one series of a folder that holds several.

    ``max_voxels``: refuse larger studies before decoding them (default: :func:`voxel_limit`).
    """
    path = Path(path)
    limit = voxel_limit(max_voxels)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # SimpleITK aborts the whole process on such a name; refuse it here instead
        raise StudyError(f"{str(path)!r}: the file name is not valid UTF-8; rename the file") from None
    if not path.exists():
        raise StudyError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, max_voxels=limit)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, max_voxels=limit)
    if name.endswith(IMAGE_SUFFIXES):
        return read_image_file(path, max_voxels=limit)
    if name.endswith(".dcm") or _has_dicom_magic(path):
        return read_dicom_file(path, max_voxels=limit)
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
def read_nifti(path: Path, *, max_voxels: int | None = None) -> Volume:
    shape = _nifti_shape(path)
    if shape is not None:  # header readable: check the size before decoding anything
        if len(shape) > 3 and any(n != 1 for n in shape[3:]):
            raise StudyError(f"{path}: a {len(shape)}D NIfTI of size {shape}; expected a 2D or 3D image (one volume)")
        _check_voxels(path, shape, voxel_limit(max_voxels))
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
        array=_finite(_raw_non_finite(vol.array, path), path),
        spacing=vol.spacing,
        origin=vol.origin,
        direction=vol.direction,
        modality=guess_modality(vol.array),
        source=vol.source,
    )


def _nifti_shape(path: Path) -> tuple[int, ...] | None:
    """The image size from the NIfTI header (nibabel reads the header only), None if unreadable."""
    import nibabel

    try:
        return tuple(int(n) for n in nibabel.load(str(path)).header.get_data_shape())
    except Exception:  # not a NIfTI at all: SimpleITK's error below names it
        return None


def _raw_non_finite(array: np.ndarray, path: Path) -> np.ndarray:
    """ITK's NIfTI reader turns NaN/Inf into 0 silently (0 HU is water): put them back from the raw data."""
    import nibabel

    if not np.issubdtype(array.dtype, np.floating):
        return array
    try:
        raw = np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception:
        return array
    if raw.size != array.size or not np.issubdtype(raw.dtype, np.floating):
        return array
    raw = raw.T.reshape(array.shape)  # nibabel (i, j, k) -> ours [k, j, i]
    bad = ~np.isfinite(raw)
    if not bad.any():
        return array
    out = array.copy()
    out[bad] = raw[bad]
    return out


def _finite(array: np.ndarray, path: Path) -> np.ndarray:
    """NaN/-Inf -> the smallest finite value, +Inf -> the largest, with a StudyWarning; all-NaN is an error."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    if not bad.any():
        return array
    good = array[~bad]
    if good.size == 0:
        raise StudyError(f"{path}: every voxel is NaN or infinite; nothing to show")
    low, high = good.min(), good.max()
    fixed = np.where(np.isposinf(array), high, np.where(bad, low, array)).astype(array.dtype)
    warnings.warn(
        f"{path}: {int(bad.sum())} NaN/infinite voxels set to the finite minimum {low:g} (+Inf to the maximum {high:g})",
        StudyWarning,
        stacklevel=3,
    )
    return fixed


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


def read_dicom_series(folder: Path, *, series_uid: str | None = None, max_voxels: int | None = None) -> Volume:
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
    for f in info.files:
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:  # SimpleITK aborts the process on such a name
            raise StudyError(f"{f!r}: the file name is not valid UTF-8; rename the file") from None
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in info.files]
    first = heads[0]
    _check_voxels(folder, (len(heads), _int(first, "Rows"), _int(first, "Columns")), voxel_limit(max_voxels))
    _check_even_spacing(folder, info.files, heads)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise StudyError(f"{folder}: the DICOM series could not be read ({_first_line(e)})") from e
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


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(getattr(ds, keyword, default) or default)
    except (TypeError, ValueError):
        return default


def _check_even_spacing(folder: Path, files: tuple[str, ...], heads: list[pydicom.Dataset]) -> None:
    """Refuse a series whose slices are not evenly spaced: a missing slice, a duplicate, uneven gaps.

    SimpleITK would only warn and stack them at the first gap's spacing, misplacing every slice after
    it. Gaps are compared as 3D vectors (ImagePositionPatient steps), so a slice shifted in-plane counts too.
    """
    if len(heads) < 3 or any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h for h in heads):
        return
    try:
        ipp = np.array([[float(x) for x in h.ImagePositionPatient] for h in heads])
        iop = np.array([[float(x) for x in h.ImageOrientationPatient] for h in heads])
        positions = np.array([_position_along_normal(h) for h in heads])
    except (TypeError, ValueError, IndexError):
        raise StudyError(f"{folder}: unreadable ImagePositionPatient/ImageOrientationPatient in the series") from None
    if ipp.shape[1] != 3 or iop.shape[1] != 6:
        raise StudyError(f"{folder}: ImagePositionPatient needs 3 values and ImageOrientationPatient 6")
    tilted = np.abs(iop - iop[0]).max(axis=1) > 1e-3
    if tilted.any():
        raise StudyError(f"{folder}: {Path(files[int(np.argmax(tilted))]).name} is oriented unlike the others; "
                         "the series is not one stack of parallel slices")
    steps = np.diff(ipp, axis=0)
    typical = np.median(steps, axis=0)
    size = float(np.linalg.norm(typical))
    tol = max(SPACING_TOLERANCE * size, 1e-3)
    for n, step in enumerate(steps):
        if np.linalg.norm(step - typical) <= tol:
            continue
        a, b = Path(files[n]).name, Path(files[n + 1]).name
        where = f"between {a} ({positions[n]:.2f} mm) and {b} ({positions[n + 1]:.2f} mm)"
        if np.linalg.norm(step) <= tol:
            raise StudyError(f"{folder}: two images at the same position {where}; remove the duplicate or pick one series")
        missing = int(round(float(np.dot(step, typical)) / size**2)) - 1 if size > tol else 0
        if missing >= 1 and np.linalg.norm(step - (missing + 1) * typical) <= tol * (missing + 1):
            raise StudyError(
                f"{folder}: {missing} slice(s) missing {where} (the other slices are {size:.3g} mm apart); "
                "add the missing file(s) or open the complete series"
            )
        raise StudyError(
            f"{folder}: uneven slice spacing, a step of {np.linalg.norm(step):.3g} mm {where} while the others are "
            f"{size:.3g} mm; resample the series to even spacing (e.g. in 3D Slicer) before opening it"
        )


def read_dicom_file(path: Path, *, max_voxels: int | None = None) -> Volume:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise StudyError(f"{path}: not a readable DICOM file ({_first_line(e)})") from e
    if getattr(ds, "SOPClassUID", None) == SEG_SOP_CLASS:
        raise StudyError(f"{path}: a DICOM-SEG (segmentation), not an image; open it as labels")
    try:
        pixels = pydicom.dcmread(path, specific_tags=list(PIXEL_DATA_TAGS))
    except Exception as e:
        raise StudyError(f"{path}: the DICOM file is damaged or truncated ({_first_line(e)})") from e
    tag = next((t for t in PIXEL_DATA_TAGS if t in pixels), None)
    if tag is None or "Rows" not in ds:
        raise StudyError(f"{path}: DICOM file without pixel data; expected an image")
    frames = _int(ds, "NumberOfFrames", 1)
    _check_voxels(path, (frames, _int(ds, "Rows"), _int(ds, "Columns")), voxel_limit(max_voxels))
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:  # uncompressed: the byte count is known
        expected = frames * _int(ds, "Rows") * _int(ds, "Columns") * _int(ds, "SamplesPerPixel", 1) * (
            _int(ds, "BitsAllocated", 16) // 8
        )
        try:
            have = len(pixels[tag].value)
        except Exception:
            have = 0
        if have < expected:
            raise StudyError(f"{path}: truncated DICOM file: {have} of {expected} bytes of pixel data")
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
def read_image_file(path: Path, *, max_voxels: int | None = None) -> Volume:
    limit = voxel_limit(max_voxels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise StudyError(f"{path}: image too large to open safely ({_first_line(e)})") from e
    except Exception as e:
        raise StudyError(f"{path}: not a readable PNG/JPEG image ({_first_line(e)})") from e
    try:
        with im:
            _check_voxels(path, (im.size[1], im.size[0]), limit)
            im.load()
            mode = im.mode
            if mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
                mode = "RGB"
            array = np.asarray(im)
    except StudyError:
        raise
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
