"""DICOM-SEG (segmentation storage) written and read with highdicom.

Writing needs a DICOM source: the SEG references every source image (Referenced Series
Sequence, per-frame Source Image Sequence) and takes its patient/study/frame-of-reference
identity from them, so 3D Slicer and OHIF put it on the right series. One segment per label
value, in increasing order of value: segment number ``n`` holds the ``n``-th label value
(labels 1..N round-trip unchanged; other values are renumbered and the mapping is returned by
:func:`read_dicom_seg` through the segment names).

Reading returns a label map (segment numbers as values) either on a given source grid (by
SOP Instance UID when the SEG references that series, else by position in patient space) or,
without a grid, on the SEG's own frames and geometry (PlanePosition / PixelMeasures /
PlaneOrientation), which is what a third-party SEG whose source images are absent gives.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from data.untrusted import LONE_SURROGATE, one_line
from data.volume import SPLIT_ENHANCED, SourceRef, Volume
from data.writers import atomic_output

SEG_SERIES_NUMBER = 900
DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (  # one per segment, cycled
    (255, 200, 0), (0, 160, 255), (230, 60, 60), (60, 200, 90), (190, 90, 230), (240, 130, 40), (40, 210, 210),
    (250, 110, 180),
)

# Patient / General Study attributes highdicom copies from the source; some sources (e.g. headers
# written by a script) lack them, and the standard lets them be empty.
TYPE2_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)

Deidentifier = Callable[[pydicom.Dataset], None]
"""Hook called on the finished SEG dataset before it is written (edits it in place). Patient
name, ID, birth date, sex and the study's dates and IDs are copied from the source images by
highdicom; a de-identifier (e.g. one following DICOM PS3.15 Annex E) belongs here."""


class DicomSegError(ValueError):
    """A DICOM-SEG that cannot be written or read; the message names the file and the fix."""


@dataclass(frozen=True)
class SegLabels:
    """A DICOM-SEG read back: ``labels.array`` is a ``[k, j, i]`` uint label map whose values are
    segment numbers (0 = background), with the geometry of the grid it lies on.

    names / colours: segment number -> label and recommended display colour (RGB 0..255).
    """

    labels: Volume
    names: dict[int, str] = field(default_factory=dict)
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    algorithm: str = ""


def medseg_version() -> str:
    try:
        return importlib.metadata.version("medseg")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# --- writing ------------------------------------------------------------------------------------
def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | Path,
    *,
    label_names: Mapping[int, str] | None = None,
    colours: Mapping[int, Sequence[int]] | None = None,
    model_name: str = "litemedsam",
    series_description: str = "medseg segmentation",
    deidentify: Deidentifier | None = None,
) -> Path:
    """Write ``labels`` as a BINARY DICOM-SEG: a (K, H, W) integer label map on ``volume``'s grid
    (0 = background, one segment per value present), or a (S, K, H, W) stack of 0/1 masks whose
    structures may overlap (layer s is label value s + 1, one segment each).

    Empty labels get no segment; with nothing segmented at all DicomSegError is raised (a SEG with
    an empty segment confuses viewers). ``volume`` must come from a DICOM series
    (``volume.source.files``: one file per slice k, in array order). ``label_names`` / ``colours``
    map label values to a name and an RGB colour; missing ones get ``"label <v>"`` and a default
    palette. Names SNOMED-CT knows (``Liver``, ``Skull``, ...) are coded as that anatomy.
    """
    import highdicom as hd

    path = Path(path)
    pixels, values = _segment_pixels(np.asarray(labels), volume, path)
    sources = check_seg_source(volume, path)
    if not values:
        raise DicomSegError(f"{path}: nothing is segmented (every label is empty); a DICOM-SEG needs at least one "
                            "non-empty segment")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name,
        family=_codes().DCM.ArtificialIntelligence,
        version=f"medseg {medseg_version()}",
        source="medseg",
    )
    descriptions = [
        _segment_description(number, value, label_names or {}, colours or {}, algorithm)
        for number, value in enumerate(values, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name="medseg",
            software_versions=medseg_version(),
            device_serial_number="0",
            series_description=_lo(series_description, "medseg segmentation"),
            omit_empty_frames=True,  # frames with no foreground are left out (what Slicer/dcmqi write)
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomSegError(f"{path}: highdicom could not build the DICOM-SEG ({e})") from e
    if not all(str(d.SegmentLabel).isascii() for d in seg.SegmentSequence) or not str(seg.SeriesDescription).isascii():
        # names typed in any language ("Läsion", "肝臓"): without a character set pydicom wrote them as "?"
        seg.SpecificCharacterSet = "ISO_IR 192"
    _patient_orientation(seg, sources[0])
    if deidentify is not None:
        deidentify(seg)
    _check_values_fit_their_vr(seg, path, Path(volume.source.files[0]).name, deidentified=deidentify is not None)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path


def _patient_orientation(seg: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Patient Orientation (General Image Module, Type 2C) on a SEG whose frames have no plane orientation.

    Why: a source without a patient frame of reference (an ultrasound or secondary-capture image: no Image
    Orientation/Position) gives a SEG without a Plane Orientation functional group; PS3.3 C.7.6.1.1.1 then
    requires Patient Orientation, which highdicom does not write, so dciodvfy refused the SEG ("Missing
    attribute Type 2C Conditional Element=<PatientOrientation>"). The source's value is copied (the frames lie
    as its pixels do); a source without one gives an empty value, as Type 2 allows."""
    if "FrameOfReferenceUID" in seg or "PatientOrientation" in seg:
        return
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""


