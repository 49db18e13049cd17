"""``data.series_geometry``: a DICOM series opens only as one stack of parallel, evenly spaced slices.

Headers are built in memory (pydicom Datasets, no pixels) so each case is one fault; the messages are
what ``medseg`` prints after the folder name, so they are asserted whole. The real CT series checks the
positions against pydicom's own numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from data.series_geometry import (
    GeometryError,
    SeriesGeometry,
    check_pixel_spacing,
    check_series_geometry,
    numbers,
    orientation,
    position_along_normal,
)
from tests.conftest import DATA

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


def head(z: float = 0.0, *, ipp=None, iop=AXIAL, **attributes) -> Dataset:
    ds = Dataset()
    ds.ImagePositionPatient = list(ipp) if ipp is not None else [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 4, 4, 1, 16
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def check(heads, **kwargs) -> SeriesGeometry:
    return check_series_geometry([f"/study/IM{n + 1}.dcm" for n in range(len(heads))], heads, **kwargs)


def refused(heads, message: str, **kwargs) -> None:
    with pytest.raises(GeometryError) as e:
        check(heads, **kwargs)
    assert str(e.value) == message


def at(*zs, **kwargs) -> list[Dataset]:
    return [head(z, **kwargs) for z in zs]


# --- one header ------------------------------------------------------------------------------------------
def test_numbers_reads_exactly_count_finite_numbers():
    ds = head(ipp=(1, "2.5", -3))
    np.testing.assert_array_equal(numbers(ds, "ImagePositionPatient", 3), [1.0, 2.5, -3.0])
    assert numbers(ds, "SliceLocation", 1) is None
    ds.SliceThickness = "1.25"  # a single value
    np.testing.assert_array_equal(numbers(ds, "SliceThickness", 1), [1.25])
    with pytest.raises(GeometryError, match=r"^SliceThickness has 1 value\(s\); expected 3$"):
        numbers(ds, "SliceThickness", 3)
    ds.ImagePositionPatient = [0, 0]
    with pytest.raises(GeometryError, match=r"^ImagePositionPatient has 2 value\(s\); expected 3$"):
        numbers(ds, "ImagePositionPatient", 3)
    ds.add_new(0x00200032, "LO", ["1", "x", "2"])  # what a broken writer leaves: text where numbers belong
    with pytest.raises(GeometryError, match=r"^ImagePositionPatient \['1', 'x', '2'\] is not 3 numbers$"):
        numbers(ds, "ImagePositionPatient", 3)
    ds.add_new(0x00200032, "LO", ["1", "nan", "2"])
    with pytest.raises(GeometryError, match=r"^ImagePositionPatient \[1.0, nan, 2.0\] holds NaN or infinite values$"):
        numbers(ds, "ImagePositionPatient", 3)
    ds.add_new(0x00200032, "LO", ["1", "2", "-inf"])
    with pytest.raises(GeometryError, match=r"holds NaN or infinite values$"):
        numbers(ds, "ImagePositionPatient", 3)


def test_orientation_must_be_two_perpendicular_unit_vectors_within_one_percent():
    np.testing.assert_array_equal(orientation(head()), [[1, 0, 0], [0, 1, 0]])
    assert orientation(Dataset()) is None
    assert orientation(head(iop=(1.009, 0, 0, 0, 1, 0))) is not None
    assert orientation(head(iop=(1, 0, 0, 0, 0.991, 0))) is not None
    assert orientation(head(iop=(1, 0, 0, 0.00098, 1, 0))) is not None  # row . column under GDCM's 1e-3
    for iop in [(1.011, 0, 0, 0, 1, 0), (0.989, 0, 0, 0, 1, 0), (1, 0, 0, 0, 1.011, 0), (1, 0, 0, 0, 0.989, 0),
                (1, 0, 0, 0.011, 1, 0), (1, 0, 0, -0.011, 1, 0), (1, 0, 0, 0.009, 1, 0), (1, 0, 0, -0.0011, 1, 0)]:
        with pytest.raises(GeometryError) as e:
            orientation(head(iop=iop))
        assert str(e.value) == f"ImageOrientationPatient {[float(v) for v in iop]} is not two perpendicular unit vectors"


def test_pixel_spacing_must_be_positive():
    check_pixel_spacing(head())
    check_pixel_spacing(Dataset())  # absent: nothing to check
    for spacing in ([0, 0.5], [0.5, -1]):
        with pytest.raises(GeometryError) as e:
            check_pixel_spacing(head(PixelSpacing=spacing))
        assert str(e.value) == f"PixelSpacing {[float(v) for v in spacing]}: expected two numbers > 0 mm"


def test_a_pixel_spacing_too_small_to_place_is_refused_naming_it(tmp_path):
    """PixelSpacing 1e-300 (a damaged value) was refused in ITK's words, blaming the pixels: "DICOM pixel data could
    not be decoded (ITK ERROR: Singular matrix. Determinant is 0.)" (session 22). A single file and a series."""
    from data.readers import StudyError, read_study
    from tests.hostile import dicom_bytes as db

    with pytest.raises(GeometryError) as e:
        check_pixel_spacing(head(PixelSpacing=[1e-300, 1e-300]))
    assert str(e.value) == ("PixelSpacing [1e-300, 1e-300]: expected pixels of 1e-06 mm or more; a pixel that small "
                            "is a damaged value (no label map can hold it)")
    check_pixel_spacing(head(PixelSpacing=[1e-6, 0.001]))
    for n in range(2):
        ds = db.image_dataset(db.pixels(seed=n)[0], instance=n + 1, ipp=(0.0, 0.0, 1.5 * n))
        ds.add_new(0x00280030, "DS", None)
        ds[0x00280030]._value = "1e-300\\1e-300"
        db.write(ds, tmp_path / f"IM{n + 1}.dcm")
    for path, where in ((tmp_path / "IM1.dcm", f"{tmp_path / 'IM1.dcm'}"), (tmp_path, f"{tmp_path}: IM1.dcm")):
        with pytest.raises(StudyError) as e:
            read_study(path)
        assert str(e.value) == f"{where}: PixelSpacing [1e-300, 1e-300]: expected pixels of 1e-06 mm or more; a " \
                               "pixel that small is a damaged value (no label map can hold it)"


