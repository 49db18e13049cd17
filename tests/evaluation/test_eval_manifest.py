"""The evaluation manifest: the shared manifest's slices, transforms and spacing; user manifests; errors."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from evaluation.manifest import CaseLoader, ManifestError, read_manifest
from tests.conftest import DATA

SHARED_MANIFEST = DATA / "manifest.csv"


@pytest.fixture(scope="module")
def shared_cases():
    cases, attributes = read_manifest(SHARED_MANIFEST)
    loader = CaseLoader(SHARED_MANIFEST)
    return cases, attributes, [loader.load(c) for c in cases]


def test_shared_manifest_slices_match_its_own_columns(shared_cases):
    """Every case's GT box, area, size and spacing equal what the data's author wrote down."""
    cases, attributes, loaded = shared_cases
    assert len(cases) == 42 and {"modality", "bbox_xyxy", "gt_area_px"} <= set(attributes)
    for case in loaded:
        a = case.spec.attributes
        rows, cols = np.nonzero(case.gt)
        assert f"{cols.min()},{rows.min()},{cols.max()},{rows.max()}" == a["bbox_xyxy"], case.spec.case_id
        assert int(case.gt.sum()) == int(a["gt_area_px"]), case.spec.case_id
        assert case.image.shape == (int(a["height"]), int(a["width"]), 3) and case.image.dtype == np.uint8
        assert case.spacing == pytest.approx((float(a["row_spacing_mm"]), float(a["col_spacing_mm"])), abs=1e-6)


@pytest.mark.parametrize("transform", ["rot90", "T"])
def test_transform_equals_the_nibabel_definition(shared_cases, transform):
    """`rot90` = np.rot90(nib_vol[:, :, k]) and `T` = nib_vol[:, :, k].T, for image and label."""
    cases, _, loaded = shared_cases
    case = next(c for c in loaded if c.spec.transform == transform)
    spec = case.spec
    label = np.asanyarray(nib.load(str(spec.label)).dataobj)[:, :, spec.slice_index]
    image = np.asanyarray(nib.load(str(spec.image)).dataobj)[:, :, spec.slice_index].astype(np.float64)
    view = np.rot90 if transform == "rot90" else np.transpose
    assert np.array_equal(case.gt, np.isin(view(label), spec.label_values))
    lo, hi = spec.window
    expected = np.round((np.clip(view(image), lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    assert np.array_equal(case.image[..., 0], expected)


def _write_manifest(folder: Path, header: list[str], rows: list[list[object]]) -> Path:
    path = folder / "MANIFEST.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_png_manifest_with_attributes(tmp_path):
    img = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)
    lab = np.zeros((30, 40), np.uint8)
    lab[5:10, 8:20] = 2
    lab[20:25, 30:35] = 7
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(lab).save(tmp_path / "lab.png")
    m = _write_manifest(
        tmp_path,
        ["case_id", "image", "label", "label_values", "site"],
        [["a", "img.png", "lab.png", "", "north"], ["b", "img.png", "lab.png", "7", "south"]],
    )
    cases, attributes = read_manifest(m)
    assert attributes == ["site"] and [c.attributes["site"] for c in cases] == ["north", "south"]
    loader = CaseLoader(m)
    a, b = loader.load(cases[0]), loader.load(cases[1])
    assert a.gt.sum() == 5 * 12 + 5 * 5  # default: any non-zero label
    assert b.gt.sum() == 25 and b.gt[22, 32]
    assert np.array_equal(a.image[..., 0], img) and a.spacing == (1.0, 1.0)
    assert a.spec.structure == "label"


@pytest.mark.parametrize(
    "header,row,match",
    [
        (["case_id", "image"], ["a", "img.png"], "missing column\\(s\\) label"),
        (["case_id", "image", "label"], ["", "img.png", "lab.png"], "line 2, column 'case_id'"),
        (["case_id", "image", "label", "slice_index"], ["a", "img.png", "lab.png", "1.5"], "column 'slice_index'"),
        (["case_id", "image", "label", "transform"], ["a", "img.png", "lab.png", "flip"], "column 'transform'"),
        (["case_id", "image", "label", "norm_lo"], ["a", "img.png", "lab.png", "0"], "give both norm_lo and norm_hi"),
        (["case_id", "image", "label", "label_values"], ["a", "img.png", "lab.png", "1|x"], "'x' is not a number"),
    ],
)
def test_bad_rows_name_line_and_column(tmp_path, header, row, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(_write_manifest(tmp_path, header, [row]))


def test_duplicate_case_ids_are_refused(tmp_path):
    m = _write_manifest(tmp_path, ["case_id", "image", "label"], [["a", "i.png", "l.png"], ["a", "i.png", "l.png"]])
    with pytest.raises(ManifestError, match="line 3.*repeats line 2"):
        read_manifest(m)


@pytest.mark.parametrize(
    "slice_index,image,match",
    [
        ("", "mr_t1_colin27_slabA_image.nii.gz", "is 3D \\(32 slices\\); give slice_index"),
        ("40", "mr_t1_colin27_slabA_image.nii.gz", "40 is out of range"),
        ("1", "missing.nii.gz", "column 'image'.*no such file"),
    ],
)
def test_load_errors_name_the_row(tmp_path, slice_index, image, match):
    # absolute paths are kept as they are (relative ones are taken from the manifest's folder)
    m = _write_manifest(
        tmp_path,
        ["case_id", "image", "label", "slice_index"],
        [["a", str(DATA / image), str(DATA / "mr_t1_colin27_slabA_label.nii.gz"), slice_index]],
    )
    cases, _ = read_manifest(m)
    with pytest.raises(ManifestError, match=match):
        CaseLoader(m).load(cases[0])
