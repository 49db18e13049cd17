"""``data.dicom_scan``: the pure-Python walk of a DICOM tag stream that runs before pydicom or GDCM.

What it finds (syntax, image attributes, where the pixel bytes are) is checked against pydicom's own
reading of the same real files; what it refuses is checked on small files built byte by byte here,
one fault each, with the whole message (``medseg`` prints it after the file name). Limits are
lowered with monkeypatch so a limit case costs a few hundred bytes, not megabytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from data import dicom_scan
from data.dicom_scan import DicomScan, DicomScanError, encoded_frame_sizes, scan_dicom
from tests.conftest import DATA
from tests.hostile import dicom_bytes as db

EXPLICIT = "1.2.840.10008.1.2.1"
el = db.element


def uid(text: str) -> bytes:
    raw = text.encode()
    return raw + (b"\0" if len(raw) % 2 else b"")


def us(group: int, elem: int, value: int) -> bytes:
    return el(group, elem, b"US", struct.pack("<H", value))


IMAGE = us(0x28, 0x10, 2) + us(0x28, 0x11, 3) + us(0x28, 0x100, 16)  # Rows 2, Columns 3, 16 bits
PIXELS = el(0x7FE0, 0x10, b"OW", b"\1" * 12)
IMPLICIT_IMAGE = (struct.pack("<HHI", 0x28, 0x10, 2) + struct.pack("<H", 2) + struct.pack("<HHI", 0x28, 0x11, 2)
                  + struct.pack("<H", 3) + struct.pack("<HHI", 0x7FE0, 0x10, 12) + b"\1" * 12)


def part10(body: bytes, syntax: str | None = EXPLICIT) -> bytes:
    """Preamble, DICM, a file meta group (with ``syntax`` unless None), then ``body``."""
    meta = el(2, 1, b"OB", b"\0\1") + (el(2, 0x10, b"UI", uid(syntax)) if syntax is not None else b"")
    return b"\0" * 128 + b"DICM" + el(2, 0, b"UL", struct.pack("<I", len(meta))) + meta + body


def scan_bytes(tmp_path: Path, data: bytes, *, max_voxels: int = 10**6) -> DicomScan:
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    return scan_dicom(path, max_voxels=max_voxels)


def refused(tmp_path: Path, data: bytes, message: str, **kwargs) -> None:
    with pytest.raises(DicomScanError) as e:
        scan_bytes(tmp_path, data, **kwargs)
    assert str(e.value) == message


# --- what the walk finds, against pydicom --------------------------------------------------------------
@pytest.mark.parametrize("path", [
    DATA / "dicom" / "pydicom_CT_small.dcm", DATA / "dicom" / "pydicom_MR_small.dcm",
    DATA / "dicom" / "pydicom_US_rgb_lymph_node.dcm", DATA / "dicom" / "pydicom_SEG_liver_1frame.dcm",
    DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm",
], ids=lambda p: p.name)
def test_real_files_pixel_bytes_and_image_attributes_as_pydicom_reads_them(path):
    ds = pydicom.dcmread(path)
    scan = scan_dicom(path, max_voxels=10**7)
    assert scan.transfer_syntax == str(ds.file_meta.TransferSyntaxUID)
    expected = {k: int(ds[k].value) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames")
                if k in ds}
    assert scan.values == expected
    assert scan.pixel_keyword == "PixelData" and not scan.encapsulated and scan.fragments == []
    assert scan.pixel_length == len(ds.PixelData)
    frames = int(ds.get("NumberOfFrames", 1))
    assert scan.expected_pixel_bytes() == (ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated + 7) // 8
    data = path.read_bytes()
    start = 132 + 12 + struct.unpack_from("<I", data, 140)[0]  # after the file meta group
    assert scan.header_bytes == len(data) - start - len(ds.PixelData)
    sequences = [e for e in ds.iterall() if e.VR == "SQ"]
    assert scan.items == sum(len(e.value) for e in sequences)
    assert (scan.depth > 0) == bool(sequences)


def test_other_encodings_are_walked(tmp_path):
    """Implicit VR, big endian and deflated files give the same facts as the explicit little endian one."""
    arr = db.pixels(rows=4, cols=6, frames=2)
    facts = []
    for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        ds = db.image_dataset(arr, syntax=syntax)
        path = tmp_path / f"{syntax.name}.dcm"
        if syntax == ExplicitVRBigEndian:
            ds.PixelData = arr.astype(">i2").tobytes()
            ds.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
        else:
            db.write(ds, path)
        scan = scan_dicom(path, max_voxels=10**6)
        assert scan.transfer_syntax == syntax
        facts.append((scan.values, scan.pixel_length, scan.pixel_keyword))
        if syntax == DeflatedExplicitVRLittleEndian:
            data = path.read_bytes()
            start = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
            assert scan.inflated_bytes == len(zlib.decompress(data[start:], -zlib.MAX_WBITS))
        else:
            assert scan.inflated_bytes is None
    expected = ({"Rows": 4, "Columns": 6, "SamplesPerPixel": 1, "BitsAllocated": 16, "NumberOfFrames": 2}, 96, "PixelData")
    assert facts == [expected] * 3


def test_a_missing_transfer_syntax_is_guessed_from_the_first_element(tmp_path):
    scan = scan_bytes(tmp_path, part10(IMAGE + PIXELS, syntax=None))
    assert scan.transfer_syntax == "" and scan.values == {"Rows": 2, "Columns": 3, "BitsAllocated": 16}
    scan = scan_bytes(tmp_path, part10(IMPLICIT_IMAGE, syntax=None))
    assert scan.values == {"Rows": 2, "Columns": 3} and scan.pixel_length == 12 and scan.header_bytes == 28
    # a syntax that lies about VR encoding: the walk switches as pydicom does
    assert scan_bytes(tmp_path, part10(IMPLICIT_IMAGE)).values == {"Rows": 2, "Columns": 3}
    assert scan_bytes(tmp_path, part10(IMAGE + PIXELS, syntax=ImplicitVRLittleEndian)).values["BitsAllocated"] == 16
    # an empty data set: nothing to guess from, nothing found
    assert scan_bytes(tmp_path, part10(b"", syntax=None)).pixel_keyword is None


def test_number_of_frames_and_odd_values(tmp_path):
    assert scan_bytes(tmp_path, part10(IMAGE + el(0x28, 0x8, b"IS", b"3 ") + PIXELS)).values["NumberOfFrames"] == 3
    assert scan_bytes(tmp_path, part10(IMAGE + el(0x28, 0x8, b"IS", b"\0007\0\0") + PIXELS)).values["NumberOfFrames"] == 7
    assert "NumberOfFrames" not in scan_bytes(tmp_path, part10(IMAGE + el(0x28, 0x8, b"IS", b"x ") + PIXELS)).values
    assert "NumberOfFrames" not in scan_bytes(tmp_path, part10(IMAGE + el(0x28, 0x8, b"IS", b"\xff\xfe") + PIXELS)).values
    odd = us(0x28, 0x10, 2) + el(0x28, 0x11, b"US", b"\3\0\0\0")  # Columns of 4 bytes: not read
    assert scan_bytes(tmp_path, part10(odd + PIXELS)).values == {"Rows": 2}
    nested = el(0x40, 0xA730, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, 10) + us(0x28, 0x10, 99))
    assert scan_bytes(tmp_path, part10(IMAGE + nested + PIXELS)).values["Rows"] == 2  # a nested Rows is not the image's
    assert DicomScan("", values={"Rows": 2, "Columns": 3}).expected_pixel_bytes() is None
    assert DicomScan("", values={"Rows": 3, "Columns": 3, "BitsAllocated": 1}).expected_pixel_bytes() == 2


def test_float_pixel_data_and_pixel_data_inside_a_sequence(tmp_path):
    scan = scan_bytes(tmp_path, part10(IMAGE + el(0x7FE0, 0x8, b"OF", b"\0" * 24)))
    assert (scan.pixel_keyword, scan.pixel_length) == ("FloatPixelData", 24)
    scan = scan_bytes(tmp_path, part10(IMAGE + el(0x7FE0, 0x9, b"OD", b"\0" * 48)))
    assert (scan.pixel_keyword, scan.pixel_length, scan.header_bytes) == ("DoubleFloatPixelData", 48, 42)
    icon = el(0x0088, 0x0200, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, 16) + el(0x7FE0, 0x10, b"OW", b"\0" * 4))
    scan = scan_bytes(tmp_path, part10(IMAGE + icon))  # an icon's pixels are not the image's
    assert scan.pixel_keyword is None and scan.pixel_length is None and scan.items == 1 and scan.depth == 1
    assert scan.header_bytes == 30 + 12 + 8 + 16


# --- compressed pixel data ---------------------------------------------------------------------------------
def _jpeg(width: int, height: int, mode: str = "L", fmt: str = "JPEG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, fmt, **save)
    return buf.getvalue() + (b"\0" if len(buf.getvalue()) % 2 else b"")


def test_fragments_are_located_and_their_frame_headers_read(tmp_path):
    frames = [_jpeg(16, 8), _jpeg(16, 8, "RGB", progressive=True), _jpeg(4, 4, "L", "JPEG2000")]
    ds = db.image_dataset(db.pixels()[0])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate(frames)
    ds["PixelData"].VR = "OB"
    path = db.write(ds, tmp_path / "j.dcm")
    scan = scan_dicom(path, max_voxels=10**6)
    assert scan.encapsulated and scan.pixel_keyword == "PixelData" and scan.pixel_length is None
    data = path.read_bytes()
    assert [data[o : o + n] for o, n in scan.fragments[1:]] == frames  # [0]: the basic offset table
    assert scan.fragments[0][1] == 4 * len(frames)
    assert encoded_frame_sizes(path, scan) == [(16, 8, 1), (16, 8, 3), (4, 4, 1)]
    start = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    at = data.rfind(b"\xe0\x7f\x10\x00")
    assert scan.header_bytes == at - start + 12 + 8  # the element head and the sequence delimiter


def test_frame_headers_with_fill_bytes_restart_markers_and_no_size():
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 300, 200, 3) + b"\0" * 3
    app = b"\xff\xe0" + struct.pack(">H", 6) + b"JFIF"
    assert dicom_scan._jpeg_size(b"\xff\xd8" + app + b"\xff\xff" + b"\xff\xd0" + b"\xff\x01" + sof) == (200, 300, 3)
    assert dicom_scan._jpeg_size(b"\xff\xd8" + b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, 5, 7, 1)) == (7, 5, 1)
    assert dicom_scan._jpeg_size(b"\xff\xd8" + app + b"\x00garbage") is None
    assert dicom_scan._jpeg_size(b"\xff\xd8" + app) is None
    assert dicom_scan._jpeg_size(b"\xff\xd8" + b"\xff\xc0\x00\x11\x08\x00") is None  # cut in the frame header
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIII", 41, 0, 1000, 800, 10, 20, 0, 0, 0, 0) + struct.pack(">H", 3)
    assert dicom_scan._j2k_size(b"\0\0" + siz) == (990, 780, 3)
    assert dicom_scan._j2k_size(siz[:41]) is None
    assert dicom_scan._j2k_size(b"no codestream here" * 4) is None


# --- refusals -----------------------------------------------------------------------------------------------
def test_files_that_are_not_part10_are_refused(tmp_path):
    refused(tmp_path, b"\0" * 131, "131 bytes, too short for a DICOM file")
    refused(tmp_path, b"\0" * 200, "no DICM marker at byte 128 (not a DICOM Part 10 file)")
    refused(tmp_path, part10(IMAGE)[:132 + 12 + 10], "truncated inside the file meta information")
    refused(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 1) + b"OB\0\0\1\0",
            "truncated inside the file meta information")
    refused(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", 40) + b"1.2",
            "file meta element (0002,0010) runs past the end of the file")
    refused(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 40) + b"12",
            "file meta element (0002,0001) runs past the end of the file")
    refused(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 1) + b"OB\0\0" + b"\xff" * 4 + b"\0" * 8,
            "file meta element (0002,0001) runs past the end of the file")  # undefined length in the meta group


def test_malformed_elements_are_refused_with_where_they_are(tmp_path):
    refused(tmp_path, part10(IMAGE + struct.pack("<HH", 0x10, 0x10) + b"ZZ\2\0ab" + PIXELS),
            "element (0010,0010) at byte 216 has no valid VR (b'ZZ')")
    refused(tmp_path, part10(IMAGE + struct.pack("<HH", 0x10, 0x10) + b"LO\x10\0ab"),
            "truncated: element (0010,0010) at byte 216 declares 16 bytes and runs past the end of the file")
    refused(tmp_path, part10(IMAGE + struct.pack("<HH", 0x10, 0x4000) + b"UT\0\0" + b"\xff" * 4 + PIXELS),
            "element (0010,4000) has an undefined length but VR UT")
    refused(tmp_path, part10(IMAGE + b"\x10\0"), "truncated: an element at byte 216 runs past the end of the file (218 bytes)")


def test_sequences_that_do_not_close_or_overrun_are_refused(tmp_path):
    sq = struct.pack("<HH", 0x40, 0xA730) + b"SQ\0\0"
    refused(tmp_path, part10(IMAGE + db.nested_undefined(3)[:-16]),
            "truncated: a sequence or item of undefined length is never closed")
    refused(tmp_path, part10(IMAGE + sq + b"\xff" * 4 + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + db.SEQ_END + PIXELS),
            "unexpected item tag (FFFE,E00D) at byte 228")
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", 8) + struct.pack("<HHI", 0xFFFE, 0xE000, 20) + b"\0" * 20),
            "a sequence item runs past the end of its sequence (byte 256 > 236)")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 8) + el(0x10, 0x10, b"LO", b"abcdef")
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", 16) + item + PIXELS),
            "truncated: element (0010,0010) at byte 236 declares 6 bytes and runs past the end of its sequence item")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 6) + el(0x10, 0x10, b"LO", b"ab")  # 10 bytes in an item of 6
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", 16) + item + PIXELS),
            "truncated: element (0010,0010) at byte 236 declares 2 bytes and runs past the end of its sequence item")
    inner = struct.pack("<HH", 0x40, 0xA730) + b"SQ\0\0" + b"\xff" * 4 + db.SEQ_END  # 20 bytes in an item of 8
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 8) + inner
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", len(item)) + item + PIXELS),
            "an element runs past the end of its sequence item (byte 256 > 244)")


def test_nesting_depth_is_bounded_before_any_parser_recurses(tmp_path):
    assert dicom_scan.MAX_DICOM_DEPTH == 32
    scan = scan_bytes(tmp_path, part10(IMAGE + db.nested_undefined(32) + PIXELS))
    assert (scan.depth, scan.items, scan.pixel_length) == (32, 32, 12)
    for nested in (db.nested_undefined(33), db.nested_defined(33), db.nested_undefined(33, vr=b"UN")):
        refused(tmp_path, part10(IMAGE + nested + PIXELS), "sequences nested more than 32 deep (the limit; real files nest ~6)")
    implicit = part10(IMPLICIT_IMAGE[:-20] + db.nested_undefined(33, vr=None) + IMPLICIT_IMAGE[-20:],
                      syntax=ImplicitVRLittleEndian)
    refused(tmp_path, implicit, "sequences nested more than 32 deep (the limit; real files nest ~6)")
    assert scan_bytes(tmp_path, part10(IMAGE + db.nested_defined(32) + PIXELS)).depth == 32


def test_sequences_hidden_in_un_or_implicit_elements_are_walked(tmp_path):
    """pydicom and GDCM descend into these, so the depth must count them too."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 10) + struct.pack("<HHI", 0x10, 0x10, 2) + b"ab"  # implicit VR inside
    known = struct.pack("<HH", 0x40, 0xA730) + b"UN\0\0" + struct.pack("<I", len(item)) + item  # a dictionary SQ
    assert scan_bytes(tmp_path, part10(IMAGE + known + PIXELS)).depth == 1
    private = struct.pack("<HH", 0x0009, 0x1010) + b"UN\0\0" + struct.pack("<I", len(item)) + item  # first item tag
    scan = scan_bytes(tmp_path, part10(IMAGE + private + PIXELS))
    assert (scan.depth, scan.items) == (1, 1)
    blob = struct.pack("<HH", 0x0009, 0x1010) + b"UN\0\0" + struct.pack("<I", 10) + b"\0" * 10  # not a sequence
    assert scan_bytes(tmp_path, part10(IMAGE + blob + PIXELS)).depth == 0
    short = struct.pack("<HH", 0x0009, 0x1010) + b"UN\0\0" + struct.pack("<I", 4) + b"\xfe\xff\x00\xe0"  # < 8 bytes
    assert scan_bytes(tmp_path, part10(IMAGE + short + PIXELS)).depth == 0
    text = struct.pack("<HH", 0x0010, 0x0010) + b"UN\0\0" + struct.pack("<I", 12) + item[:12]  # a known non-SQ
    assert scan_bytes(tmp_path, part10(IMAGE + text + PIXELS)).depth == 0
    ob = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", len(item)) + item  # OB: bytes, never items
    assert scan_bytes(tmp_path, part10(IMAGE + ob + PIXELS)).depth == 0
    implicit = struct.pack("<HHI", 0x0009, 0x1010, len(item)) + item
    scan = scan_bytes(tmp_path, part10(IMPLICIT_IMAGE[:-20] + implicit + IMPLICIT_IMAGE[-20:], syntax=ImplicitVRLittleEndian))
    assert scan.depth == 1 and scan.pixel_length == 12


