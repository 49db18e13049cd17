"""A DICOM image placed in the patient (ImageOrientationPatient) but without PixelSpacing is refused naming the field,
single file or series (session 15's adversarial pass: GDCM took 1 mm for the CT's 0.957 mm pixels and the study
opened as if measured: mm² and mL from the invented size, the label map 4 % too small). Images without an orientation
(ultrasound, secondary captures) still open in pixels, unmeasured, as before."""

from __future__ import annotations

import warnings

import pydicom
import pytest

from data.readers import StudyError, read_study
from tests.conftest import SAMPLES

CT_FILES = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))


def _series(tmp_path, edit):
    folder = tmp_path / "series"
    folder.mkdir()
    for f in CT_FILES:
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(folder / f.name, enforce_file_format=False)
    return folder


def _imager_only(ds):
    ds.ImagerPixelSpacing = ds.PixelSpacing
    del ds.PixelSpacing


@pytest.mark.parametrize("edit, detector", [(lambda ds: delattr(ds, "PixelSpacing"), False), (_imager_only, True)],
                         ids=["none", "imager_pixel_spacing_only"])
@pytest.mark.parametrize("single", [False, True], ids=["series", "single_file"])
def test_an_oriented_image_without_pixel_spacing_is_refused(tmp_path, edit, detector, single):
    folder = _series(tmp_path, edit)
    with pytest.raises(StudyError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_study(folder / CT_FILES[0].name if single else folder)
    message = str(e.value)
    assert "IM0001.dcm: ImageOrientationPatient but no PixelSpacing: the pixel size in the patient is not in the " \
           "file (the decoder would take 1 mm)" in message, message
    assert ("ImagerPixelSpacing, which it has, is the size at the detector" in message) == detector
    assert "\n" not in message


def test_an_image_without_orientation_or_pixel_spacing_still_opens_unmeasured(tmp_path):
    def bare(ds):
        for keyword in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
            delattr(ds, keyword)

    folder = _series(tmp_path, bare)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(folder / CT_FILES[0].name)
    assert volume.source.geometry == "none (identity)" and not volume.size_is_physical


@pytest.mark.parametrize("raw, shown", [("0", "SpacingBetweenSlices 0"), ("abc", "SpacingBetweenSlices 'abc'"),
                                        ("NaN", "SpacingBetweenSlices nan")])
def test_a_single_images_spacing_between_slices_that_is_no_distance_is_named(tmp_path, raw, shown):
    """GDCM takes a single image's SpacingBetweenSlices as its third spacing and refused 0, text or NaN in its own
    words: `DICOM pixel data could not be decoded (Refusing to change spacing from [1, 1, 1] to [0.957, 0.957, 0])`,
    naming no field and blaming the pixels. A negative one (some MR scanners) still opens, as before."""
    def edit(ds):
        ds.add_new(0x00180088, "DS", None)
        ds[0x00180088]._value = raw
    path = _series(tmp_path, edit) / CT_FILES[0].name
    with pytest.raises(StudyError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_study(path)
    assert str(e.value) == (f"{path}: {shown}: expected the distance between slices in mm, a number other than 0 (a "
                            "single image does not need it: remove it, or export the images again)")
    with pytest.raises(StudyError) as e, warnings.catch_warnings():  # the series: before, "could not be read (...)"
        warnings.simplefilter("ignore")
        read_study(path.parent)
    assert str(e.value) == (f"{path.parent}: {CT_FILES[0].name}: {shown}: expected the distance between slices in mm, "
                            "a number other than 0 (the slices' positions give their spacing: remove it, or export the "
                            "images again)")
    (tmp_path / "neg").mkdir()
    negative = _series(tmp_path / "neg", lambda ds: setattr(ds, "SpacingBetweenSlices", -1.5)) / CT_FILES[0].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_study(negative).array.shape == (1, 256, 256)
        assert read_study(negative.parent).spacing[2] == pytest.approx(1.5)


HALF_A_PLANE = {
    "ImagePositionPatient": "IM0001.dcm: ImageOrientationPatient but no ImagePositionPatient: where the image lies in "
                            "the patient is not in the file (the decoder would put it at 0, 0, 0); add "
                            "ImagePositionPatient, or export the images again",
    "ImageOrientationPatient": "IM0001.dcm: ImagePositionPatient but no ImageOrientationPatient: which way the image "
                               "lies in the patient is not in the file (the decoder would take it as axial); add "
                               "ImageOrientationPatient, or export the images again",
}


@pytest.mark.parametrize("missing", sorted(HALF_A_PLANE))
@pytest.mark.parametrize("how", ["single_file", "folder_of_one", "legacy_multiframe"])
def test_an_image_placed_by_half_its_plane_is_refused(tmp_path, missing, how):
    """The Image Plane module's orientation and position place an image together. A real CT slice with one of them
    alone opened as if placed (session 20): without its position at 0, 0, 0 (the geometry said
    'ImagePositionPatient/ImageOrientationPatient'), without its orientation as axial at its position (it is coronal),
    and its label map was written there; a one-file folder and a legacy multi-frame (3 frames, SpacingBetweenSlices)
    the same. Refused now naming the missing one; the whole plane and neither (unplaced, in pixels) open as before."""
    import numpy as np

    ds = pydicom.dcmread(CT_FILES[0])
    if how == "legacy_multiframe":
        frames = np.stack([ds.pixel_array] * 3)
        ds.NumberOfFrames, ds.SpacingBetweenSlices, ds.PixelData = 3, 1.5, frames.tobytes()
    delattr(ds, missing)
    folder = tmp_path / "one"
    folder.mkdir()
    ds.save_as(folder / CT_FILES[0].name, enforce_file_format=False)
    with pytest.raises(StudyError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_study(folder if how == "folder_of_one" else folder / CT_FILES[0].name)
    assert str(e.value).endswith(HALF_A_PLANE[missing]), str(e.value)
    whole = read_study(CT_FILES[0])
    assert whole.origin == pytest.approx([float(v) for v in pydicom.dcmread(CT_FILES[0]).ImagePositionPatient])
