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
from data.volume import Volume
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


def test_refusals_are_one_whole_message_and_write_nothing(tmp_path):
    """What the CLI prints after 'error:' (issue 26: assert the whole line, not a fragment)."""
    nifti, ct = read_study(STUDIES["colin27_nifti"]), read_study(STUDIES["ct_dicom_series_LIP"])
    grid = ct.array.shape[:3]

    def message(labels, volume, name) -> str:
        with pytest.raises(ExportError) as e:
            export_labels(labels, volume, tmp_path / name)
        assert list(tmp_path.iterdir()) == []
        return str(e.value)

    out = tmp_path / "x.nrrd"
    assert message(some_labels(grid), ct, "x.nrrd") == (
        f"{out}: unknown output format; name it .nii.gz (NIfTI labels) or .dcm (DICOM-SEG)")
    out = tmp_path / "x.nii.gz"
    assert message(np.zeros((2, 3, 4), np.uint8), ct, "x.nii.gz") == (
        f"{out}: label array (2, 3, 4) does not match the study grid {grid}")
    stack = np.stack([some_labels(grid) > 0] * 2).astype(np.uint8)
    assert message(stack, ct, "x.nii.gz") == (  # overlapping masks: DICOM-SEG only
        f"{out}: label array {stack.shape} does not match the study grid {grid}")
    assert message(some_labels(grid)[0], ct, "x.nii.gz") == (
        f"{out}: label array {grid[1:]} does not match the study grid {grid}")
    out = tmp_path / "x.dcm"
    assert message(some_labels(nifti.array.shape[:3]), nifti, "x.dcm") == (
        f"{out}: DICOM-SEG needs a DICOM study, this one is nifti; use a .nii.gz output name")
    in_memory = Volume(ct.array)
    assert message(some_labels(grid), in_memory, "x.dcm") == (
        f"{out}: DICOM-SEG needs a DICOM study, this one is not from a file; use a .nii.gz output name")
    assert message(np.zeros(grid, np.uint8), ct, "x.dcm") == (  # the DICOM-SEG writer's own refusal, as ExportError
        f"{out}: nothing is segmented (every label is empty); a DICOM-SEG needs at least one non-empty segment")


def test_dcm_export_passes_names_colours_model_overlaps_and_the_deidentifier(tmp_path):
    import pydicom

    ct = read_study(STUDIES["ct_dicom_series_LIP"])
    labels = some_labels(ct.array.shape[:3])
    seen = []
    out = export_labels(labels, ct, tmp_path / "L.DCM", {1: "liver"}, {1: (0, 255, 0)}, "medsam",
                        deidentify=lambda ds: seen.append(ds.SOPInstanceUID))
    ds = pydicom.dcmread(out)
    assert seen == [ds.SOPInstanceUID]
    assert ds.SegmentSequence[0].SegmentLabel == "liver" and ds.SegmentSequence[1].SegmentLabel == "label 3"
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medsam"
    assert np.abs(np.subtract(read_dicom_seg(out, ct).colours[1], (0, 255, 0))).max() <= 1
    default = pydicom.dcmread(export_labels(labels, ct, tmp_path / "d.dcm"))
    assert default.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "litemedsam"
    stack = np.stack([labels == 1, labels >= 1]).astype(np.uint8)  # overlapping structures
    assert [d.SegmentLabel for d in pydicom.dcmread(export_labels(stack, ct, tmp_path / "o.dcm")).SegmentSequence] == [
        "label 1", "label 2"]
    single = read_study(DATA / "dicom" / "pydicom_CT_small.dcm")  # a single DICOM image is a DICOM study too
    one = np.zeros(single.array.shape, np.uint8)
    one[0, 40:60, 50:80] = 1
    np.testing.assert_array_equal(read_dicom_seg(export_labels(one, single, tmp_path / "one.dcm"), single).labels.array, one)


def test_export_format_names():
    for name, fmt in (("a.nii", "nifti"), ("A.NII.GZ", "nifti"), ("c.dcm", "dicom-seg"),
                      ("C.DCM", "dicom-seg"), ("d.nii.gz.dcm", "dicom-seg")):
        assert export_format(name) == fmt, name
    for name in ("e.gz", "f.nii.zip", "g.dcm.gz", "nii", "h.png"):
        with pytest.raises(ExportError):
            export_format(name)


def test_upper_case_nifti_name_exports(tmp_path):
    """'OUT.NII.GZ' is accepted by export_format; it used to die in ITK (see data/writers.py)."""
    volume = read_study(STUDIES["colin27_nifti"])
    labels = some_labels(volume.array.shape[:3])
    out = export_labels(labels, volume, tmp_path / "OUT.NII.GZ")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), labels)