def test_a_pixel_spacing_past_what_any_scanner_makes_is_refused_naming_it(tmp_path):
    """PixelSpacing 5000 mm (pydicom's CT_small so edited) opened without a word as a 640 m image (session 26's
    leftover). 50 mm is the bound (``MAX_PIXEL_MM``): pydicom's 33.3 mm secondary captures and 10 mm dose grids open."""
    from data.readers import StudyError, read_study
    from tests.hostile import dicom_bytes as db

    check_pixel_spacing(head(PixelSpacing=[50, 33.333333]))
    with pytest.raises(GeometryError) as e:
        check_pixel_spacing(head(PixelSpacing=[5000, 5000]))
    line = ("PixelSpacing [5000.0, 5000.0]: expected pixels of 50 mm or less (no scanner's pixel is larger: NM and "
            "dose grids reach about 20 mm); a larger pixel is a damaged value: check the file's PixelSpacing")
    assert str(e.value) == line
    for n in range(2):
        ds = db.image_dataset(db.pixels(seed=n)[0], instance=n + 1, ipp=(0.0, 0.0, 1.5 * n))
        ds.PixelSpacing = [5000, 5000]
        db.write(ds, tmp_path / f"IM{n + 1}.dcm")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path)
    assert str(e.value) == f"{tmp_path}: IM1.dcm: {line}"


def test_position_along_the_normal_of_an_oblique_slice():
    row, col = np.array([0.6, 0.8, 0.0]), np.array([0.0, 0.0, -1.0])
    ds = head(ipp=(3.0, -4.0, 7.0), iop=(*row, *col))
    assert position_along_normal(ds) == pytest.approx(float(np.dot(np.cross(row, col), [3.0, -4.0, 7.0])))
    assert position_along_normal(head(ipp=(1.0, 2.0, -5.5))) == pytest.approx(-5.5)
    missing = head()
    del missing.ImagePositionPatient
    assert position_along_normal(missing) is None
    assert position_along_normal(head(iop=(1, 0, 0, 1, 0, 0))) is None  # invalid orientation: no position


