"""`medseg segment` and `medseg info`: outputs a user relies on, and one clear line + exit 2 on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from app.cli import main
from data.readers import read_study
from models.prompts import Prompts
from tests.conftest import DATA, SAMPLES, memoised_embeddings

CT_SERIES = SAMPLES / "ct_head_0051_series"
PNG_SLICE = DATA / "synthetic_shepp_logan_image.nii.gz"


@pytest.fixture(scope="module")
def png_image(tmp_path_factory):
    """The phantom slice as an 8-bit grey PNG (400 x 400)."""
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(PNG_SLICE)))[0]
    path = tmp_path_factory.mktemp("png") / "phantom.png"
    Image.fromarray((arr / 1000 * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def encodes(litemedsam):
    """The CLI runs and the reference masks here encode two slices in all (CT slice 3, the phantom), each once:
    eight encodes were six repeats. Each comparison still builds its image independently of the CLI (pydicom
    and the CT window here, the PNG read back); an image that differs from the CLI's by one byte is encoded
    afresh (``tests/conftest.py: memoised_embeddings``)."""
    with memoised_embeddings(litemedsam) as counts:
        yield counts


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("order", ["bundled", "instance numbers against position"])
def test_segment_3d_writes_label_map_on_source_grid(order, capsys, tmp_path, litemedsam, encodes):
    """--slice K is the K-th image in position order (read here with pydicom alone); its mask equals the
    model's answer on that image, windowed here; the label map lies on the source grid."""
    from data.windowing import CT_PRESETS, Window
    from tests.data.test_geometry import instance_numbers_against_position, slices_in_position_order

    if order == "bundled":
        series = CT_SERIES
    else:
        (tmp_path / "series").mkdir()
        series = instance_numbers_against_position(CT_SERIES, tmp_path / "series")
    out = tmp_path / "head.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", series, "--slice", 3, "--box", 50, 10, 210, 220, "--output", out)
    assert code == 0, err
    labels = sitk.ReadImage(str(out))
    arr = sitk.GetArrayFromImage(labels)
    _, _, ds = slices_in_position_order(series)[3]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    grey = Window.from_level_width(*CT_PRESETS["abdomen"]).apply(hu)
    image = np.repeat(grey[:, :, None], 3, axis=2)
    box = np.array([50, 10, 210, 220], np.float32)
    misses = encodes.misses
    reference = litemedsam.predict(litemedsam.embed(image), Prompts(box=box)).best_mask
    assert encodes.misses == misses  # the CLI's model input was this image, byte for byte
    assert 10000 < reference.sum() < 0.8 * 161 * 211  # the head, not the whole box
    np.testing.assert_array_equal(arr[3], reference.astype(arr.dtype))
    assert arr[[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]].sum() == 0
    np.testing.assert_allclose(labels.TransformIndexToPhysicalPoint((0, 0, 3)), ds.ImagePositionPatient, atol=1e-3)
    src = read_study(series)
    assert arr.shape == src.array.shape
    np.testing.assert_allclose(labels.GetOrigin(), src.origin, atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), src.direction, atol=1e-6)
    assert "slice 3" in stdout


def test_segment_2d_png_matches_official_dice(capsys, tmp_path, png_image, litemedsam):
    """PNG in, PNG out: the phantom's left dark ellipse with the +5 px box gives the official Dice 0.7178."""
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "synthetic_shepp_logan_label.nii.gz")))[0] == 3
    out = tmp_path / "m.png"
    code, _, err = run_cli(capsys, "segment", png_image, "--box", 112, 117, 200, 282, "--output", out)
    assert code == 0, err
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == label.shape and set(np.unique(np.asarray(Image.open(out)))) == {0, 255}
    dice = 2 * (mask & label).sum() / (mask.sum() + label.sum())
    assert dice == pytest.approx(0.7178, abs=0.005)


