"""Uploads: a zipped series opens; a zip that escapes its folder or bombs the disk is refused."""

from __future__ import annotations

import re
import warnings
import zipfile

import pytest

from app.uploads import UploadError, import_upload, safe_extract_zip
from data.readers import read_study
from tests.conftest import DATA, SAMPLES

CT = SAMPLES / "ct_head_0051_series"


def _refused(message: str):
    """The whole one-line message a user reads, not a fragment."""
    return pytest.raises(UploadError, match=f"^{re.escape(message)}$")


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


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "..\\evil.txt"])
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
    [
        ([], "no file was uploaded: choose a NIfTI, DICOM files, a zip of a series, or PNG/JPEG"),
        (["a.zip", "b.dcm"], "upload one zip on its own (it should hold one series)"),
        (["a.nii.gz", "b.png"], "upload one NIfTI or image file at a time (several files must be DICOM slices)"),
        # before: a "series" folder of the two, refused as "no DICOM image series found in this folder"
        (["scan.hdr", "scan.img"], "scan.hdr: a .hdr/.img pair (Analyze or NIfTI-pair); medseg opens single-file "
                                   "NIfTI: save it as scan.nii.gz (e.g. nibabel.save(nibabel.load('scan.hdr'), "
                                   "'scan.nii.gz')) and upload that"),
    ],
)
def test_ambiguous_uploads_name_the_fix(tmp_path, files, message):
    paths = []
    for name in files:
        (tmp_path / name).write_bytes(b"x")
        paths.append(tmp_path / name)
    upload = tmp_path / "upload"
    upload.mkdir()  # as the controller makes it (mkdtemp): a refused upload removes it
    with _refused(message):
        import_upload(paths, upload)
    assert not upload.exists()


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
        ({"s/IM1.dcm": b"d"}, "."),  # DICOM: the folder
        # a NIfTI with its BIDS sidecar or a README: that NIfTI (before: the folder, "no DICOM image series found")
        ({"sub-01/anat/sub-01_T1w.nii.gz": b"n", "sub-01/anat/sub-01_T1w.json": b"{}"}, "sub-01/anat/sub-01_T1w.nii.gz"),
        ({"scan/mr.nii.gz": b"n", "scan/README.txt": b"hi"}, "scan/mr.nii.gz"),
        ({"s/IM1.dcm": b"d", "s/mr.nii.gz": b"n"}, "."),  # DICOM files alongside: the folder, as before
    ],
)
def test_a_zip_opens_as_its_lone_study_file_or_its_folder(tmp_path, members, expected):
    path = import_upload([_zip(tmp_path / "u.zip", members)], tmp_path / "up")
    assert path == (tmp_path / "up" / "unzipped" / expected).resolve() or path == tmp_path / "up" / "unzipped" / expected


def test_a_zip_of_several_pictures_or_volumes_without_dicom_asks_for_one(tmp_path):
    """Before: the folder, refused later as "no DICOM image series found in this folder"."""
    archive = _zip(tmp_path / "u.zip", {"in/a.png": b"p", "in/b.nii.gz": b"q", "in/notes.txt": b"x"})
    with _refused("the zip holds 2 NIfTI/PNG/JPEG files (a.png, b.nii.gz) and no DICOM series; upload one at a time"):
        import_upload([archive], tmp_path / "up")


def test_a_zipped_hdr_img_pair_names_the_conversion(tmp_path):
    archive = _zip(tmp_path / "u.zip", {"spm/T1.HDR": b"h", "spm/T1.IMG": b"i"})
    with _refused("T1.HDR: a .hdr/.img pair (Analyze or NIfTI-pair); medseg opens single-file NIfTI: save it as "
                  "T1.nii.gz (e.g. nibabel.save(nibabel.load('T1.HDR'), 'T1.nii.gz')) and upload that"):
        import_upload([archive], tmp_path / "up")


def test_a_zip_of_zips_asks_for_the_inner_one(tmp_path):
    """A zip a colleague zipped again: before, the folder of the inner zip was read as a DICOM folder ("no DICOM
    image series found in this folder"). Inner zips are not unpacked (one level of untrusted archive only)."""
    inner = _zip(tmp_path / "series.zip", {"IM1.dcm": b"d"})
    outer = _zip(tmp_path / "outer.zip", {"export/series.zip": inner.read_bytes(), "export/readme.txt": b"hi"})
    with _refused("the zip holds another zip (series.zip) and no study files; unpack it and upload the inner zip"):
        import_upload([outer], tmp_path / "up")


