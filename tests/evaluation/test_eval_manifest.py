"""The evaluation manifest: the shared manifest's slices, transforms and spacing; user manifests; errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data.readers import StudyError, read_study
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


ROW = ["a", "img.png", "lab.png"]


def _with(**columns: str) -> tuple[list[str], list[str]]:
    """The header and the row of a case with these optional columns."""
    return ["case_id", "image", "label", *columns], [*ROW, *columns.values()]


@pytest.mark.parametrize(
    "header,row,message",
    [
        (["case_id", "image"], ["a", "img.png"],
         ": missing column(s) label; a manifest needs case_id, image, label (found: case_id, image)"),
        (["site"], ["x"],
         ": missing column(s) case_id, image, label; a manifest needs case_id, image, label (found: site)"),
        (["case_id", "image", "label"], ["", "img.png", "lab.png"],
         " line 2, column 'case_id': empty; every case needs case_id, image, label"),
        (*_with(slice_index="1.5"), " line 2, column 'slice_index': '1.5' is not a slice index >= 0"),
        (*_with(slice_index="-1"), " line 2, column 'slice_index': '-1' is not a slice index >= 0"),
        (*_with(slice_index="abc"), " line 2, column 'slice_index': 'abc' is not a number"),
        (*_with(slice_index="nan"), " line 2, column 'slice_index': 'nan' is not a finite number"),
        (*_with(transform="flip"), " line 2, column 'transform': 'flip' is unknown; use T, rot90 or leave empty"),
        (*_with(norm_lo="0"), " line 2, column 'norm_hi': give both norm_lo and norm_hi"),
        (*_with(norm_lo="", norm_hi="9"), " line 2, column 'norm_lo': give both norm_lo and norm_hi"),
        (*_with(norm_lo="x", norm_hi="9"), " line 2, column 'norm_lo': 'x' is not a number"),
        (*_with(norm_lo="0", norm_hi="inf"), " line 2, column 'norm_hi': 'inf' is not a finite number"),
        (*_with(norm_lo="5", norm_hi="5"), " line 2, column 'norm_hi': norm_hi 5 must be above norm_lo 5"),
        (*_with(label_values="1|x"), " line 2, column 'label_values': 'x' is not a number"),
        (*_with(label_values=" | "), " line 2, column 'label_values': no values in '|'"),
        # session 21: a European Excel's CSV (semicolons) or a tab-separated file listed its header as found, no why
        (["case_id;image;label"], ["a;img.png;lab.png"],
         ": missing column(s) case_id, image, label; a manifest needs case_id, image, label (found: case_id;image;label)"
         "; its columns are separated by semicolons (a European Excel's CSV), not commas: save it as comma-separated "
         "CSV (in Excel: 'CSV UTF-8 (Comma delimited)')"),
        (["case_id\timage\tlabel\tsite"], ["a\timg.png\tlab.png\tx"],
         ": missing column(s) case_id, image, label; a manifest needs case_id, image, label (found: case_id\timage\t"
         "label\tsite); its columns are separated by tabs, not commas: save it as comma-separated CSV (in Excel: 'CSV "
         "UTF-8 (Comma delimited)')"),
        # session 21: DictReader kept the repeated column's last cell, and the case was scored against it
        (["case_id", "image", "label", "image"], ["a", "img.png", "lab.png", "lab.png"],
         ": the header repeats 'image' (columns 2, 4); each column must be named once"),
    ],
)
def test_bad_rows_name_line_and_column(tmp_path, header, row, message):
    """The whole one-line message: the file, the line, the column and what was expected."""
    m = _write_manifest(tmp_path, header, [row])
    with pytest.raises(ManifestError, match=f"^{re.escape(f'{m}{message}')}$"):
        read_manifest(m)


def test_duplicate_case_ids_are_refused(tmp_path):
    m = _write_manifest(tmp_path, ["case_id", "image", "label"], [["a", "i.png", "l.png"], ["a", "i.png", "l.png"]])
    with pytest.raises(ManifestError, match=f"^{re.escape(f'{m} line 3, column ')}'case_id': 'a' repeats line 2; "
                                            "ids must be unique$"):
        read_manifest(m)


def _exactly(message: str):
    return pytest.raises(ManifestError, match=f"^{re.escape(message)}$")


def test_missing_empty_or_caseless_manifests_say_so(tmp_path):
    with _exactly(f"{tmp_path / 'nope.csv'}: no such manifest file"):
        read_manifest(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with _exactly(f"{empty}: missing column(s) case_id, image, label; a manifest needs case_id, image, label "
                  "(found: no header)"):
        read_manifest(empty)
    with _exactly(f"{_write_manifest(tmp_path, ['case_id', 'image', 'label'], [])}: "
                  "the manifest has a header but no cases"):
        read_manifest(tmp_path / "MANIFEST.csv")


def test_an_excel_manifest_reads_as_written(tmp_path):
    """Excel's CSV: a byte-order mark, CRLF lines, a quoted cell holding a line break, a trailing empty
    cell; optional columns: structure (default 'label'), transform 'none' (= no transform)."""
    _png_pair(tmp_path)
    m = tmp_path / "MANIFEST.csv"
    m.write_bytes(
        "\ufeffcase_id,image,label,structure,transform,note\r\n"
        'a,img.png,lab.png,liver,none,"two\r\nlines"\r\n'
        "b,img.png,lab.png,,T,x,\r\n".encode("utf-8")
    )
    cases, attributes = read_manifest(m)
    assert [c.case_id for c in cases] == ["a", "b"] and attributes == ["note"]
    assert cases[0].row() == {"note": "two\r\nlines", "structure": "liver"}
    assert cases[1].row() == {"note": "x", "structure": "label"}
    assert [c.transform for c in cases] == ["", "T"] and [c.line for c in cases] == [3, 4]
    loaded = CaseLoader(m).load(cases[0])
    assert np.array_equal(loaded.image[..., 0], np.asarray(Image.open(tmp_path / "img.png")))


def _png_pair(folder: Path, label_mode: str = "L"):
    img = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)
    lab = np.zeros((30, 40), np.uint8)
    lab[5:10, 8:20] = 2
    Image.fromarray(img).save(folder / "img.png")
    Image.fromarray(lab).convert(label_mode).save(folder / "lab.png")
    return img, lab


def test_the_manifest_window_and_grey_rgb_labels_are_used(tmp_path):
    """norm_lo/norm_hi replace the default window; a label saved as RGB with equal channels is grey."""
    img, lab = _png_pair(tmp_path, "RGB")
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "norm_lo", "norm_hi"], [[*ROW, "50", "150"]])
    cases, _ = read_manifest(m)
    assert cases[0].window == (50.0, 150.0)
    case = CaseLoader(m).load(cases[0])
    expected = np.round((np.clip(img.astype(np.float64), 50, 150) - 50) / 100 * 255).astype(np.uint8)
    assert np.array_equal(case.image[..., 0], expected)
    assert np.array_equal(case.gt, lab != 0)


def test_colour_mismatched_or_missing_files_name_the_row(tmp_path):
    img, lab = _png_pair(tmp_path)
    colour = np.stack([lab, lab, lab * 0 + 3], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    Image.fromarray(lab[:20]).save(tmp_path / "short.png")
    nowhere = tmp_path / "elsewhere" / "gone.nii.gz"  # an absolute path is taken as it is
    m = _write_manifest(tmp_path, ["case_id", "image", "label"],
                        [["a", "img.png", "colour.png"], ["b", "img.png", "short.png"], ["c", "img.png", "gone.png"],
                         ["d", str(nowhere), "lab.png"]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    with _exactly(f"{m} line 2, column 'label': a colour label image; expected grey levels"):
        loader.load(cases[0])
    with _exactly(f"{m} line 3, column 'label': label slices are (20, 40) (H, W) but image slices are (30, 40)"):
        loader.load(cases[1])
    with pytest.raises(StudyError) as read_error:
        read_study(tmp_path / "gone.png")
    with _exactly(f"{m} line 4, column 'label': {read_error.value}"):
        loader.load(cases[2])
    with pytest.raises(StudyError) as read_error:
        read_study(nowhere)
    with _exactly(f"{m} line 5, column 'image': {read_error.value}"):
        loader.load(cases[3])


def test_slice_index_bounds_for_image_and_label(tmp_path):
    """A 3D study needs slice_index; its last slice loads, one past it is refused; the label is checked too."""
    _png_pair(tmp_path)
    image, label = DATA / "mr_t1_colin27_slabA_image.nii.gz", DATA / "mr_t1_colin27_slabA_label.nii.gz"
    m = _write_manifest(
        tmp_path,
        ["case_id", "image", "label", "slice_index"],
        [["a", image, label, ""], ["b", image, label, "32"], ["c", image, label, "31"],
         ["d", "img.png", "lab.png", "5"], ["e", "img.png", label, ""]],
    )
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    with _exactly(f"{m} line 2, column 'slice_index': image is 3D (32 slices); give slice_index (0..31)"):
        loader.load(cases[0])
    with _exactly(f"{m} line 3, column 'slice_index': 32 is out of range for image (slices 0..31)"):
        loader.load(cases[1])
    last = loader.load(cases[2])
    assert last.gt.shape == (217, 181)
    with _exactly(f"{m} line 5, column 'slice_index': 5 is out of range for image (slices 0..0)"):
        loader.load(cases[3])
    with _exactly(f"{m} line 6, column 'slice_index': label is 3D (32 slices); give slice_index (0..31)"):
        loader.load(cases[4])


def test_spacing_is_row_then_column_in_mm(tmp_path):
    """An anisotropic slice: (row, column) spacing = (y, x) of the image geometry (HD95 is in mm)."""
    import SimpleITK as sitk

    array = np.zeros((2, 6, 4), np.int16)
    array[:, 2:4, 1:3] = 1
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.5, 0.8, 2.0))  # x (columns), y (rows), z
    sitk.WriteImage(volume, str(tmp_path / "aniso.nii.gz"))
    sitk.WriteImage(volume, str(tmp_path / "aniso_label.nii.gz"))  # a label that is the image file is refused
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "slice_index"],
                        [["a", "aniso.nii.gz", "aniso_label.nii.gz", "1"]])
    case = CaseLoader(m).load(read_manifest(m)[0][0])
    assert case.spacing == pytest.approx((0.8, 0.5), abs=1e-6) and int(case.gt.sum()) == 4


def test_apply_transform_names(tmp_path):
    """'' / 'none' / 'T' keep SimpleITK's slice, 'rot90' flips the rows, anything else is refused."""
    from evaluation.manifest import apply_transform

    a = np.arange(6).reshape(2, 3)
    for name in ("", "none", "T"):
        assert np.array_equal(apply_transform(a, name), a)
    assert np.array_equal(apply_transform(a, "rot90"), a[::-1])
    with pytest.raises(ValueError, match=r"^unknown transform 'flip'; use T, rot90 or nothing$"):
        apply_transform(a, "flip")


