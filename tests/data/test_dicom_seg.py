"""DICOM-SEG: written with highdicom from a DICOM series, valid for dciodvfy, read back voxel for voxel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data.dicom_seg import DicomSegError, read_dicom_seg, write_dicom_seg
from data.readers import read_study
from tests.conftest import DATA

CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"
LIVER_SEG = DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm"
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed; `make test` installs it")


def dciodvfy_errors(path) -> list[str]:
    """Lines of dciodvfy's report that start with 'Error' (warnings are allowed)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def ct():
    return read_study(CT_SERIES)


@pytest.fixture(scope="module")
def ct_labels():
    """Real structures on the series grid: head soft tissue (1) and bone (2), k 12..23 of the slab labels."""
    return np.asarray(read_study(DATA / "ct_head_0051_slabA_label.nii.gz").array[12:24], dtype=np.uint8)


def test_series_matches_slab_labels_grid(ct, ct_labels):
    assert ct.array.shape == ct_labels.shape == (12, 256, 256)


@needs_dciodvfy
def test_seg_is_valid_and_reads_back_voxel_for_voxel(ct, ct_labels, tmp_path):
    labels = ct_labels.copy()
    labels[:3] = 0  # empty slices: their frames are omitted and must read back as zeros
    out = write_dicom_seg(labels, ct, tmp_path / "seg.dcm", label_names={1: "head", 2: "skull"},
                          colours={1: (255, 200, 0), 2: (0, 160, 255)}, model_name="litemedsam")
    assert dciodvfy_errors(out) == []
    back = read_dicom_seg(out, ct)
    np.testing.assert_array_equal(back.labels.array, labels)
    assert back.labels.spacing == ct.spacing and back.labels.origin == ct.origin and back.labels.direction == ct.direction
    assert back.names == {1: "head", 2: "skull"}
    for number, rgb in {1: (255, 200, 0), 2: (0, 160, 255)}.items():  # via CIELab: within 1 per channel
        assert np.abs(np.subtract(back.colours[number], rgb)).max() <= 1
    assert back.algorithm.startswith("litemedsam (medseg ")


def test_seg_references_the_source_series_and_model(ct, ct_labels, tmp_path):
    out = write_dicom_seg(ct_labels, ct, tmp_path / "seg.dcm", label_names={1: "head", 2: "skull"}, model_name="litemedsam")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == ct.source.study_instance_uid
    assert ds.FrameOfReferenceUID == ct.source.frame_of_reference_uid
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct.source.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} == set(ct.source.sop_instance_uids)
    seg1 = ds.SegmentSequence[0]
    assert seg1.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg1.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "litemedsam"
    assert seg1.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Head"  # coded from the name where SNOMED has it
    # every non-empty (slice, segment) pair is one frame, no more
    expected = sum(int((ct_labels[k] == v).any()) for k in range(12) for v in (1, 2))
    assert int(ds.NumberOfFrames) == expected


@pytest.mark.parametrize(
    "values, names",
    [
        ((71, 78), {71: "caudate L", 78: "thalamus R"}),  # AAL codes -> segments 1, 2
        ((5,), {}),  # unnamed label -> "label 5"
    ],
)
def test_label_values_become_segments_in_order(ct, tmp_path, values, names):
    labels = np.zeros(ct.array.shape, np.uint8)
    for n, v in enumerate(values):
        labels[4 + n, 100:120, 100 + 30 * n : 120 + 30 * n] = v
    back = read_dicom_seg(write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names=names), ct)
    for n, v in enumerate(values, start=1):
        np.testing.assert_array_equal(back.labels.array == n, labels == v)
        assert back.names[n] == names.get(v, f"label {v}")


def test_all_empty_labels_are_refused_and_nothing_is_written(ct, tmp_path):
    with pytest.raises(DicomSegError, match="nothing is segmented"):
        write_dicom_seg(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "e.dcm", label_names={1: "liver"})
    assert list(tmp_path.iterdir()) == []


def test_named_labels_without_voxels_get_no_segment(ct, ct_labels, tmp_path):
    labels = np.where(ct_labels == 1, 1, 0).astype(np.uint8)
    ds = pydicom.dcmread(write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names={1: "head", 2: "skull", 3: "x"}))
    assert [str(d.SegmentLabel) for d in ds.SegmentSequence] == ["head"]


def test_coded_anatomy_from_known_names_generic_code_otherwise(ct, ct_labels, tmp_path):
    ds = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "s.dcm", label_names={1: "liver", 2: "my blob"}))
    liver, blob = ds.SegmentSequence
    assert (liver.SegmentedPropertyTypeCodeSequence[0].CodeValue, liver.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("10200004", "SCT")
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical structure
    assert blob.SegmentLabel == "my blob"
    assert blob.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # Tissue: the generic pair
    assert blob.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"


def test_every_frame_references_its_source_image(ct, ct_labels, tmp_path):
    ds = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "s.dcm", label_names={1: "head", 2: "skull"}))
    k_of = {uid: k for k, uid in enumerate(ct.source.sop_instance_uids)}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
        k = k_of[ref.ReferencedSOPInstanceUID]
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, ct.index_to_physical(np.array([0.0, 0.0, k])), atol=1e-3)


@needs_dciodvfy
def test_overlapping_structures_are_one_segment_each(ct, ct_labels, tmp_path):
    head, everything = ct_labels == 1, ct_labels >= 1  # 'everything' contains 'head'
    stack = np.stack([head, everything]).astype(np.uint8)
    out = write_dicom_seg(stack, ct, tmp_path / "o.dcm", label_names={1: "head", 2: "tissue"})
    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "BINARY" and len(ds.SegmentSequence) == 2
    import highdicom as hd

    seg = hd.seg.segread(out)
    for number, mask in ((1, head), (2, everything)):
        got = seg.get_pixels_by_source_instance(list(ct.source.sop_instance_uids), segment_numbers=[number],
                                                assert_missing_frames_are_empty=True)[..., 0]
        np.testing.assert_array_equal(got, mask)


