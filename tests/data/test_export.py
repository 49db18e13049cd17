"""export_labels: the output name picks NIfTI or DICOM-SEG; NIfTI keeps the source geometry for
SimpleITK and nibabel alike (nibabel reads the RAS affine, SimpleITK the LPS geometry)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data.dicom_seg import read_dicom_seg
from data.export import ExportError, export_format, export_labels
from data.readers import read_study
from tests.conftest import DATA

STUDIES = {
    "ct_dicom_series_LIP": DATA / "dicom" / "ct_head_0051_series_k050-061",
    "colin27_nifti": DATA / "mr_t1_colin27_slabA_image.nii.gz",
    "ct5n_dicom_series": DATA / "dicom" / "pydicom_CT5N_series",
}


def ras_affine(volume) -> np.ndarray:
    """The NIfTI (RAS) affine a correct writer must store: LPS index->mm, then flip x and y."""
    lps = np.eye(4)
    lps[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)
    lps[:3, 3] = volume.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def some_labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    k, h, w = shape
    labels[k // 2, h // 4 : h // 2, w // 4 : w // 2] = 1
    labels[-1, h // 2 :, w // 2 :] = 3  # asymmetric: a flipped axis would move it
    return labels


@pytest.mark.parametrize("name", sorted(STUDIES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_export_matches_source_geometry(name, suffix, tmp_path):
    volume = read_study(STUDIES[name])
    labels = some_labels(volume.array.shape[:3])
    out = export_labels(labels, volume, tmp_path / f"labels{suffix}", {1: "a", 3: "b"})
    image = sitk.ReadImage(str(out))
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), volume.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    nii = nib.load(str(out))
    np.testing.assert_allclose(nii.affine, ras_affine(volume), atol=1e-4)
    # nibabel's array is [i, j, k]: the same voxels, transposed
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), labels)


def test_dcm_export_writes_a_seg_for_a_dicom_series(tmp_path):
    volume = read_study(STUDIES["ct_dicom_series_LIP"])
    labels = some_labels(volume.array.shape[:3])
    out = export_labels(labels, volume, tmp_path / "labels.dcm", {1: "a", 3: "b"}, model_name="litemedsam")
    back = read_dicom_seg(out, volume)
    np.testing.assert_array_equal(back.labels.array, np.where(labels == 3, 2, labels))  # values -> segments 1..N
    assert back.names == {1: "a", 2: "b"}


@pytest.mark.parametrize(
    "name, study, message",
    [
        ("x.dcm", "colin27_nifti", r"DICOM-SEG needs a DICOM study.*\.nii\.gz"),
        ("x.png", "colin27_nifti", r"unknown output format.*\.nii\.gz.*\.dcm"),
        ("x.nrrd", "ct_dicom_series_LIP", "unknown output format"),
    ],
)
def test_unsuitable_output_names_are_refused(name, study, message, tmp_path):
    volume = read_study(STUDIES[study])
    with pytest.raises(ExportError, match=message):
        export_labels(some_labels(volume.array.shape[:3]), volume, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_wrong_grid_is_refused(tmp_path):
    volume = read_study(STUDIES["colin27_nifti"])
    with pytest.raises(ExportError, match="does not match the study grid"):
        export_labels(np.zeros((2, 3, 4), np.uint8), volume, tmp_path / "x.nii.gz")


@pytest.mark.parametrize("name, fmt", [("a.nii", "nifti"), ("A.NII.GZ", "nifti"), ("seg.dcm", "dicom-seg")])
def test_export_format_from_name(name, fmt):
    assert export_format(name) == fmt
