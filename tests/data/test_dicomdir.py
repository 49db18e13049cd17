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


def _disc(tmp_path: Path) -> Path:
    """The real CT series (12 slices) as a disc's file set, written by pydicom: a DICOMDIR and PT*/ST*/SE*/IM* files
    (the study fields a DICOMDIR's records require added)."""
    from pydicom.fileset import FileSet

    from tests.conftest import DATA

    staged, fs = tmp_path / "staged", FileSet()
    staged.mkdir()
    for n, f in enumerate(sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())):
        ds = pydicom.dcmread(f)
        for keyword, value in (("StudyDate", "20200101"), ("StudyTime", "120000"), ("StudyID", "1"),
                               ("AccessionNumber", "1"), ("PatientID", "p"), ("PatientName", "x"),
                               ("SeriesNumber", 1), ("InstanceNumber", n + 1)):
            if ds.get(keyword) in (None, ""):
                setattr(ds, keyword, value)
        ds.save_as(staged / f.name)
        fs.add(str(staged / f.name))
    fs.write(str(tmp_path / "disc"))
    shutil.rmtree(staged)
    return tmp_path / "disc"


def test_a_disc_copy_missing_a_file_its_dicomdir_lists_is_refused_naming_it(tmp_path):
    """A copy of a disc that lost the series's last slice opened as 11 slices of 12 without a word, as if complete: the
    folder's files are read, the index never followed (hostile25b). A complete copy, or one whose names a copier made
    lower case, opens as before."""
    disc = _disc(tmp_path)
    complete = read_study(disc)
    assert complete.array.shape == (12, 256, 256)
    lower = tmp_path / "lower"
    shutil.copytree(disc, lower)
    for path in sorted(lower.rglob("*"), key=lambda p: -len(p.parts)):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))
    assert read_study(lower).array.shape == (12, 256, 256)
    last = Path(complete.source.files[-1])  # the stack's end: without it, the rest is one even series
    last.unlink()
    uid = pydicom.dcmread(next(disc.rglob("IM*"))).SeriesInstanceUID
    with pytest.raises(StudyError) as e:
        read_study(disc)
    assert str(e.value) == (f"{disc}: its DICOMDIR lists 1 file(s) of series {uid} that are not in the folder "
                            f"({last.relative_to(disc).as_posix()}): the copy of the disc is incomplete, and the "
                            "series would open without them; copy the whole disc (or a zip of it)")


def test_the_dicomdir_check_reuses_the_readers_listing_and_reads_only_the_opened_series(tmp_path, monkeypatch):
    """The check walked the folder twice more on every open of a series and read every series's records: 267 ms of a
    4.3 s open of one 200-slice series on a disc copy of 2000 files in 10 series, 130 ms now (session 26; figures in
    docs/reliability.md). It is given the listing the reader made, and reads the opened series's records only, which
    still finds a file missing from another series when that one is opened."""
    from data import readers

    disc = _disc(tmp_path)
    other = pydicom.uid.generate_uid()
    for path in sorted(disc.rglob("IM*"))[:3]:  # a second series in the folder, not in the index
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = other, pydicom.uid.generate_uid()
        ds.save_as(disc / f"X{path.name}")
    uid = pydicom.dcmread(next(disc.rglob("IM*"))).SeriesInstanceUID
    checked = []

    def no_walk(*_args, **_kwargs):
        raise AssertionError("the DICOMDIR check walked the folder again")

    def check(folder, series_uid, listing=None):
        checked.append(listing is not None)
        with monkeypatch.context() as m:
            m.setattr(Path, "rglob", no_walk)
            return missing(folder, series_uid, listing)

    missing = readers.missing_from_index
    monkeypatch.setattr(readers, "missing_from_index", check)
    assert read_study(disc, series_uid=uid).array.shape == (12, 256, 256) and checked == [True]
    assert read_study(disc, series_uid=other).array.shape[0] == 3  # the index lists none of it: nothing missing
    monkeypatch.undo()
    last = sorted(disc.rglob("IM*"))[-1]
    last.unlink()
    with pytest.raises(StudyError, match=f"its DICOMDIR lists 1 file\\(s\\) of series {uid} that are not in the folder"):
        read_study(disc, series_uid=uid)
