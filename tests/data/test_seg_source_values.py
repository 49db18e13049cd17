"""DICOM-SEG export of sources with the dirty patient and study values clinics' files carry (PatientSex `f` or `X`,
a StudyDate of 20231345 or 2023.01.05, a birth date 19XX0101, a StudyTime 25:61): the SEG is written, de-identified
or not, valid to dciodvfy, with one warning line naming each value left empty (session 15's adversarial pass:
highdicom refused to build the SEG at all, e.g. "'f' is not a valid PatientSexValues", "month must be in 1..12")."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from data.deidentify import deidentify_basic
from data.export import export_labels
from data.readers import read_study
from tests.conftest import SAMPLES

CT_FILES = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
DCIODVFY = shutil.which("dciodvfy")

CASES = {  # tag, VR, the source's bytes, what the SEG carries, a warning expected
    "sex_lower_case": (0x00100040, "CS", b"f ", ("PatientSex", "F"), None),
    "sex_x": (0x00100040, "CS", b"X ", ("PatientSex", ""), "PatientSex 'X' is not M, F or O"),
    "study_date_month_13": (0x00080020, "DA", b"20231345", ("StudyDate", ""),
                            "StudyDate '20231345' is not a valid date"),
    "study_date_dotted": (0x00080020, "DA", b"2023.01.05", ("StudyDate", "20230105"), None),
    "birth_date_xx": (0x00100030, "DA", b"19XX0101", ("PatientBirthDate", ""), "PatientBirthDate '19XX0101' is not"),
    "study_time_25_61": (0x00080030, "TM", b"25:61 ", ("StudyTime", ""), "StudyTime '25:61' is not a valid time"),
    "study_time_colons": (0x00080030, "TM", b"12:30:05", ("StudyTime", "123005"), None),
    "slice_thickness_zero": (0x00180050, "DS", b"0 ", ("SliceThickness", "1.5"),
                             "SliceThickness '0' is not a thickness"),
    "slice_thickness_text": (0x00180050, "DS", b"abc ", ("SliceThickness", "1.5"), "SliceThickness 'abc' is not"),
    "modality_lower_case": (0x00080060, "CS", b"ct", ("Modality", "SEG"), None),  # the SEG's own: it was refused
    # a description pasted whole (an LO holds 64 characters): it went into the SEG as it was, which dciodvfy refuses
    "study_description_100": (0x00081030, "LO", b"x" * 100, ("StudyDescription", "x" * 64),
                              "StudyDescription of 100 characters is longer than its VR LO allows (64)"),
    # over 64 KiB an explicit-VR writer stores it as UN (pydicom does): it went in as bytes, the SEG failed to write
    "study_description_un": (0x00081030, "UN", b"x" * 70000, ("StudyDescription", "x" * 64),
                             "StudyDescription of 70000 characters is longer than its VR LO allows (64)"),
    # MR scanners write a negative spacing for slices stacked the other way: it was copied, dciodvfy refuses it
    "spacing_between_slices_negative": (0x00180088, "DS", b"-1.5", ("SpacingBetweenSlices", "1.5"),
                                        "SpacingBetweenSlices '-1.5' is not a spacing > 0 mm"),
    # a spacing the positions (1.5 mm apart, what the series opens by) belie: the SEG declared 3 mm between its frames
    # (session 20); some vendors write the gap between slices there
    "spacing_between_slices_disagrees": (0x00180088, "DS", b"3.0 ", ("SpacingBetweenSlices", "1.5"),
                                         "SpacingBetweenSlices '3.0' disagrees with the slices' positions, 1.5 mm "
                                         "apart; the DICOM-SEG's frames take the slice spacing 1.5 mm"),
}


def _ct_series_with(tmp_path, tag: int, vr: str, raw: bytes):
    """The sample CT series copied to ``tmp_path/series`` with ``tag`` set to ``raw`` as written, unchecked."""
    folder = tmp_path / "series"
    folder.mkdir()
    for f in CT_FILES:
        ds = pydicom.dcmread(f)
        ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
        ds.save_as(folder / f.name)
    return folder


def _a_square(volume) -> np.ndarray:
    """A label map of the volume with one 3 x 20 x 20 square of label 1."""
    labels = np.zeros(volume.array.shape[:3], np.uint8)
    labels[3:6, 100:120, 100:120] = 1
    return labels


@pytest.mark.parametrize("deidentify", [False, True], ids=["identified", "deidentified"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_seg_is_written_of_a_source_with_a_dirty_study_value(tmp_path, case, deidentify):
    tag, vr, raw, (keyword, expected), warning = CASES[case]
    folder = _ct_series_with(tmp_path, tag, vr, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(folder)
    labels = _a_square(volume)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_labels(labels, volume, tmp_path / "seg.dcm", deidentify=deidentify_basic if deidentify else None)
    ours = [str(w.message) for w in caught if "the DICOM-SEG" in str(w.message)]
    if warning is None:
        assert not ours, ours
    else:
        assert len(ours) == 1 and warning in ours[0] and ours[0].startswith(CT_FILES[0].name), ours
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    if keyword in ("SliceThickness", "SpacingBetweenSlices"):  # the SEG's frames: their PixelMeasures
        seg = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if not deidentify or keyword in ("SliceThickness", "SpacingBetweenSlices", "Modality"):
        assert str(seg.get(keyword, "")) == expected
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(tmp_path / "seg.dcm")], capture_output=True)
        errors = [line for line in (out.stdout + out.stderr).decode("utf-8", "replace").splitlines()
                  if line.startswith("Error")]
        assert not errors, errors


@pytest.mark.parametrize("keyword", ["SliceThickness", "Modality", "SOPClassUID"])
def test_a_source_without_slice_thickness_modality_or_sop_class(tmp_path, keyword):
    """Without SliceThickness (anonymisers and secondary captures drop it) or Modality the SEG is written, its frames
    as thick as the slices are apart, and read back by UID onto the slices drawn on; without SOPClassUID (which it
    must reference) one line says so. Before: "highdicom could not build the DICOM-SEG ('FileDataset' object has
    no attribute 'SliceThickness')", and the same for the other two."""
    from data.dicom_seg import read_dicom_seg
    from data.export import ExportError

    folder = tmp_path / "series"
    folder.mkdir()
    for f in CT_FILES:
        ds = pydicom.dcmread(f)
        delattr(ds, keyword)
        ds.save_as(folder / f.name, enforce_file_format=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(folder)
        labels = np.zeros(volume.array.shape[:3], np.uint8)
        labels[4, 100:120, 100:120] = 1
        if keyword == "SOPClassUID":
            with pytest.raises(ExportError, match="IM0001.dcm has no SOPClassUID; a DICOM-SEG must reference it"):
                export_labels(labels, volume, tmp_path / "seg.dcm")
            return
        export_labels(labels, volume, tmp_path / "seg.dcm")
        back = np.asarray(read_dicom_seg(tmp_path / "seg.dcm", volume).labels.array)
    assert np.array_equal(back, labels)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    assert float(thickness) == pytest.approx(1.5 if keyword == "SliceThickness" else float(pydicom.dcmread(
        CT_FILES[0]).SliceThickness))
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(tmp_path / "seg.dcm")], capture_output=True)
        assert not [line for line in (out.stdout + out.stderr).decode("utf-8", "replace").splitlines()
                    if line.startswith("Error")]