def test_rgb_study_exports_on_its_grid_and_names_it_in_refusals(tmp_path):
    """A colour study's grid is its first three axes: labels (1, H, W) export, the channel axis is no dimension."""
    us = read_study(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm")
    assert us.is_rgb
    labels = some_labels(us.array.shape[:3])
    out = export_labels(labels, us, tmp_path / "us.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), labels)
    np.testing.assert_array_equal(read_dicom_seg(export_labels(labels, us, tmp_path / "us.dcm"), us).labels.array,
                                  np.where(labels == 3, 2, labels))
    with pytest.raises(ExportError) as e:
        export_labels(np.zeros((1, 3, 4), np.uint8), us, tmp_path / "x.nii.gz")
    assert str(e.value) == f"{tmp_path / 'x.nii.gz'}: label array (1, 3, 4) does not match the study grid (1, 240, 320)"


@pytest.mark.parametrize("unit, factor", [(1, 1e-3), (3, 1e3)], ids=["metres", "micrometres"])
def test_a_label_of_a_nifti_in_metres_overlays_it_where_itk_and_slicer_put_it(unit, factor, tmp_path):
    """xyzt_units metres (or micrometres): ITK, hence 3D Slicer, scales spacing and origin to mm; medseg read
    the numbers as mm, so its label (written in mm) was 1000 times too small over the image in Slicer."""
    from tests.hostile.corpus import _nifti, _volume

    affine = np.diag([0.8 * factor, 0.9 * factor, 2.0 * factor, 1.0])
    affine[:3, 3] = np.array([10.0, 20.0, -30.0]) * factor

    def in_unit(header):
        header["xyzt_units"] = unit | 8  # + seconds

    source = _nifti(tmp_path / "study.nii.gz", _volume(4, (12, 10, 6)), affine, edit=in_unit)
    volume = read_study(source)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.9, 2.0), rtol=1e-5)
    assert volume.source.geometry.endswith(f"(xyzt_units {unit}) scaled to mm")
    out = export_labels(some_labels(volume.array.shape[:3]), volume, tmp_path / "labels.nii.gz", {1: "a", 3: "b"})
    image, label = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-6)
    assert int(nib.load(str(out)).header["xyzt_units"]) & 7 == 2  # the label map says mm, which its numbers are
    again = read_study(out)
    np.testing.assert_allclose(again.spacing, volume.spacing, rtol=1e-5)
    np.testing.assert_allclose(again.origin, volume.origin, atol=1e-3)


@pytest.mark.parametrize("unit", [4, 5, 6, 7])
def test_a_nifti_spatial_unit_code_that_nifti_does_not_define_is_refused_not_read_as_mm(unit, tmp_path):
    """xyzt_units & 7 of 4-7 is no unit of NIfTI-1 (1 m, 2 mm, 3 um); ITK and nibabel read it as mm without a
    word, and medseg opened the real CT at 0.957 mm as if that were known (session 17: doubtful geometry is
    refused, not guessed)."""
    from data.readers import StudyError

    source = nib.load(str(DATA / "ct_head_0051_slabA_image.nii.gz"))
    image = nib.Nifti1Image(np.asarray(source.dataobj), source.affine, source.header)
    image.header["xyzt_units"] = unit | 8  # + seconds
    path = tmp_path / "odd_units.nii.gz"
    nib.save(image, str(path))
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value) == (f"{path}: xyzt_units {unit | 8}: spatial unit code {unit} is not defined by NIfTI-1 (0 "
                            "unknown, 1 metres, 2 millimetres, 3 micrometres), so the size and place of the image are "
                            "in doubt; set xyzt_units to the unit its sform/pixdim are in (2 for mm)")


def test_a_nifti_in_mm_under_the_metres_code_is_refused_naming_xyzt_units(tmp_path):
    """The real CT (origin about 122 mm) saved with xyzt_units 1: read as metres, as ITK and Slicer read it, its
    origin is 122 m off and no label map can hold it; the refusal blamed ImagePositionPatient / the sform."""
    from data.readers import StudyError

    source = nib.load(str(DATA / "ct_head_0051_slabA_image.nii.gz"))
    image = nib.Nifti1Image(np.asarray(source.dataobj), source.affine, source.header)
    image.header["xyzt_units"] = 1 | 8
    path = tmp_path / "metres.nii.gz"
    nib.save(image, str(path))
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value).endswith("a label map cannot hold such a geometry (check the NIfTI's xyzt_units: it says "
                                 "metres, read as ITK and 3D Slicer read them, and a file in mm under that code is "
                                 "1000 times off)")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_umasks_mode_and_a_replaced_file_keeps_its_own(umask, tmp_path):
    """Every label map, SEG and mask was written 0600 (mkstemp's mode), whatever the umask: a PACS importer or a
    colleague reading the shared folder got "Permission denied", and a 0644 file replaced became 0600."""
    import os

    from data.writers import write_png_mask

    series = read_study(DATA / "dicom" / "ct_head_0051_series_k050-061")
    labels = np.zeros(series.array.shape, np.uint8)
    labels[3, 100:140, 90:150] = 1
    old = os.umask(umask)
    try:
        written = [export_labels(labels, series, tmp_path / "labels.nii.gz"), export_labels(labels, series, tmp_path / "seg.dcm"),
                   write_png_mask(labels[3], tmp_path / "mask.png")]
        for path in written:
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
        os.chmod(written[1], 0o664)
        export_labels(labels, series, written[1])  # written again over a group-writable file
        assert written[1].stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
