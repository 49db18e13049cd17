"""Privacy: a de-identified DICOM-SEG export carries no patient name, ID, birth date, study dates or
accession number, still references its source series, and the UI warns when an export is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.cli import main
from data.deidentify import deidentify_basic, patient_data_note
from data.dicom_seg import read_dicom_seg
from data.export import export_labels
from data.readers import read_study
from tests.conftest import SAMPLES

IDENTITY = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-0042",
    "PatientBirthDate": "19610203",
    "PatientSex": "F",
    "StudyDate": "20240517",
    "StudyTime": "101500",
    "SeriesDate": "20240517",
    "ContentDate": "20240517",
    "AccessionNumber": "ACC77",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "InstitutionName": "Princeton-Plainsboro",
    "StudyID": "S1",
}


@pytest.fixture(scope="module")
def identified_series(tmp_path_factory) -> Path:
    """The bundled CT series with a full (fictional) patient identity in every header."""
    folder = tmp_path_factory.mktemp("identified")
    for f in sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f.name)
    return folder


@pytest.fixture(scope="module")
def labels_and_volume(identified_series):
    volume = read_study(identified_series)
    labels = np.zeros(volume.array.shape[:3], np.uint8)
    labels[4:7, 100:140, 90:150] = 1
    return labels, volume


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")


def test_plain_export_carries_the_identity_and_the_ui_note_names_it(tmp_path, labels_and_volume):
    labels, volume = labels_and_volume
    out = export_labels(labels, volume, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    assert _text(ds, "PatientName") == "DOE^JANE" and _text(ds, "PatientID") == "MRN-0042"
    note = patient_data_note(out)
    assert note is not None and "PatientName" in note and "PatientID" in note and "StudyDate" in note


def test_deidentified_export_has_no_identity_and_keeps_its_references(tmp_path, labels_and_volume):
    labels, volume = labels_and_volume
    out = export_labels(labels, volume, tmp_path / "anon.dcm", deidentify=deidentify_basic)
    ds = pydicom.dcmread(out)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        assert keyword in ds and _text(ds, keyword) == "", keyword  # Type 2: present and empty
    for keyword in ("SeriesDate", "InstitutionName"):
        assert keyword not in ds, keyword
    assert ds.ContentDate == "19000101"
    assert ds.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    raw = Path(out).read_bytes()
    for value in ("DOE^JANE", "MRN-0042", "19610203", "20240517", "ACC77", "HOUSE", "Princeton"):
        assert value.encode() not in raw, value
    assert patient_data_note(out) is None
    # UIDs retained: still filed with, and read back onto, the source series
    assert ds.StudyInstanceUID == volume.source.study_instance_uid
    back = read_dicom_seg(out, reference=volume)
    np.testing.assert_array_equal(back.labels.array, labels)


def test_cli_segment_deidentify_flag(tmp_path, identified_series, capsys, litemedsam):
    out = tmp_path / "cli.dcm"
    code = main(["segment", str(identified_series), "--slice", "5", "--box", "90", "100", "150", "140",
                 "-o", str(out), "--deidentify"])
    assert code == 0, capsys.readouterr().err
    ds = pydicom.dcmread(out)
    assert _text(ds, "PatientName") == "" and _text(ds, "PatientID") == "" and ds.PatientIdentityRemoved == "YES"
    assert read_dicom_seg(out, reference=read_study(identified_series)).labels.array[5].any()