def test_item_and_fragment_counts_and_header_size_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_ITEMS", 3)
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 3
    assert scan_bytes(tmp_path, part10(IMAGE + el(0x40, 0xA730, b"SQ", items) + PIXELS)).items == 3
    refused(tmp_path, part10(IMAGE + el(0x40, 0xA730, b"SQ", items * 2) + PIXELS),
            "more than 3 sequence items (the limit for one file)")
    fragments = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, 2) + b"ab"
    pixel_head = struct.pack("<HH", 0x7FE0, 0x10) + b"OB\0\0" + b"\xff" * 4
    scan = scan_bytes(tmp_path, part10(IMAGE + pixel_head + fragments + fragments[8:] + db.SEQ_END, syntax=JPEGBaseline8Bit))
    assert len(scan.fragments) == 3 and scan.items == 0
    refused(tmp_path, part10(IMAGE + pixel_head + fragments * 2 + fragments[8:] + db.SEQ_END, syntax=JPEGBaseline8Bit),
            "more than 3 pixel data fragments")
    refused(tmp_path, part10(IMAGE + pixel_head + fragments[:8] + struct.pack("<HHI", 0xFFFE, 0xE000, 100) + b"ab"),
            "truncated: a pixel data fragment runs past the end of the file")
    refused(tmp_path, part10(IMAGE + pixel_head + fragments[:8] + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)),
            "truncated: a pixel data fragment runs past the end of the file")
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", 42)
    assert scan_bytes(tmp_path, part10(IMAGE + PIXELS)).header_bytes == 42  # the pixel bytes do not count
    refused(tmp_path, part10(IMAGE + el(0x10, 0x10, b"LO", b"ab") + PIXELS),
            "52 bytes of header; more than the limit of 42")


