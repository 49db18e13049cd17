"""Walk a DICOM file's tag stream, in pure Python and without recursion, before pydicom or GDCM
parse it: the nesting depth, the number of sequence items and the header size are bounded, every
length is checked against the bytes present, and the pixel data element is located (native
length, or the fragments of encapsulated data) without reading it.

Why: GDCM parses sequences recursively, so a 2 MB file of ~100,000 nested items ends the process
with signal 11 (issue 23), and pydicom inflates a deflated data set whole before any size check.
A walk costs ~1 ms for a CT slice header (``docs/reliability.md``), far less than a child process
per file.

Encodings: implicit VR little endian, explicit VR little and big endian, deflated explicit VR
little endian (inflated in 1 MiB steps, capped; only the first ``MAX_DICOM_HEADER_BYTES`` and the
last 64 KiB are kept), and the encapsulated (compressed) syntaxes. An undefined-length UN is read
as an implicit VR sequence, as PS3.5 6.2.2 and pydicom do. Files without the 128-byte preamble and
``DICM`` are not walked: pydicom refuses them too (``dcmread`` without ``force``).
"""

from __future__ import annotations

import functools
import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data.limits import MAX_BYTES_PER_VOXEL, MAX_DICOM_DEPTH, MAX_DICOM_HEADER_BYTES, MAX_DICOM_ITEMS

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
KNOWN_VRS = LONG_VRS | frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
DEFLATED, EXPLICIT_BE = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED, EXPLICIT_BE})
# Rows, Columns, SamplesPerPixel, BitsAllocated (US) and NumberOfFrames (IS), read at the top level
US_TAGS = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280002: "SamplesPerPixel", 0x00280100: "BitsAllocated"}
FRAMES_TAG = 0x00280008
TAIL_BYTES = 64 * 1024
PIXEL_TAIL_BYTES = 64 * 1024


class DicomScanError(ValueError):
    """The tag stream is malformed or passes a limit; the message says which (the caller adds the path)."""


@dataclass
class DicomScan:
    """What the walk found; ``values`` holds the top-level image attributes it could read."""

    transfer_syntax: str
    depth: int = 0
    items: int = 0
    header_bytes: int = 0
    values: dict[str, int] = field(default_factory=dict)
    pixel_keyword: str | None = None
    pixel_length: int | None = None  # native (uncompressed) pixel data: the value length
    fragments: list[tuple[int, int]] = field(default_factory=list)  # encapsulated: (offset, length) per item
    inflated_bytes: int | None = None  # deflated syntax: the data set's inflated size
    pixel_tail: bytes | None = None  # native: the last PIXEL_TAIL_BYTES of the pixel value (None: not at hand)

    @property
    def encapsulated(self) -> bool:
        return self.pixel_keyword is not None and self.pixel_length is None

    def expected_pixel_bytes(self) -> int | None:
        """Rows x Columns x SamplesPerPixel x BitsAllocated/8 x frames, None when an attribute is missing."""
        v = self.values
        if not all(k in v for k in ("Rows", "Columns", "BitsAllocated")):
            return None
        bits = v["Rows"] * v["Columns"] * v.get("SamplesPerPixel", 1) * v.get("NumberOfFrames", 1) * v["BitsAllocated"]
        return (bits + 7) // 8


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


class _Bytes:
    """Random access to the data set: a memory map, or for deflated files an inflated prefix and tail."""

    def __init__(self, head: bytes | mmap.mmap, size: int, tail: bytes = b"") -> None:
        self.head, self.size, self.tail = head, size, tail
        self.tail_start = size - len(tail)

    def get(self, offset: int, n: int) -> bytes:
        end = offset + n
        if end > self.size:
            raise DicomScanError(f"truncated: an element at byte {offset} runs past the end of the file ({self.size} bytes)")
        if end <= len(self.head):
            return self.head[offset:end]
        if offset >= self.tail_start:
            return self.tail[offset - self.tail_start : end - self.tail_start]
        raise DicomScanError(f"the header is larger than {MAX_DICOM_HEADER_BYTES} bytes after inflation")