def test_the_real_series_positions_are_pydicoms():
    files = sorted(CT_SERIES.glob("*.dcm"))
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in heads:
        iop = np.array(ds.ImageOrientationPatient, float)
        expected = float(np.dot(np.cross(iop[:3], iop[3:]), np.array(ds.ImagePositionPatient, float)))
        assert position_along_normal(ds) == pytest.approx(expected)
    assert check_series_geometry([str(f) for f in files], heads) == SeriesGeometry()
    gap = files[:5] + files[6:]  # IM0006.dcm lost in transfer
    with pytest.raises(GeometryError) as e:
        check_series_geometry([str(f) for f in gap], [heads[n] for n in range(12) if n != 5])
    p = [position_along_normal(h) for h in heads]
    assert str(e.value) == (f"1 slice(s) missing between IM0005.dcm ({p[4]:.2f} mm) and IM0007.dcm ({p[6]:.2f} mm) "
                            "(the other slices are 1.5 mm apart); add the missing file(s), open the complete series, "
                            "or pass --allow-uneven")


# --- the series -----------------------------------------------------------------------------------------
def test_one_slice_or_an_even_stack_passes():
    assert check([head()]) == SeriesGeometry()
    assert check(at(0, 2, 4, 6)) == SeriesGeometry()
    assert check(at(6, 4, 2, 0)) == SeriesGeometry()  # descending positions are one even stack too
    assert check(at(0, 2, 4, 6.039)) == SeriesGeometry()  # 1.95 % off the median step: even


def test_each_slice_needs_a_valid_position_and_orientation():
    heads = at(0, 2, 4)
    del heads[1].ImagePositionPatient
    refused(heads, "IM2.dcm: no ImagePositionPatient; a series of 3 images cannot be stacked without it")
    heads = at(0, 2, 4)
    del heads[2].ImageOrientationPatient
    refused(heads, "IM3.dcm: no ImageOrientationPatient; a series of 3 images cannot be stacked without it")
    heads = at(0, 2, 4)
    heads[2].ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
    refused(heads, "IM3.dcm: ImageOrientationPatient [1.0, 0.0, 0.0, 1.0, 0.0, 0.0] is not two perpendicular unit vectors")
    heads = at(0, 2, 4)
    heads[1].PixelSpacing = [0.5, 0]
    refused(heads, "IM2.dcm: PixelSpacing [0.5, 0.0]: expected two numbers > 0 mm")
    heads = at(0, 2, 4)
    heads[0].ImagePositionPatient = [0, 0]
    refused(heads, "IM1.dcm: ImagePositionPatient has 2 value(s); expected 3")


@pytest.mark.parametrize("keyword, value", [("Rows", 5), ("Columns", 8), ("SamplesPerPixel", 3), ("BitsAllocated", 8)])
def test_slices_of_another_size_or_pixel_type_are_refused(keyword, value):
    heads = at(0, 2, 4)
    setattr(heads[2], keyword, value)
    first = {"Rows": 4, "Columns": 4, "SamplesPerPixel": 1, "BitsAllocated": 16}[keyword]
    refused(heads, f"IM3.dcm: {keyword} {value} differs from IM1.dcm ({first})")


