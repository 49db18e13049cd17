"""Stored DICOM values become the values each slice or frame says (RescaleSlope/Intercept), or the file is
refused: never one slice's rescale applied to another's pixels.

The real CT series (``ct_head_0051_series_k050-061``, HU stored with slope 1, intercept 0) is rewritten with
one slice stored under another rescale, as PET series (a slope per slice) and mixed exports hold; the expected
values are the original HU, read independently by pydicom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data.readers import StudyError, read_study
from tests.conftest import DATA
from tests.hostile import dicom_bytes as db

SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


def _series_with_one_slice(folder: Path, n: int, stored, slope: float) -> np.ndarray:
    """Copy the series to ``folder`` with slice ``n`` holding ``stored(hu)`` under RescaleSlope ``slope``
    (intercept 0); returns the values every slice means (HU elsewhere, stored x slope on slice n)."""
    shutil.copytree(SERIES, folder)
    files = sorted(folder.glob("*.dcm"))
    values = np.stack([pydicom.dcmread(f).pixel_array.astype(np.float64) for f in files])
    ds = pydicom.dcmread(files[n])
    raw = stored(values[n])
    assert np.abs(raw).max() < 32768  # the stored values fit int16
    ds.PixelData = raw.astype("<i2").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.save_as(files[n], enforce_file_format=True)
    values[n] = raw * slope
    return values


@pytest.mark.parametrize("stored, slope", [
    (lambda hu: hu * 4 + 1, 0.25),  # a fractional slope after slope-1 slices: truncated into the first one's int16
    (lambda hu: hu, 64.0),  # values past int16 (a PET slope): wrapped round (1729 x 64 read as -32764 and the like)
], ids=["quarter", "times_64"])
def test_each_slice_of_a_series_keeps_its_own_rescale(tmp_path, stored, slope):
    values = _series_with_one_slice(tmp_path / "s", 5, stored, slope)
    volume = read_study(tmp_path / "s")
    np.testing.assert_allclose(volume.array, values, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (0.9570312, 0.9570312, 1.5), atol=1e-6)


def _transform(slope: float, intercept: float) -> Sequence:
    item = Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, intercept, "HU"
    return Sequence([item])


def test_an_enhanced_multiframe_with_one_rescale_per_frame_is_refused(tmp_path):
    """GDCM applied frame 1's PixelValueTransformationSequence to every frame (measured: frame 4 stored with
    slope 4 came out 2982 HU off); frames that disagree are refused naming them, a shared one is applied."""
    stack = db.pixels(16, 16, seed=3, frames=4)
    ds = db.enhanced_multiframe(stack, [0.0, 1.0, 2.0, 3.0])
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = _transform(2, -1024)
    shared = read_study(db.write(ds, tmp_path / "shared.dcm"))
    np.testing.assert_array_equal(shared.array, stack.astype(np.int64) * 2 - 1024)

    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame.PixelValueTransformationSequence = _transform(n + 1, -1024)
    path = db.write(ds, tmp_path / "per_frame.dcm")
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value) == (f"{path}: frame 2 has RescaleSlope 2, RescaleIntercept -1024 where frame 1 has 1, -1024; "
                            "medseg applies one rescale to every frame (save the frames as a series)")


def test_monochrome1_with_a_rescale_is_refused_and_without_one_opens_inverted(tmp_path):
    """MONOCHROME1 says how to display (white = low), after the rescale to the modality's units. GDCM inverts the
    stored values before the rescale: the real CT slice stored as MONOCHROME1 (slope 1, intercept -1024) opened at
    -3216..-1153 'HU' instead of its -896..1167, so every CT window showed black and any HU read was wrong. A
    radiograph without a rescale (the usual MONOCHROME1 file) still opens inverted, white bone as viewers show it."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    stored = ds.pixel_array.astype(np.int64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "ct_m1.dcm")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "ct_m1.dcm")
    assert str(e.value) == (f"{tmp_path / 'ct_m1.dcm'}: MONOCHROME1 with RescaleSlope 1, RescaleIntercept -1024: the "
                            "decoder inverts the stored values before the rescale, so the modality's values (HU) "
                            "would be wrong; save it as MONOCHROME2")
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.Modality, ds.PixelRepresentation, ds.BitsStored, ds.HighBit = "CR", 0, 12, 11
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(tmp_path / "cr_m1.dcm")
    np.testing.assert_array_equal(read_study(tmp_path / "cr_m1.dcm").array[0], 4095 - stored)


def _series_rescaled(folder: Path, slope: str, intercept: str) -> Path:
    """The real CT series copied to ``folder`` with every slice under RescaleSlope/Intercept as written (DS text)."""
    shutil.copytree(SERIES, folder)
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(f, enforce_file_format=True)
    return folder