def test_line_numbers_are_the_lines_a_text_editor_shows(tmp_path):
    """Blank lines (skipped) and a quoted cell with a line break still count: the message names the
    line the user opens in an editor."""
    m = tmp_path / "MANIFEST.csv"
    m.write_text('case_id,image,label,note\n\na,i.png,l.png,"one\ntwo"\n\nb,i.png,l.png,x\na,i.png,l.png,y\n')
    with _exactly(f"{m} line 7, column 'case_id': 'a' repeats line 4; ids must be unique"):
        read_manifest(m)


def test_a_3d_label_on_another_grid_is_refused_not_sliced_at_the_same_index(tmp_path):
    """image and label share slice_index: a label of another slab, shifted or flipped along k gave slice k of
    another place as the ground truth, silently (Dice against the wrong anatomy). The same-grid pair loads."""
    import SimpleITK as sitk

    image, label = DATA / "mr_t1_colin27_slabA_image.nii.gz", DATA / "mr_t1_colin27_slabA_label.nii.gz"
    lab = sitk.ReadImage(str(label))
    sitk.WriteImage(lab[:, :, 2:], str(tmp_path / "cropped.nii.gz"))  # slices 2..31 of the same grid: 30 slices
    shifted = sitk.Image(lab)
    shifted.SetOrigin(tuple(o + d for o, d in zip(lab.GetOrigin(), (0.0, 0.0, 5.0))))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    flipped = sitk.Image(lab)
    d = np.array(lab.GetDirection()).reshape(3, 3)
    d[:, 2] *= -1  # same voxels, k running the other way
    flipped.SetDirection(tuple(d.ravel()))
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "slice_index"],
                        [["a", image, "cropped.nii.gz", "4"], ["b", image, "shifted.nii.gz", "4"],
                         ["c", image, "flipped.nii.gz", "4"], ["d", image, label, "4"]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    where = f"{m} line %d, column 'label': the label is not on the image's grid:"
    with _exactly(f"{where % 2} grid (30, 217, 181) vs (32, 217, 181) (k, j, i)"):
        loader.load(cases[0])
    with _exactly(f"{where % 3} origin (90, 125, 0) vs (90, 125, -5)"):
        loader.load(cases[1])
    with pytest.raises(ManifestError, match=f"^{re.escape(where % 4)} direction .* vs "):
        loader.load(cases[2])
    assert loader.load(cases[3]).gt.any()


def test_a_manifest_saved_in_a_windows_code_page_names_the_file_the_line_and_the_fix(tmp_path):
    """Excel's plain 'CSV' on Windows writes cp1252: `medseg eval` said only "'utf-8' codec can't decode byte
    0xe4 in position 45: invalid continuation byte"."""
    m = tmp_path / "MANIFEST.csv"
    m.write_bytes("case_id,image,label,structure\na,img.png,lab.png,liver\nb,img.png,lab.png,Läsion\n".encode("cp1252"))
    with _exactly(f"{m} line 3: not UTF-8 text (byte 0xe4); save the manifest as UTF-8 (in Excel: 'CSV UTF-8 "
                  "(Comma delimited)')"):
        read_manifest(m)
    m.write_text("case_id,image,label,structure\nb,img.png,lab.png,Läsion\n", encoding="utf-8-sig")  # Excel's UTF-8
    assert read_manifest(m)[0][0].structure == "Läsion"


def test_a_picture_turned_by_exif_with_a_label_that_is_not_is_refused(tmp_path):
    """Pictures open turned as their EXIF Orientation says; a label PNG without that tag stays as stored. On a square
    picture the truth was then compared turned 90 degrees against the image (a silent Dice of a rotated mask): which
    way the label was drawn is not known, so the case is refused naming both. Same orientation on both: it loads."""
    img = (np.arange(40 * 40).reshape(40, 40) % 251).astype(np.uint8)
    lab = np.zeros((40, 40), np.uint8)
    lab[5:10, 8:30] = 1
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "img.png", exif=exif)
    Image.fromarray(lab).save(tmp_path / "lab.png")
    m = _write_manifest(tmp_path, ["case_id", "image", "label"], [ROW])
    cases, _ = read_manifest(m)
    with pytest.warns(UserWarning), pytest.raises(ManifestError) as e:
        CaseLoader(m).load(cases[0])
    assert str(e.value) == (f"{m} line 2, column 'label': the image has EXIF Orientation 6 and the label 1 (as stored); "
                            "which way the label was drawn is not known: save both with the same orientation")
    Image.fromarray(lab).save(tmp_path / "lab.png", exif=exif)
    with pytest.warns(UserWarning):
        case = CaseLoader(m).load(cases[0])
    np.testing.assert_array_equal(case.gt, np.rot90(lab, -1) != 0)


