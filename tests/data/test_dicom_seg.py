"""DICOM-SEG: written with highdicom from a DICOM series, valid for dciodvfy, read back voxel for voxel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data.dicom_seg import MAX_SEGMENTS, DicomSegError, read_dicom_seg, write_dicom_seg
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


@pytest.mark.parametrize("name", ["__class__", "__doc__", "__init__", "_concepts", "__dict__", "__module__"])
def test_a_label_named_like_pythons_own_attributes_is_free_text_not_an_error(ct, ct_labels, tmp_path, name):
    """The name was looked up as an attribute of pydicom's SNOMED dictionary: ``__class__`` and ``__doc__`` came
    back as a type and a string, and the export failed with TypeError (the UI's Export: a red Error, a traceback in
    the log); ``__dict__`` was coded as whatever that dict unpacked to (session 18). Only SNOMED concepts count."""
    labels = np.where(ct_labels == 1, 1, 0).astype(np.uint8)
    ds = pydicom.dcmread(write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names={1: name}))
    (segment,) = ds.SegmentSequence
    assert segment.SegmentLabel == name
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # Tissue: the generic pair
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"


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


# --- refusals: one whole message naming the file and the fix; nothing written ---------------------
def _refused(call, out: Path) -> str:
    with pytest.raises(DicomSegError) as e:
        call()
    assert not out.exists() and not any(out.parent.glob(f".{out.name}.*"))  # no file, no temporary left
    return str(e.value)


def test_label_arrays_that_cannot_be_a_seg_are_refused_with_the_reason(ct, tmp_path):
    out = tmp_path / "x.dcm"
    grid = np.zeros(ct.array.shape, np.uint8)

    def write(labels, **kw):
        return lambda: write_dicom_seg(labels, ct, out, **kw)

    assert _refused(write(np.zeros((3, 256, 256), np.uint8)), out) == (
        f"{out}: label array (3, 256, 256) does not match the source grid (12, 256, 256)")
    assert _refused(write(np.zeros((2, 3, 256, 256), np.uint8)), out) == (
        f"{out}: mask stack (2, 3, 256, 256) does not match (segments, *(12, 256, 256)) of the source grid")
    stack = np.zeros((2, *ct.array.shape), np.uint8)
    stack[0, 5, 10, 10] = 2
    assert _refused(write(stack), out) == f"{out}: a stack of overlapping masks must hold 0/1 (or bool) values"
    assert _refused(write(grid.astype(np.float32) + 1), out) == (
        f"{out}: labels must be integers (0 = background), got float32")
    negative = grid.astype(np.int16)
    negative[5, 10, 10], negative[6, 10, 10] = -3, 1
    assert _refused(write(negative), out) == f"{out}: labels must be >= 0, found -3"
    assert _refused(write(grid), out) == (
        f"{out}: nothing is segmented (every label is empty); a DICOM-SEG needs at least one non-empty segment")
    one = grid.copy()
    one[5, 10:20, 10:20] = 1
    assert _refused(write(one, colours={1: (300, 0, 0)}), out) == "colour of label 1 must be 3 values in 0..255, got (300, 0, 0)"
    assert _refused(write(one, colours={1: (-1, 0, 0)}), out) == "colour of label 1 must be 3 values in 0..255, got (-1, 0, 0)"
    assert _refused(write(one, colours={1: (0, 256, 0)}), out) == "colour of label 1 must be 3 values in 0..255, got (0, 256, 0)"
    assert _refused(write(one, colours={1: (9, 9)}), out) == "colour of label 1 must be 3 values in 0..255, got (9, 9)"


def test_a_label_of_thousands_of_values_is_refused_at_once_not_a_memory_bomb(ct, tmp_path):
    """Session 23: each label value became a binary layer of the whole grid, twice: a label server PUT (PACS datastore)
    of a 12 x 256 x 256 label holding 65535 values asked for about 100 GB (MemoryError under a 6 GB limit). Now the
    pixels go to highdicom as one label map of segment numbers, and more than MAX_SEGMENTS segments are refused in one
    line."""
    out = tmp_path / "x.dcm"
    many = (np.arange(np.prod(ct.array.shape[:3])) % 65535 + 1).astype(np.uint16).reshape(ct.array.shape[:3])
    started = time.thread_time()  # this thread's CPU, not the wall clock a niced CI worker stretches (session 25)
    assert _refused(lambda: write_dicom_seg(many, ct, out), out) == (
        f"{out}: 65535 labels, each a segment; medseg writes at most {MAX_SEGMENTS} segments in a DICOM-SEG (each "
        "is a frame on every slice it touches): write a NIfTI label map, or merge labels")
    assert time.thread_time() - started < 2


def test_bool_masks_and_edge_colours_are_accepted(ct, tmp_path):
    """A bool label map is one segment; colours 0 and 255 are in range; a stack of bool masks too."""
    mask = np.zeros(ct.array.shape, bool)
    mask[5, 10:20, 10:20] = True
    back = read_dicom_seg(write_dicom_seg(mask, ct, tmp_path / "b.dcm", colours={1: (0, 255, 0)}), ct)
    np.testing.assert_array_equal(back.labels.array, mask)
    assert back.names == {1: "label 1"} and np.abs(np.subtract(back.colours[1], (0, 255, 0))).max() <= 1
    stack = np.stack([mask, mask])
    ds = pydicom.dcmread(write_dicom_seg(stack, ct, tmp_path / "s.dcm", label_names={1: "head", 2: "tissue"}))
    assert [(int(d.SegmentNumber), d.SegmentLabel) for d in ds.SegmentSequence] == [(1, "head"), (2, "tissue")]


def test_sources_that_cannot_carry_a_seg_are_refused_with_the_reason(ct, ct_labels, tmp_path):
    out = tmp_path / "x.dcm"
    nifti = read_study(DATA / "mr_t1_colin27_slabA_image.nii.gz")
    assert _refused(lambda: write_dicom_seg(np.ones(nifti.array.shape, np.uint8), nifti, out), out) == (
        f"{out}: DICOM-SEG needs a DICOM source series (this study is nifti); write a NIfTI label map (.nii.gz) instead")
    in_memory = replace(ct, source=replace(ct.source, format=""))
    assert _refused(lambda: write_dicom_seg(ct_labels, in_memory, out), out) == (
        f"{out}: DICOM-SEG needs a DICOM source series (this study is in memory); write a NIfTI label map (.nii.gz) instead")
    no_files = replace(ct, source=replace(ct.source, files=()))
    assert _refused(lambda: write_dicom_seg(ct_labels, no_files, out), out).startswith(
        f"{out}: DICOM-SEG needs a DICOM source series (this study is dicom-series)")
    multi = replace(ct, source=replace(ct.source, files=ct.source.files[:1]))
    assert _refused(lambda: write_dicom_seg(ct_labels, multi, out), out) == (
        f"{out}: the source has 1 DICOM files for 12 slices (a multi-frame source); "
        "write a NIfTI label map (.nii.gz) instead")
    # a series split into enhanced files of one frame each (session 22: it opens, stacked by the frames' positions):
    # highdicom said "Only one source image should be provided in case images are multi-frame images."
    from tests.hostile import dicom_bytes as db

    stack = db.pixels(16, 16, seed=3, frames=3)
    for n in range(3):
        ds = db.enhanced_multiframe(stack[n:n + 1], [1.5 * n])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.2001.{n + 1}"
        db.write(ds, tmp_path / "split" / f"{n}.dcm")
    split = read_study(tmp_path / "split")
    assert _refused(lambda: write_dicom_seg(np.ones(split.array.shape, np.uint8), split, out), out) == (
        f"{out}: the source is a series split into 3 enhanced multi-frame files; a DICOM-SEG references one such "
        "file: write a NIfTI label map (.nii.gz) instead")
    # a source file deleted (or replaced by something else) since the study was opened
    copy = tmp_path / "series"
    shutil.copytree(CT_SERIES, copy)
    study = read_study(copy)
    gone = Path(study.source.files[4])
    gone.write_bytes(b"not a DICOM file")
    message = _refused(lambda: write_dicom_seg(ct_labels, study, out), out)
    assert message.startswith(f"{out}: the source image {gone} can no longer be read (") and message.endswith(
        "); reopen the study")
    gone.unlink()
    message = _refused(lambda: write_dicom_seg(ct_labels, study, out), out)
    assert message.startswith(f"{out}: the source image {gone} can no longer be read ([Errno 2] No such file")


def test_source_without_type2_patient_attributes_still_gives_a_valid_seg(ct_labels, tmp_path):
    """Headers written by a script may lack the patient/study attributes; the SEG has them, empty."""
    copy = tmp_path / "series"
    copy.mkdir()
    for f in sorted(CT_SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(copy / f.name)
    study = read_study(copy)
    out = write_dicom_seg(ct_labels, study, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        assert keyword in ds and str(ds[keyword].value or "") == "", keyword
    np.testing.assert_array_equal(read_dicom_seg(out, study).labels.array, ct_labels)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(out) == []


def test_unreadable_seg_and_another_frame_of_reference_are_named(ct, tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM? no")
    with pytest.raises(DicomSegError) as e:
        read_dicom_seg(bad)
    assert str(e.value).startswith(f"{bad}: not a readable DICOM-SEG (")
    with pytest.raises(DicomSegError) as e:
        read_dicom_seg(LIVER_SEG, ct)
    seg_for = pydicom.dcmread(LIVER_SEG, stop_before_pixels=True).FrameOfReferenceUID
    assert str(e.value) == (f"{LIVER_SEG}: the SEG lies in frame of reference {seg_for}, the study in "
                            f"{ct.source.frame_of_reference_uid}: it belongs to another study")


def test_own_grid_geometry_and_identity_equal_the_source_read_by_simpleitk(ct, ct_labels, tmp_path):
    """Read without its images, a SEG comes back on the source's grid as SimpleITK reads the source
    series (spacing, origin, direction, slice order), with the SEG's own identity."""
    import SimpleITK as sitk

    labels = ct_labels.copy()
    labels[:3] = 0  # the SEG's own extent starts at source slice 3
    out = write_dicom_seg(labels, ct, tmp_path / "seg.dcm")
    own = read_dicom_seg(out).labels
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_SERIES)))
    source = reader.Execute()
    np.testing.assert_allclose(own.spacing, source.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(own.direction, source.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(own.origin, source.TransformIndexToPhysicalPoint((0, 0, 3)), atol=1e-3)
    np.testing.assert_array_equal(own.array, labels[3:])
    assert own.modality == "SEG"
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert own.source == replace(own.source, path=str(out), format="dicom-seg", study_instance_uid=ds.StudyInstanceUID,
                                 series_instance_uid=ds.SeriesInstanceUID, frame_of_reference_uid=ds.FrameOfReferenceUID,
                                 sop_instance_uids=(ds.SOPInstanceUID,), sop_class_uid=ds.SOPClassUID, files=(str(out),))
    assert own.source.geometry == "" and own.source.notes == ()


def test_position_based_read_puts_a_partial_seg_on_its_slices(ct, ct_labels, tmp_path):
    """Without SOP Instance UIDs the frames go by position: slices the SEG does not cover read as 0,
    also on an RGB study."""
    labels = ct_labels.copy()
    labels[:3] = 0
    out = write_dicom_seg(labels, ct, tmp_path / "seg.dcm")
    no_uids = replace(ct, source=replace(ct.source, sop_instance_uids=()))
    np.testing.assert_array_equal(read_dicom_seg(out, no_uids).labels.array, labels)
    rgb = replace(no_uids, array=np.repeat(ct.array[..., None].clip(0, 255).astype(np.uint8), 3, axis=-1))
    np.testing.assert_array_equal(read_dicom_seg(out, rgb).labels.array, labels)


def test_seg_without_a_frame_of_reference_is_refused_naming_the_file(ct, ct_labels, tmp_path):
    ds = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "seg.dcm"))
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "nofor.dcm")
    no_uids = replace(ct, source=replace(ct.source, sop_instance_uids=()))
    for reference in (None, no_uids):  # read alone, or placed by position onto a study
        with pytest.raises(DicomSegError) as e:
            read_dicom_seg(tmp_path / "nofor.dcm", reference)
        message = str(e.value)
        assert message.startswith(f"{tmp_path / 'nofor.dcm'}: the SEG frames do not form a regular volume (")
        assert message.endswith(")")