def scan_dicom(path: Path, *, max_voxels: int) -> DicomScan:
    """Walk ``path``'s tag stream (see the module doc). Raises DicomScanError, OSError."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 132:
            raise DicomScanError(f"{size} bytes, too short for a DICOM file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[128:132] != b"DICM":
                raise DicomScanError("no DICM marker at byte 128 (not a DICOM Part 10 file)")
            syntax, start = _read_meta(mm, size)
            if syntax == DEFLATED:
                inflated = _inflate(mm, start, cap=MAX_DICOM_HEADER_BYTES + max_voxels * MAX_BYTES_PER_VOXEL)
                scan = DicomScan(transfer_syntax=syntax, inflated_bytes=inflated.size)
                _walk(inflated, 0, scan, explicit=True, little=True)
                return scan
            scan = DicomScan(transfer_syntax=syntax)
            explicit, little = syntax != IMPLICIT_LE, syntax != EXPLICIT_BE
            if not syntax:  # no TransferSyntaxUID: guess from the first element, as pydicom does
                explicit = _looks_explicit(mm[start + 4 : start + 6]) if size >= start + 6 else True
            _walk(_Bytes(mm, size), start, scan, explicit=explicit, little=little)
            return scan


def _looks_explicit(vr: bytes) -> bool:
    return len(vr) == 2 and vr in KNOWN_VRS


def _read_meta(mm: mmap.mmap, size: int) -> tuple[str, int]:
    """File meta information (group 0002, always explicit VR little endian) -> (transfer syntax, data set start)."""
    pos, syntax = 132, ""
    while pos + 8 <= size:
        group, elem = struct.unpack_from("<HH", mm, pos)
        if group != 0x0002:
            break
        vr = mm[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > size:
                raise DicomScanError("truncated inside the file meta information")
            length, head = struct.unpack_from("<I", mm, pos + 8)[0], 12
        else:
            length, head = struct.unpack_from("<H", mm, pos + 6)[0], 8
        if length == UNDEFINED or pos + head + length > size:
            raise DicomScanError(f"file meta element (0002,{elem:04X}) runs past the end of the file")
        if elem == 0x0010:
            syntax = mm[pos + head : pos + head + length].decode("ascii", "replace").strip("\0 ")
        pos += head + length
    return syntax, pos


def _inflate(mm: mmap.mmap, start: int, *, cap: int) -> _Bytes:
    """Inflate the deflated data set in 1 MiB steps: keep its first MAX_DICOM_HEADER_BYTES and last
    64 KiB, count the rest, and refuse it once it passes ``cap`` (never inflating it whole). Once the first
    MAX_DICOM_HEADER_BYTES are in, the cap tightens to what the pixel data they declare allows
    (:func:`_declared_bound`): a 3 MB file whose private element inflates to 3 GB cost the reader 10 s of
    CPU up to the voxel limit's cap (1.6 GB at the default), and now stops at ~32 MiB."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    reason = "the limit for MEDSEG_MAX_VOXELS voxels"
    head = bytearray()
    tail = b""
    total = 0
    pos = start
    step = 1024**2
    data = b""
    while True:
        if not data:
            if pos >= len(mm) or d.eof:
                break
            data = mm[pos : pos + step]
            pos += len(data)
        try:
            out = d.decompress(data, step)
        except zlib.error as e:
            raise DicomScanError(f"the deflated data set is damaged ({e})") from None
        data = d.unconsumed_tail
        total += len(out)
        if total > cap:
            raise DicomScanError(f"the deflated data set inflates to more than {cap} bytes ({reason}); "
                                 "refused without inflating it")
        if len(head) < MAX_DICOM_HEADER_BYTES:
            head += out[: MAX_DICOM_HEADER_BYTES - len(head)]
            if len(head) == MAX_DICOM_HEADER_BYTES and (bound := _declared_bound(bytes(head))) is not None:
                if bound < cap:
                    cap, reason = bound, "its pixel data and a header of at most MAX_DICOM_HEADER_BYTES"
                    if total > cap:
                        raise DicomScanError(f"the deflated data set inflates to more than {cap} bytes ({reason}); "
                                             "refused without inflating it")
        tail = (tail + out)[-TAIL_BYTES:]
        if d.eof:
            break
    if not d.eof:
        raise DicomScanError("the deflated data set is truncated (the stream has no end)")
    return _Bytes(bytes(head), total, tail)