@pytest.mark.parametrize("slope, intercept, said", [
    # every stored step lost: the CT opened as one flat 1e30 (float64 cannot tell 1e30 + 1 from 1e30)
    ("1", "1e30", "IM0001.dcm: RescaleSlope 1, RescaleIntercept 1e+30: the intercept swamps the slope, so stored "
                  "values -32768..32767 would all open as about 1e+30 (their differences lost); the rescale is wrong"),
    # past float32: infinities in any float viewer, a float32 export or the model's input
    ("1e300", "0", "IM0001.dcm: RescaleSlope 1e+300, RescaleIntercept 0 make stored values -32768..32767 reach "
                   "3.28e+304, past what an image can hold (about 3.4e+38); the rescale is wrong"),
    # a CT in HU, inverted: bone darker than air under every CT window
    ("-1", "0", "IM0001.dcm: RescaleSlope -1, RescaleIntercept 0: a CT's Hounsfield units grow with density, and a "
                "negative slope would show bone darker than air; the rescale is wrong"),
    # representable, but no material: 1e33 'HU' opened, every CT preset window one flat colour
    ("1e30", "0", ": CT values of -1.024e+33 to 1.729e+33 HU after RescaleSlope 1e+30, RescaleIntercept 0; Hounsfield "
                  "units lie within -1024 and some 30000 (at most 1e+06), so the rescale is wrong"),
], ids=["intercept_1e30", "slope_1e300", "ct_slope_negative", "ct_slope_1e30"])
def test_a_rescale_whose_values_cannot_be_held_or_are_not_hu_is_refused(tmp_path, slope, intercept, said):
    """Session 17: absurd rescales (0, NaN and text were already refused) opened as stated, as if valid."""
    folder = _series_rescaled(tmp_path / "s", slope, intercept)
    with pytest.raises(StudyError) as e:
        read_study(folder)
    message = str(e.value)
    assert "\n" not in message
    assert message == f"{folder}/{said}" if said.startswith("IM") else message == f"{folder}{said}"


def test_a_negative_or_large_slope_outside_ct_opens_as_the_file_states(tmp_path):
    """PS3.3 bounds neither sign nor size of RescaleSlope; outside CT's Hounsfield units such a rescale is what the
    file says (vendors' MR and PET scalings), so it opens, each stored step kept apart."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_MR_small.dcm")
    stored = ds.pixel_array.astype(np.float64)
    for slope in ("-1", "1e30"):
        ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
        ds.save_as(tmp_path / "mr.dcm")
        np.testing.assert_array_equal(read_study(tmp_path / "mr.dcm").array[0], stored * float(slope))


def test_an_enhanced_frame_whose_rescale_cannot_be_held_is_refused_naming_the_frame(tmp_path):
    stack = db.pixels(16, 16, seed=3, frames=4)
    ds = db.enhanced_multiframe(stack, [0.0, 1.0, 2.0, 3.0])
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = _transform(1, 1e30)
    path = db.write(ds, tmp_path / "shared.dcm")
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value).startswith(f"{path}: frame 1: RescaleSlope 1, RescaleIntercept 1e+30: the intercept swamps")


def _series_unsigned(folder: Path, edit=None) -> Path:
    """The real CT series (signed, air at -1024 stored) copied with PixelRepresentation 0 in every slice."""
    shutil.copytree(SERIES, folder)
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PixelRepresentation = 0
        if edit is not None:
            edit(ds)
        ds.save_as(f, enforce_file_format=True)
    return folder


def test_a_ct_of_signed_values_whose_header_says_unsigned_is_refused(tmp_path):
    """The real head CT labelled unsigned opened with its air at 64512 'HU' (under HU_LIMIT, kept for extended CT
    scales): every CT window showed the outside white, and a model saw the head inside a wall of metal."""
    folder = _series_unsigned(tmp_path / "series")
    with pytest.raises(StudyError) as e:
        read_study(folder)
    message = str(e.value)
    assert message.startswith(f"{folder}: PixelRepresentation 0 (unsigned), but ")
    assert "% of the CT reads 6" in message and "HU (mostly air) read as signed: the stored values are signed" in (
        message)
    assert "\n" not in message
    one = sorted(folder.glob("*.dcm"))[0]
    with pytest.raises(StudyError, match=r"PixelRepresentation 0 \(unsigned\), but"):
        read_study(one)


def test_unsigned_cts_without_that_evidence_open_as_before(tmp_path):
    """Real unsigned CT (pydicom's, intercept -1024, stored 128..2191) and the head CT stored unsigned with -1024 and
    a tenth of it metal of an extended scale (stored 40000: 38976 HU) open as they did."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    stored = ds.pixel_array.astype(np.int64)
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(tmp_path / "small.dcm")
    np.testing.assert_array_equal(read_study(tmp_path / "small.dcm").array[0], stored - 1024)

    def metal(ds: pydicom.Dataset) -> None:
        hu = ds.pixel_array.astype(np.int64)
        values = hu + 1024
        values[: values.shape[0] // 8] = 40000
        ds.RescaleIntercept = -1024
        ds.PixelData = values.astype("<u2").tobytes()

    folder = _series_unsigned(tmp_path / "metal", metal)
    volume = read_study(folder)
    assert volume.array.max() == 40000 - 1024 and volume.array.min() >= -1024
