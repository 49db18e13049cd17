"""Prove that a DICOM series is one stack of parallel, evenly spaced slices before stacking it.

SimpleITK stacks whatever it is given at the spacing of the first gap, with only a warning: two
images at one position opened at an invented 1.0 mm, a file without ImagePositionPatient switched
the checks off, and uneven or mixed-orientation series opened at 5.9 or 0.68 mm where the truth
was 1.5 (issue 23). Here every slice must carry a valid position and orientation; the series is
refused with the reason (naming the files) unless the only fault is uneven spacing and the user
asked for ``--allow-uneven``, which opens it at the mean spacing with a visible note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from data.study_errors import ALLOW_UNEVEN_ADVICE, UNEVEN_NOTE

SPACING_TOLERANCE = 0.02  # relative deviation of one slice step from the median step still called even
OFFSET_TOLERANCE_MM = 0.05  # an absolute GridFrameOffsetVector's first z against ImagePositionPatient's (DS rounding)
ORTHONORMAL_TOLERANCE = 1e-2  # |row|, |column| within 1 +- this (GDCM normalises them, the direction kept)
# |row . column| / (|row| |column|) at most this. GDCM replaces an orientation off perpendicular by more than 1e-3 with
# the nearest axes (measured by bisection: 1.0000005e-3): a slice turned 30 degrees with row . column 0.002 opened
# unturned. Just under GDCM's limit, so such a file is refused instead.
PERPENDICULAR_TOLERANCE = 9.9e-4


# ITK decodes every slice as the first file says (measured: a MONOCHROME1 slice among MONOCHROME2 ones came out
# inverted, an unsigned slice among signed ones read as signed)
# (BitsStored may differ: each slice's own is applied when it is decoded)
SAME_IN_EVERY_SLICE = ("Modality", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PixelRepresentation",
                       "PhotometricInterpretation", "FrameOfReferenceUID")
# One series is one patient's, of one study: a slice naming another (a mis-sorted or wrongly merged export) opened as
# part of the volume without a word where its geometry fitted, two patients' images in one volume (session 23). Their
# values are not shown in the refusal: error lines reach logs and the label server's clients.
ONE_PATIENT_AND_STUDY = ("PatientID", "PatientName", "StudyInstanceUID")


class GeometryError(ValueError):
    """The series' geometry is missing, invalid or not one even stack (the message says why)."""


class UnevenSpacingError(GeometryError):
    """The series' only fault is uneven slice spacing (or missing slices): ``allow_uneven`` opens it at the mean
    spacing, with a note, when the user asks for it."""


@dataclass(frozen=True)
class SeriesGeometry:
    """``spacing_k``: the slice spacing to use instead of ITK's (only with ``allow_uneven``); notes for the user."""

    spacing_k: float | None = None
    notes: tuple[str, ...] = ()


