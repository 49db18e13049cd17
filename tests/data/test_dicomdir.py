"""A DICOMDIR (the index of a CD/DVD export, what CD viewers ask for) opened alone, or a folder that holds only it:
one line saying what it is and what to open instead (session 15's adversarial pass: "DICOM file without pixel data;
expected an image" and "no DICOM image series found in this folder", which left the user guessing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from data.readers import StudyError, read_study

DICOMDIR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"


def test_a_dicomdir_opened_alone_says_it_is_the_index_and_what_to_open(tmp_path):
    shutil.copy(DICOMDIR, tmp_path / "DICOMDIR")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "DICOMDIR")
    assert "DICOMDIR: a DICOMDIR, the index of a CD/DVD export, not an image; open the folder" in str(e.value)


def test_a_folder_with_only_a_dicomdir_says_the_image_files_are_missing(tmp_path):
    (tmp_path / "cd").mkdir()
    shutil.copy(DICOMDIR, tmp_path / "cd" / "DICOMDIR")
    (tmp_path / "cd" / "README.TXT").write_text("Patient CD\n")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "cd")
    message = str(e.value)
    assert "no DICOM image series found in this folder: it holds DICOMDIR, the index of a CD/DVD export, without the " \
           "image files it lists" in message and "\n" not in message
