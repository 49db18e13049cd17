"""A phone or camera picture stores its pixels sideways and says how to turn them (EXIF Orientation, tag 0x0112);
every photo viewer and browser shows it turned. medseg opened the stored pixels: the user clicked on a picture
lying on its side, and a box measured in any other viewer landed elsewhere. It now shows the picture as viewers
do (the reference is PIL's own ``ImageOps.exif_transpose``), says so, and writes masks in that orientation."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from data.readers import StudyWarning, read_study
from tests.conftest import DATA


def _picture() -> np.ndarray:
    """60 x 100 RGB, no symmetry: a red block near the top-left corner, a gradient elsewhere."""
    rgb = np.zeros((60, 100, 3), np.uint8)
    rgb[..., 1] = np.arange(100, dtype=np.uint8)[None, :]
    rgb[..., 2] = np.arange(60, dtype=np.uint8)[:, None] * 4
    rgb[5:20, 10:40] = (255, 0, 0)
    return rgb


def _with_orientation(path, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_picture()).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_picture_opens_turned_as_its_exif_orientation_says(tmp_path, orientation):
    path = _with_orientation(tmp_path / "photo.png", orientation)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    with pytest.warns(StudyWarning, match=rf"^{re.escape(str(path))}: EXIF Orientation {orientation}: shown turned as "
                      r"photo viewers show it \(masks are written in this orientation\)$"):
        volume = read_study(path)
    np.testing.assert_array_equal(volume.array[0], expected)
    assert volume.source.notes == (f"EXIF Orientation {orientation}: shown turned as photo viewers show it "
                                   "(masks are written in this orientation)",)


def test_orientation_1_and_no_exif_open_as_stored_without_a_note(tmp_path):
    for path in (_with_orientation(tmp_path / "upright.jpg", 1), tmp_path / "plain.png"):
        if not path.exists():
            Image.fromarray(_picture()).save(path)
        volume = read_study(path)
        assert volume.array.shape == (1, 60, 100, 3) and volume.source.notes == ()


def test_medseg_segment_takes_the_box_on_the_picture_as_viewers_show_it(tmp_path, capsys):
    """Orientation 6 (turned 90 degrees clockwise): the red block, at x 10..39, y 5..19 as stored, lies at
    x 40..54, y 10..39 on screen. A box around it there gives a mask there, on the 100 x 60 (H x W) picture."""
    path = _with_orientation(tmp_path / "photo.jpg", 6)
    out = tmp_path / "mask.png"
    from app.cli import main

    assert main(["segment", str(path), "--box", "38", "8", "56", "41", "--output", str(out)]) == 0
    assert "EXIF Orientation 6" in capsys.readouterr().err
    with Image.open(out) as im:
        mask = np.asarray(ImageOps.exif_transpose(im)) > 0
    assert mask.shape == (100, 60)
    ys, xs = np.nonzero(mask)
    assert mask[10:40, 40:55].mean() > 0.8 and 38 <= xs.min() and xs.max() <= 56 and 8 <= ys.min() and ys.max() <= 41


def test_medsegs_mask_of_a_turned_photo_lies_on_it_as_stored_and_is_its_oneshot_reference(tmp_path, capsys):
    """`medseg segment` wrote the mask of an Orientation 6 photo as shown, without the tag: `medseg oneshot --ref
    photo.jpg --ref-mask mask.png` then refused medseg's own mask ("the reference image has EXIF Orientation 6 and the
    mask 1 (as stored)"), and a tool reading stored pixels saw it turned against the photo. It is written as the photo
    stores its pixels, with its Orientation: the red block's mask lies at x 10..39, y 5..19 of the stored pixels, medseg
    reads it back as drawn, and oneshot takes it (session 26)."""
    from app.cli import main
    from data.pictures import read_mask_image

    path = _with_orientation(tmp_path / "photo.jpg", 6)
    out = tmp_path / "mask.png"
    assert main(["segment", str(path), "--box", "38", "8", "56", "41", "--output", str(out)]) == 0
    with Image.open(out) as im:
        stored, orientation = np.asarray(im) > 0, im.getexif().get(0x0112)
    assert orientation == 6 and stored.shape == (60, 100) and stored[5:20, 10:40].mean() > 0.8
    np.testing.assert_array_equal(read_mask_image(out), np.rot90(stored, -1))
    capsys.readouterr()
    assert main(["oneshot", "--ref", str(path), "--ref-mask", str(out), "--targets", str(path),
                 "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "photo.png") as im:
        assert im.getexif().get(0x0112) == 6 and (np.asarray(im)[5:20, 10:40] > 0).mean() > 0.8


def test_a_mask_picture_is_turned_as_its_image_is(tmp_path):
    """The one-shot reference mask and the UI's drawn mask (``read_mask_image``) follow the same rule, so a mask
    painted on a turned photo and saved with its EXIF lies on the photo as shown."""
    from data.pictures import read_mask_image

    path = _with_orientation(tmp_path / "mask.png", 6)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im)).max(axis=2) > 0
    np.testing.assert_array_equal(read_mask_image(path), expected)


def test_oneshot_refuses_a_reference_and_mask_turned_differently(tmp_path, capsys):
    """As ``medseg eval`` does (``tests/evaluation``): a square photo with Orientation 6 and a mask PNG without it."""
    from app.cli import main

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ref.png", exif=exif)
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 22)).save(tmp_path / "mask.png")
    code = main(["oneshot", "--ref", str(tmp_path / "ref.png"), "--ref-mask", str(tmp_path / "mask.png"),
                 "--targets", str(tmp_path / "ref.png"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"medseg oneshot: error: --ref-mask {tmp_path / 'mask.png'}: the reference image has EXIF Orientation 6 and "
        "the mask 1 (as stored); which way the mask was drawn is not known: save both with the same orientation"), err


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_mask_written_for_a_turned_picture_reads_back_as_drawn_in_medseg_and_in_viewers(tmp_path, orientation):
    """``write_png_mask(exif_orientation=)`` stores the mask as the picture stores its pixels, with its tag (session 26):
    PIL's ``exif_transpose`` (what viewers show) and medseg's ``read_mask_image`` both give the mask as drawn, and the
    stored pixels lie where the picture's stored pixels are (the red block of ``_picture``)."""
    from data.pictures import read_mask_image
    from data.writers import write_png_mask

    photo = _with_orientation(tmp_path / "photo.png", orientation)
    with Image.open(photo) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    drawn = (shown[..., 0] == 255) & (shown[..., 1] < 100)  # the red block, as shown
    write_png_mask(drawn, tmp_path / "mask.png", exif_orientation=orientation)
    np.testing.assert_array_equal(read_mask_image(tmp_path / "mask.png"), drawn)
    with Image.open(tmp_path / "mask.png") as im:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)) > 0, drawn)
        stored = np.asarray(im) > 0
    assert stored.shape == (60, 100) and stored[5:20, 10:40].all() and stored.sum() == 15 * 30