def _declared_bound(head: bytes) -> int | None:
    """The most the data set can inflate to and still pass :func:`_walk`, read from its first bytes: once its
    native pixel data's length is declared, every other byte counts as header (at most MAX_DICOM_HEADER_BYTES).
    None when those bytes hold no such element (the voxel limit's cap stays)."""
    scan = DicomScan(transfer_syntax=DEFLATED)
    try:  # as if the data set went on past the head; the walk stops at the first byte it lacks
        _walk(_Bytes(head, 2**62), 0, scan, explicit=True, little=True)
    except DicomScanError:
        pass
    if scan.pixel_length is None:
        return None
    return MAX_DICOM_HEADER_BYTES + scan.pixel_length


def _walk(buf: _Bytes, start: int, scan: DicomScan, *, explicit: bool, little: bool) -> None:
    """The walk: a stack of open containers instead of recursion, so depth costs no C stack."""
    e = "<" if little else ">"
    u16, u32, tags = struct.Struct(e + "H"), struct.Struct(e + "I"), struct.Struct(e + "HH")
    DATASET, SEQUENCE, FRAGMENTS = 0, 1, 2
    # [kind, end (None = undefined length), explicit, depth]
    stack: list[list] = [[DATASET, buf.size, explicit, 0]]
    pos = start
    if explicit and buf.size >= start + 6 and not _looks_explicit(buf.get(start + 4, 2)):
        stack[0][2] = False  # "explicit" syntax with implicit elements: pydicom switches too
    elif not explicit and buf.size >= start + 6 and _looks_explicit(buf.get(start + 4, 2)):
        stack[0][2] = True
    pixel_value_bytes = 0
    while stack:
        kind, end, expl, depth = stack[-1]
        if end is not None and pos >= end:
            if pos != end:
                raise DicomScanError(f"an element runs past the end of its sequence item (byte {pos} > {end})")
            stack.pop()
            continue
        if end is None and pos >= buf.size:
            raise DicomScanError("truncated: a sequence or item of undefined length is never closed")
        group, elem = tags.unpack(buf.get(pos, 4))
        tag = group << 16 | elem
        if kind != DATASET or group == 0xFFFE:
            length = u32.unpack(buf.get(pos + 4, 4))[0]
            pos += 8
            if tag == SEQ_END and kind != DATASET and end is None:
                stack.pop()
            elif tag == ITEM_END and kind == DATASET and end is None and depth > 0:
                stack.pop()
            elif tag == ITEM and kind == FRAGMENTS:
                if length == UNDEFINED or pos + length > buf.size:
                    raise DicomScanError("truncated: a pixel data fragment runs past the end of the file")
                if depth == 0:
                    scan.fragments.append((pos, length))
                    pixel_value_bytes += 8 + length
                if len(scan.fragments) > MAX_DICOM_ITEMS:
                    raise DicomScanError(f"more than {MAX_DICOM_ITEMS} pixel data fragments")
                pos += length
            elif tag == ITEM and kind == SEQUENCE:
                scan.items += 1
                if scan.items > MAX_DICOM_ITEMS:
                    raise DicomScanError(f"more than {MAX_DICOM_ITEMS} sequence items (the limit for one file)")
                item_end = None if length == UNDEFINED else pos + length
                if item_end is not None and end is not None and item_end > end:
                    raise DicomScanError(f"a sequence item runs past the end of its sequence (byte {item_end} > {end})")
                stack.append([DATASET, item_end, expl, depth])
            else:
                raise DicomScanError(f"unexpected item tag ({group:04X},{elem:04X}) at byte {pos - 8}")
            continue
        # a data element in a data set
        vr = None
        if expl:
            vr = buf.get(pos + 4, 2)
            if vr in LONG_VRS:
                length, head = u32.unpack(buf.get(pos + 8, 4))[0], 12
            elif vr in KNOWN_VRS:
                length, head = u16.unpack(buf.get(pos + 6, 2))[0], 8
            else:
                raise DicomScanError(f"element ({group:04X},{elem:04X}) at byte {pos} has no valid VR ({vr!r})")
        else:
            length, head = u32.unpack(buf.get(pos + 4, 4))[0], 8
        value = pos + head
        if tag in PIXEL_TAGS and length == UNDEFINED:  # encapsulated (compressed) pixel data
            if depth == 0:
                scan.pixel_keyword = PIXEL_TAGS[tag]
            stack.append([FRAGMENTS, None, expl, depth])
            pos = value
            continue
        if length == UNDEFINED:
            if vr is not None and vr not in (b"SQ", b"UN"):
                raise DicomScanError(f"element ({group:04X},{elem:04X}) has an undefined length but VR {vr.decode('ascii')}")
            _push_sequence(scan, stack, depth, None, explicit=expl and vr == b"SQ")
            pos = value
            continue
        value_end = value + length
        limit = end if end is not None else buf.size
        if value_end > limit:
            where = "the end of the file" if limit == buf.size else "the end of its sequence item"
            raise DicomScanError(f"truncated: element ({group:04X},{elem:04X}) at byte {pos} "
                                 f"declares {length} bytes and runs past {where}")
        if depth == 0 and tag in PIXEL_TAGS:
            scan.pixel_keyword, scan.pixel_length = PIXEL_TAGS[tag], length
            pixel_value_bytes += length
            n = min(length, PIXEL_TAIL_BYTES)
            try:  # what follows the pixels the header describes: zeros (padding) or more image (a header lie)
                scan.pixel_tail = bytes(buf.get(value_end - n, n))
            except DicomScanError:  # a deflated file's middle, not kept
                scan.pixel_tail = None
        elif _is_sequence(buf, tag, vr, value, length, u32):
            _push_sequence(scan, stack, depth, value_end, explicit=expl and vr == b"SQ")
            pos = value
            continue
        elif depth == 0 and (tag in US_TAGS or tag == FRAMES_TAG):
            _read_value(scan, buf.get(value, length), tag, u16)
        pos = value_end
    scan.header_bytes = buf.size - start - pixel_value_bytes
    if scan.header_bytes > MAX_DICOM_HEADER_BYTES:
        raise DicomScanError(f"{scan.header_bytes} bytes of header; more than the limit of {MAX_DICOM_HEADER_BYTES}")