def test_deflated_data_sets_are_inflated_in_capped_steps(tmp_path, monkeypatch):
    ds = db.image_dataset(db.pixels(), syntax=DeflatedExplicitVRLittleEndian)
    plain = db.write(ds, tmp_path / "d.dcm").read_bytes()
    scan = scan_bytes(tmp_path, plain)
    assert scan.values["Rows"] == 16 and scan.pixel_length == 512
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", 64)
    bomb = db.deflated_file(plain, zeros_element_bytes=3 * 1024**2)
    refused(tmp_path, bomb, "the deflated data set inflates to more than 144 bytes (the limit for MEDSEG_MAX_VOXELS "
            "voxels); refused without inflating it", max_voxels=10)  # 64 bytes of header + 10 voxels of 8 bytes
    # past the kept head and before the kept tail: cannot be walked
    big = db.deflated_file(plain, extra=el(0x0009, 0x1010, b"OB", b"\0" * 70_000))
    refused(tmp_path, big, "the header is larger than 64 bytes after inflation", max_voxels=10**6)


def test_a_deflate_bomb_after_small_pixels_stops_at_what_the_pixels_allow_not_the_voxel_limit(tmp_path, monkeypatch):
    """A 3 GB private element after 512 bytes of pixels, deflated to ~3 MB, was inflated up to the voxel limit's cap
    (1.6 GB at the default: 10 s of the server reader's CPU per upload) before its refusal. Once the first
    MAX_DICOM_HEADER_BYTES are in, the pixel data's declared length bounds the rest: every other byte is header."""
    ds = db.image_dataset(db.pixels(), syntax=DeflatedExplicitVRLittleEndian)
    plain = db.write(ds, tmp_path / "d.dcm").read_bytes()
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", 4096)
    assert scan_bytes(tmp_path, plain, max_voxels=10**6).pixel_length == 512  # a real one still scans whole
    bomb = db.deflated_file(plain, zeros_element_bytes=3 * 1024**2)
    refused(tmp_path, bomb, f"the deflated data set inflates to more than {4096 + 512} bytes (its pixel data and a "
            "header of at most MAX_DICOM_HEADER_BYTES); refused without inflating it", max_voxels=10**6)
    monkeypatch.undo()
    refused(tmp_path, db.deflated_file(plain, cut=40), "the deflated data set is truncated (the stream has no end)")
    meta_end = db._meta_end(plain)
    damaged = plain[:meta_end] + b"\xff" * 40
    with pytest.raises(DicomScanError, match=r"^the deflated data set is damaged \(Error -3 while decompressing data: "):
        scan_bytes(tmp_path, damaged)