def test_a_slice_of_another_modality_is_refused(tmp_path):
    """One MR image among a CT series' slices (a mis-sorted export): opened, the whole stack took the first file's
    modality, and the CT's window and its HU checks were applied to the MR slice's values."""
    from data.readers import read_study
    from data.study_errors import StudyError

    heads = at(0, 2, 4, Modality="CT")
    heads[2].Modality = "MR"
    refused(heads, "IM3.dcm: Modality MR differs from IM1.dcm (CT)")
    files = sorted(CT_SERIES.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        if f == files[5]:
            ds.Modality = "MR"
        ds.save_as(tmp_path / f.name)
    with pytest.raises(StudyError, match=f"{files[5].name}: Modality MR differs from {files[0].name} \\(CT\\)"):
        read_study(tmp_path)


@pytest.mark.parametrize("keyword, value", [("PatientID", "OTHER-7"), ("PatientName", "Other^Patient"),
                                            ("StudyInstanceUID", "1.2.3.4"), ("PatientID", "")])
def test_a_slice_of_another_patient_or_study_is_refused_naming_the_field(tmp_path, keyword, value):
    """One slice naming another PatientID, PatientName or StudyInstanceUID within one SeriesInstanceUID (a mis-sorted
    or wrongly merged export): it opened as part of the volume without a word where its geometry fitted, two patients'
    images in one volume (session 23). Refused naming the file and field, without the identifiers' values."""
    from data.readers import read_study
    from data.study_errors import StudyError

    why = "the volume would hold images of two patients or studies"
    heads = at(0, 2, 4, PatientID="P1", PatientName="Doe^Jane", StudyInstanceUID="1.2.3")
    setattr(heads[2], keyword, value)
    refused(heads, f"IM3.dcm: {keyword} differs from IM1.dcm's within one series: {why}; take the file out of the "
                   f"folder, or correct its {keyword}")
    files = sorted(CT_SERIES.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        if f == files[5]:
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / f.name)
    with pytest.raises(StudyError, match=f"{files[5].name}: {keyword} differs from {files[0].name}'s .*{why}") as e:
        read_study(tmp_path)
    assert value not in str(e.value) or not value


def test_a_series_of_one_patient_and_study_written_alike_opens():
    """The same identifiers, absent in every slice or padded differently, are one patient's: no refusal."""
    assert check(at(0, 2, 4)) == SeriesGeometry()
    heads = at(0, 2, 4, PatientID="P1", StudyInstanceUID="1.2.3")
    heads[1].PatientID = "P1 "
    assert check(heads) == SeriesGeometry()


def test_a_slice_oriented_unlike_the_first_is_refused():
    heads = at(0, 2, 4)
    heads[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9999995, 0.0011]  # 1.1e-3 off
    refused(heads, "IM3.dcm is oriented unlike IM1.dcm; the series is not one stack of parallel slices")
    heads[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9999995, 0.0009]  # 0.9e-3 off: the same orientation
    assert check(heads) == SeriesGeometry()


def test_two_images_at_one_position_are_refused():
    refused(at(0, 2, 2, 4), "two images at the same position between IM2.dcm (2.00 mm) and IM3.dcm (2.00 mm); "
            "remove the duplicate or pick one series")
    refused(at(0, 2, 2.039, 4.039, 6.039), "two images at the same position between IM2.dcm (2.00 mm) and IM3.dcm "
            "(2.04 mm); remove the duplicate or pick one series")  # within 2 % of the 2 mm step
    refused(at(0, 0.0009, 0.0018), "two images at the same position between IM1.dcm (0.00 mm) and IM2.dcm (0.00 mm); "
            "remove the duplicate or pick one series")  # within the 1 um floor
    assert check(at(0, 0.0011, 0.0022)) == SeriesGeometry()


def test_slices_shifted_in_plane_are_refused_as_a_tilted_stack():
    heads = [head(ipp=(0.45 * n, 0, 2.0 * n)) for n in range(3)]  # 2.05 mm steps, 2 mm along the normal
    refused(heads, "the slices step 2.05 mm but only 2 mm along their normal (gantry tilt or in-plane shifts); "
            "resample the series before opening it")
    heads = [head(ipp=(0.35 * n, 0, 2.0 * n)) for n in range(3)]  # 1.5 % off: within the tolerance
    assert check(heads) == SeriesGeometry()


def test_uneven_spacing_and_missing_slices_are_refused_unless_allowed():
    refused(at(0, 2, 4, 6.041), "uneven slice spacing, a step of 2.04 mm between IM3.dcm (4.00 mm) and IM4.dcm "
            "(6.04 mm) while the others are 2 mm; resample the series to even spacing (e.g. in 3D Slicer), or pass "
            "--allow-uneven")
    refused(at(0, 2, 4, 10), "2 slice(s) missing between IM3.dcm (4.00 mm) and IM4.dcm (10.00 mm) (the other slices "
            "are 2 mm apart); add the missing file(s), open the complete series, or pass --allow-uneven")
    refused(at(0, 2, 4, 9), "uneven slice spacing, a step of 5 mm between IM3.dcm (4.00 mm) and IM4.dcm (9.00 mm) "
            "while the others are 2 mm; resample the series to even spacing (e.g. in 3D Slicer), or pass "
            "--allow-uneven")  # 2.5 steps: not whole slices missing
    got = check(at(0, 2, 4, 8), allow_uneven=True)
    assert got.spacing_k == pytest.approx(8 / 3)
    assert got.notes == ("--allow-uneven: 1 uneven step(s) (1 slice(s) missing between IM3.dcm (4.00 mm) and IM4.dcm "
                         "(8.00 mm) (the other slices are 2 mm apart)); opened at the mean spacing 2.667 mm, so slice "
                         "positions are approximate",)
    got = check(at(9.5, 8, 4, 2, 0), allow_uneven=True)  # descending, two faults
    assert got.spacing_k == pytest.approx(9.5 / 4)
    assert got.notes == ("--allow-uneven: 2 uneven step(s) (uneven slice spacing, a step of 1.5 mm between IM1.dcm "
                         "(9.50 mm) and IM2.dcm (8.00 mm) while the others are 2 mm; ...); opened at the mean spacing "
                         "2.375 mm, so slice positions are approximate",)
    assert check(at(0, 2, 4), allow_uneven=True) == SeriesGeometry()


# --- boundaries and the reference slice (survivors of the first mutation run) -------------------------------
def test_two_slices_are_checked_too():
    refused(at(0, 0), "two images at the same position between IM1.dcm (0.00 mm) and IM2.dcm (0.00 mm); remove the "
            "duplicate or pick one series")
    heads = at(0, 2)
    heads[1].Rows = 5
    refused(heads, "IM2.dcm: Rows 5 differs from IM1.dcm (4)")


def test_the_first_slice_is_the_reference_when_it_is_the_odd_one():
    heads = at(0, 2, 4)
    heads[0].Columns = 8
    refused(heads, "IM2.dcm: Columns 4 differs from IM1.dcm (8)")
    heads = at(0, 2, 4)
    heads[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    refused(heads, "IM2.dcm is oriented unlike IM1.dcm; the series is not one stack of parallel slices")


def test_positions_are_measured_along_the_first_slices_normal():
    """Slices within the 1e-3 orientation tolerance: positions (in the message) use IM1's normal, not a mix."""
    heads = [head(ipp=(500.0, 500.0, z)) for z in (0.0, 2.0, 4.0, 7.0)]
    heads[1].ImageOrientationPatient = [1, 0, 0.0009, 0, 1, 0.0009]
    refused(heads, "uneven slice spacing, a step of 3 mm between IM3.dcm (4.00 mm) and IM4.dcm (7.00 mm) while the "
            "others are 2 mm; resample the series to even spacing (e.g. in 3D Slicer), or pass --allow-uneven")


def test_tolerances_are_inclusive():
    """Exact in binary: 2 % of a 50 mm step is 1.0 mm; 1e-3 of orientation; a row . column of 0.01."""
    refused(at(0, 50, 100, 101, 151), "two images at the same position between IM3.dcm (100.00 mm) and IM4.dcm "
            "(101.00 mm); remove the duplicate or pick one series")  # 1.0 mm apart: within 2 % of 50 mm
    assert check(at(0, 50, 100, 151)) == SeriesGeometry()  # one step 1.0 mm long: still even
    refused(at(0, 50, 100, 202), "1 slice(s) missing between IM3.dcm (100.00 mm) and IM4.dcm (202.00 mm) (the other "
            "slices are 50 mm apart); add the missing file(s), open the complete series, or pass --allow-uneven")
    heads = at(0, 2, 4)
    heads[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9999995, 0.001]  # exactly 1e-3 off: the same orientation
    assert check(heads) == SeriesGeometry()
    assert orientation(head(iop=(1, 0, 0, 0.00099, 1, 0))) is not None  # row . column exactly 9.9e-4 (GDCM: 1e-3)


def test_a_missing_slice_is_told_from_uneven_spacing_within_the_tolerance_per_step():
    """2 mm slices (tolerance 0.04 mm a step): a gap of 4.06 mm is one missing slice, 4.1 mm is not."""
    refused(at(0, 2, 4, 8.06), "1 slice(s) missing between IM3.dcm (4.00 mm) and IM4.dcm (8.06 mm) (the other slices "
            "are 2 mm apart); add the missing file(s), open the complete series, or pass --allow-uneven")
    refused(at(0, 2, 4, 8.1), "uneven slice spacing, a step of 4.1 mm between IM3.dcm (4.00 mm) and IM4.dcm (8.10 mm) "
            "while the others are 2 mm; resample the series to even spacing (e.g. in 3D Slicer), or pass --allow-uneven")


def test_the_mean_spacing_is_from_the_first_to_the_last_slice():
    got = check(at(10, 12, 14, 18), allow_uneven=True)
    assert got.spacing_k == pytest.approx(8 / 3)
    thin = check(at(0, 0.5, 1.0, 2.0), allow_uneven=True)  # thin slices: a mean step under 1 mm is fine
    assert thin.spacing_k == pytest.approx(2 / 3)


@pytest.mark.parametrize("dot", [0.002, 0.009])
def test_an_orientation_gdcm_would_snap_to_the_axes_is_refused(tmp_path, dot):
    """GDCM replaces an ImageOrientationPatient whose row and column are off perpendicular by more than 1e-3 with the
    nearest axes: a CT slice turned 30 degrees (row . column 0.002, within the 1 % allowed here) opened unturned, its
    NIfTI label map 30 degrees off the SEG of the same labels (which keeps the file's plane). Unit lengths off by up
    to 1 % are normalised correctly and still open, as does the same slice with perpendicular axes."""
    from data.readers import read_study
    from data.study_errors import StudyError

    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    row, column = np.array([c, s, 0.0]), np.array([-s, c, 0.0])

    def turned(name: str, iop) -> Path:
        ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
        ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
        ds.save_as(tmp_path / name)
        return tmp_path / name

    with pytest.raises(StudyError, match=r"ImageOrientationPatient \[.*\] is not two perpendicular unit vectors$"):
        read_study(turned("off.dcm", (*row, *(column + dot * row))))
    for name, iop in (("exact.dcm", (*row, *column)), ("long.dcm", (*(row * 1.005), *column))):
        direction = np.array(read_study(turned(name, iop)).direction).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], row, atol=1e-5)
        np.testing.assert_allclose(direction[:, 1], column, atol=1e-5)


def test_a_step_off_sideways_says_by_how_much_where_its_length_reads_the_same():
    """A slice whose position is 0.05 mm off sideways (jitter in an export): refused, but the line read "a step of 2 mm
    ... while the others are 2 mm", naming no difference (session 17). It now says how far off and the limit."""
    heads = [head(ipp=(0.0, 0.0, 2.0 * k)) for k in range(5)]
    heads[2].ImagePositionPatient = [0.05, 0.0, 4.0]
    refused(heads, "uneven slice spacing, a step of 2 mm between IM2.dcm (2.00 mm) and IM3.dcm (4.00 mm) while the "
                   "others are 2 mm, 0.05 mm away from their step in length or direction (more than the 0.04 mm "
                   "allowed); resample the series to even spacing (e.g. in 3D Slicer), or pass --allow-uneven")