def _push_sequence(scan: DicomScan, stack: list[list], depth: int, end: int | None, *, explicit: bool) -> None:
    if depth + 1 > MAX_DICOM_DEPTH:
        raise DicomScanError(f"sequences nested more than {MAX_DICOM_DEPTH} deep (the limit; real files nest ~6)")
    scan.depth = max(scan.depth, depth + 1)
    stack.append([1, end, explicit, depth + 1])


def _is_sequence(buf: _Bytes, tag: int, vr: bytes | None, value: int, length: int, u32: struct.Struct) -> bool:
    """SQ, or a defined-length UN / implicit element that the dictionary or its first item tag says
    is a sequence (pydicom and GDCM read those as sequences, so the walk descends into them too)."""
    if vr == b"SQ":
        return True
    if vr is not None and vr != b"UN":
        return False
    known = _dictionary_vr(tag)
    if known == "SQ":
        return True
    if known is None and length >= 8:
        return buf.get(value, 4) == struct.pack("<HH", 0xFFFE, 0xE000)
    return False


def _read_value(scan: DicomScan, raw: bytes, tag: int, u16: struct.Struct) -> None:
    if tag == FRAMES_TAG:
        try:
            scan.values["NumberOfFrames"] = int(raw.decode("ascii").strip("\0 "))
        except (UnicodeDecodeError, ValueError):
            pass
    elif len(raw) == 2:
        scan.values[US_TAGS[tag]] = u16.unpack(raw)[0]


JPEG_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7])
FRAME_HEAD_BYTES = 64 * 1024


