"""A DICOM file's pixel description checked against its bytes before any decoder sees them: the tag stream walked
in pure Python (``data.dicom_scan``), the pixel bytes present against Rows x Columns x samples x bits x frames (no
excess beyond padding), PhotometricInterpretation against SamplesPerPixel, palette tables, transfer syntaxes with no
decoder here, and the rescale. Each refusal is one line naming the field (``StudyError``); ``data.readers`` calls
:func:`scan_checked`, :func:`check_pixels` and :func:`check_rescale` for every DICOM file it opens."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from data import limits
from data.dicom_scan import (EXPLICIT_BE, NATIVE_SYNTAXES, DicomScan, DicomScanError, encoded_frame_sizes,
                             jpeg_precisions, rle_segment_lengths, scan_dicom)
from data.study_errors import StudyError, check_voxels, header_int

RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def scan_checked(path: Path, *, max_voxels: int) -> DicomScan:
    """Walk ``path``'s tag stream (``data.dicom_scan``) and check its pixel bytes against its header."""
    try:
        scan = scan_dicom(path, max_voxels=max_voxels)
    except DicomScanError as e:
        raise StudyError(f"{path}: not a readable DICOM file ({e})") from None
    except OSError as e:
        raise StudyError(f"{path}: cannot be read ({e.strerror or e})") from None
    return scan