@pytest.mark.filterwarnings("error::data.study_errors.StudyWarning")  # no "transparency ignored" note on a label
def test_a_picture_label_is_read_as_painted_and_absent_label_values_are_named(tmp_path):
    """Session 21: eval read a label picture as an image. A label painted on a transparent layer whose hidden pixels
    are white was the whole plane (the alpha dropped: Dice 0.446 where the painted label scores 0.670 on the real
    Colin27 slice), a JPEG label's compression ringing counted as ground truth, and label_values the label does not
    hold (1 for a 0/255 mask) stopped the run at "the ground truth is empty on this slice", naming neither."""
    img, lab = _png_pair(tmp_path)
    layer = np.full((*lab.shape, 4), 255, np.uint8)
    layer[..., 3] = (lab != 0) * 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    palette = Image.fromarray((lab != 0).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 255, 255, 255])
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 (white) transparent
    Image.fromarray(lab * 100).save(tmp_path / "lab.jpg", quality=75)
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "label_values"],
                        [["a", "img.png", "layer.png", ""], ["b", "img.png", "palette.png", ""],
                         ["c", "img.png", "lab.jpg", ""], ["d", "img.png", "lab.png", "1|3"]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    for case in cases[:2]:
        np.testing.assert_array_equal(loader.load(case).gt, lab != 0)
    with _exactly(f"{m} line 4, column 'label': {tmp_path / 'lab.jpg'}: a JPEG mask; JPEG's lossy compression leaves "
                  "faint pixels around every painted edge, so which pixels were painted is not known: save the mask "
                  "as PNG"):
        loader.load(cases[2])
    with _exactly(f"{m} line 5, column 'label_values': 1|3: the label holds none of these values (it holds 0, 2); "
                  "give the values the structure has in the label"):
        loader.load(cases[3])


def test_a_one_slice_label_of_a_3d_image_is_the_label_of_slice_index(tmp_path):
    """A 3D image and the label of one of its slices (a PNG, or a one-slice NIfTI cut from the label volume): slice 20
    was refused as "20 is out of range for label (slices 0..0)", and slice_index 0 scored image slice 0 against the
    label of slice 20, silently (session 22). Now the label is slice_index's; one that its file places on another
    slice, or on none, is refused naming the slice it lies on."""
    import SimpleITK as sitk

    image, label = DATA / "mr_t1_colin27_slabA_image.nii.gz", DATA / "mr_t1_colin27_slabA_label.nii.gz"
    volume = sitk.ReadImage(str(label))
    sitk.WriteImage(volume[:, :, 20:21], str(tmp_path / "k20.nii.gz"))
    moved = volume[:, :, 20:21]
    moved.SetOrigin(tuple(o + d for o, d in zip(moved.GetOrigin(), (3.0, 0.0, 0.0))))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    Image.fromarray((sitk.GetArrayFromImage(volume)[20] > 0).astype(np.uint8)).save(tmp_path / "k20.png")
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "slice_index"],
                        [["a", image, "k20.nii.gz", "20"], ["b", image, "k20.png", "20"], ["c", image, label, "20"],
                         ["d", image, "k20.nii.gz", "4"], ["e", image, "moved.nii.gz", "20"]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    whole = loader.load(cases[2])
    for case in cases[:2]:
        loaded = loader.load(case)
        np.testing.assert_array_equal(loaded.gt, whole.gt)
        np.testing.assert_array_equal(loaded.image, whole.image)
    with _exactly(f"{m} line 5, column 'slice_index': 4, but the label k20.nii.gz (one slice) lies on image slice 20: "
                  "set slice_index to 20, or give the label of slice 4"):
        loader.load(cases[3])
    with pytest.raises(ManifestError, match=f"^{re.escape(str(m))} line 6, column 'slice_index': 20, but the label "
                                            r"moved.nii.gz \(one slice\) lies on no slice of the image \(origin "):
        loader.load(cases[4])


def test_a_path_with_a_nul_byte_is_refused_naming_the_line_and_column(tmp_path):
    """A manifest cell holding a NUL byte (a file written by a script or a damaged export): `medseg eval` said only
    "embedded null byte", the OS's words from deep in the reader, naming no file, line or column (session 22)."""
    m = tmp_path / "MANIFEST.csv"
    m.write_bytes(b"case_id,image,label\na,img.nii.gz\x00,lab.nii.gz\n")
    cases, _ = read_manifest(m)
    with _exactly(f"{m} line 2, column 'image': {str(tmp_path / 'img.nii.gz')!r}"[:-1] + "\\x00': the path holds a NUL "
                  "byte (\\x00), which no file name can; give the file's path as it is"):
        CaseLoader(m).load(cases[0])
    with pytest.raises(StudyError, match="the path holds a NUL byte"):
        read_study(tmp_path / "a\x00b.dcm")


def test_a_row_with_more_cells_than_the_header_is_refused_naming_the_line(tmp_path):
    """Session 22: an unquoted comma in a cell shifted the row; the cells past the header were dropped without a word.
    Empty trailing cells (Excel pads rows) carry nothing and stay accepted."""
    m = tmp_path / "MANIFEST.csv"
    m.write_text("case_id,image,label\na,i.png,l.png,,\nb,i.png,l.png,extra,x\n")
    with _exactly(f"{m} line 3: 5 cells, but the header names 3 columns (extra: 'extra', 'x'); quote a cell that "
                  "holds a comma, or name the column in the header"):
        read_manifest(m)


def test_a_row_with_fewer_cells_than_the_header_is_refused_naming_the_line(tmp_path):
    """Session 23: a lost comma (or a column left out) filled the row's last columns with nothing, without a word: the
    cells after the lost comma read under the wrong columns, a label_values left out scored every non-zero label. A
    header's unnamed trailing column (a trailing comma) needs no cell."""
    m = tmp_path / "MANIFEST.csv"
    m.write_text("case_id,image,label,label_values,\na,i.png,l.png,3,\nb,i.png,l.png\n")
    with _exactly(f"{m} line 3: 3 cells, but the header names 5 columns (missing: 'label_values'); give every column "
                  "a cell, an empty one between two commas (a,b,,d), so that each cell stays under its column"):
        read_manifest(m)
    m.write_text("case_id,image,label,label_values,\na,i.png,l.png,3\nb,i.png,l.png,\n")
    assert [c.label_values for c in read_manifest(m)[0]] == [(3.0,), None]


def test_an_unclosed_quote_is_named_at_the_line_it_opens(tmp_path):
    """Session 22: the quote swallowed the rest of the file into one cell, which read as "column 'label': empty"."""
    m = tmp_path / "MANIFEST.csv"
    m.write_text('case_id,image,label\n\na,"i.png,l.png\nb,i.png,l.png\n')
    with _exactly(f'{m} line 3: a quote (") opened in this row is never closed, so the rest of the file would be '
                  "one cell; close the quote or remove it"):
        read_manifest(m)
    m.write_text('case_id,image,label\na,"i.png"x,l.png\n')
    with pytest.raises(ManifestError, match=f"^{re.escape(str(m))} line 2: not valid CSV \\("):
        read_manifest(m)


def test_a_label_that_is_the_image_itself_is_refused(tmp_path):
    """Session 22: label = image scored the case against every non-zero pixel of the image as ground truth."""
    (tmp_path / "i.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    for label in ("i.png", "./sub/../i.png"):
        m = _write_manifest(tmp_path, ["case_id", "image", "label"], [["a", "i.png", label]])
        with _exactly(f"{m} line 2, column 'label': {label!r} is the image itself (column 'image' 'i.png'); the label "
                      "must be the ground-truth mask file"):
            read_manifest(m)


@pytest.mark.parametrize("command", ["eval", "batch"])
def test_a_negative_seed_is_refused_naming_the_flag_before_the_model(command):
    """`medseg eval MANIFEST --seed -1` loaded the model and then stopped in numpy's words, `expected non-negative
    integer`, naming no flag (session 24); `medseg batch` shares the checks."""
    from app.cli import build_parser
    from app.commands.eval import settings_from_args
    from app.errors import UsageError

    args = build_parser().parse_args([command, "no-such-manifest.csv", "--seed", "-1", "-o", "out"])
    with pytest.raises(UsageError, match=r"^--seed must be a whole number >= 0, got -1$"):
        settings_from_args(args)


def test_a_row_whose_series_lacks_a_slice_is_refused_without_a_flag_eval_does_not_have(tmp_path):
    """A manifest row naming the bundled CT series less its sixth slice: `... add the missing file(s), open the
    complete series, or pass --allow-uneven`, a flag `medseg eval` and `batch` do not take (session 24's pass)."""
    import shutil

    series = tmp_path / "ct"
    series.mkdir()
    for f in sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir()):
        if f.name != "IM0006.dcm":
            shutil.copy(f, series / f.name)
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "slice_index"], [["a", "ct", DATA / "mr_t1_colin27_slabA_label.nii.gz", "3"]])
    cases, _ = read_manifest(m)
    with pytest.raises(ManifestError) as e:
        CaseLoader(m).load(cases[0])
    assert str(e.value).endswith("1 slice(s) missing between IM0005.dcm (0.75 mm) and IM0007.dcm (3.75 mm) (the other "
                                 "slices are 1.5 mm apart); add the missing file(s), open the complete series")


