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
    "study_date_month_13": (0x00080020, "DA", b"20231345", ("StudyDate", ""), "StudyDate '20231345' is not a valid date"),
    "study_date_dotted": (0x00080020, "DA", b"2023.01.05", ("StudyDate", "20230105"), None),
    "birth_date_xx": (0x00100030, "DA", b"19XX0101", ("PatientBirthDate", ""), "PatientBirthDate '19XX0101' is not"),
    "study_time_25_61": (0x00080030, "TM", b"25:61 ", ("StudyTime", ""), "StudyTime '25:61' is not a valid time"),
    "study_time_colons": (0x00080030, "TM", b"12:30:05", ("StudyTime", "123005"), None),
}


@pytest.mark.parametrize("deidentify", [False, True], ids=["identified", "deidentified"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_seg_is_written_of_a_source_with_a_dirty_study_value(tmp_path, case, deidentify):
    tag, vr, raw, (keyword, expected), warning = CASES[case]
    folder = tmp_path / "series"
    folder.mkdir()
    for f in CT_FILES:
        ds = pydicom.dcmread(f)
        ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
        ds.save_as(folder / f.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(folder)
    labels = np.zeros(volume.array.shape[:3], np.uint8)
    labels[3:6, 100:120, 100:120] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_labels(labels, volume, tmp_path / "seg.dcm", deidentify=deidentify_basic if deidentify else None)
    ours = [str(w.message) for w in caught if "DICOM-SEG leaves it empty" in str(w.message)]
    if warning is None:
        assert not ours, ours
    else:
        assert len(ours) == 1 and warning in ours[0] and ours[0].startswith(CT_FILES[0].name), ours
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    if not deidentify:
        assert str(seg.get(keyword, "")) == expected
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(tmp_path / "seg.dcm")], capture_output=True)
        errors = [line for line in (out.stdout + out.stderr).decode("utf-8", "replace").splitlines()
                  if line.startswith("Error")]
        assert not errors, errors