def test_delimiters_out_of_place_are_refused(tmp_path):
    sq = struct.pack("<HH", 0x40, 0xA730) + b"SQ\0\0"
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", 8) + db.SEQ_END + PIXELS),
            "unexpected item tag (FFFE,E0DD) at byte 228")  # a sequence delimiter in a sequence of defined length
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 8) + db.ITEM_END  # an item delimiter in an item of defined length
    refused(tmp_path, part10(IMAGE + sq + struct.pack("<I", len(item)) + item + PIXELS),
            "unexpected item tag (FFFE,E00D) at byte 236")
    refused(tmp_path, part10(IMAGE + db.ITEM_END + PIXELS), "unexpected item tag (FFFE,E00D) at byte 216")
    refused(tmp_path, part10(IMAGE + db.ITEM + PIXELS), "unexpected item tag (FFFE,E000) at byte 216")


def test_compressed_pixels_of_an_icon_are_not_the_images(tmp_path):
    fragments = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, 2) + b"ab" + db.SEQ_END
    icon_pixels = struct.pack("<HH", 0x7FE0, 0x10) + b"OB\0\0" + b"\xff" * 4 + fragments
    icon = el(0x0088, 0x0200, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, len(icon_pixels)) + icon_pixels)
    scan = scan_bytes(tmp_path, part10(IMAGE + icon + PIXELS, syntax=JPEGBaseline8Bit))
    assert scan.fragments == [] and (scan.pixel_keyword, scan.pixel_length) == ("PixelData", 12)
    assert scan.header_bytes == 30 + len(icon) + 12  # the icon whole, the image pixels' element head


