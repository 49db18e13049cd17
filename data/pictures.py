"""PNG and JPEG pictures (photographs, screenshots, ultrasound frames saved as pictures, and the mask images
drawn on them) read as a one-slice ``Volume`` or a boolean mask: the format checked by its bytes, one frame, the
size within the voxel limit, EXIF orientation applied as photo viewers apply it, and 16-bit PNGs kept at 16 bits.
``data.readers.read_study`` comes here for ``.png``/``.jpg``/``.jpeg``."""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from data.study_errors import StudyError, StudyWarning, check_voxels, first_line, voxel_limit
from data.untrusted import native_stderr_captured, one_line
from data.volume import SourceRef, Volume

TO_RGB_MODES = ("RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


# the note on an image whose alpha hides pixels; a caller reading the file as a label (whose alpha it applies,
# ``visible_pixels``) leaves it out
TRANSPARENCY_IGNORED = ("pixels are fully transparent (its alpha channel); opened with their stored values, the "
                        "transparency ignored (another viewer may show them blank)")


# The text chunk (iTXt, UTF-8, uncompressed) in which medseg's grey PNG label map names its labels, a JSON object
# {"1": {"name": "liver", "colour": "#e6194b"}, ...} (``data.writers.write_png_labels``). Only names them: the pixels
# are the label values, read as any grey PNG is.
LABELS_CHUNK_KEY = "medseg:labels"


def label_table_text(names: Mapping[int, str], colours: Mapping[int, Sequence[int]]) -> str:
    """The ``medseg:labels`` chunk's JSON for labels value -> name and value -> RGB colour (0-255)."""
    return json.dumps({str(v): {"name": names[v], "colour": "#{:02x}{:02x}{:02x}".format(*colours[v])}
                       for v in sorted(names)}, ensure_ascii=False)


def label_table(im: Image.Image) -> dict[int, tuple[str, tuple[int, int, int]]] | None:
    """The labels a loaded PNG names in its ``medseg:labels`` chunk, value -> (name, RGB colour); None without the
    chunk or when it is not such a table (the file's text, untrusted: not partly believed)."""
    text = im.info.get(LABELS_CHUNK_KEY)
    try:
        table = json.loads(text) if isinstance(text, str) else None
        if not isinstance(table, dict):
            return None
        out = {}
        for key, entry in table.items():
            value, name, colour = int(key), entry["name"], entry["colour"]
            if (not 1 <= value <= 65535 or str(value) != key or not isinstance(name, str)
                    or not (isinstance(colour, str) and len(colour) == 7 and colour[0] == "#")):
                return None
            out[value] = (name, (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)))
        return out
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def read_label_table(path: Path) -> dict[int, tuple[str, tuple[int, int, int]]] | None:
    """The label names and colours of a PNG label map medseg wrote (``label_table``), None for any other picture."""
    with open_image(path, check_data=False) as im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()  # a text chunk after the image data is read with it
        except Exception as e:
            raise unreadable(path, e) from e
        return label_table(im)


# PIL identifies ~40 formats by their bytes, whatever the name says: a file named scan.png holding PostScript
# went to Ghostscript (installed here), BMP, TIFF or GIF opened as if PNG. Only these two are decoded.
IMAGE_FORMATS = ("PNG", "JPEG")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _unreadable_png_header(path: Path) -> str | None:
    """What a PNG whose header Pillow refuses says (its IHDR), None for bytes that are no PNG. Why: a PNG of 0 x 8
    pixels was refused as "its bytes are neither PNG nor JPEG", which sent the user looking for a format problem
    (session 22)."""
    try:
        with open(path, "rb") as f:
            head = f.read(29)
    except OSError:
        return None
    if len(head) < 29 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0:
        return f"a PNG of {width} x {height} pixels, an empty picture; expected an image of at least 1 x 1 pixels"
    return (f"a PNG whose header (IHDR: {width} x {height} pixels, bit depth {depth}, colour type {colour}) is not "
            "valid: the file is damaged; save or export it again")


# Pillow's words for a PNG text or ICC-profile chunk past its decompression-bomb guard (PngImagePlugin.MAX_TEXT_CHUNK,
# MAX_TEXT_MEMORY), which it raises whatever the picture's pixels
PNG_METADATA_GUARD = ("PngImagePlugin.MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY")


PNG_METADATA_CHUNKS = (b"iCCP", b"zTXt", b"iTXt")  # the chunks Pillow inflates under its guard


