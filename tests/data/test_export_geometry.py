"""Exports keep the geometry of studies the bundled data never exercise: oblique, flipped and sagittal DICOM series
stored in either slice order with non-isotropic spacing, and NIfTI images whose grid is left-handed, flipped or
oblique through the sform, the qform or both. A label drawn on voxel (k, j, i) must come back at the same
patient-space place from the NIfTI (as nibabel and SimpleITK read it) and from the DICOM-SEG (by UID, by
position, and on its own grid). Checked in session 12's adversarial pass: all held; kept as a guard."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data.dicom_seg import _resample_onto, read_dicom_seg
from data.export import export_labels
from data.readers import read_study
from tests.conftest import DATA, SAMPLES

TEMPLATE = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())[0]
C, S = np.cos(0.3), np.sin(0.3)
SERIES = {  # row direction, column direction (before normalising), pixel spacing (row, column), slice step
    "oblique": ((C, S, 0), (-S * 0.6, C * 0.6, 0.8), (0.7, 0.9), 2.5),
    "flipped": ((-1, 0, 0), (0, -1, 0), (0.5, 1.25), 3.0),
    "sagittal": ((0, 1, 0), (0, 0, -1), (0.8, 0.8), 1.7),
}


def write_series(folder, row, column, spacing, step, descending, n=6, rows=40, columns=30):
    row, column = np.asarray(row, float), np.asarray(column, float)
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal, origin = np.cross(row, column), np.array([12.5, -40.25, 7.0])
    base, series_uid = pydicom.dcmread(TEMPLATE), pydicom.uid.generate_uid()
    folder.mkdir()
    for k in range(n):
        ds = copy.deepcopy(base)
        place = n - 1 - k if descending else k  # files in the other order than their positions
        ds.ImagePositionPatient = [float(x) for x in origin + place * step * normal]
        ds.ImageOrientationPatient = [float(x) for x in (*row, *column)]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), step
        ds.Rows, ds.Columns = rows, columns
        ds.PixelData = ((np.arange(rows * columns).reshape(rows, columns) % 100) + k).astype(np.int16).tobytes()
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = pydicom.uid.generate_uid(), series_uid, k + 1
        if "SliceLocation" in ds:
            del ds.SliceLocation
        ds.save_as(folder / f"im{k:03d}.dcm")
    return folder


def asymmetric_labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1, 3:9, 2:5] = 1
    labels[4, 20:30, 10:25] = 2  # a flipped or swapped axis would move either
    return labels


def lps_to_ras(volume) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)
    affine[:3, 3] = volume.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("name", sorted(SERIES))
def test_dicom_series_exports_round_trip(name, descending, tmp_path):
    volume = read_study(write_series(tmp_path / "series", *SERIES[name], descending))
    labels = asymmetric_labels(volume.array.shape[:3])

    nifti = export_labels(labels, volume, tmp_path / "labels.nii.gz")
    image = sitk.ReadImage(str(nifti))
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), volume.direction, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    np.testing.assert_allclose(nib.load(str(nifti)).affine, lps_to_ras(volume), atol=1e-3)

    seg = export_labels(labels, volume, tmp_path / "labels.dcm", {1: "a", 2: "b"})
    np.testing.assert_array_equal(read_dicom_seg(seg, volume).labels.array, labels)  # by SOP Instance UID
    own = read_dicom_seg(seg).labels  # the SEG's own frames and geometry (only the frames with labels)
    np.testing.assert_allclose(own.spacing, volume.spacing, atol=1e-4)
    np.testing.assert_allclose(own.direction, volume.direction, atol=1e-5)
    np.testing.assert_array_equal(_resample_onto(own, volume, seg).array, labels)  # by position


@pytest.mark.parametrize("form", ["sform", "qform", "both"])
@pytest.mark.parametrize("name, rotation", [
    ("left-handed", np.diag([1.0, 1.0, -1.0])),
    ("x flipped", np.diag([-1.0, 1.0, 1.0])),
    ("oblique", np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4) * 0.8, np.cos(0.4) * 0.8, -0.6],
                          [np.sin(0.4) * 0.6, np.cos(0.4) * 0.6, 0.8]])),
])
def test_nifti_exports_keep_the_sources_affine(name, rotation, form, tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.6, 1.1, 3.3])
    affine[:3, 3] = [10, -20, 30]
    image = nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 7)).astype(np.float32), None)
    if form in ("sform", "both"):
        image.set_sform(affine, 1)
    if form in ("qform", "both"):
        image.set_qform(affine, 1)
    nib.save(image, tmp_path / "image.nii.gz")
    volume = read_study(tmp_path / "image.nii.gz")
    labels = asymmetric_labels(volume.array.shape[:3])
    out = nib.load(str(export_labels(labels, volume, tmp_path / "labels.nii.gz")))
    np.testing.assert_allclose(out.affine, affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(out.dataobj).transpose(2, 1, 0), labels)


COLIN = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"  # sform_code 4, qform_code 4 (MNI152)


def _coded_copy(tmp_path, sform_code: int, qform_code: int, intent: int) -> tuple:
    """Colin27 with the given codes on its own affine (nibabel writes the header as asked)."""
    source = nib.load(str(COLIN))
    if (sform_code, qform_code, intent) == (4, 4, 0):
        return COLIN, source.affine
    image = nib.Nifti1Image(np.asanyarray(source.dataobj), None, source.header.copy())
    image.set_sform(source.affine if sform_code else None, sform_code)
    image.set_qform(source.affine if qform_code else None, qform_code)
    image.header.set_intent(intent)
    path = tmp_path / f"coded_{sform_code}{qform_code}_{intent}.nii.gz"
    nib.save(image, path)
    return path, source.affine


@pytest.mark.parametrize("sform_code, qform_code, intent", [(4, 4, 0), (4, 0, 1002), (2, 0, 0), (3, 1, 0), (0, 2, 0)])
def test_a_label_map_keeps_the_sources_space_codes(sform_code, qform_code, intent, tmp_path):
    """A label map of an MNI-space image (sform_code 4, the bundled Colin27) was written with codes 1 (scanner):
    the same affine, but FSL-based tools treat the codes as different spaces. AAL-like sources (sform 4, qform 0,
    intent label) and aligned/Talairach codes too. Read back with nibabel and SimpleITK."""
    path, affine = _coded_copy(tmp_path, sform_code, qform_code, intent)
    volume = read_study(path)
    labels = asymmetric_labels(volume.array.shape[:3])
    out = export_labels(labels, volume, tmp_path / "labels.nii.gz")
    header = nib.load(str(out)).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (sform_code, qform_code)
    assert int(header["intent_code"]) == intent  # none, or the label intent: what the map is
    np.testing.assert_allclose(nib.load(str(out)).affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), labels)
    back, image = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    assert back.GetMetaData("sform_code") == str(sform_code) and back.GetMetaData("qform_code") == str(qform_code)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_a_statistic_intent_is_not_put_on_a_label_map(tmp_path):
    """A t-map (intent ttest, p1 = dof) segmented: its labels are not t values, so the map gets no intent."""
    path, _ = _coded_copy(tmp_path, 4, 4, 0)
    image = nib.load(str(path))
    image.header.set_intent("t test", (12,))
    nib.save(image, tmp_path / "tmap.nii.gz")
    volume = read_study(tmp_path / "tmap.nii.gz")
    out = nib.load(str(export_labels(asymmetric_labels(volume.array.shape[:3]), volume, tmp_path / "labels.nii.gz")))
    assert int(out.header["intent_code"]) == 0 and int(out.header["sform_code"]) == 4


def test_a_label_map_of_a_dicom_series_is_in_scanner_space(tmp_path):
    volume = read_study(DATA / "dicom" / "ct_head_0051_series_k050-061")
    out = export_labels(asymmetric_labels(volume.array.shape[:3]), volume, tmp_path / "labels.nii.gz")
    header = nib.load(str(out)).header
    assert (int(header["sform_code"]), int(header["qform_code"]), int(header["intent_code"])) == (1, 1, 0)


def test_a_label_map_of_a_nifti_without_space_codes_is_placed_as_its_source_by_every_reader(tmp_path):
    """A NIfTI with sform_code and qform_code 0 (pixdim only, NIfTI method 1) has no place in the patient, and readers
    differ on where to draw it: ITK at the origin, axes as stored; nibabel (FSLeyes, nilearn) centred and x flipped.
    Its label map was written with codes 1 and ITK's affine: nibabel-based tools then drew the labels mirrored left to
    right and shifted against the image they were drawn on. Now it keeps codes 0 and the source's pixdim, so every
    reader places the two alike."""
    source = nib.load(str(DATA / "mr_t1_colin27_slabA_image.nii.gz"))
    image = nib.Nifti1Image(np.asanyarray(source.dataobj), None, source.header.copy())
    image.set_sform(None, 0)
    image.set_qform(None, 0)
    path = tmp_path / "uncoded.nii.gz"
    nib.save(image, path)
    volume = read_study(path)
    labels = asymmetric_labels(volume.array.shape[:3])
    out = export_labels(labels, volume, tmp_path / "labels.nii.gz")
    written, read = nib.load(str(out)), nib.load(str(path))
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (0, 0)
    np.testing.assert_allclose(written.affine, read.affine, atol=1e-4)  # nibabel: where it draws each
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), labels)
    back, itk_source = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.GetOrigin(), itk_source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), itk_source.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), itk_source.GetSpacing(), atol=1e-6)