def test_a_deflated_file_larger_than_the_kept_head_is_walked_through_its_tail(tmp_path, monkeypatch):
    """Only the first MAX_DICOM_HEADER_BYTES and the last 64 KiB are kept: the pixel data lies between."""
    arr = db.pixels(rows=190, cols=190)  # 72,200 bytes of pixels, more than the 64 KiB tail
    plain = db.write(db.image_dataset(arr, syntax=DeflatedExplicitVRLittleEndian), tmp_path / "d.dcm").read_bytes()
    padded = db.deflated_file(plain, extra=el(0xFFFC, 0xFFFC, b"OB", b"\0" * 4))  # an element after the pixels
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", 600)
    scan = scan_bytes(tmp_path, padded)
    assert scan.pixel_length == arr.nbytes and scan.values["Rows"] == 190
    body = zlib.decompress(padded[db._meta_end(padded):], -zlib.MAX_WBITS)
    assert scan.inflated_bytes == len(body) and scan.header_bytes == len(body) - arr.nbytes
    assert scan.header_bytes < 600 < scan.inflated_bytes - 64 * 1024


# --- boundaries and encodings the first mutation run left open ----------------------------------------------
def test_short_files_and_meta_groups_that_end_exactly_at_the_end_of_the_file(tmp_path):
    scan = scan_bytes(tmp_path, b"\0" * 128 + b"DICM")  # 132 bytes: a marker and nothing else
    assert (scan.transfer_syntax, scan.pixel_keyword, scan.header_bytes) == ("", None, 0)
    scan = scan_bytes(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 0))
    assert (scan.transfer_syntax, scan.header_bytes) == ("", 0)
    scan = scan_bytes(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 0x10) + b"UI\0\0")
    assert (scan.transfer_syntax, scan.header_bytes) == ("", 0)
    refused(tmp_path, b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", 7) + b"1.2",
            "file meta element (0002,0010) runs past the end of the file")  # 4 bytes short
    scan = scan_bytes(tmp_path, part10(IMAGE + PIXELS, syntax="1.2.\xff"))  # a non-ASCII syntax: shown, not fatal
    assert scan.transfer_syntax == "1.2.\ufffd\ufffd"