def test_segment_names_colours_and_label_length(ct, tmp_path):
    """Two-word anatomy names are coded too; unnamed labels get the default palette in segment order,
    cycling after the 8th; a label is cut at 64 characters (the LO limit)."""
    labels = np.zeros(ct.array.shape, np.uint8)
    for v in range(1, 11):
        labels[v, 10:20, 10 * v : 10 * v + 5] = v
    long_name = "x" * 70
    out = write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names={1: "spinal cord", 2: "lateral ventricle", 3: long_name})
    ds = pydicom.dcmread(out)
    assert [d.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for d in ds.SegmentSequence[:2]] == [
        "Spinal cord", "Lateral Ventricle"]
    assert ds.SegmentSequence[2].SegmentLabel == "x" * 64
    from data.dicom_seg import DEFAULT_COLOURS

    back = read_dicom_seg(out, ct)
    for number in range(1, 11):
        expected = DEFAULT_COLOURS[(number - 1) % 8]
        assert np.abs(np.subtract(back.colours[number], expected)).max() <= 1, number


def test_a_single_dicom_file_can_carry_a_seg(tmp_path):
    study = read_study(DATA / "dicom" / "pydicom_CT_small.dcm")
    assert study.source.format == "dicom"
    labels = np.zeros(study.array.shape, np.uint8)
    labels[0, 40:60, 50:80] = 1
    back = read_dicom_seg(write_dicom_seg(labels, study, tmp_path / "s.dcm"), study)
    np.testing.assert_array_equal(back.labels.array, labels)


