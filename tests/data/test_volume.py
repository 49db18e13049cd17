"""Volume: the geometry helpers agree with SimpleITK (an independent implementation of the same LPS
convention), bad shapes are refused with one message, 2D images get a 3D geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from data.volume import SourceRef, Volume
from tests.conftest import DATA

CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


@pytest.fixture(scope="module")
def ct_image() -> sitk.Image:
    """The CT series as SimpleITK reads it: LIP orientation, anisotropic spacing, a real origin."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_SERIES)))
    return reader.Execute()


def test_geometry_helpers_match_simpleitk(ct_image):
    vol = Volume.from_sitk(ct_image, modality="CT", source=SourceRef(path="ct", format="dicom-series"))
    assert (vol.modality, vol.source.path, vol.source.format) == ("CT", "ct", "dicom-series")
    assert vol.spacing == ct_image.GetSpacing() and vol.origin == ct_image.GetOrigin()
    assert vol.direction == ct_image.GetDirection()
    assert (vol.num_slices, vol.slice_shape, vol.is_rgb, vol.is_2d) == (12, (256, 256), False, False)
    np.testing.assert_array_equal(vol.direction_matrix, np.reshape(ct_image.GetDirection(), (3, 3)))
    points = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 11], [12.5, 200.25, 3.5]])
    expected = [ct_image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in points]
    np.testing.assert_allclose(vol.index_to_physical(points), expected, atol=1e-6)
    np.testing.assert_allclose(vol.index_to_physical([1, 2, 3]), expected[0] + vol.direction_matrix @ (
        np.array([1, 2, 3]) * vol.spacing), atol=1e-6)  # a plain list works too
    assert vol.orientation_code() == "LIP"
    back = vol.to_sitk()
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
        ct_image.GetSpacing(), ct_image.GetOrigin(), ct_image.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct_image))
    np.testing.assert_array_equal(vol.slice(11), sitk.GetArrayFromImage(ct_image)[11])


def test_2d_images_get_a_3d_geometry_and_rgb_stays_rgb():
    rgb = sitk.GetImageFromArray(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), isVector=True)
    rgb.SetSpacing((0.25, 0.5))
    rgb.SetOrigin((3.0, -4.0))
    rgb.SetDirection((0.0, 1.0, -1.0, 0.0))
    vol = Volume.from_sitk(rgb)
    assert vol.array.shape == (1, 4, 5, 3) and vol.is_rgb and vol.is_2d and vol.slice_shape == (4, 5)
    assert vol.spacing == (0.25, 0.5, 1.0) and vol.origin == (3.0, -4.0, 0.0)
    assert vol.direction == (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert vol.modality == "OT" and vol.source == SourceRef()
    assert all(isinstance(x, float) for x in (*vol.spacing, *vol.origin, *vol.direction))
    image = vol.to_sitk()
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (5, 4, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], sitk.GetArrayFromImage(rgb))


def test_refusals_are_one_message():
    def message(call) -> str:
        with pytest.raises((ValueError, IndexError)) as e:
            call()
        return str(e.value)

    assert message(lambda: Volume(np.zeros((4, 5)))) == "Volume.array must be [k, j, i] or [k, j, i, c], got shape (4, 5)"
    assert message(lambda: Volume(np.zeros((1, 2, 3, 4, 5)))) == (
        "Volume.array must be [k, j, i] or [k, j, i, c], got shape (1, 2, 3, 4, 5)")
    assert message(lambda: Volume(np.zeros((1, 4, 5, 2)))) == (
        "Volume.array channel axis must hold 3 (RGB) values, got shape (1, 4, 5, 2)")
    Volume(np.zeros((1, 4, 5, 4)))  # RGBA is accepted
    geometry = "Volume geometry needs 3 spacings, 3 origin values and 9 direction cosines"
    assert message(lambda: Volume(np.zeros((1, 2, 2)), spacing=(1.0, 1.0))) == geometry
    assert message(lambda: Volume(np.zeros((1, 2, 2)), origin=(0.0,) * 4)) == geometry
    assert message(lambda: Volume(np.zeros((1, 2, 2)), direction=(1.0,) * 8)) == geometry
    vol = Volume(np.zeros((3, 2, 2)))
    assert message(lambda: vol.slice(3)) == "slice 3 is out of range: this study has slices 0..2"
    assert message(lambda: vol.slice(-1)) == "slice -1 is out of range: this study has slices 0..2"
    assert message(lambda: vol.with_array(np.zeros((3, 2, 3)))) == "array shape (3, 2, 3) does not match the volume grid (3, 2, 2)"
    four_d = sitk.Image([2, 2, 2, 2], sitk.sitkUInt8)
    assert message(lambda: Volume.from_sitk(four_d)) == "only 2D and 3D images are supported, got a 4D image"


def test_with_array_keeps_geometry_and_applies_changes():
    vol = Volume(np.zeros((2, 3, 4)), spacing=(1.0, 2.0, 3.0), origin=(4.0, 5.0, 6.0), modality="CT",
                 source=SourceRef(path="p"))
    labels = vol.with_array(np.ones((2, 3, 4), np.uint8), modality="SEG")
    assert (labels.spacing, labels.origin, labels.direction, labels.source) == (vol.spacing, vol.origin, vol.direction, vol.source)
    assert labels.modality == "SEG" and labels.array.dtype == np.uint8
    assert vol.with_array(np.zeros((2, 3, 4, 3))).is_rgb  # the grid is the first three axes
    rgb = Volume(np.zeros((1, 4, 5, 3), np.uint8))
    assert rgb.with_array(np.ones((1, 4, 5), np.uint8)).array.shape == (1, 4, 5)  # a label map on a colour study
    with pytest.raises(ValueError) as e:
        rgb.with_array(np.zeros((1, 4, 6, 3)))
    assert str(e.value) == "array shape (1, 4, 6) does not match the volume grid (1, 4, 5)"
    np.testing.assert_array_equal(vol.slice(0), vol.array[0])  # the first slice is a slice
    np.testing.assert_array_equal(rgb.slice(0), rgb.array[0])
