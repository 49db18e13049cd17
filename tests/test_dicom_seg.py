"""DICOM-SEG: written with highdicom from a DICOM series, valid for dciodvfy, read back voxel for voxel."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

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


def test_all_empty_labels_still_write_a_readable_seg(ct, tmp_path):
    back = read_dicom_seg(write_dicom_seg(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "e.dcm"), ct)
    assert back.labels.array.shape == ct.array.shape and not back.labels.array.any()


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