def test_third_party_seg_without_algorithm_has_an_empty_algorithm():
    assert read_dicom_seg(LIVER_SEG).algorithm == ""


def test_source_uids_win_over_positions(ct, ct_labels, tmp_path):
    """A SEG referencing the study's images lands on them by SOP Instance UID, even when the study's
    geometry was changed since (here: shifted 20 mm), and a SEG made on part of a series reads onto
    the whole series with zeros on the slices it does not cover."""
    out = write_dicom_seg(ct_labels, ct, tmp_path / "seg.dcm")
    shifted = replace(ct, origin=tuple(o + 20.0 for o in ct.origin))
    np.testing.assert_array_equal(read_dicom_seg(out, shifted).labels.array, ct_labels)
    part = tmp_path / "part"
    part.mkdir()
    for f in ct.source.files[:8]:
        shutil.copy(f, part / Path(f).name)
    first8 = read_study(part)
    partial = write_dicom_seg(ct_labels[:8], first8, tmp_path / "part.dcm")
    expected = ct_labels.copy()
    expected[8:] = 0
    np.testing.assert_array_equal(read_dicom_seg(partial, ct).labels.array, expected)


def test_label_maps_read_back_as_uint8_and_keep_segment_numbers_past_255(ct, ct_labels, tmp_path):
    """uint8 as long as the segment numbers fit; 256 and more keep their value in uint16. (A real SEG
    of 257 segments takes ~17 s to write and read with highdicom, so the rule is checked on arrays.)"""
    from data.dicom_seg import _smallest_uint

    out = write_dicom_seg((ct_labels[:, :, :] == 2).astype(np.uint8), ct, tmp_path / "s.dcm")
    assert read_dicom_seg(out, ct).labels.array.dtype == np.uint8 and read_dicom_seg(out).labels.array.dtype == np.uint8
    for top, dtype in ((0, np.uint8), (255, np.uint8), (256, np.uint16), (257, np.uint16)):
        array = np.array([[[0, top]]], dtype=np.uint16)
        small = _smallest_uint(array)
        assert small.dtype == dtype and int(small.max()) == top, top


