"""A corpus of bad inputs, made in tmp_path from the bundled CT series: each gets one clear error
(CLI: exit 2 and one line on stderr; UI: the user-facing error the page shows as a message) or a
documented safe handling, and the server's session store keeps working afterwards."""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from app.cli import main
from app.controller import AppContext, open_sample, open_upload, sample_studies
from app.errors import USER_ERRORS
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionError, SessionStore
from app.settings import get_settings
from data.export import export_labels
from data.readers import StudyError, StudyWarning, read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"
CT_FILES = sorted(CT.glob("*.dcm"))


# --- builders: each writes one bad study under tmp_path and returns its path ---------------------
def truncated_dicom(tmp: Path) -> Path:
    data = CT_FILES[0].read_bytes()
    (tmp / "cut.dcm").write_bytes(data[: len(data) * 2 // 3])
    return tmp / "cut.dcm"


def dicom_without_pixels(tmp: Path) -> Path:
    ds = pydicom.dcmread(CT_FILES[0])
    del ds.PixelData
    ds.save_as(tmp / "nopixels.dcm")
    return tmp / "nopixels.dcm"


def _series(tmp: Path, name: str, edit=None, skip: int | None = None) -> Path:
    folder = tmp / name
    folder.mkdir()
    for n, f in enumerate(CT_FILES):
        if n == skip:
            continue
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(n, ds)
        ds.save_as(folder / f.name)
    return folder


def missing_slice(tmp: Path) -> Path:
    return _series(tmp, "missing", skip=5)


def _shift(n: int, ds: pydicom.Dataset, which: int, by: float) -> None:
    if n == which:  # the CT is coronal: the slice normal is +y (LPS), position index 1
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ipp[1] += by
        ds.ImagePositionPatient = ipp


def uneven_spacing(tmp: Path) -> Path:
    return _series(tmp, "uneven", edit=lambda n, ds: _shift(n, ds, 6, 0.6))


def duplicate_position(tmp: Path) -> Path:
    return _series(tmp, "duplicate", edit=lambda n, ds: _shift(n, ds, 6, -1.5))


def _nifti(tmp: Path, name: str, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp / name)
    return tmp / name


def nifti_4d(tmp: Path) -> Path:
    return _nifti(tmp, "t.nii.gz", np.zeros((8, 8, 4, 3), np.int16))


def nifti_5d(tmp: Path) -> Path:
    return _nifti(tmp, "t5.nii.gz", np.zeros((8, 8, 4, 1, 2), np.int16))


def zero_size_nifti(tmp: Path) -> Path:
    return _nifti(tmp, "empty.nii.gz", np.zeros((8, 0, 4), np.int16))


def huge_png(tmp: Path) -> Path:
    """A 20000 x 20000 PNG header over a few bytes of data: decoding it would need 400 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 20001)) + chunk(b"IEND", b"")
    (tmp / "bomb.png").write_bytes(body)
    return tmp / "bomb.png"


def text(name: str):
    def build(tmp: Path) -> Path:
        (tmp / name).write_text("patient notes, not an image\n")
        return tmp / name

    build.__name__ = f"text_as_{name}"
    return build


def non_utf8_name(tmp: Path) -> Path:
    path = Path(os.fsdecode(bytes(tmp / "scan") + b"\xff\xfe.nii.gz"))
    shutil.copyfile(SAMPLES / "colin27" / "mr_t1_colin27_slabA_label.nii.gz", path)
    return path


def empty_folder(tmp: Path) -> Path:
    (tmp / "nothing").mkdir()
    return tmp / "nothing"


CORPUS = [
    (truncated_dicom, "truncated"),
    (dicom_without_pixels, "without pixel data"),
    (missing_slice, "1 slice(s) missing between IM0005.dcm"),
    (uneven_spacing, "uneven slice spacing"),
    (duplicate_position, "two images at the same position"),
    (nifti_4d, "4D NIfTI"),
    (nifti_5d, "5D NIfTI"),
    (zero_size_nifti, "empty image"),
    (huge_png, "too large"),
    (text("notes.png"), "not a readable PNG/JPEG"),
    (text("notes.nii.gz"), "not a readable NIfTI"),
    (text("notes.dcm"), "not a readable DICOM"),
    (non_utf8_name, "not valid UTF-8"),
    (empty_folder, "no DICOM image series"),
]


def one_line_error(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("medseg "), err
    assert fragment in lines[0], err


@pytest.mark.parametrize("build, fragment", CORPUS, ids=[b.__name__ for b, _ in CORPUS])
def test_medseg_info_refuses_each_bad_study_with_one_line(tmp_path, capsys, build, fragment):
    path = build(tmp_path)
    code = main(["info", os.fsdecode(path)])
    one_line_error(code, capsys.readouterr().err, fragment)


@pytest.mark.parametrize("build, fragment", CORPUS[:4], ids=[b.__name__ for b, _ in CORPUS[:4]])
def test_medseg_segment_refuses_before_loading_the_model(tmp_path, capsys, build, fragment):
    out = tmp_path / "out.nii.gz"
    code = main(["segment", str(build(tmp_path)), "--slice", "0", "--box", "10", "10", "50", "50", "-o", str(out)])
    one_line_error(code, capsys.readouterr().err, fragment)
    assert not out.exists()


def mixed_series(tmp: Path) -> Path:
    def edit(n: int, ds: pydicom.Dataset) -> None:
        if n >= 8:
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    return _series(tmp, "mixed", edit=edit)


def test_mixed_series_folder_lists_series_and_segment_asks_for_one(tmp_path, capsys):
    folder = mixed_series(tmp_path)
    assert main(["info", str(folder), "--json"]) == 0
    assert '"files": 8' in capsys.readouterr().out
    code = main(["segment", str(folder), "--slice", "0", "--box", "1", "1", "9", "9", "-o", str(tmp_path / "o.nii.gz")])
    one_line_error(code, capsys.readouterr().err, "pick one with --series UID")
    picked = read_study(folder, series_uid="1.2.826.0.1.3680043.8.498.99")
    assert picked.array.shape[0] == 4


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        (["--box", "10", "10", "400", "50"], "outside"),
        (["--point", "-5", "20", "1"], "outside"),
        (["--box", "50", "50", "10", "10"], "is empty"),
        (["--point", "20", "20", "7"], "must be 1"),
    ],
)
def test_prompts_outside_the_image_are_refused(tmp_path, capsys, prompt, fragment):
    code = main(["segment", str(CT), "--slice", "3", *prompt, "-o", str(tmp_path / "o.nii.gz")])
    one_line_error(code, capsys.readouterr().err, fragment)


def test_voxel_limit_is_checked_before_decoding(monkeypatch, capsys):
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "100000")  # the CT series is 12 x 256 x 256 = 786432
    code = main(["info", str(CT)])
    one_line_error(code, capsys.readouterr().err, "MEDSEG_MAX_VOXELS")
    with pytest.raises(StudyError, match="more than the limit of 1000"):
        read_study(SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz", max_voxels=1000)


def test_nan_and_inf_voxels_become_finite_with_a_warning(tmp_path, capsys):
    array = np.linspace(-100, 100, 6 * 5 * 4, dtype=np.float32).reshape(4, 5, 6)
    array[0, 0, 0], array[1, 1, 1], array[2, 2, 2] = np.nan, np.inf, -np.inf
    path = _nifti(tmp_path, "nan.nii.gz", array)
    with pytest.warns(StudyWarning, match="3 NaN/infinite voxels"):
        volume = read_study(path)
    assert np.isfinite(volume.array).all()
    # nibabel array (i, j, k) -> ours [k, j, i]
    assert volume.array[0, 0, 0] == pytest.approx(-100 + 200 / 119 * 1, abs=1e-3)  # NaN -> smallest finite
    assert volume.array[1, 1, 1] == pytest.approx(100.0)  # +Inf -> largest
    assert volume.array[2, 2, 2] == volume.array[0, 0, 0]  # -Inf -> smallest
    all_nan = _nifti(tmp_path, "allnan.nii.gz", np.full((4, 4, 2), np.nan, np.float32))
    code = main(["info", str(all_nan)])
    one_line_error(code, capsys.readouterr().err, "every voxel is NaN")


def test_empty_label_map_exports_and_reads_back_empty(tmp_path):
    volume = read_study(CT)
    out = export_labels(np.zeros(volume.array.shape[:3], np.uint8), volume, tmp_path / "empty.nii.gz")
    back = read_study(out).array
    assert back.shape == volume.array.shape[:3] and not back.any()


def test_empty_label_map_is_no_dicom_seg(tmp_path):
    """A DICOM-SEG has no empty segments (issue 20): nothing segmented is one clear error, no file."""
    from data.export import ExportError

    volume = read_study(CT)
    with pytest.raises(ExportError, match="nothing is segmented"):
        export_labels(np.zeros(volume.array.shape[:3], np.uint8), volume, tmp_path / "empty.dcm")
    assert list(tmp_path.iterdir()) == []


# --- the UI's upload path -------------------------------------------------------------------------
@pytest.fixture
def ctx(tmp_path):
    runner = ModelRunner("cpu")
    return AppContext(store=SessionStore(tmp_path / "sessions"), runner=runner, prefetcher=Prefetcher(runner))


def _zip(tmp: Path, members: dict[str, bytes], name: str = "upload.zip") -> Path:
    with zipfile.ZipFile(tmp / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return tmp / name


UPLOADS = [
    (lambda t: [_zip(t, {"../../evil.dcm": b"x"})], "points outside the archive"),
    (lambda t: [_zip(t, {"/etc/evil.dcm": b"x"})], "points outside the archive"),
    (lambda t: [_zip(t, {"bomb.dcm": bytes(5 * 1024**2)})], "unpacks to more than 2 MiB"),
    (lambda t: [shutil.copy(f, t) for f in CT_FILES], "12 files uploaded; at most 11"),
    (lambda t: [text("notes.png")(t)], "not a readable PNG/JPEG"),
    (lambda t: [truncated_dicom(t)], "truncated"),
    # a series with a missing slice is no longer an error in the UI: it is offered at the mean spacing under Upload
    # (tests/app/test_ui_interaction.py::test_a_series_with_a_missing_slice_opens_in_the_ui_only_when_asked_*)
    (lambda t: [huge_png(t)], "too large"),
]


@pytest.mark.parametrize("files, fragment", UPLOADS)
def test_bad_uploads_give_a_user_message_and_the_server_keeps_serving(tmp_path, ctx, monkeypatch, files, fragment):
    monkeypatch.setenv("MEDSEG_MAX_UNZIPPED_MB", "2")
    monkeypatch.setenv("MEDSEG_MAX_UPLOAD_FILES", "11")
    get_settings.cache_clear()
    try:
        session = ctx.store.create()
        with pytest.raises((SessionError, *USER_ERRORS), match=fragment):  # what ui.guarded shows as a message
            open_upload(ctx, session.id, [str(f) for f in files(tmp_path)])
    finally:
        get_settings.cache_clear()
    # a member that escaped would land in the session's uploads folder (../../) or at /etc (absolute)
    assert not [p for p in tmp_path.rglob("evil.dcm")] and not Path("/etc/evil.dcm").exists()
    # the same session still opens a study afterwards
    vm = open_sample(ctx, session.id, next(iter(sample_studies())))
    assert vm.slice_max > 0


def test_non_utf8_zip_member_names_are_unpacked_under_safe_names(tmp_path, ctx):
    archive = tmp_path / "latin.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("x")
        info.filename = b"caf\xe9.png".decode("cp437")  # a legacy (non-UTF-8) name, as old zip tools write
        buf = tmp_path / "img.png"
        Image.fromarray(np.full((32, 40), 128, np.uint8)).save(buf)
        zf.writestr(info, buf.read_bytes())
    vm = open_upload(ctx, ctx.store.create().id, [str(archive)])
    assert vm.image is not None and "Opened" in vm.status


@pytest.mark.parametrize("prompt", [["--box", "-1e9", "0", "10", "10"], ["--point", "-2.5E+1", "3", "1"]])
def test_a_negative_number_in_exponent_notation_is_a_number_not_an_option(tmp_path, capsys, prompt):
    """argparse took "-1e9" for an option ("argument --box: expected 4 arguments", of a box that had four).
    The number now reaches the prompt check, which says the box or point lies outside the image."""
    from PIL import Image

    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(tmp_path / "scan.png")
    code = main(["segment", str(tmp_path / "scan.png"), *prompt, "-o", str(tmp_path / "o.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "outside the image" in lines[0], lines


@pytest.mark.parametrize("argv, fragment", [
    (["info", "-scan.nii.gz"], "unrecognized arguments: -scan.nii.gz (a file name that starts with '-': write "
                               "./-scan.nii.gz or put -- before it)"),
    (["segment", "scan.png", "--box", "1", "2"], "medseg segment: error: argument --box: expected 4 arguments"),
    (["segment", "scan.png", "--point", "1", "2", "yes"], "argument --point: expected a number, got 'yes'"),
    (["segment", "scan.png", "--box", "nan", "1", "5", "5"], "argument --box: expected a finite number, got 'nan'"),
    (["propagate", "ct", "--slice", "3", "--box", "1", "1", "9", "9", "--margin", "nan", "-o", "o.nii.gz"],
     "medseg propagate: error: argument --margin: expected a finite number, got 'nan'"),
    (["eval", "m.csv", "--nsd-tolerance", "nan"], "medseg eval: error: argument --nsd-tolerance: expected a finite number"),
    (["eval", "m.csv", "--nsd-tolerance=-inf"], "argument --nsd-tolerance: expected a finite number, got '-inf'"),
    (["eval", "m.csv", "--nsd-tolerance", "-inf"], "argument --nsd-tolerance: expected a finite number, got '-inf'"),
])
def test_argument_errors_are_one_line_with_a_hint_for_a_leading_dash(tmp_path, monkeypatch, capsys, argv, fragment):
    """argparse printed its usage line before the error (two lines); a file named -scan.nii.gz, which a
    hurried user passes as it is, was only 'unrecognized arguments'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-scan.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and fragment in lines[0], lines
