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


# --- the whole profile, row by row ----------------------------------------------------------------
def _identifying_value(vr: str, n: int):
    """A value of ``vr`` that can be told apart from any dummy (and found in the file's bytes)."""
    return {
        "DA": "20240517", "TM": "101500", "DT": "20240517101500", "PN": f"DOE^JANE{n}", "AS": "042Y",
        "IS": str(100 + n), "DS": str(100 + n), "US": 4242, "SS": 4242, "UL": 4242, "SL": 4242, "FL": 42.5,
        "FD": 42.5, "UI": f"1.2.3.4242.{n}", "CS": f"ID{n}", "AE": f"AE{n}",
    }.get(vr, b"IDENTITY%04d" % n if vr in ("OB", "OW", "UN") else f"IDENTITY{n:04d}")


def _fully_populated() -> tuple[pydicom.Dataset, dict[int, tuple[str, object]]]:
    """Every exact row of Table E.1-1 present with an identifying value; sequences hold one item
    with a patient name; plus an overlay, a curve and a private attribute (masked rows, private rule)."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag
    from pydicom.dataelem import DataElement

    from data.deidentify import table_rows

    ds, values = pydicom.Dataset(), {}
    for n, (tag, _) in enumerate(table_rows()):
        vr = dictionary_VR(tag).split(" or ")[0] if keyword_for_tag(tag) else "LO"
        if vr == "SQ":
            item = pydicom.Dataset()
            item.PatientName = f"NESTED^NAME{n}"
            item.ReferencedSOPInstanceUID = f"1.2.3.999.{n}"
            value = pydicom.Sequence([item])
        else:
            value = _identifying_value(vr, n)
        ds[tag] = DataElement(tag, vr, value)
        values[tag] = (vr, value)
    ds.add_new(0x60003000, "OW", b"\1\2" * 8)  # overlay data
    ds.add_new(0x60024000, "LT", "OVERLAY COMMENT")
    ds.add_new(0x50000010, "US", 3)  # a retired curve attribute
    block = ds.private_block(0x0009, "EVIL PACS", create=True)
    block.add_new(0x01, "LO", "PRIVATE^PATIENT")
    return ds, values


def test_every_row_of_the_basic_profile_on_a_fully_populated_dataset():
    from data.deidentify import dummy, profile, resolve

    ds, values = _fully_populated()
    assert len(values) >= 600 and len(profile()[1]) == 3  # the whole 2026c table: 652 rows + 3 masked
    deidentify_basic(ds)
    done = {"X": 0, "Z": 0, "D": 0, "K": 0}
    for tag, (vr, original) in values.items():
        what = resolve(profile()[0][tag], pydicom.datadict.keyword_for_tag(tag))
        done[what] += 1
        name = f"{tag:08X} {pydicom.datadict.keyword_for_tag(tag)} ({profile()[0][tag]} -> {what})"
        if what == "X":
            assert tag not in ds, name
            continue
        assert tag in ds, name
        value = ds[tag].value
        if what == "Z":
            assert value in (None, "", b"") or (vr == "SQ" and len(value) == 0), name
        elif what == "D":
            assert (len(value) == 0) if vr == "SQ" else value == dummy(vr), name
        elif vr == "SQ":  # kept reference sequences: UIDs kept, the patient name inside emptied
            assert value[0].ReferencedSOPInstanceUID == original[0].ReferencedSOPInstanceUID, name
            assert value[0].PatientName in (None, ""), name
        else:
            assert value == original, name
    assert all(done.values()), done  # every action of the table was exercised
    assert 0x60003000 not in ds and 0x60024000 not in ds and 0x50000010 not in ds
    assert not any(e.tag.is_private for e in ds)
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    # nothing identifying is left in the written bytes, except the UIDs the option retains
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)  # (the table has command-group rows, which a file may not hold)
    raw = buffer.getvalue()
    for marker in (b"IDENTITY", b"DOE^JANE", b"NESTED^NAME", b"20240517", b"PRIVATE^PATIENT", b"OVERLAY"):
        assert marker not in raw, marker


def test_the_issue_23_leftovers_are_gone(tmp_path, labels_and_volume):
    """The attributes the old subset kept while stamping PatientIdentityRemoved=YES (issue 23)."""
    labels, volume = labels_and_volume

    def populate_then_deidentify(seg):
        for keyword, value in {
            "IssuerOfPatientID": "HOSPITAL-X", "PhysiciansOfRecord": "WILSON^JAMES", "Occupation": "PILOT",
            "AdditionalPatientHistory": "fell off a ladder", "AdmittingDiagnosesDescription": "fracture",
            "ResponsiblePerson": "DOE^JOHN", "ClinicalTrialSubjectID": "SUBJ-9", "ClinicalTrialSponsorName": "ACME",
            "ClinicalTrialProtocolID": "PROT-1", "ClinicalTrialSiteID": "SITE-3", "ClinicalTrialSiteName": "Boston",
        }.items():
            setattr(seg, keyword, value)
        deidentify_basic(seg)

    from data.dicom_seg import write_dicom_seg

    out = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", deidentify=populate_then_deidentify)
    raw = Path(out).read_bytes()
    for value in ("HOSPITAL-X", "WILSON", "PILOT", "ladder", "fracture", "DOE^JOHN", "SUBJ-9", "ACME", "PROT-1",
                  "SITE-3", "Boston"):
        assert value.encode() not in raw, value
    assert read_dicom_seg(out, reference=volume).labels.array.any()


def test_ui_exports_are_deidentified_unless_asked_to_keep_identifiers(tmp_path, identified_series):
    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore

    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(p) for p in sorted(identified_series.glob("*.dcm"))])
    ctx.store.get(sid).labels[5, 100:120, 100:120] = 1
    default, _ = controller.export(ctx, sid, "dicom-seg")
    ds = pydicom.dcmread(default)
    assert ds.PatientIdentityRemoved == "YES" and _text(ds, "PatientName") == "" and "InstitutionName" not in ds
    assert b"DOE^JANE" not in Path(default).read_bytes() and patient_data_note(default) is None
    kept, _ = controller.export(ctx, sid, "dicom-seg", keep_identifiers=True)
    assert _text(pydicom.dcmread(kept), "PatientName") == "DOE^JANE" and patient_data_note(kept) is not None


# --- named attributes, the documented actions, the note and the CLI hook (independent of resolve()) ----
def test_named_attributes_get_their_table_e11_action():
    """Expected values written by hand from PS3.15 Table E.1-1 (not computed with the code under test):
    X/D ProtocolName and InstanceCreationDate are removed, D ClinicalTrialSponsorName gets a dummy,
    Z/D ContentDate and ContentCreatorName (Type 1 in a SEG) get dummies, Z PatientName and Z/D
    PatientID stay empty, U StudyInstanceUID and X/Z/U* ReferencedImageSequence are kept, and a
    sequence the table does not name (SegmentSequence) is cleaned inside."""
    ds = pydicom.Dataset()
    ds.ProtocolName, ds.InstanceCreationDate = "HEAD^DOE", "20240517"
    ds.ClinicalTrialSponsorName = "ACME"
    ds.ContentDate, ds.ContentCreatorName, ds.DeviceSerialNumber = "20240517", "HOUSE^GREGORY", "SN-42"
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "DOE^JANE", "MRN-0042", "1.2.3.4"
    ref = pydicom.Dataset()
    ref.ReferencedSOPInstanceUID, ref.PatientName = "1.2.3.5", "DOE^JANE"
    ds.ReferencedImageSequence = [ref]
    segment = pydicom.Dataset()
    segment.SegmentLabel, segment.PatientName, segment.ClinicalTrialSponsorName = "liver", "DOE^JANE", "ACME"
    ds.SegmentSequence = [segment]
    deidentify_basic(ds)
    assert "ProtocolName" not in ds and "InstanceCreationDate" not in ds
    assert ds.ClinicalTrialSponsorName == "ANONYMOUS"
    assert ds.ContentDate == "19000101" and ds.ContentCreatorName == "ANONYMOUS" and ds.DeviceSerialNumber == "ANONYMOUS"
    assert "PatientName" in ds and _text(ds, "PatientName") == "" and _text(ds, "PatientID") == ""
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.5"
    assert _text(ds.ReferencedImageSequence[0], "PatientName") == ""
    inner = ds.SegmentSequence[0]
    assert inner.SegmentLabel == "liver" and _text(inner, "PatientName") == "" and inner.ClinicalTrialSponsorName == "ANONYMOUS"
    # what the file says was done (PS3.3 C.7.1.1, PS3.16 CID 7050)
    assert ds.DeidentificationMethod == "medseg: PS3.15 E.1-1 (2026c) Basic Profile, Retain UIDs"
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in ds.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM", "Basic Application Confidentiality Profile"), ("113110", "DCM", "Retain UIDs Option")]


@pytest.mark.parametrize("code, keyword, expected", [
    ("X", "PatientAddress", "X"), ("Z", "PatientName", "Z"), ("Z", "ContentDate", "Z"), ("D", "ClinicalTrialSponsorName", "D"),
    ("U", "StudyInstanceUID", "K"), ("X/Z/U*", "ReferencedImageSequence", "K"),
    ("X/D", "ProtocolName", "X"), ("X/D", "ContentDate", "D"),
    ("Z/D", "PatientID", "Z"), ("Z/D", "ContentDate", "D"), ("X/Z", "PatientAddress", "Z"), ("X/Z/D", "DeviceSerialNumber", "D"),
])
def test_resolve_follows_the_documented_mapping(code, keyword, expected):
    """The module docstring's table: a compound code gives a dummy only where a SEG needs a value."""
    from data.deidentify import resolve

    assert resolve(code, keyword) == expected