needs_dcmqi = pytest.mark.skipif(shutil.which("segimage2itkimage") is None and not (
    Path(sys.executable).parent / "segimage2itkimage").exists(), reason="dcmqi (PyPI) not installed")


def dcmqi_read(seg_path, out_dir, reference) -> dict[int, np.ndarray]:
    """segimage2itkimage (dcmqi, an independent reader): segment number -> mask resampled onto the source grid."""
    import SimpleITK as sitk

    exe = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    out_dir.mkdir()
    run = subprocess.run([exe, "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir), "--outputType", "nrrd"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-1000:]
    meta = json.loads((out_dir / "meta.json").read_text())
    target = sitk.Image(*reversed(reference.array.shape[:3]), sitk.sitkUInt8)
    reference.copy_geometry_to(target)
    masks = {}
    for n, group in enumerate(meta["segmentAttributes"], start=1):
        image = sitk.ReadImage(str(out_dir / f"{n}.nrrd"))
        on_grid = sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        for attrs in group:
            masks[int(attrs["labelID"])] = on_grid == int(attrs["labelID"])
    return masks


@needs_dcmqi
@pytest.mark.parametrize("overlap", [False, True])
def test_dcmqi_reads_it_back_voxel_identical_on_the_source_grid(ct, ct_labels, tmp_path, overlap):
    labels = ct_labels.copy()
    labels[:3] = 0  # omitted frames: dcmqi must still place the rest on the right slices
    if overlap:
        data, expected = np.stack([labels == 1, labels >= 1]).astype(np.uint8), {1: labels == 1, 2: labels >= 1}
    else:
        data, expected = labels, {1: labels == 1, 2: labels == 2}
    out = write_dicom_seg(data, ct, tmp_path / "s.dcm", label_names={1: "head", 2: "skull"})
    got = dcmqi_read(out, tmp_path / "dcmqi", ct)
    assert sorted(got) == [1, 2]
    for number, mask in expected.items():
        assert int(got[number].sum()) == int(mask.sum()) > 0
        np.testing.assert_array_equal(got[number], mask)


def test_position_based_read_when_uids_are_unknown(ct, ct_labels, tmp_path):
    out = write_dicom_seg(ct_labels, ct, tmp_path / "seg.dcm")
    no_uids = replace(ct, source=replace(ct.source, sop_instance_uids=()))
    np.testing.assert_array_equal(read_dicom_seg(out, no_uids).labels.array, ct_labels)


def test_own_grid_keeps_patient_positions(ct, ct_labels, tmp_path):
    """Without a reference the SEG's frames come back with their own geometry: same physical voxels."""
    out = write_dicom_seg(ct_labels, ct, tmp_path / "seg.dcm")
    own = read_dicom_seg(out).labels
    ks, js, is_ = np.nonzero(own.array)
    pts = own.index_to_physical(np.stack([is_, js, ks], axis=1).astype(float))
    # back to source indices
    rel = (pts - np.asarray(ct.origin)) @ ct.direction_matrix / np.asarray(ct.spacing)
    ijk = np.rint(rel).astype(int)
    np.testing.assert_allclose(rel, ijk, atol=1e-3)
    np.testing.assert_array_equal(ct_labels[ijk[:, 2], ijk[:, 1], ijk[:, 0]], own.array[ks, js, is_])
    assert own.array.sum() == ct_labels.astype(np.int64).sum()


def test_third_party_liver_seg_reads_on_its_own_geometry():
    """pydicom's liver_1frame.dcm (dcmqi); its CT is absent, so its own frame and geometry come back."""
    seg = read_dicom_seg(LIVER_SEG)
    vol = seg.labels
    assert vol.array.shape == (1, 512, 512)
    assert int(vol.array.sum()) == 36233 and set(np.unique(vol.array)) == {0, 1}
    np.testing.assert_allclose(vol.spacing[:2], (0.810547, 0.810547), rtol=1e-6)
    np.testing.assert_allclose(vol.origin, (-235.2, -226.8, -128.69), atol=1e-4)
    np.testing.assert_allclose(vol.direction_matrix[:, :2], [[1, 0], [0, 1], [0, 0]], atol=1e-6)
    assert seg.names == {1: "Liver"}


def test_seg_of_another_frame_of_reference_is_refused(ct):
    with pytest.raises(DicomSegError, match="frame of reference"):
        read_dicom_seg(LIVER_SEG, ct)


def test_nifti_source_cannot_become_a_seg(tmp_path):
    vol = read_study(DATA / "mr_t1_colin27_slabA_image.nii.gz")
    with pytest.raises(DicomSegError, match=r"\.nii\.gz"):
        write_dicom_seg(np.zeros(vol.array.shape, np.uint8), vol, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_wrong_shape_is_refused(ct, tmp_path):
    with pytest.raises(DicomSegError, match="does not match the source grid"):
        write_dicom_seg(np.zeros((3, 256, 256), np.uint8), ct, tmp_path / "x.dcm")


def test_deidentify_hook_sees_the_dataset_before_writing(ct, ct_labels, tmp_path):
    def strip(ds):
        ds.PatientName = "Anonymous"
        ds.PatientID = "X"

    ds = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "d.dcm", deidentify=strip))
    assert str(ds.PatientName) == "Anonymous" and ds.PatientID == "X"
