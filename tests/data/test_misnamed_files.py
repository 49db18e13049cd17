"""A file whose bytes are another supported format than its name says (a NIfTI saved as scan.dcm, a DICOM as
scan.nii.gz or scan.png) is refused with what its bytes are and the name to give it (session 15's adversarial pass:
the refusal spoke only of the promised format, "no DICM marker at byte 128", "damaged gzip stream: Not a gzipped
file", as if the file were damaged). A damaged file of the format its name says gets no such hint."""

from __future__ import annotations

import gzip
import shutil

import pytest

from data.readers import StudyError, read_study
from tests.conftest import SAMPLES

CT_FILE = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))[0]
NIFTI_GZ = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


def _bytes(kind: str) -> bytes:
    return {"dicom": CT_FILE.read_bytes(), "nifti-gz": NIFTI_GZ.read_bytes(),
            "nifti": gzip.decompress(NIFTI_GZ.read_bytes()), "dicom-gz": gzip.compress(CT_FILE.read_bytes())}[kind]


@pytest.mark.parametrize("name", ["series.tar", "series.tar.gz", "series.tgz", "scan.dcm"])
def test_a_tar_archive_says_it_is_one_and_how_to_open_it(tmp_path, name):
    """Session 23: a tar of a series folder (what Linux and macOS users pack) said only "unsupported format;
    expected a NIfTI ..., a DICOM file or series folder, or PNG/JPEG", though the web UI takes a zip of the same."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if name.endswith(("gz", "tgz")) else "w") as tar:
        tar.add(CT_FILE, arcname="series/IM0001.dcm")
    (tmp_path / name).write_bytes(buffer.getvalue())
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / name)
    what = "a gzip-compressed tar archive" if name.endswith(("gz", "tgz")) else "a tar archive"
    assert str(e.value).endswith(f"; its bytes are {what}: unpack it (tar xf) and open the folder or file it holds, "
                                 "or upload a zip of it")


@pytest.mark.parametrize("name, kind, fragment", [
    ("scan.dcm", "nifti-gz",
     "its bytes are a gzip-compressed NIfTI, not what its name says: rename it to end in .nii.gz"),
    ("scan.dcm", "nifti", "its bytes are an uncompressed NIfTI, not what its name says: rename it to end in .nii"),
    ("scan.nii.gz", "dicom", "its bytes are a DICOM file, not what its name says: rename it to end in .dcm"),
    ("scan.nii", "dicom", "its bytes are a DICOM file"),
    ("scan.png", "dicom", "its bytes are a DICOM file"),
    ("scan.nii", "nifti-gz", "rename it to end in .nii.gz"),
    ("scan.nii.gz", "nifti", "rename it to end in .nii"),
    # a PACS or mail export's gzip of one slice: "unsupported format" alone, or "rename it to end in .nii.gz" (its
    # gzip header was taken for a compressed NIfTI's), sent the user after the wrong file
    ("scan.dcm.gz", "dicom-gz", "its bytes are a gzip-compressed DICOM file: decompress it (gunzip) and open the .dcm"),
    ("scan.gz", "dicom-gz", "its bytes are a gzip-compressed DICOM file: decompress it (gunzip)"),
    ("scan.nii.gz", "dicom-gz", "its bytes are a gzip-compressed DICOM file: decompress it (gunzip)"),
    ("scan.dcm", "dicom-gz", "its bytes are a gzip-compressed DICOM file: decompress it (gunzip)"),
])
def test_a_misnamed_file_says_what_its_bytes_are(tmp_path, name, kind, fragment):
    (tmp_path / name).write_bytes(_bytes(kind))
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / name)
    message = str(e.value)
    assert fragment in message and name in message and "\n" not in message, message


@pytest.mark.parametrize("name, kind", [("cut.dcm", "dicom"), ("cut.nii", "nifti"), ("cut.nii.gz", "nifti-gz")])
def test_a_damaged_file_of_its_named_format_gets_no_rename_hint(tmp_path, name, kind):
    data = _bytes(kind)
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / name)
    assert "rename it" not in str(e.value)


def test_the_ui_says_it_too(tmp_path):
    from app.controller import AppContext, open_upload
    from app.errors import USER_ERRORS
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionError, SessionStore

    shutil.copy(NIFTI_GZ, tmp_path / "t1.dcm")
    runner = ModelRunner("cpu")
    ctx = AppContext(store=SessionStore(tmp_path / "sessions"), runner=runner, prefetcher=Prefetcher(runner))
    with pytest.raises((SessionError, *USER_ERRORS), match="its bytes are a gzip-compressed NIfTI"):
        open_upload(ctx, ctx.store.create().id, [str(tmp_path / "t1.dcm")])


def test_a_zip_named_dcm_says_it_is_a_zip(tmp_path):
    """A PACS or mail export saved under its first image's name: refused as a file without the DICM marker, as if the
    image were damaged (session 17); now the line says it is a ZIP and what to do."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "IM0001.dcm", "w") as z:
        z.write(CT_FILE, "IM0001.dcm")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "IM0001.dcm")
    assert str(e.value) == (f"{tmp_path / 'IM0001.dcm'}: not a readable DICOM file (no DICM marker at byte 128 (not a "
                            "DICOM Part 10 file)); its bytes are a ZIP archive, not what its name says: unpack it and "
                            "open the folder, or rename it to end in .zip and upload that")


