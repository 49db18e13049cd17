"""Read studies into a :class:`Volume`: NIfTI, DICOM series (folder), single DICOM, PNG/JPEG.

Every reader keeps the geometry (SimpleITK/ITK LPS convention, see ``data.volume``). A DICOM
series is ordered by position along the slice normal (ImagePositionPatient projected on
row x column of ImageOrientationPatient), never by file name.

Untrusted input (issue 23): every reader raises :class:`StudyError` (never another exception,
never a signal) for a file it cannot use, and nothing native sees a file before it is checked:

* only regular files, and links only inside their folder (``data.untrusted``);
* DICOM: the tag stream is walked in pure Python first (``data.dicom_scan``: nesting depth,
  item count, header size, deflated data inflated in capped steps, every length against the
  bytes present), then the pixel bytes present must match Rows x Columns x samples x bits x frames;
* NIfTI: the header against the bytes present, gzip streams counted with a cap, spacing and
  orientation valid, sform/qform chosen by nibabel's rule (``data.nifti_check``);
* sizes from the header before any pixel is decoded (``max_voxels``, default
  ``$MEDSEG_MAX_VOXELS`` or 2**28);
* a DICOM series must prove its geometry (``data.series_geometry``): a missing or invalid
  position/orientation, two images at one position, mixed orientation or uneven spacing is
  refused; ``allow_uneven=True`` opens uneven spacing at the mean step with a note.

NaN/-Inf voxels become the smallest finite value and +Inf the largest, with a warning. Where the
geometry came from, and any repair, is in ``Volume.source.geometry`` / ``Volume.source.notes``.
"""

from __future__ import annotations

import math
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from data.dicom_pixels import HU_TYPES, check_pixels, check_rescale, rescale_of, scan_checked
from data.dicom_scan import NATIVE_SYNTAXES
from data.dicomdir import missing_from_index
from data.limits import DEFAULT_MAX_VOXELS
from data.nifti_check import NiftiCheckError, check_nifti
from data.pictures import read_image_file
from data.series_geometry import (ONE_PATIENT_AND_STUDY, SAME_IN_EVERY_SLICE, GeometryError, UnevenSpacingError,
                                  check_pixel_spacing, check_series_geometry, check_spacing_between_slices,
                                  display_names, frame_geometry, frame_heads, numbers, one_offset_dose, orientation,
                                  position_along_normal, require_pixel_spacing, require_whole_plane, stack_grid)
from data.study_errors import (LOCALIZER_ADVICE, SERIES_ADVICE, SeveralSeriesError, StudyError, StudyWarning,
                               UnevenStudyError, check_voxels, first_line, header_int, voxel_limit)
from data.untrusted import UntrustedFileError, check_regular, native_stderr_captured, one_line
from data.volume import FRAMES_NOT_PLACED, SPLIT_ENHANCED, THICKNESS_UNKNOWN, SourceRef, Volume

# pydicom checks a value against its VR when it is first used, after the read, and warns naming no file ("The value
# length (66) exceeds the maximum length of 64 allowed for VR UI. Please see <url>"): such notes reached the CLI's
# and the UI's warning lines about the study opened (session 21). The values are read alike; the checks here name the
# fields they need (and the DICOM-SEG writer checks what it copies, ``data.dicom_seg``).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# what a DICOM-SEG opened as a study is, and what to open: "open it as labels" named a step nothing in medseg offers
SEG_NOT_AN_IMAGE = ("a DICOM-SEG (segmentation), not an image: open the image series it was drawn on (medseg writes "
                    "DICOM-SEG but does not read labels back from one)")
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
__all__ = ["DEFAULT_MAX_VOXELS", "SeveralSeriesError", "StudyError", "StudyWarning", "UnevenStudyError", "read_study",
           "list_series", "voxel_limit"]


def _geometry_refusal(where: object, error: GeometryError) -> StudyError:
    return (UnevenStudyError if isinstance(error, UnevenSpacingError) else StudyError)(f"{where}: {error}")


@dataclass(frozen=True)
class SeriesInfo:
    series_instance_uid: str
    modality: str
    description: str
    files: tuple[str, ...]  # ordered along the slice normal
    localizer: bool = False  # ImageType holds LOCALIZER: a scout / topogram, not a cross-section of the volume


def read_study(
    path: str | Path, *, series_uid: str | None = None, max_voxels: int | None = None, allow_uneven: bool = False
) -> Volume:
    """Read any supported study. ``series_uid`` picks one series of a folder that holds several.

    ``max_voxels``: refuse larger studies before decoding them (default: :func:`voxel_limit`).
    ``allow_uneven``: open a DICOM series with uneven slice spacing at its mean spacing, with a note
    in ``source.notes`` and a StudyWarning, instead of refusing it.
    """
    path = Path(path)
    limit = voxel_limit(max_voxels)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # SimpleITK aborts the whole process on such a name; refuse it here instead
        raise StudyError(f"{str(path)!r}: the file name is not valid UTF-8; rename the file") from None
    if "\x00" in str(path):  # no file has such a name: the OS refused it with a bare "embedded null byte" (session 22)
        raise StudyError(f"{str(path)!r}: the path holds a NUL byte (\\x00), which no file name can; give the file's "
                         "path as it is") from None
    try:
        check_regular(path, allow_dir=True)
    except UntrustedFileError as e:
        raise StudyError(str(e)) from None
    try:
        volume = _read_by_name(path, series_uid=series_uid, limit=limit, allow_uneven=allow_uneven)
    except StudyError as e:
        hint = None if type(e) is not StudyError or path.is_dir() else _misnamed(path)
        if hint is None:
            raise
        raise StudyError(f"{e}; {hint}") from e
    if series_uid is not None and not path.is_dir() and volume.source.series_instance_uid != series_uid:
        # a file holds one study: the series asked for was ignored without a word, and another one opened (session 23)
        own = volume.source.series_instance_uid
        raise StudyError(f"{path}: series {series_uid} was asked for, but this file is "
                         f"{f'of series {own}' if own else 'no part of a DICOM series'}; a series is picked among "
                         "those of a folder: give the folder, or leave the series out")
    return volume


def _read_by_name(path: Path, *, series_uid: str | None, limit: int, allow_uneven: bool) -> Volume:
    """``read_study``'s dispatch: the reader its name (or, without a known suffix, the DICM marker) calls for."""
    try:
        name = path.name.lower()
        if path.is_dir():
            volume = read_dicom_series(path, series_uid=series_uid, max_voxels=limit, allow_uneven=allow_uneven)
        elif name.endswith(NIFTI_SUFFIXES):
            volume = read_nifti(path, max_voxels=limit)
        elif name.endswith(IMAGE_SUFFIXES):
            return read_image_file(path, max_voxels=limit)
        elif name.endswith(".dcm") or has_dicom_magic(path):
            volume = read_dicom_file(path, max_voxels=limit, allow_uneven=allow_uneven)
        else:
            volume = None
        if volume is not None:
            check_geometry_range(path, volume)
            return volume
    except StudyError:
        raise
    except (RecursionError, MemoryError, OSError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RuntimeError, ArithmeticError, EOFError, NotImplementedError) as e:
        # a failure no check above foresaw: still one clear error for this file, never a traceback
        raise StudyError(f"{path}: could not be read ({type(e).__name__}: {first_line(e)})") from e
    raise StudyError(
        f"{path}: unsupported format; expected a NIfTI (.nii, .nii.gz), a DICOM file or series folder, or PNG/JPEG"
    )


CONTENT_KINDS = {"dicom": ("a DICOM file", ".dcm"), "nifti": ("an uncompressed NIfTI", ".nii"),
                 "nifti-gz": ("a gzip-compressed NIfTI", ".nii.gz"), "png": ("a PNG image", ".png"),
                 "jpeg": ("a JPEG image", ".jpg"), "zip": ("a ZIP archive", ".zip"),
                 "dicom-gz": ("a gzip-compressed DICOM file", ".dcm"), "tar": ("a tar archive", ".tar"),
                 "tar-gz": ("a gzip-compressed tar archive", ".tar.gz"),
                 "gz-gz": ("gzip-compressed twice (a gzip file inside a gzip file)", ".gz"),
                 "zip-gz": ("a gzip-compressed ZIP archive", ".zip")}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record