def _header(path: Path, **attrs) -> Path:
    ds = pydicom.Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.3.6"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_patient_data_note_names_exactly_the_identifying_fields_present(tmp_path):
    """Empty (Type 2) and absent fields are not named; a file marked de-identified gets no note,
    even with a pseudonym in it; a file that is not DICOM gets none either."""
    f = _header(tmp_path / "a.dcm", PatientName="DOE^JANE", PatientID="", StudyDate="20240517")
    assert patient_data_note(f) == ("this export carries patient data (PatientName, StudyDate); "
                                    "share it only where the source images may go")
    assert patient_data_note(_header(tmp_path / "b.dcm", PatientName="", PatientID="")) is None
    assert patient_data_note(_header(tmp_path / "c.dcm", PatientName="ANON^0001", PatientIdentityRemoved="YES")) is None
    (tmp_path / "d.dcm").write_text("not dicom")
    assert patient_data_note(tmp_path / "d.dcm") is None


def test_cli_flag_picks_the_basic_profile():
    from argparse import Namespace

    from data.deidentify import deidentifier

    assert deidentifier(Namespace(deidentify=True, keep_identifiers=False)) is deidentify_basic
    assert deidentifier(Namespace(deidentify=False, keep_identifiers=False)) is deidentify_basic  # the default
    assert deidentifier(Namespace()) is deidentify_basic
    assert deidentifier(Namespace(deidentify=False, keep_identifiers=True)) is None
    # a SEG stored on a PACS keeps the identity its images are filed under, unless asked otherwise
    assert deidentifier(Namespace(deidentify=False, keep_identifiers=False), to_pacs=True) is None
    assert deidentifier(Namespace(deidentify=True, keep_identifiers=False), to_pacs=True) is deidentify_basic