@pytest.mark.parametrize("damage, what", [("empty", "0 bytes"), ("zip", "a ZIP archive")])
def test_a_slice_file_that_is_not_dicom_is_named_where_the_series_has_a_gap(tmp_path, damage, what):
    """One slice of the real series cut to 0 bytes, or replaced by a ZIP of itself (a hospital's odd export): the
    folder reader skipped it as not DICOM and the refusal asked to "add the missing file(s)", the file in plain sight.
    Now the line names it; opened at the mean spacing, a warning names it."""
    import warnings
    import zipfile

    from data.readers import StudyWarning, UnevenStudyError

    folder = tmp_path / "series"
    shutil.copytree(SAMPLES / "ct_head_0051_series", folder)
    victim = sorted(folder.glob("*.dcm"))[4]
    if damage == "empty":
        victim.write_bytes(b"")
    else:
        data = victim.read_bytes()
        with zipfile.ZipFile(victim, "w") as z:
            z.writestr(victim.name, data)
    (folder / "._IM0001.dcm").write_bytes(b"\0" * 4096)  # a Mac's resource fork: hidden, not named
    with pytest.raises(UnevenStudyError) as e:
        read_study(folder)
    message = str(e.value)
    assert "\n" not in message and "slice(s) missing" in message
    assert message.endswith(f"; note: {victim.name} ({what}) in the folder is named as DICOM but not DICOM, perhaps "
                            "the missing slice(s): export them again"), message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_study(folder, allow_uneven=True)
    notes = [str(w.message) for w in caught if issubclass(w.category, StudyWarning)]
    assert f"{folder}: left out 1 file(s) named as DICOM that are not DICOM: {victim.name} ({what})" in notes, notes


@pytest.mark.parametrize("suffix", [".nii.GZ", ".NII.gz", ".Nii.gz", ".Nii", ".nIi"])
def test_a_nifti_whose_suffix_is_in_mixed_case_opens_and_a_label_map_so_named_reads_back(tmp_path, suffix):
    """The real Colin27 as `t1.nii.GZ` or `t1.Nii` (names medseg's suffix checks take in any case): refused as
    `not a readable NIfTI file (ITK ERROR: NiftiImageIO: ... is not recognized as a NIFTI file)` (ITK's nifti1_io
    takes a suffix in one case only), as if damaged; and `medseg segment ... -o labels.nii.GZ` wrote a label map that
    medseg then could not read back (session 20). Both open now, voxel for voxel and place for place."""
    import numpy as np

    from data.export import export_labels

    reference = read_study(NIFTI_GZ)
    data = NIFTI_GZ.read_bytes() if suffix.lower().endswith(".gz") else gzip.decompress(NIFTI_GZ.read_bytes())
    (tmp_path / f"t1{suffix}").write_bytes(data)
    volume = read_study(tmp_path / f"t1{suffix}")
    np.testing.assert_array_equal(volume.array, reference.array)
    assert (volume.spacing, volume.origin, volume.direction) == (reference.spacing, reference.origin,
                                                                 reference.direction)
    labels = np.zeros(reference.array.shape, np.uint8)
    labels[10, 50:90, 60:100] = 1
    export_labels(labels, reference, tmp_path / f"labels{suffix}")
    back = read_study(tmp_path / f"labels{suffix}")
    np.testing.assert_array_equal(back.array, labels)
    assert back.origin == pytest.approx(reference.origin)


def test_a_folder_of_gzipped_dicom_slices_says_so(tmp_path):
    """A series folder whose slices were each gzipped (IM0001.dcm.gz): refused as "no DICOM image series found in
    this folder" and nothing more, though every file in it was a slice."""
    series = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
    for f in series:
        (tmp_path / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    with pytest.raises(StudyError) as e:
        read_study(tmp_path)
    assert str(e.value) == (f"{tmp_path}: no DICOM image series found in this folder: {len(series)} file(s) are "
                            "gzip-compressed DICOM files; decompress them (gunzip) and open the folder again")


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii", "scan.gz"])
def test_a_file_compressed_twice_or_a_gzipped_zip_says_so(tmp_path, name):
    """The real Colin27 .nii.gz gzipped again (a mail client's or a script's second gzip), or a zip of it gzipped:
    refused as `no NIfTI header (sizeof_hdr is neither 348 nor 540)` (or `unsupported format`), as if damaged
    (session 26). The line now says what the bytes are and how to get at the file inside."""
    (tmp_path / name).write_bytes(gzip.compress(NIFTI_GZ.read_bytes()))
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / name)
    assert str(e.value).endswith(f"; its bytes are gzip-compressed twice (a gzip file inside a gzip file): decompress "
                                 f"one layer (e.g. gunzip -c {name} > once.nii.gz) and open what that gives")
    import io
    import zipfile

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("scan.nii.gz", NIFTI_GZ.read_bytes())
    (tmp_path / name).write_bytes(gzip.compress(zipped.getvalue()))
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / name)
    assert str(e.value).endswith("; its bytes are a gzip-compressed ZIP archive: decompress it (gunzip) and open the "
                                 "folder the zip holds, or upload the zip")