def test_version_fallback_when_medseg_is_not_installed(monkeypatch):
    import importlib.metadata

    from data import dicom_seg

    assert dicom_seg.medseg_version() == _pyproject_version()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert dicom_seg.medseg_version() == "0+unknown"


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]


def test_seg_header_names_medseg_the_model_and_the_series(ct, ct_labels, tmp_path):
    """What a PACS or viewer lists: series 900, instance 1, medseg as manufacturer/model/software, the
    model and medseg's version as the algorithm; the series description cut at 64 characters."""
    ds = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "s.dcm"), stop_before_pixels=True)
    version = _pyproject_version()
    assert (ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription) == (900, 1, "medseg segmentation")
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions, ds.DeviceSerialNumber) == (
        "medseg", "medseg", version, "0")
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion, algorithm.AlgorithmSource) == (
        "litemedsam", f"medseg {version}", "medseg")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    long = pydicom.dcmread(write_dicom_seg(ct_labels, ct, tmp_path / "l.dcm", series_description="d" * 70,
                                           model_name="medsam"), stop_before_pixels=True)
    assert long.SeriesDescription == "d" * 64
    assert long.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medsam"


def test_seg_on_an_rgb_ultrasound_image(tmp_path):
    """A colour source (one RGB US frame) carries a SEG on its grid: the channel axis is not a dimension."""
    us = read_study(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm")
    labels = np.zeros(us.array.shape[:3], np.uint8)
    labels[0, 50:80, 60:90] = 1
    np.testing.assert_array_equal(read_dicom_seg(write_dicom_seg(labels, us, tmp_path / "us.dcm"), us).labels.array, labels)


def test_a_source_changed_since_opening_is_refused_naming_the_file(tmp_path):
    """One image of the series now belongs to another series: named, with the attribute (session 17; before,
    highdicom's reason after the output name: "Source images must all be part of the same series ...")."""
    copy = tmp_path / "series"
    shutil.copytree(CT_SERIES, copy)
    study = read_study(copy)
    ds = pydicom.dcmread(study.source.files[4])
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(study.source.files[4])
    labels = np.zeros(study.array.shape, np.uint8)
    labels[5, 10:20, 10:20] = 1
    out = tmp_path / "x.dcm"
    message = _refused(lambda: write_dicom_seg(labels, study, out), out)
    first = pydicom.dcmread(study.source.files[0]).SeriesInstanceUID
    assert message == (f"{out}: the source image {Path(study.source.files[4]).name} has SeriesInstanceUID 1.2.3.4.5 "
                       f"where {Path(study.source.files[0]).name} has {first}; a DICOM-SEG references one study and "
                       "series: fix the source's UIDs, or write a NIfTI label map (.nii.gz) instead")


@needs_dciodvfy
def test_label_names_typed_in_any_language_or_with_odd_characters_survive_as_one_valid_value(ct, tmp_path):
    """A name with a backslash became two values (["a", "b"]), one with a newline or an escape sequence an
    invalid LO, and "Läsion" or "肝臓" was written as "?" (no character set; pydicom's warning was hidden)."""
    labels = np.zeros(ct.array.shape, np.uint8)
    for v in range(1, 6):
        labels[v, 10:20, 10 * v : 10 * v + 5] = v
    names = {1: "Läsion 肝臓", 2: "left\\right", 3: "line\nbreak\x1b[31m", 4: " \t ", 5: "ü" * 70}
    out = write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names=names, series_description="Befund\\Leber")
    ds = pydicom.dcmread(out)
    assert [str(d.SegmentLabel) for d in ds.SegmentSequence] == [
        "Läsion 肝臓", "left/right", "line break [31m", "label 4", "ü" * 32]  # 64 bytes in UTF-8
    assert ds.SeriesDescription == "Befund/Leber" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert dciodvfy_errors(out) == []
    np.testing.assert_array_equal(read_dicom_seg(out, ct).labels.array, labels)