def encoded_frame_sizes(path: Path, scan: DicomScan) -> list[tuple[int, int, int]]:
    """(columns, rows, components) that each JPEG / JPEG-LS / JPEG 2000 fragment's own header
    declares (fragments that start a codestream only). A decoder allocates what the codestream
    says, whatever Rows/Columns say, so the two must agree before anything decodes it."""
    sizes = (_jpeg_size(head) if head[:2] == b"\xff\xd8" else _j2k_size(head) for head in _frame_heads(path, scan))
    return [size for size in sizes if size is not None]


def jpeg_precisions(path: Path, scan: DicomScan) -> list[int]:
    """The sample precision (bits) that each JPEG / JPEG-LS fragment's frame header (SOF) declares. Why: GDCM fits
    the decoded samples into BitsAllocated, so 16-bit JPEG-LS samples under BitsAllocated 8 opened as int8 noise
    (session 30). JPEG 2000 is left out: GDCM reads its samples at the codestream's own width."""
    heads = (_jpeg_frame_header(head) for head in _frame_heads(path, scan) if head[:2] == b"\xff\xd8")
    return [header[3] for header in heads if header is not None]


def _frame_heads(path: Path, scan: DicomScan) -> Iterator[bytes]:
    """The first ``FRAME_HEAD_BYTES`` of each fragment of encapsulated pixel data."""
    with open(path, "rb") as f:
        for offset, length in scan.fragments[1:]:  # [0] is the basic offset table
            f.seek(offset)
            yield f.read(min(length, FRAME_HEAD_BYTES))


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    header = _jpeg_frame_header(data)
    return None if header is None else header[:3]


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(columns, rows, components, precision) of a JPEG / JPEG-LS codestream's frame header (SOF), None without one."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            pos += 2
            continue
        seg = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in JPEG_SOF and pos + 10 <= len(data):
            rows, cols = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return cols, rows, data[pos + 9], data[pos + 4]
        pos += 2 + seg
    return None


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    at = data.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 42 > len(data):
        return None
    x, y, xo, yo = struct.unpack(">IIII", data[at + 8 : at + 24])
    comps = struct.unpack(">H", data[at + 40 : at + 42])[0]
    return x - xo, y - yo, comps


def rle_segment_lengths(path: Path, scan: DicomScan) -> list[list[int]]:
    """The decoded length of each segment of each RLE frame (one fragment a frame, PS3.5 A.4.2), counted from its run
    headers without decoding. Why: RLE has no frame header to check Rows/Columns against, as JPEG's is, and GDCM
    decodes what the header describes: a slice whose Rows was halved opened as its top half, as if valid (session 30).
    A frame whose RLE header is not readable (no segment or more than 15, offsets out of order or past the fragment)
    gives []: the decoder refuses it in its own words."""
    frames = []
    with open(path, "rb") as f:
        for offset, length in scan.fragments[1:]:  # [0] is the basic offset table
            f.seek(offset)
            frames.append(_rle_segments(f.read(length)))
    return frames


def _rle_segments(data: bytes) -> list[int]:
    if len(data) < 64:
        return []
    count, *offsets = struct.unpack("<16I", data[:64])
    bounds = [*offsets[:count], len(data)] if 1 <= count <= 15 else []
    if not bounds or bounds[0] < 64 or any(a > b for a, b in zip(bounds, bounds[1:])):
        return []
    return [_packbits_length(data, start, end) for start, end in zip(bounds, bounds[1:])]


def _packbits_length(data: bytes, start: int, end: int) -> int:
    """Bytes a PackBits run (PS3.5 G.3.1) decodes to: a header n of 0..127 is n + 1 literal bytes, 129..255 the next
    byte 257 - n times, 128 nothing; a run cut by the segment's end counts the bytes there (an encoder's pad byte,
    0, counts none). About 1 ms for a 256 x 256 CT segment."""
    at, out = start, 0
    while at < end:
        n = data[at]
        if n < 128:
            out, at = out + min(n + 1, end - at - 1), at + n + 2
        elif n > 128:
            out, at = out + (257 - n if at + 1 < end else 0), at + 2
        else:
            at += 1
    return out
