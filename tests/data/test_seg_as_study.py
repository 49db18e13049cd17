"""A DICOM-SEG opened as a study (the user's own export, uploaded to carry on with the work, or a PACS export of the
segmentation series alone): the refusal told them to "open it as labels", which nothing in medseg does (the UI, the
CLI and the label server read labels from NIfTI/NRRD only), and a folder or zip holding only the SEG said "no DICOM
image series found in this folder", not what it held (session 18's adversarial pass)."""

from __future__ import annotations

import shutil

import pytest

from data.readers import StudyError, read_study
from tests.conftest import DATA

LIVER_SEG = DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm"
WHAT_TO_DO = ("a DICOM-SEG (segmentation), not an image: open the image series it was drawn on (medseg writes "
              "DICOM-SEG but does not read labels back from one)")


def test_a_seg_opened_alone_says_what_to_open_instead(tmp_path):
    shutil.copy(LIVER_SEG, tmp_path / "seg.dcm")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "seg.dcm")
    assert str(e.value) == f"{tmp_path / 'seg.dcm'}: {WHAT_TO_DO}"


def test_a_folder_holding_only_a_seg_names_it(tmp_path):
    (tmp_path / "export" / "SEG").mkdir(parents=True)
    shutil.copy(LIVER_SEG, tmp_path / "export" / "SEG" / "IM0001")
    (tmp_path / "export" / "README.TXT").write_text("exported by the PACS\n")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "export")
    folder = tmp_path / "export"
    assert str(e.value) == f"{folder}: no DICOM image series found in this folder: SEG/IM0001 is {WHAT_TO_DO}"


def test_a_seg_beside_its_series_is_left_out_as_before(tmp_path):
    shutil.copytree(DATA / "dicom" / "ct_head_0051_series_k050-061", tmp_path / "study")
    shutil.copy(LIVER_SEG, tmp_path / "study" / "seg.dcm")
    series = DATA / "dicom" / "ct_head_0051_series_k050-061"
    assert read_study(tmp_path / "study").array.shape == read_study(series).array.shape