def test_an_empty_zip_names_what_it_should_hold(tmp_path):
    with pytest.raises(UploadError, match=r"^the zip is empty: it should hold the files of one DICOM series or one NIfTI$"):
        import_upload([_zip(tmp_path / "e.zip", {".hidden": b"x"})], tmp_path / "up")


@pytest.mark.parametrize(
    "name, safe",
    [("../../a b.nii.gz", "a_b.nii.gz"), ("C:\\Users\\x\\scan.PNG", "scan.PNG"), ("..hidden.png", "hidden.png"),
     ("??.png", "__.png"), ("...", "upload"), ("a-b_c.1.dcm", "a-b_c.1.dcm"), ("Xray.png", "Xray.png")],
)
def test_uploaded_names_are_reduced_to_harmless_characters(tmp_path, name, safe):
    from app.uploads import _safe_name

    assert _safe_name(name) == safe


def _patch_header(archive, *, size: int | None = None, encrypted: bool = False):
    """Rewrite the first member's headers as a hostile or damaged zip would have them."""
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    if size is not None:  # the central directory's uncompressed size: what infolist() reports
        data[central + 24:central + 28] = size.to_bytes(4, "little")
    if encrypted:  # general-purpose flag bit 0, in the local and the central header
        data[data.index(b"PK\x03\x04") + 6] |= 1
        data[central + 8] |= 1
    archive.write_bytes(bytes(data))
    return archive