def test_a_deflated_data_set_inflating_to_several_steps_and_the_cap_is_inclusive(tmp_path, monkeypatch):
    arr = np.zeros((1, 1024, 1024), np.int16)  # 2 MiB of zeros from a few KiB: more than one 1 MiB inflate step
    path = db.write(db.image_dataset(arr, syntax=DeflatedExplicitVRLittleEndian), tmp_path / "z.dcm")
    scan = scan_dicom(path, max_voxels=2**21)
    data = path.read_bytes()
    assert scan.inflated_bytes == len(zlib.decompress(data[db._meta_end(data):], -zlib.MAX_WBITS))
    assert scan.pixel_length == 2 * 1024**2 and scan.values["Rows"] == 1024
    small = db.write(db.image_dataset(db.pixels(), syntax=DeflatedExplicitVRLittleEndian), tmp_path / "s.dcm")
    total = scan_dicom(small, max_voxels=10**6).inflated_bytes
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", total - 8)
    assert scan_dicom(small, max_voxels=1).inflated_bytes == total  # exactly the cap: allowed


def test_a_deflated_file_under_64_kib_read_through_its_tail(tmp_path, monkeypatch):
    arr = db.pixels(rows=100, cols=100)
    plain = db.write(db.image_dataset(arr, syntax=DeflatedExplicitVRLittleEndian), tmp_path / "d.dcm").read_bytes()
    padded = db.deflated_file(plain, extra=el(0xFFFC, 0xFFFC, b"OB", b"\0" * 4))
    monkeypatch.setattr(dicom_scan, "MAX_DICOM_HEADER_BYTES", 600)
    assert scan_bytes(tmp_path, padded).pixel_length == arr.nbytes