def test_a_label_is_judged_by_its_bytes_not_its_name(tmp_path):
    """Session 30: a JPEG label saved under a .png name (a mail client's or a converter's rename) was scored as ground
    truth, its compression's faint pixels counted as labelled, since the reader named a picture's format by its
    suffix; a lossless PNG under a .jpg name was refused as a JPEG mask. The format is now the one Pillow read."""
    img, lab = _png_pair(tmp_path)
    Image.fromarray(lab * 100).save(tmp_path / "jpeg_named.png", format="JPEG", quality=75)
    Image.fromarray(lab).save(tmp_path / "png_named.jpg", format="PNG")
    m = _write_manifest(tmp_path, ["case_id", "image", "label"],
                        [["a", "img.png", "jpeg_named.png"], ["b", "img.png", "png_named.jpg"]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    with _exactly(f"{m} line 2, column 'label': {tmp_path / 'jpeg_named.png'}: a JPEG mask; JPEG's lossy compression "
                  "leaves faint pixels around every painted edge, so which pixels were painted is not known: save the "
                  "mask as PNG"):
        loader.load(cases[0])
    np.testing.assert_array_equal(loader.load(cases[1]).gt, lab != 0)


def test_a_label_of_fractional_values_is_refused_not_scored_as_any_non_zero(tmp_path):
    """Session 30: a label map resampled with linear interpolation (or a probability map) holding 0.5 along its
    edges was ground truth wherever it was non-zero: every fraction counted as labelled, the structure grown by the
    blur. A float label whose values are whole (0/1 saved as float32) scores as before."""
    import nibabel as nib

    image = np.random.RandomState(0).randint(0, 200, (12, 10, 8)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    whole = np.zeros((12, 10, 8), np.float32)
    whole[2:6, 2:6, 3] = 1.0
    blurred = whole.copy()
    blurred[6, 2:6, 3] = 0.5
    nib.save(nib.Nifti1Image(whole, affine), tmp_path / "whole.nii.gz")
    nib.save(nib.Nifti1Image(blurred, affine), tmp_path / "blurred.nii.gz")
    m = _write_manifest(tmp_path, ["case_id", "image", "label", "slice_index"],
                        [["a", "img.nii.gz", "whole.nii.gz", 3], ["b", "img.nii.gz", "blurred.nii.gz", 3]])
    cases, _ = read_manifest(m)
    loader = CaseLoader(m)
    assert loader.load(cases[0]).gt.sum() == 16
    with _exactly(f"{m} line 3, column 'label': {tmp_path / 'blurred.nii.gz'} holds fractional values on slice 3 "
                  "(0.5): a probability map or a label resampled with interpolation; expected whole label values "
                  "(resample labels with nearest neighbour)"):
        loader.load(cases[1])
