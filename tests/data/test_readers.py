"""``data.readers`` as a user meets it: which files open, with which voxels, geometry and identity,
and the one-line refusal (file named, what was expected) for every file that cannot be used.

Small files are built here (``tests.hostile.dicom_bytes``, nibabel, PIL) so each case is one fault;
the expected values come from pydicom / nibabel / SimpleITK read independently, or are written by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from data import readers
from data.readers import StudyError, StudyWarning, guess_modality, list_series, read_study
from tests.conftest import DATA
from tests.hostile import dicom_bytes as db

SERIES_A, SERIES_B = "1.2.826.0.1.3680043.8.498.2001", "1.2.826.0.1.3680043.8.498.3001"


def refused(path, message: str, **kwargs) -> None:
    """``read_study(path)`` raises StudyError with exactly ``message`` (one line)."""
    with pytest.raises(StudyError) as e:
        read_study(path, **kwargs)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def series(folder: Path, zs, *, uid: str = SERIES_A, **kwargs) -> Path:
    """One slice per z (mm) along +z, InstanceNumber 1.., file names that sort as the slices do."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, z in enumerate(zs):
        ds = db.image_dataset(db.pixels(seed=n)[0], series_uid=uid, instance=n + 1, ipp=(0.0, 0.0, float(z)), **kwargs)
        db.write(ds, folder / f"{uid[-4:]}_{n}.dcm")
    return folder


def quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StudyWarning)
        return read_study(path, **kwargs)


# --- which reader a name picks ---------------------------------------------------------------------
def test_upper_case_suffixes_and_a_dicom_without_suffix_open(tmp_path):
    """Windows and PACS exports: `SCAN.NII.GZ`, `PHOTO.PNG`, `IM.JPEG`, and DICOM files named `IM0001`."""
    nifti = DATA / "ct_head_0051_slabA_image.nii.gz"
    shutil.copy(nifti, tmp_path / "SCAN.NII.GZ")
    np.testing.assert_array_equal(read_study(tmp_path / "SCAN.NII.GZ").array, read_study(nifti).array)
    grey = (np.arange(12 * 10) % 250).astype(np.uint8).reshape(12, 10)
    Image.fromarray(grey).save(tmp_path / "PHOTO.PNG")
    png = read_study(tmp_path / "PHOTO.PNG")
    np.testing.assert_array_equal(png.array[0], grey)
    assert png.source.format == "png" and png.source.geometry == "none (pixels)" and png.modality == "OT"
    Image.fromarray(grey).save(tmp_path / "IM.JPEG", format="JPEG", quality=100)
    jpeg = read_study(tmp_path / "IM.JPEG")
    assert jpeg.source.format == "jpeg" and jpeg.array.shape == (1, 12, 10)
    np.testing.assert_array_equal(jpeg.array[0], np.asarray(Image.open(tmp_path / "IM.JPEG")))
    shutil.copy(DATA / "dicom" / "pydicom_CT_small.dcm", tmp_path / "IM0001")
    dcm = read_study(tmp_path / "IM0001")
    assert dcm.source.format == "dicom" and dcm.modality == "CT" and dcm.array.shape == (1, 128, 128)
    shutil.copy(DATA / "dicom" / "pydicom_CT_small.dcm", tmp_path / "IM0002.DCM")
    np.testing.assert_array_equal(read_study(tmp_path / "IM0002.DCM").array, dcm.array)


def test_other_files_are_refused_naming_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    refused(tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'}: unsupported format; expected a NIfTI (.nii, .nii.gz), "
            "a DICOM file or series folder, or PNG/JPEG")
    (tmp_path / "short").write_bytes(b"\0" * 131)  # too short to hold the DICM marker: not taken for DICOM
    refused(tmp_path / "short", f"{tmp_path / 'short'}: unsupported format; expected a NIfTI (.nii, .nii.gz), "
            "a DICOM file or series folder, or PNG/JPEG")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 200)
    refused(tmp_path / "fake.dcm", f"{tmp_path / 'fake.dcm'}: not a readable DICOM file (no DICM marker at byte 128 "
            "(not a DICOM Part 10 file))")
    (tmp_path / "fake.png").write_bytes(b"GIF89a not a png")
    refused(tmp_path / "fake.png", f"{tmp_path / 'fake.png'}: not a readable PNG/JPEG image (its bytes are neither PNG "
            "nor JPEG)")


def test_missing_files_pipes_and_undecodable_names_are_refused_before_opening(tmp_path):
    refused(tmp_path / "gone.nii.gz", f"{tmp_path / 'gone.nii.gz'}: no such file or folder")
    os.mkfifo(tmp_path / "pipe.nii")  # opening it would block forever
    refused(tmp_path / "pipe.nii", f"{tmp_path / 'pipe.nii'}: a pipe, not a regular file")
    bad = tmp_path / "scan\udcff.nii"  # a Latin-1 name on a UTF-8 system: SimpleITK would abort the process
    refused(bad, f"{str(bad)!r}: the file name is not valid UTF-8; rename the file")


def test_an_error_no_check_foresaw_is_still_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.eye(4)), path)

    def boom(*args, **kwargs):
        raise KeyError("dim\nsecond line")

    monkeypatch.setattr(readers, "read_nifti", boom)
    refused(path, f"{path}: could not be read (KeyError: 'dim\\nsecond line')")
    monkeypatch.setattr(readers, "read_nifti", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("\nfirst\n\n" + "x" * 300 + "\n")))
    refused(path, f"{path}: could not be read (RuntimeError: {'x' * 200})")


# --- the voxel limit -----------------------------------------------------------------------------------
def test_the_voxel_limit_is_inclusive_and_read_from_the_environment(tmp_path, monkeypatch):
    folder = series(tmp_path / "s", [0, 2, 4])  # 3 x 16 x 16 = 768 voxels
    assert read_study(folder, max_voxels=768).array.shape == (3, 16, 16)
    refused(folder, f"{folder}: 3 x 16 x 16 voxels is more than the limit of 767 (raise MEDSEG_MAX_VOXELS, or "
            "crop/downsample the study)", max_voxels=767)
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "767")
    refused(folder, f"{folder}: 3 x 16 x 16 voxels is more than the limit of 767 (raise MEDSEG_MAX_VOXELS, or "
            "crop/downsample the study)")
    assert read_study(folder, max_voxels=768).array.shape == (3, 16, 16)  # the argument wins over the variable
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "lots")
    refused(folder, "MEDSEG_MAX_VOXELS='lots': expected a whole number of voxels")
    monkeypatch.delenv("MEDSEG_MAX_VOXELS")
    one = tmp_path / "mf.dcm"
    mf = db.image_dataset(db.pixels(frames=3))
    mf.SpacingBetweenSlices = 1.5  # where its frames lie (without it the file is refused: test_hostile_corpus)
    db.write(mf, one)  # one multi-frame file of 3 x 16 x 16
    assert read_study(one, max_voxels=768).array.shape == (3, 16, 16)
    refused(one, f"{one}: 3 x 16 x 16 voxels is more than the limit of 767 (raise MEDSEG_MAX_VOXELS, or "
            "crop/downsample the study)", max_voxels=767)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "a.png")
    assert read_study(tmp_path / "a.png", max_voxels=1200).array.shape == (1, 30, 40)
    refused(tmp_path / "a.png", f"{tmp_path / 'a.png'}: 30 x 40 voxels is more than the limit of 1199 (raise "
            "MEDSEG_MAX_VOXELS, or crop/downsample the study)", max_voxels=1199)


# --- NIfTI ---------------------------------------------------------------------------------------------
def test_non_finite_voxels_are_replaced_and_reported(tmp_path):
    """NaN and -Inf become the finite minimum, +Inf the maximum (ITK alone would make them 0: water in CT)."""
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 5  # 5 .. 28
    data[0, 0, 0], data[1, 1, 1], data[1, 2, 3], data[0, 2, 1] = np.nan, np.inf, -np.inf, np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.warns(StudyWarning) as record:
        vol = read_study(path)
    assert [str(w.message) for w in record] == [
        f"{path}: 4 NaN/infinite voxels set to the finite minimum 6 (+Inf to the maximum 27)"]
    got = vol.array.transpose(2, 1, 0)  # ours [k, j, i] -> nibabel's (i, j, k)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert (got[0, 0, 0], got[0, 2, 1], got[1, 2, 3], got[1, 1, 1]) == (6, 6, 6, 27)
    keep = np.isfinite(data)
    np.testing.assert_array_equal(got[keep], data[keep])
    nib.save(nib.Nifti1Image(np.full((2, 3, 4), np.nan, np.float32), np.eye(4)), tmp_path / "allnan.nii")
    refused(tmp_path / "allnan.nii", f"{tmp_path / 'allnan.nii'}: every voxel is NaN or infinite; nothing to show")
    # finite float data: no warning, values as written
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float64).reshape(2, 3, 4), np.eye(4)), tmp_path / "ok.nii")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(read_study(tmp_path / "ok.nii").array.transpose(2, 1, 0),
                                      np.arange(24).reshape(2, 3, 4))