def test_long_values_in_short_length_fields_and_sequences_of_exactly_one_empty_item(tmp_path):
    scan = scan_bytes(tmp_path, part10(IMAGE + el(0x0010, 0x4000, b"LT", b"x" * 40000) + PIXELS))  # length >= 2**15
    assert scan.pixel_length == 12 and scan.header_bytes == 30 + 8 + 40000 + 12
    empty_item = struct.pack("<HH", 0x0009, 0x1010) + b"UN\0\0" + struct.pack("<I", 8) + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    scan = scan_bytes(tmp_path, part10(IMAGE + empty_item + PIXELS))  # 8 bytes: one empty item, a sequence
    assert (scan.depth, scan.items) == (1, 1)


def test_frame_headers_at_the_start_of_a_fragment_and_large_sizes():
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 40000, 50000, 1) + b"\0" * 3
    big_app = b"\xff\xe1" + struct.pack(">H", 40000) + b"\0" * 39998  # a 40 kB EXIF segment
    assert dicom_scan._jpeg_size(b"\xff\xd8" + big_app + b"\xff" + b"\xff\xd9" + sof) == (50000, 40000, 1)
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIII", 41, 0, 16, 8, 0, 0, 0, 0, 0, 0) + struct.pack(">H", 1)
    assert dicom_scan._j2k_size(siz) == (16, 8, 1)  # a raw codestream starts with SOC SIZ at byte 0
    assert DicomScan("", values={"Rows": 2, "Columns": 3, "BitsAllocated": 16, "NumberOfFrames": 4,
                                 "SamplesPerPixel": 3}).expected_pixel_bytes() == 2 * 3 * 3 * 4 * 2