def _content_kind(path: Path) -> str | None:
    """What ``path``'s first bytes are (a key of CONTENT_KINDS), None when none of those."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(352)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:  # the first 352 bytes only: a bomb costs nothing here
                inner, kind = g.read(352), "nifti-gz"
        else:
            inner, kind = head, "nifti"
    except (OSError, EOFError, zlib.error):
        return None
    if len(inner) >= 348 and inner[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and inner[344:347] == b"n+1":
        return kind
    if kind == "nifti-gz" and inner[128:132] == b"DICM":  # scan.dcm.gz: a PACS or mail export's compressed image
        return "dicom-gz"
    if kind == "nifti-gz" and inner[:2] == b"\x1f\x8b":  # gzip run on a .nii.gz again (session 26)
        return "gz-gz"
    if kind == "nifti-gz" and inner[:4] in ZIP_MAGIC:
        return "zip-gz"
    if inner[257:262] == b"ustar":  # POSIX and GNU tar headers: a Linux or macOS export of a series folder
        return "tar-gz" if kind == "nifti-gz" else "tar"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in ZIP_MAGIC:
        return "zip"
    return None


def _twice_gzipped_nifti(path: Path) -> bool:
    """Whether a file gzipped twice holds a NIfTI under its second layer (its first 352 bytes only)."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as outer, gzip.open(outer, "rb") as inner:
            head = inner.read(352)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) >= 348 and head[344:347] == b"n+1"


def _misnamed(path: Path) -> str | None:
    """For a refused file whose bytes are another supported format than its name says (a NIfTI saved as scan.dcm,
    a DICOM as scan.nii.gz): what they are and the name to give it. Before, the refusal spoke only of the format the
    name promised ("no DICM marker at byte 128", "damaged gzip stream: Not a gzipped file"), as if the file were
    damaged."""
    kind = _content_kind(path)
    name = path.name.lower()
    if kind is None:
        return None
    what, suffix = CONTENT_KINDS[kind]
    if kind == "dicom-gz":  # no name opens it: DICOM readers take the file itself, never a gzip of it
        return f"its bytes are {what}: decompress it (gunzip) and open the {suffix} file it holds"
    if kind == "gz-gz":  # said "no NIfTI header (sizeof_hdr is neither 348 nor 540)", as if damaged (session 26)
        once = "once.nii.gz" if _twice_gzipped_nifti(path) else "once.gz"
        return (f"its bytes are {what}: decompress one layer (e.g. gunzip -c {path.name} > {once}) and open what "
                "that gives")
    if kind == "zip-gz":
        return f"its bytes are {what}: decompress it (gunzip) and open the folder the zip holds, or upload the zip"
    if kind in ("tar", "tar-gz"):  # said only "unsupported format", though the UI takes a zip of the same folder
        return f"its bytes are {what}: unpack it (tar xf) and open the folder or file it holds, or upload a zip of it"
    if name.endswith(IMAGE_SUFFIXES if kind in ("png", "jpeg") else suffix):  # x.nii.gz does not end in .nii
        return None  # the name says what the bytes are: the file is damaged, not misnamed
    if kind == "zip":  # a PACS or mail export saved under the name of its first image
        return (f"its bytes are {what}, not what its name says: unpack it and open the folder, or rename it to end "
                f"in {suffix} and upload that")
    return f"its bytes are {what}, not what its name says: rename it to end in {suffix}"


DICOM_FILE_SUFFIXES = (".dcm", ".dicom", ".ima")


def _not_dicom_named_dicom(folder: Path) -> list[str]:
    """The files of ``folder`` named as DICOM images that the series reader skips as not DICOM (under 132 bytes or no
    DICM marker), each with what it is: a slice cut to 0 bytes or replaced by a ZIP was left out without a word, and
    the refusal that followed asked to "add the missing file" the user could see in the folder."""
    found = []
    for f in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in f.relative_to(folder).parts)
        if hidden or not f.name.lower().endswith(DICOM_FILE_SUFFIXES) or f.is_symlink() or not f.is_file():
            continue  # hidden: a Mac's ._IM0001.dcm resource forks ride along in zips
        size = f.stat().st_size
        if size >= 132 and has_dicom_magic(f):
            continue
        kind = _content_kind(f)
        what = "0 bytes" if size == 0 else CONTENT_KINDS[kind][0] if kind else f"{size} bytes without the DICM marker"
        found.append(f"{f.relative_to(folder)} ({what})")
    return found


def _with_unreadable_named(folder: Path, error: StudyError) -> StudyError:
    """``error`` (a series refusal) with the files named as DICOM that are not, which may be its missing slices."""
    skipped = _not_dicom_named_dicom(folder)
    if not skipped:
        return error
    shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return type(error)(f"{error}; note: {shown} in the folder {'is' if len(skipped) == 1 else 'are'} named as DICOM "
                       "but not DICOM, perhaps the missing slice(s): export them again")


# What a label map's float32 geometry holds to the 0.01 mm that labels are matched with: a voxel of 1 nm to 100 m,
# an origin within 100 m of the scanner's (float32 keeps 0.008 mm there). Patients lie within a few metres.
SPACING_RANGE_MM = (1e-6, 1e5)
MAX_ORIGIN_MM = 1e5


def check_geometry_range(path: str | Path, volume: Volume) -> None:
    """StudyError for a geometry no NIfTI label map can hold: it opened, and the label map written of it had an
    infinite origin or a zero spacing that every reader (ours too) refuses, the annotation written where none can
    read it (an absurd ImagePositionPatient 1e300 or PixelSpacing 1e-30)."""
    def shown(values) -> str:
        return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"

    lo, hi = SPACING_RANGE_MM
    if not all(lo <= float(s) <= hi for s in volume.spacing):
        fault = f"voxel spacing {shown(volume.spacing)} mm is outside {lo:g}..{hi:g} mm"
    elif not all(abs(float(o)) <= MAX_ORIGIN_MM for o in volume.origin):
        fault = f"origin {shown(volume.origin)} mm is more than {MAX_ORIGIN_MM:g} mm (100 m) from the scanner's origin"
    else:
        return
    check = ("check the NIfTI's xyzt_units: it says " + volume.source.geometry.split("; ")[-1].split(" (")[0]
             + ", read as ITK and 3D Slicer read them, and a file in mm under that code is 1000 times off"
             if volume.source is not None and volume.source.geometry.endswith("scaled to mm")
             else "check ImagePositionPatient / PixelSpacing, or the NIfTI's sform and pixdim")
    raise StudyError(f"{path}: {fault}; a label map cannot hold such a geometry ({check})")


def has_dicom_magic(path: Path) -> bool:
    """The DICM marker at byte 128 (a DICOM Part 10 file, whatever its name)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# ITK picks a reader by asking each of its ~20 ImageIOs whether it can read the file, BMP, BioRad, Bruker and
# HDF5 among them before GDCM and NIfTI: a DICOM whose free 128-byte preamble held a BMP header opened as that
# 4 x 4 BMP with the DICOM's identity, and HDF5's parser ran on NIfTI extension bytes. The checked format only:
NIFTI_IO, DICOM_IO = "NiftiImageIO", "GDCMImageIO"


def _itk(call, *args):
    """Run a SimpleITK read with ITK's warning blocks off and native stderr captured (one-line errors)."""
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    with native_stderr_captured():
        return call(*args)


# --- NIfTI ------------------------------------------------------------------------------------
def read_nifti(path: Path, *, max_voxels: int | None = None) -> Volume:
    """A NIfTI file, checked by ``data.nifti_check`` before ITK decodes it (see the module doc)."""
    try:
        facts = check_nifti(path, max_voxels=voxel_limit(max_voxels))
    except NiftiCheckError as e:
        raise StudyError(f"{path}: {e}") from None
    if len(facts.shape) == 1:  # ITK said "The maximum supported IO dimension is 5.", which names nothing (session 21)
        raise StudyError(f"{path}: a 1D NIfTI of size {facts.shape} (one row of values); expected a 2D or 3D image")
    try:
        image = _nifti_by_nibabel(path) if len(facts.shape) == 2 or facts.version == 2 else _read_itk_nifti(path)
    except RuntimeError as e:
        raise StudyError(f"{path}: not a readable NIfTI file ({first_line(e)})") from e
    if image.GetDimension() > 3:
        raise StudyError(f"{path}: a {image.GetDimension()}D NIfTI; expected a 2D or 3D image (one volume)")
    if image.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise StudyError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1 or 3")
    if 0 in image.GetSize():
        raise StudyError(f"{path}: empty image of size {image.GetSize()}")
    vol = Volume.from_sitk(image, source=SourceRef(path=str(path), format="nifti", geometry=facts.geometry,
                                                   nifti_codes=facts.codes))
    if not _same_geometry(vol, facts):
        # ITK chose the other transform (it prefers the qform when the two disagree): apply nibabel's rule. A 2D
        # NIfTI too: ITK keeps only the affine's 2 x 2 corner, so a slice saved with its 3D affine (nibabel writes
        # dim[0] 2 for a 2D array) lost its height (z 30 mm read as 0) and a coronal one its orientation
        vol = replace(vol, spacing=facts.spacing, origin=facts.origin, direction=facts.direction)
    return replace(
        vol,
        array=_finite(_raw_non_finite(vol.array, path), path),
        modality=guess_modality(vol.array),
    )