def check_pixels(path: Path, scan: DicomScan, ds: pydicom.Dataset, limit: int) -> None:
    """Pixel data present, within the voxel limit, and (native syntaxes) at least as long as the header says."""
    if scan.pixel_keyword is None or "Rows" not in ds:
        raise StudyError(f"{path}: DICOM file without pixel data; expected an image")
    frames = _counted(path, ds, "NumberOfFrames", 1)
    if frames < 1:
        raise StudyError(f"{path}: NumberOfFrames {frames}; expected 1 or more frames (a single image says 1)")
    check_voxels(path, (frames, header_int(ds, "Rows"), header_int(ds, "Columns")), limit)
    _check_modality(path, ds)
    check_rescale(path, ds)
    samples, bits = _counted(path, ds, "SamplesPerPixel", 1), _counted(path, ds, "BitsAllocated", 16)
    if not 1 <= samples <= limits.MAX_SAMPLES_PER_PIXEL or bits not in (1, 8, 16, 32, 64):
        raise StudyError(f"{path}: SamplesPerPixel {samples} / BitsAllocated {bits}; expected 1-4 samples of 1, 8, 16, 32 or 64 bits")
    _check_stored_bits(path, ds, bits)
    if _private_syntax(scan.transfer_syntax):
        raise StudyError(f"{path}: transfer syntax {scan.transfer_syntax}, a private one (not defined by the DICOM "
                         "standard): how its data and pixels are encoded is not known here; export it with a standard "
                         "transfer syntax (e.g. Explicit VR Little Endian) and open that")
    if _no_decoder(scan.transfer_syntax):
        name = pydicom.uid.UID(scan.transfer_syntax).name
        raise StudyError(f"{path}: transfer syntax {scan.transfer_syntax}"
                         f"{f' ({name})' if name != scan.transfer_syntax else ''} has no decoder here; save it "
                         "uncompressed (e.g. gdcmconv --raw IN OUT, or dcmdjpeg) and open that")
    if scan.pixel_keyword != "PixelData":  # GDCM: "Cannot read requested file", naming nothing
        bits_of = 64 if scan.pixel_keyword == "DoubleFloatPixelData" else 32
        raise StudyError(f"{path}: {scan.pixel_keyword} (a parametric map of {bits_of}-bit floats): the decoder here "
                         "reads integer PixelData only; export the map as NIfTI and open that")
    _check_photometric(path, ds, samples)
    _check_palette(path, ds)
    _check_planar_configuration(path, ds, samples)
    _check_modality_lut(path, ds)
    if scan.transfer_syntax == RLE_LOSSLESS and samples > 1 and bits > 8:
        # GDCM decodes these with each sample's byte segments out of order (measured on pydicom's SC_rgb_rle_16bit
        # and 32bit: pure red 65535, 0, 0 opened as 0, 65280, 255), while 8-bit colour and 16-bit grey RLE are exact
        raise StudyError(f"{path}: RLE Lossless colour ({samples} samples) of {bits} bits: the decoder here mixes "
                         "up its bytes (red opens as blue-green); save it uncompressed (e.g. dcmdrle IN OUT) and open "
                         "that")
    if scan.transfer_syntax == EXPLICIT_BE and bits >= 32:
        # GDCM swaps such values 16 bits at a time: pydicom's rtdose_expb.dcm opened at 250085395 where its little
        # endian twin (and pydicom) hold 1249000, every value wrong, as if valid (session 25)
        raise StudyError(f"{path}: {bits}-bit pixels in Explicit VR Big Endian, which the decoder here reads with "
                         "their bytes mixed up (every value would open wrong); save it as little endian (e.g. dcmconv "
                         "+te IN OUT) and open that")
    native = scan.transfer_syntax in NATIVE_SYNTAXES or not scan.transfer_syntax
    if native and scan.encapsulated:
        raise StudyError(f"{path}: compressed (encapsulated) pixel data in the uncompressed transfer syntax {scan.transfer_syntax}")
    if not native and not scan.encapsulated:
        raise StudyError(f"{path}: transfer syntax {scan.transfer_syntax} needs compressed (encapsulated) pixel data; "
                         "the file holds raw bytes")
    if scan.encapsulated:
        if len(scan.fragments) < 2 or not any(n for _, n in scan.fragments[1:]):
            raise StudyError(f"{path}: compressed pixel data without any frame fragment")
        encoded = _encoded_frames(path, scan)
        if encoded is not None and encoded != frames:
            raise StudyError(f"{path}: {encoded} compressed frame(s) in its pixel data where NumberOfFrames says "
                             f"{frames}; the frames cannot be matched to the image, so it would open garbled or not at "
                             "all; refused")
        rows, cols = header_int(ds, "Rows"), header_int(ds, "Columns")
        for c, r, comps in encoded_frame_sizes(path, scan):
            if (c, r) != (cols, rows) or comps != samples:
                raise StudyError(f"{path}: a compressed frame of {c} x {r} x {comps} (its JPEG frame header) in an image "
                                 f"of Columns x Rows x SamplesPerPixel {cols} x {rows} x {samples}; refused before decoding")
        wider = max(jpeg_precisions(path, scan), default=0)
        if wider > bits:
            raise StudyError(f"{path}: its compressed frames hold {wider}-bit samples (the JPEG frame header's "
                             f"precision) but BitsAllocated is {bits}: the values cannot fit, so the image would open "
                             "garbled; refused")
        if scan.transfer_syntax == RLE_LOSSLESS and bits % 8 == 0:  # a byte a pixel in each segment (PS3.5 G.2)
            _check_rle_segments(path, scan, rows, cols)
        return
    per_frame = header_int(ds, "Rows") * header_int(ds, "Columns") * samples
    if str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        per_frame = per_frame * 2 // 3  # two samples per pixel stored for 4:2:2 chroma
    expected = (frames * per_frame * bits + 7) // 8
    if (scan.pixel_length or 0) < expected:
        raise StudyError(f"{path}: truncated DICOM file: {scan.pixel_length or 0} of {expected} bytes of pixel data "
                         f"({frames} frame(s) of {header_int(ds, 'Rows')} x {header_int(ds, 'Columns')} x {samples} x {bits} bits)")
    _check_no_excess(path, ds, scan.pixel_length or 0, expected, frames, samples, bits, scan.pixel_tail)


def _check_modality(path: Path, ds: pydicom.Dataset) -> None:
    """Modality holds one value. Why: ``CT\\MR`` was kept as pydicom's list and opened as ``['CT', 'MR']``: no CT
    window, the checks of CT values skipped, a list in the facts panel; which modality the pixels are is not known."""
    value = ds.get("Modality")
    if isinstance(value, MultiValue) and len(value) > 1:
        shown = "\\".join(str(v) for v in value)
        raise StudyError(f"{path}: Modality {shown[:64]!r} holds {len(value)} values; expected one (CT, MR, US, ...): "
                         "which modality the pixels are, and so their window and checks, is not known")


