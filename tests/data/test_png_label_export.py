"""The UI's PNG export of a picture's labels (session 26b) was a bare 8-bit grey map: values 1, 2, 3 that a viewer
shows near black, with no name or colour, so neither a person nor another tool could tell which structure was which
(session 26's leftover). It stays a plain grey PNG whose pixels are the label numbers (16-bit past 255, which was
refused), now with an iTXt chunk ``medseg:labels`` naming them with their colours (session 27). Not a palette PNG:
OpenCV's imread, SimpleITK/ITK (so 3D Slicer) and many scripts expand a palette into colours, so a user's own
pipeline would get RGB colours instead of label numbers; every tool here reads the numbers."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image, PngImagePlugin

from data.pictures import as_stored, read_label_table, read_mask_image, visible_pixels
from data.readers import read_study
from tests.conftest import DATA

# AAL values of Colin27's middle slab slice -> the UI labels they become: (name, colour); one label coloured black
STRUCTURES = {71: ("Caudate_L", (230, 25, 75)), 74: ("Putamen droit é", (0, 0, 0)), 77: ("Thalamus_L", (0, 130, 200))}


def _stored_values_by_other_tools(path) -> dict[str, np.ndarray]:
    """The stored pixels of a PNG as Pillow, SimpleITK and (where installed) OpenCV read them: a user's own pipeline.
    None of them turns by the EXIF Orientation here (OpenCV's IMREAD_UNCHANGED does not)."""
    with Image.open(path) as im:
        read = {"Pillow": np.asarray(im)}
    read["SimpleITK"] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    try:
        import cv2
    except ImportError:
        return read
    read["OpenCV"] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return read


@pytest.fixture()
def ui(tmp_path):
    """A UI session (``app.controller``) and the real Colin27 middle slice saved as a phone photo: a PNG stored turned,
    EXIF Orientation 6, as phones write it."""
    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore

    image = np.asanyarray(nib.load(str(DATA / "mr_t1_colin27_slabA_image.nii.gz")).dataobj)
    shown = np.ascontiguousarray(image[:, :, image.shape[2] // 2].T).astype(np.uint8)  # (217, 181) as the UI shows it
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(as_stored(shown, 6))).save(photo, exif=exif)
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(photo)])
    return controller, ctx, sid, photo