def test_the_default_cap_is_named_in_mib(tmp_path):
    """A header that declares 3 GiB is refused by the 2 GiB default before a byte is written."""
    archive = _patch_header(_zip(tmp_path / "huge.zip", {"IM1.dcm": b"x"}), size=3 * 1024**3)
    with _refused("huge.zip: unpacks to more than 2048 MiB; upload a smaller series"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_damaged_or_encrypted_member_is_one_user_error(tmp_path):
    """A member whose data fails its CRC (a damaged download) or that needs a password is an
    UploadError naming the member, not a BadZipFile/RuntimeError ("internal error" in the UI), and
    the upload folder is removed."""
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("IM1.dcm", b"hello world")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"hello world", b"jello world"))
    message = "crc.zip: member 'IM1.dcm' cannot be unpacked (Bad CRC-32 for file 'IM1.dcm'); make the zip again"
    with _refused(message):
        safe_extract_zip(archive, tmp_path / "out")
    with _refused(message):
        import_upload([archive], tmp_path / "upload")
    assert not (tmp_path / "upload").exists()
    broken = _zip(tmp_path / "deflate.zip", {"IM1.dcm": bytes(range(256)) * 400})
    data = bytearray(broken.read_bytes())
    data[60:70] = b"\xff" * 10  # inside the deflate stream
    broken.write_bytes(bytes(data))
    with pytest.raises(UploadError, match=r"^deflate.zip: member 'IM1.dcm' cannot be unpacked \(Error -3 while "):
        safe_extract_zip(broken, tmp_path / "out3")
    locked = _patch_header(_zip(tmp_path / "locked.zip", {"ok.dcm": b"x"}), encrypted=True)
    with _refused("locked.zip: member 'ok.dcm' is encrypted; upload a zip without a password"):
        safe_extract_zip(locked, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_directory_entries_in_any_order_and_a_dot_entry_unpack(tmp_path):
    """Zip tools list folders before, after or without their files, and some write a "./" entry."""
    archive = tmp_path / "dirs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("./", b"")
        zf.writestr("deep/er/", b"")  # no "deep/" entry
        zf.writestr("study/a/IM1.dcm", b"one")
        zf.writestr("study/", b"")  # after its file
        zf.writestr("study/a/", b"")
        zf.writestr("./IM2.dcm", b"two")
    out = safe_extract_zip(archive, tmp_path / "out")
    assert (out / "deep" / "er").is_dir() and (out / "study" / "a" / "IM1.dcm").read_bytes() == b"one"
    assert (out / "IM2.dcm").read_bytes() == b"two"


def test_unpacking_into_an_existing_folder_never_writes_through_a_link_there(tmp_path):
    """dest may exist (unpacked into again): that works, but a link already inside it is not followed out."""
    dest = tmp_path / "dest"
    dest.mkdir()
    assert safe_extract_zip(_zip(tmp_path / "a.zip", {"IM1.dcm": b"one"}), dest) == dest
    assert (dest / "IM1.dcm").read_bytes() == b"one"
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    with _refused("b.zip: member 'link/evil.txt' points outside the archive; refused"):
        safe_extract_zip(_zip(tmp_path / "b.zip", {"link/evil.txt": b"owned"}), dest)
    assert list(outside.iterdir()) == []


def _sparse(path, size: int):
    """A file that stat() reports as ``size`` bytes without using the disk (refused before it is read)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_upload_size_and_count_limits_come_from_the_settings_and_are_inclusive(tmp_path):
    from app.settings import Settings

    mib = 1024**2
    two = [_zip(tmp_path / "a.zip", {"x": b"x"}), tmp_path / "b.dcm"]
    two[1].write_bytes(b"d")
    with _refused("3 files uploaded; at most 2 (MEDSEG_MAX_UPLOAD_FILES)"):
        import_upload([*two, tmp_path / "b.dcm"], tmp_path / "up", settings=Settings(max_upload_files=2))
    with _refused("upload one zip on its own (it should hold one series)"):  # 2 files pass the count
        import_upload(two, tmp_path / "up", settings=Settings(max_upload_files=2))
    big = _sparse(tmp_path / "big.nii.gz", 3000 * mib)
    with _refused("the upload is 3000 MiB; at most 2000 MiB (MEDSEG_MAX_UPLOAD_MB)"):
        import_upload([big], tmp_path / "up", settings=Settings(max_upload_bytes=2000 * mib))
    exact = tmp_path / "exact.nii.gz"
    exact.write_bytes(b"n" * 1000)
    copied = import_upload([exact], tmp_path / "up2", settings=Settings(max_upload_bytes=1000))
    assert copied == tmp_path / "up2" / "exact.nii.gz" and copied.read_bytes() == b"n" * 1000
    with _refused("4 files uploaded; at most 3 (MEDSEG_MAX_UPLOAD_FILES)"):
        import_upload([exact] * 4, tmp_path / "up3", settings=Settings(max_upload_files=3))


def test_the_session_disk_room_bounds_files_and_unzipped_size(tmp_path):
    """``room_bytes`` (the session's quota left): a file over it is refused by its size, a zip by
    what it unpacks to; exactly the room left is accepted; no room at all is said so."""
    from app.settings import Settings

    mib = 1024**2
    # 2.502 MiB and 1.501 MiB: just over a half, so a wrong unit (1025**2) rounds the other way
    big = tmp_path / "big.nii.gz"
    big.write_bytes(bytes(int(2.502 * mib)))
    with _refused("the upload is 3 MiB but this session has room for 2 MiB more (disk quota)"):
        import_upload([big], tmp_path / "up", room_bytes=int(1.501 * mib) + 1)
    with _refused("the upload is 3 MiB but this session has room for 0 MiB more (disk quota)"):
        import_upload([big], tmp_path / "up", room_bytes=-5)
    small = tmp_path / "small.dcm"
    small.write_bytes(b"d" * 100)
    assert import_upload([small], tmp_path / "up", room_bytes=100).read_bytes() == b"d" * 100
    archive = _zip(tmp_path / "u.zip", {"IM1.dcm": bytes(3 * mib)})  # a few KiB compressed
    with _refused("u.zip: unpacks to more than 1 MiB; upload a smaller series"):
        import_upload([archive], tmp_path / "z1", room_bytes=mib)
    with _refused("u.zip: unpacks to more than 0 MiB; upload a smaller series"):
        import_upload([archive], tmp_path / "z2", room_bytes=1)
    for room in (0, -mib):
        with _refused("this session has no disk room left (disk quota); close some studies"):
            import_upload([archive], tmp_path / "z3", room_bytes=room)
    assert not any((tmp_path / f"z{i}").exists() for i in (1, 2, 3))
    opened = import_upload([archive], tmp_path / "z4", room_bytes=3 * mib)  # exactly the room left
    assert (opened / "IM1.dcm").read_bytes() == bytes(3 * mib)
    many = _zip(tmp_path / "m.zip", {f"{i}.dcm": b"x" for i in range(4)})
    with _refused("m.zip: 4 members; at most 3 are accepted"):  # the file count applies to members too
        import_upload([many], tmp_path / "z5", settings=Settings(max_upload_files=3))


def test_a_single_dicom_file_is_copied_as_itself(tmp_path):
    """One DICOM file opens as that file (not a one-slice series folder), under its safe name, into
    the folder the controller made (it exists) or a new nested one."""
    src = sorted(CT.iterdir())[0]
    made = tmp_path / "made"
    made.mkdir()
    path = import_upload([src], made)
    assert path == made / src.name and path.read_bytes() == src.read_bytes()
    nested = import_upload([src], tmp_path / "session" / "uploads" / "1")
    assert nested == tmp_path / "session" / "uploads" / "1" / src.name
    assert read_study(nested).num_slices == 1


@pytest.mark.parametrize("members, member, why", [
    ({"a": b"x", "a/IM1.dcm": b"y"}, "a/IM1.dcm", "File exists"),  # a name used as a file and as a folder
    ({"a/": b"", "a": b"x"}, "a", "Is a directory"),
    ({"x" * 300 + ".dcm": b"x"}, "x" * 300 + ".dcm", "File name too long"),
    ({".": b"x"}, ".", "Is a directory"),
])
def test_zip_members_that_cannot_be_files_here_are_one_line_naming_the_member(tmp_path, members, member, why):
    """Before: FileExistsError/IsADirectoryError/OSError with the server's upload path in the message."""
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with _refused(f"odd.zip: member {member!r} cannot be unpacked ({why}); make the zip again"):
        import_upload([archive], tmp_path / "upload")
    assert not (tmp_path / "upload").exists()


def test_a_member_more_than_64_folders_deep_is_refused_before_unpacking(tmp_path):
    """A path of 2000 folders ended Path.mkdir's recursion in RecursionError ("internal error" in the UI)."""
    name = "/".join(["d"] * 2000) + "/IM1.dcm"
    archive = _zip(tmp_path / "deep.zip", {name: b"x"})
    with _refused(f"deep.zip: member {name[:40] + '...'!r} is 2000 folders deep; at most 64 are accepted"):
        import_upload([archive], tmp_path / "upload")
    assert not (tmp_path / "upload").exists()


@pytest.mark.parametrize("stem", ["x" * 246, "頭部" * 41])
def test_dicom_files_with_long_legal_names_become_a_series_that_opens(tmp_path, stem):
    """Loose DICOM files are copied as ``00000_<name>``: a name of 250 bytes (legal: a file name holds 255) became
    256 and more, and the upload failed with ``[Errno 36] File name too long`` (session 18). Copied names are cut to
    200 bytes, keeping their suffix and the number that keeps them apart."""
    import shutil

    files = []
    for i, f in enumerate(sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))):
        name = tmp_path / f"{i:02d}_{stem}.dcm"
        assert len(name.name.encode()) <= 255
        shutil.copy(f, name)
        files.append(name)
    path = import_upload(files, tmp_path / "upload")
    assert all(len(p.name.encode()) <= 6 + 200 and p.name.endswith(".dcm") for p in path.iterdir())  # 00000_ + 200
    assert len(list(path.iterdir())) == len(files)
    assert read_study(path).array.shape == read_study(SAMPLES / "ct_head_0051_series").array.shape
    single = tmp_path / ("y" * 240 + ".nii.gz")
    shutil.copy(SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz", single)
    opened = import_upload([single], tmp_path / "upload2")
    assert opened.name.endswith(".nii.gz") and len(opened.name.encode()) <= 200
    assert read_study(opened).array.shape == (32, 217, 181)


@pytest.mark.parametrize("second", ["scan.nii.gz", "./scan.nii.gz"])
def test_a_zip_holding_one_name_twice_with_different_contents_is_refused(tmp_path, second):
    """Two members `scan.nii.gz` (the Colin27 MR, then a CT: a zip's central directory may list a name twice; Python's
    zipfile and a concatenating tool write such zips): the last was unpacked over the first without a word and the
    CT opened, where another unzipper or a listing shows the MR (session 25). The same bytes twice stay harmless."""
    mr = (SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz").read_bytes()
    ct = (DATA / "ct_head_0051_slabA_image.nii.gz").read_bytes()
    archive = tmp_path / "two.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning: writing such a zip is the point
        zf.writestr("scan.nii.gz", mr)
        zf.writestr(second, ct)
    with _refused(f"two.zip: member {second!r} is in the archive twice with different contents, so which one is meant "
                  "is in doubt; make the zip again"):
        import_upload([archive], tmp_path / "upload")
    assert not (tmp_path / "upload").exists()
    same = tmp_path / "same.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(same, "w") as zf:
        zf.writestr("scan.nii.gz", mr)
        zf.writestr("scan.nii.gz", mr)
    assert read_study(import_upload([same], tmp_path / "upload")).array.shape == (32, 217, 181)