IDENTIFIERS = {  # tag, VR, the source's bytes, the one line expected after "seg.dcm: the source's "
    "patient_id_100": (0x00100020, "LO", b"P" * 100, "PatientID is 100 characters, longer than its VR LO allows (64)"),
    # over 64 KiB an explicit-VR writer stores it as UN: highdicom failed, "Invalid type for a person name"
    "patient_name_70000_un": (0x00100010, "UN", b"A" * 70000, "PatientName is not a valid PN (The PN component "
                              "length (70000) exceeds the maximum allowed length of 64)"),
    "patient_name_component_95": (0x00100010, "PN", b"DOE" * 30 + b"^JANE", "PatientName is not a valid PN (The PN "
                                  "component length (95) exceeds the maximum allowed length of 64)"),
    # each group within PS3.5's 64, the whole value not: dciodvfy counts the whole value
    "patient_name_two_groups_71": (0x00100010, "PN", b"DOE^JANE=" + b"X" * 60 + b"^Y", "PatientName is 71 bytes, "
                                   "longer than the 64 a PN value may hold"),
    "patient_name_6_components": (0x00100010, "PN", b"A^B^C^D^E^F", "PatientName has a name of more than 5 "
                                  "^-separated components"),
    "patient_id_two_values": (0x00100020, "LO", b"12\\34", "PatientID holds 2 values (a backslash in it) where its "
                              "VR allows 1"),
    "issuer_of_patient_id_100": (0x00100021, "LO", b"I" * 100, "IssuerOfPatientID is 100 characters, longer than its "
                                 "VR LO allows (64)"),
    "accession_number_40": (0x00080050, "SH", b"A" * 40, "AccessionNumber is 40 characters, longer than its VR SH "
                            "allows (16)"),
    "study_id_40": (0x00200010, "SH", b"S" * 40, "StudyID is 40 characters, longer than its VR SH allows (16)"),
    "patient_name_bell": (0x00100010, "PN", b"DOE^JANE\x07", "PatientName holds the control character '\\x07', "
                          "which its VR PN does not allow"),
}


