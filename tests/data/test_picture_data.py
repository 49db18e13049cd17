"""A PNG whose compressed image data ends cleanly but too soon (a complete zlib stream, valid chunk CRCs and an
IEND, holding fewer rows than its header declares: an exporter or a transfer that stopped early and closed the
file properly) opened as if whole: PIL pads the missing rows with black without a word, where libpng refuses
("Not enough image data"). Found in session 18's adversarial pass; a file cut mid-stream was already refused."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.pictures import PNG_SIGNATURE, read_mask_image
from data.readers import StudyError, StudyWarning, read_study
from tests.conftest import DATA

COLIN = DATA / "mr_t1_colin27_slabA_image.nii.gz"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(pixels: np.ndarray, *, rows: int | None = None, interlace: bool = False, split: int = 0) -> bytes:
    """A PNG of ``pixels`` (H, W) uint8/uint16 grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA,
    unfiltered; ``rows``: only the first rows' data in the (complete) zlib stream; ``split``: the stream over several
    IDAT chunks of that size."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">")) if depth == 16 else pixels
    if interlace:  # Adam7: seven passes of sub-images, each row with its filter byte
        raw = b""
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                               (0, 1, 1, 2)):
            sub = big_endian[y0::dy, x0::dx]
            if sub.size:
                raw += b"".join(b"\0" + row.tobytes() for row in sub)
    else:
        raw = b"".join(b"\0" + row.tobytes() for row in big_endian[:rows])
    stream = zlib.compress(raw)
    parts = [stream[i:i + split] for i in range(0, len(stream), split)] if split else [stream]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 1 if interlace else 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(_chunk(b"IDAT", p) for p in parts)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def slice_8bit() -> np.ndarray:
    """An axial slice of the real Colin27 T1 (uint8), as a picture of it would hold."""
    data = np.asanyarray(nib.load(str(COLIN)).dataobj)
    return np.ascontiguousarray(data[:, :, data.shape[2] // 2].T).astype(np.uint8)


def _cases(slice_8bit: np.ndarray) -> dict[str, np.ndarray]:
    rgb = np.stack([slice_8bit, slice_8bit // 2, 255 - slice_8bit], axis=-1)
    return {"grey": slice_8bit, "grey16": slice_8bit.astype(np.uint16) * 257, "rgb": rgb}


@pytest.mark.parametrize("kind", ["grey", "grey16", "rgb"])
def test_a_png_whose_image_data_ends_early_is_refused(tmp_path, slice_8bit, kind):
    pixels = _cases(slice_8bit)[kind]
    h = pixels.shape[0]
    path = tmp_path / "slice.png"
    path.write_bytes(_png(pixels, rows=h // 3))
    with pytest.raises(StudyError, match=rf"slice\.png: the PNG's image data ends after {h // 3} of {h} rows; "
                                         r"the picture is incomplete \(damaged, or cut off when it was saved\)"):
        read_study(path)
    with pytest.raises(StudyError, match=r"the PNG's image data ends after"):
        read_mask_image(path)


def test_an_interlaced_png_whose_image_data_ends_early_is_refused(tmp_path, slice_8bit):
    whole = _png(slice_8bit, interlace=True)
    (tmp_path / "whole.png").write_bytes(whole)
    np.testing.assert_array_equal(read_study(tmp_path / "whole.png").array[0], slice_8bit)  # the builder is right
    raw = zlib.decompress(whole[33 + 8:33 + 8 + struct.unpack(">I", whole[33:37])[0]])
    short = (b"\x89PNG\r\n\x1a\n" + whole[8:33] + _chunk(b"IDAT", zlib.compress(raw[: len(raw) // 2]))
             + _chunk(b"IEND", b""))
    (tmp_path / "short.png").write_bytes(short)
    with pytest.raises(StudyError, match=rf"short\.png: the PNG's image data ends after {len(raw) // 2} of "
                                         rf"{len(raw)} bytes \(interlaced\); the picture is incomplete"):
        read_study(tmp_path / "short.png")


@pytest.mark.parametrize("kind", ["grey", "grey16", "rgb"])
def test_whole_pngs_open_as_before_in_one_or_many_idat_chunks(tmp_path, slice_8bit, kind):
    pixels = _cases(slice_8bit)[kind]
    for split in (0, 1000):
        path = tmp_path / f"whole{split}.png"
        path.write_bytes(_png(pixels, split=split))
        np.testing.assert_array_equal(read_study(path).array[0], pixels)
    assert read_mask_image(path).sum() == (pixels.reshape(pixels.shape[0], pixels.shape[1], -1) > 0).any(-1).sum()


def test_pngs_written_by_pil_and_opencv_open_as_before(tmp_path, slice_8bit):
    import cv2
    from PIL import Image

    Image.fromarray(slice_8bit).save(tmp_path / "pil.png", optimize=True)
    cv2.imwrite(str(tmp_path / "cv.png"), slice_8bit.astype(np.uint16) * 200)
    np.testing.assert_array_equal(read_study(tmp_path / "pil.png").array[0], slice_8bit)
    np.testing.assert_array_equal(read_study(tmp_path / "cv.png").array[0], slice_8bit.astype(np.uint16) * 200)


def test_an_8bit_png_of_a_grey_palette_opens_grey_and_one_of_colours_in_colour(tmp_path, slice_8bit):
    """Session 23: a grey picture stored as a palette PNG (PIL's convert("P") of a grey image, some tools' 8-bit
    grey) opened as RGB, three equal channels: called colour, no grey window, where the same picture saved as grey,
    grey+alpha or 16 bits opened grey. Now its grey values; a palette with colour, or with a colour some pixels use,
    opens in its colours as before, and a grey palette with a transparent colour is grey with the transparency note."""
    from PIL import Image

    from data.study_errors import StudyWarning

    Image.fromarray(slice_8bit).convert("P").save(tmp_path / "grey.png")
    grey = read_study(tmp_path / "grey.png")
    assert grey.array.shape == (1, *slice_8bit.shape)
    np.testing.assert_array_equal(grey.array[0], slice_8bit)
    tinted = Image.fromarray(slice_8bit).convert("P")
    palette = tinted.getpalette()
    used = int(slice_8bit.max())  # PIL's grey palette: index v is the grey v
    palette[3 * used: 3 * used + 3] = [255, 0, 0]  # one colour, used by some pixels, is red
    tinted.putpalette(palette)
    tinted.save(tmp_path / "tinted.png")
    colour = read_study(tmp_path / "tinted.png").array[0]
    assert colour.shape == (*slice_8bit.shape, 3)
    np.testing.assert_array_equal(colour, np.asarray(tinted.convert("RGB")))
    Image.fromarray(slice_8bit).convert("P").save(tmp_path / "holes.png", transparency=used)
    with pytest.warns(StudyWarning, match="transparent"):
        holes = read_study(tmp_path / "holes.png")
    np.testing.assert_array_equal(holes.array[0], slice_8bit)


@pytest.mark.parametrize("channels", ["RGB", "RGBA"])
def test_an_8bit_png_of_equal_rgb_channels_opens_grey_as_a_16bit_one_does(tmp_path, slice_8bit, channels):
    """Session 24: a grey picture saved as 8-bit RGB (a screenshot of a viewer, an export that writes colour) opened
    as a colour picture of three equal channels, with no grey window, where the same picture stored as 16-bit RGB,
    as a grey palette or as grey+alpha opened grey. Now its grey values; one pixel of colour keeps it colour."""
    from PIL import Image

    rgb = np.dstack([slice_8bit] * 3)
    pixels = np.dstack([rgb, np.full(slice_8bit.shape, 255, np.uint8)]) if channels == "RGBA" else rgb
    Image.fromarray(pixels, channels).save(tmp_path / "grey.png")
    grey = read_study(tmp_path / "grey.png")
    assert grey.array.shape == (1, *slice_8bit.shape)
    np.testing.assert_array_equal(grey.array[0], slice_8bit)
    rgb[5, 7] = (255, 0, 0)  # one red mark: a colour picture
    Image.fromarray(rgb).save(tmp_path / "marked.png")
    np.testing.assert_array_equal(read_study(tmp_path / "marked.png").array[0], rgb)


def test_a_png_with_more_image_data_than_its_rows_opens(tmp_path, slice_8bit):
    """libpng only warns of extra compressed data ("Extra compressed data"); the image is whole, so it opens."""
    h, w = slice_8bit.shape
    raw = b"".join(b"\0" + row.tobytes() for row in slice_8bit) + b"\0" * (w + 1) * 3
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path = tmp_path / "extra.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
                     + _chunk(b"IEND", b""))
    np.testing.assert_array_equal(read_study(path).array[0], slice_8bit)


def test_the_samples_pngs_are_not_read_twice_in_memory(tmp_path, slice_8bit):
    """The check counts the inflated bytes in steps and keeps none: a 4096 x 4096 PNG of zeros (16 MiB of rows from
    16 KB) opens, and a stream that inflates past its rows is not inflated further than needed."""
    big = np.zeros((4096, 4096), np.uint8)
    path = Path(tmp_path / "zeros.png")
    path.write_bytes(_png(big))
    assert read_study(path).array.shape == (1, 4096, 4096)


def _jpeg(pixels: np.ndarray, *, progressive: bool = False) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, progressive=progressive)
    return out.getvalue()


@pytest.mark.parametrize("kind, progressive", [("grey", False), ("grey", True), ("rgb", False), ("rgb", True)])
def test_a_jpeg_cut_off_and_closed_with_an_end_marker_is_refused(tmp_path, slice_8bit, kind, progressive):
    """The first third of a JPEG of the real Colin27 slice, then EOI (FF D9): opened with the missing rows grey
    (Pillow silences libjpeg's 'Corrupt JPEG data: premature end of data segment'), as a study and as a mask (a
    JPEG mask, whole or not, is refused since session 20: ``test_a_jpeg_mask_is_refused_*``)."""
    whole = _jpeg(_cases(slice_8bit)[kind], progressive=progressive)
    path = tmp_path / "slice.jpg"
    path.write_bytes(whole[: len(whole) // 3] + b"\xff\xd9")
    message = (f"{path}: the JPEG's image data ends before its last row (libjpeg: 'Corrupt JPEG data: premature end "
               "of data segment'); the picture is incomplete, its missing part grey (damaged, or cut off when it was "
               "saved): save or export it again")
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value) == message
    with pytest.raises(StudyError, match="a JPEG mask; JPEG's lossy compression"):
        read_mask_image(path)


def test_a_phone_mpo_jpeg_cut_off_and_closed_with_an_end_marker_is_refused(tmp_path, slice_8bit):
    """A phone's JPEG with a second picture (MPO: Pillow names its format 'MPO', not 'JPEG') of the real Colin27
    slice, cut to its first third and closed with EOI: opened with the missing rows grey, as if whole, where a plain
    JPEG so cut is refused (session 24). The whole MPO still opens as its first picture."""
    from PIL import Image

    rgb = _cases(slice_8bit)["rgb"]
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, "MPO", save_all=True, append_images=[Image.fromarray(rgb[::-1])], quality=90)
    whole = path.read_bytes()
    with Image.open(path) as im:
        assert im.format == "MPO"
        first = np.asarray(im)
    np.testing.assert_array_equal(read_study(path).array[0], first)
    path.write_bytes(whole[: len(whole) // 6] + b"\xff\xd9")  # within the first picture: the second is as long
    with Image.open(path) as im:
        assert im.format == "MPO"
    with pytest.raises(StudyError, match=r"photo\.jpg: the JPEG's image data ends before its last row"):
        read_study(path)


@pytest.mark.parametrize("kind, progressive", [("grey", False), ("grey", True), ("rgb", False), ("rgb", True)])
def test_whole_jpegs_open_as_pillow_decodes_them(tmp_path, slice_8bit, kind, progressive):
    from PIL import Image

    path = tmp_path / "slice.jpg"
    path.write_bytes(_jpeg(_cases(slice_8bit)[kind], progressive=progressive))
    with Image.open(path) as im:
        expected = np.asarray(im)
    np.testing.assert_array_equal(read_study(path).array[0], expected)


def test_a_cut_jpeg_upload_is_refused_by_the_isolated_reader(tmp_path, slice_8bit):
    """Uploads are read in the isolated reader's child, whose main thread catches libjpeg's stderr."""
    from data.isolated_read import read_study_isolated

    whole = _jpeg(slice_8bit)
    path = tmp_path / "slice.jpg"
    path.write_bytes(whole[: len(whole) // 3] + b"\xff\xd9")
    with pytest.raises(StudyError, match=r"slice\.jpg: the JPEG's image data ends before its last row"):
        read_study_isolated(path, scratch=tmp_path)


@pytest.mark.parametrize("colour", [(255, 255, 255), (255, 0, 0)])
def test_a_jpeg_mask_is_refused_its_compression_paints_faint_pixels(tmp_path, colour):
    """A mask saved as JPEG (Pillow's default quality 75): the real AAL deep grey nuclei of Colin27's slice 16, 1833
    pixels, read as 2737 in white and 5240 in red: JPEG's ringing and colour subsampling leave faint non-zero pixels
    around every edge, and a mask is every non-zero pixel. The UI's mask file and ``oneshot --ref-mask`` took them
    as painted. A mask in JPEG is refused now (nothing decoded); the same mask in PNG is read exactly."""
    from PIL import Image

    labels = np.asanyarray(nib.load(str(DATA / "mr_t1_colin27_slabA_label.nii.gz")).dataobj)
    painted = np.ascontiguousarray(labels[:, :, 16].T) > 0
    assert painted.sum() == 1833
    pixels = np.zeros((*painted.shape, 3), np.uint8)
    pixels[painted] = colour
    Image.fromarray(pixels).save(tmp_path / "mask.jpg")
    with pytest.raises(StudyError) as e:
        read_mask_image(tmp_path / "mask.jpg")
    assert str(e.value) == (f"{tmp_path / 'mask.jpg'}: a JPEG mask; JPEG's lossy compression leaves faint pixels "
                            "around every painted edge, so which pixels were painted is not known: save the mask as "
                            "PNG")
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_mask_image(tmp_path / "mask.png"), painted)


@pytest.mark.parametrize("size, depth, said", [
    ((0, 8), 8, "a PNG of 0 x 8 pixels, an empty picture; expected an image of at least 1 x 1 pixels"),
    ((8, 0), 8, "a PNG of 8 x 0 pixels, an empty picture; expected an image of at least 1 x 1 pixels"),
    ((8, 8), 7, "a PNG whose header (IHDR: 8 x 8 pixels, bit depth 7, colour type 0) is not valid: the file is "
                "damaged; save or export it again"),
])
def test_a_png_whose_header_pillow_refuses_is_named_a_png(tmp_path, size, depth, said):
    """A PNG of 0 x 8 pixels (or bit depth 7) was refused as "not a readable PNG/JPEG image (its bytes are neither PNG
    nor JPEG)", which sent the user looking for a format problem; the line now says what its header holds (session
    22). A file that is no PNG keeps its line."""
    width, height = size
    path = tmp_path / "slice.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(b"\x00" * 9 * max(height, 1))) + _chunk(b"IEND", b""))
    for read in (read_study, read_mask_image):
        with pytest.raises(StudyError) as e:
            read(path)
        assert str(e.value) == f"{path}: {said}"
    other = tmp_path / "other.png"
    other.write_bytes(b"GIF89a" + b"\x00" * 40)
    with pytest.raises(StudyError, match="its bytes are neither PNG nor JPEG"):
        read_study(other)


@pytest.mark.parametrize("depth", [8, 16])
def test_a_grey_alpha_png_is_a_mask_of_its_painted_visible_pixels_and_an_image_with_a_note(tmp_path, depth):
    """Session 22: a 16-bit grey+alpha mask of label 1 read as empty (PIL kept each value's high byte, 0), and as an
    image its alpha was dropped without a word. Now 8- and 16-bit alike: the mask is non-zero and not transparent
    (``_loaded_with_alpha``), the image keeps its stored grey values with a note naming the transparent pixels."""
    dtype, opaque = (np.uint16, 65535) if depth == 16 else (np.uint8, 255)
    grey = np.zeros((6, 8), dtype)
    grey[1:4, 1:4] = 1
    grey[:, 6:] = 200  # under the transparent columns: not painted
    alpha = np.full((6, 8), opaque, dtype)
    alpha[:, 6:] = 0
    path = tmp_path / f"ga{depth}.png"
    path.write_bytes(_png(np.dstack([grey, alpha])))
    expected = np.zeros((6, 8), bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(read_mask_image(path), expected)
    with pytest.warns(StudyWarning) as record:
        vol = read_study(path)
    note = ("12 of 48 pixels are fully transparent (its alpha channel); opened with their stored values, the "
            "transparency ignored (another viewer may show them blank)")
    assert [str(w.message) for w in record] == [f"{path}: {note}"] and vol.source.notes == (note,)
    # session 23: an 8-bit grey+alpha opened as RGB (three equal channels), the 16-bit one as grey
    assert vol.array.shape == (1, 6, 8) and vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array[0], grey)


BIG = zlib.compress(b"x" * 2_000_000)  # 2 MB inflated: past Pillow's 1 MB a text or ICC-profile chunk
OVERSIZED_METADATA = {"zTXt": b"Comment\0\0" + BIG, "iTXt": b"Comment\0\1\0en\0Comment\0" + BIG,
                      "iCCP": b"ICC profile\0\0" + BIG}


def _with_chunk(png: bytes, chunk: bytes, where: str) -> bytes:
    at = png.index(b"IDAT") - 4 if where == "before" else png.index(b"IEND") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize("kind", sorted(OVERSIZED_METADATA))
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_png_whose_metadata_inflates_past_pillows_guard_opens_without_it(tmp_path, slice_8bit, kind, where):
    """The Colin27 slice with a 2 MB comment or ICC profile (a zTXt, iTXt or iCCP chunk, before or after its image
    data): refused as `not a readable PNG/JPEG image (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)`
    (session 25's leftover), then as metadata past Pillow's guard (hostile25b), though its pixels are whole. The chunk
    is left out now, Pillow's guard as it was: the picture opens as stored, as an image and as a mask (session 26)."""
    path = tmp_path / "commented.png"
    path.write_bytes(_with_chunk(_png(slice_8bit), _chunk(kind.encode(), OVERSIZED_METADATA[kind]), where))
    np.testing.assert_array_equal(read_study(path).array[0], slice_8bit)
    np.testing.assert_array_equal(read_mask_image(path), slice_8bit > 0)


def test_a_png_with_oversized_metadata_is_still_refused_for_a_bomb_or_cut_image_data(tmp_path, slice_8bit):
    """Leaving out the oversized metadata (above) lowers no guard on the picture: with the 2 MB comment, a
    decompression bomb in the image data (20000 x 20000 pixels of 0, 400 MB from a file of 0.4 MB) is refused by
    Pillow's pixel guard, and image data that ends early by medseg's check, as without it (session 26)."""
    comment = _chunk(b"zTXt", OVERSIZED_METADATA["zTXt"])
    side = 20_000
    squeeze, row = zlib.compressobj(9), b"\0" * (side + 1)
    bomb = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    path = tmp_path / "bomb.png"
    path.write_bytes(PNG_SIGNATURE + header + comment + _chunk(b"IDAT", bomb) + _chunk(b"IEND", b""))
    with pytest.raises(StudyError, match=r"bomb\.png: image too large to open safely \(Image size \(400000000 pixels\) "
                                         r"exceeds limit"):
        read_study(path)
    h = slice_8bit.shape[0]
    path = tmp_path / "cut.png"
    path.write_bytes(_with_chunk(_png(slice_8bit, rows=h // 3), comment, "before"))
    with pytest.raises(StudyError, match=rf"cut\.png: the PNG's image data ends after {h // 3} of {h} rows"):
        read_study(path)


def test_the_open_says_which_oversized_metadata_it_left_out(tmp_path, slice_8bit):
    """The metadata past Pillow's guard was left out silently (session 26's leftover): a user looking for the picture's
    ICC profile or comment, or for the EXIF orientation an ImageMagick profile held, was not told. The open's notes
    (shown with the study, as other readers' notes are) and a warning say which chunks, and that an orientation such a
    chunk may have held is not applied (session 27). A mask read has no notes; a picture without such chunks none."""
    comment = _chunk(b"zTXt", OVERSIZED_METADATA["zTXt"])
    profile = _chunk(b"iCCP", OVERSIZED_METADATA["iCCP"])
    exif = _chunk(b"zTXt", b"Raw profile type exif\0\0" + BIG)
    odd = _chunk(b"iTXt", b"<b>x</b>\x07\0\1\0en\0x\0" + BIG)  # a keyword that is not printable Latin-1: not repeated
    cases = {
        (comment,): "its metadata chunk text 'Comment' (zTXt) was left out: it inflates past Pillow's limit of 1 MB a "
                    "chunk (a guard against decompression bombs); medseg uses no PNG text or ICC profile, and the "
                    "picture's pixels are whole",
        (profile, comment): "its metadata chunks ICC profile (iCCP), text 'Comment' (zTXt) were left out: each "
                            "inflates past",
        (exif,): "its metadata chunk text 'Raw profile type exif' (zTXt) was left out: it inflates past",
        (odd, comment, comment, profile, comment): "its metadata chunks text (iTXt), text 'Comment' (zTXt), text "
                                                   "'Comment' (zTXt) and 2 more were left out: each inflates past",
    }
    for chunks, said in cases.items():
        path = tmp_path / "commented.png"
        path.write_bytes(_with_chunk(_png(slice_8bit), b"".join(chunks), "before"))
        with pytest.warns(StudyWarning, match=re.escape(f"{path}: {said}")):
            volume = read_study(path)
        np.testing.assert_array_equal(volume.array[0], slice_8bit)
        assert len(volume.source.notes) == 1 and volume.source.notes[0].startswith(said)
        assert volume.source.notes[0].endswith("; 'Raw profile type exif' may have held an EXIF Orientation, not "
                                               "applied: the picture is shown as stored") == (chunks == (exif,))
    path.write_bytes(_with_chunk(_png(slice_8bit), comment, "after"))  # in the UI: read in a child process
    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore

    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    status = controller.open_upload(ctx, sid, [str(path)]).status
    assert f"Note: {cases[(comment,)]}." in status, status
    path.write_bytes(_png(slice_8bit))
    assert read_study(path).source.notes == ()


def test_a_palette_png_whose_pixels_index_past_its_palette_is_refused_as_image_and_mask(tmp_path):
    """Session 30: a palette PNG (a label tool's mask: index 5 painted, a palette of 2 colours) whose pixels use an
    index its PLTE does not hold, which the PNG standard calls an error: Pillow showed those pixels black, so the
    image opened all black as if valid and, uploaded as a mask, the 32 painted pixels read as none. Each is one line
    naming the index and the palette's size; a palette that holds every index used opens as before."""
    pixels = np.tile(np.array([0, 0, 5, 5, 5, 5, 0, 0], np.uint8), (8, 1))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 3, 0, 0, 0)
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)

    def palette_png(colours: int) -> bytes:
        plte = bytes([0, 0, 0] + [255] * 3 * (colours - 1))  # black, then white
        return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", plte) + _chunk(b"IDAT", zlib.compress(raw))
                + _chunk(b"IEND", b""))

    (tmp_path / "short.png").write_bytes(palette_png(2))
    told = (f"{tmp_path / 'short.png'}: a palette PNG whose pixels use colour index 5, but its palette (PLTE) holds 2 "
            "colours (indices 0 to 1); the PNG standard makes such an index an error, and what those pixels show is "
            "a guess (black here): save or export it again")
    with pytest.raises(StudyError, match="^" + re.escape(told) + "$"):
        read_study(tmp_path / "short.png")
    with pytest.raises(StudyError, match="^" + re.escape(told) + "$"):
        read_mask_image(tmp_path / "short.png")
    (tmp_path / "whole.png").write_bytes(palette_png(6))
    assert read_mask_image(tmp_path / "whole.png").sum() == 32
    assert read_study(tmp_path / "whole.png").array.shape[:3] == (1, 8, 8)


@pytest.mark.parametrize("second", [b"IHDR", b"PLTE"])
def test_a_png_with_a_second_header_or_palette_is_refused_naming_the_chunk(tmp_path, second):
    """Session 30: an 8 x 8 palette PNG carrying a second IHDR (4 x 4 grey) opened as that 4 x 4 grey picture, its
    8 x 8 data read through the wrong header (9 of 32 mask pixels), and one with a second PLTE took the second's
    colours; the PNG standard allows one of each, libpng refuses a second IHDR. A palette PNG without a PLTE is named
    so, not as a palette of 0 colours."""
    pixels = np.tile(np.array([0, 0, 1, 1, 1, 1, 0, 0], np.uint8), (8, 1))
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 3, 0, 0, 0))
    plte = _chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255]))
    extra = {b"IHDR": _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)),
             b"PLTE": _chunk(b"PLTE", bytes([9, 9, 9, 0, 0, 0]))}[second]
    idat = _chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in pixels)))
    (tmp_path / "two.png").write_bytes(PNG_SIGNATURE + ihdr + plte + extra + idat + _chunk(b"IEND", b""))
    told = (f"{tmp_path / 'two.png'}: the PNG holds a second {second.decode()} chunk, where the standard allows one "
            "(readers disagree which one counts): the file is damaged; save or export it again")
    for read in (read_study, read_mask_image):
        with pytest.raises(StudyError, match="^" + re.escape(told) + "$"):
            read(tmp_path / "two.png")
    (tmp_path / "bare.png").write_bytes(PNG_SIGNATURE + ihdr + idat + _chunk(b"IEND", b""))
    with pytest.raises(StudyError, match="^" + re.escape(f"{tmp_path / 'bare.png'}: a palette PNG without a palette "
                                                          "(no PLTE chunk before its image data)")):
        read_study(tmp_path / "bare.png")