def test_segment_with_points_passes_x_then_y(capsys, tmp_path, png_image, litemedsam, encodes):
    """--point X Y LABEL reaches the model as (x, y) pixels: the CLI mask equals the API's mask."""
    out = tmp_path / "m.png"
    argv = ["segment", png_image, "--box", 112, 117, 200, 282, "--point", 150, 230, 1, "--point", 20, 60, 0]
    code, _, err = run_cli(capsys, *argv, "--output", out)
    assert code == 0, err
    image = np.repeat(np.asarray(Image.open(png_image))[:, :, None], 3, axis=2)
    prompts = Prompts(box=np.array([112, 117, 200, 282]), points=np.array([[150, 230], [20, 60]]), point_labels=np.array([1, 0]))
    misses = encodes.misses
    expected = litemedsam.predict(litemedsam.embed(image), prompts).best_mask
    assert encodes.misses == misses  # the CLI's model input was the PNG's grey in three channels
    swapped = Prompts(box=prompts.box, points=prompts.points[:, ::-1], point_labels=prompts.point_labels)
    other = litemedsam.predict(litemedsam.embed(image), swapped).best_mask
    got = np.asarray(Image.open(out)) > 0
    assert np.array_equal(got, expected) and not np.array_equal(got, other)


def test_info_reports_geometry(capsys):
    code, out, _ = run_cli(capsys, "info", CT_SERIES, "--json")
    facts = json.loads(out)
    assert code == 0
    assert facts["modality"] == "CT" and facts["shape_kji"] == [12, 256, 256]
    assert facts["spacing_mm_ijk"] == pytest.approx([0.957031, 0.957031, 1.5], abs=1e-5)
    assert facts["orientation"] == "LIP"


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 100)
    ok = [CT_SERIES, "--slice", 3]
    return [
        ("missing file", ["segment", tmp_path / "nope.nii.gz", "--box", 1, 1, 5, 5, "-o", tmp_path / "o.png"], "no such file"),
        ("unreadable file", ["segment", text, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.nii.gz"], "not a readable NIfTI"),
        ("unsupported format", ["segment", txt, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.png"], "unsupported format"),
        ("box outside", ["segment", *ok, "--box", 10, 10, 300, 20, "-o", tmp_path / "o.nii.gz"], "outside the image"),
        ("empty box", ["segment", *ok, "--box", 50, 50, 40, 60, "-o", tmp_path / "o.nii.gz"], "is empty"),
        # session 22: wrote an empty mask with no hint
        ("zero-size box", ["segment", *ok, "--box", 10, 10, 10, 10, "-o", tmp_path / "o.nii.gz"],
         "box 10 10 10 10 has no area: a box needs x0 < x1 and y0 < y1"),
        ("slice out of range", ["segment", CT_SERIES, "--slice", 12, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.nii.gz"], "out of range"),
        ("no slice for 3D", ["segment", CT_SERIES, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.nii.gz"], "--slice K"),
        ("no prompt", ["segment", *ok, "-o", tmp_path / "o.nii.gz"], "give a prompt"),
        ("bad point label", ["segment", *ok, "--point", 5, 5, 2, "-o", tmp_path / "o.nii.gz"], "LABEL must be 1"),
        ("missing weights", ["segment", *ok, "--box", 1, 1, 5, 5, "--checkpoint", tmp_path / "none.pth", "-o", tmp_path / "o.nii.gz"], "does not exist"),
        ("corrupt weights", ["segment", *ok, "--box", 1, 1, 5, 5, "--checkpoint", corrupt, "-o", tmp_path / "o.nii.gz"], "could not be read"),
        ("unknown model", ["segment", *ok, "--box", 1, 1, 5, 5, "--model", "sam_vit_x", "-o", tmp_path / "o.nii.gz"], "unknown model"),
        ("3D to PNG", ["segment", *ok, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.png"], ".nii.gz"),
        ("info missing", ["info", tmp_path / "nope"], "no such file"),
        # session 23: "box has non-finite values: [0.0, 0.0, inf, 10.0]", numbers the user never typed
        ("box past float32", ["segment", *ok, "--box", 0, 0, "1e300", 10, "-o", tmp_path / "o.nii.gz"],
         "box 0 0 1e+300 10 lies outside the image: a coordinate of 1e+300 is past any image's size"),
        ("point past float32", ["segment", *ok, "--point", "-1e300", 3, 1, "-o", tmp_path / "o.nii.gz"],
         "point -1e+300 3 lies outside the image: a coordinate of -1e+300 is past any image's size"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_input_is_one_line_and_exit_2(case, capsys, tmp_path):
    name, argv, expected = _bad_inputs(tmp_path)[case]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, f"{name}: exit {code}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err}"
    assert expected in lines[0], f"{name}: {lines[0]}"
    assert lines[0].startswith(f"medseg {argv[0]}: error:")


def test_missing_default_weights_names_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path))
    code, _, err = run_cli(capsys, "segment", CT_SERIES, "--slice", 3, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.nii.gz")
    assert code == 2 and str(tmp_path / "lite_medsam.pth") in err and "make weights" in err


def test_corrupt_default_weights_fail_the_sha256_pin(capsys, tmp_path, monkeypatch):
    shutil.copy(__file__, tmp_path / "lite_medsam.pth")
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path))
    code, _, err = run_cli(capsys, "segment", CT_SERIES, "--slice", 3, "--box", 1, 1, 5, 5, "-o", tmp_path / "o.nii.gz")
    assert code == 2 and "sha256" in err


def test_segment_of_an_mni_space_image_writes_its_space_codes(capsys, tmp_path):
    """Colin27 (sform_code and qform_code 4, MNI152) segmented on the CLI: the label map said scanner space (1)."""
    import nibabel as nib

    colin = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
    out = tmp_path / "caudate.nii.gz"
    code, _, err = run_cli(capsys, "segment", colin, "--slice", 11, "--box", 60, 54, 96, 95, "--output", out)
    assert code == 0, err
    written, source = nib.load(str(out)), nib.load(str(colin))
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (4, 4)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert np.asarray(written.dataobj)[:, :, 11].any()  # the slice segmented, on the source grid


@pytest.mark.parametrize("command", ["segment", "propagate"])
def test_a_seg_output_the_source_cannot_carry_is_refused_before_the_model_runs(command, capsys, tmp_path, monkeypatch):
    """A series without FrameOfReferenceUID, written as DICOM-SEG: the refusal came after the model had run (seconds
    for segment, minutes for propagate) and in highdicom's words ("Source images have no Frame Of Reference UID, but
    it is required by the IOD."). Now it comes first, says what to do, and the model never runs."""
    import pydicom

    series = tmp_path / "series"
    series.mkdir()
    for f in sorted(CT_SERIES.iterdir()):
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(series / f.name)

    def model_ran(*args, **kwargs):
        raise AssertionError("the model ran before the refusal")

    monkeypatch.setattr(f"app.commands.{command}.segmenter_from_args", model_ran)
    code, _, err = run_cli(capsys, command, series, "--slice", 6, "--box", 80, 80, 180, 180, "-o", tmp_path / "o.dcm")
    assert code == 2, err
    assert err.strip() == (f"medseg {command}: error: {tmp_path / 'o.dcm'}: the source images have no "
                           "FrameOfReferenceUID, which their kind of image requires and a DICOM-SEG must share; write a "
                           "NIfTI label map (.nii.gz) instead")


def test_a_series_whose_slices_name_two_studies_is_refused_naming_the_slice(capsys, tmp_path, monkeypatch):
    """One slice of the series under another StudyInstanceUID (merged or anonymised wrongly): it opened (one grid, one
    frame of reference), but its SEG failed after the model, in highdicom's words: "Source images must all be part of
    the same series and must have the same image dimensions (number of rows/columns)." (session 17: refused before the
    model, at the SEG). Since session 23 the series itself is refused as it opens, as one of two patients is, naming
    the slice and the attribute: a NIfTI of it would have been made of two studies' images too."""
    import pydicom

    series = tmp_path / "series"
    shutil.copytree(CT_SERIES, series)
    odd = sorted(series.iterdir())[5]
    ds = pydicom.dcmread(odd)
    ds.StudyInstanceUID = "1.2.3.4"
    ds.save_as(odd)

    def model_ran(*args, **kwargs):
        raise AssertionError("the model ran before the refusal")

    monkeypatch.setattr("app.commands.segment.segmenter_from_args", model_ran)
    for out in ("o.dcm", "o.nii.gz"):
        code, _, err = run_cli(capsys, "segment", series, "--slice", 6, "--box", 80, 80, 180, 180, "-o", tmp_path / out)
        assert code == 2, err
        name = sorted(series.iterdir())[0].name
        assert err.strip() == (f"medseg segment: error: {series}: {odd.name}: StudyInstanceUID differs from {name}'s "
                               "within one series: the volume would hold images of two patients or studies; take the "
                               "file out of the folder, or correct its StudyInstanceUID")