def _check_stored_bits(path: Path, ds: pydicom.Dataset, allocated: int) -> None:
    """BitsStored within BitsAllocated, HighBit one less than BitsStored, PixelRepresentation 0 or 1 (PS3.5 8.1.1,
    PS3.3 C.7.6.3.1). GDCM ignores HighBit and keeps the low BitsStored bits: the retired layout of 12 bits at the
    top of 16 (HighBit 15) opened at -1024..3056 HU where the CT holds -1024..1657, as if valid. BitsStored over
    BitsAllocated and a PixelRepresentation of 2 opened too. Where the header cannot say which bits are the pixel
    and how to read them, the values would be guessed: refused. An absent field is left to the decoder."""
    stored = _int_field(path, ds, "BitsStored")
    if stored is not None and not 1 <= stored <= allocated:
        raise StudyError(f"{path}: BitsStored {stored} with BitsAllocated {allocated}; expected 1 to {allocated} bits "
                         f"stored in each {allocated}-bit value")
    high = _int_field(path, ds, "HighBit")
    if stored is not None and high is not None and high != stored - 1:
        raise StudyError(f"{path}: HighBit {high} with BitsStored {stored}; expected HighBit {stored - 1} (one less "
                         f"than BitsStored): where the stored bits lie in each {allocated}-bit value is in doubt, so "
                         "the values would be guessed")
    representation = _int_field(path, ds, "PixelRepresentation")
    if representation not in (None, 0, 1):
        raise StudyError(f"{path}: PixelRepresentation {representation}; expected 0 (unsigned) or 1 (signed)")


def _check_rle_segments(path: Path, scan: DicomScan, rows: int, cols: int) -> None:
    """Each RLE segment decodes to Rows x Columns bytes (less than a row more is an encoder's slack): else the header
    lies about the image's size (``dicom_scan.rle_segment_lengths``)."""
    expected = rows * cols
    for frame, segments in enumerate(rle_segment_lengths(path, scan), 1):
        for segment, got in enumerate(segments, 1):
            if not expected <= got < expected + max(cols, 2):
                raise StudyError(f"{path}: frame {frame}, RLE segment {segment} decodes to {got} bytes where Rows x "
                                 f"Columns ({rows} x {cols}) make {expected}: Rows or Columns is wrong, so the image "
                                 "would open cut or garbled; refused")


def _encoded_frames(path: Path, scan: DicomScan) -> int | None:
    """How many frames encapsulated pixel data holds, where the file says it without decoding (None otherwise): RLE
    puts each frame in one fragment (PS3.5 A.4.2); a Basic Offset Table has one offset per frame (A.4); a JPEG or
    JPEG-LS frame starts with SOI (FF D8), which cannot occur inside one. NumberOfFrames 4 over 3 RLE frames (or 3
    over 4) was refused in GDCM's words, "Failed to change to Implicit Transfer Syntax", naming neither (session 17)."""
    data = scan.fragments[1:]
    if scan.transfer_syntax == RLE_LOSSLESS:
        return len(data)
    table = scan.fragments[0][1] if scan.fragments else 0
    if table:
        return table // 4
    with open(path, "rb") as f:
        starts = []
        for offset, length in data:
            f.seek(offset)
            starts.append(length >= 2 and f.read(2) == b"\xff\xd8")
    return sum(starts) if starts and starts[0] else None


