"""A 2D NIfTI (dim[0] 2, as nibabel writes a 2D array) keeps its whole affine: the slice's place along the third
axis and an orientation out of the axial plane, on reading and in the label map written of it (session 15's
adversarial pass: ITK keeps only the affine's 2 x 2 corner, and the labels came back at z 0, axial)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from data.export import export_labels
from data.readers import read_study

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine(kind: str) -> np.ndarray:
    if kind == "axial":  # i -> x, j -> y, a slice 30 mm up
        columns = [(0.8, 0, 0), (0, 0.9, 0), (0, 0, 2.5)]
    else:  # coronal: i -> x, j -> z (head up), the slice 40 mm anterior
        columns = [(0.8, 0, 0), (0, 0, 0.9), (0, -2.5, 0)]
    affine = np.eye(4)
    affine[:3, :3] = np.array(columns).T
    affine[:3, 3] = (10.0, 40.0, 30.0)
    return affine


@pytest.mark.parametrize("kind", ["axial", "coronal"])
def test_a_2d_nifti_opens_and_exports_where_its_affine_puts_it(tmp_path, kind):
    array = np.arange(20 * 30, dtype=np.int16).reshape(20, 30)  # nibabel (i, j)
    affine = _affine(kind)
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "slice.nii.gz")
    assert nib.load(tmp_path / "slice.nii.gz").header["dim"][0] == 2
    volume = read_study(tmp_path / "slice.nii.gz")
    assert volume.array.shape == (1, 30, 20) and np.array_equal(volume.array[0], array.T)
    for i, j in ((0, 0), (19, 0), (0, 29), (7, 11)):  # every pixel where nibabel's affine says (LPS)
        expected = (LPS @ affine @ (i, j, 0, 1))[:3]
        assert np.allclose(volume.index_to_physical(np.array([i, j, 0])), expected, atol=1e-4), (i, j)
    labels = np.zeros((1, 30, 20), np.uint8)
    labels[0, 11, 7] = 1
    export_labels(labels, volume, tmp_path / "labels.nii.gz")
    written = nib.load(tmp_path / "labels.nii.gz")
    assert np.allclose(written.affine[:3, :2], affine[:3, :2], atol=1e-4)
    assert np.allclose(written.affine[:3, 3], affine[:3, 3], atol=1e-3)
    (i, j, k), = np.argwhere(np.asarray(written.dataobj) == 1)
    assert np.allclose(written.affine @ (i, j, k, 1), affine @ (7, 11, 0, 1), atol=1e-3)


def test_a_scaled_and_an_rgb_2d_nifti_open_as_itk_read_them(tmp_path):
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    image = nib.Nifti1Image(array, np.eye(4))
    image.header.set_slope_inter(0.5, -10)
    nib.save(image, tmp_path / "scaled.nii")
    volume = read_study(tmp_path / "scaled.nii")
    assert volume.array.dtype == np.float32 and np.allclose(volume.array[0], array.T * 0.5 - 10)
    rgb = np.zeros((3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = 200, np.arange(12).reshape(3, 4), 7
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    volume = read_study(tmp_path / "rgb.nii")
    assert volume.array.shape == (1, 4, 3, 3)
    assert np.array_equal(volume.array[0, ..., 1], np.arange(12).reshape(3, 4).T)
    assert (volume.array[0, ..., 0] == 200).all()