def test_a_deidentified_ui_export_is_not_named_after_the_patient(tmp_path, identified_series):
    """Viewers export a study as a folder or zip named after the patient (OsiriX/Horos: 'Name - Study'); the
    de-identified DICOM-SEG was then named 'DOE_JANE_-_CT_head_seg.dcm'. Its name now carries nothing of the
    upload's; with identifiers kept it is named after the study as before."""
    import zipfile

    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore

    upload = tmp_path / "DOE JANE - CT head.zip"
    with zipfile.ZipFile(upload, "w") as z:
        for f in sorted(identified_series.glob("*.dcm")):
            z.write(f, f"DOE JANE/{f.name}")
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(upload)])
    ctx.store.get(sid).labels[5, 100:120, 100:120] = 1
    default, vm = controller.export(ctx, sid, "dicom-seg")
    assert "DOE" not in default.name.upper() and "JANE" not in default.name.upper() and "DOE" not in vm.status
    assert pydicom.dcmread(default).PatientIdentityRemoved == "YES"
    kept, _ = controller.export(ctx, sid, "dicom-seg", keep_identifiers=True)
    assert kept.name == "DOE_JANE_-_CT_head_seg.dcm"


PLANTED = """PatientName PatientID PatientComments EthnicGroup OtherPatientIDs AccessionNumber StudyID StudyDescription
ReferringPhysicianName InstitutionName InstitutionAddress StationName OperatorsName PerformingPhysicianName
NameOfPhysiciansReadingStudy RequestingPhysician AdmittingDiagnosesDescription MedicalAlerts Allergies
ClinicalTrialSponsorName ClinicalTrialSubjectID ClinicalTrialProtocolID ClinicalTrialSiteID ClinicalTrialProtocolName
ClinicalTrialTimePointID PatientBirthName PatientMotherBirthName PatientAddress PatientTelephoneNumbers
IssuerOfPatientID SeriesDescription ProtocolName DeviceSerialNumber PerformedProcedureStepDescription PatientState
AdditionalPatientHistory ReasonForTheRequestedProcedure""".split()