def numbers(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray | None:
    """``count`` finite numbers from a multi-valued attribute, None if absent; GeometryError if malformed."""
    if keyword not in ds:
        return None
    raw = ds[keyword].value
    values = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
    if len(values) != count:
        raise GeometryError(f"{keyword} has {len(values)} value(s); expected {count}")
    try:
        out = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise GeometryError(f"{keyword} {values!r} is not {count} numbers") from None
    if not np.isfinite(out).all():
        raise GeometryError(f"{keyword} {out.tolist()} holds NaN or infinite values")
    return out


def orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    """ImageOrientationPatient as (row, column) unit vectors, None if absent; GeometryError if not orthonormal."""
    iop = numbers(ds, "ImageOrientationPatient", 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    lengths = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if (abs(lengths[0] - 1) > ORTHONORMAL_TOLERANCE or abs(lengths[1] - 1) > ORTHONORMAL_TOLERANCE
            or abs(float(np.dot(row, col))) > PERPENDICULAR_TOLERANCE * lengths[0] * lengths[1]):
        raise GeometryError(f"ImageOrientationPatient {iop.tolist()} is not two perpendicular unit vectors")
    return iop.reshape(2, 3)


# the smallest pixel a label map holds (``data.readers.SPACING_RANGE_MM``): 1 nm
MIN_PIXEL_MM = 1e-6
# the largest pixel an image of a patient has: the coarsest clinical grids are SPECT/NM matrices of 64 or 32 over a
# 400-600 mm field of view (6-19 mm), PET 2-6 mm, RT Dose grids 2-10 mm (pydicom's: 10 mm), a whole-body scout a few
# mm; pydicom's secondary captures carry 33.3 mm. 50 mm is past all of them with room, and a patient of 600 mm is
# still 12 pixels across; a larger pixel is a damaged value (5000 mm: a 640 m picture of a 128-pixel CT, session 26b)
MAX_PIXEL_MM = 50.0


def check_pixel_spacing(ds: pydicom.Dataset) -> None:
    """PixelSpacing, when present: two numbers > 0 mm, within ``MIN_PIXEL_MM``..``MAX_PIXEL_MM``. A PixelSpacing of
    1e-300 was refused in ITK's words, blaming the pixels: "DICOM pixel data could not be decoded (ITK ERROR: Singular
    matrix. Determinant is 0.)" (session 22); one of 5000 mm opened as a 640 m image, its sizes measured in it
    (session 26b)."""
    spacing = numbers(ds, "PixelSpacing", 2)
    if spacing is not None and not (spacing > 0).all():
        raise GeometryError(f"PixelSpacing {spacing.tolist()}: expected two numbers > 0 mm")
    if spacing is not None and not (spacing >= MIN_PIXEL_MM).all():
        raise GeometryError(f"PixelSpacing {spacing.tolist()}: expected pixels of {MIN_PIXEL_MM:g} mm or more; a "
                            "pixel that small is a damaged value (no label map can hold it)")
    if spacing is not None and not (spacing <= MAX_PIXEL_MM).all():
        raise GeometryError(f"PixelSpacing {spacing.tolist()}: expected pixels of {MAX_PIXEL_MM:g} mm or less (no "
                            "scanner's pixel is larger: NM and dose grids reach about 20 mm); a larger pixel is a "
                            "damaged value: check the file's PixelSpacing")


def check_spacing_between_slices(ds: pydicom.Dataset, *, series: bool = False) -> None:
    """SpacingBetweenSlices, which GDCM takes as an image's third spacing: 0, text or NaN were refused in GDCM's
    words ("DICOM pixel data could not be decoded (Refusing to change spacing from [1, 1, 1] to [0.957, 0.957, 0])"),
    a series too ("the DICOM series could not be read (...)"), naming no field and blaming the pixels. The decoder
    here cannot be told to ignore it, so the refusal names it. A negative one (some MR scanners) opens as before."""
    if "SpacingBetweenSlices" not in ds or ds["SpacingBetweenSlices"].value in (None, ""):
        return
    raw = ds["SpacingBetweenSlices"].value
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value, shown = math.nan, repr(str(raw))
    else:
        shown = f"{value:g}"
    if not math.isfinite(value) or value == 0:
        need = "the slices' positions give their spacing" if series else "a single image does not need it"
        raise GeometryError(f"SpacingBetweenSlices {shown}: expected the distance between slices in mm, a number other "
                            f"than 0 ({need}: remove it, or export the images again)")


def require_pixel_spacing(ds: pydicom.Dataset) -> None:
    """An image placed in the patient (ImageOrientationPatient) must say its pixel size there. GDCM used 1 mm
    for a CT series without PixelSpacing (0.96 mm true): it opened as if measured, its areas and volumes in mm² and mL
    and its label map 4 % too small, between slices placed to the 0.01 mm."""
    if "PixelSpacing" in ds or "ImageOrientationPatient" not in ds:
        return
    detector = ("; ImagerPixelSpacing, which it has, is the size at the detector, not in the patient"
                if "ImagerPixelSpacing" in ds else "")
    raise GeometryError("ImageOrientationPatient but no PixelSpacing: the pixel size in the patient is not in the file "
                        f"(the decoder would take 1 mm){detector}; add PixelSpacing, or export the images again")


def require_whole_plane(ds: pydicom.Dataset) -> None:
    """ImageOrientationPatient and ImagePositionPatient place an image in the patient together (the Image Plane module
    has both as Type 1). With one alone GDCM invents the other: a CT slice without its position opened at 0, 0, 0
    (its geometry said 'ImagePositionPatient/ImageOrientationPatient'), one without its orientation as axial at its
    position (it was coronal), and their label maps were written there, as if placed."""
    has_orientation, has_position = "ImageOrientationPatient" in ds, "ImagePositionPatient" in ds
    if has_orientation and not has_position:
        raise GeometryError("ImageOrientationPatient but no ImagePositionPatient: where the image lies in the patient "
                            "is not in the file (the decoder would put it at 0, 0, 0); add ImagePositionPatient, or "
                            "export the images again")
    if has_position and not has_orientation:
        raise GeometryError("ImagePositionPatient but no ImageOrientationPatient: which way the image lies in the "
                            "patient is not in the file (the decoder would take it as axial); add "
                            "ImageOrientationPatient, or export the images again")


def position_along_normal(ds: pydicom.Dataset) -> float | None:
    """Where a slice lies along its normal (mm), None when its position or orientation is unusable."""
    try:
        iop, ipp = orientation(ds), numbers(ds, "ImagePositionPatient", 3)
    except GeometryError:
        return None
    if iop is None or ipp is None:
        return None
    return float(np.dot(np.cross(iop[0], iop[1]), ipp))


def display_names(files: Sequence[str]) -> list[str]:
    """Each file's name as a refusal shows it: the bare name, or as many folders above it as make it unique (a zip
    holding the series twice, in A/ and B/, was refused as "two images at the same position between IM0001.dcm
    and IM0001.dcm", leaving the user to guess which to remove)."""
    parts = [Path(f).parts for f in files]
    deepest = max((len(p) for p in parts), default=1)
    for depth in range(1, deepest + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in files]


def check_series_geometry(files: Sequence[str], heads: Sequence[pydicom.Dataset], *, allow_uneven: bool = False) -> SeriesGeometry:
    """Refuse (GeometryError) a series that is not one even stack; see the module doc."""
    if len(heads) < 2:
        if heads:  # a folder of one image: placed by its whole plane or not at all, as a single file is
            try:
                require_whole_plane(heads[0])
            except GeometryError as e:
                raise GeometryError(f"{display_names(files)[0]}: {e}") from None
        return SeriesGeometry()
    names = display_names(files)
    ipp, iop = [], []
    for name, h in zip(names, heads):
        try:
            o, p = orientation(h), numbers(h, "ImagePositionPatient", 3)
            check_pixel_spacing(h)
            require_pixel_spacing(h)
        except GeometryError as e:
            raise GeometryError(f"{name}: {e}") from None
        if o is None or p is None:
            missing = "ImageOrientationPatient" if o is None else "ImagePositionPatient"
            raise GeometryError(f"{name}: no {missing}; a series of {len(heads)} images cannot be stacked without it")
        iop.append(o)
        ipp.append(p)
    first = heads[0]
    first_spacing = numbers(first, "PixelSpacing", 2)
    for name, h in zip(names, heads):
        for keyword in ONE_PATIENT_AND_STUDY:
            if str(h.get(keyword, "") or "").strip() != str(first.get(keyword, "") or "").strip():
                raise GeometryError(f"{name}: {keyword} differs from {names[0]}'s within one series: the volume would "
                                    "hold images of two patients or studies; take the file out of the folder, or "
                                    f"correct its {keyword}")
        for keyword in SAME_IN_EVERY_SLICE:
            if h.get(keyword) != first.get(keyword):
                raise GeometryError(f"{name}: {keyword} {h.get(keyword)} differs from {names[0]} ({first.get(keyword)})")
        # ITK takes the first file's PixelSpacing (1 mm when it has none) for every slice
        spacing = numbers(h, "PixelSpacing", 2)
        if (spacing is None) != (first_spacing is None) or (
                spacing is not None and np.abs(spacing - first_spacing).max() > 1e-4 * float(first_spacing.max())):
            shown = ["(none)" if v is None else v.tolist() for v in (spacing, first_spacing)]
            raise GeometryError(f"{name}: PixelSpacing {shown[0]} differs from {names[0]} ({shown[1]}); "
                                "the slices are not one grid")
    iop_arr, ipp_arr = np.array(iop), np.array(ipp)
    tilted = np.abs(iop_arr - iop_arr[0]).reshape(len(heads), 6).max(axis=1) > 1e-3
    if tilted.any():
        raise GeometryError(f"{names[int(np.argmax(tilted))]} is oriented unlike {names[0]}; "
                            "the series is not one stack of parallel slices")
    normal = np.cross(iop_arr[0, 0], iop_arr[0, 1])
    positions = ipp_arr @ normal
    steps = np.diff(ipp_arr, axis=0)
    typical = np.median(steps, axis=0)
    size = float(np.linalg.norm(typical))
    tol = max(SPACING_TOLERANCE * size, 1e-3)

    def where(n: int) -> str:
        return f"between {names[n]} ({positions[n]:.2f} mm) and {names[n + 1]} ({positions[n + 1]:.2f} mm)"

    for n, step in enumerate(steps):
        if np.linalg.norm(step) <= tol:
            volumes = _volumes_told_apart(heads[n], heads[n + 1])
            if volumes:
                raise GeometryError(f"two images at the same position {where(n)}, of different {volumes}: the series "
                                    f"holds {_count_at_each_position(positions, tol)} volumes (time points, echoes or "
                                    "acquisitions); medseg opens one volume: export one of them as its own series")
            raise GeometryError(f"two images at the same position {where(n)}; remove the duplicate or pick one series")
    _check_one_direction(names, ipp_arr, positions, steps, typical, tol)
    if abs(float(np.dot(typical, normal))) < (1 - SPACING_TOLERANCE) * size:
        raise GeometryError(f"the slices step {size:.3g} mm but only {abs(float(np.dot(typical, normal))):.3g} mm along "
                            "their normal (gantry tilt or in-plane shifts); resample the series before opening it")
    notes = []
    for n, step in enumerate(steps):
        if np.linalg.norm(step - typical) <= tol:
            continue
        missing = int(round(float(np.dot(step, typical)) / size**2)) - 1
        if missing >= 1 and np.linalg.norm(step - (missing + 1) * typical) <= tol * (missing + 1):
            fault = f"{missing} slice(s) missing {where(n)} (the other slices are {size:.3g} mm apart)"
            fix = "add the missing file(s), open the complete series" + ALLOW_UNEVEN_ADVICE
        else:
            fault = (f"uneven slice spacing, a step of {np.linalg.norm(step):.3g} mm {where(n)} while the others are "
                     f"{size:.3g} mm" + _off_by(step, typical, tol))
            fix = "resample the series to even spacing (e.g. in 3D Slicer)" + ALLOW_UNEVEN_ADVICE
        if not allow_uneven:
            raise UnevenSpacingError(f"{fault}; {fix}")
        notes.append(fault)
    if not notes:
        return SeriesGeometry()
    mean = abs(float(positions[-1] - positions[0])) / (len(heads) - 1)
    if not math.isfinite(mean) or mean <= 0:
        raise GeometryError("the slices do not advance along their normal")
    summary = (f"{UNEVEN_NOTE}{len(notes)} uneven step(s) ({notes[0]}{'; ...' if len(notes) > 1 else ''}); opened at "
               f"the mean spacing {mean:.4g} mm, so slice positions are approximate")
    return SeriesGeometry(spacing_k=mean, notes=(summary,))


# What tells the volumes of one series apart at one position (PS3.3 C.7.6.1, C.8.3.1, C.8.8.16): time points of a
# dynamic or perfusion study, the echoes of a multi-echo MR, repeated acquisitions
VOLUME_KEYWORDS = ("TemporalPositionIdentifier", "EchoNumbers", "AcquisitionNumber", "TriggerTime", "EchoTime",
                   "DiffusionBValue")


def _volumes_told_apart(a: pydicom.Dataset, b: pydicom.Dataset) -> str:
    """The attribute and values by which two images at one position belong to different volumes ('' when none does:
    a duplicate, such as the same file copied twice). A dynamic MR or perfusion CT series of 2 time points was refused
    with "remove the duplicate or pick one series", neither of which fits (session 17)."""
    for keyword in VOLUME_KEYWORDS:
        if keyword in a and keyword in b and str(a.get(keyword)) != str(b.get(keyword)):
            return f"{keyword} ({a.get(keyword)} and {b.get(keyword)})"
    return ""


def _count_at_each_position(positions: np.ndarray, tol: float) -> str:
    """How many images each position holds: one number when all hold the same, else 'several'."""
    ordered = np.sort(positions)
    groups = np.split(ordered, np.flatnonzero(np.diff(ordered) > tol) + 1)
    counts = {len(g) for g in groups}
    return str(counts.pop()) if len(counts) == 1 else "several"


def _check_one_direction(names: Sequence[str], ipp: np.ndarray, positions: np.ndarray, steps: np.ndarray,
                         typical: np.ndarray, tol: float) -> None:
    """Images stacked as given must advance one way. A series is sorted by position, so only an enhanced multi-frame's
    frames (stacked as stored) can step back: two time points of one volume in one file (0, 1.5, 0, 1.5 mm) were
    called an uneven step, and --allow-uneven (the UI's mean-spacing choice) opened them as 4 slices 0.5 mm apart, the
    second volume folded into the first (session 17). Refused, naming what the frames hold."""
    back = [n for n, step in enumerate(steps) if float(np.dot(step, typical)) <= 0]
    if not back:
        return
    order = np.argsort(positions, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if np.linalg.norm(ipp[b] - ipp[a]) <= tol:
            first, second = sorted((int(a), int(b)))
            raise GeometryError(f"{names[second]} lies where {names[first]} does ({positions[first]:.2f} mm): the "
                                "images hold more than one volume (time points or stacks); medseg opens one volume: "
                                "save each as its own series and open one")
    n = back[0]
    raise GeometryError(f"{names[n + 1]} ({positions[n + 1]:.2f} mm) lies back before {names[n]} "
                        f"({positions[n]:.2f} mm): the images are not stored in order along their normal, and they "
                        "are stacked as stored, so the volume would open scrambled; save them in order")


def _off_by(step: np.ndarray, typical: np.ndarray, tol: float) -> str:
    """Where the step's length reads as the others' once rounded (positions jittered sideways, or by hundredths of a
    mm), how far it is from theirs: "a step of 1.5 mm ... while the others are 1.5 mm" named no difference at all
    (session 17); '' when the lengths already show it."""
    if f"{np.linalg.norm(step):.3g}" != f"{np.linalg.norm(typical):.3g}":
        return ""
    return (f", {np.linalg.norm(step - typical):.2g} mm away from their step in length or direction (more than the "
            f"{tol:.2g} mm allowed)")


@dataclass(frozen=True)
class FrameGeometry:
    """The grid of an enhanced multi-frame image, from its functional groups (ITK order: i, j, k)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3 x 3 row-major, columns = the i, j, k axes
    notes: tuple[str, ...] = ()  # --allow-uneven: the frames' uneven steps, opened at the mean spacing
    described: str = "per-frame functional groups (PlanePosition, PlaneOrientation, PixelMeasures)"  # the source's


FRAME_GROUPS = (("PlanePositionSequence", "ImagePositionPatient"), ("PlaneOrientationSequence", "ImageOrientationPatient"),
                ("PixelMeasuresSequence", "PixelSpacing"))


def _check_one_place(n: int, keyword: str, own: pydicom.Dataset | None, common: pydicom.Dataset | None) -> None:
    """A functional group is in the shared or the per-frame groups, not both (PS3.3 C.7.6.16.1). Both, with other
    values, leave the grid in doubt: a frame said 0.8 mm pixels where the shared groups said 0.5 mm, and it opened at
    0.8 mm without a word (session 17); GDCM and other readers need not choose the same. Equal values are harmless."""
    if own is None or common is None or keyword not in own or keyword not in common:
        return
    try:
        mine = [float(v) for v in _values(own[keyword].value)]
        theirs = [float(v) for v in _values(common[keyword].value)]
    except (TypeError, ValueError):
        return  # not numbers: the checks of the values themselves name them
    if len(mine) != len(theirs) or not np.allclose(mine, theirs, rtol=0, atol=1e-6):
        raise GeometryError(f"frame {n + 1}: {keyword} {mine} in its per-frame functional groups but {theirs} in the "
                            "shared ones; a functional group belongs in one of the two, so which holds is in doubt")


def _values(value) -> list:
    """A DICOM value as a list (one number, or several)."""
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _positive(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def frame_heads(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """An enhanced multi-frame image's frames as headers of their own (ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing from the per-frame or shared functional groups), the way a series' files carry them."""
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]

    def item(group: pydicom.Dataset, sequence: str) -> pydicom.Dataset | None:
        items = group.get(sequence)
        return items[0] if items else None

    heads = []
    for n, group in enumerate(per_frame):
        head = pydicom.Dataset()
        for sequence, keyword in FRAME_GROUPS:
            own, common = item(group, sequence), item(shared, sequence)
            _check_one_place(n, keyword, own, common)
            found = own or common
            if found is not None and keyword in found:
                head[keyword] = found[keyword]
        heads.append(head)
    return heads


def frame_geometry(ds: pydicom.Dataset, *, allow_uneven: bool = False) -> FrameGeometry | None:
    """An enhanced multi-frame image's frames checked as one even stack, like a series (frame n named
    "frame n"), and the grid they make; None when no frame carries a position (a cine loop, not a volume).

    GDCM, under SimpleITK, stacks the frames from the first frame's position at an even spacing whatever the
    others say: frames stored from head to feet opened mirrored (k running the wrong way), uneven or repeated
    positions and mixed orientations opened at an invented spacing (measured)."""
    heads = frame_heads(ds)
    if not any("ImagePositionPatient" in h for h in heads):
        offsets = ds.get("GridFrameOffsetVector")  # RT Dose: frame positions along the normal, which GDCM reads
        if offsets is not None and "ImageOrientationPatient" in ds:
            offsets = _values(offsets)  # one value is a DSfloat, not a list ("'DSfloat' object is not iterable")
            steps = np.diff(np.asarray([float(v) for v in offsets], float))
            if len(steps) + 1 != int(ds.get("NumberOfFrames") or 1):  # GDCM: "An invalid logic behavior occurred"
                raise GeometryError(f"GridFrameOffsetVector holds {len(steps) + 1} frame offsets, but the image has "
                                    f"{int(ds.get('NumberOfFrames') or 1)} frame(s) (NumberOfFrames); expected one "
                                    "offset per frame: which frame lies where is not known")
            if not all(math.isfinite(float(v)) for v in offsets):
                raise GeometryError(f"GridFrameOffsetVector {[float(v) for v in offsets][:8]} holds a value that is "
                                    "not a number; expected one offset in mm per frame")
            _check_absolute_offsets(ds, offsets)
            if not len(steps):  # one frame (read from a copy without the field: ``one_offset_dose``)
                return None
            descending = _descending_dose_frames(ds, offsets, steps)
            if descending is not None:
                return descending
            if not np.isfinite(steps).all() or (steps <= 0).any() \
                    or np.abs(steps - np.median(steps)).max() > SPACING_TOLERANCE * float(np.median(steps)):
                raise GeometryError(f"GridFrameOffsetVector {[float(v) for v in offsets][:8]} is not one increasing, "
                                    "even step per frame; the frames cannot be stacked")
            return None
        frames = int(ds.get("NumberOfFrames") or 1)
        shared = list(ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
        turned = any(item.get("ImageOrientationPatient") is not None
                     for item in shared.get("PlaneOrientationSequence") or []) \
            or any("ImageOrientationPatient" in h for h in heads)
        if turned and frames > 1:
            # the rule below, where the orientation sits in the functional groups: an Enhanced CT without its
            # PerFrameFunctionalGroupsSequence opened as unplaced 1 mm frames, its shared orientation and pixel
            # spacing dropped without a word (session 25)
            nor = "" if "PerFrameFunctionalGroupsSequence" in ds else \
                ", nor the PerFrameFunctionalGroupsSequence an enhanced image requires"
            raise GeometryError(f"{frames} frames with an ImageOrientationPatient in their functional groups but no "
                                f"PlanePositionSequence (ImagePositionPatient) for any frame{nor}: where the frames lie "
                                "is not in the file")
        if "ImageOrientationPatient" in ds and frames > 1 and not _positive(ds.get("SpacingBetweenSlices")):
            # ITK stacks such frames 1 mm apart (SliceThickness is not a spacing): an invented third axis
            raise GeometryError(f"{int(ds.get('NumberOfFrames') or 1)} frames with ImageOrientationPatient but no "
                                "SpacingBetweenSlices or per-frame positions: where the frames lie is not in the file")
        return None
    frames = int(ds.get("NumberOfFrames") or 1)
    if len(heads) != frames:
        raise GeometryError(f"{len(heads)} per-frame functional groups for NumberOfFrames {frames}")
    return stack_grid([f"frame {n + 1}" for n in range(frames)], heads, allow_uneven=allow_uneven)


def one_offset_dose(ds: pydicom.Dataset) -> bool:
    """An RT Dose of one frame whose GridFrameOffsetVector holds one value (the field its FrameIncrementPointer names):
    valid, but GDCM fails on it ("An invalid logic behavior occurred ... idx < GetNumberOfValues()", read alone or as
    a series's slice: it takes the second offset), so the reader gives GDCM a copy without the field, which places
    nothing ImagePositionPatient does not once ``frame_geometry`` has checked the value (session 26; refused in
    session 25, hostile25b: a dose split into one-frame files, as a planning system exports planes)."""
    offsets = ds.get("GridFrameOffsetVector")
    return offsets is not None and len(_values(offsets)) == 1


def _check_absolute_offsets(ds: pydicom.Dataset, offsets: list) -> None:
    """An RT Dose's GridFrameOffsetVector whose first value is not 0 holds the frames' z coordinates (PS3.3 C.8.8.3.2,
    an axial grid), the first of which is ImagePositionPatient's z: refused where the two disagree, as which one
    places the grid is in doubt. Why: such a dose opened at ImagePositionPatient (GDCM's choice) without a word
    (session 25; hostile25b)."""
    first, ipp = float(offsets[0]), numbers(ds, "ImagePositionPatient", 3)
    if first == 0 or ipp is None or not math.isfinite(first):
        return
    if abs(first - float(ipp[2])) > OFFSET_TOLERANCE_MM:
        raise GeometryError(f"GridFrameOffsetVector begins at {first:g}, so its offsets are the frames' z coordinates "
                            f"(absolute), but ImagePositionPatient's z is {float(ipp[2]):g}; expected the first "
                            "offset to be 0 (relative) or the first frame's z: where the grid lies is in doubt")


def _descending_dose_frames(ds: pydicom.Dataset, offsets, steps: np.ndarray) -> FrameGeometry | None:
    """The grid of an RT Dose whose relative GridFrameOffsetVector descends evenly (0, -5, -10 ... mm: frame n lies
    offset n along the normal of ImageOrientationPatient): its k axis runs against the normal. None for any other.
    Why: such files exist (Orthanc Stone learnt to read them in 2023) and were refused as not increasing, while GDCM
    reads only increasing offsets (session 25)."""
    if not len(steps) or float(offsets[0]) != 0 or not np.isfinite(steps).all() or (steps >= 0).any():
        return None
    step = float(np.median(-steps))
    if np.abs(-steps - step).max() > SPACING_TOLERANCE * step:
        return None
    iop, ipp, pixel = orientation(ds), numbers(ds, "ImagePositionPatient", 3), numbers(ds, "PixelSpacing", 2)
    if iop is None or ipp is None or pixel is None:
        return None  # refused as before, or by the checks of an image without them
    direction = np.column_stack([iop[0], iop[1], -np.cross(iop[0], iop[1])])
    return FrameGeometry(spacing=(float(pixel[1]), float(pixel[0]), step), origin=tuple(map(float, ipp)),
                         direction=tuple(map(float, direction.ravel())),
                         described="ImagePositionPatient/ImageOrientationPatient, GridFrameOffsetVector descending "
                                   f"({step:g} mm a frame against the normal)")


def stack_grid(names: Sequence[str], heads: Sequence[pydicom.Dataset], *, allow_uneven: bool = False) -> FrameGeometry:
    """The grid of frames stacked as given (each a header with its position, orientation and pixel spacing, named
    ``names`` in refusals), checked as one even stack like a series; GeometryError otherwise."""
    checked = check_series_geometry(names, heads, allow_uneven=allow_uneven)
    iop, ipp = orientation(heads[0]), numbers(heads[0], "ImagePositionPatient", 3)
    pixel = numbers(heads[0], "PixelSpacing", 2)
    if iop is None or ipp is None or pixel is None:
        missing = "ImageOrientationPatient" if iop is None else "ImagePositionPatient" if ipp is None else "PixelSpacing"
        raise GeometryError(f"{names[0]}: no {missing} in its functional groups; the frames have no grid")
    check_pixel_spacing(heads[0])
    if len(heads) > 1:
        step = (numbers(heads[-1], "ImagePositionPatient", 3) - ipp) / (len(heads) - 1)
        k_spacing = float(np.linalg.norm(step))
        k_axis = step / k_spacing
    else:
        k_spacing, k_axis = 1.0, np.cross(iop[0], iop[1])
    direction = np.column_stack([iop[0], iop[1], k_axis])
    return FrameGeometry(spacing=(float(pixel[1]), float(pixel[0]), k_spacing), origin=tuple(map(float, ipp)),
                         direction=tuple(map(float, direction.ravel())), notes=checked.notes)