def _dciodvfy_errors(path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True)
    return [line[:200] for line in (out.stdout + out.stderr).decode("utf-8", "replace").splitlines()
            if line.startswith("Error")]


@pytest.mark.parametrize("case", sorted(IDENTIFIERS))
def test_an_identified_seg_of_an_identifier_its_vr_cannot_hold_is_refused_in_one_line(tmp_path, case):
    """Session 17: with the identifiers kept (a SEG going back to its PACS) these went into a SEG that dciodvfy refuses
    (or, a 70000-character name stored as UN, highdicom failed in its own words). Cutting one would file the SEG under
    another patient or study: refused naming the field; the de-identified export replaces them and passes dciodvfy."""
    from data.export import ExportError

    tag, vr, raw, said = IDENTIFIERS[case]
    folder = _ct_series_with(tmp_path, tag, vr, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(folder)
        labels = _a_square(volume)
        with pytest.raises(ExportError) as e:
            export_labels(labels, volume, tmp_path / "seg.dcm")
        export_labels(labels, volume, tmp_path / "deidentified.dcm", deidentify=deidentify_basic)
    assert str(e.value) == (f"{tmp_path / 'seg.dcm'}: the source's {said}; a DICOM-SEG carrying it is invalid and one "
                            "with it changed would no longer match the source's records: correct it in the source "
                            "images, or export de-identified (without --keep-identifiers; in the UI, untick Keep patient "
                            "identifiers)")
    assert not (tmp_path / "seg.dcm").exists()
    if DCIODVFY:
        assert not _dciodvfy_errors(tmp_path / "deidentified.dcm")


OTHER_VALUES = {  # tag, VR, the source's bytes, the warning after "IM0001.dcm: "
    "patient_age_45": (0x00101010, "AS", b"45", "PatientAge is not a valid AS (Invalid value for VR AS: '45')"),
    "patient_size_abc": (0x00101020, "DS", b"abc ", "PatientSize is not a valid DS (Invalid value for VR DS: 'abc')"),
    "birth_time_25": (0x00100032, "TM", b"25:00 ", "PatientBirthTime is not a valid TM (Invalid value for VR TM: "
                                                   "'25:00')"),
    "referring_physician_100": (0x00080090, "PN", b"R" * 100, "ReferringPhysicianName is not a valid PN (The PN "
                                "component length (100) exceeds the maximum allowed length of 64)"),
    "patient_comments_20000": (0x00104000, "LT", b"C" * 20000, "PatientComments is 20000 characters, longer than its "
                               "VR LT allows (10240)"),
}


@pytest.mark.parametrize("case", sorted(OTHER_VALUES))
def test_an_identified_seg_leaves_an_invalid_value_that_identifies_nothing_empty(tmp_path, case):
    """Session 17: a PatientAge '45' (AS is '045Y'), a PatientSize 'abc', a birth time 25:00, a referring physician's
    name over 64 or comments over LT's 10240 went into an identified SEG that dciodvfy refuses. They match no record,
    so the SEG is written with the value empty and one warning line, as invalid dates and PatientSex already were."""
    tag, vr, raw, said = OTHER_VALUES[case]
    folder = _ct_series_with(tmp_path, tag, vr, raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_study(folder)
        labels = _a_square(volume)
        export_labels(labels, volume, tmp_path / "seg.dcm")
    ours = [str(w.message) for w in caught if "the DICOM-SEG" in str(w.message)]
    assert ours == [f"{CT_FILES[0].name}: {said}; the DICOM-SEG leaves it empty"], ours
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert str(seg[tag].value or "") == "" and str(seg.PatientName) == str(pydicom.dcmread(CT_FILES[0]).PatientName)
    if DCIODVFY:
        assert not _dciodvfy_errors(tmp_path / "seg.dcm")