# text chunks whose loss may take an EXIF Orientation with it (Pillow's ``getexif`` reads the tag from them)
PNG_ORIENTATION_KEYWORDS = ("Raw profile type exif", "XML:com.adobe.xmp")


def _png_without_oversized_metadata(path: Path) -> tuple[io.BytesIO, tuple[str, ...]] | None:
    """The PNG's bytes without its text and ICC-profile chunks that inflate past Pillow's guard (each such chunk handed
    to Pillow's own reader of it, which refuses it or not), and what each left out was (``_chunk_named``); None when it
    has none (or is no PNG). Why: a valid picture carrying a 2 MB comment or ICC profile was refused whole (session
    25); medseg uses none of that metadata, so the chunk is left out rather than the guard lowered: the picture's data
    meets Pillow's checks as before, and the chunks Pillow can read (an XMP packet's or ImageMagick's EXIF orientation
    among them) stay (session 26). What was left out is said in the open's notes (session 27)."""
    dropped: list[tuple[int, int]] = []  # (start, end) of each chunk left out
    named: list[str] = []
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        while len(header := f.read(8)) == 8 and (kind := header[4:]) != b"IEND":
            length = struct.unpack(">I", header[:4])[0]
            if kind not in PNG_METADATA_CHUNKS:
                f.seek(length + 4, 1)
                continue
            data = f.read(length)
            f.seek(4, 1)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    PngImagePlugin.PngStream(io.BytesIO(data)).call(kind, 0, len(data))
            except ValueError as e:
                if any(guard in str(e) for guard in PNG_METADATA_GUARD):
                    dropped.append((f.tell() - length - 12, f.tell()))
                    named.append(_chunk_named(kind, data))
            except Exception:  # Pillow's own refusal of the chunk, which the real read repeats in its words
                pass
        if not dropped:
            return None
        f.seek(0)
        whole = f.read()
    starts = [0, *(end for _, end in dropped)]
    ends = [*(start for start, _ in dropped), len(whole)]
    return io.BytesIO(b"".join(whole[a:b] for a, b in zip(starts, ends))), tuple(named)


def _chunk_named(kind: bytes, data: bytes) -> str:
    """A metadata chunk as a note names it: ``ICC profile (iCCP)``, ``text 'Comment' (zTXt)``; a keyword that is not
    the printable Latin-1 the PNG standard allows (the file's own bytes, shown in the UI) is not repeated."""
    if kind == b"iCCP":
        return "ICC profile (iCCP)"
    keyword = data[:data.find(b"\0")].decode("latin-1") if 0 < data.find(b"\0") <= 79 else ""
    if keyword and keyword.isprintable() and keyword == keyword.strip():
        return f"text '{keyword}' ({kind.decode()})"
    return f"text ({kind.decode()})"


def _metadata_left_out_note(named: Sequence[str]) -> str:
    """The open's note for the metadata chunks ``_png_without_oversized_metadata`` left out. Why: they were left out
    silently (session 26's leftover); a user looking for a profile or a comment, or for an orientation an ImageMagick
    EXIF profile or an XMP packet held, learns it was not read."""
    shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
    one = len(named) == 1
    note = (f"its metadata {'chunk' if one else 'chunks'} {shown} {'was' if one else 'were'} left out: "
            f"{'it inflates' if one else 'each inflates'} past Pillow's "
            "limit of 1 MB a chunk (a guard against decompression bombs); medseg uses no PNG text or ICC profile, and "
            "the picture's pixels are whole")
    lost = [k for k in PNG_ORIENTATION_KEYWORDS if any(f"'{k}'" in n for n in named)]
    if lost:
        note += f"; '{lost[0]}' may have held an EXIF Orientation, not applied: the picture is shown as stored"
    return note


def unreadable(path: Path, error: BaseException) -> StudyError:
    """The refusal of a picture Pillow could not read: its reason, or, for a text or ICC-profile chunk past Pillow's
    guard, what it is. Why: a valid picture with a large comment or ICC profile was refused as `not a readable PNG/JPEG
    image (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)`, blaming the picture (session 25)."""
    said = first_line(error)
    if any(guard in said for guard in PNG_METADATA_GUARD):
        return StudyError(f"{path}: its metadata (a text or ICC-profile chunk, not the picture) inflates past Pillow's "
                          "limit of 1 MB a chunk (64 MB in all), which guards against decompression bombs; save the "
                          "picture without its metadata (e.g. optipng -strip all, or exiftool -all= IN) and open that")
    return StudyError(f"{path}: not a readable PNG/JPEG image ({said})")