def _segment_pixels(labels: np.ndarray, volume: Volume, path: Path) -> tuple[np.ndarray, list[int]]:
    """-> (the pixels highdicom takes, the label value of segment 1, 2, ...), empty segments left out. A (K, H, W)
    label map gives a label map of segment numbers 1..S (highdicom's *label-map* style: one array whatever the number
    of segments); a (S, K, H, W) stack of binary masks (overlapping structures, layer s is label value s + 1) gives
    their (K, H, W, S) stack.

    Why a label map: one binary layer of the whole grid per value, twice (a mask each, then their stack), made a
    label of many values a memory bomb: the label server's PUT of a 12 x 256 x 256 label holding 65535 values asked
    for about 100 GB, enough for the kernel to kill the server (session 23)."""
    grid = volume.array.shape[:3]
    if labels.ndim == 4:
        if labels.shape[1:] != grid:
            raise DicomSegError(f"{path}: mask stack {labels.shape} does not match (segments, *{grid}) of the source grid")
        if not np.isin(labels, (0, 1)).all():
            raise DicomSegError(f"{path}: a stack of overlapping masks must hold 0/1 (or bool) values")
        present = [n for n in range(labels.shape[0]) if labels[n].any()]
        _check_segment_count(len(present), path)
        return np.stack([labels[n] != 0 for n in present], axis=-1).astype(np.uint8), [n + 1 for n in present]
    if labels.shape != grid:
        raise DicomSegError(f"{path}: label array {labels.shape} does not match the source grid {grid}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise DicomSegError(f"{path}: labels must be integers (0 = background), got {labels.dtype}")
    if labels.min(initial=0) < 0:
        raise DicomSegError(f"{path}: labels must be >= 0, found {int(labels.min())}")
    values, segment = np.unique(labels, return_inverse=True)  # segment: the index of each voxel's value in values
    if values.size and values[0] == 0:
        values = values[1:]
    else:
        segment += 1
    _check_segment_count(len(values), path)
    return segment.reshape(grid).astype(np.uint16), [int(v) for v in values]


# segments medseg writes into one DICOM-SEG; the standard allows 65535 (SegmentNumber is US). Why a bound: each
# segment is a frame (with its functional groups) on every slice it touches, about 15 ms and 25 KB each here, so a
# label of tens of thousands of values (a label server's PUT) held a server thread for hours and gigabytes; the
# largest atlases (Schaefer's 1000 parcels and the subcortex) stay under it (session 23)
MAX_SEGMENTS = 2000


def _check_segment_count(count: int, path: Path) -> None:
    if count > MAX_SEGMENTS:
        raise DicomSegError(f"{path}: {count} labels, each a segment; medseg writes at most {MAX_SEGMENTS} segments "
                            "in a DICOM-SEG (each is a frame on every slice it touches): write a NIfTI label map, "
                            "or merge labels")


# LO (Segment Label, Series Description): one value (a backslash separates values: "a\\b" became ["a", "b"]),
# no control characters (a newline or an escape sequence from a typed name), at most 64 characters
_NOT_IN_LO = re.compile(r"[\x00-\x1f\x7f\\]")


def _lo(text: str, fallback: str) -> str:
    text = LONE_SURROGATE.sub("\ufffd", str(text))  # a lone surrogate: pydicom's UTF-8 encoder refused it
    cleaned = " ".join(_NOT_IN_LO.sub(lambda m: "/" if m.group() == "\\" else " ", text).split())[:64]
    while len(cleaned.encode("utf-8")) > 64:  # validators count the bytes of a UTF-8 value
        cleaned = cleaned[:-1]
    return cleaned.strip() or fallback


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def _snomed_concept(codes, name: str):
    """The SNOMED-CT concept a label name spells (``liver`` -> ``codes.SCT.Liver``), else None. Only a pydicom
    ``Code`` counts: the name is looked up as an attribute, and ``__class__`` or ``__doc__`` gave a type or a string
    that failed the export (TypeError), ``__dict__`` one coded as whatever it unpacked to."""
    from pydicom.sr.coding import Code

    key = "".join(w[:1].upper() + w[1:] for w in name.split())
    if not key.isidentifier():
        return None
    concept = getattr(codes.SCT, key, None)
    return concept if isinstance(concept, Code) else None


def _segment_description(number, value, names, colours, algorithm):
    import highdicom as hd

    codes = _codes()
    name = _lo(names.get(value, ""), f"label {value}")
    concept = _snomed_concept(codes, name)
    if concept is not None:
        category, kind = codes.SCT.AnatomicalStructure, concept
    else:  # free-text label: the generic coded pair dcmqi also uses
        category, kind = codes.SCT.Tissue, codes.SCT.Tissue
    rgb = tuple(int(c) for c in colours.get(value, DEFAULT_COLOURS[(number - 1) % len(DEFAULT_COLOURS)]))
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise DicomSegError(f"colour of label {value} must be 3 values in 0..255, got {rgb}")
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def check_seg_source(volume: Volume, path: str | Path) -> list[pydicom.Dataset]:
    """The source's headers if a DICOM-SEG can reference them (a DICOM source of one file per slice, readable, with
    valid UIDs and one Frame of Reference), else DicomSegError naming what is missing. The CLI calls it before the
    model runs: the refusal came after the model's work, and for a missing Frame of Reference in highdicom's words."""
    from highdicom._standard_utils import ModuleUsageValues, get_module_usage  # highdicom's own rule (private)

    path = Path(path)
    sources = _source_datasets(volume, path)
    _check_one_study_and_series(sources, volume.source.files, path)
    frames = {str(ds.get("FrameOfReferenceUID") or "").strip() for ds in sources}
    if "" in frames:  # allowed where the source's IOD does not require one (an ultrasound, a secondary capture)
        if get_module_usage("frame-of-reference", sources[0].SOPClassUID) == ModuleUsageValues.MANDATORY:
            raise DicomSegError(f"{path}: the source images have no FrameOfReferenceUID, which their kind of image "
                                "requires and a DICOM-SEG must share; write a NIfTI label map (.nii.gz) instead")
        frames.discard("")
    if len(frames) > 1:
        raise DicomSegError(f"{path}: the source images have {len(frames)} different FrameOfReferenceUIDs; a DICOM-SEG "
                            "shares one with its source: write a NIfTI label map (.nii.gz) instead")
    return sources


def _check_one_study_and_series(sources: list[pydicom.Dataset], files: Sequence[str], path: Path) -> None:
    """A SEG references one study and one series. A series whose slices name different studies (merged or anonymised
    wrongly) opened, and the SEG export failed in highdicom's words, naming neither the slice nor the attribute:
    "Source images must all be part of the same series ..." (session 17)."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        first = str(sources[0].get(keyword) or "").strip()
        for f, ds in zip(files, sources):
            other = str(ds.get(keyword) or "").strip()
            if other != first:
                raise DicomSegError(f"{path}: the source image {Path(f).name} has {keyword} {other} where "
                                    f"{Path(files[0]).name} has {first}; a DICOM-SEG references one study and series: "
                                    "fix the source's UIDs, or write a NIfTI label map (.nii.gz) instead")


def _source_datasets(volume: Volume, path: Path) -> list[pydicom.Dataset]:
    src = volume.source
    if src.format not in ("dicom-series", "dicom") or not src.files:
        raise DicomSegError(
            f"{path}: DICOM-SEG needs a DICOM source series (this study is {src.format or 'in memory'}); "
            "write a NIfTI label map (.nii.gz) instead"
        )
    if src.geometry.startswith(SPLIT_ENHANCED) and len(src.files) > 1:  # highdicom references one multi-frame image
        raise DicomSegError(f"{path}: the source is a series split into {len(src.files)} enhanced multi-frame files; "
                            "a DICOM-SEG references one such file: write a NIfTI label map (.nii.gz) instead")
    if len(src.files) != volume.num_slices:
        raise DicomSegError(
            f"{path}: the source has {len(src.files)} DICOM files for {volume.num_slices} slices "
            "(a multi-frame source); write a NIfTI label map (.nii.gz) instead"
        )
    datasets, notes = [], []
    for f in src.files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise DicomSegError(f"{path}: the source image {f} can no longer be read ({e}); reopen the study") from e
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):  # what it references
            uid = str(ds.get(keyword) or "").strip()
            # digits and dots, as PS3.5 9.1 (leading zeros in a component, seen from old scanners, still reference)
            if not uid or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
                fault = f"has {keyword} {uid!r}, which is no DICOM UID" if uid else f"has no {keyword}"
                raise DicomSegError(f"{path}: the source image {f} {fault}; a DICOM-SEG must reference it: write a "
                                    "NIfTI label map (.nii.gz) instead")
        _utf8_when_undeclared(ds)
        _un_text_as_its_vr(ds)
        for keyword in TYPE2_FROM_SOURCE:  # Type 2: must be present, may be empty (PS3.3 C.7.1.1, C.7.2.1)
            if keyword not in ds:
                setattr(ds, keyword, "")
        _text_in_utf8(ds)
        for note in _values_highdicom_takes(ds, float(volume.spacing[2]), measured=volume.num_slices > 1):
            if note not in notes:  # each slice carries the same study values: one line for the series
                notes.append(note)
                warnings.warn(one_line(f"{Path(f).name}: {note}"), UserWarning, stacklevel=3)
        datasets.append(ds)
    return datasets


TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
PN_MAX_COMPONENTS = 5  # family^given^middle^prefix^suffix in each of up to 3 groups (PS3.5 6.2.1.1)
PN_MAX_BYTES = 64  # what dciodvfy accepts for a whole PN value
# control characters a VR may hold (PS3.5 6.1.3, 6.2): ESC for ISO 2022 code extensions; line breaks in the texts
_ALLOWED_CONTROL = {vr: "\x1b\r\n\f\t" for vr in ("LT", "ST", "UT", "UC")}


# Values that tie the SEG to its patient and order: cut or emptied, the SEG would be filed under another one
IDENTIFIERS = frozenset({"PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "AccessionNumber",
                         "StudyID"})
CHECKED_VRS = TEXT_VRS | {"AS", "CS", "DA", "DS", "DT", "IS", "TM"}


def _check_values_fit_their_vr(seg: pydicom.Dataset, path: Path, source_name: str, *, deidentified: bool) -> None:
    """Every value the SEG carries fits its VR (length, characters, PN form, multiplicity): an identifier that does not
    is refused (DicomSegError naming the field), any other value is left empty with a warning line.

    Why: the source's patient and study values are copied as they are; with the identifiers kept (a SEG going back to
    its PACS), a PatientID of 100 characters, a name component over 64, an AccessionNumber or StudyID over 16, a
    PatientID holding a backslash (two values), a name of 6 components or with a control character, a PatientAge
    '45' or a PatientSize 'abc' went into a SEG that dciodvfy refuses (session 17). Cutting or emptying an identifier
    would file the SEG under another patient or study, so that export is refused; a de-identified export replaces
    them. Other values are emptied, as the invalid dates and PatientSex already are (StudyDescription is cut)."""
    for element in list(seg.iterall()):
        fault = _vr_fault(element) if element.VR in CHECKED_VRS else None
        if fault is None:
            continue
        keyword = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
        if keyword in IDENTIFIERS:
            remedy = "correct it in the source images" + ("" if deidentified else ", or export de-identified "
                                                          "(without --keep-identifiers; in the UI, untick Keep patient identifiers)")
            raise DicomSegError(f"{path}: the source's {keyword} {fault}; a DICOM-SEG carrying it is invalid and "
                                f"one with it changed would no longer match the source's records: {remedy}")
        element.value = None
        warnings.warn(one_line(f"{source_name}: {keyword} {fault}; the DICOM-SEG leaves it empty"), UserWarning,
                      stacklevel=4)


def _vr_fault(element: pydicom.DataElement) -> str | None:
    """What makes a text element invalid for its VR (pydicom's own rule, plus the multiplicity and the PN form
    dciodvfy checks and pydicom does not), None when it is valid."""
    from pydicom.config import RAISE
    from pydicom.datadict import dictionary_VM
    from pydicom.valuerep import validate_value

    values = element.value if isinstance(element.value, (list, tuple, pydicom.multival.MultiValue)) else [element.value]
    try:
        allowed = dictionary_VM(element.tag)
    except KeyError:  # a private element: no dictionary entry
        allowed = ""
    if allowed == "1" and len(values) > 1:
        return f"holds {len(values)} values (a backslash in it) where its VR allows 1"
    for text in (str(v) for v in values if v not in (None, "")):  # a PersonName too: its text is what is written
        control = next((c for c in text if ord(c) < 0x20 and c not in _ALLOWED_CONTROL.get(element.VR, "\x1b")), None)
        if control is not None:
            return f"holds the control character {control!r}, which its VR {element.VR} does not allow"
        if element.VR == "PN" and any(group.count("^") >= PN_MAX_COMPONENTS for group in text.split("=")):
            return f"has a name of more than {PN_MAX_COMPONENTS} ^-separated components"
        try:
            validate_value(element.VR, text, RAISE)
        except ValueError as e:
            reason = re.sub(r"\. Please see .*", "", str(e).strip()).rstrip(".")  # pydicom's link to PS3.5
            limit = re.search(r"maximum (?:allowed )?length (?:of )?(\d+)", reason)
            return (f"is {len(text)} characters, longer than its VR {element.VR} allows ({limit.group(1)})"
                    if limit and element.VR != "PN" else f"is not a valid {element.VR} ({reason})")
        if element.VR == "PN" and len(text.encode("utf-8")) > PN_MAX_BYTES:
            # PS3.5 allows 64 characters per component group; dciodvfy counts the whole value (measured: a name of
            # two groups, 8 and 62 characters, "Length invalid for this VR = 71, expected <= 64")
            return f"is {len(text.encode('utf-8'))} bytes, longer than the 64 a PN value may hold"
    return None


SEG_DATES, SEG_TIMES = ("StudyDate", "PatientBirthDate"), ("StudyTime",)  # what highdicom parses from the source


def _values_highdicom_takes(ds: pydicom.Dataset, slice_spacing: float, *, measured: bool) -> list[str]:
    """The source's values that highdicom parses, made valid or left empty (the patient and study ones are Type 2);
    returns a note for each emptied or supplied. Why: clinics' files carry `f` or `X` for PatientSex, a StudyDate of
    20231345, a birth date 19XX0101, a StudyTime 25:61, a Modality `ct` or none, no SliceThickness (anonymisers and
    secondary captures drop it), and highdicom refused to build the SEG at all, de-identified or not ("'f' is not a
    valid PatientSexValues", "month must be in 1..12", "'FileDataset' object has no attribute 'SliceThickness'");
    old ACR-NEMA forms (2023.01.05, 12:30:05) and a SliceThickness of 0 went into a SEG that dciodvfy refuses.
    A thickness supplied is the grid's slice spacing: the SEG's own voxel."""
    notes: list[str] = []

    def emptied(keyword: str, value: object, expected: str) -> None:
        ds[keyword].value = ""
        notes.append(f"{keyword} {str(value)!r} is not {expected}; the DICOM-SEG leaves it empty")

    modality = str(ds.get("Modality", "") or "").strip().upper()
    ds.Modality = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "OT"
    if ds.Modality != modality:
        shown = repr(modality) if modality else "absent"
        notes.append(f"Modality {shown}: not a DICOM modality; the DICOM-SEG says OT")
    given = str(ds["SliceThickness"].value if "SliceThickness" in ds else "").strip()
    try:
        thickness = float(given or "nan")
    except (TypeError, ValueError):
        thickness = math.nan
    if "ImageOrientationPatient" in ds and not (math.isfinite(thickness) and thickness > 0):  # a plane: PixelMeasures
        ds.SliceThickness = f"{slice_spacing:.10g}"[:16]
        notes.append(f"SliceThickness {repr(given) if given else 'absent'} is not a thickness > 0 mm; the DICOM-SEG's "
                     f"frames take the slice spacing {slice_spacing:g} mm")
    notes += _spacing_between_slices(ds, slice_spacing, measured=measured) + _study_description(ds)
    if "PatientSex" in ds:
        sex = str(ds.PatientSex or "").strip().upper()
        if sex in ("", "M", "F", "O"):
            ds.PatientSex = sex
        else:
            emptied("PatientSex", ds.PatientSex, "M, F or O")
    for keyword in SEG_DATES + SEG_TIMES:
        raw = str(ds[keyword].value or "").strip() if keyword in ds else ""
        if not raw:
            continue
        kind = pydicom.valuerep.DA if keyword in SEG_DATES else pydicom.valuerep.TM
        # the old ACR-NEMA forms 2023.01.05 and 12:30:05: the same value, in the form DICOM has had since 1993
        value = raw.replace(":", "") if re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d{1,6})?)?", raw) else raw
        try:
            parsed = kind(value)
        except (ValueError, TypeError, OverflowError):
            emptied(keyword, raw, "a valid " + ("date (YYYYMMDD)" if keyword in SEG_DATES else "time (HHMMSS)"))
            continue
        if keyword in SEG_DATES and not re.fullmatch(r"\d{8}", value):
            value = parsed.strftime("%Y%m%d")
        if value != raw:
            ds[keyword].value = value
    return notes


SPACING_AGREES = 0.01  # a source's SpacingBetweenSlices within 1 % of the grid's step is the same spacing, rounded


def _spacing_between_slices(ds: pydicom.Dataset, slice_spacing: float, *, measured: bool) -> list[str]:
    """highdicom copies the source's SpacingBetweenSlices into the SEG's PixelMeasures; a negative one (MR scanners
    write -1.5 for slices stacked the other way), 0 or text went in as it was, and dciodvfy refuses it ("Not
    permitted to be negative"). A valid one that the slices' positions belie (3 mm for slices 1.5 mm apart; some
    vendors write the gap there) went in too: the SEG declared another spacing than its own frames' positions. The
    SEG's frames are the grid's, so they take its slice spacing (> 0; ``measured``: from the positions of two or more
    slices, else the one slice's own spacing is kept)."""
    if "SpacingBetweenSlices" not in ds:
        return []
    given = str(ds["SpacingBetweenSlices"].value if ds["SpacingBetweenSlices"].value is not None else "").strip()
    try:
        spacing = float(given)
    except (TypeError, ValueError):
        spacing = math.nan
    if not (math.isfinite(spacing) and spacing > 0):
        fault = "is not a spacing > 0 mm"
    elif measured and abs(spacing - slice_spacing) > SPACING_AGREES * slice_spacing:
        fault = f"disagrees with the slices' positions, {slice_spacing:g} mm apart"
    else:
        return []
    ds.SpacingBetweenSlices = f"{slice_spacing:.10g}"[:16]
    return [f"SpacingBetweenSlices {given!r} {fault}; the DICOM-SEG's frames take the slice spacing "
            f"{slice_spacing:g} mm"]



def _un_text_as_its_vr(ds: pydicom.Dataset) -> None:
    """A text value over 64 KiB cannot be written in its own VR's 2-byte length, so explicit-VR writers store it as UN
    (pydicom does) and pydicom reads it back as bytes; highdicom then failed on a PatientName of 70000 characters with
    "Invalid type for a person name" (session 17). Such an element becomes text of its dictionary VR again, so the
    checks that follow (StudyDescription cut, every value against its VR) name it."""
    from pydicom.datadict import dictionary_VR

    for element in list(ds):
        if element.VR != "UN" or not isinstance(element.value, bytes) or element.tag.is_private:
            continue
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:
            continue
        if vr in TEXT_VRS and element.keyword != "StudyDescription":  # that one has its own rule (cut, with a note)
            text = element.value.decode("utf-8", "replace").rstrip("\0 ")
            del ds[element.tag]
            ds.add_new(element.tag, vr, text)


def _study_description(ds: pydicom.Dataset) -> list[str]:
    """highdicom copies the source's StudyDescription (LO: 64 characters) as it is; a description pasted whole (a
    30 MB one opened) went into the SEG, which dciodvfy refuses ("Length invalid for this VR"). Cut to what LO holds."""
    if "StudyDescription" not in ds:
        return []
    raw = ds["StudyDescription"].value or ""
    # over 64 KiB it cannot be an explicit-VR LO: writers store it as UN, which pydicom reads as bytes
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if len(text.encode("utf-8")) <= 64 and not isinstance(raw, bytes):
        return []
    del ds["StudyDescription"]  # a fresh LO element: assigning text to a UN one failed when the SEG was written
    ds.StudyDescription = _lo(text, "")
    if len(text.encode("utf-8")) <= 64:
        return []
    return [f"StudyDescription of {len(text)} characters is longer than its VR LO allows (64); the DICOM-SEG keeps "
            "its first 64"]


def _text_in_utf8(ds: pydicom.Dataset) -> None:
    """The source's text decoded by its own SpecificCharacterSet and declared UTF-8 (ISO_IR 192) when it is not plain
    ASCII, so the SEG (which copies the patient and study modules and the character set) writes it validly. Why:
    highdicom refuses a set of several values, so a Japanese source (``\\ISO 2022 IR 87``, as Japanese scanners
    write it) could not be exported at all; a source with Latin-1 names and no SpecificCharacterSet (old exports)
    gave a SEG that dciodvfy refuses (``Character invalid for character repertoire``)."""
    declared = ds.get("SpecificCharacterSet")
    names = [str(v).strip() for v in (declared if isinstance(declared, (list, tuple, pydicom.multival.MultiValue))
                                      else [declared])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's note on undeclared non-ASCII bytes: read as Latin-1 below
        ds.decode()
        plain = all(str(e.value).isascii() for e in ds.iterall() if e.VR in TEXT_VRS and e.value is not None)
    if plain and all(n in ("", "None", "ISO_IR 6", "ISO_IR 192") for n in names):
        return
    ds.SpecificCharacterSet = "ISO_IR 192"


def _utf8_when_undeclared(ds: pydicom.Dataset) -> None:
    """Declare UTF-8 (ISO_IR 192) on a freshly read source that declares no character set and whose text is UTF-8
    (``_undeclared_utf8``), before any of its text is decoded (as Latin-1, pydicom's default)."""
    declared = ds.get("SpecificCharacterSet")
    if declared in (None, "", "ISO_IR 6") and _undeclared_utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"


def _undeclared_utf8(ds: pydicom.Dataset) -> bool:
    """Whether the text of a source without a character set is UTF-8: some non-ASCII bytes, all of them valid UTF-8.
    Why: undeclared bytes are read as Latin-1 (old European exports, session 15), and a name a tool wrote in UTF-8
    without declaring it went into the SEG as "å±±ç°^å¤ªé" for 山田^太郎, "MÃ¼ller" for Müller. Latin-1 text
    (ü alone is byte 0xFC) is almost never valid UTF-8, so the two are told apart by the bytes."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement

    found = False
    for tag, element in ds._dict.items():  # raw (not yet decoded) values: nothing read them as Latin-1 yet
        if not isinstance(element, RawDataElement) or not element.value:
            continue
        try:
            vr = element.VR or dictionary_VR(tag)
        except KeyError:
            continue
        if vr not in TEXT_VRS or element.value.isascii():
            continue
        try:
            element.value.decode("utf-8")
        except UnicodeDecodeError:
            return False
        found = True
    return found


# --- reading ------------------------------------------------------------------------------------
def read_dicom_seg(path: str | Path, reference: Volume | None = None) -> SegLabels:
    """Read a DICOM-SEG as a label map (values = segment numbers).

    With ``reference``: on its grid, by SOP Instance UID when the SEG references its DICOM
    images, else by patient-space position (nearest neighbour; needs the same frame of
    reference). Without: the SEG's own frames and geometry.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # pydicom/highdicom raise many types on a bad file
        raise DicomSegError(f"{path}: not a readable DICOM-SEG ({e})") from e
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    colours = {}
    for d in seg.SegmentSequence:
        if "RecommendedDisplayCIELabValue" in d:
            colours[int(d.SegmentNumber)] = tuple(int(c) for c in hd.color.CIELabColor.from_dicom_value(
                d.RecommendedDisplayCIELabValue).to_rgb())
    algorithm = ""
    first = seg.SegmentSequence[0]
    if "SegmentationAlgorithmIdentificationSequence" in first:
        item = first.SegmentationAlgorithmIdentificationSequence[0]
        algorithm = f"{item.AlgorithmName} ({item.AlgorithmVersion})"

    if reference is not None:
        referenced = {uid for _, _, uid in seg.get_source_image_uids()}
        ours = reference.source.sop_instance_uids
        if ours and referenced & set(ours):
            array = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(ours),
                combine_segments=True,
                assert_missing_frames_are_empty=True,
                dtype=np.uint16,
            )
            labels = reference.with_array(_smallest_uint(array))
        else:
            labels = _resample_onto(_own_grid(seg, path), reference, path)
    else:
        labels = _own_grid(seg, path)
    return SegLabels(labels=labels, names=names, colours=colours, algorithm=algorithm)


def _own_grid(seg, path: Path) -> Volume:
    """The SEG's frames as a volume, geometry from its functional groups (LPS, ITK convention)."""
    try:
        hd_volume = seg.get_volume(combine_segments=True, dtype=np.uint16)
    except (ValueError, RuntimeError) as e:
        raise DicomSegError(f"{path}: the SEG frames do not form a regular volume ({e})") from e
    affine = np.asarray(hd_volume.affine, dtype=float)  # (slice, row, column) index -> LPS mm
    cols = affine[:3, :3]  # columns: k, j, i axes
    axes = cols[:, [2, 1, 0]]  # -> i, j, k
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing
    origin = affine[:3, 3].copy()
    array = np.asarray(hd_volume.array)
    if array.ndim == 4:  # a channel axis left over (one segment)
        array = array[..., 0]
    if np.dot(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2]) < 0:
        # order slices along the row x column normal, as ITK's DICOM reader does (right-handed)
        origin = origin + (array.shape[0] - 1) * axes[:, 2]
        direction[:, 2] = -direction[:, 2]
        array = array[::-1]
    frame_uid = str(getattr(seg, "FrameOfReferenceUID", "")) or None
    return Volume(
        array=_smallest_uint(array),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) + 0.0 for d in direction.reshape(-1)),
        modality="SEG",
        source=SourceRef(
            path=str(path),
            format="dicom-seg",
            study_instance_uid=str(seg.StudyInstanceUID),
            series_instance_uid=str(seg.SeriesInstanceUID),
            frame_of_reference_uid=frame_uid,
            sop_instance_uids=(str(seg.SOPInstanceUID),),
            sop_class_uid=str(seg.SOPClassUID),
            files=(str(path),),
        ),
    )


def _resample_onto(own: Volume, reference: Volume, path: Path) -> Volume:
    ref_for, seg_for = reference.source.frame_of_reference_uid, own.source.frame_of_reference_uid
    if ref_for and seg_for and ref_for != seg_for:
        raise DicomSegError(
            f"{path}: the SEG lies in frame of reference {seg_for}, the study in {ref_for}: it belongs to another study"
        )
    target = sitk.Image(*reversed(reference.array.shape[:3]), sitk.sitkUInt8)
    reference.copy_geometry_to(target)
    moved = sitk.Resample(own.to_sitk(), target, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return reference.with_array(_smallest_uint(sitk.GetArrayFromImage(moved)))


def _smallest_uint(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.uint8 if array.max(initial=0) < 256 else np.uint16)
