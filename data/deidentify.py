"""De-identify an exported DICOM-SEG: DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, with the Retain UIDs Option; table-driven.

highdicom copies the patient and study identity from the source images into the SEG (so that
viewers file it with its series). :func:`deidentify_basic` applies every row of PS3.15 Table E.1-1
(the Basic Profile column) to the dataset and to every nested sequence item, removes all private
attributes, and records what it did (PatientIdentityRemoved, DeidentificationMethod and its code
sequence: 113100 Basic Application Confidentiality Profile, 113110 Retain UIDs Option).

The table: PS3.15 2026c Table E.1-1 as transcribed by dicom-anonymizer 2.1.0 (KitwareMedical,
BSD licence; ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``, generated from
https://dicom.nema.org/medical/dicom/current/output/chtml/part15/chapter_e.html). Only its tables
are used; the actions are ours (:func:`resolve`):

=========  ==========================================================================================
code       what we do
=========  ==========================================================================================
X          remove
Z          keep the attribute, empty (a sequence: no items)
D          replace with a dummy of the VR (``DUMMY``); a sequence: kept, without items
U          keep (Retain UIDs Option: the SEG must still reference its source series)
X/Z/U*     keep (a reference sequence; its items are cleaned like the rest)
Z/D, X/Z,  Z, unless the SEG needs a value there (``NEEDS_VALUE``: Type 1 in the SEG IOD), then D
X/Z/D
X/D        D if it is one the SEG needs a value for, else remove
=========  ==========================================================================================

Not covered: burned-in text in pixels (a SEG has none; its frames are our labels). Segment labels
are what the user typed in the UI and are kept.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

TABLE_SOURCE = "DICOM PS3.15 2026c Table E.1-1 (dicom-anonymizer 2.1.0, dicomfields_2026c)"
METHOD = "medseg: PS3.15 E.1-1 (2026c) Basic Profile, Retain UIDs"  # LO: at most 64 characters
CATEGORIES = {  # dicom-anonymizer's list name -> the Table E.1-1 action code
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# Type 1 in the Segmentation IOD (General Series, General Study, Enhanced General Equipment,
# Segmentation Image modules): a compound code that allows D gives a dummy there, never emptiness.
NEEDS_VALUE = frozenset({
    "ContentDate", "ContentTime", "DeviceSerialNumber", "SoftwareVersions", "Manufacturer",
    "ManufacturerModelName", "ContentLabel", "ContentCreatorName",
})
DUMMY: dict[str, object] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS", "AS": "000Y",
    "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0,
    "AT": 0, "OB": b"\0\0", "OW": b"\0\0", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4,
    "OV": b"\0" * 8, "UN": b"\0\0", "UI": "2.25.0", "CS": "ANONYMOUS",
}
DUMMY_TEXT = "ANONYMOUS"  # every other string VR (AE, LO, SH, LT, ST, UT, UC, UR)
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "ReferringPhysicianName")


@functools.lru_cache(maxsize=1)
def profile() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1 as ({tag: code}, ((group, element, group mask, element mask, code), ...))."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for name, code in CATEGORIES.items():
        for row in getattr(table, name):
            if len(row) == 2:
                exact[int(Tag(row[0], row[1]))] = code
            else:
                masked.append((row[0], row[1], row[2], row[3], code))
    return exact, tuple(masked)


def action_of(tag: int) -> str | None:
    """The Table E.1-1 code for ``tag`` (None: not in the table)."""
    exact, masked = profile()
    if (code := exact.get(int(tag))) is not None:
        return code
    group, element = int(tag) >> 16, int(tag) & 0xFFFF
    for g, e, gm, em, code in masked:
        if group & gm == g and element & em == e:
            return code
    return None


def resolve(code: str, keyword: str) -> str:
    """What medseg does for a table code (see the module docstring): 'X', 'Z', 'D' or 'K'."""
    if code in ("U", "X/Z/U*"):
        return "K"
    if code in ("X", "Z", "D"):
        return code
    if code == "X/D":
        return "D" if keyword in NEEDS_VALUE else "X"
    return "D" if keyword in NEEDS_VALUE else "Z"  # Z/D, X/Z, X/Z/D


def dummy(vr: str) -> object:
    return DUMMY.get(vr, DUMMY_TEXT)


def deidentify_basic(ds: Dataset) -> None:
    """Apply Table E.1-1 to ``ds`` and every nested sequence item, in place; drop private attributes;
    record the method."""
    _apply(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = [
        _code("113100", "Basic Application Confidentiality Profile"),
        _code("113110", "Retain UIDs Option"),
    ]
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _apply(ds: Dataset) -> None:
    ds.remove_private_tags()
    for element in list(ds):
        code = action_of(element.tag)
        if code is None:
            if element.VR == "SQ":
                for item in element.value or ():
                    _apply(item)
            continue
        what = resolve(code, element.keyword)
        if what == "X":
            del ds[element.tag]
        elif what == "Z":
            element.value = Sequence() if element.VR == "SQ" else None
        elif what == "D":
            element.value = Sequence() if element.VR == "SQ" else dummy(element.VR)
        elif element.VR == "SQ":  # kept: clean what its items hold
            for item in element.value or ():
                _apply(item)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def table_rows() -> Iterator[tuple[int, str]]:
    """Every exact (non-repeating-group) row of the table: (tag, code). For tests and docs."""
    yield from sorted(profile()[0].items())


def patient_data_note(path) -> str | None:
    """A one-line warning when the DICOM file at ``path`` names or dates a patient, else None."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTIFYING) + ["PatientIdentityRemoved"])
    except Exception:
        return None
    if str(getattr(ds, "PatientIdentityRemoved", "")).upper() == "YES":
        return None
    found = [k for k in IDENTIFYING if str(getattr(ds, k, "") or "").strip()]
    if not found:
        return None
    return f"this export carries patient data ({', '.join(found)}); share it only where the source images may go"


def deidentifier(args, *, to_pacs: bool = False) -> Callable[[Dataset], None] | None:
    """The hook for a CLI namespace of ``app.commands.common.add_identity_args``: the Basic Profile unless the
    user keeps the identifiers on purpose (``--keep-identifiers``; None then), as the UI's export does.

    ``to_pacs``: the SEG is stored on a PACS (STOW-RS), which files it with its source images by patient and
    study: it keeps their identity unless ``--deidentify`` asks otherwise. A de-identified SEG of a study the PACS
    holds is filed under a second, nameless patient with the same StudyInstanceUID (Orthanc), or refused as a
    patient mismatch; PS3.15 de-identification is for data that leaves the clinical record, not for the record."""
    if getattr(args, "keep_identifiers", False):
        return None
    if to_pacs and not getattr(args, "deidentify", False):
        return None
    return deidentify_basic