ITK_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".NII", ".NII.GZ")  # ITK's nifti1_io takes a suffix in one case only


def _read_itk_nifti(path: Path) -> sitk.Image:
    """ITK's read of a NIfTI, through a link with a lower-case suffix where the name's is in mixed case. Why: medseg
    takes a suffix in any case (and writes ``-o labels.nii.GZ``), but nifti1_io refuses '.nii.GZ' or '.Nii' ("is not
    recognized as a NIFTI file"), so such a file, its own label maps included, was refused as not a readable NIfTI.
    The link lives in a private temporary folder; ITK's messages name the file, not the link."""
    if path.name.endswith(ITK_NIFTI_SUFFIXES):
        return _itk(sitk.ReadImage, str(path), sitk.sitkUnknown, NIFTI_IO)
    with tempfile.TemporaryDirectory(prefix="medseg-nifti-") as folder:
        link = Path(folder) / ("image.nii.gz" if path.name.lower().endswith(".gz") else "image.nii")
        link.symlink_to(path.resolve())
        try:
            return _itk(sitk.ReadImage, str(link), sitk.sitkUnknown, NIFTI_IO)
        except RuntimeError as e:
            raise RuntimeError(str(e).replace(str(link), str(path))) from None


def _nifti_by_nibabel(path: Path) -> sitk.Image:
    """A 2D NIfTI's pixels, or a NIfTI-2's voxels (scaled as ITK scales them), on an identity grid that ``read_nifti``
    replaces with the checked affine. ITK keeps only a 2D image's affine's 2 x 2 corner: a coronal or sagittal slice
    saved with its 3D affine (nibabel writes dim[0] 2 for a 2D array) has a singular one there and failed ("Bad
    direction, determinant is 0", shown as "not a readable NIfTI file (-0 -0)"); an axial one lost its height. ITK here
    reads no NIfTI-2 ("not recognized as a NIFTI file"), so a valid NIfTI-2 was refused, told to convert it (session
    26: it opens, checked as a NIfTI-1 is)."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # the header was checked; a damaged body is this file's fault, on one line
        raise RuntimeError(first_line(e)) from e
    if data.dtype.names:  # RGB24 / RGBA32: a record per voxel
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
    if data.dtype == np.float64 and image.get_data_dtype().kind in "iuf" and image.get_data_dtype().itemsize <= 4:
        data = data.astype(np.float32)  # scaled: float32, as ITK reads it
    rgb = data.ndim > len(image.shape)  # the records' channels, stacked last
    spatial = data.shape[:data.ndim - rgb]
    while len(spatial) > 3 and spatial[-1] == 1:  # (i, j, k, 1): one volume (``check_nifti`` refused the rest)
        spatial = spatial[:-1]
    data = data.reshape(spatial + data.shape[data.ndim - rgb:])
    axes = (*reversed(range(len(spatial))), *([len(spatial)] if rgb else []))  # ITK's order: k, j, i (, channel)
    return sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(axes)), isVector=bool(rgb))


def _same_geometry(vol: Volume, facts) -> bool:
    return (
        np.allclose(vol.spacing, facts.spacing, rtol=1e-4, atol=1e-4)
        and np.allclose(vol.origin, facts.origin, rtol=1e-4, atol=1e-3)
        and np.allclose(vol.direction, facts.direction, atol=1e-4)
    )


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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite(array: np.ndarray, path: Path) -> np.ndarray:
    """NaN/-Inf -> the smallest finite value, +Inf -> the largest, with a StudyWarning; all-NaN is an error, and so
    are finite values past float32's range, which the viewer's copy is kept in (they would show as infinite)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    good = array[~bad] if bad.any() else array
    if good.size and array.dtype.itemsize > 4 and max(-float(good.min()), float(good.max())) > FLOAT32_MAX:
        # an NRRD or NIfTI of doubles holding 1e300 opened as stored, its viewer copy infinite (session 25's leftover)
        raise StudyError(f"{path}: values {float(good.min()):.4g} to {float(good.max()):.4g}, past float32's range "
                         "(+-3.4e+38), in which the viewer is sent the image (they would show as infinite); expected "
                         "values a 32-bit float holds: rescale the image")
    if not bad.any():
        return array
    if good.size == 0:
        raise StudyError(f"{path}: every voxel is NaN or infinite; nothing to show")
    low, high = good.min(), good.max()
    fixed = np.where(np.isposinf(array), high, np.where(bad, low, array)).astype(array.dtype)
    warnings.warn(
        one_line(f"{path}: {int(bad.sum())} NaN/infinite voxels set to the finite minimum {low:g} "
                 f"(+Inf to the maximum {high:g})"),
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
def _read_header(path: Path) -> pydicom.Dataset:
    """pydicom's header read, after ``scan_checked`` proved the tag stream sound."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on odd values: not the user's concern here
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise StudyError(f"{path}: not a readable DICOM file ({first_line(e)})") from e


def list_series(folder: str | Path, *, max_voxels: int | None = None,
                listing: list[Path] | None = None) -> list[SeriesInfo]:
    """All image series in a folder (recursively), each ordered along its slice normal; ``listing``: the folder's
    paths as ``sorted(folder.rglob("*"))`` gives them, where the caller walked it already.

    Files without the DICOM marker (a README, a thumbnail) are skipped; a DICOM file that fails
    the checks, a link out of the folder or a FIFO refuses the whole folder, naming the file; so does an image
    without SeriesInstanceUID beside a series (it may be one of its slices).
    """
    folder = Path(folder)
    limit = voxel_limit(max_voxels)
    groups: dict[str, list[tuple[float, int, str, pydicom.Dataset]]] = {}
    unplaced: list[Path] = []  # images without a SeriesInstanceUID
    for f in sorted(folder.rglob("*")) if listing is None else listing:
        try:
            f_stat = check_regular(f, folder=folder, allow_dir=True)
        except UntrustedFileError as e:
            raise StudyError(str(e)) from None
        if not Path(f).is_file() or f_stat.st_size < 132 or not has_dicom_magic(f):
            continue
        scan = scan_checked(f, max_voxels=limit)
        ds = _read_header(f)
        if getattr(ds, "SOPClassUID", None) == SEG_SOP_CLASS:
            continue
        if "Rows" not in ds:
            continue  # no image (structured report, presentation state)
        if not str(ds.get("SeriesInstanceUID", "") or "").strip():
            unplaced.append(f)
            continue
        check_pixels(f, scan, ds, limit)
        position = position_along_normal(ds)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(
            (position if position is not None else float(_instance(ds)), _instance(ds), str(f), ds))
    if unplaced and groups:
        # such an image was left out without a word: a slice so damaged made a gap the refusal asked to "add the
        # missing file(s)" for, the file in plain sight, or the series opened a slice short (session 23)
        raise StudyError(f"{unplaced[0]}: a DICOM image without SeriesInstanceUID, so which series of the folder it "
                         "belongs to is not known; give it its series' SeriesInstanceUID (e.g. dcmodify -i "
                         "SeriesInstanceUID=UID FILE) or take it out of the folder")
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
                localizer=_is_localizer(first),
            )
        )
    return series


MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR


def _is_dicomdir(ds: pydicom.Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return MEDIA_DIRECTORY_SOP_CLASS in (str(getattr(meta, "MediaStorageSOPClassUID", "") or ""),
                                         str(ds.get("SOPClassUID", "") or "")) or "DirectoryRecordSequence" in ds


def _is_localizer(ds: pydicom.Dataset) -> bool:
    """ImageType value 3 LOCALIZER (CT Image IOD, PS3.3 C.8.2.1.1.1; MR scanners write it too): the scout a CT study
    export carries beside its axial series."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(v).strip().upper() == "LOCALIZER" for v in image_type)


def _without_localizers(folder: Path, series: list[SeriesInfo]) -> list[SeriesInfo]:
    """A folder's series less its localizers when exactly one other series is left: a study export (scout + axial
    series) opens as its volume, with a warning naming what was left out. Otherwise ``series`` unchanged (several
    volumes: the user picks one; localizers alone: they are what there is)."""
    volumes = [s for s in series if not s.localizer]
    if len(volumes) != 1 or len(volumes) == len(series):
        return series
    skipped = ", ".join(s.series_instance_uid for s in series if s.localizer)
    warnings.warn(one_line(f"{folder}: opened series {volumes[0].series_instance_uid}; left out "
                           f"{len(series) - 1} localizer series ({skipped}{LOCALIZER_ADVICE})"),
                  StudyWarning, stacklevel=3)
    return volumes


def _bare_data_sets(folder: Path) -> int:
    """How many files of ``folder`` start like a DICOM data set written without preamble and DICM (group 0002 or
    0008 first, as old exports write them): why a folder of DICOM files holds no series to open."""
    count = 0
    for f in folder.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink() and not has_dicom_magic(f):
                with open(f, "rb") as fh:
                    count += fh.read(2) in (b"\x02\x00", b"\x08\x00")
        except OSError:
            continue
    return count


def _segs_in(folder: Path) -> list[str]:
    """The DICOM-SEG files of a folder that holds no image series (``list_series`` leaves them out), as paths
    inside it: a zip of the user's own SEG export said only "no DICOM image series found"."""
    found = []
    for f in sorted(folder.rglob("*")):
        try:
            if f.is_file() and not f.is_symlink() and has_dicom_magic(f):
                if getattr(_read_header(f), "SOPClassUID", None) == SEG_SOP_CLASS:
                    found.append(str(f.relative_to(folder)))
        except (OSError, StudyError):
            continue
    return found


def _other_studies_in(folder: Path) -> list[str]:
    """The NIfTI and PNG/JPEG files of a folder without DICOM, as paths inside it: a folder given for the one NIfTI it
    holds (as a download or a BIDS subject folder arrives) was refused as "no DICOM image series found in this
    folder", not saying that the NIfTI was there, nor how to open it (session 21)."""
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                  if f.name.lower().endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES) and not f.name.startswith(".")
                  and f.is_file())