@pytest.fixture()
def painted(ui):
    """Three AAL structures of the real Colin27 slice painted in the UI as labels 1-3 (one named in UTF-8, one
    coloured black) and exported as PNG: (ui, the label map as shown, the export's path, its status)."""
    controller, ctx, sid, _ = ui
    aal = np.asanyarray(nib.load(str(DATA / "mr_t1_colin27_slabA_label.nii.gz")).dataobj)
    aal = np.ascontiguousarray(aal[:, :, aal.shape[2] // 2].T)
    for n, (value, (name, colour)) in enumerate(STRUCTURES.items(), start=1):
        if n > 1:
            controller.add_label(ctx, sid, name)
        controller.edit_label(ctx, sid, name, "#%02x%02x%02x" % colour, n)
        controller.mask(ctx, sid, aal == value, False)
    shown = ctx.store.get(sid).labels[0].copy()
    painted = [int((shown == n).sum()) for n in (1, 2, 3)]
    assert painted == [int((aal == v).sum()) for v in STRUCTURES] == [236, 293, 394]
    path, vm = controller.export(ctx, sid, "png")
    return ui, shown, path, vm.status


def test_the_uis_png_export_is_grey_label_numbers_in_every_tool(painted):
    """The export is an 8-bit grey PNG (mode 'L', not a palette) with the photo's EXIF Orientation 6: Pillow,
    SimpleITK and OpenCV read the label numbers 0-3 as stored, not colours."""
    _, shown, path, status = painted
    assert status.startswith("Exported deidentified_labels.png.") and "16-bit" not in status
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L" and im.getexif().get(0x0112) == 6
    tools = _stored_values_by_other_tools(path)
    for tool, values in tools.items():
        assert values.dtype == np.uint8 and values.shape == (181, 217), tool
        np.testing.assert_array_equal(values, as_stored(shown, 6), err_msg=tool)
    assert sorted(np.unique(tools["SimpleITK"]).tolist()) == [0, 1, 2, 3]


def test_the_exports_text_chunk_names_its_labels_and_colours(painted):
    """The iTXt chunk ``medseg:labels`` holds every label's name (UTF-8 kept) and colour (the black one too), read
    back by ``read_label_table``; a picture without it names nothing."""
    (_, _, _, photo), _, path, _ = painted
    with Image.open(path) as im:
        im.load()
        text = im.info["medseg:labels"]
    assert json.loads(text) == {"1": {"name": "Caudate_L", "colour": "#e6194b"},
                                "2": {"name": "Putamen droit é", "colour": "#000000"},
                                "3": {"name": "Thalamus_L", "colour": "#0082c8"}}
    assert read_label_table(path) == {n: entry for n, entry in enumerate(STRUCTURES.values(), start=1)}
    assert read_label_table(photo) is None


def test_medseg_reads_the_export_beside_the_photo(painted, tmp_path):
    """medseg reads the export to its label numbers turned by the photo's EXIF Orientation 6: the study reader (eval,
    `oneshot --ref-mask --ref-label N`), the mask reader (the UI's mask file, `oneshot --ref-mask` alone; the label
    coloured black is painted too) and an eval manifest's label_values."""
    (_, _, _, photo), shown, path, _ = painted
    back = read_study(path)
    np.testing.assert_array_equal(back.array[0], shown)
    assert back.array.dtype == np.uint8 and back.source.exif_orientation == 6
    np.testing.assert_array_equal(read_mask_image(path), shown > 0)
    assert visible_pixels(path) is None

    from app.commands.oneshot import reference_mask

    ref = read_study(photo)
    for label, expected in ((None, shown > 0), (2, shown == 2), (3, shown == 3)):
        args = argparse.Namespace(ref=str(photo), ref_mask=str(path), ref_label=label)
        np.testing.assert_array_equal(reference_mask(args, ref, 0), expected)

    from evaluation.manifest import CaseLoader, read_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case_id,image,label,label_values\na,{photo},{path},2\n")
    case = CaseLoader(manifest).load(read_manifest(manifest)[0][0])
    np.testing.assert_array_equal(case.gt, shown == 2)


def test_a_png_export_past_255_labels_is_16bit_grey_with_its_names(ui):
    """A map with label 300 was refused ("PNG export holds label values up to 255 ...: export NIfTI"). It is a 16-bit
    grey PNG of the values, as the status says, the names and colours in the same text chunk; every tool reads the
    numbers, medseg too."""
    controller, ctx, sid, photo = ui
    session = ctx.store.get(sid)
    with session.lock:
        for _ in range(299):
            session.add_label()
        session.labels[0, 10:20, 30:40] = 300
        session.labels[0, 50:60, 5:9] = 1
        ctx.store.save(session)
    shown = session.labels[0].copy()
    path, vm = controller.export(ctx, sid, "png")
    assert ("Label values past 255: a 16-bit grey PNG (8 bits hold values up to 255), which viewers show near black; "
            "its label names and colours are in its medseg:labels text.") in vm.status
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.getexif().get(0x0112) == 6
    for tool, values in _stored_values_by_other_tools(path).items():
        assert values.dtype == np.uint16, tool
        np.testing.assert_array_equal(values, as_stored(shown, 6), err_msg=tool)
    table = read_label_table(path)
    assert len(table) == 300 and table[300] == ("label 300", session.label(300).colour) and table[1][0] == "label 1"
    np.testing.assert_array_equal(read_study(path).array[0], shown)
    np.testing.assert_array_equal(read_mask_image(path), shown > 0)
    from app.commands.oneshot import reference_mask

    args = argparse.Namespace(ref=str(photo), ref_mask=str(path), ref_label=300)
    np.testing.assert_array_equal(reference_mask(args, read_study(photo), 0), shown == 300)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"1": {"name": 5, "colour": "#000000"}}',
                                  '{"0": {"name": "a", "colour": "#000000"}}', '{"1": {"name": "a", "colour": "red"}}',
                                  '{"1": {"name": "a"}}', "[" * 100_000])
def test_a_medseg_labels_text_that_is_no_label_table_names_nothing_and_the_values_stay(tmp_path, text):
    """The chunk is a file's text, untrusted: anything but medseg's table is not believed in part (no names); the
    grey PNG carrying it is still read as its values."""
    values = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("medseg:labels", text)
    Image.fromarray(values).save(tmp_path / "l.png", pnginfo=info)
    assert read_label_table(tmp_path / "l.png") is None
    np.testing.assert_array_equal(read_study(tmp_path / "l.png").array[0], values)


def test_a_palette_png_mask_is_read_by_its_colours_as_before_whatever_its_text(tmp_path):
    """A palette PNG (another tool's mask) is read by its colours, as before session 27, even carrying a
    ``medseg:labels`` chunk (session 27's first try read such a file by its values): the mask reader paints its
    non-black pixels, the study reader opens its colours."""
    values = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.frombytes("P", (3, 2), values.tobytes())
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 0])  # index 2 coloured black
    info = PngImagePlugin.PngInfo()
    info.add_itxt("medseg:labels", '{"1": {"name": "a", "colour": "#ff0000"}, "2": {"name": "b", "colour": "#000000"}}')
    im.save(tmp_path / "p.png", pnginfo=info)
    np.testing.assert_array_equal(read_mask_image(tmp_path / "p.png"), values == 1)
    opened = read_study(tmp_path / "p.png").array[0]
    assert opened.shape == (2, 3, 3)
    np.testing.assert_array_equal(opened[..., 0], np.where(values == 1, 255, 0))
