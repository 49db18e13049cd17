"""De-identify an exported DICOM-SEG header (a subset of DICOM PS3.15 Annex E, Basic Profile).

highdicom copies the patient and study identity from the source images into the SEG (so that
viewers file it with its series). For sharing outside the care team, :func:`deidentify_basic`
empties or replaces the attributes that name or date the patient, keeping the UIDs (Retain UIDs
Option, 113110) so the SEG still points at its source series. It is a hook for
``data.export.export_labels(..., deidentify=deidentify_basic)`` (``--deidentify`` on the CLI).

Not covered: burned-in text in pixels (a SEG has none) and free text in private tags (the SEG
carries none: highdicom builds it from scratch).
"""

from __future__ import annotations

from typing import Callable

import pydicom
from pydicom.dataset import Dataset

DUMMY_DATE, DUMMY_TIME = "19000101", "000000"

# keyword -> action: "Z" empty (Type 2, must stay present), "D" dummy value (Type 1), "X" remove (Type 3)
BASIC_PROFILE_SUBSET: dict[str, str] = {
    "PatientName": "Z",
    "PatientID": "Z",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientWeight": "X",
    "PatientSize": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientComments": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientMotherBirthName": "X",
    "MedicalRecordLocator": "X",
    "EthnicGroup": "X",
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "SeriesDate": "X",
    "SeriesTime": "X",
    "AcquisitionDate": "X",
    "AcquisitionTime": "X",
    "AcquisitionDateTime": "X",
    "ContentDate": "D",
    "ContentTime": "D",
    "InstanceCreationDate": "X",
    "InstanceCreationTime": "X",
    "ReferringPhysicianName": "Z",
    "PerformingPhysicianName": "X",
    "OperatorsName": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "RequestingPhysician": "X",
    "InstitutionName": "X",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "StationName": "X",
    "StudyDescription": "X",
    "RequestAttributesSequence": "X",
}
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "ReferringPhysicianName")


def deidentify_basic(ds: Dataset) -> None:
    """Apply :data:`BASIC_PROFILE_SUBSET` to ``ds`` and every nested sequence item, in place."""
    _apply(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medseg: DICOM PS3.15 Basic Profile subset, UIDs retained"
    ds.DeidentificationMethodCodeSequence = [
        _code("113100", "Basic Application Confidentiality Profile"),
        _code("113110", "Retain UIDs Option"),
    ]


def _apply(ds: Dataset) -> None:
    for keyword, action in BASIC_PROFILE_SUBSET.items():
        if keyword not in ds:
            continue
        if action == "X":
            delattr(ds, keyword)
        elif action == "Z":
            ds[keyword].value = None if ds[keyword].VR == "SQ" else ""
        else:
            ds[keyword].value = DUMMY_DATE if ds[keyword].VR == "DA" else DUMMY_TIME
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _apply(item)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


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


def deidentifier(args) -> Callable[[Dataset], None] | None:
    """The hook for a CLI namespace with ``--deidentify`` (None when the flag is off)."""
    return deidentify_basic if getattr(args, "deidentify", False) else None