def _gzipped_dicoms(folder: Path) -> int:
    """How many files of ``folder`` are gzip-compressed DICOM (IM0001.dcm.gz, a PACS or mail export's): the series
    reader sees no DICOM in them, and the refusal said only that no series was found."""
    return sum(1 for f in folder.rglob("*") if f.is_file() and not f.is_symlink() and _content_kind(f) == "dicom-gz")


def _instance(ds: pydicom.Dataset) -> int:
    try:
        return int(getattr(ds, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


SERIES_LISTED = 10  # series named in a refusal's one line (a study export may hold thousands: 70 characters each)
# series a refusal offers to pick from (the UI's list), their texts cut to DICOM's lengths: the list crosses the
# isolated reader's socket and fills a dropdown, and a hostile header may hold a description of any length
SERIES_OFFERED = 500


def read_dicom_series(
    folder: Path, *, series_uid: str | None = None, max_voxels: int | None = None, allow_uneven: bool = False
) -> Volume:
    listing = sorted(folder.rglob("*"))  # walked once: the series, and the DICOMDIR check (``missing_from_index``)
    series = list_series(folder, max_voxels=max_voxels, listing=listing)
    if not series:
        bare = _bare_data_sets(folder)
        index = next((f for f in folder.rglob("*") if f.name.upper() == "DICOMDIR" and f.is_file()), None)
        segs = [] if bare or index else _segs_in(folder)
        gzipped = 0 if bare or index or segs else _gzipped_dicoms(folder)
        studies = [] if bare or index or segs or gzipped else _other_studies_in(folder)
        raise StudyError(f"{folder}: no DICOM image series found in this folder" + (
            f": it holds {', '.join(studies[:3])}{', ...' if len(studies) > 3 else ''}, which medseg opens as a file, "
            "not as a folder: open that file itself" if studies else
            f": {bare} file(s) hold a DICOM data set without the Part 10 header (no DICM marker at byte 128); "
            "export them again as DICOM files" if bare else f": it holds {index.relative_to(folder)}, the index of a "
            "CD/DVD export, without the image files it lists; copy the whole disc (or a zip of it)" if index else
            f": {', '.join(segs[:3])}{', ...' if len(segs) > 3 else ''} {'is' if len(segs) == 1 else 'are each'} "
            f"{SEG_NOT_AN_IMAGE}" if segs else
            f": {gzipped} file(s) are gzip-compressed DICOM files; decompress them (gunzip) and open the folder again"
            if gzipped else ""))
    shown = SERIES_LISTED
    more = f" and {len(series) - shown} more (medseg info {folder} lists them)" if len(series) > shown else ""
    if series_uid is not None:
        chosen = [s for s in series if s.series_instance_uid == series_uid]
        if not chosen:
            raise StudyError(f"{folder}: no series {series_uid}; it holds "
                             f"{', '.join(s.series_instance_uid for s in series[:shown])}{more}")
        info = chosen[0]
    elif len(series := _without_localizers(folder, series)) > 1:
        _refuse_one_series_split(folder, series)
        listing = "; ".join(f"{s.series_instance_uid} ({s.modality}, {len(s.files)} files)" for s in series[:shown])
        raise SeveralSeriesError(f"{folder}: holds {len(series)} series{SERIES_ADVICE}: {listing}"
                                 + (f";{more}" if more else ""),
                                 [(s.series_instance_uid, s.modality[:16], s.description[:64], len(s.files))
                                  for s in series[:SERIES_OFFERED]])
    else:
        info = series[0]
    for f in info.files:
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:  # SimpleITK aborts the process on such a name
            raise StudyError(f"{f!r}: the file name is not valid UTF-8; rename the file") from None
    if missing := missing_from_index(folder, info.series_instance_uid, listing):
        raise StudyError(f"{folder}: its DICOMDIR lists {len(missing)} file(s) of series {info.series_instance_uid} "
                         f"that are not in the folder ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): "
                         "the copy of the disc is incomplete, and the series would open without them; copy the whole "
                         "disc (or a zip of it)")
    if len(info.files) == 1:
        return _one_file_series(folder, Path(info.files[0]), max_voxels=max_voxels, allow_uneven=allow_uneven)
    heads = [_read_header(Path(f)) for f in info.files]
    if all(_is_enhanced_volume(h) for h in heads):
        return _split_enhanced_series(folder, info, heads, max_voxels=max_voxels, allow_uneven=allow_uneven)
    _refuse_multiframe_among(folder, info, heads)
    first = heads[0]
    check_voxels(folder, (len(heads), header_int(first, "Rows"), header_int(first, "Columns")), voxel_limit(max_voxels))
    try:
        geometry = check_series_geometry(info.files, heads, allow_uneven=allow_uneven)
    except GeometryError as e:
        raise _with_unreadable_named(folder, _geometry_refusal(folder, e)) from None
    for name, head in zip(display_names(info.files), heads):
        try:
            check_spacing_between_slices(head, series=True)
        except GeometryError as e:
            raise StudyError(f"{folder}: {name}: {e}") from None
    _check_distinct_instances(folder, info.files, heads)
    for name, head in zip(display_names(info.files), heads):
        if "GridFrameOffsetVector" in head:  # a one-frame dose's offset: a number, and where its position says
            try:
                frame_geometry(head)
            except GeometryError as e:
                raise StudyError(f"{folder}: {name}: {e}") from None
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO(DICOM_IO)
    if len({rescale_of(h) for h in heads}) > 1:
        # ITK decodes every slice into the first slice's pixel type: another slice's fractional slope was truncated
        # and values past it wrapped round (a PET slope of 64 read 1729 as -32764). Each slice's own, in float64:
        reader.SetOutputPixelType(sitk.sitkFloat64)
    try:
        with _gdcm_readable([Path(f) for f in info.files], heads) as names:
            reader.SetFileNames(names)
            image = _itk(reader.Execute)
    except RuntimeError as e:
        syntaxes = {str(getattr(getattr(h, "file_meta", None), "TransferSyntaxUID", "") or "") for h in heads}
        raise _decode_failure(folder, syntaxes, e, "the DICOM series could not be read", series=True) from e
    if geometry.spacing_k is not None and image.GetDimension() == 3:
        image.SetSpacing((*image.GetSpacing()[:2], geometry.spacing_k))
    notes = geometry.notes
    if (contradiction := _aspect_contradiction(first)) is not None:
        notes = (*notes, contradiction)
    for note in notes:
        warnings.warn(one_line(f"{folder}: {note}"), StudyWarning, stacklevel=2)
    if skipped := _not_dicom_named_dicom(folder):
        warnings.warn(one_line(f"{folder}: left out {len(skipped)} file(s) named as DICOM that are not DICOM: "
                               + ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")),
                      StudyWarning, stacklevel=2)
    _note_nifti_beside(folder)
    source = SourceRef(
        path=str(folder),
        format="dicom-series",
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "")) or None,
        series_instance_uid=info.series_instance_uid,
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")) or None,
        sop_instance_uids=tuple(str(getattr(h, "SOPInstanceUID", "")) for h in heads),  # none: a SEG is refused
        sop_class_uid=str(getattr(first, "SOPClassUID", "")) or None,
        files=info.files,
        geometry="ImagePositionPatient/ImageOrientationPatient" + (
            " (mean slice spacing, --allow-uneven)" if geometry.spacing_k is not None else ""),
        notes=notes,
    )
    volume = Volume.from_sitk(image, modality=info.modality, source=source)
    return _check_ct_values(folder, _dose_scaled([Path(f) for f in info.files], volume, heads), first)


SPLIT_SERIES_MIN = 3  # one-image series that, parallel and stacked, look like one series split by its UIDs


def _refuse_one_series_split(folder: Path, series: list[SeriesInfo]) -> None:
    """StudyError when a folder's series are one image each, of one study and frame of reference, parallel slices at
    different places: one series whose images were each given their own SeriesInstanceUID (an anonymiser or export
    that made a UID per file). Why: it was refused as "holds 12 series, pick one with --series UID", and the UI
    offered 12 series of one image to pick from, neither saying what was wrong (session 21)."""
    if len(series) < SPLIT_SERIES_MIN or any(len(s.files) != 1 for s in series):
        return
    heads = [_read_header(Path(s.files[0])) for s in series]
    same = ("StudyInstanceUID", "FrameOfReferenceUID", "Modality", "Rows", "Columns")
    if any(not str(heads[0].get(k, "") or "") or any(str(h.get(k, "")) != str(heads[0].get(k, "")) for h in heads)
           for k in same):
        return
    try:
        turns = [orientation(h) for h in heads]
    except GeometryError:
        return
    places = [position_along_normal(h) for h in heads]
    if any(t is None for t in turns) or any(p is None for p in places) or \
            any(np.abs(t - turns[0]).max() > 1e-3 for t in turns) or len({round(p, 2) for p in places}) != len(heads):
        return
    raise StudyError(f"{folder}: holds {len(series)} series of one image each, parallel slices of one study and frame "
                     "of reference at different positions: they look like one series whose images were each given "
                     "their own SeriesInstanceUID (an anonymiser or export that made a UID per file); give them one "
                     "SeriesInstanceUID (e.g. dcmodify -m SeriesInstanceUID=UID *.dcm) and open the folder again")


def _is_multiframe(ds: pydicom.Dataset) -> bool:
    """An image of several frames, or an enhanced one (its geometry in functional groups, whatever its count)."""
    return header_int(ds, "NumberOfFrames", 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _one_file_series(folder: Path, path: Path, *, max_voxels: int | None, allow_uneven: bool) -> Volume:
    """A folder whose series is one file, read as that file alone (``read_dicom_file``: an enhanced multi-frame on
    its functional groups, a cine's frames as unplaced, an ultrasound frame at its calibrated regions' size). Why: the
    series reader stacks files, so a zip of one multi-frame image was refused in ITK's words ("only 2D and 3D images
    are supported, got a 4D image"), and a zip of one ultrasound frame opened at GDCM's 1 mm with its geometry called
    'ImagePositionPatient/ImageOrientationPatient', its areas claimed in mm² (session 21)."""
    volume = read_dicom_file(path, max_voxels=max_voxels, allow_uneven=allow_uneven)
    if skipped := _not_dicom_named_dicom(folder):
        warnings.warn(one_line(f"{folder}: left out {len(skipped)} file(s) named as DICOM that are not DICOM: "
                               + ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")),
                      StudyWarning, stacklevel=3)
    _note_nifti_beside(folder)
    # one frame: a one-slice series as before (DICOM-SEG references it); several: a multi-frame file, as opened alone
    return replace(volume, source=replace(volume.source, path=str(folder),
                                          format="dicom-series" if volume.num_slices == 1 else "dicom"))


def _is_enhanced_volume(ds: pydicom.Dataset) -> bool:
    """An enhanced image whose frames carry their positions (PlanePositionSequence): part of a volume, placeable."""
    return "PerFrameFunctionalGroupsSequence" in ds and any(
        "PlanePositionSequence" in group for group in (ds.get("PerFrameFunctionalGroupsSequence") or []))


def _split_enhanced_series(folder: Path, info: SeriesInfo, heads: list[pydicom.Dataset], *, max_voxels: int | None,
                           allow_uneven: bool) -> Volume:
    """One series split into several enhanced multi-frame files (some scanners and archives write a file per stack
    or per N frames), stacked by every frame's own position (PlanePositionSequence) as a series of single frames is.
    Why: it was refused as "a.dcm is a multi-frame image among the 2 files ...: open that file by itself", which opened
    a part of the volume as if it were the whole. Frames of several files at one place, an uneven gap between files or
    files on different grids are refused as in a series, naming the file and frame."""
    names = display_names(info.files)
    frames = []  # (file index, frame index, frame header)
    for f, (name, head) in enumerate(zip(names, heads)):
        try:
            own = frame_heads(head)
        except GeometryError as e:
            raise StudyError(f"{folder}: {name}: {e}") from None
        for n, frame in enumerate(own):
            # the files must share one patient, study, pixel description and frame of reference
            for keyword in ONE_PATIENT_AND_STUDY + SAME_IN_EVERY_SLICE:
                if keyword in head:
                    frame[keyword] = head[keyword]
            frames.append((f, n, frame))
    check_voxels(folder, (len(frames), header_int(heads[0], "Rows"), header_int(heads[0], "Columns")),
                 voxel_limit(max_voxels))
    placed = [position_along_normal(frame) for _, _, frame in frames]
    order = (sorted(range(len(frames)), key=lambda i: placed[i]) if all(p is not None for p in placed)
             else list(range(len(frames))))  # an unplaced frame: refused below, naming it
    stacked = [frames[i] for i in order]
    try:
        grid = stack_grid([f"{names[f]} frame {n + 1}" for f, n, _ in stacked], [h for _, _, h in stacked],
                          allow_uneven=allow_uneven)
    except GeometryError as e:
        raise _geometry_refusal(folder, e) from None
    _check_distinct_instances(folder, info.files, heads)
    volumes = [read_dicom_file(Path(f), max_voxels=max_voxels, allow_uneven=allow_uneven) for f in info.files]
    dtype = np.result_type(*(v.array.dtype for v in volumes))
    array = np.stack([volumes[f].array[n] for f, n, _ in stacked]).astype(dtype, copy=False)
    for note in grid.notes:
        warnings.warn(one_line(f"{folder}: {note}"), StudyWarning, stacklevel=3)
    _note_nifti_beside(folder)
    first = heads[0]
    source = SourceRef(
        path=str(folder), format="dicom", study_instance_uid=str(getattr(first, "StudyInstanceUID", "")) or None,
        series_instance_uid=info.series_instance_uid,
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")) or None,
        sop_instance_uids=tuple(str(getattr(h, "SOPInstanceUID", "")) for h in heads),
        sop_class_uid=str(getattr(first, "SOPClassUID", "")) or None, files=info.files, notes=grid.notes,
        geometry=f"{SPLIT_ENHANCED}{len(heads)} files (PlanePosition, PlaneOrientation, PixelMeasures)"
                 + (" (mean slice spacing, --allow-uneven)" if grid.notes else ""))
    return Volume(array=array, spacing=grid.spacing, origin=grid.origin, direction=grid.direction,
                  modality=info.modality, source=source)


def _refuse_multiframe_among(folder: Path, info: SeriesInfo, heads: list[pydicom.Dataset]) -> None:
    """A series of several files, one of them a multi-frame image (an enhanced CT beside single-frame slices of its
    series; a series split into several enhanced files whose frames are placed is stacked instead,
    ``_split_enhanced_series``). Its frames are not single slices the series reader can
    stack: it was refused as "enh.dcm: no ImageOrientationPatient; a series of 3 images cannot be stacked without it"
    (an enhanced image keeps it in its functional groups), or in ITK's words (a 4D image). Refused naming the file."""
    for name, head in zip(display_names(info.files), heads):
        if _is_multiframe(head):
            frames = header_int(head, "NumberOfFrames", 1)
            what = (f"a multi-frame image ({frames} frames)" if frames > 1 else
                    "an enhanced image (its geometry in functional groups, one frame)")
            raise StudyError(f"{folder}: {name} is {what} "
                             f"among the {len(heads)} files of series {info.series_instance_uid}; medseg stacks "
                             "single-frame files placed by ImagePositionPatient, or opens one multi-frame file alone: open that file by itself (or "
                             "export the series as single-frame files)")


# No material reaches a million Hounsfield units (dense metals read some 30000; extended CT scales stop at 65535)
HU_LIMIT = 1e6


def _check_ct_values(where: Path, volume: Volume, ds: pydicom.Dataset) -> Volume:
    """A CT in Hounsfield units whose values run past any material was rescaled wrongly (a RescaleSlope of 1e30
    opened as 1e33 'HU', every CT window one flat colour, as if valid): refused naming the range. ``ds``: the first
    slice's header (Modality, RescaleType)."""
    if volume.modality.strip().upper() != "CT" or str(ds.get("RescaleType", "") or "").strip().upper() not in HU_TYPES:
        return volume
    low, high = float(np.min(volume.array)), float(np.max(volume.array))
    if max(abs(low), abs(high)) > HU_LIMIT:
        slope, intercept = rescale_of(ds)
        raise StudyError(f"{where}: CT values of {low:.4g} to {high:.4g} HU after RescaleSlope {slope:g}, "
                         f"RescaleIntercept {intercept:g}; Hounsfield units lie within -1024 and some 30000 (at most "
                         f"{HU_LIMIT:g}), so the rescale is wrong")
    _check_signed_as_unsigned(where, volume, ds)
    return volume


# A CT whose header says unsigned for signed 16-bit values: refused only when a tenth of it reads where no material
# lies as unsigned (past extended CT scales' 30710 HU) and as plausible CT (mostly air or padding) as signed.
SIGNED_EVIDENCE_SHARE = 0.10
NO_MATERIAL_HU = 31000.0
SIGNED_CT_HU = (-3100.0, 0.0)
SIGNED_AIR_HU = (-3100.0, -500.0)


def _check_signed_as_unsigned(where: Path, volume: Volume, ds: pydicom.Dataset) -> None:
    """PixelRepresentation 0 (unsigned) on a CT whose 16-bit stored values are signed. Why: the real head CT so
    labelled opened with its air at 64512 'HU' (under ``HU_LIMIT``, which allows extended CT scales), every CT window
    showing the outside white. Refused only on evidence no real scan gives: at least a tenth of the voxels above
    31000 HU, every one of them (99 %) within -3100..0 HU when read as signed and most (half) air or padding there;
    extended-scale metal is a small share and reads far below -3100 as signed. Checked on at most a million voxels."""
    if (_int_or_none(ds.get("PixelRepresentation")) != 0 or _int_or_none(ds.get("BitsAllocated")) != 16
            or (_int_or_none(ds.get("BitsStored")) or 16) != 16):
        return
    slope, intercept = rescale_of(ds)
    values = np.asarray(volume.array).ravel()
    values = values[:: max(1, values.size // 1_000_000)].astype(np.float64)
    high = values > NO_MATERIAL_HU
    if values.size == 0 or high.mean() < SIGNED_EVIDENCE_SHARE:
        return
    as_signed = (np.rint((values[high] - intercept) / slope) - 65536) * slope + intercept
    plausible = (as_signed >= SIGNED_CT_HU[0]) & (as_signed <= SIGNED_CT_HU[1])
    air = (as_signed >= SIGNED_AIR_HU[0]) & (as_signed <= SIGNED_AIR_HU[1])
    if plausible.mean() < 0.99 or air.mean() < 0.5:
        return
    raise StudyError(f"{where}: PixelRepresentation 0 (unsigned), but {100 * high.mean():.0f}% of the CT reads "
                     f"{values[high].min():.0f} to {values[high].max():.0f} HU, where no material lies, and "
                     f"{as_signed.min():.0f} to {as_signed.max():.0f} HU (mostly air) read as signed: the stored "
                     "values are signed and the header says otherwise; set PixelRepresentation to 1 (e.g. dcmodify "
                     "-m PixelRepresentation=1) and open it again")


def _int_or_none(value) -> int | None:
    """A header value as an int, None when absent or no number (a damaged field leaves the check to others)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _note_nifti_beside(folder: Path) -> None:
    """A StudyWarning naming the NIfTI files a folder holds beside the DICOM series it opened: a zip of a series and
    its NIfTI conversion (or another scan) opened the series and left the NIfTI out without a word, the status line
    saying only "Opened study.zip.". (A label map beside its series is left out as rightly; it is named too.)"""
    found = sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                   if f.name.lower().endswith(NIFTI_SUFFIXES) and not f.name.startswith(".") and f.is_file())
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        warnings.warn(one_line(f"{folder}: opened the DICOM series; left out {len(found)} NIfTI file(s) beside it "
                               f"({shown}): open one alone to see it"), StudyWarning, stacklevel=3)


def _check_distinct_instances(folder: Path, files: tuple[str, ...], heads: list[pydicom.Dataset]) -> None:
    """Every slice its own SOPInstanceUID. Two slices at different places under one UID (a series merged or
    anonymised wrongly) opened, and their DICOM-SEG, which references slices by that UID, put a label drawn on either
    slice on both when read back (measured); a PACS viewer reads it the same way."""
    seen: dict[str, str] = {}
    for f, shown, head in zip(files, display_names(files), heads):
        uid = str(head.get("SOPInstanceUID", "") or "").strip()
        if not uid:
            continue
        if uid in seen:
            raise StudyError(f"{folder}: {shown} and {seen[uid]} are different slices with one SOPInstanceUID "
                             f"({uid}); a series needs a UID per image (it was merged or anonymised wrongly): fix the "
                             "UIDs or open the series as exported by the scanner")
        seen[uid] = shown


def _check_frame_rescales(path: Path, ds: pydicom.Dataset) -> None:
    """An enhanced multi-frame's PixelValueTransformationSequence, per frame or shared: each valid, and one for
    every frame. GDCM applies frame 1's to every frame (measured: frame 4 stored with slope 4 read 2982 HU off)."""
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    first = None
    for n, group in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        items = group.get("PixelValueTransformationSequence") or shared.get("PixelValueTransformationSequence")
        if not items:
            continue
        check_rescale(path, items[0], image=ds, where=f"frame {n + 1}: ")
        this = rescale_of(items[0])
        if first is None:
            first = (n, this)
        elif this != first[1]:
            raise StudyError(f"{path}: frame {n + 1} has RescaleSlope {this[0]:g}, RescaleIntercept {this[1]:g} where "
                             f"frame {first[0] + 1} has {first[1][0]:g}, {first[1][1]:g}; medseg applies one rescale "
                             "to every frame (save the frames as a series)")


# the geometry of an image whose pixels' relative size comes from PixelAspectRatio (``Volume.size_is_physical``)
PIXELS_BY_ASPECT = "none (pixels, PixelAspectRatio"
MAX_PIXEL_ASPECT = 100.0  # no scanner's pixels are 100 times taller than wide; a larger ratio is a damaged field
US_CM = 3  # PhysicalUnitsX/YDirection 3: cm (PS3.3 C.8.5.5.1.15)


def _decode_failure(where: Path, syntaxes: set[str], error: BaseException, failed: str, *, series: bool) -> StudyError:
    """The line for pixel data GDCM could not decode (``failed``: what could not be, for uncompressed data).
    Compressed data whose frame headers passed the checks but whose body does not decode (a damaged JPEG) was
    refused in GDCM's words for the step that failed ("Failed to change to Implicit Transfer Syntax"), naming
    neither the compression nor the damage; it now names both."""
    said = first_line(error)
    compressed = sorted(pydicom.uid.UID(x).name for x in syntaxes if x and x not in NATIVE_SYNTAXES)
    if not compressed:
        return StudyError(f"{where}: {failed} ({said})")
    said = re.sub(r"^(ITK ERROR: )?GDCMImageIO: ", "", said)
    return StudyError(f"{where}: {failed + ': ' if series else ''}its compressed pixel data ({', '.join(compressed)}) "
                      f"could not be decoded: damaged, or not what its transfer syntax says (the decoder said: {said})")


def _one_slice_thickness(ds: pydicom.Dataset, image: sitk.Image) -> float | None:
    """The SliceThickness of a single placed slice without SpacingBetweenSlices, which GDCM ignores: it gave the
    slice its 1 mm default, so one slice of the real head CT (1.5 mm thick) said `0.957 x 0.957 x 1 mm` in the facts
    and its labels' mL were 2/3 of area x thickness (session 24); dcm2niix takes the thickness so too. None where the
    image has several frames, a SpacingBetweenSlices (GDCM's third spacing) or no usable thickness."""
    if (image.GetDimension() == 3 and image.GetSize()[2] != 1) or ds.get("SpacingBetweenSlices") not in (None, ""):
        return None
    try:
        thickness = float(ds.get("SliceThickness"))
    except (TypeError, ValueError):
        return None
    return thickness if 1e-6 <= thickness <= 1e5 else None  # NaN too; outside, check_geometry_range would refuse


def _unknown_thickness(ds: pydicom.Dataset, image: sitk.Image, *, placed: bool) -> str:
    """The note on a single placed slice that gives no thickness (neither SliceThickness nor SpacingBetweenSlices, or
    no usable one): GDCM makes it 1 mm thick, and the labels table gave mL from that as if measured (session 24's
    pass). The note keeps volumes from being measured with it (``Volume.slice_spacing_is_physical``)."""
    if not placed or (image.GetDimension() == 3 and image.GetSize()[2] != 1) \
            or ds.get("SpacingBetweenSlices") not in (None, ""):
        return ""
    given = ds.get("SliceThickness")
    # a value that is there but no thickness is named: "neither ... in the file" sent the user looking for a field
    # that was there (session 30)
    why = ("neither SliceThickness nor SpacingBetweenSlices in the file" if given in (None, "") else
           f"SliceThickness {one_line(str(given))[:40]} is not a thickness (expected 1e-06 to 1e+05 mm) and there "
           "is no SpacingBetweenSlices")
    return f"; {THICKNESS_UNKNOWN}: {why} (the {image.GetSpacing()[2]:g} mm is a placeholder; no volume is measured)"


def _unplaced_frames(image: sitk.Image, *, placed: bool) -> str:
    """The note on the geometry of a multi-frame image the file does not place (no ImageOrientationPatient, no
    functional groups: a cine, a multi-frame secondary capture). Why: the distance between its frames is not in the
    file (they may be times), yet GDCM gives one (1 mm, or FrameTime's milliseconds); the note keeps volumes and
    planes across the frames from being measured with it (``Volume.slice_spacing_is_physical``)."""
    frames = image.GetSize()[2] if image.GetDimension() == 3 else 1
    if placed or frames < 2:
        return ""
    return (f"; {frames} {FRAMES_NOT_PLACED} in the patient: their distance is not in the file "
            f"(the {image.GetSpacing()[2]:g} mm between them is a placeholder; no volume is measured)")


def _ultrasound_regions(ds: pydicom.Dataset) -> tuple[set[tuple[float, float]], list[tuple[float, float]]]:
    """The pixel sizes (x, y) in mm of an ultrasound image's 2D regions measured in cm (SequenceOfUltrasoundRegions)
    that hold a size, and the PhysicalDeltaX/Y (cm, as written) of those whose size is void (0, not finite, or past
    1e-4..100 mm)."""
    sizes, void = set(), []
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            if int(region.get("RegionSpatialFormat", 0) or 0) != 1:  # 1: a 2D tissue or flow image
                continue
            if int(region.get("PhysicalUnitsXDirection", 0) or 0) != US_CM or \
                    int(region.get("PhysicalUnitsYDirection", 0) or 0) != US_CM:
                continue
            cx, cy = float(region.PhysicalDeltaX), float(region.PhysicalDeltaY)
        except (AttributeError, TypeError, ValueError):
            continue
        dx, dy = abs(cx) * 10.0, abs(cy) * 10.0
        if math.isfinite(dx) and math.isfinite(dy) and 1e-4 <= dx <= 100 and 1e-4 <= dy <= 100:
            sizes.add((round(dx, 9), round(dy, 9)))
        else:
            void.append((cx, cy))
    return sizes, void


def _ultrasound_pixel_mm(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """An ultrasound image's pixel size (x, y) in mm from its calibrated regions (SequenceOfUltrasoundRegions), where
    every 2D region measured in cm agrees on it; None otherwise (no such region, or two zooms side by side: then no
    size holds for the whole image and the study stays in pixels). GDCM reads no size from there."""
    sizes, _ = _ultrasound_regions(ds)
    return sizes.pop() if len(sizes) == 1 else None


def _void_ultrasound_calibration(ds: pydicom.Dataset) -> str | None:
    """A note when an ultrasound image's 2D regions in cm hold no usable size (PhysicalDeltaX/Y 0, say); None
    otherwise. Why: such an image opened unmeasured as one without regions does, and the user could not tell that the
    calibration was there and void (session 26b)."""
    sizes, void = _ultrasound_regions(ds)
    if sizes or not void:
        return None
    shown = ", ".join(f"{cx:g} x {cy:g}" for cx, cy in void[:3]) + (" ..." if len(void) > 3 else "")
    return (f"SequenceOfUltrasoundRegions: the region's calibration (PhysicalDeltaX/Y {shown} cm) is there but void "
            "(expected a size > 0 cm a pixel); sizes are unknown: the image is shown in pixels, nothing measured")


def _pixel_aspect(path: Path, ds: pydicom.Dataset) -> tuple[float, float, str] | None:
    """The relative pixel size (x, y), the smaller 1, and the ratio as 'v:h', from PixelAspectRatio
    (vertical\\horizontal, PS3.3 C.7.6.3.1.7) of an image without PixelSpacing; None when absent or 1:1. Why: an ultrasound or secondary capture
    of 2\\1 opened with square pixels, squashed to half its height (a round lesion an oval, a caliper off by 2 in one
    direction), where every DICOM viewer shows it stretched. A clinician measures on it in pixels, as on any image
    without a size, but expects its shape; so the ratio is honoured and no mm claimed (``Volume.size_is_physical``).
    A ratio that is no two positive numbers is refused: which shape holds is in doubt."""
    if "PixelAspectRatio" not in ds or ds["PixelAspectRatio"].value in (None, ""):
        return None
    raw = ds["PixelAspectRatio"].value
    values = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
    try:
        vertical, horizontal = (float(v) for v in values)
    except (TypeError, ValueError):
        vertical = horizontal = math.nan
    if not (math.isfinite(vertical) and math.isfinite(horizontal) and vertical > 0 and horizontal > 0) \
            or max(vertical, horizontal) / min(vertical, horizontal) > MAX_PIXEL_ASPECT:
        shown = "\\".join(str(v) for v in values)
        raise StudyError(f"{path}: PixelAspectRatio {shown}: expected two numbers > 0 (the pixel's height\\width, "
                         f"at most {MAX_PIXEL_ASPECT:g} times one the other); the image's shape is in doubt: fix the "
                         "field or remove it")
    if vertical == horizontal:
        return None
    low = min(vertical, horizontal)
    return horizontal / low, vertical / low, f"{vertical:g}:{horizontal:g}"


def _aspect_contradiction(ds: pydicom.Dataset) -> str | None:
    """A note when PixelAspectRatio (vertical\\horizontal) contradicts PixelSpacing (row\\column mm) by more than 1 %;
    None otherwise. Why not a refusal: PS3.3 C.7.6.3.1.7 makes PixelAspectRatio a stand-in used only where
    PixelSpacing is absent, so the calibrated PixelSpacing governs (as in GDCM, ITK and every viewer that sizes by
    it); files whose converters left a default 1\\1 beside rectangular pixels open elsewhere and must here too.
    Why a note: one of the two was edited or written wrongly, and the shape the user saw in another tool may differ."""
    try:
        vertical, horizontal = (float(v) for v in ds["PixelAspectRatio"].value)
        row_mm, col_mm = (float(v) for v in ds["PixelSpacing"].value)
    except (KeyError, TypeError, ValueError):  # absent or malformed: PixelSpacing is checked by its own rule
        return None
    if not all(math.isfinite(v) and v > 0 for v in (vertical, horizontal, row_mm, col_mm)):
        return None
    if abs((vertical / horizontal) / (row_mm / col_mm) - 1) <= 0.01:
        return None
    return (f"PixelAspectRatio {vertical:g}\\{horizontal:g} contradicts PixelSpacing {row_mm:g}\\{col_mm:g} mm "
            f"(pixels {row_mm / col_mm:.3g} times as high as wide); PixelSpacing, the calibrated size, is used: "
            "another viewer may show the image with another shape")


def read_dicom_file(path: Path, *, max_voxels: int | None = None, allow_uneven: bool = False) -> Volume:
    """One DICOM file; an enhanced multi-frame one on the grid its functional groups prove (``frame_geometry``)."""
    limit = voxel_limit(max_voxels)
    scan = scan_checked(path, max_voxels=limit)
    ds = _read_header(path)
    if getattr(ds, "SOPClassUID", None) == SEG_SOP_CLASS:
        raise StudyError(f"{path}: {SEG_NOT_AN_IMAGE}")
    if _is_dicomdir(ds):  # what a CD viewer asks for, so what users pick first; it holds no pixels
        raise StudyError(f"{path}: a DICOMDIR, the index of a CD/DVD export, not an image; open the folder that holds "
                         "it with its image files (or a zip of that folder)")
    check_pixels(path, scan, ds, limit)
    try:
        orientation(ds)
        numbers(ds, "ImagePositionPatient", 3)  # NaN or 2 values: ITK made the origin 0 or (x, y, 0) silently
        require_whole_plane(ds)  # one without the other: ITK made the origin 0, or the orientation axial, silently
        check_pixel_spacing(ds)
        # an enhanced image of one frame keeps its geometry in the functional groups too (GDCM reads it from there)
        # an RT Dose of one frame with a GridFrameOffsetVector too: its offsets are checked against its count
        frames = frame_geometry(ds, allow_uneven=allow_uneven) if _is_multiframe(ds) or "GridFrameOffsetVector" in ds \
            else None
        if frames is None:
            require_pixel_spacing(ds)
            check_spacing_between_slices(ds)
    except GeometryError as e:
        raise _geometry_refusal(path, e) from None
    _check_frame_rescales(path, ds)
    try:
        with _gdcm_readable([path], [ds]) as names:
            image = _itk(sitk.ReadImage, names[0], sitk.sitkUnknown, DICOM_IO)
    except RuntimeError as e:
        syntaxes = {scan.transfer_syntax} if scan.encapsulated else set()
        raise _decode_failure(path, syntaxes, e, "DICOM pixel data could not be decoded", series=False) from e
    if frames is not None and image.GetDimension() == 3:  # the checked grid, not GDCM's guess
        image.SetSpacing(frames.spacing)
        image.SetOrigin(frames.origin)
        image.SetDirection(frames.direction)
        for note in frames.notes:
            warnings.warn(one_line(f"{path}: {note}"), StudyWarning, stacklevel=2)
    thick = _one_slice_thickness(ds, image) if frames is None and "ImageOrientationPatient" in ds else None
    if thick is not None:
        image.SetSpacing((*image.GetSpacing()[:2], thick))
    us = _ultrasound_pixel_mm(ds) if frames is None and "ImageOrientationPatient" not in ds else None
    if us is not None:
        image.SetSpacing((us[0], us[1], *image.GetSpacing()[2:]))
    aspect = _pixel_aspect(path, ds) if frames is None and us is None and "PixelSpacing" not in ds \
        and "ImageOrientationPatient" not in ds else None
    if aspect is not None:
        image.SetSpacing((aspect[0], aspect[1], *image.GetSpacing()[2:]))
    notes = frames.notes if frames is not None else ()
    for note in (_aspect_contradiction(ds),
                 _void_ultrasound_calibration(ds) if frames is None and "ImageOrientationPatient" not in ds else None):
        if note is not None:
            warnings.warn(one_line(f"{path}: {note}"), StudyWarning, stacklevel=2)
            notes = (*notes, note)
    source = SourceRef(
        path=str(path),
        format="dicom",
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "")) or None,
        series_instance_uid=str(getattr(ds, "SeriesInstanceUID", "")) or None,
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "")) or None,
        sop_instance_uids=(str(getattr(ds, "SOPInstanceUID", "")),),
        sop_class_uid=str(getattr(ds, "SOPClassUID", "")) or None,
        files=(str(path),),
        notes=notes,
        geometry=(frames.described
                  + (" (mean slice spacing, --allow-uneven)" if frames.notes else "") if frames is not None
                  else "ImagePositionPatient/ImageOrientationPatient" if "ImageOrientationPatient" in ds
                  else f"SequenceOfUltrasoundRegions (PhysicalDeltaX/Y, {us[0]:g} x {us[1]:g} mm; the region's "
                       "own plane, no patient position)" if us is not None
                  else f"{PIXELS_BY_ASPECT} {aspect[2]}: relative pixel sizes, not mm)"
                  if aspect is not None else "none (identity)") + _unplaced_frames(image, placed=frames is not None
                                                                   or "ImageOrientationPatient" in ds)
                 + _unknown_thickness(ds, image, placed=frames is None and "ImageOrientationPatient" in ds
                                      and thick is None),
    )
    volume = Volume.from_sitk(image, modality=str(getattr(ds, "Modality", "OT")), source=source)
    return _check_ct_values(path, _dose_scaled([path], volume, [ds]), ds)


@contextmanager
def _gdcm_readable(paths: list[Path], heads: list[pydicom.Dataset]) -> Iterator[list[str]]:
    """The names GDCM is to read for ``paths``: each one-frame RT Dose whose GridFrameOffsetVector holds one value
    (``one_offset_dose``) as a copy without that field in a private temporary folder, the others as they are. Why: a
    valid dose split into one-frame files was refused, GDCM failing on the one value; the copy differs from the file by
    that field alone, so its voxels and the grid GDCM reads are the file's (session 26). The offset was checked first
    (``frame_geometry``): a number, and where ImagePositionPatient says. GDCM's words name the file, not the copy."""
    if not any(one_offset_dose(h) for h in heads):
        yield [str(p) for p in paths]
        return
    with tempfile.TemporaryDirectory(prefix="medseg-dose-") as folder:
        names = []
        for k, (path, head) in enumerate(zip(paths, heads)):
            if not one_offset_dose(head):
                names.append(str(path))
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    whole = pydicom.dcmread(path)
                del whole.GridFrameOffsetVector
                names.append(str(Path(folder) / f"{k}.dcm"))
                whole.save_as(names[-1])
            except Exception as e:  # the file was scanned and its header read: a fault here is the copy's
                raise RuntimeError(f"{path.name}: a copy without its GridFrameOffsetVector could not be made "
                                   f"({first_line(e)})") from e
        try:
            yield names
        except RuntimeError as e:
            message = str(e)
            for path, name in zip(paths, names):
                message = message.replace(name, str(path))
            raise RuntimeError(message) from None


def _dose_scaled(paths: list[Path], volume: Volume, heads: list[pydicom.Dataset]) -> Volume:
    """An RT Dose grid in its DoseUnits: the stored values times ``DoseGridScaling`` (PS3.3 C.8.8.3), which GDCM does
    not apply; one head for a multi-frame file, one per slice (``paths[k]``'s) for a series of one-frame doses, each
    slice its own factor. Why: pydicom's rtdose.dcm (scaling 1e-06) opened at its stored integers, 1254000 where the
    file says 1.254 (DoseUnits RELATIVE), as if valid (session 25), and a series of its frames as one-frame files
    still did (hostile25b). A scaling that is not a finite number > 0 is refused, as a RescaleSlope is; none is 1."""
    scalings = [_dose_scaling(path, ds) for path, ds in zip(paths, heads)]
    has = [ds.get("DoseGridScaling") not in (None, "") for ds in heads]
    if any(has) and not all(has):  # the one without would open its stored integers among doses (1e6 times off)
        without, other = has.index(False), has.index(True)
        raise StudyError(f"{paths[without]}: no DoseGridScaling, where {paths[other].name} of the same series has "
                         f"{scalings[other]:g}; expected one in every file of a dose (its slices would not be in one "
                         "unit)")
    if all(s == 1 for s in scalings):
        return volume
    factors = np.asarray(scalings, np.float64).reshape(-1, *([1] * (volume.array.ndim - 1)))
    return replace(volume, array=np.asarray(volume.array, np.float64) * factors)


def _dose_scaling(path: Path, ds: pydicom.Dataset) -> float:
    """``ds``'s DoseGridScaling, 1 where it has none; StudyError for one that is not a finite number > 0."""
    if "DoseGridScaling" not in ds or ds["DoseGridScaling"].value in (None, ""):
        return 1.0
    try:
        scaling = float(ds["DoseGridScaling"].value)
    except (TypeError, ValueError):
        scaling = float("nan")
    if not (math.isfinite(scaling) and scaling > 0):
        raise StudyError(f"{path}: DoseGridScaling {ds['DoseGridScaling'].value!r}; expected a finite number > 0 (the "
                         "factor from the stored values to the dose in DoseUnits)")
    return scaling