def _counted(path: Path, ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """A count the pixel bytes are laid out by, ``default`` when absent. 0 or text used to become the default
    without a word (``header_int``): NumberOfFrames 0, 'abc' or 1.5 opened as one frame, SamplesPerPixel 0 and
    BitsAllocated 0 were refused in GDCM's words naming no field."""
    value = _int_field(path, ds, keyword)
    return default if value is None else value


def _int_field(path: Path, ds: pydicom.Dataset, keyword: str) -> int | None:
    """A US/IS pixel-description field as an int, None when absent or empty; text or a fraction is refused."""
    raw = ds.get(keyword)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise StudyError(f"{path}: {keyword} {str(raw)!r} is not a whole number") from None
    if not value.is_integer():
        raise StudyError(f"{path}: {keyword} {str(raw)!r} is not a whole number")
    return int(value)


PIXEL_PADDING_BYTES = 16  # more than a writer pads to an even or aligned length


def _check_no_excess(path: Path, ds: pydicom.Dataset, present: int, expected: int, frames: int, samples: int,
                     bits: int, tail: bytes | None) -> None:
    """Native pixel data longer than its header describes by a row or a column of one frame, or more: the header
    lies (GDCM decodes what it describes and drops the rest). Measured: 16-bit CT data under BitsAllocated 8 opened
    as int8 noise of -128..127, a 2-frame file saying 1 frame lost its second frame, Columns one short sheared every
    row. Padding (a few bytes, or any number of zero bytes) is not a lie and opens."""
    rows, cols = header_int(ds, "Rows"), header_int(ds, "Columns")
    excess = present - expected
    line = min(rows, cols) * samples * bits // 8
    if excess <= PIXEL_PADDING_BYTES or excess < line:
        return
    if tail is not None and not tail[-min(excess, len(tail)):].strip(b"\0"):
        return  # zeros: padding (pydicom's MR_small_padded carries 128 bytes of them), nothing of the image lost
    raise StudyError(f"{path}: {present} bytes of pixel data where the header describes {expected} ({frames} frame(s) "
                     f"of {rows} x {cols} x {samples} x {bits} bits): NumberOfFrames, Rows/Columns, SamplesPerPixel "
                     "or BitsAllocated is wrong, so the image would open garbled; refused")


# Samples per pixel each PhotometricInterpretation needs (PS3.3 C.7.6.3.1.2). GDCM trusts the name: RGB or
# YBR_FULL_422 on 1-sample CT data opened as a 3-channel picture of noise (min -32768), as if valid.
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "HSV": 3, "YBR_FULL": 3,
                       "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3,
                       "ARGB": 4, "CMYK": 4}


def _check_photometric(path: Path, ds: pydicom.Dataset, samples: int) -> None:
    """PhotometricInterpretation one of the names PS3.3 defines, in its own spelling, agreeing with SamplesPerPixel.
    Why: GDCM reads any other value (``MONOCHROME3``, ``monochrome1``, ``MONOCHROME2\\RGB``) as MONOCHROME2, so
    how the values are to be shown was guessed without a word (a MONOCHROME1 radiograph so spelled opened with its
    bones black). An absent one is read as MONOCHROME2 for one sample (the stored values as they stand, as every
    decoder reads them; type 1, but old files leave it out), and refused for colour: which colour each sample holds
    would be guessed."""
    raw = ds.get("PhotometricInterpretation")
    if raw is None or raw == "":
        if samples > 1:
            raise StudyError(f"{path}: no PhotometricInterpretation for SamplesPerPixel {samples}; expected RGB, "
                             "YBR_FULL or another colour model: which colour each sample holds is not in the file")
        return
    shown = "\\".join(str(v) for v in raw) if isinstance(raw, MultiValue) else str(raw)
    photometric = shown.strip()
    needed = PHOTOMETRIC_SAMPLES.get(photometric)
    if needed is None:
        raise StudyError(f"{path}: PhotometricInterpretation {shown[:64]!r}; expected MONOCHROME2, "
                         "MONOCHROME1, PALETTE COLOR, RGB or YBR_FULL (PS3.3's names, upper case): how the values are "
                         "to be shown is not known, so the image would open as a guess")
    if needed != samples:
        raise StudyError(f"{path}: PhotometricInterpretation {photometric} needs SamplesPerPixel {needed}, the file "
                         f"says {samples}; the pixels cannot be decoded as either")


def _check_palette(path: Path, ds: pydicom.Dataset) -> None:
    """A PALETTE COLOR image's three lookup tables as GDCM can apply them: each descriptor (entries, first mapped
    value 0, 8 or 16 bits) with data of that many entries. GDCM refused every fault with its own assertion text
    ("An invalid logic behavior occurredmult2 == 2", "Unknown exception thrown in SimpleITK ...") naming no field."""
    if str(ds.get("PhotometricInterpretation", "") or "").strip().upper() != "PALETTE COLOR":
        return
    for colour in ("Red", "Green", "Blue"):
        if f"Segmented{colour}PaletteColorLookupTableData" in ds:
            continue  # segmented tables: left to the decoder
        keyword = f"{colour}PaletteColorLookupTableDescriptor"
        try:
            entries, first, bits = (int(v) for v in ds[keyword].value)
        except (KeyError, TypeError, ValueError):
            raise StudyError(f"{path}: PALETTE COLOR without a valid {keyword} (entries, first value, bits); the "
                             "colours are not in the file") from None
        entries = entries or 65536  # 0 means 2^16 (PS3.3 C.7.6.3.1.5)
        size = len(ds.get(f"{colour}PaletteColorLookupTableData") or b"")
        # 16-bit entries; 8-bit ones stored one a byte (padded to an even length) or one a 16-bit word
        expected = {2 * entries} if bits == 16 else {entries, entries + entries % 2, 2 * entries}
        if bits not in (8, 16) or first != 0 or size not in expected:
            raise StudyError(f"{path}: PALETTE COLOR {colour} lookup table of {size} bytes with descriptor {entries}, "
                             f"{first}, {bits}; expected {entries} entries of 8 or 16 bits from value 0 (the decoder "
                             "here takes no other)")


