"""The UI's PNG export of a picture's labels (session 26b) was a bare 8-bit grey map: values 1, 2, 3 that a viewer
shows near black, with no name or colour, so neither a person nor another tool could tell which structure was which
(session 26's leftover). It is now a palette PNG whose entry N is label N's colour, its pixels the label values as
before, with an iTXt chunk ``medseg:labels`` naming them; past 255, 16-bit grey with the chunk. Everything in medseg
that read its PNG masks reads it to the same values (session 27)."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from data.pictures import as_stored, read_label_table, read_mask_image, visible_pixels
from data.readers import read_study
from tests.conftest import DATA

# AAL values of Colin27's middle slab slice -> the UI labels they become: (name, colour); one label coloured black
STRUCTURES = {71: ("Caudate_L", (230, 25, 75)), 74: ("Putamen droit é", (0, 0, 0)), 77: ("Thalamus_L", (0, 130, 200))}


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


def test_the_uis_png_export_names_its_labels_in_their_colours_and_reads_back_as_their_values(ui, tmp_path):
    """Three AAL structures of the real Colin27 slice painted as labels 1-3 (one named in UTF-8, one coloured black).
    The export opens in Pillow as a palette PNG of the label values, its palette their colours, its text their names;
    medseg reads it as before: the study reader (what eval and `oneshot --ref-mask` read, turned by the photo's EXIF
    Orientation 6), the mask reader (the UI's mask file, `oneshot --ref-mask` without --ref-label; the black label's
    pixels too), `oneshot --ref-label N` and an eval manifest's label_values."""
    controller, ctx, sid, photo = ui
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
    assert vm.status.startswith("Exported deidentified_labels.png.") and "16-bit" not in vm.status
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P" and im.getexif().get(0x0112) == 6
        np.testing.assert_array_equal(np.asarray(im), as_stored(shown, 6))  # the label values, stored as the photo
        palette = np.reshape(im.getpalette(), (-1, 3))
        text = im.info["medseg:labels"]
    assert [tuple(c) for c in palette.tolist()] == [(0, 0, 0), *(colour for _, colour in STRUCTURES.values())]
    assert json.loads(text) == {"1": {"name": "Caudate_L", "colour": "#e6194b"},
                                "2": {"name": "Putamen droit é", "colour": "#000000"},
                                "3": {"name": "Thalamus_L", "colour": "#0082c8"}}
    assert read_label_table(path) == {n: entry for n, entry in enumerate(STRUCTURES.values(), start=1)}
    assert read_label_table(photo) is None

    back = read_study(path)
    np.testing.assert_array_equal(back.array[0], shown)
    assert back.array.dtype == np.uint8 and back.source.exif_orientation == 6
    np.testing.assert_array_equal(read_mask_image(path), shown > 0)  # label 2, coloured black, is painted too
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
    """A palette holds 256 colours: a map with label 300 was refused ("PNG export holds label values up to 255 ...:
    export NIfTI"). It is now a 16-bit grey PNG of the values (a viewer shows it near black, as the status says), the
    names and colours in the same text chunk; medseg reads it back to its values."""
    controller, ctx, sid, _ = ui
    session = ctx.store.get(sid)
    with session.lock:
        for _ in range(299):
            session.add_label()
        session.labels[0, 10:20, 30:40] = 300
        session.labels[0, 50:60, 5:9] = 1
        ctx.store.save(session)
    shown = session.labels[0].copy()
    path, vm = controller.export(ctx, sid, "png")
    assert ("Label values past 255: a 16-bit grey PNG (a palette holds 256 colours), which viewers show near black; "
            "its label names and colours are in its medseg:labels text.") in vm.status
    with Image.open(path) as im:
        assert im.mode == "I;16" and im.getexif().get(0x0112) == 6
        np.testing.assert_array_equal(np.asarray(im), as_stored(shown, 6))
    table = read_label_table(path)
    assert len(table) == 300 and table[300] == ("label 300", session.label(300).colour) and table[1][0] == "label 1"
    np.testing.assert_array_equal(read_study(path).array[0], shown)
    np.testing.assert_array_equal(read_mask_image(path), shown > 0)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"1": {"name": 5, "colour": "#000000"}}',
                                  '{"0": {"name": "a", "colour": "#000000"}}', '{"1": {"name": "a", "colour": "red"}}',
                                  '{"1": {"name": "a"}}', "[" * 100_000])
def test_a_medseg_labels_text_that_is_no_label_table_names_nothing_and_the_values_stay(tmp_path, text):
    """The chunk is a file's text, untrusted: anything but medseg's table is not believed in part (no names); the
    palette PNG carrying it is still read as its values."""
    values = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.frombytes("P", (3, 2), values.tobytes())
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    info = PngImagePlugin.PngInfo()
    info.add_itxt("medseg:labels", text)
    im.save(tmp_path / "l.png", pnginfo=info)
    assert read_label_table(tmp_path / "l.png") is None
    np.testing.assert_array_equal(read_study(tmp_path / "l.png").array[0], values)
