"""Uploads: a zipped series opens; a zip that escapes its folder or bombs the disk is refused."""

from __future__ import annotations

import zipfile

import pytest

from app.uploads import UploadError, import_upload, safe_extract_zip
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zipped_dicom_series_opens_with_its_geometry(tmp_path):
    archive = _zip(tmp_path / "series.zip", {f"study/{f.name}": f.read_bytes() for f in sorted(CT.iterdir())})
    path = import_upload([archive], tmp_path / "upload")
    volume = read_study(path)
    reference = read_study(CT)
    assert volume.array.shape == (12, 256, 256)
    geometry = (volume.spacing, volume.origin, volume.direction)
    assert geometry == (reference.spacing, reference.origin, reference.direction)


def test_loose_dicom_files_become_one_series_folder(tmp_path):
    files = sorted(CT.iterdir())[:4]
    path = import_upload(files, tmp_path / "upload")
    assert path.is_dir() and read_study(path).num_slices == 4


def test_single_nifti_is_copied_under_a_safe_name(tmp_path):
    src = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
    path = import_upload([src], tmp_path / "upload")
    assert path.parent == tmp_path / "upload" and path.name == src.name
    assert read_study(path).array.shape == (32, 217, 181)


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "C:/evil.txt"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, member):
    archive = _zip(tmp_path / "bad.zip", {"ok.dcm": b"x", member: b"owned"})
    with pytest.raises(UploadError, match="outside the archive"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_zip_bomb_is_refused_before_writing(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"big.bin": b"\0" * (3 * 1024 * 1024)})  # compresses to a few KiB
    with pytest.raises(UploadError, match="unpacks to more than"):
        safe_extract_zip(archive, tmp_path / "out", max_bytes=1024 * 1024)
    assert not (tmp_path / "out").exists()


def test_too_many_members_refused(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(11)})
    with pytest.raises(UploadError, match="at most 10"):
        safe_extract_zip(archive, tmp_path / "out", max_members=10)


@pytest.mark.parametrize(
    "files, message",
    [([], "no file was uploaded"), (["a.zip", "b.dcm"], "one zip on its own"), (["a.nii.gz", "b.png"], "one NIfTI")],
)
def test_ambiguous_uploads_name_the_fix(tmp_path, files, message):
    paths = []
    for name in files:
        (tmp_path / name).write_bytes(b"x")
        paths.append(tmp_path / name)
    with pytest.raises(UploadError, match=message):
        import_upload(paths, tmp_path / "upload")


def test_not_a_zip_is_a_user_error(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(UploadError, match="not a readable zip"):
        import_upload([tmp_path / "fake.zip"], tmp_path / "upload")


def test_zip_member_that_is_a_symbolic_link_is_refused(tmp_path):
    """A symlink member (as `zip --symlinks` stores it: mode 0o120777, the target as its data) is refused
    before anything is written, also when the zip comes through an upload."""
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.dcm", b"x")
        link = zipfile.ZipInfo("series/IM0001.dcm")
        link.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UploadError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UploadError, match="IM0001.dcm.*symbolic link"):
        import_upload([archive], tmp_path / "upload")
    assert not (tmp_path / "upload" / "unzipped").exists()


def test_zip_limits_are_inclusive_and_sum_over_members(tmp_path):
    """Exactly max_members files and exactly max_bytes unpack; the byte cap counts all members together."""
    archive = _zip(tmp_path / "ten.zip", {f"{i}.dcm": b"x" * 100 for i in range(10)})
    out = safe_extract_zip(archive, tmp_path / "ok", max_members=10, max_bytes=1000)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.dcm" for i in range(10))
    with pytest.raises(UploadError, match=r"^ten.zip: unpacks to more than 0 MiB; upload a smaller series$"):
        safe_extract_zip(archive, tmp_path / "over", max_bytes=999)  # 10 x 100 bytes, none over alone
    mib = _zip(tmp_path / "mib.zip", {"a.bin": bytes(3 * 1024**2)})
    with pytest.raises(UploadError, match=r"^mib.zip: unpacks to more than 2 MiB"):
        safe_extract_zip(mib, tmp_path / "x", max_bytes=2 * 1024**2)
    with pytest.raises(UploadError, match=r"^ten.zip: 10 members; at most 9 are accepted$"):
        safe_extract_zip(archive, tmp_path / "y", max_members=9)


def test_nested_folders_unpack_in_place(tmp_path):
    archive = tmp_path / "nested.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("study/", b"")
        zf.writestr("study/series/a/IM1.dcm", b"one")
        zf.writestr("study/b\\IM2.dcm", b"two")  # a Windows separator stays inside the folder
    out = safe_extract_zip(archive, tmp_path / "deep" / "out")
    assert (out / "study" / "series" / "a" / "IM1.dcm").read_bytes() == b"one"
    assert (out / "study").is_dir() and len([p for p in out.rglob("*") if p.is_file()]) == 2


@pytest.mark.parametrize(
    "members, expected",
    [
        ({"in/mr.nii.gz": b"n"}, "in/mr.nii.gz"),  # one NIfTI alone: that file
        ({"in/mr.nii.gz": b"n", "in/.DS_Store": b"x"}, "in/mr.nii.gz"),  # hidden files do not count
        ({"in/a.png": b"p", "in/b.png": b"q"}, "."),  # two images: the folder
        ({"s/IM1.dcm": b"d"}, "."),  # DICOM: the folder
    ],
)
def test_a_zip_opens_as_its_lone_study_file_or_its_folder(tmp_path, members, expected):
    path = import_upload([_zip(tmp_path / "u.zip", members)], tmp_path / "up")
    assert path == (tmp_path / "up" / "unzipped" / expected).resolve() or path == tmp_path / "up" / "unzipped" / expected


def test_an_empty_zip_names_what_it_should_hold(tmp_path):
    with pytest.raises(UploadError, match=r"^the zip is empty: it should hold the files of one DICOM series or one NIfTI$"):
        import_upload([_zip(tmp_path / "e.zip", {".hidden": b"x"})], tmp_path / "up")


@pytest.mark.parametrize(
    "name, safe",
    [("../../a b.nii.gz", "a_b.nii.gz"), ("C:\\Users\\x\\scan.PNG", "scan.PNG"), ("..hidden.png", "hidden.png"),
     ("??.png", "__.png"), ("...", "upload"), ("a-b_c.1.dcm", "a-b_c.1.dcm")],
)
def test_uploaded_names_are_reduced_to_harmless_characters(tmp_path, name, safe):
    from app.uploads import _safe_name

    assert _safe_name(name) == safe