@needs_dciodvfy
@pytest.mark.parametrize("orientation", [None, ["A", "F"]], ids=["none", "A-F"])
def test_a_seg_of_an_image_without_a_patient_frame_is_valid_and_keeps_its_orientation(orientation, tmp_path):
    """An ultrasound image has no Image Orientation/Position: the SEG carries Patient Orientation (Type 2C),
    the source's or empty; dciodvfy said 'Missing attribute Type 2C ... <PatientOrientation>' before."""
    source = pydicom.dcmread(DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm")
    if orientation:
        source.PatientOrientation = orientation
    source.save_as(tmp_path / "us.dcm")
    us = read_study(tmp_path / "us.dcm")
    labels = np.zeros(us.array.shape[:3], np.uint8)
    labels[0, 50:80, 60:90] = 1
    out = write_dicom_seg(labels, us, tmp_path / "seg.dcm")
    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert "FrameOfReferenceUID" not in seg
    assert list(seg.PatientOrientation or []) == (orientation or [])
    np.testing.assert_array_equal(read_dicom_seg(out, us).labels.array, labels)


@needs_dciodvfy
def test_a_segment_name_with_a_lone_surrogate_is_written_with_a_replacement_character(ct, tmp_path):
    """Names reach the writer from scripts and the label server too: half an emoji ("\\ud83d") made pydicom's UTF-8
    encoder raise, and no SEG was written. It becomes U+FFFD; the SEG is valid."""
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[3, 10:20, 10:20] = 1
    out = write_dicom_seg(labels, ct, tmp_path / "s.dcm", label_names={1: json.loads('"liver \\ud83d"')})
    assert dciodvfy_errors(out) == []
    assert pydicom.dcmread(out).SegmentSequence[0].SegmentLabel == "liver \ufffd"


@pytest.mark.parametrize("keyword, value, fault", [
    ("SOPInstanceUID", None, "has no SOPInstanceUID"),
    ("StudyInstanceUID", None, "has no StudyInstanceUID"),
    ("SeriesInstanceUID", "", "has no SeriesInstanceUID"),
    ("SOPInstanceUID", "not a uid!!", "has SOPInstanceUID 'not a uid!!', which is no DICOM UID"),
])
def test_a_source_without_valid_uids_to_reference_is_refused_naming_the_attribute(tmp_path, keyword, value, fault):
    """A SEG references its source by these UIDs. Before: 'highdicom could not build the DICOM-SEG ('FileDataset'
    object has no attribute 'SOPInstanceUID')', and an invalid UID was written into the SEG (exit 0) with pydicom's
    'Invalid value for VR UI' note: a SEG a PACS refuses or cannot link to its images."""
    ds = pydicom.dcmread(DATA / "dicom" / "pydicom_CT_small.dcm")
    if value is None:
        delattr(ds, keyword)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setattr(ds, keyword, value)
    ds.save_as(tmp_path / "src.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = read_study(tmp_path / "src.dcm")
    labels = np.zeros(study.array.shape, np.uint8)
    labels[0, 40:60, 50:80] = 1
    out = tmp_path / "s.dcm"
    assert _refused(lambda: write_dicom_seg(labels, study, out), out) == (
        f"{out}: the source image {tmp_path / 'src.dcm'} {fault}; a DICOM-SEG must reference it: write a NIfTI label "
        "map (.nii.gz) instead")
