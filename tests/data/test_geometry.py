"""Geometry survives read and write: spacing, origin, direction, voxels, physical positions."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data.readers import read_study
from data.writers import write_label_nifti
from tests.conftest import DATA, SAMPLES

CT_NIFTI = DATA / "ct_head_0051_slabA_image.nii.gz"
CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"
STUDIES = [
    CT_NIFTI,
    DATA / "mr_t1_colin27_slabA_image.nii.gz",
    DATA / "synthetic_shepp_logan_image.nii.gz",
    CT_SERIES,
    DATA / "dicom" / "pydicom_CT5N_series",
]


def slices_in_position_order(folder: Path) -> list[tuple[float, Path, pydicom.Dataset]]:
    """(position along the slice normal, file, dataset) sorted by position, computed here with pydicom
    alone: the reference the reader's order is checked against."""
    out = []
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        iop = np.array(ds.ImageOrientationPatient, float)
        out.append((float(np.dot(np.cross(iop[:3], iop[3:]), np.array(ds.ImagePositionPatient, float))), f, ds))
    return sorted(out, key=lambda t: t[0])


def instance_numbers_against_position(src: Path, dest: Path) -> Path:
    """A copy of the series whose InstanceNumber runs against position, under names in neither order."""
    files = sorted(src.glob("*.dcm"))
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = len(files) - n
        ds.save_as(dest / f"s{(5 * n) % len(files):02d}.dcm")
    return dest


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_read_matches_simpleitk_geometry(path):
    """What we read equals what SimpleITK reads (the reference for ITK/Slicer/DICOM LPS geometry)."""
    vol = read_study(path)
    if path.is_dir():  # SimpleITK gets the files in position order found by pydicom, not our reader's order
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for _, f, _ in slices_in_position_order(path)])
        ref = reader.Execute()
    else:
        ref = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-9)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_label_nifti_keeps_source_geometry(path, tmp_path):
    """A label map written for a study opens in SimpleITK and nibabel on the source grid."""
    vol = read_study(path)
    labels = np.zeros(vol.array.shape[:3], dtype=np.uint8)
    labels[vol.num_slices // 2, 2:5, 3:7] = 3
    out = write_label_nifti(labels, vol, tmp_path / "labels.nii.gz")
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    np.testing.assert_allclose(back.GetSpacing(), vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), vol.direction, atol=1e-6)
    # nibabel sees RAS: its affine maps voxel (i, j, k) to the same point as ours, with x, y negated.
    img = nib.load(str(out))
    ijk = np.array([[0, 0, 0], [3, 2, vol.num_slices // 2], [7, 4, vol.num_slices - 1]], dtype=float)
    ras = nib.affines.apply_affine(img.affine, ijk)
    lps = vol.index_to_physical(ijk)
    np.testing.assert_allclose(ras * [-1, -1, 1], lps, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), labels)


def test_label_nifti_matches_source_nifti_affine(tmp_path):
    vol = read_study(CT_NIFTI)
    out = write_label_nifti(np.zeros(vol.array.shape, np.uint8), vol, tmp_path / "l.nii.gz")
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(CT_NIFTI)).affine, atol=1e-4)


def test_dicom_series_equals_nifti_slab_slices_12_to_23():
    """The DICOM series is k 12..23 of the NIfTI slab, voxel for voxel and in physical position."""
    series, slab = read_study(CT_SERIES), read_study(CT_NIFTI)
    np.testing.assert_array_equal(series.array, slab.array[12:24])
    np.testing.assert_allclose(series.spacing, slab.spacing, atol=1e-5)
    np.testing.assert_allclose(series.direction, slab.direction, atol=1e-6)
    i, j = np.meshgrid([0, 100, 255], [0, 37, 255])
    for k in range(12):
        ijk = np.stack([i.ravel(), j.ravel(), np.full(i.size, k)], axis=1)
        slab_ijk = ijk + [0, 0, 12]
        np.testing.assert_allclose(series.index_to_physical(ijk), slab.index_to_physical(slab_ijk), atol=1e-3)


def test_dicom_series_is_ordered_by_position_not_file_name(tmp_path):
    """Files renamed in reverse order still read in position order, with their UIDs kept per slice."""
    import shutil

    files = sorted(CT_SERIES.glob("*.dcm"))
    for n, f in enumerate(reversed(files)):
        shutil.copy(f, tmp_path / f"z{n:02d}.dcm")
    vol, ref = read_study(tmp_path), read_study(CT_SERIES)
    np.testing.assert_array_equal(vol.array, ref.array)
    assert vol.source.sop_instance_uids == ref.source.sop_instance_uids
    assert len(set(vol.source.sop_instance_uids)) == 12


def test_series_order_is_position_even_when_instance_numbers_run_against_it(tmp_path):
    """Slice k of the volume is the k-th image in position order (pydicom's positions, pixels and UIDs)."""
    folder = instance_numbers_against_position(CT_SERIES, tmp_path)
    vol = read_study(folder)
    ordered = slices_in_position_order(folder)
    assert [int(ds.InstanceNumber) for _, _, ds in ordered] == list(range(12, 0, -1))  # the trap is set
    assert [Path(f) for f in vol.source.files] == [f for _, f, _ in ordered]
    assert vol.source.sop_instance_uids == tuple(str(ds.SOPInstanceUID) for _, _, ds in ordered)
    for k, (_, _, ds) in enumerate(ordered):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[k], hu)
        np.testing.assert_allclose(vol.index_to_physical(np.array([[0, 0, k]]))[0], ds.ImagePositionPatient, atol=1e-3)


def test_bundled_series_keeps_dicom_identity():
    vol = read_study(SAMPLES / "ct_head_0051_series")
    assert vol.modality == "CT"
    assert vol.source.series_instance_uid and vol.source.study_instance_uid and vol.source.frame_of_reference_uid
    assert vol.orientation_code() == "LIP"


@pytest.mark.parametrize(
    "name, shape, modality",
    [
        ("pydicom_CT_small.dcm", (1, 128, 128), "CT"),
        ("pydicom_MR_small.dcm", (1, 64, 64), "MR"),
        ("pydicom_US_rgb_lymph_node.dcm", (1, 240, 320, 3), "US"),
    ],
)
def test_single_dicom_files(name, shape, modality):
    """Shape, modality, pixel values (rescaled) and geometry equal what pydicom reads from the file."""
    path = DATA / "dicom" / name
    vol = read_study(path)
    ds = pydicom.dcmread(path)
    assert vol.array.shape == shape and vol.modality == modality
    pixels = ds.pixel_array
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        pixels = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(vol.array[0], pixels)
    if "PixelSpacing" in ds:  # DICOM: row spacing first; ours: x (columns) first
        np.testing.assert_allclose(vol.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], atol=1e-6)
    if "ImagePositionPatient" in ds:
        np.testing.assert_allclose(vol.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
        iop = np.array(ds.ImageOrientationPatient, float)
        direction = np.array(vol.direction).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-6)
        np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-6)


def test_png_round_trip_keeps_pixels(tmp_path):
    from PIL import Image

    rgb = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    vol = read_study(tmp_path / "a.png")
    assert vol.is_2d and vol.is_rgb
    np.testing.assert_array_equal(vol.array[0], rgb)