def test_colour_nifti_opens_as_rgb_and_four_components_are_refused(tmp_path):
    rgb = np.zeros((4, 5, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = 10, 20, 30
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    vol = read_study(tmp_path / "rgb.nii")
    assert vol.array.shape == (2, 5, 4, 3) and vol.modality == "MR"
    assert vol.array[1, 4, 3].tolist() == [10, 20, 30]
    rgba = np.zeros((4, 5, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    nib.save(nib.Nifti1Image(rgba, np.eye(4)), tmp_path / "rgba.nii")
    refused(tmp_path / "rgba.nii", f"{tmp_path / 'rgba.nii'}: 4 components per voxel; expected 1 or 3")


def test_sform_wins_over_a_disagreeing_qform_as_in_nibabel(tmp_path):
    """ITK takes the qform when the two disagree; medseg, like nibabel and FSL, the sform (sform_code > 0)."""
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), None)
    sform = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -20], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    qform = np.diag([-1.0, 1.0, 1.0, 1.0])  # of the sform's handedness: a mirror pair is refused (hostile25b)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    path = tmp_path / "both.nii"
    nib.save(img, path)
    assert not np.allclose(sitk.ReadImage(str(path)).GetSpacing(), (2, 3, 4))  # ITK: the qform (the trap is set)
    vol = read_study(path)
    assert vol.source.geometry == "sform (sform_code 2); the qform (qform_code 1) disagrees and was not used"
    np.testing.assert_allclose(vol.spacing, (2, 3, 4))
    ijk = np.array([[0, 0, 0], [1, 2, 3]], float)
    np.testing.assert_allclose(vol.index_to_physical(ijk), nib.affines.apply_affine(sform, ijk) * [-1, -1, 1])


@pytest.mark.parametrize("low, modality", [(-500, "CT"), (-499, "MR")])
def test_a_nifti_with_hounsfield_like_values_is_called_ct(tmp_path, low, modality):
    data = np.full((2, 3, 4), 40, np.int16)
    data[1, 1, 1] = low
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    assert read_study(tmp_path / "a.nii").modality == modality


def test_guess_modality_needs_a_3d_numeric_volume():
    assert guess_modality(np.full((1, 4, 4), -1000.0)) == "CT"
    assert guess_modality(np.full((4, 4), -1000.0)) == "MR"  # a 2D photo-like array
    assert guess_modality(np.full((1, 4, 4, 3), -1000.0)) == "MR"  # colour
    assert guess_modality(np.zeros((0, 4, 4))) == "MR"
    assert guess_modality(np.full((1, 4, 4), True)) == "MR"


# --- single DICOM files --------------------------------------------------------------------------------
def test_single_dicom_identity_and_geometry_rule(tmp_path):
    ds = db.image_dataset(db.pixels()[0], ipp=(-3.0, 4.0, 5.5), spacing=(0.7, 0.4))
    ds.SeriesDescription = "ignored"
    path = db.write(ds, tmp_path / "one.dcm")
    vol = read_study(path)
    src = vol.source
    assert (src.format, src.path, src.files) == ("dicom", str(path), (str(path),))
    assert src.study_instance_uid == db.STUDY_UID and src.series_instance_uid == SERIES_A
    assert src.frame_of_reference_uid == db.FOR_UID and src.sop_instance_uids == (f"{SERIES_A}.1",)
    assert src.sop_class_uid == db.CT_IMAGE and src.geometry == "ImagePositionPatient/ImageOrientationPatient"
    assert vol.modality == "CT" and vol.origin == pytest.approx((-3.0, 4.0, 5.5))
    assert vol.spacing[:2] == pytest.approx((0.4, 0.7))  # (column, row) spacing
    np.testing.assert_array_equal(vol.array, db.decoded_reference(path))
    bare = db.image_dataset(db.pixels()[0], ipp=None, iop=None)
    for keyword in ("Modality", "StudyInstanceUID", "FrameOfReferenceUID"):
        delattr(bare, keyword)
    vol = read_study(db.write(bare, tmp_path / "bare.dcm"))
    assert vol.modality == "OT" and vol.source.geometry == "none (identity)"
    assert vol.source.study_instance_uid is None and vol.source.frame_of_reference_uid is None
    assert vol.source.series_instance_uid == SERIES_A
    del bare.SeriesInstanceUID, bare.SOPInstanceUID, bare.SOPClassUID
    vol = read_study(db.write(bare, tmp_path / "anonymous.dcm"))  # stripped by a careless anonymiser: still opens
    assert vol.source.series_instance_uid is None and vol.source.sop_class_uid is None
    assert vol.source.sop_instance_uids == ("",)


def test_dicom_files_that_cannot_be_shown_are_refused_naming_the_fault(tmp_path):
    def case(name, edit):
        ds = db.image_dataset(db.pixels()[0])
        edit(ds)
        return db.write(ds, tmp_path / name)

    p = case("nopix.dcm", lambda ds: delattr(ds, "PixelData"))
    refused(p, f"{p}: DICOM file without pixel data; expected an image")
    p = case("norows.dcm", lambda ds: delattr(ds, "Rows"))
    refused(p, f"{p}: DICOM file without pixel data; expected an image")
    p = case("b12.dcm", lambda ds: setattr(ds, "BitsAllocated", 12))
    refused(p, f"{p}: SamplesPerPixel 1 / BitsAllocated 12; expected 1-4 samples of 1, 8, 16, 32 or 64 bits")
    p = case("s5.dcm", lambda ds: setattr(ds, "SamplesPerPixel", 5))
    refused(p, f"{p}: SamplesPerPixel 5 / BitsAllocated 16; expected 1-4 samples of 1, 8, 16, 32 or 64 bits")
    p = case("r0.dcm", lambda ds: setattr(ds, "Rows", 0))
    refused(p, f"{p}: empty image of size (1, 0, 16)")
    p = case("trunc.dcm", lambda ds: setattr(ds, "PixelData", ds.PixelData[:-2]))
    refused(p, f"{p}: truncated DICOM file: 510 of 512 bytes of pixel data (1 frame(s) of 16 x 16 x 1 x 16 bits)")
    p = case("iop.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]))
    refused(p, f"{p}: ImageOrientationPatient [1.0, 0.0, 0.0, 1.0, 0.0, 0.0] is not two perpendicular unit vectors")
    p = case("ps.dcm", lambda ds: setattr(ds, "PixelSpacing", [0, 1]))
    refused(p, f"{p}: PixelSpacing [0.0, 1.0]: expected two numbers > 0 mm")
    seg = DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm"
    refused(seg, f"{seg}: a DICOM-SEG (segmentation), not an image: open the image series it was drawn on (medseg "
            "writes DICOM-SEG but does not read labels back from one)")


def _jpeg_dicom(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A 16 x 16 JPEG Baseline DICOM whose one fragment is a real JPEG of ``width`` x ``height``."""
    import io

    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    grey = (np.arange(width * height) % 200).astype(np.uint8).reshape(height, width)
    Image.fromarray(grey).convert(mode).save(buf, "JPEG", quality=95)
    jpeg = buf.getvalue() + (b"\0" if len(buf.getvalue()) % 2 else b"")
    ds = db.image_dataset(db.pixels()[0])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pydicom.encaps.encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return db.write(ds, path)


def test_compressed_frames_are_checked_against_the_header_before_decoding(tmp_path):
    ok = _jpeg_dicom(tmp_path / "ok.dcm", 16, 16)
    vol = read_study(ok)
    np.testing.assert_array_equal(vol.array, pydicom.dcmread(ok).pixel_array[None])
    for name, w, h, mode, size in [("wide", 32, 16, "L", "32 x 16 x 1"), ("tall", 16, 32, "L", "16 x 32 x 1"),
                                   ("rgb", 16, 16, "RGB", "16 x 16 x 3")]:
        p = _jpeg_dicom(tmp_path / f"{name}.dcm", w, h, mode)
        refused(p, f"{p}: a compressed frame of {size} (its JPEG frame header) in an image of Columns x Rows x "
                "SamplesPerPixel 16 x 16 x 1; refused before decoding")


def test_pixel_data_that_does_not_match_its_transfer_syntax_is_refused(tmp_path):
    import struct

    base = db.write(db.image_dataset(db.pixels()[0]), tmp_path / "base.dcm").read_bytes()
    at = base.rfind(b"\xe0\x7f\x10\x00")
    undefined = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0\xff\xff\xff\xff"
    offsets = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    frag = offsets + struct.pack("<HHI", 0xFFFE, 0xE000, 8) + b"\0" * 8 + db.SEQ_END

    def case(name, data):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    rle = b"1.2.840.10008.1.2.5\0"  # RLE Lossless: the length of Explicit VR Little Endian's UID
    p = case("encapsulated.dcm", base[:at] + undefined + frag)
    refused(p, f"{p}: compressed (encapsulated) pixel data in the uncompressed transfer syntax 1.2.840.10008.1.2.1")
    p = case("raw.dcm", base.replace(b"1.2.840.10008.1.2.1\0", rle))
    refused(p, f"{p}: transfer syntax 1.2.840.10008.1.2.5 needs compressed (encapsulated) pixel data; the file holds "
            "raw bytes")
    p = case("nofrag.dcm", (base[:at] + undefined + offsets + db.SEQ_END).replace(b"1.2.840.10008.1.2.1\0", rle))
    refused(p, f"{p}: compressed pixel data without any frame fragment")
    empty = offsets + struct.pack("<HHI", 0xFFFE, 0xE000, 0) + db.SEQ_END  # a fragment item of 0 bytes
    p = case("emptyfrag.dcm", (base[:at] + undefined + empty).replace(b"1.2.840.10008.1.2.1\0", rle))
    refused(p, f"{p}: compressed pixel data without any frame fragment")


def test_ybr_full_422_holds_two_samples_per_pixel(tmp_path):
    """4:2:2 chroma: 16 x 16 x 3 samples stored in 512 bytes, not 768; 510 bytes are a truncated file."""
    ds = db.image_dataset(db.pixels()[0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 2
    assert read_study(db.write(ds, tmp_path / "ybr.dcm")).array.shape == (1, 16, 16, 3)
    ds.PixelData = ds.PixelData[:-2]
    p = db.write(ds, tmp_path / "short.dcm")
    refused(p, f"{p}: truncated DICOM file: 510 of 512 bytes of pixel data (1 frame(s) of 16 x 16 x 3 x 8 bits)")


# --- DICOM series --------------------------------------------------------------------------------------
def test_a_series_keeps_its_identity_in_slice_order(tmp_path):
    folder = series(tmp_path / "s", [4.0, 0.0, 2.0])  # files 0, 1, 2 lie at z 4, 0, 2
    (folder / "README.txt").write_text("exported by a PACS")  # no DICM marker: skipped
    (folder / "tiny").write_bytes(b"x" * 10)
    vol = read_study(folder)
    order = [folder / "2001_1.dcm", folder / "2001_2.dcm", folder / "2001_0.dcm"]
    src = vol.source
    assert (src.format, src.path) == ("dicom-series", str(folder))
    assert src.files == tuple(str(f) for f in order)
    assert src.sop_instance_uids == tuple(str(pydicom.dcmread(f).SOPInstanceUID) for f in order)
    assert src.study_instance_uid == db.STUDY_UID and src.series_instance_uid == SERIES_A
    assert src.frame_of_reference_uid == db.FOR_UID and src.sop_class_uid == db.CT_IMAGE
    assert src.geometry == "ImagePositionPatient/ImageOrientationPatient" and src.notes == ()
    assert vol.modality == "CT" and vol.spacing == pytest.approx((0.5, 0.5, 2.0)) and vol.origin == pytest.approx((0, 0, 0))
    for k, f in enumerate(order):
        np.testing.assert_array_equal(vol.array[k], db.decoded_reference(f)[0])


def test_series_listing_names_modality_description_and_order(tmp_path):
    folder = series(tmp_path / "two", [0.0, 2.0, 4.0])
    series(folder, [1.0, 0.0], uid=SERIES_B)
    for name in ("3001_0.dcm", "3001_1.dcm"):
        ds = pydicom.dcmread(folder / name)
        ds.Modality, ds.SeriesDescription = "MR", "T1 axial"
        ds.save_as(folder / name)
    found = {s.series_instance_uid: s for s in list_series(folder)}
    assert set(found) == {SERIES_A, SERIES_B}
    assert found[SERIES_B].files == (str(folder / "3001_1.dcm"), str(folder / "3001_0.dcm"))  # z 0, then z 1
    assert (found[SERIES_B].modality, found[SERIES_B].description) == ("MR", "T1 axial")
    assert (found[SERIES_A].modality, found[SERIES_A].description) == ("CT", "")
    refused(folder, f"{folder}: holds 2 series, pick one with --series UID: {SERIES_A} (CT, 3 files); "
            f"{SERIES_B} (MR, 2 files)")
    refused(folder, f"{folder}: no series 9.9; it holds {SERIES_A}, {SERIES_B}", series_uid="9.9")
    vol = read_study(folder, series_uid=SERIES_B)
    assert vol.source.series_instance_uid == SERIES_B and vol.array.shape == (2, 16, 16)
    assert vol.spacing[2] == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_list_series_orders_slices_without_position_by_instance_number(tmp_path):
    """Slices that carry no position are listed in InstanceNumber order (an invalid number counts as 0)."""
    folder = tmp_path / "s"
    folder.mkdir()
    for name, instance in [("a.dcm", 3), ("b.dcm", 1), ("c.dcm", 2), ("d.dcm", 99)]:
        ds = db.image_dataset(db.pixels()[0], ipp=None)
        ds.InstanceNumber = instance
        db.write(ds, folder / name)
    data = (folder / "d.dcm").read_bytes()  # InstanceNumber "xx": not a number (pydicom would not write it)
    assert data.count(b"IS\x02\x0099") == 1
    (folder / "d.dcm").write_bytes(data.replace(b"IS\x02\x0099", b"IS\x02\x00xx"))
    (only,) = list_series(folder)
    assert [Path(f).name for f in only.files] == ["d.dcm", "b.dcm", "c.dcm", "a.dcm"]


def test_pydicoms_notes_on_odd_values_do_not_reach_the_user_without_a_file_name(tmp_path):
    """pydicom warns when a value is first used, after the read: a 66-character SeriesInstanceUID printed 'medseg
    info: warning: The value length (66) exceeds the maximum length of 64 allowed for VR UI. Please see <url>',
    naming no file, on every open (session 21)."""
    import pydicom.config

    ds = db.image_dataset(db.pixels()[0], series_uid="1." + "2" * 64)
    before = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        path = db.write(ds, tmp_path / "long_uid.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_study(path)
        assert volume.source.series_instance_uid == "1." + "2" * 64
    assert [str(w.message) for w in caught] == []


def test_a_folder_without_an_image_series_says_so(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "README").write_text("no images here")
    shutil.copy(DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm", folder / "seg.dcm")  # a SEG is not an image series
    report = db.image_dataset(db.pixels()[0])
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(report, keyword)  # like a structured report or a presentation state
    db.write(report, folder / "sr.dcm")
    nouid = db.image_dataset(db.pixels()[0])
    del nouid.SeriesInstanceUID
    db.write(nouid, folder / "nouid.dcm")
    refused(folder, f"{folder}: no DICOM image series found in this folder: seg.dcm is a DICOM-SEG (segmentation), "
            "not an image: open the image series it was drawn on (medseg writes DICOM-SEG but does not read labels "
            "back from one)")
    # session 21: a folder given for the NIfTI it holds said only "no DICOM image series found in this folder"
    subject = tmp_path / "sub-01" / "anat"
    subject.mkdir(parents=True)
    shutil.copy(DATA / "ct_head_0051_slabA_image.nii.gz", subject / "sub-01_T1w.nii.gz")
    (subject / "sub-01_T1w.json").write_text("{}")
    refused(subject.parent, f"{subject.parent}: no DICOM image series found in this folder: it holds "
            "anat/sub-01_T1w.nii.gz, which medseg opens as a file, not as a folder: open that file itself")


def test_a_folder_of_dicom_files_without_the_part10_preamble_says_why_it_has_no_series(tmp_path):
    """Old exports write the data set alone (no 128-byte preamble, no DICM): pydicom and medseg skip such files,
    and the folder was refused as if it held no DICOM at all ("no DICOM image series found in this folder")."""
    folder = tmp_path / "old"
    folder.mkdir()
    for n in range(3):
        ds = db.image_dataset(db.pixels(seed=n)[0], instance=n + 1, ipp=(0.0, 0.0, float(n)))
        ds.preamble = None
        del ds.file_meta
        ds.save_as(folder / f"IM{n}", enforce_file_format=False, implicit_vr=True, little_endian=True)
    refused(folder, f"{folder}: no DICOM image series found in this folder: 3 file(s) hold a DICOM data set without "
                    "the Part 10 header (no DICM marker at byte 128); export them again as DICOM files")


def test_uneven_series_opens_only_when_asked_at_the_mean_spacing(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0, 4.0, 7.0])
    fault = "uneven slice spacing, a step of 3 mm between 2001_2.dcm (4.00 mm) and 2001_3.dcm (7.00 mm) while the others are 2 mm"
    refused(folder, f"{folder}: {fault}; resample the series to even spacing (e.g. in 3D Slicer), or pass --allow-uneven")
    note = f"--allow-uneven: 1 uneven step(s) ({fault}); opened at the mean spacing 2.333 mm, so slice positions are approximate"
    with pytest.warns(StudyWarning) as record:
        vol = read_study(folder, allow_uneven=True)
    assert [str(w.message) for w in record] == [f"{folder}: {note}"]
    assert vol.source.notes == (note,)
    assert vol.source.geometry == "ImagePositionPatient/ImageOrientationPatient (mean slice spacing, --allow-uneven)"
    assert vol.spacing == pytest.approx((0.5, 0.5, 7 / 3))
    even = series(tmp_path / "even", [0.0, 2.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_study(even, allow_uneven=True).source.notes == ()


def test_a_series_file_that_fails_its_checks_refuses_the_folder_naming_it(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0, 4.0])
    ds = pydicom.dcmread(folder / "2001_1.dcm")
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(folder / "2001_1.dcm")
    p = folder / "2001_1.dcm"
    refused(folder, f"{p}: truncated DICOM file: 100 of 512 bytes of pixel data (1 frame(s) of 16 x 16 x 1 x 16 bits)")
    other = series(tmp_path / "g", [0.0, 2.0, 4.0])
    ds = pydicom.dcmread(other / "2001_2.dcm")
    del ds.ImagePositionPatient
    ds.save_as(other / "2001_2.dcm")
    refused(other, f"{other}: 2001_2.dcm: no ImagePositionPatient; a series of 3 images cannot be stacked without it")
    (other / "2001_2.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    with pytest.raises(StudyError, match=rf"^{re.escape(str(other / '2001_2.dcm'))}: not a readable DICOM file \("):
        read_study(other)


# --- PNG / JPEG ------------------------------------------------------------------------------------------
def test_png_modes_open_as_grey_or_rgb_as_viewers_show_them(tmp_path):
    rgb = (np.arange(6 * 5 * 3) * 7 % 256).astype(np.uint8).reshape(6, 5, 3)

    def png(name, im):
        im.save(tmp_path / name)
        return read_study(tmp_path / name).array[0]

    bits = np.zeros((6, 5), bool)
    bits[2:4, 1:3] = True
    got = png("bits.png", Image.fromarray(bits))  # mode "1": 0 / 255, as every viewer shows it
    assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
    np.testing.assert_array_equal(got == 255, bits)
    rgba = np.dstack([rgb, np.full((6, 5), 9, np.uint8)])
    np.testing.assert_array_equal(png("rgba.png", Image.fromarray(rgba)), rgb)  # alpha dropped
    pal = Image.fromarray(rgb).quantize(8)
    np.testing.assert_array_equal(png("pal.png", pal), np.asarray(pal.convert("RGB")))
    la = Image.fromarray(rgb[..., 0]).convert("LA")
    np.testing.assert_array_equal(png("la.png", la), rgb[..., 0])  # grey + alpha: grey (RGB before session 23)
    deep = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grey: stored big-endian in the PNG
    got = read_study(tmp_path / "deep.png").array[0]
    assert got.dtype.byteorder in ("=", "|") and got.dtype.itemsize == 2
    np.testing.assert_array_equal(got, deep)


def test_broken_and_oversized_images_are_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(StudyError, match=rf"^{re.escape(str(tmp_path / 'cut.png'))}: not a readable PNG/JPEG image \(.+\)$"):
        read_study(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's bomb guard: refuses past 2x this
    with pytest.raises(StudyError, match=rf"^{re.escape(str(tmp_path / 'a.png'))}: image too large to open safely "
                       r"\(Image size \(4096 pixels\) exceeds limit of 2000 pixels, could be decompression bomb DOS attack\.\)$"):
        read_study(tmp_path / "a.png")


# --- more of what the survivors of the first mutation run showed untested ----------------------------------
def test_a_small_sform_qform_disagreement_still_follows_the_sform(tmp_path):
    """0.01 mm of spacing or origin, or 0.01 rad: ITK opens the qform, medseg the sform (each alone)."""
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    a = 0.01
    rotation = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    for name, sform in [("spacing", np.diag([1.01, 1, 1, 1])), ("origin", np.eye(4) + np.eye(4, k=3) * 0.01),
                        ("rotation", rotation)]:
        img = nib.Nifti1Image(data, None)
        img.header.set_sform(sform, code=2)
        img.header.set_qform(np.eye(4), code=1)
        path = tmp_path / f"{name}.nii"
        nib.save(img, path)
        itk = sitk.ReadImage(str(path))
        assert (itk.GetSpacing(), itk.GetOrigin()) == ((1, 1, 1), (0, 0, 0)) and itk.GetDirection()[1] == 0  # the qform
        vol = read_study(path)
        affine = nib.load(path).affine  # nibabel: the sform
        ijk = np.array([[0, 0, 0], [3, 2, 1]], float)
        np.testing.assert_allclose(vol.index_to_physical(ijk), nib.affines.apply_affine(affine, ijk) * [-1, -1, 1],
                                   atol=1e-6, err_msg=name)


def test_pixel_types_that_open_and_one_without_a_transfer_syntax(tmp_path):
    for bits, dtype in [(8, "u1"), (32, "<i4")]:
        ds = db.image_dataset(db.pixels()[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelData = db.pixels()[0].astype(dtype).tobytes()
        path = db.write(ds, tmp_path / f"b{bits}.dcm")
        np.testing.assert_array_equal(read_study(path).array, db.decoded_reference(path))
    ds = db.image_dataset(db.pixels()[0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = bytes(range(32))
    path = db.write(ds, tmp_path / "b1.dcm")  # 1-bit: GDCM shows the set bits as 255, pydicom as 1
    np.testing.assert_array_equal(read_study(path).array, db.decoded_reference(path) * 255)
    ds = db.image_dataset(db.pixels()[0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelData = 64, 64, 63, bytes(16 * 16 * 8)
    path = db.write(ds, tmp_path / "b64.dcm")  # allowed by the check, then ITK has no reader for it
    refused(path, f"{path}: DICOM pixel data could not be decoded (ITK ERROR: GDCMImageIO: Cannot read requested file)")
    ds = db.image_dataset(db.pixels()[0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 4, "ARGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 4
    assert read_study(db.write(ds, tmp_path / "argb.dcm")).array.shape == (1, 16, 16, 4)
    import struct

    data = db.write(db.image_dataset(db.pixels()[0]), tmp_path / "ts.dcm").read_bytes()
    at = data.find(b"\x02\x00\x10\x00UI")
    n = struct.unpack_from("<H", data, at + 6)[0]
    data = data[:at] + data[at + 8 + n:]  # no TransferSyntaxUID: taken as uncompressed, GDCM then gives up
    data = data[:140] + struct.pack("<I", struct.unpack_from("<I", data, 140)[0] - 8 - n) + data[144:]
    (tmp_path / "nots.dcm").write_bytes(data)
    p = tmp_path / "nots.dcm"
    refused(p, f"{p}: DICOM pixel data could not be decoded (ITK ERROR: GDCMImageIO: Cannot read requested file)")


def test_read_failures_after_the_checks_are_one_line_naming_the_file(tmp_path, monkeypatch):
    nifti = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.eye(4)), nifti)
    one = db.write(db.image_dataset(db.pixels()[0]), tmp_path / "one.dcm")
    folder = series(tmp_path / "s", [0, 2])

    def itk_fails(call, *args):
        raise RuntimeError("ITK ERROR: ImageIO\n\n  the last line says why  \n")

    monkeypatch.setattr(readers, "_itk", itk_fails)
    refused(nifti, f"{nifti}: not a readable NIfTI file (the last line says why)")
    refused(one, f"{one}: DICOM pixel data could not be decoded (the last line says why)")
    refused(folder, f"{folder}: the DICOM series could not be read (the last line says why)")
    monkeypatch.undo()

    def scan_fails(path, **kwargs):
        raise OSError(13, "Permission denied")

    import data.dicom_pixels

    monkeypatch.setattr(data.dicom_pixels, "scan_dicom", scan_fails)
    refused(one, f"{one}: cannot be read (Permission denied)")
    monkeypatch.setattr(data.dicom_pixels, "scan_dicom", lambda path, **kw: (_ for _ in ()).throw(OSError("disk gone")))
    refused(one, f"{one}: cannot be read (disk gone)")
    monkeypatch.undo()
    monkeypatch.setattr(readers.pydicom, "dcmread", lambda *a, **k: (_ for _ in ()).throw(KeyError()))
    refused(one, f"{one}: not a readable DICOM file (KeyError)")  # an exception without a message: its name


def test_series_in_subfolders_without_some_identity_and_with_undecodable_names(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0, 4.0])
    (folder / "deeper").mkdir()
    shutil.move(folder / "2001_2.dcm", folder / "deeper" / "2001_2.dcm")  # exports nest files in folders
    for f in [folder / "2001_0.dcm", folder / "2001_1.dcm", folder / "deeper" / "2001_2.dcm"]:
        ds = pydicom.dcmread(f)
        del ds.StudyInstanceUID, ds.FrameOfReferenceUID
        ds.save_as(f)
    vol = read_study(folder)
    assert vol.array.shape == (3, 16, 16) and vol.source.files[-1] == str(folder / "deeper" / "2001_2.dcm")
    assert vol.source.study_instance_uid is None and vol.source.frame_of_reference_uid is None
    bad = folder / os.fsdecode(b"\xff.dcm")  # a Latin-1 name: SimpleITK would abort the process on it
    shutil.move(folder / "2001_1.dcm", bad)
    refused(folder, f"{str(bad)!r}: the file name is not valid UTF-8; rename the file")


def test_pil_warnings_stay_inside_the_reader(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: PIL warns of a bomb, our own limit decides
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_study(tmp_path / "a.png").array.shape == (1, 64, 64)


def test_links_inside_the_series_folder_are_followed_and_links_out_refuse_it(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0])
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    (folder / "a" / "README.txt").write_text("notes")
    (folder / "b" / "readme").symlink_to("../a/README.txt")  # outside its own subfolder, inside the study
    assert read_study(folder).array.shape == (2, 16, 16)
    (tmp_path / "secret.txt").write_text("x")
    (folder / "b" / "out").symlink_to(tmp_path / "secret.txt")
    refused(folder, f"{folder / 'b' / 'out'}: a link to a file outside its folder; name the real path or copy the file in")


def test_each_series_file_is_held_to_the_voxel_limit_naming_it(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0, 4.0])
    refused(folder, f"{folder / '2001_0.dcm'}: 1 x 16 x 16 voxels is more than the limit of 255 (raise MEDSEG_MAX_VOXELS, "
            "or crop/downsample the study)", max_voxels=255)


def test_deflated_dicom_files_and_series_open(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    one = db.write(db.image_dataset(db.pixels()[0], syntax=DeflatedExplicitVRLittleEndian), tmp_path / "d.dcm")
    np.testing.assert_array_equal(read_study(one).array, db.decoded_reference(one))
    folder = series(tmp_path / "s", [0.0, 2.0], syntax=DeflatedExplicitVRLittleEndian)
    vol = read_study(folder)
    np.testing.assert_array_equal(vol.array[1], db.decoded_reference(folder / "2001_1.dcm")[0])


def test_other_files_before_the_images_do_not_stop_the_listing(tmp_path):
    folder = series(tmp_path / "s", [0.0, 2.0])
    (folder / "00README.txt").write_text("exported by a PACS\n" * 20)  # longer than a DICOM preamble, no DICM
    report = db.image_dataset(db.pixels()[0], series_uid=SERIES_B)
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(report, keyword)
    db.write(report, folder / "000report.dcm")  # a DICOM file without an image: skipped
    shutil.copy(DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm", folder / "000seg.dcm")  # a SEG: not an image series
    (only,) = list_series(folder)
    assert only.series_instance_uid == SERIES_A and len(only.files) == 2
    assert read_study(folder).array.shape == (2, 16, 16)


def test_a_one_file_folder_without_optional_attributes_opens(tmp_path):
    """No SOPClassUID, Modality or InstanceNumber: the image still opens, as 'OT', and says what it lacks."""
    ds = db.image_dataset(db.pixels()[0])
    del ds.SOPClassUID, ds.Modality, ds.InstanceNumber
    folder = tmp_path / "one"
    path = db.write(ds, folder / "IM1.dcm")
    (info,) = list_series(folder)
    assert (info.modality, info.files) == ("OT", (str(path),))
    vol = read_study(folder)
    assert vol.modality == "OT" and vol.source.sop_class_uid is None and vol.source.format == "dicom-series"
    np.testing.assert_array_equal(vol.array, db.decoded_reference(path))
    single = read_study(path)
    assert single.modality == "OT" and single.source.sop_class_uid is None
    folder2 = series(tmp_path / "two", [0.0, 2.0])
    for f in folder2.iterdir():
        ds = pydicom.dcmread(f)
        del ds.SOPClassUID, ds.Modality, ds.InstanceNumber
        ds.save_as(f)
    vol = read_study(folder2)
    assert vol.modality == "OT" and vol.source.sop_class_uid is None and vol.array.shape == (2, 16, 16)


def test_a_one_pixel_high_png_opens_and_a_cut_one_says_truncated(tmp_path):
    Image.fromarray(np.arange(5, dtype=np.uint8)[None]).save(tmp_path / "line.png")
    vol = read_study(tmp_path / "line.png")
    assert vol.array.shape == (1, 1, 5) and vol.source.path == str(tmp_path / "line.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.png", f"{tmp_path / 'cut.png'}: not a readable PNG/JPEG image (image file is truncated)")


def test_nifti_refusals_and_identity_through_read_study(tmp_path):
    path = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.eye(4)), path)
    vol = read_study(path)
    assert (vol.source.path, vol.source.format, vol.source.files) == (str(path), "nifti", ())
    refused(path, f"{path}: 2 x 3 x 4 voxels is more than the limit of 23 (raise MEDSEG_MAX_VOXELS, or "
            "crop/downsample the study)", max_voxels=23)
    path.write_bytes(path.read_bytes()[:-5])
    refused(path, f"{path}: truncated: 395 of the 400 bytes that the header declares")
    # session 21: ITK's "not a readable NIfTI file (The maximum supported IO dimension is 5.)", naming nothing
    row = tmp_path / "row.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(5, dtype=np.int16), np.eye(4)), row)
    refused(row, f"{row}: a 1D NIfTI of size (5,) (one row of values); expected a 2D or 3D image")


def test_header_attributes_dicom_may_leave_out_take_their_defaults(tmp_path):
    """SamplesPerPixel 1 and no PhotometricInterpretation: GDCM opens both, so the checks must not refuse them."""
    for keyword in ("SamplesPerPixel", "PhotometricInterpretation"):
        ds = db.image_dataset(db.pixels()[0])
        delattr(ds, keyword)
        path = db.write(ds, tmp_path / f"no{keyword}.dcm")
        np.testing.assert_array_equal(read_study(path).array[0], db.pixels()[0])
    ds = db.image_dataset(db.pixels()[0])
    ds.PixelData = b""
    path = db.write(ds, tmp_path / "empty.dcm")
    refused(path, f"{path}: truncated DICOM file: 0 of 512 bytes of pixel data (1 frame(s) of 16 x 16 x 1 x 16 bits)")


def test_a_frame_count_that_overflows_64_bit_integers_is_still_over_the_limit(tmp_path):
    """3e9 frames of 65535 x 65535: 1.29e19 voxels wraps to a negative int64; counted in float it is refused as such."""
    ds = db.image_dataset(db.pixels()[0])
    ds.NumberOfFrames, ds.Rows, ds.Columns = "3000000000", 65535, 65535
    path = db.write(ds, tmp_path / "huge.dcm")
    refused(path, f"{path}: 3000000000 x 65535 x 65535 voxels is more than the limit of {readers.DEFAULT_MAX_VOXELS} "
            "(raise MEDSEG_MAX_VOXELS, or crop/downsample the study)")


@pytest.mark.parametrize("zs", [[0.0, 1.5, 3.0, 4.5], [4.5, 3.0, 1.5, 0.0]], ids=["feet_to_head", "head_to_feet"])
def test_enhanced_multiframe_frames_lie_where_their_functional_groups_put_them(tmp_path, zs):
    """GDCM stacked an enhanced multi-frame from frame 1's position along +normal: frames stored head to feet
    opened mirrored (frame 2 at z = 6.0 where its PlanePositionSequence says 3.0), with geometry 'none'."""
    from tests.hostile import dicom_bytes as db

    stack = db.pixels(16, 16, seed=3, frames=4)
    volume = read_study(db.write(db.enhanced_multiframe(stack, zs), tmp_path / "enhanced.dcm"))
    np.testing.assert_array_equal(volume.array, stack)
    for k, z in enumerate(zs):
        np.testing.assert_allclose(volume.index_to_physical(np.array([0.0, 0.0, k])), [-4.0, -4.0, z], atol=1e-6)
    np.testing.assert_allclose(volume.index_to_physical(np.array([2.0, 1.0, 0.0])), [-3.0, -3.5, zs[0]], atol=1e-6)
    assert volume.source.geometry.startswith("per-frame functional groups")


@pytest.mark.parametrize("group, keyword, value, shared", [
    ("PixelMeasuresSequence", "PixelSpacing", [0.8, 0.8], [0.5, 0.5]),
    ("PlaneOrientationSequence", "ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
     [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
], ids=["pixel_spacing", "orientation"])
def test_an_enhanced_frame_whose_group_disagrees_with_the_shared_one_is_refused(tmp_path, group, keyword, value,
                                                                                shared):
    """A functional group belongs in the shared or the per-frame groups (PS3.3 C.7.6.16.1). Both, disagreeing: the
    per-frame one was taken without a word (0.8 mm pixels where the shared groups say 0.5, session 17). The same
    value in both still opens."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stack = db.pixels(16, 16, seed=3, frames=4)

    def with_own(own):
        ds = db.enhanced_multiframe(stack, [0.0, 1.5, 3.0, 4.5])
        for frame in ds.PerFrameFunctionalGroupsSequence:
            item = Dataset()
            setattr(item, keyword, own)
            setattr(frame, group, Sequence([item]))
        return db.write(ds, tmp_path / "enhanced.dcm")

    path = with_own(value)
    refused(path, f"{path}: frame 1: {keyword} {value} in its per-frame functional groups but {shared} in the shared "
                  "ones; a functional group belongs in one of the two, so which holds is in doubt")
    np.testing.assert_array_equal(read_study(with_own(shared)).array, stack)


def test_a_folder_of_one_multiframe_or_unplaced_image_opens_as_that_file_alone(tmp_path):
    """A zip (or CD folder) of one enhanced multi-frame image was refused in ITK's words ("could not be read
    (ValueError: only 2D and 3D images are supported, got a 4D image)"): the series reader stacked the one file. A
    folder of one ultrasound frame opened at GDCM's 1 mm with its geometry called 'ImagePositionPatient/
    ImageOrientationPatient', so its areas were claimed in mm² (session 21). Now either opens as the file alone."""
    stack = db.pixels(16, 16, seed=3, frames=4)
    enhanced = db.write(db.enhanced_multiframe(stack, [4.5, 3.0, 1.5, 0.0]), tmp_path / "enh" / "IM0001.dcm")
    us = tmp_path / "us" / "US.dcm"
    us.parent.mkdir()
    shutil.copy(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm", us)
    for path, format in ((enhanced, "dicom"), (us, "dicom-series")):
        alone, in_folder = read_study(path), read_study(path.parent)
        np.testing.assert_array_equal(in_folder.array, alone.array)
        assert (in_folder.spacing, in_folder.origin, in_folder.direction) == (alone.spacing, alone.origin,
                                                                              alone.direction)
        assert in_folder.source.geometry == alone.source.geometry
        assert in_folder.size_is_physical == alone.size_is_physical
        assert (in_folder.source.path, in_folder.source.format, in_folder.source.files) == (
            str(path.parent), format, (str(path),))
    assert not read_study(us.parent).size_is_physical
    np.testing.assert_array_equal(read_study(enhanced.parent).array, stack)


def test_a_series_split_into_one_image_series_says_so_instead_of_offering_them(tmp_path):
    """A series whose images were each given their own SeriesInstanceUID (an anonymiser that made a UID per file) was
    refused as "holds 3 series, pick one with --series UID", and the UI offered one-image series to pick (session 21).
    Two such images, or one-image series of different frames of reference, are still offered as series."""
    folder = tmp_path / "split"
    uids = [f"{SERIES_A}.{n}" for n in range(3)]
    for n, uid in enumerate(uids):
        series(folder, [1.5 * n], uid=uid)
    refused(folder, f"{folder}: holds 3 series of one image each, parallel slices of one study and frame of reference "
                    "at different positions: they look like one series whose images were each given their own "
                    "SeriesInstanceUID (an anonymiser or export that made a UID per file); give them one "
                    "SeriesInstanceUID (e.g. dcmodify -m SeriesInstanceUID=UID *.dcm) and open the folder again")
    assert read_study(folder, series_uid=uids[1]).origin[2] == 1.5
    (folder / f"{uids[2][-4:]}_0.dcm").unlink()
    with pytest.raises(readers.SeveralSeriesError):
        read_study(folder)
    other = tmp_path / "other"
    for n, uid in enumerate(uids):
        ds = db.image_dataset(db.pixels(seed=n)[0], series_uid=uid, ipp=(0.0, 0.0, 1.5 * n))
        ds.FrameOfReferenceUID = f"{db.FOR_UID}.{n}"
        db.write(ds, other / f"{n}.dcm")
    with pytest.raises(readers.SeveralSeriesError):
        read_study(other)


def test_a_multiframe_image_among_the_files_of_a_series_is_refused_naming_it(tmp_path):
    """An enhanced image beside single-frame slices of its series, or a series split into two enhanced files, was
    refused as "enh.dcm: no ImageOrientationPatient; a series of 3 images cannot be stacked without it" (the
    enhanced image keeps it in its functional groups; session 21)."""
    stack = db.pixels(16, 16, seed=3, frames=4)
    mixed = tmp_path / "mixed"
    db.write(db.enhanced_multiframe(stack, [0.0, 1.5, 3.0, 4.5]), mixed / "enh.dcm")
    for n, z in enumerate([6.0, 7.5]):
        db.write(db.image_dataset(db.pixels(seed=n)[0], instance=n + 2, ipp=(0.0, 0.0, z)), mixed / f"im{n}.dcm")
    refused(mixed, f"{mixed}: enh.dcm is a multi-frame image (4 frames) among the 3 files of series {SERIES_A}; "
                   "medseg stacks single-frame files placed by ImagePositionPatient, or opens one multi-frame file "
                   "alone: open that file by itself (or export the series as single-frame files)")


def _split_enhanced(folder: Path, stack: np.ndarray, zs_per_file) -> Path:
    """One series split into enhanced files, file n holding the next frames of ``stack`` at ``zs_per_file[n]``."""
    at = 0
    for n, zs in enumerate(zs_per_file):
        ds = db.enhanced_multiframe(stack[at:at + len(zs)], zs)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES_A}.{n + 1}"
        ds.InstanceNumber = n + 1
        db.write(ds, folder / f"{'abc'[n]}.dcm")
        at += len(zs)
    return folder


def test_a_series_split_into_enhanced_files_is_stacked_by_each_frames_position(tmp_path):
    """A series split into several enhanced multi-frame files (a file per stack or per N frames) was refused as "a.dcm
    is a multi-frame image (4 frames) among the 2 files ...: open that file by itself", which opened half the volume as
    if it were the whole (session 22). Its frames are now stacked by their own positions (PlanePositionSequence),
    whatever order the files and frames are stored in, and checked as a series is: a gap or an overlap between the
    files is refused naming the file and frame."""
    stack = db.pixels(16, 16, seed=3, frames=8)
    for name, zs, frames in (("in_order", ([0.0, 1.5, 3.0, 4.5], [6.0, 7.5, 9.0, 10.5]), stack),
                             ("second_reversed", ([0.0, 1.5, 3.0, 4.5], [10.5, 9.0, 7.5, 6.0]),
                              np.concatenate([stack[:4], stack[4:][::-1]])),
                             ("files_swapped", ([6.0, 7.5, 9.0, 10.5], [0.0, 1.5, 3.0, 4.5]),
                              np.concatenate([stack[4:], stack[:4]]))):
        volume = read_study(_split_enhanced(tmp_path / name, frames, zs))
        np.testing.assert_array_equal(volume.array, stack)
        assert volume.spacing == pytest.approx((0.5, 0.5, 1.5)) and volume.origin == pytest.approx((-4.0, -4.0, 0.0))
        assert np.allclose(volume.direction, np.eye(3).ravel())
        assert volume.source.geometry.startswith("per-frame functional groups of 2 files") and volume.size_is_physical
    gap = _split_enhanced(tmp_path / "gap", stack, ([0.0, 1.5, 3.0, 4.5], [9.0, 10.5, 12.0, 13.5]))
    refused(gap, f"{gap}: 2 slice(s) missing between a.dcm frame 4 (4.50 mm) and b.dcm frame 1 (9.00 mm) (the other "
                 "slices are 1.5 mm apart); add the missing file(s), open the complete series, or pass --allow-uneven")
    overlap = _split_enhanced(tmp_path / "overlap", stack, ([0.0, 1.5, 3.0, 4.5], [4.5, 6.0, 7.5, 9.0]))
    refused(overlap, f"{overlap}: two images at the same position between a.dcm frame 4 (4.50 mm) and b.dcm frame 1 "
                     "(4.50 mm); remove the duplicate or pick one series")
    other = _split_enhanced(tmp_path / "other_patient", stack, ([0.0, 1.5, 3.0, 4.5], [6.0, 7.5, 9.0, 10.5]))
    ds = pydicom.dcmread(other / "b.dcm")
    ds.PatientID = "OTHER-7"  # session 23: one file of another patient, held to one patient as a series' slices are
    ds.save_as(other / "b.dcm")
    refused(other, f"{other}: b.dcm frame 1: PatientID differs from a.dcm frame 1's within one series: the volume "
                   "would hold images of two patients or studies; take the file out of the folder, or correct its "
                   "PatientID")


@pytest.mark.parametrize("zs, fault", [
    ([0.0, 1.5, 0.0, 1.5], "frame 3 lies where frame 1 does (0.00 mm): the images hold more than one volume (time "
                           "points or stacks); medseg opens one volume: save each as its own series and open one"),
    ([0.0, 3.0, 1.5, 4.5], "frame 3 (1.50 mm) lies back before frame 2 (3.00 mm): the images are not stored in order "
                           "along their normal, and they are stacked as stored, so the volume would open scrambled; "
                           "save them in order"),
], ids=["two_time_points", "interleaved"])
def test_enhanced_frames_that_step_back_are_refused_even_when_uneven_spacing_is_allowed(tmp_path, zs, fault):
    """Frames are stacked as stored. Two time points of one volume (0, 1.5, 0, 1.5 mm), or frames stored interleaved,
    were refused as an uneven step, which --allow-uneven and the UI's mean-spacing choice then opened: 4 slices 0.5 mm
    apart with the second volume folded in, or the slices scrambled (session 17)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stack = db.pixels(16, 16, seed=3, frames=4)
    ds = db.enhanced_multiframe(stack, zs)
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content = Dataset()
        content.TemporalPositionIndex, content.InStackPositionNumber = 1 + n // 2, 1 + n % 2
        frame.FrameContentSequence = Sequence([content])
    path = db.write(ds, tmp_path / "enhanced.dcm")
    refused(path, f"{path}: {fault}")
    refused(path, f"{path}: {fault}", allow_uneven=True)


def test_a_single_frame_enhanced_image_is_held_to_its_functional_groups(tmp_path):
    """An enhanced (multi-frame class) image of one frame keeps its geometry in the functional groups only. The
    checks ran for 2+ frames alone: a NaN or two-valued PlanePosition opened at an origin of uninitialised memory
    (0.0, 4.7e-310, 1e-323) with geometry 'none (identity)', and a valid one was also called 'none (identity)'."""
    from tests.hostile import dicom_bytes as db

    stack = db.pixels(16, 16, seed=3, frames=1)

    def one_frame(position):
        ds = db.enhanced_multiframe(stack, [7.5], spacing=(0.7, 0.6))
        ds.NumberOfFrames = 1
        ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = position
        return db.write(ds, tmp_path / "one.dcm")

    volume = read_study(one_frame([-4.0, -4.0, 7.5]))
    np.testing.assert_array_equal(volume.array, stack)
    assert volume.spacing[:2] == (0.6, 0.7) and volume.origin == (-4.0, -4.0, 7.5)
    assert volume.source.geometry.startswith("per-frame functional groups")
    for position, fault in (([float("nan"), 0.0, 0.0], "ImagePositionPatient [nan, 0.0, 0.0] holds NaN or infinite "
                             "values"), ([1.0, 2.0], "ImagePositionPatient has 2 value(s); expected 3")):
        refused(one_frame(position), f"{tmp_path / 'one.dcm'}: {fault}")


@pytest.mark.parametrize("edit, fault", [
    ({"ImagePositionPatient": [1e300, -1e300, 1e300]}, "origin (1e+300, -1e+300, 1e+300) mm is more than 100000 mm "
                                                       "(100 m) from the scanner's origin"),
    # refused at the header since session 22, as 1e-300 (which ITK could not place) is
    ({"PixelSpacing": [1e-30, 1e-30]}, "PixelSpacing [1e-30, 1e-30]: expected pixels of 1e-06 mm or more; a pixel "
                                       "that small is a damaged value (no label map can hold it)"),
    # refused at the header since session 26b: no scanner's pixel is past 50 mm (5000 mm opened as a 640 m image)
    ({"PixelSpacing": [1e30, 1e30]}, "PixelSpacing [1e+30, 1e+30]: expected pixels of 50 mm or less (no scanner's "
                                     "pixel is larger: NM and dose grids reach about 20 mm); a larger pixel is a "
                                     "damaged value: check the file's PixelSpacing"),
    ({"PixelSpacing": [5000, 5000]}, "PixelSpacing [5000.0, 5000.0]: expected pixels of 50 mm or less (no scanner's "
                                     "pixel is larger: NM and dose grids reach about 20 mm); a larger pixel is a "
                                     "damaged value: check the file's PixelSpacing"),
    ({"PixelSpacing": [0.66, 51]}, "PixelSpacing [0.66, 51.0]: expected pixels of 50 mm or less (no scanner's "
                                   "pixel is larger: NM and dose grids reach about 20 mm); a larger pixel is a "
                                   "damaged value: check the file's PixelSpacing"),
])
def test_geometry_that_no_label_map_can_hold_is_refused(tmp_path, edit, fault):
    """The real CT slice with an absurd position or pixel size: it opened, and the NIfTI label map written of it
    (float32 geometry) held an infinite origin or a zero spacing, which medseg's own reader then refused ('the
    sform holds NaN or infinite values' / 'is degenerate'): the annotation was written where nothing can read it."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    for keyword, value in edit.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "odd.dcm")
    tail = "" if fault.startswith("PixelSpacing") else ("; a label map cannot hold such a geometry (check "
                                                        "ImagePositionPatient / PixelSpacing, or the NIfTI's sform and "
                                                        "pixdim)")
    refused(tmp_path / "odd.dcm", f"{tmp_path / 'odd.dcm'}: {fault}{tail}")


def test_a_folder_of_many_series_names_the_first_ten_in_its_one_line(tmp_path):
    """A PACS export of a whole study (or a folder of single-image series): the refusal listed every series, a
    line of 70 characters a series (700 KB for 10,000), and both 'no series X' messages the same."""
    folder = tmp_path / "many"
    uids = [f"1.2.826.0.1.3680043.8.498.{4000 + n}" for n in range(25)]
    for uid in uids:
        series(folder, [0.0], uid=uid)
    listed = "; ".join(f"{uid} (CT, 1 files)" for uid in uids[:10])
    refused(folder, f"{folder}: holds 25 series, pick one with --series UID: {listed}; and 15 more "
                    f"(medseg info {folder} lists them)")
    refused(folder, f"{folder}: no series 9.9; it holds {', '.join(uids[:10])} and 15 more "
                    f"(medseg info {folder} lists them)", series_uid="9.9")


@pytest.mark.parametrize("syntax, name", [("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression "
                                           "(Lossless Only)"), ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
                                          ("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian")])
def test_a_transfer_syntax_without_a_decoder_here_is_named(tmp_path, syntax, name):
    """Before: 'DICOM pixel data could not be decoded (ITK ERROR: GDCMImageIO: Failed to change to Implicit Transfer
    Syntax)', which names neither the syntax nor the fix; Encapsulated Uncompressed (session 25) was `its compressed
    pixel data ... could not be decoded: damaged, or not what its transfer syntax says`, blaming a valid file."""
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(tmp_path / "new.dcm")
    refused(tmp_path / "new.dcm", f"{tmp_path / 'new.dcm'}: transfer syntax {syntax} ({name}) has no decoder here; "
                                  "save it uncompressed (e.g. gdcmconv --raw IN OUT, or dcmdjpeg) and open that")


@pytest.mark.parametrize("encapsulated", [False, True])
def test_a_private_transfer_syntax_is_named_as_one_not_called_raw_or_damaged(tmp_path, encapsulated):
    """GE's private 1.2.840.113619.5.2 (or a vendor's own compression): `transfer syntax ... needs compressed
    (encapsulated) pixel data; the file holds raw bytes`, or, encapsulated, `its compressed pixel data could not be
    decoded: damaged, ...`: neither true; the syntax is one medseg does not know (session 25)."""
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    if encapsulated:
        ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.113619.5.2"
    ds.save_as(tmp_path / "ge.dcm")
    refused(tmp_path / "ge.dcm", f"{tmp_path / 'ge.dcm'}: transfer syntax 1.2.840.113619.5.2, a private one (not "
                                 "defined by the DICOM standard): how its data and pixels are encoded is not known "
                                 "here; export it with a standard transfer syntax (e.g. Explicit VR Little Endian) and "
                                 "open that")


def _with_localizer(folder: Path) -> str:
    """The bundled CT series plus a one-image scout of another series (ImageType ORIGINAL\\PRIMARY\\LOCALIZER), as a
    CT study export holds them. Returns the scout's SeriesInstanceUID."""
    shutil.copytree(DATA / "dicom" / "ct_head_0051_series_k050-061", folder)
    scout = pydicom.dcmread(sorted(folder.iterdir())[0])
    scout.SeriesInstanceUID = scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = \
        "1.2.826.0.1.3680043.8.498.4001"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesDescription = "Topogram"
    scout.save_as(folder / "scout.dcm")
    return str(scout.SeriesInstanceUID)


def test_a_study_export_with_a_scout_opens_its_volume_and_says_what_it_left_out(tmp_path):
    """A CT study exported from a PACS holds the scout beside the axial series. Before, the folder was refused
    ("holds 2 series, pick one with --series UID"), which the web UI cannot pass: a clinician could not open it."""
    folder = tmp_path / "study"
    scout_uid = _with_localizer(folder)
    with pytest.warns(StudyWarning, match=f"left out 1 localizer series \\({re.escape(scout_uid)};"):
        vol = read_study(folder)
    plain = read_study(DATA / "dicom" / "ct_head_0051_series_k050-061")
    assert vol.source.series_instance_uid == plain.source.series_instance_uid
    assert vol.array.shape == plain.array.shape == (12, 256, 256)
    np.testing.assert_array_equal(vol.array, plain.array)
    assert vol.spacing == pytest.approx(plain.spacing) and vol.origin == pytest.approx(plain.origin)
    assert read_study(folder, series_uid=scout_uid).array.shape[0] == 1  # the scout still opens when asked for


def test_two_volumes_beside_a_scout_are_still_the_users_choice(tmp_path):
    folder = tmp_path / "study"
    _with_localizer(folder)
    series(folder, [0.0, 2.0, 4.0])
    with pytest.raises(StudyError, match="holds 3 series, pick one"):
        read_study(folder)


def _us_with_regions(tmp_path: Path, *deltas_cm: tuple[float, float], units: int = 3) -> Path:
    """The shared colour ultrasound frame with calibrated 2D regions of the given PhysicalDeltaX/Y (cm)."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm")
    regions = []
    for dx, dy in deltas_cm:
        r = pydicom.Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = 10, 10, 300, 230
        r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
        r.PhysicalDeltaX, r.PhysicalDeltaY = dx, dy
        regions.append(r)
    ds.SequenceOfUltrasoundRegions = regions
    ds.save_as(tmp_path / "us.dcm")
    return tmp_path / "us.dcm"


def test_an_ultrasound_frame_takes_its_pixel_size_from_its_calibrated_region(tmp_path):
    """GDCM reads no size from SequenceOfUltrasoundRegions: a calibrated frame opened at 1 x 1 mm, geometry 'none'
    (found in session 14's hostile-file hunt), and its areas were of no physical size."""
    vol = read_study(_us_with_regions(tmp_path, (0.02, 0.025)))
    assert vol.spacing[:2] == pytest.approx((0.2, 0.25))
    assert vol.source.geometry.startswith("SequenceOfUltrasoundRegions") and vol.size_is_physical
    plain = read_study(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm")
    np.testing.assert_array_equal(vol.array, plain.array)
    assert not plain.size_is_physical


@pytest.mark.parametrize("deltas", [[(0.0, 0.0)], [(0.0, 0.025)], [(float("nan"), 0.02), (0.0, 0.0)]])
def test_an_ultrasound_region_whose_calibration_is_void_says_so_in_the_opens_note(tmp_path, deltas):
    """pydicom's US frame with its 2D region's PhysicalDeltaX/Y 0 opened unmeasured, as one without regions does,
    without a word that the calibration was there and void (session 26's leftover). Now one line says so."""
    path = _us_with_regions(tmp_path, *deltas)
    with pytest.warns(StudyWarning) as record:
        vol = read_study(path)
    assert not vol.size_is_physical and vol.source.geometry == "none (identity)"
    shown = ", ".join(f"{cx:g} x {cy:g}" for cx, cy in deltas)
    note = (f"SequenceOfUltrasoundRegions: the region's calibration (PhysicalDeltaX/Y {shown} cm) is there but void "
            "(expected a size > 0 cm a pixel); sizes are unknown: the image is shown in pixels, nothing measured")
    assert [str(w.message) for w in record if "Ultrasound" in str(w.message)] == [f"{path}: {note}"]
    assert vol.source.notes == (note,) and "\n" not in note


def test_an_ultrasound_region_in_other_units_or_calibrated_says_nothing(tmp_path):
    """A Doppler strip (seconds, cm/s) rightly opens unmeasured, and a calibrated region measured: no note."""
    for path in (_us_with_regions(tmp_path, (0.0, 0.0), units=4), _us_with_regions(tmp_path, (0.02, 0.02))):
        with warnings.catch_warnings():
            warnings.simplefilter("error", StudyWarning)
            assert read_study(path).source.notes == ()


def _aspect_image(tmp_path: Path, ratio) -> Path:
    """An ultrasound frame (8 rows x 16 columns) without geometry or PixelSpacing, with PixelAspectRatio ``ratio``."""
    ds = db.image_dataset(db.pixels(8, 16)[0], ipp=None, iop=None, spacing=None)
    ds.Modality = "US"
    if ratio is not None:
        ds.add_new(0x00280034, "IS", None)
        ds[0x00280034]._value = ratio
    return db.write(ds, tmp_path / "us.dcm")


@pytest.mark.parametrize("ratio, spacing", [("2\\1", (1.0, 2.0)), ("3\\4", (4 / 3, 1.0)), ("5\\5", (1.0, 1.0))])
def test_pixel_aspect_ratio_without_pixel_spacing_shapes_the_image_in_relative_units(tmp_path, ratio, spacing):
    """An ultrasound or secondary capture with PixelAspectRatio 2\\1 and no PixelSpacing opened with square pixels,
    squashed to half its height (session 22). Its pixels are now 1 wide and 2 high, in relative units: the shape as
    every viewer shows it, no mm claimed (a clinician measures it in pixels, as before)."""
    vol = read_study(_aspect_image(tmp_path, ratio))
    assert vol.spacing[:2] == pytest.approx(spacing) and not vol.size_is_physical
    assert vol.source.geometry == ("none (identity)" if spacing == (1.0, 1.0) else
                                   f"none (pixels, PixelAspectRatio {ratio.replace(chr(92), ':')}: relative pixel "
                                   "sizes, not mm)")
    assert vol.array.shape == (1, 8, 16)


@pytest.mark.parametrize("one_file", [True, False])
def test_a_pixel_aspect_ratio_that_contradicts_pixel_spacing_is_named_and_pixel_spacing_kept(tmp_path, one_file):
    """PixelAspectRatio 2\\1 beside PixelSpacing 0.5\\0.5 (session 22): before, PixelSpacing was used without a word.
    PixelSpacing stays (the calibrated size; the standard uses the ratio only where it is absent), with a note."""
    if one_file:
        ds = db.image_dataset(db.pixels(8, 16)[0])
        ds.PixelAspectRatio = [2, 1]
        path = db.write(ds, tmp_path / "ct.dcm")
    else:
        path = series(tmp_path / "s", [0.0, 1.0, 2.0])
        for f in sorted(path.iterdir()):
            ds = pydicom.dcmread(f)
            ds.PixelAspectRatio = [2, 1]
            ds.save_as(f)
    with pytest.warns(StudyWarning) as record:
        vol = read_study(path)
    assert vol.spacing[:2] == pytest.approx((0.5, 0.5)) and vol.size_is_physical
    note = ("PixelAspectRatio 2\\1 contradicts PixelSpacing 0.5\\0.5 mm (pixels 1 times as high as wide); "
            "PixelSpacing, the calibrated size, is used: another viewer may show the image with another shape")
    assert [str(w.message) for w in record if "PixelAspectRatio" in str(w.message)] == [f"{path}: {note}"]
    assert note in vol.source.notes


def test_a_pixel_aspect_ratio_that_agrees_with_pixel_spacing_says_nothing(tmp_path):
    ds = db.image_dataset(db.pixels(8, 16)[0], spacing=(0.6, 0.3))
    ds.PixelAspectRatio = [2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StudyWarning)
        vol = read_study(db.write(ds, tmp_path / "ct.dcm"))
    assert vol.spacing[:2] == pytest.approx((0.3, 0.6)) and vol.source.notes == ()


@pytest.mark.parametrize("ratio", ["0\\1", "2", "-1\\1", "1\\1000", "a\\b"])
def test_a_pixel_aspect_ratio_that_is_no_shape_is_refused_in_one_line(tmp_path, ratio):
    path = _aspect_image(tmp_path, ratio)
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value).startswith(f"{path}: PixelAspectRatio ") and "expected two numbers > 0" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("deltas, units", [(((0.02, 0.02), (0.04, 0.04)), 3), (((0.02, 0.02),), 4)])
def test_ultrasound_regions_that_disagree_or_are_not_in_cm_give_no_size(tmp_path, deltas, units):
    """Two zooms side by side (a duplex screen) have no one pixel size; a region in seconds or Hz is no length."""
    vol = read_study(_us_with_regions(tmp_path, *deltas, units=units))
    assert vol.spacing[:2] == pytest.approx((1.0, 1.0)) and not vol.size_is_physical


def test_a_series_asked_of_a_single_file_of_another_series_is_refused_not_ignored(tmp_path):
    """Session 23: ``--series UID`` (or a series picked) with a single file was ignored without a word, and the file's
    own study opened: a NIfTI, a picture, a DICOM file of another series. A file of that very series opens."""
    ct_file = DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm"
    own = str(pydicom.dcmread(ct_file, stop_before_pixels=True).SeriesInstanceUID)
    assert read_study(ct_file, series_uid=own).source.series_instance_uid == own
    nifti = DATA / "ct_head_0051_slabA_image.nii.gz"
    for path, what in ((ct_file, f"of series {own}"), (nifti, "no part of a DICOM series")):
        with pytest.raises(StudyError) as e:
            read_study(path, series_uid="1.2.3")
        assert str(e.value) == (f"{path}: series 1.2.3 was asked for, but this file is {what}; a series is picked "
                                "among those of a folder: give the folder, or leave the series out")


def test_one_placed_slice_is_as_thick_as_its_slice_thickness(tmp_path):
    """One slice of the real head CT (SliceThickness 1.5, no SpacingBetweenSlices), alone or as a folder of one file,
    opened 0.957 x 0.957 x 1 mm: GDCM's default, which the facts panel showed as measured and from which the labels
    table's mL were computed (2/3 of area x thickness) (session 24). It opens 1.5 mm thick, as dcm2niix reads it; a
    SpacingBetweenSlices is still GDCM's third spacing (pydicom's CT_small: 5), and without a thickness 1 mm stays."""
    src = DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm"
    (tmp_path / "one").mkdir()
    shutil.copy(src, tmp_path / "one" / "IM0001.dcm")
    for path in (src, tmp_path / "one"):
        volume = read_study(path)
        assert volume.array.shape == (1, 256, 256)
        np.testing.assert_allclose(volume.spacing, (0.9570312, 0.9570312, 1.5), rtol=1e-6)
    ds = pydicom.dcmread(src)
    ds.SpacingBetweenSlices = 2.0
    ds.save_as(tmp_path / "spaced.dcm")
    assert read_study(tmp_path / "spaced.dcm").spacing[2] == pytest.approx(2.0)
    del ds.SpacingBetweenSlices, ds.SliceThickness
    ds.save_as(tmp_path / "thin.dcm")
    assert read_study(tmp_path / "thin.dcm").spacing[2] == pytest.approx(1.0)


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def test_an_rt_dose_opens_in_its_dose_units_and_a_scaling_that_is_no_factor_is_refused(tmp_path):
    """pydicom's rtdose.dcm (DoseGridScaling 1e-06, DoseUnits RELATIVE) opened at its stored integers, 1254000 where
    the file says 1.254, as if valid: GDCM does not apply the scaling (session 25)."""
    path = PYDICOM_FILES / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    volume = read_study(path)
    assert volume.modality == "RTDOSE" and volume.array.shape == (15, 10, 10)
    np.testing.assert_array_equal(volume.array, ds.pixel_array.astype(np.float64) * 1e-6)
    assert volume.spacing == (10.0, 10.0, 5.0)
    for value in ("0", "-1e-6", "nan"):
        ds.DoseGridScaling = value
        ds.save_as(tmp_path / "dose.dcm")
        refused(tmp_path / "dose.dcm", f"{tmp_path / 'dose.dcm'}: DoseGridScaling {ds.DoseGridScaling!r}; expected a "
                                       "finite number > 0 (the factor from the stored values to the dose in DoseUnits)")


def test_an_rt_dose_whose_frame_offsets_do_not_match_its_frames_is_refused_naming_them():
    """pydicom's rtdose_1frame.dcm: one frame, 15 GridFrameOffsetVector values. Before: `DICOM pixel data could not
    be decoded (An invalid logic behavior occurredTag(Group,Element) ...)`, GDCM's words blaming the pixels."""
    path = PYDICOM_FILES / "rtdose_1frame.dcm"
    refused(path, f"{path}: GridFrameOffsetVector holds 15 frame offsets, but the image has 1 frame(s) "
                  "(NumberOfFrames); expected one offset per frame: which frame lies where is not known")


def test_32_bit_big_endian_pixels_the_decoder_garbles_are_refused():
    """pydicom's rtdose_expb.dcm, the big endian twin of rtdose.dcm: GDCM swapped its 32-bit values 16 bits at a
    time, 250085395 where pydicom and the little endian file hold 1249000: every voxel wrong, opened as if valid
    (session 25). 16-bit big endian (MR_small_bigendian) opens as pydicom decodes it."""
    path = PYDICOM_FILES / "rtdose_expb.dcm"
    refused(path, f"{path}: 32-bit pixels in Explicit VR Big Endian, which the decoder here reads with their bytes "
                  "mixed up (every value would open wrong); save it as little endian (e.g. dcmconv +te IN OUT) and "
                  "open that")
    small = PYDICOM_FILES / "MR_small_bigendian.dcm"
    np.testing.assert_array_equal(read_study(small).array[0], pydicom.dcmread(small).pixel_array)


def test_an_rt_dose_whose_frame_offsets_descend_opens_where_each_frame_lies(tmp_path):
    """rtdose.dcm with its frames stored the other way: the last frame first, ImagePositionPatient at it, and
    GridFrameOffsetVector 0, -5, ..., -70 mm. Refused before as `not one increasing, even step per frame`, though each
    frame's place is in the file (Orthanc Stone learnt to read such doses in 2023). Now its k axis runs against the
    normal: every voxel lies where the original's does, and a label map written of it lies there too (session 25)."""
    from data.writers import write_label_nifti

    original = read_study(PYDICOM_FILES / "rtdose.dcm")
    ds = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm")
    ds.PixelData = ds.pixel_array[::-1].copy().tobytes()
    ds.ImagePositionPatient = [*[float(v) for v in ds.ImagePositionPatient[:2]], float(ds.ImagePositionPatient[2]) + 70]
    ds.GridFrameOffsetVector = [-5.0 * n for n in range(15)]
    ds.save_as(tmp_path / "reversed.dcm")
    volume = read_study(tmp_path / "reversed.dcm")
    np.testing.assert_array_equal(volume.array[::-1], original.array)
    assert volume.spacing == original.spacing and volume.direction[8] == -1.0
    assert volume.source.geometry.startswith("ImagePositionPatient/ImageOrientationPatient, GridFrameOffsetVector "
                                             "descending (5 mm a frame against the normal)")
    labels = (volume.array > 1.0).astype(np.uint8)
    written = sitk.ReadImage(str(write_label_nifti(labels, volume, tmp_path / "l.nii.gz")))
    for k in (0, 14):  # the first and last frames' corners lie where the original's frames 14 and 0 do
        np.testing.assert_allclose(written.TransformIndexToPhysicalPoint((0, 0, k)),
                                   np.array(original.origin) + [0, 0, 5.0 * (14 - k)], atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[::-1], (original.array > 1.0).astype(np.uint8))


def _one_frame_doses(folder: Path, *, offsets: bool) -> np.ndarray:
    """pydicom's rtdose.dcm cut into 15 one-frame files, as a planning system exports dose planes: each at its own
    ImagePositionPatient, the odd frames with DoseGridScaling 2e-06; the doses they hold, frame by frame."""
    ds = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm")
    stored, ipp = ds.pixel_array, [float(v) for v in ds.ImagePositionPatient]
    folder.mkdir()
    for k in range(stored.shape[0]):
        one = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm")
        one.NumberOfFrames, one.PixelData, one.InstanceNumber = 1, stored[k].tobytes(), k + 1
        one.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + float(ds.GridFrameOffsetVector[k])]
        one.SOPInstanceUID = pydicom.uid.generate_uid()
        one.DoseGridScaling = 2e-6 if k % 2 else 1e-6
        if offsets:
            one.GridFrameOffsetVector = [0.0]
        else:
            del one.GridFrameOffsetVector, one.FrameIncrementPointer
        one.save_as(folder / f"d{k:02d}.dcm")
    return stored * np.where(np.arange(stored.shape[0]) % 2, 2e-6, 1e-6)[:, None, None]


def test_a_series_of_one_frame_rt_doses_opens_in_its_dose_units_slice_by_slice(tmp_path):
    """A series of one-frame RT Dose files went through the series reader, which did not apply DoseGridScaling: it
    opened at its stored integers (1254000 where the file says 1.254), as if valid (session 25's leftover; hostile25b).
    Each slice now gets its own file's scaling."""
    doses = _one_frame_doses(tmp_path / "doses", offsets=False)
    volume = read_study(tmp_path / "doses")
    assert volume.array.shape == (15, 10, 10) and volume.spacing == (10.0, 10.0, 5.0)
    np.testing.assert_allclose(volume.array, doses, rtol=1e-12)
    np.testing.assert_allclose(volume.array[::2], read_study(PYDICOM_FILES / "rtdose.dcm").array[::2], rtol=1e-12)
    without = pydicom.dcmread(tmp_path / "doses" / "d04.dcm")
    del without.DoseGridScaling  # its stored integers would open 1e6 times the doses beside it
    without.save_as(tmp_path / "doses" / "d04.dcm")
    refused(tmp_path / "doses", f"{tmp_path / 'doses' / 'd04.dcm'}: no DoseGridScaling, where d00.dcm of the same "
                                "series has 1e-06; expected one in every file of a dose (its slices would not be in "
                                "one unit)")


def test_a_one_frame_rt_dose_with_one_frame_offset_opens_as_pydicom_reads_it(tmp_path, monkeypatch):
    """One-frame RT Doses carrying GridFrameOffsetVector [0] (its Frame Increment Pointer's field), valid: read alone it
    was `could not be read (TypeError: 'DSfloat' object is not iterable)`; as a series GDCM failed in its own words
    (hostile25b), then both were refused naming the field (session 25). GDCM now reads a copy without the field: each
    opens in its dose units, voxels and grid as pydicom reads the file (session 26). An offset that is no number, or an
    absolute one that disagrees with ImagePositionPatient, is refused."""
    doses = _one_frame_doses(tmp_path / "doses", offsets=True)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the copies go, to see them gone
    ds = pydicom.dcmread(tmp_path / "doses" / "d03.dcm")
    one = read_study(tmp_path / "doses" / "d03.dcm")
    np.testing.assert_array_equal(one.array, ds.pixel_array[None] * float(ds.DoseGridScaling))
    assert one.origin == tuple(float(v) for v in ds.ImagePositionPatient)
    assert one.spacing[:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    np.testing.assert_array_equal(np.asarray(one.direction).reshape(3, 3)[:, :2].T.ravel(),
                                  [float(v) for v in ds.ImageOrientationPatient])
    series = read_study(tmp_path / "doses")
    assert series.array.shape == (15, 10, 10) and series.spacing == (10.0, 10.0, 5.0)
    np.testing.assert_allclose(series.array, doses, rtol=1e-12)
    assert series.origin == tuple(float(v) for v in pydicom.dcmread(tmp_path / "doses" / "d00.dcm").ImagePositionPatient)
    assert not list((tmp_path / "tmp").iterdir())
    z = float(ds.ImagePositionPatient[2])
    ds.GridFrameOffsetVector = [z]  # absolute, agreeing: opens
    ds.save_as(tmp_path / "abs.dcm")
    np.testing.assert_array_equal(read_study(tmp_path / "abs.dcm").array, one.array)
    ds.GridFrameOffsetVector = [z + 10]
    ds.save_as(tmp_path / "doses" / "d03.dcm")
    refused(tmp_path / "doses", f"{tmp_path / 'doses'}: d03.dcm: GridFrameOffsetVector begins at {z + 10:g}, so its "
                                f"offsets are the frames' z coordinates (absolute), but ImagePositionPatient's z is "
                                f"{z:g}; expected the first offset to be 0 (relative) or the first frame's z: where the "
                                "grid lies is in doubt")
    ds.GridFrameOffsetVector = ["nan"]
    ds.save_as(tmp_path / "nan.dcm")
    refused(tmp_path / "nan.dcm", f"{tmp_path / 'nan.dcm'}: GridFrameOffsetVector [nan] holds a value that is not a "
                                  "number; expected one offset in mm per frame")


def test_an_rt_dose_whose_absolute_frame_offsets_disagree_with_its_position_is_refused(tmp_path):
    """rtdose.dcm with an absolute GridFrameOffsetVector (the frames' z, PS3.3 C.8.8.3.2): where the first z is
    ImagePositionPatient's it opens as the relative one does; 10 mm off, it opened at ImagePositionPatient without a
    word (GDCM's choice), where the file is in doubt (session 25's leftover; hostile25b)."""
    ds = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm")
    z = float(ds.ImagePositionPatient[2])
    ds.GridFrameOffsetVector = [z + 5.0 * n for n in range(15)]
    ds.save_as(tmp_path / "absolute.dcm")
    assert read_study(tmp_path / "absolute.dcm").spacing == (10.0, 10.0, 5.0)
    ds.GridFrameOffsetVector = [z + 10 + 5.0 * n for n in range(15)]
    ds.save_as(tmp_path / "off.dcm")
    refused(tmp_path / "off.dcm", f"{tmp_path / 'off.dcm'}: GridFrameOffsetVector begins at {z + 10:g}, so its "
                                  f"offsets are the frames' z coordinates (absolute), but ImagePositionPatient's z is "
                                  f"{z:g}; expected the first offset to be 0 (relative) or the first frame's z: where "
                                  "the grid lies is in doubt")


@pytest.mark.parametrize("per_frame", [False, True])
def test_enhanced_frames_oriented_in_their_functional_groups_but_placed_nowhere_are_refused(tmp_path, per_frame):
    """An Enhanced CT whose shared functional groups give an orientation and 0.5 mm pixels, without the
    PerFrameFunctionalGroupsSequence its IOD requires (or with per-frame groups that place no frame): opened as 4
    unplaced frames of 1 x 1 mm, identity, the orientation and pixel size dropped without a word, where the same frames
    with a top-level ImageOrientationPatient are refused (session 25)."""
    ds = db.enhanced_multiframe(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8), [0, 1.5, 3, 4.5])
    if per_frame:
        for group in ds.PerFrameFunctionalGroupsSequence:
            del group.PlanePositionSequence
    else:
        del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    nor = "" if per_frame else ", nor the PerFrameFunctionalGroupsSequence an enhanced image requires"
    refused(tmp_path / "enh.dcm", f"{tmp_path / 'enh.dcm'}: 4 frames with an ImageOrientationPatient in their "
                                  f"functional groups but no PlanePositionSequence (ImagePositionPatient) for any "
                                  f"frame{nor}: where the frames lie is not in the file")


def test_a_nifti_of_doubles_past_float32s_range_is_refused_not_shown_infinite(tmp_path):
    """A float64 NIfTI holding -1e300 opened as stored; the viewer's float32 copy of it was infinite there (session 25's
    leftover, the NRRD's twin; hostile25b). A float64 NIfTI within float32's range opens as before."""
    values = np.zeros((5, 4, 3))
    values[1, 1, 1], values[2, 2, 2] = -1e300, 3.0
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "huge.nii.gz")
    refused(tmp_path / "huge.nii.gz", f"{tmp_path / 'huge.nii.gz'}: values -1e+300 to 3, past float32's range "
                                      "(+-3.4e+38), in which the viewer is sent the image (they would show as "
                                      "infinite); expected values a 32-bit float holds: rescale the image")
    values[1, 1, 1] = -3e38
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "large.nii.gz")
    assert read_study(tmp_path / "large.nii.gz").array.min() == -3e38


@pytest.mark.parametrize("thickness", ["-1.5", "nan", "1e10"])
def test_one_slice_whose_slice_thickness_is_no_thickness_says_so_not_that_it_is_absent(tmp_path, thickness):
    """Session 30: one CT slice with SliceThickness -1.5 (or NaN, 1e10) opened with the 1 mm placeholder, as it should,
    but its geometry said `neither SliceThickness nor SpacingBetweenSlices in the file`: the user looking for the field
    found it there. Now the line names the value that was not used."""
    ds = pydicom.dcmread(DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm")
    ds.SliceThickness = thickness
    ds.save_as(tmp_path / "thick.dcm")
    volume = read_study(tmp_path / "thick.dcm")
    assert not volume.slice_spacing_is_physical
    assert volume.source.geometry.endswith(
        f"; slice thickness unknown: SliceThickness {thickness} is not a thickness (expected 1e-06 to 1e+05 mm) and "
        "there is no SpacingBetweenSlices (the 1 mm is a placeholder; no volume is measured)")