def _check_planar_configuration(path: Path, ds: pydicom.Dataset, samples: int) -> None:
    """A colour image's PlanarConfiguration 0 (colour by pixel) or 1 (colour by plane), PS3.3 C.7.6.3.1.3; absent
    reads as 0. Any other value was refused in GDCM's own words, "DICOM pixel data could not be decoded (An invalid
    logic behavior occurredpc == 0 || pc == 1)", naming no field (session 21)."""
    value = _int_field(path, ds, "PlanarConfiguration")
    if samples > 1 and value not in (None, 0, 1):
        raise StudyError(f"{path}: PlanarConfiguration {value}; expected 0 (the samples of each pixel together) or 1 "
                         "(each colour plane after the other): how the colour samples are laid out is not known")


def _check_modality_lut(path: Path, ds: pydicom.Dataset) -> None:
    """A Modality LUT (ModalityLUTSequence, the lookup-table form of RescaleSlope/Intercept: radiographs, XA, some
    US) that is not the identity. GDCM does not apply it: an MR whose LUT maps each stored value v to v + 1000
    opened at the stored values, as if valid (session 21). Refused; an identity table changes nothing and opens."""
    items = ds.get("ModalityLUTSequence")
    if not items:
        return
    try:
        from pydicom.pixels import apply_modality_lut

        entries, first, _bits = (int(v) for v in items[0].LUTDescriptor)
        entries = entries or 65536  # 0 means 2^16 (PS3.3 C.11.1.1.1)
        stored = np.arange(first, first + entries, dtype=np.int64)
        mapped = apply_modality_lut(stored, ds)
        identity = mapped.shape == stored.shape and np.array_equal(np.asarray(mapped, np.float64), stored)
    except Exception:  # a table pydicom cannot read: its values are in doubt all the same
        identity = False
    if not identity:
        raise StudyError(f"{path}: a ModalityLUTSequence (a lookup table from stored values to the modality's "
                         "values), which the decoder here does not apply, so the image would open at its stored values; "
                         "export it with the table applied (or with RescaleSlope/RescaleIntercept) and open that")


# Transfer syntaxes GDCM (under SimpleITK) cannot decode: video (MPEG-2/4, HEVC), JPIP references, JPEG XL, HTJ2K,
# SMPTE ST 2110, Encapsulated Uncompressed and Deflated Image Frame Compression. GDCM failed on them
# with "Failed to change to Implicit Transfer Syntax" or "Cannot read requested file", naming neither; the last two
# were called damaged (session 25).
NO_DECODER_PREFIXES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.4.11", "1.2.840.10008.1.2.4.20",
                       "1.2.840.10008.1.2.7.", "1.2.840.10008.1.2.8.")
NO_DECODER = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.1.98"})
DICOM_ROOT = "1.2.840.10008."  # every transfer syntax the standard defines lies under it


def _no_decoder(syntax: str) -> bool:
    return syntax in NO_DECODER or syntax.startswith(NO_DECODER_PREFIXES)


def _private_syntax(syntax: str) -> bool:
    """A transfer syntax outside the standard's root (GE's private big endian 1.2.840.113619.5.2, a vendor's own
    compression): it was refused as `needs compressed (encapsulated) pixel data; the file holds raw bytes`, or
    called damaged, where its encoding is simply not one medseg knows (session 25)."""
    return bool(syntax) and not syntax.startswith(DICOM_ROOT)