def test_identity_anywhere_in_the_source_headers_is_absent_from_the_deidentified_seg(tmp_path):
    """What highdicom copies from the source into the SEG (patient, study, clinical-trial modules, nested items,
    private blocks) is what the profile then cleans: marks planted in 37 source attributes, 2 sequences and 2
    private blocks; none is in the de-identified file's bytes, nor a source date or time. (Session 12: held.)"""
    from pydicom.dataset import Dataset

    marks: dict[str, str] = {}

    def mark(what: str) -> str:  # short enough for any VR (SH: 16): an identified SEG of invalid values is refused
        # one mark per attribute, the same on every slice: a series of one patient (slices of two are refused)
        return marks.setdefault(what, f"PHI{len(marks)}X")

    folder = tmp_path / "series"
    folder.mkdir()
    for f in sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword in PLANTED:
            setattr(ds, keyword, mark(keyword))
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID = mark("OtherID"), mark("OtherIssuer")
        ds.OtherPatientIDsSequence = [other]
        request = Dataset()
        request.RequestedProcedureID, request.ScheduledProcedureStepID = mark("Requested"), mark("Scheduled")
        ds.RequestAttributesSequence = [request]
        ds.add_new(0x00091010, "LO", mark("Private"))
        ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", mark("PrivateBlock"))
        ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate = "19610203", "20230405", "20230405"
        ds.AcquisitionDate = "20230405"
        ds.StudyTime, ds.AcquisitionDateTime, ds.BurnedInAnnotation = "101112", "20230405101112", "YES"
        ds.save_as(folder / f.name)
    volume = read_study(folder)
    labels = np.zeros(volume.array.shape[:3], np.uint8)
    labels[3, 50:80, 50:90] = 1
    kept = export_labels(labels, volume, tmp_path / "kept.dcm", {1: "lesion"})
    assert str(pydicom.dcmread(kept).PatientName) == marks["PatientName"]  # the plant reached the SEG
    raw = export_labels(labels, volume, tmp_path / "clean.dcm", {1: "lesion"}, deidentify=deidentify_basic).read_bytes()
    assert [m for m in marks.values() if m.encode() in raw] == []
    assert [d for d in ("19610203", "20230405", "101112") if d.encode() in raw] == []
