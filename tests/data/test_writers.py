"""Writers: a failed write leaves the previous file, label values and dtypes survive, PNG masks are
viewable, and each refusal is one message naming what to do (read back with nibabel / PIL)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data.volume import Volume
from data.writers import atomic_output, label_volume_image, write_label_nifti, write_png_labels, write_png_mask

GRID = Volume(np.zeros((3, 4, 5), np.int16), spacing=(0.5, 0.7, 2.0), origin=(10.0, -20.0, 30.0),
              direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def test_atomic_output_replaces_only_on_success_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "new" / "deeper" / "labels.nii.gz"  # missing folders are made
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".labels.nii.gz.") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half writ")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"first"  # the previous file, intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.nii.gz"]
    with atomic_output(tmp_path / "noext") as tmp:
        assert tmp.suffix == ".tmp"
        tmp.write_bytes(b"x")
    assert (tmp_path / "noext").read_bytes() == b"x"


@pytest.mark.parametrize("top, dtype", [(1, np.uint8), (255, np.uint8), (256, np.uint16), (300, np.uint16)])
def test_label_nifti_keeps_values_and_picks_the_smallest_dtype(tmp_path, top, dtype):
    labels = np.zeros(GRID.array.shape, np.int32)
    labels[1, 2, 3], labels[2, 0, 0] = top, 1
    out = write_label_nifti(labels, GRID, tmp_path / "l.nii.gz")
    image = nib.load(str(out))
    assert image.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), labels)
    np.testing.assert_allclose(image.header.get_zooms(), GRID.spacing, rtol=1e-6)
    assert label_volume_image(labels, GRID).GetPixelID() == label_volume_image(labels.astype(dtype), GRID).GetPixelID()


def test_nii_is_plain_and_nii_gz_is_compressed_in_either_case(tmp_path):
    """Upper-case names are accepted (export_format says so); ITK cannot write them itself (bug: a
    RuntimeError from ITK for 'OUT.NII.GZ'), so the temporary has a lower-case suffix."""
    import SimpleITK as sitk

    labels = np.ones(GRID.array.shape, np.uint8)
    for name in ("a.nii", "B.NII"):
        plain = write_label_nifti(labels, GRID, tmp_path / name)
        assert plain.read_bytes()[344:348] == b"n+1\0"  # NIfTI-1 single file, not gzipped
    for name in ("c.nii.gz", "D.NII.GZ"):
        packed = write_label_nifti(labels, GRID, tmp_path / name)
        assert packed.read_bytes()[:2] == b"\x1f\x8b" and gzip.decompress(packed.read_bytes())[344:348] == b"n+1\0"
    for name in ("a.nii", "B.NII", "c.nii.gz", "D.NII.GZ"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / name)).dataobj).transpose(2, 1, 0), labels)
        np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / name)).GetOrigin(), GRID.origin, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.NII", "D.NII.GZ", "a.nii", "c.nii.gz"]


def test_label_writer_refusals_name_the_fix(tmp_path):
    with pytest.raises(ValueError) as e:
        write_label_nifti(np.zeros(GRID.array.shape, np.uint8), GRID, tmp_path / "l.nrrd")
    assert str(e.value) == f"{tmp_path / 'l.nrrd'}: a NIfTI label map must end in .nii or .nii.gz"
    with pytest.raises(ValueError) as e:
        write_label_nifti(np.zeros((3, 4, 6), np.uint8), GRID, tmp_path / "l.nii.gz")
    assert str(e.value) == "label array (3, 4, 6) does not match the source grid (3, 4, 5)"
    with pytest.raises(ValueError) as e:
        write_png_labels(np.full((2, 2), 256), tmp_path / "p.png")
    assert str(e.value) == "a PNG label map holds at most 255 labels"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_png_mask_is_0_and_255_and_png_labels_keep_values(tmp_path):
    mask = np.zeros((6, 7), bool)
    mask[1:3, 2:5] = True
    out = write_png_mask(mask, tmp_path / "m.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), np.where(mask, 255, 0))
    soft = np.where(mask, 0.3, 0.0)  # any positive value is the structure
    with Image.open(write_png_mask(soft, tmp_path / "s.png")) as image:
        np.testing.assert_array_equal(np.asarray(image), np.where(mask, 255, 0))
    labels = np.array([[0, 1, 2], [7, 255, 0]])
    with Image.open(write_png_labels(labels, tmp_path / "l.png")) as image:
        assert image.format == "PNG" and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), labels)


def test_label_map_on_an_rgb_study_grid_and_png_without_a_suffix(tmp_path):
    """An RGB study's grid is its first three axes; a PNG is a PNG whatever the file is called."""
    rgb = Volume(np.zeros((1, 4, 5, 3), np.uint8), spacing=(0.5, 0.5, 1.0))
    labels = np.zeros((1, 4, 5), np.uint8)
    labels[0, 1:3, 2:4] = 2
    out = write_label_nifti(labels, rgb, tmp_path / "rgb.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), labels)
    with pytest.raises(ValueError) as e:
        label_volume_image(np.zeros((1, 4, 6), np.uint8), rgb)
    assert str(e.value) == "label array (1, 4, 6) does not match the source grid (1, 4, 5)"
    for writer, data in ((write_png_mask, labels[0] > 0), (write_png_labels, labels[0])):
        path = writer(data, tmp_path / f"{writer.__name__}_no_suffix")
        with Image.open(path) as image:
            assert image.format == "PNG"
            np.testing.assert_array_equal(np.asarray(image), np.where(labels[0] > 0, 255, 0) if writer is write_png_mask else labels[0])