def test_the_uis_png_export_of_a_turned_photos_labels_is_its_oneshot_reference(tmp_path, capsys):
    """The UI exported a phone photo's labels only as a NIfTI in the shown orientation, without the EXIF tag, so
    `medseg oneshot --ref photo.jpg --ref-mask labels.nii.gz` (and `medseg eval`) refused it: "the reference image has
    EXIF Orientation 6 and the mask 1 (as stored)" (session 26's leftover). The UI's PNG export writes the labels as the
    photo stores its pixels, with its Orientation, every label's value kept; oneshot takes it (session 26b)."""
    from app import controller
    from app.cli import main
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionError, SessionStore

    photo = _with_orientation(tmp_path / "photo.jpg", 6)
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(photo)])
    drawn = np.zeros((100, 60), bool)  # as shown: the red block of the stored x 10..39, y 5..19 turned by 6
    drawn[10:40, 40:55] = True
    controller.mask(ctx, sid, drawn, False)
    controller.add_label(ctx, sid, "second")
    second = np.zeros((100, 60), bool)
    second[80:90, 5:15] = True
    controller.mask(ctx, sid, second, False)
    shown = ctx.store.get(sid).labels[0].copy()
    assert set(np.unique(shown)) == {0, 1, 2}

    path, vm = controller.export(ctx, sid, "png")
    assert path.name == "deidentified_labels.png" and vm.status.startswith("Exported deidentified_labels.png.")
    with Image.open(path) as im:
        stored, orientation = np.asarray(im), im.getexif().get(0x0112)
    assert orientation == 6 and stored.shape == (60, 100) and (stored[5:20, 10:40] == 1).all()
    back = read_study(path)  # read back as drawn, every label's value, turned as the photo (what eval compares)
    np.testing.assert_array_equal(back.array[0], shown)
    assert back.source.exif_orientation == read_study(photo).source.exif_orientation == 6
    assert main(["oneshot", "--ref", str(photo), "--ref-mask", str(path), "--targets", str(photo),
                 "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "photo.png") as im:
        assert im.getexif().get(0x0112) == 6 and (np.asarray(im)[5:20, 10:40] > 0).mean() > 0.8

    path, vm = controller.export(ctx, sid, "nifti")  # still there; it says what it cannot carry
    assert "EXIF Orientation 6, which a NIfTI cannot carry: export PNG" in vm.status
    sid2 = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid2, [str(DATA / "ct_head_0051_slabA_image.nii.gz")])
    with pytest.raises(SessionError, match=r"^PNG export is for a picture \(PNG or JPEG\) study; this one is not"):
        controller.export(ctx, sid2, "png")