def check_rescale(path: Path, ds: pydicom.Dataset, *, image: pydicom.Dataset | None = None, where: str = "") -> None:
    """RescaleSlope 0, NaN or inf, or a NaN/inf intercept: GDCM silently reads such a slope as 1 and such an
    intercept as 0 (measured: slope 0 with intercept -1024 opened as stored - 1024), values the file does not
    say. Refused; so is a rescale whose values cannot be held (:func:`check_rescale_range`). ``image``: the data set
    that describes the pixels, where ``ds`` is a frame's functional group (named by ``where``)."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue
        try:
            value = float(ds[keyword].value)
        except (TypeError, ValueError):
            raise StudyError(f"{path}: {keyword} {ds[keyword].value!r} is not a number") from None
        if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise StudyError(f"{path}: {keyword} {value:g}; expected a finite number{' other than 0' if keyword == 'RescaleSlope' else ''}"
                             " (the stored values cannot be turned into the modality's units)")
    slope, intercept = rescale_of(ds)
    check_rescale_range(path, ds if image is None else image, slope, intercept, where=where)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1" and (slope, intercept) != (1, 0):
        # MONOCHROME1 is for display, after the rescale; GDCM inverts the stored values before it (measured: a CT
        # slice of -896..1167 HU opened at -3216..-1153)
        raise StudyError(f"{path}: MONOCHROME1 with RescaleSlope {slope:g}, RescaleIntercept {intercept:g}: the decoder "
                         "inverts the stored values before the rescale, so the modality's values (HU) would be wrong; "
                         "save it as MONOCHROME2")


# The rescaled values are held as float64 and shown, exported and windowed from there; beyond float32's range a
# viewer, a float32 NIfTI or the model's input holds infinities, so that is the largest magnitude accepted.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_EPS = float(np.finfo(np.float64).eps)
HU_TYPES = ("", "HU")  # RescaleType absent (CT's default) or Hounsfield units


def stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    """The smallest and largest stored value the header allows (BitsStored, PixelRepresentation; BitsAllocated or 16
    where absent): what the rescale may be applied to, before any pixel is decoded."""
    bits = min(max(header_int(ds, "BitsStored", header_int(ds, "BitsAllocated", 16)) or 16, 1), 64)  # checked later
    if header_int(ds, "PixelRepresentation", 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def check_rescale_range(path: Path, ds: pydicom.Dataset, slope: float, intercept: float, *,
                        where: str = "") -> None:
    """A rescale whose values cannot be held is refused, not opened as stated (session 17): an intercept of 1e30
    swamped every stored step in float64 (a CT opened as one flat value, 1e30 everywhere, as if valid); a slope of
    1e300 made values past float32 (infinities in any float viewer or export). On a CT in Hounsfield units a
    negative slope turns bone darker than air: refused too. Other negative or large slopes that keep every stored
    value apart are what the file says (PS3.3 C.11.1.1.2 bounds neither) and open; a CT's values past any material
    are refused after decoding (``check_ct_values``). ``where`` names a frame's functional group."""
    low, high = stored_range(ds)
    magnitude = max(abs(slope * low + intercept), abs(slope * high + intercept))
    said = f"{path}: {where}RescaleSlope {slope:g}, RescaleIntercept {intercept:g}"
    if not math.isfinite(magnitude) or magnitude > FLOAT32_MAX:
        raise StudyError(f"{said} make stored values {low}..{high} reach {magnitude:.3g}, past what an image can hold "
                         f"(about {FLOAT32_MAX:.3g}); the rescale is wrong")
    if abs(slope) <= abs(intercept) * FLOAT64_EPS * 2:  # one stored step below the intercept's rounding
        raise StudyError(f"{said}: the intercept swamps the slope, so stored values {low}..{high} would all open as "
                         f"about {intercept:.3g} (their differences lost); the rescale is wrong")
    rescale_type = str(ds.get("RescaleType", "") or "").strip().upper()
    if str(ds.get("Modality", "")).strip().upper() == "CT" and rescale_type in HU_TYPES and slope < 0:
        raise StudyError(f"{said}: a CT's Hounsfield units grow with density, and a negative slope would show bone "
                         "darker than air; the rescale is wrong")


def rescale_of(ds: pydicom.Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent (:func:`check_rescale` proved them numbers)."""
    def value(keyword: str, default: float) -> float:
        raw = ds[keyword].value if keyword in ds else None
        return default if raw in (None, "") else float(raw)

    return value("RescaleSlope", 1.0), value("RescaleIntercept", 0.0)