def open_image(path: Path, *, max_voxels: int | None = None, check_data: bool = True,
               left_out: list[str] | None = None) -> Image.Image:
    """A PNG or JPEG file opened (its header read, no pixel decoded yet) and checked: the format by its bytes, one
    frame (an animated PNG's other frames were dropped silently), the size within ``max_voxels``, a PNG's image data
    as long as its rows need (``check_data``); StudyError otherwise. A JPEG with extra pictures (MPO, as phones
    write) is its first, primary picture. ``left_out`` gets the metadata chunks past Pillow's guard that were left
    out (``_png_without_oversized_metadata``). Close it."""
    limit = voxel_limit(max_voxels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            without = _png_without_oversized_metadata(path)
            if without is not None and left_out is not None:
                left_out.extend(without[1])
            im = Image.open(without[0] if without is not None else path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise StudyError(f"{path}: image too large to open safely ({first_line(e)})") from e
    except UnidentifiedImageError as e:
        said = _unreadable_png_header(path) or "not a readable PNG/JPEG image (its bytes are neither PNG nor JPEG)"
        raise StudyError(f"{path}: {said}") from e
    except Exception as e:
        raise unreadable(path, e) from e
    try:
        frames = int(getattr(im, "n_frames", 1) or 1) if im.format == "PNG" else 1
        if frames > 1:
            raise StudyError(f"{path}: an animated PNG of {frames} frames; expected one image (save the frame to segment)")
        check_voxels(path, (im.size[1], im.size[0]), limit)
        if check_data and im.format == "PNG":  # off only for a look at the header (a size checked first)
            _check_png_data_complete(path)
    except BaseException:
        im.close()
        raise
    return im


# Adam7's passes: (first column, first row, column step, row step)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _check_png_data_complete(path: Path) -> None:
    """StudyError when the PNG's image data (its IDAT chunks inflated) holds fewer bytes than its header's rows
    need. Why: a stream that ends cleanly but too soon (an exporter or a copy that stopped early and closed the file
    properly) opened whole, PIL padding the missing rows with black without a word; libpng refuses it ("Not enough
    image data"). The bytes are counted in 1 MiB steps and not kept; inflating stops once the rows are full."""
    with open(path, "rb") as f:
        head = f.read(33)
        if len(head) < 33 or head[12:16] != b"IHDR":
            return  # PIL opened it: leave the odd layouts to its own checks
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
        samples = PNG_CHANNELS.get(colour)
        if samples is None or interlace not in (0, 1):
            return

        def row_bytes(pixels: int) -> int:
            return 1 + math.ceil(pixels * samples * depth / 8)  # the filter byte, then the packed samples

        if interlace:
            passes = [(math.ceil((height - y0) / dy), math.ceil((width - x0) / dx)) for x0, y0, dx, dy in ADAM7]
            needed = sum(rows * row_bytes(cols) for rows, cols in passes if rows > 0 and cols > 0)
        else:
            needed = height * row_bytes(width)
        got, inflate, closed, seen = 0, zlib.decompressobj(), False, set()
        f.seek(8)
        while got < needed and (header := f.read(8)) and len(header) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                closed = True
                break
            if kind in (b"IHDR", b"PLTE"):
                if kind in seen:  # Pillow took the second: 8 x 8 data read through a second, 4 x 4 header (session 30)
                    raise StudyError(f"{path}: the PNG holds a second {kind.decode()} chunk, where the standard allows "
                                     "one (readers disagree which one counts): the file is damaged; save or export it "
                                     "again")
                seen.add(kind)
            if kind != b"IDAT":
                f.seek(length + 4, 1)
                continue
            data = f.read(length)
            if len(data) < length:
                return  # the file itself is cut: PIL says so ("image file is truncated")
            f.seek(4, 1)
            try:
                while data and got < needed:
                    got += len(inflate.decompress(data, 1 << 20))
                    data = inflate.unconsumed_tail
            except zlib.error:
                return  # a damaged stream: PIL's decoder refuses it in its own words
            if inflate.eof:
                break
        if got < needed and not inflate.eof:  # output zlib still holds for input it took whole (at most a window)
            try:
                got += len(inflate.flush())
            except zlib.error:
                return
    if got >= needed or not (closed or inflate.eof):
        return  # whole; or a file that just stops, which PIL refuses as truncated
    if interlace:
        told = f"{got} of {needed} bytes (interlaced)"
    else:
        told = f"{got // row_bytes(width)} of {height} rows"
    raise StudyError(f"{path}: the PNG's image data ends after {told}; the picture is incomplete (damaged, or cut off "
                     "when it was saved): save or export it again")


# libjpeg's warnings that its entropy-coded data ran out before the picture's last block (JWRN_HIT_MARKER,
# JWRN_JPEG_EOF): it fills the rest with zero coefficients, a grey or flat band, and goes on.
JPEG_ENDS_EARLY = ("premature end of data segment", "premature end of jpeg file")


def _check_jpeg_data_complete(path: Path) -> None:
    """A JPEG whose image data ends before its picture does is refused. Why: a file cut off and closed with an EOI
    marker (a transfer or an exporter that stopped early) opened with its missing part grey, as if whole: Pillow
    silences libjpeg's warning and gives no count of it. OpenCV's libjpeg-turbo writes it to stderr, so the file is
    decoded once more there, at 1/8 scale in grey (the entropy data are read whole all the same: 46 ms for a 16 MP
    picture), with stderr caught. Only in the main thread (``native_stderr_captured``): the isolated study reader
    and the CLI; a server thread's read goes unchecked."""
    import cv2

    with native_stderr_captured() as lines:
        cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    said = next((line.strip() for line in lines if any(w in line.lower() for w in JPEG_ENDS_EARLY)), None)
    if said:
        raise StudyError(f"{path}: the JPEG's image data ends before its last row (libjpeg: {said[:80]!r}); the "
                         "picture is incomplete, its missing part grey (damaged, or cut off when it was saved): save "
                         "or export it again")


LOSSY_FORMATS = ("JPEG", "MPO")  # Pillow's names for a JPEG file (MPO: a phone's JPEG with a second picture)


def refuse_lossy_mask(path: Path, image_format: str | None) -> None:
    """A mask must hold its painted pixels exactly. Why: JPEG's ringing and colour subsampling leave faint non-zero
    pixels around every edge, and a mask is every non-zero pixel: the real AAL nuclei of a Colin27 slice, 1833 pixels
    saved as a JPEG, read as 2737 in white and 5240 in red. Which of them were painted is not in the file."""
    if image_format in LOSSY_FORMATS:
        raise StudyError(f"{path}: a JPEG mask; JPEG's lossy compression leaves faint pixels around every painted "
                         "edge, so which pixels were painted is not known: save the mask as PNG")


def read_mask_image(path: Path, *, max_voxels: int | None = None) -> np.ndarray:
    """(H, W) bool: the annotated pixels of a 2D mask image (PNG; a JPEG is refused: ``refuse_lossy_mask``): non-zero
    in any colour channel and, where the image has an alpha channel (or a transparent palette colour), not fully
    transparent.

    Why: paint programs and exports draw a mask on a transparent layer whose hidden pixels keep any colour (often
    white); read as grey alone, such a file became a mask of the whole plane."""
    with open_image(path, max_voxels=max_voxels) as im:
        refuse_lossy_mask(path, im.format)
        im, orientation, alpha = _loaded_with_alpha(path, im)
        try:
            grey = im.getbands() in (("L",), ("1",), ("I",))  # single-channel, 16-bit included
            colour = np.asarray(im) > 0 if grey else np.asarray(im.convert("RGB")).max(axis=2) > 0
        except Exception as e:
            raise unreadable(path, e) from e
        if _png_16bit_with_colour_or_alpha(path):  # PIL kept the high bytes: a 16-bit grey+alpha mask of 1s was empty
            colour = _png_16bit_channels(path, colour.shape)[..., :3].max(axis=2) > 0
    # turned as its image is (``read_image_file``): a mask drawn on a turned photo keeps that photo's orientation
    return np.ascontiguousarray(_turned(colour & alpha if alpha is not None else colour, orientation))


def visible_pixels(path: Path, *, max_voxels: int | None = None) -> np.ndarray | None:
    """(H, W) bool: the pixels of a PNG that are not fully transparent (its alpha channel or transparent palette
    colour), turned as its image is; None when it has no transparency. Why: a label read as an image loses its alpha,
    so a label painted on a transparent layer whose hidden pixels are white was the whole plane (``read_mask_image``
    reads masks so; ``evaluation.manifest`` needs the label's values, not a mask)."""
    with open_image(path, max_voxels=max_voxels) as im:
        _, orientation, alpha = _loaded_with_alpha(path, im)
    return None if alpha is None else np.ascontiguousarray(_turned(alpha, orientation))


def _transparent_pixels(path: Path, im) -> int:
    """How many pixels of a loaded picture its alpha channel (or transparent palette colour) hides fully, 8- or
    16-bit alike. Why: an image's pixels are its data and open with their stored values, but a viewer shows the
    hidden ones blank; a 16-bit grey+alpha PNG (session 22), like an 8-bit one, dropped its alpha without a word.
    (A mask reads the same alpha as 'not painted': ``read_mask_image``.)"""
    if im.mode == "P" and "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    elif "A" in im.getbands():
        alpha = np.asarray(im.getchannel("A"))
    else:
        return 0
    if im.format == "PNG" and _png_16bit_with_colour_or_alpha(path):  # PIL's alpha is the high byte
        alpha = _png_16bit_channels(path, alpha.shape)[..., 3]
    return int((alpha == 0).sum())


def _check_palette_indices(path: Path, im) -> None:
    """A loaded palette picture whose pixels use an index its palette does not hold is refused. Why: the PNG standard
    makes such an index an error, and Pillow shows those pixels black: a label tool's mask of index 5 under a palette
    of 2 colours opened all black as an image and as an empty mask (session 30)."""
    if im.mode != "P":
        return
    colours = len(im.getpalette() or ()) // 3
    used = int(np.asarray(im).max(initial=0))
    if colours == 0:
        raise StudyError(f"{path}: a palette PNG without a palette (no PLTE chunk before its image data); what its "
                         "pixels show is not in the file: save or export it again")
    if used >= colours:
        raise StudyError(f"{path}: a palette PNG whose pixels use colour index {used}, but its palette (PLTE) holds "
                         f"{colours} colours (indices 0 to {colours - 1}); the PNG standard makes such an index an "
                         "error, and what those pixels show is a guess (black here): save or export it again")


def _loaded_with_alpha(path: Path, im) -> tuple:
    """``im`` decoded -> (the image, a transparent palette colour made an alpha channel; its EXIF orientation; its
    alpha > 0 as (H, W) bool, None without transparency). Decoding errors are the file's: one line naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            _check_palette_indices(path, im)
            orientation = _exif_orientation(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            alpha = np.asarray(im.getchannel("A")) > 0 if "A" in im.getbands() else None
    except StudyError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e
    if alpha is not None and _png_16bit_with_colour_or_alpha(path):  # PIL's 8-bit alpha: 1..255 of 65535 read as 0
        alpha = _png_16bit_channels(path, alpha.shape)[..., 3] > 0
    return im, orientation, alpha


def read_image_file(path: Path, *, max_voxels: int | None = None) -> Volume:
    left_out: list[str] = []
    im = open_image(path, max_voxels=max_voxels, left_out=left_out)
    try:
        with im, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on odd chunks; a damaged image raises below
            with native_stderr_captured():  # libjpeg's "Corrupt JPEG data" lines
                im.load()
            _check_palette_indices(path, im)
            if im.format in LOSSY_FORMATS:  # a phone's MPO too: cut short, it opened grey below the cut (session 24)
                _check_jpeg_data_complete(path)
            orientation = _exif_orientation(im)
            hidden = _transparent_pixels(path, im)
            mode, png = im.mode, im.format == "PNG"
            if mode == "1":
                im = im.convert("L")  # a 1-bit image shows as 0 / 255, as every viewer shows it
                mode = "L"
            elif mode in ("LA", "La"):
                # grey + alpha is a grey image (its alpha noted above), as a 16-bit one opens: made RGB, it lost the
                # grey window and opened as a colour picture (session 23)
                im = im.convert("LA").getchannel("L")
                mode = "L"
            elif mode in TO_RGB_MODES:
                im = im.convert("RGB")
                mode = "RGB"
            if mode == "RGB" and png and not _png_16bit_with_colour_or_alpha(path) and _all_grey(im):
                # a grey picture stored with a palette (session 23) or as RGB(A) of equal channels (session 24; a
                # screenshot, an 8-bit grey some tools write so) is grey, as a 16-bit one stored so opens: made RGB,
                # it lost the grey window and was called colour. (A JPEG's chroma rounding leaves a grey picture's
                # channels unequal now and then: it stays as stored rather than open one way or the other by chance.)
                im = im.getchannel("R")
                mode = "L"
            array = np.asarray(im)
    except StudyError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))  # 16-bit big-endian PNG modes
    if array.ndim == 3 and mode != "RGB":
        array = array[..., :3]
    if array.ndim not in (2, 3) or 0 in array.shape[:2]:
        raise StudyError(f"{path}: empty image of size {array.shape}")
    if _png_16bit_with_colour_or_alpha(path):
        array = _png_16bit(path, array)
    notes: tuple[str, ...] = ()
    if left_out:
        notes = (_metadata_left_out_note(left_out),)
        warnings.warn(one_line(f"{path}: {notes[-1]}"), StudyWarning, stacklevel=2)
    if hidden:
        notes = (*notes, f"{hidden} of {array.shape[0] * array.shape[1]} {TRANSPARENCY_IGNORED}")
        warnings.warn(one_line(f"{path}: {notes[-1]}"), StudyWarning, stacklevel=2)
    if orientation != 1:
        array = _turned(array, orientation)
        notes = (*notes, f"EXIF Orientation {orientation}: shown turned as photo viewers show it (masks are written "
                 "in this orientation)")
        warnings.warn(one_line(f"{path}: {notes[-1]}"), StudyWarning, stacklevel=2)
    # by its bytes, not its name: a JPEG label named .png was scored with its faint pixels as ground truth, a PNG
    # named .jpg refused as a JPEG mask (session 30); the mask and label rules read this format
    fmt = "png" if png else "jpeg"
    return Volume(array=np.ascontiguousarray(array)[None], modality="OT",
                  source=SourceRef(path=str(path), format=fmt, geometry="none (pixels)", notes=notes,
                                   exif_orientation=orientation))


def _all_grey(rgb: Image.Image) -> bool:
    """Whether an RGB picture (a palette or RGBA one made RGB) is grey: every pixel has R = G = B. (Its pixels'
    colours are what it shows; a palette whose colours no pixel uses does not make it colour.)"""
    array = np.asarray(rgb)
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def exif_mismatch(what: str, other: str, turn: int, other_turn: int) -> str:
    """The one line for a picture and its annotation turned differently by their EXIF tags (see ``read_image_file``)."""
    def named(n: int) -> str:
        return f"{n} (as stored)" if n == 1 else str(n)

    return (f"the {what} has EXIF Orientation {named(turn)} and the {other} {named(other_turn)}; which way the {other} "
            "was drawn is not known: save both with the same orientation")


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (0x0112), 1 (as stored) when absent or not 1-8. Read after ``load``: a PNG may
    keep its eXIf chunk after the pixels."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the pixels as stored, as viewers then show them
        return 1
    return value if 1 <= value <= 8 else 1


def _turned(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) turned as EXIF ``orientation`` says (PIL's ``ImageOps.exif_transpose``, on numpy)."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
             8: lambda a: np.rot90(a, 1)}
    return turns[orientation](array) if orientation in turns else array


def as_stored(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) as shown turned by EXIF ``orientation`` put back as the file stores it (``_turned``'s
    inverse: 6 and 8 undo each other, the other turns undo themselves)."""
    return _turned(array, {6: 8, 8: 6}.get(orientation, orientation))


def _png_16bit_with_colour_or_alpha(path: Path) -> bool:
    """A 16-bit PNG of colour type grey+alpha (4), RGB (2) or RGBA (6): PIL reads these at 8 bits per channel."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _png_16bit_channels(path: Path, size: tuple[int, ...]) -> np.ndarray:
    """A 16-bit colour or grey+alpha PNG of (H, W) ``size`` at its full depth: (H, W, 3) RGB or (H, W, 4) RGBA, grey
    repeated, as OpenCV decodes it (BGR turned to RGB)."""
    import cv2

    full = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if full is None or full.dtype != np.uint16 or full.shape[:2] != tuple(size[:2]) or full.ndim != 3:
        raise StudyError(f"{path}: not a readable 16-bit PNG")
    return np.ascontiguousarray(full[..., [2, 1, 0, 3][: full.shape[2]]])


def _png_16bit(path: Path, eight_bit: np.ndarray) -> np.ndarray:
    """The 16-bit values PIL dropped to their high byte (59900 became 233): a grey image stored as RGB or with
    an alpha channel opens as its 16-bit grey, losslessly; a true colour one stays 8-bit, with a warning."""
    colour = _png_16bit_channels(path, eight_bit.shape[:2])[..., :3]
    if (colour == colour[..., :1]).all():
        return np.ascontiguousarray(colour[..., 0])
    warnings.warn(one_line(f"{path}: a 16-bit colour PNG, opened at 8 bits per channel (the low byte of each "
                           "value dropped)"), StudyWarning, stacklevel=3)
    return eight_bit
