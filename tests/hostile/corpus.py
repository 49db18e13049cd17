"""The hostile-input corpus (issue 23): files built here, in a folder, from a fixed recipe.

``build_corpus(folder) -> list[Case]`` writes every case under ``folder`` and says what must
happen: **refuse** (``medseg info`` exits 2 with one line on stderr holding ``fragment``) or
**accept** (exit 0, and the volume read equals ``expected`` exactly: voxels, and spacing when
given). Nothing is read back with medseg's readers to build an expectation; accepted content comes
from the array the case was written from, or from pydicom's own decoder.

Cases are grouped by ``kind`` (the rows of the table in ``docs/reliability.md``). ``reference``
marks the legitimate studies as large as the corpus run's voxel limit allows (``REFERENCE_VOXELS``),
whose peak memory bounds every other case's. Also used by the server-side tests to upload the
same files (``Case.path`` is a file or a series folder).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from tests.hostile import dicom_bytes as db

# The corpus runs with MEDSEG_MAX_VOXELS = REFERENCE_VOXELS, so the largest legitimate study is small
# enough to build and read on a CI machine, and every bound that scales with the limit scales down.
REFERENCE_VOXELS = 2**22
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclass
class Case:
    """One hostile (or legitimate) input and what must happen to it."""

    name: str
    kind: str
    path: Path
    expect: str  # "refuse" | "accept"
    fragment: str = ""  # refuse: in the one-line error; accept: in a warning line (empty: no warning)
    expected: np.ndarray | None = None  # accept: the voxels [k, j, i(, c)], compared exactly
    spacing: tuple[float, float, float] | None = None  # accept: (i, j, k) mm, to 1e-4
    geometry: str = ""  # accept: a fragment of Volume.source.geometry
    args: tuple[str, ...] = ()  # extra `medseg info` arguments
    reference: bool = False  # a legitimate study at the corpus voxel limit (memory reference)
    files: list[Path] = field(default_factory=list)

    def argv(self) -> list[str]:
        return ["info", os.fsdecode(self.path), *self.args]


Builder = Callable[[Path], list[Case]]
BUILDERS: list[Builder] = []


def builder(fn: Builder) -> Builder:
    BUILDERS.append(fn)
    return fn


def build_corpus(folder: Path) -> list[Case]:
    """Write every case under ``folder`` (created; should be empty) and return them, names unique."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for fn in BUILDERS:
        sub = folder / fn.__name__
        sub.mkdir()
        cases.extend(fn(sub))
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


# --- helpers ----------------------------------------------------------------------------------
def _ct_file(folder: Path, name: str = "img.dcm", **kw) -> tuple[Path, bytes, np.ndarray]:
    arr = db.pixels(16, 16, seed=kw.pop("seed", 0))[0]
    path = db.write(db.image_dataset(arr, **kw), folder / name)
    return path, path.read_bytes(), arr


def _series(folder: Path, n: int = 6, *, step: float = 1.5, edit=None, rows: int = 16, cols: int = 16,
            uid: str = "1.2.826.0.1.3680043.8.498.3001") -> tuple[Path, np.ndarray, list[float]]:
    """An axial series of ``n`` slices ``step`` mm apart; ``edit(i, ds)`` may change slice i's dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    stack = db.pixels(rows, cols, seed=7, frames=n)
    zs = [float(i * step) for i in range(n)]
    for i in range(n):
        ds = db.image_dataset(stack[i], series_uid=uid, instance=i + 1, ipp=(-4.0, -4.0, zs[i]))
        if edit is not None:
            edit(i, ds)
        if ds is not None:
            db.write(ds, folder / f"IM{i + 1:04d}.dcm")
    return folder, stack, zs


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, *, edit=None, cls=nib.Nifti1Image,
           level: int = 6) -> Path:
    """Write ``data`` (i, j, k) with qform = sform (code 1); ``edit(header)`` then changes header fields
    as raw values, after nibabel wrote the file (nibabel's save would repair or refuse them). ``level``: the
    gzip level of a ``.gz`` path."""
    img = cls(data, np.diag([0.8, 0.9, 2.0, 1.0]) if affine is None else affine)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    raw = img.header.binaryblock + b"\0\0\0\0" + np.asarray(img.dataobj).astype(img.get_data_dtype()).tobytes(order="F")
    header = type(img.header)(binaryblock=img.header.binaryblock, check=False)
    header["vox_offset"] = len(header.binaryblock) + 4
    if edit is not None:
        edit(header)
    raw = header.binaryblock + raw[len(header.binaryblock):]
    path.write_bytes(gzip.compress(raw, level) if path.name.endswith(".gz") else raw)
    return path


def _volume(seed: int = 1, shape=(10, 8, 5), dtype=np.int16) -> np.ndarray:
    """(i, j, k) nibabel order."""
    rng = np.random.default_rng(seed)
    return rng.integers(-500, 1500, size=shape).astype(dtype)


def _raw_nifti(data: np.ndarray, header_edit) -> bytes:
    """A single-file NIfTI-1 in memory with raw header edits (bytes) applied after nibabel wrote it."""
    img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    img.header["vox_offset"] = 352  # where nibabel's writer puts the voxels (its in-memory header says 0)
    raw = bytearray(img.header.binaryblock + b"\0\0\0\0" + np.asarray(data).tobytes(order="F"))
    header_edit(raw)
    return bytes(raw)


def _put(raw: bytearray, offset: int, fmt: str, *values) -> None:
    struct.pack_into("<" + fmt, raw, offset, *values)


# NIfTI-1 header field offsets
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET = 40, 70, 72, 76, 108
QFORM_CODE, SFORM_CODE, QUATERN_B, SROW_X = 252, 254, 256, 280


def ours(array_ijk: np.ndarray) -> np.ndarray:
    """nibabel's (i, j, k) array in medseg's [k, j, i] order."""
    return np.ascontiguousarray(np.asarray(array_ijk).T)


# --- A. DICOM structure: nesting, items, lengths (GDCM's recursion: signal 11 before) -----------------
@builder
def dicom_structure(d: Path) -> list[Case]:
    _, base, arr = _ct_file(d, "base.dcm")
    implicit_path, implicit, _ = _ct_file(d, "implicit_base.dcm", syntax=ImplicitVRLittleEndian)
    cases = []

    def refuse(name, data, fragment, *, folder=False):
        if folder:  # the bad file as one slice of a series that is otherwise fine
            series, _, _ = _series(d / name)
            path = _write_bytes(series / "IM0001.dcm", data)
            return Case(name, "dicom-structure", series, "refuse", fragment, files=[path])
        return Case(name, "dicom-structure", _write_bytes(d / f"{name}.dcm", data), "refuse", fragment)

    deep = db.nested_undefined(100_000)
    cases.append(refuse("nested_100k_before_pixels", db.insert_before_pixels(base, deep), "nested more than 32 deep"))
    cases.append(refuse("nested_100k_after_pixels", base + db.nested_undefined(100_000, tag=(0xFFFA, 0xFFFA)),
                        "nested more than 32 deep"))
    _, series_file, _ = _ct_file(d, "s.dcm", series_uid="1.2.826.0.1.3680043.8.498.3001", instance=1, ipp=(-4.0, -4.0, 0.0))
    cases.append(refuse("nested_100k_in_series", series_file + db.nested_undefined(100_000, tag=(0xFFFA, 0xFFFA)),
                        "nested more than 32 deep", folder=True))
    cases.append(refuse("nested_100k_implicit", db.insert_before_pixels(
        implicit, db.nested_undefined(100_000, vr=None)), "nested more than 32 deep"))
    cases.append(refuse("nested_3000_defined_length", db.insert_before_pixels(base, db.nested_defined(3000)),
                        "nested more than 32 deep"))
    cases.append(refuse("nested_100k_private_un", db.insert_before_pixels(
        base, db.nested_undefined(100_000, tag=(0x0009, 0x1010), vr=b"UN")), "nested more than 32 deep"))
    cases.append(refuse("nested_33", db.insert_before_pixels(base, db.nested_undefined(33)), "nested more than 32 deep"))
    # a private element whose defined-length value is a deep nest: GDCM may read it as a sequence
    blob = db.nested_undefined(5000, vr=None, tag=(0x0009, 0x1011))
    cases.append(refuse("private_blob_nested_5000", db.insert_before_pixels(
        base, db.element(0x0009, 0x1012, b"UN", db.ITEM[:4] + struct.pack("<I", len(blob)) + blob)),
        "nested more than 32 deep"))
    flat_items = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff\xff\xff\xff" + \
        (db.ITEM + db.ITEM_END) * 200_001 + db.SEQ_END
    cases.append(refuse("items_200001_flat", db.insert_before_pixels(base, flat_items), "more than 200000 sequence items"))
    never_closed = db.insert_before_pixels(base, struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0\xff\xff\xff\xff" + db.ITEM)
    cases.append(refuse("sequence_never_closed", never_closed, "never closed"))
    item_overrun = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + struct.pack("<I", 8) + \
        struct.pack("<HHI", 0xFFFE, 0xE000, 400)
    cases.append(refuse("item_longer_than_sequence", db.insert_before_pixels(base, item_overrun), "runs past the end of its sequence"))
    cases.append(refuse("delimiter_at_top_level", db.insert_before_pixels(base, db.SEQ_END), "unexpected item tag"))
    name_at = base.find(b"Hostile^Corpus")
    long_name = bytearray(base)
    _put(long_name, name_at - 2, "H", 0xFFF0)
    cases.append(refuse("element_length_past_end", bytes(long_name), "runs past"))
    bad_vr = bytearray(base)
    bad_vr[name_at - 4 : name_at - 2] = b"\x01\x02"
    cases.append(refuse("invalid_vr", bytes(bad_vr), "no valid VR"))
    cases.append(refuse("undefined_length_on_ob", db.insert_before_pixels(
        base, struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0\xff\xff\xff\xff" + b"\0" * 16), "undefined length but VR OB"))
    cases.append(refuse("no_dicm_marker", base[:128] + b"XXXX" + base[132:], "not a readable DICOM"))
    cases.append(refuse("header_cut_at_300_bytes", base[:300], "truncated"))
    # a 4 x 4 BMP header in the free 128-byte preamble: ITK asked BMPImageIO before GDCM and opened the BMP
    bmp = b"BM" + struct.pack("<IHHI", len(base), 0, 0, 200) + struct.pack("<IiiHHIIiiII", 40, 4, 4, 1, 8, 0, 16, 2835,
                                                                           2835, 256, 0)
    path = _write_bytes(d / "bmp_in_preamble.dcm", bmp + base[len(bmp):])
    cases.append(Case("bmp_header_in_preamble", "dicom-structure", path, "accept", expected=arr[None]))
    # legitimate: nesting 30 deep is inside the limit and must open with its pixels intact
    ok = _write_bytes(d / "nested_30.dcm", db.insert_before_pixels(base, db.nested_undefined(30)))
    cases.append(Case("nested_30_accepted", "dicom-structure", ok, "accept", expected=arr[None]))
    return cases


# --- B. deflated transfer syntax --------------------------------------------------------------
@builder
def dicom_deflate(d: Path) -> list[Case]:
    arr = db.pixels(16, 16, seed=3)[0]
    plain = db.write(db.image_dataset(arr, syntax=DeflatedExplicitVRLittleEndian), d / "deflated_src.dcm").read_bytes()
    cases = []

    def case(name, data, expect="refuse", fragment="", expected=None):
        return Case(name, "dicom-deflate", _write_bytes(d / f"{name}.dcm", data), expect, fragment, expected=expected)

    cases.append(case("deflate_bomb_3gb", db.deflated_file(plain, zeros_element_bytes=3 * 1024**3),
                      fragment="inflates to more than"))
    cases.append(case("deflate_bomb_512mb", db.deflated_file(plain, zeros_element_bytes=512 * 1024**2),
                      fragment="inflates to more than"))
    cases.append(case("deflate_truncated_stream", db.deflated_file(plain, cut=40), fragment="deflated data set"))
    cases.append(case("deflate_garbage_stream", plain[: db._meta_end(plain)] + b"\xff" * 64,
                      fragment="deflated data set is damaged"))
    cases.append(case("deflate_nested_100k", db.deflated_file(plain, extra=db.nested_undefined(100_000, tag=(0xFFFA, 0xFFFA))),
                      fragment="nested more than 32 deep"))
    short = db.set_pixel_length(zlib.decompress(plain[db._meta_end(plain):], -zlib.MAX_WBITS), b"\0" * 100)
    meta = plain[: db._meta_end(plain)]
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    cases.append(case("deflate_short_pixels", meta + c.compress(short) + c.flush(), fragment="100 of 512 bytes"))
    cases.append(case("deflate_valid", plain, expect="accept", expected=arr[None]))
    return cases


# --- C. pixel bytes against the header --------------------------------------------------------
@builder
def dicom_pixels(d: Path) -> list[Case]:
    cases = []
    _, base, arr = _ct_file(d, "base.dcm")

    def case(name, data, fragment, expect="refuse", expected=None):
        return Case(name, "dicom-pixels", _write_bytes(d / f"{name}.dcm", data), expect, fragment, expected=expected)

    def with_ds(name, edit, fragment):
        ds = db.image_dataset(arr)
        edit(ds)
        path = db.write(ds, d / f"{name}.dcm")
        return Case(name, "dicom-pixels", path, "refuse", fragment)

    cases.append(case("pixels_100_bytes", db.set_pixel_length(base, b"\1" * 100), "100 of 512 bytes"))
    cases.append(case("pixels_empty", db.set_pixel_length(base, b""), "0 of 512 bytes"))
    cases.append(case("file_cut_in_pixels", base[: len(base) - 200], "truncated"))
    series, _, _ = _series(d / "series_one_short_slice")
    short = db.set_pixel_length((series / "IM0003.dcm").read_bytes(), b"\0" * 100)
    _write_bytes(series / "IM0003.dcm", short)
    cases.append(Case("series_slice_with_100_bytes", "dicom-pixels", series, "refuse", "IM0003.dcm: truncated DICOM file"))
    cases.append(with_ds("rows_columns_65535", lambda ds: setattr(ds, "Rows", 65535) or setattr(ds, "Columns", 65535),
                         "more than the limit"))
    cases.append(with_ds("frames_one_million", lambda ds: setattr(ds, "NumberOfFrames", 1_000_000), "more than the limit"))
    cases.append(with_ds("frames_two_declared_one_present", lambda ds: setattr(ds, "NumberOfFrames", 2), "512 of 1024 bytes"))
    cases.append(with_ds("rows_zero", lambda ds: setattr(ds, "Rows", 0), "empty image"))
    cases.append(with_ds("bits_allocated_7", lambda ds: setattr(ds, "BitsAllocated", 7), "BitsAllocated 7"))
    cases.append(with_ds("bits_allocated_128", lambda ds: setattr(ds, "BitsAllocated", 128), "BitsAllocated 128"))
    cases.append(with_ds("samples_per_pixel_200", lambda ds: setattr(ds, "SamplesPerPixel", 200), "SamplesPerPixel 200"))
    cases.append(with_ds("no_pixel_data", lambda ds: delattr(ds, "PixelData"), "without pixel data"))
    # read by GDCM as MONOCHROME2, and kept as pydicom's list ['CT', 'MR'] (session 18)
    cases.append(with_ds("photometric_monochrome3", lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME3"),
                         "PhotometricInterpretation 'MONOCHROME3'; expected MONOCHROME2"))
    cases.append(with_ds("modality_two_values", lambda ds: setattr(ds, "Modality", ["CT", "MR"]),
                         "Modality 'CT\\\\MR' holds 2 values"))
    # rescales GDCM replaced silently (slope 0/NaN/inf by 1, a NaN intercept by 0)
    for name, slope, intercept, fragment in (("rescale_slope_zero", 0, -1024, "RescaleSlope 0; expected a finite number"),
                                            ("rescale_slope_nan", "NaN", 0, "RescaleSlope nan"),
                                            ("rescale_intercept_inf", 1, "inf", "RescaleIntercept inf")):
        cases.append(with_ds(name, lambda ds, s=slope, i=intercept: (setattr(ds, "RescaleSlope", s),
                                                                       setattr(ds, "RescaleIntercept", i)), fragment))
    # encapsulated data where raw bytes are declared, and the reverse
    frag = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, 8) + b"\0" * 8 + db.SEQ_END
    at = base.rfind(b"\xe0\x7f\x10\x00")
    encapsulated = base[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0\xff\xff\xff\xff" + frag
    cases.append(case("encapsulated_in_explicit_le", encapsulated, "compressed (encapsulated) pixel data in the uncompressed"))
    # RLE Lossless' UID has the length of Explicit VR Little Endian's, so the bytes can be swapped in place
    rle_raw = base.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0")
    cases.append(case("rle_syntax_raw_pixels", rle_raw, "needs compressed (encapsulated) pixel data"))
    empty_frags = base[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0\xff\xff\xff\xff" + \
        struct.pack("<HHI", 0xFFFE, 0xE000, 0) + db.SEQ_END
    cases.append(case("rle_without_fragments", empty_frags.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"),
                      "without any frame fragment"))
    garbage = base[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0\xff\xff\xff\xff" + \
        struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, 64) + b"\xff\xd8" + b"\x13" * 62 + db.SEQ_END
    cases.append(case("rle_garbage_fragment", garbage.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"),
                      "could not be decoded"))
    # a real JPEG whose own frame header says 4000 x 4000 inside a 16 x 16 DICOM
    from io import BytesIO

    buf = BytesIO()
    Image.new("L", (4000, 4000)).save(buf, "JPEG", quality=10)
    jpeg = buf.getvalue() + (b"\0" if len(buf.getvalue()) % 2 else b"")
    big = db.image_dataset(arr)
    big.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    big.BitsAllocated, big.BitsStored, big.HighBit, big.PixelRepresentation = 8, 8, 7, 0
    big.PixelData = pydicom.encaps.encapsulate([jpeg])
    big["PixelData"].VR = "OB"
    cases.append(Case("jpeg_frame_bigger_than_header", "dicom-pixels", db.write(big, d / "jpeg_big.dcm"), "refuse",
                      "a compressed frame of 4000 x 4000 x 1"))
    rle = db.image_dataset(arr)
    rle.file_meta.TransferSyntaxUID = RLELossless
    rle.PixelData = pydicom.encaps.encapsulate([struct.pack("<16I", 1, 64 + 10**6, *([0] * 14)) + b"\0" * 16])
    rle["PixelData"].VR = "OB"
    cases.append(Case("rle_segment_offset_past_end", "dicom-pixels", db.write(rle, d / "rle_bad.dcm"), "refuse",
                      "could not be decoded"))
    cases.append(case("pixels_one_padding_byte", db.set_pixel_length(base, arr.astype("<i2").tobytes() + b"\0\0"), "",
                      expect="accept", expected=arr[None]))
    return cases


# --- D. series geometry -----------------------------------------------------------------------
@builder
def dicom_geometry(d: Path) -> list[Case]:
    cases = []

    def series_case(name, edit, fragment, *, n=6, args=(), expect="refuse", spacing=None, uneven=None):
        folder, stack, zs = _series(d / name, n, edit=edit)
        if uneven is not None:
            uneven(folder)
        expected = stack if expect == "accept" else None
        return Case(name, "dicom-geometry", folder, expect, fragment, expected=expected, spacing=spacing, args=args)

    def on(i, fn):
        return lambda n, ds: fn(ds) if n == i else None

    cases.append(series_case("position_missing", on(2, lambda ds: delattr(ds, "ImagePositionPatient")), "IM0003.dcm: no ImagePositionPatient"))
    cases.append(series_case("orientation_missing", on(4, lambda ds: delattr(ds, "ImageOrientationPatient")), "IM0005.dcm: no ImageOrientationPatient"))
    cases.append(series_case("position_one_value", on(1, lambda ds: setattr(ds, "ImagePositionPatient", 5.0)), "ImagePositionPatient has 1 value(s)"))
    cases.append(series_case("orientation_one_value", on(1, lambda ds: setattr(ds, "ImageOrientationPatient", 1.0)), "ImageOrientationPatient has 1 value(s)"))
    cases.append(series_case("position_two_values", on(3, lambda ds: setattr(ds, "ImagePositionPatient", [1.0, 2.0])), "has 2 value(s); expected 3"))
    cases.append(series_case("position_nan", on(2, lambda ds: setattr(ds, "ImagePositionPatient", ["NaN", "0", "3"])), "NaN or infinite"))
    cases.append(series_case("position_text", on(2, lambda ds: ds.__setitem__(
        (0x0020, 0x0032), pydicom.DataElement((0x0020, 0x0032), "LO", "a\\b\\c"))), "is not 3 numbers"))
    cases.append(series_case("orientation_zero", on(0, lambda ds: setattr(ds, "ImageOrientationPatient", [0] * 6)), "not two perpendicular unit vectors"))
    cases.append(series_case("orientation_not_perpendicular", lambda n, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.6, 0.8, 0]),
                             "not two perpendicular unit vectors"))
    cases.append(series_case("orientation_mixed", on(3, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1])),
                             "oriented unlike"))
    cases.append(series_case("orientation_mixed_allow_uneven", on(3, lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])),
                             "oriented unlike", args=("--allow-uneven",)))
    cases.append(series_case("two_files_one_position", lambda n, ds: setattr(ds, "ImagePositionPatient", [-4, -4, 0]),
                             "two images at the same position", n=2))
    cases.append(series_case("duplicate_position", on(3, lambda ds: setattr(ds, "ImagePositionPatient", [-4, -4, 3.0])),
                             "two images at the same position"))
    cases.append(series_case("uneven_gap", on(3, lambda ds: setattr(ds, "ImagePositionPatient", [-4, -4, 5.2])), "uneven slice spacing"))
    cases.append(series_case("missing_slice", None, "1 slice(s) missing", uneven=lambda f: (f / "IM0004.dcm").unlink()))
    cases.append(series_case("in_plane_shift", on(3, lambda ds: setattr(ds, "ImagePositionPatient", [3.0, -4, 4.5])), "uneven slice spacing"))
    cases.append(series_case("gantry_tilt", lambda n, ds: setattr(ds, "ImagePositionPatient", [-4, -4 + 0.8 * n, 1.5 * n]),
                             "along their normal"))
    cases.append(series_case("rows_differ", on(2, lambda ds: setattr(ds, "Rows", 8) or setattr(ds, "PixelData", ds.PixelData[:256])),
                             "Rows 8 differs"))
    # ITK decodes every slice with the first file's grid and pixel description
    cases.append(series_case("pixel_spacing_differs", on(3, lambda ds: setattr(ds, "PixelSpacing", [0.7, 0.7])),
                             "IM0004.dcm: PixelSpacing [0.7, 0.7] differs from IM0001.dcm ([0.5, 0.5])"))
    cases.append(series_case("pixel_spacing_only_first_missing", on(0, lambda ds: delattr(ds, "PixelSpacing")),
                             "IM0001.dcm: ImageOrientationPatient but no PixelSpacing"))
    cases.append(series_case("monochrome1_slice", on(3, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1")),
                             "IM0004.dcm: PhotometricInterpretation MONOCHROME1 differs"))
    cases.append(series_case("unsigned_slice", on(3, lambda ds: setattr(ds, "PixelRepresentation", 0)),
                             "IM0004.dcm: PixelRepresentation 0 differs"))
    cases.append(series_case("frame_of_reference_differs", on(3, lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4")),
                             "IM0004.dcm: FrameOfReferenceUID 1.2.3.4 differs"))
    cases.append(series_case("pixel_spacing_zero", on(0, lambda ds: setattr(ds, "PixelSpacing", [0, 0.5])), "PixelSpacing"))
    cases.append(series_case("pixel_spacing_negative", on(0, lambda ds: setattr(ds, "PixelSpacing", [-0.5, 0.5])), "PixelSpacing"))
    cases.append(series_case("pixel_spacing_nan", on(0, lambda ds: setattr(ds, "PixelSpacing", ["NaN", "0.5"])), "PixelSpacing"))
    # accepted only when asked, at the mean spacing, with a warning
    folder, stack, _ = _series(d / "uneven_allowed", 6, edit=on(3, lambda ds: setattr(ds, "ImagePositionPatient", [-4, -4, 5.2])))
    cases.append(Case("uneven_gap_allow_uneven", "dicom-geometry", folder, "accept", "--allow-uneven: 2 uneven step(s)",
                      expected=stack, spacing=(0.5, 0.5, 1.5), args=("--allow-uneven",)))
    folder, stack, _ = _series(d / "missing_allowed", 6)
    (folder / "IM0004.dcm").unlink()
    cases.append(Case("missing_slice_allow_uneven", "dicom-geometry", folder, "accept", "1 slice(s) missing",
                      expected=np.delete(stack, 3, axis=0), spacing=(0.5, 0.5, 7.5 / 4), args=("--allow-uneven",)))
    folder, stack, _ = _series(d / "good_pair", 2, step=2.5)
    cases.append(Case("two_slice_series", "dicom-geometry", folder, "accept", expected=stack, spacing=(0.5, 0.5, 2.5)))
    # enhanced multi-frame: GDCM stacked the frames from the first one's position at an even spacing, whatever
    # the others said (a wrong spacing, or k mirrored); the frames are checked as a series now
    stack = db.pixels(16, 16, seed=3, frames=4)

    def enhanced(name, zs, fragment, expect="refuse", iops=None, args=(), spacing=None):
        path = db.write(db.enhanced_multiframe(stack, zs, iops=iops), d / f"{name}.dcm")
        return Case(name, "dicom-geometry", path, expect, fragment, expected=stack if expect == "accept" else None,
                    spacing=spacing, args=args, geometry="per-frame functional groups" if expect == "accept" else "")

    cases.append(enhanced("multiframe_uneven", [0, 1.5, 5.0, 6.5], "a step of 3.5 mm between frame 2 (1.50 mm) and frame 3"))
    cases.append(enhanced("multiframe_duplicate", [0, 1.5, 1.5, 3.0], "two images at the same position between frame 2"))
    cases.append(enhanced("multiframe_mixed_orientation", [0, 1.5, 3.0, 4.5], "frame 3 is oriented unlike frame 1",
                          iops=[[1, 0, 0, 0, 1, 0]] * 2 + [[1, 0, 0, 0, 0, -1]] * 2))
    cases.append(enhanced("multiframe_even", [0, 1.5, 3.0, 4.5], "", "accept", spacing=(0.5, 0.5, 1.5)))
    # a legacy multi-frame with an orientation but nothing that places its frames: ITK put them 1 mm apart
    legacy = db.image_dataset(stack, ipp=(-4.0, -4.0, 0.0))
    legacy.SliceThickness = 2.5  # a thickness, not a spacing
    cases.append(Case("multiframe_without_frame_spacing", "dicom-geometry", db.write(legacy, d / "legacy_mf.dcm"),
                      "refuse", "4 frames with ImageOrientationPatient but no SpacingBetweenSlices or per-frame positions"))
    legacy.SpacingBetweenSlices = 3.0
    cases.append(Case("multiframe_spacing_between_slices", "dicom-geometry", db.write(legacy, d / "legacy_mf_sbs.dcm"),
                      "accept", expected=stack, spacing=(0.5, 0.5, 3.0)))
    dose = db.image_dataset(stack, ipp=(-4.0, -4.0, 0.0))
    dose.GridFrameOffsetVector = [0.0, 2.0, 7.0, 9.0]  # RT Dose's frame offsets, uneven: GDCM used the first step
    cases.append(Case("multiframe_uneven_grid_frame_offsets", "dicom-geometry", db.write(dose, d / "dose_uneven.dcm"),
                      "refuse", "GridFrameOffsetVector [0.0, 2.0, 7.0, 9.0] is not one increasing, even step per frame"))
    cases.append(enhanced("multiframe_uneven_allow_uneven", [0, 1.5, 5.0, 6.5], "--allow-uneven: 1 uneven step(s)",
                          "accept", args=("--allow-uneven",), spacing=(0.5, 0.5, 6.5 / 3)))
    path, _, arr = _ct_file(d, "single_bad_orientation.dcm", iop=(1, 0, 0, 1, 0, 0))
    cases.append(Case("single_file_orientation_degenerate", "dicom-geometry", path, "refuse", "not two perpendicular"))
    # a single image's position: ITK made a NaN origin 0 and a 2-value one (x, y, 0), under the name of IPP
    path, _, _ = _ct_file(d, "single_position_nan.dcm", ipp=["NaN", "0", "0"])
    cases.append(Case("single_file_position_nan", "dicom-geometry", path, "refuse", "ImagePositionPatient [nan, 0.0, 0.0] holds NaN"))
    path, _, _ = _ct_file(d, "single_position_two.dcm", ipp=[1.0, 2.0])
    cases.append(Case("single_file_position_two_values", "dicom-geometry", path, "refuse",
                      "ImagePositionPatient has 2 value(s); expected 3"))
    path, _, arr = _ct_file(d, "single_no_geometry.dcm", ipp=None, iop=None, spacing=None)
    cases.append(Case("single_file_without_geometry", "dicom-geometry", path, "accept", expected=arr[None],
                      geometry="none (identity)"))
    return cases


# --- E. NIfTI bytes against the header --------------------------------------------------------
@builder
def nifti_bytes(d: Path) -> list[Case]:
    cases = []
    vol = _volume(2, (20, 16, 8))
    full = _nifti(d / "full.nii", vol).read_bytes()

    def case(name, data, fragment, *, expect="refuse", expected=None, gz=False):
        path = _write_bytes(d / f"{name}.nii{'.gz' if gz else ''}", gzip.compress(data, 1) if gz is True else data)
        return Case(name, "nifti-bytes", path, expect, fragment, expected=expected)

    cases.append(case("half_the_bytes", full[: len(full) // 2], "truncated"))
    cases.append(case("one_byte_short", full[:-1], "truncated"))
    cases.append(case("half_the_bytes_gz", full[: len(full) // 2], "truncated", gz=True))
    cases.append(case("gz_stream_cut", gzip.compress(full)[:-300], "truncated", gz="raw"))
    cases.append(case("gz_stream_garbage_tail", gzip.compress(full) + b"garbage!" * 4, "gzip", gz="raw"))
    cases.append(case("gz_crc_wrong", gzip.compress(full)[:-8] + b"\0" * 8, "gzip", gz="raw"))
    cases.append(case("plain_bytes_named_gz", full, "gzip", gz="raw"))
    cases.append(case("gz_bytes_named_nii", gzip.compress(full), "no NIfTI header"))

    def edited(name, fn, fragment, **kw):
        raw = bytearray(full)
        fn(raw)
        return case(name, bytes(raw), fragment, **kw)

    cases.append(edited("vox_offset_past_end", lambda r: _put(r, VOX_OFFSET, "f", 1e6), "truncated"))
    cases.append(edited("vox_offset_huge", lambda r: _put(r, VOX_OFFSET, "f", 1e12), "vox_offset"))
    cases.append(edited("vox_offset_nan", lambda r: _put(r, VOX_OFFSET, "f", float("nan")), "vox_offset"))
    cases.append(edited("vox_offset_negative", lambda r: _put(r, VOX_OFFSET, "f", -400.0), "vox_offset"))
    header_only = _raw_nifti(np.zeros((1, 1, 1), np.int16), lambda r: _put(r, DIM, "8h", 2, 16000, 16000, 1, 1, 1, 1, 1))[:352]
    cases.append(case("header_only_16000x16000", header_only, ""))  # over the corpus limit; see test_limits
    cases.append(case("header_only_16000x16000_gz", header_only, "", gz=True))
    small_header = _raw_nifti(np.zeros((1, 1, 1), np.int16), lambda r: _put(r, DIM, "8h", 2, 2048, 2048, 1, 1, 1, 1, 1))[:352]
    cases.append(case("header_only_2048x2048", small_header, "truncated: 352 of the 8388960 bytes"))
    cases.append(case("header_only_2048x2048_gz", small_header, "truncated: the gzip stream holds 352", gz=True))
    cases.append(edited("dims_over_voxel_limit", lambda r: _put(r, DIM, "4h", 3, 4096, 4096, 4096), "more than the limit"))
    cases.append(edited("dim0_zero", lambda r: _put(r, DIM, "h", 0), "dim[0] = 0"))
    cases.append(edited("dim0_nine", lambda r: _put(r, DIM, "h", 9), "dim[0] = 9"))
    cases.append(edited("dim_negative", lambda r: _put(r, DIM + 2, "h", -20), "empty image"))
    cases.append(edited("four_volumes", lambda r: _put(r, DIM, "5h", 4, 20, 16, 2, 4), "4D NIfTI"))
    cases.append(edited("bitpix_wrong", lambda r: _put(r, BITPIX, "h", 8), "bitpix 8"))
    cases.append(edited("datatype_unknown", lambda r: _put(r, DATATYPE, "h", 9999), "unknown NIfTI datatype 9999"))
    cases.append(edited("magic_ni1_pair", lambda r: r.__setitem__(slice(344, 348), b"ni1\0"), ".hdr/.img pair"))
    cases.append(edited("magic_garbage", lambda r: r.__setitem__(slice(344, 348), b"xyz\0"), "NIfTI magic"))
    cases.append(edited("sizeof_hdr_wrong", lambda r: _put(r, 0, "i", 999), "no NIfTI header"))

    def extension(esize):
        def fn(r):
            _put(r, VOX_OFFSET, "f", 368.0)
            r[348:352] = b"\1\0\0\0"
            r[352:352] = struct.pack("<ii", esize, 4) + b"\0" * 8
        return fn

    cases.append(edited("extension_size_huge", extension(2**30), "runs past vox_offset"))
    cases.append(edited("extension_size_negative", extension(-16), "runs past vox_offset"))
    # gzip bombs: a header within the voxel limit over a stream of gigabytes
    hdr = full[:352]
    member = gzip.compress(bytes(1024**2), 9)
    cases.append(case("gzip_bomb_concatenated_members", gzip.compress(hdr + full[352:]) + member * 4096,
                      "more than", gz="raw"))
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    stream = c.compress(full) + c.flush(zlib.Z_FULL_FLUSH)
    piece_c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = piece_c.compress(bytes(1024**2)) + piece_c.flush(zlib.Z_FULL_FLUSH)
    cases.append(case("gzip_bomb_one_member", stream + piece * 4096 + c.flush(), "a gzip bomb", gz="raw"))
    # accepted: two gzip members (as concatenating tools write), zero padding after the stream, trailing
    # bytes within the slack, big-endian
    half = len(full) // 2
    cases.append(case("gz_two_members", gzip.compress(full[:half]) + gzip.compress(full[half:]), "", expect="accept",
                      expected=ours(vol), gz="raw"))
    cases.append(case("gz_zero_padding", gzip.compress(full) + bytes(4096), "", expect="accept", expected=ours(vol), gz="raw"))
    cases.append(case("trailing_bytes_within_slack", full + b"\0" * 1000, "", expect="accept", expected=ours(vol), gz=True))
    n2 = _nifti(d / "nifti2.nii", vol, cls=nib.Nifti2Image)
    # a valid NIfTI-2 opens since session 26 (checked as NIfTI-1 is, its voxels read by nibabel)
    cases.append(Case("nifti2_accepted", "nifti-bytes", n2, "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0)))
    be = nib.Nifti1Image(vol.astype(">i2"), np.diag([0.8, 0.9, 2.0, 1.0]))
    be.header.set_sform(be.affine, code=1)
    nib.save(be, str(d / "big_endian.nii"))
    cases.append(Case("big_endian_accepted", "nifti-bytes", d / "big_endian.nii", "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0)))
    return cases


# --- F. NIfTI geometry ------------------------------------------------------------------------
@builder
def nifti_geometry(d: Path) -> list[Case]:
    cases = []
    vol = _volume(4, (12, 10, 6))

    def refuse(name, edit, fragment):
        return Case(name, "nifti-geometry", _nifti(d / f"{name}.nii.gz", vol, edit=edit), "refuse", fragment)

    def pixdim(axis, value):
        def fn(h):
            h["pixdim"][axis] = value
            h.set_sform(None, code=0)
            h.set_qform(None, code=0)
        return fn

    cases.append(refuse("pixdim_zero", pixdim(1, 0.0), "pixdim[1] = 0.0"))
    cases.append(refuse("pixdim_nan", pixdim(2, np.nan), "pixdim[2] = nan"))
    cases.append(refuse("pixdim_negative", pixdim(3, -2.0), "pixdim[3] = -2.0"))
    cases.append(refuse("pixdim_inf", pixdim(1, np.inf), "pixdim[1] = inf"))
    cases.append(refuse("pixdim_zero_with_sform", lambda h: h["pixdim"].__setitem__(3, 0.0), "pixdim[3] = 0.0"))

    def srow(rows, code=1):
        def fn(h):
            h["srow_x"], h["srow_y"], h["srow_z"] = rows
            h["sform_code"] = code
        return fn

    cases.append(refuse("sform_zero", srow([[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3]]), "sform is degenerate"))
    cases.append(refuse("sform_collinear", srow([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]]), "degenerate"))
    cases.append(refuse("sform_nan", srow([[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "NaN or infinite"))
    cases.append(refuse("sform_shear", srow([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "shear"))

    def bad_quaternion(h):
        h.set_sform(None, code=0)
        h["qform_code"] = 1
        h["quatern_b"], h["quatern_c"], h["quatern_d"] = 2.0, 0.0, 0.0

    cases.append(refuse("qform_not_rotation", bad_quaternion, "quaternion is not a rotation"))

    def qfac(value, sform=False):  # pixdim[0]: nibabel's get_qform raised HeaderDataError on anything but +-1
        def fn(h):
            if not sform:
                h.set_sform(None, code=0)
            h["pixdim"][0] = value
        return fn

    cases.append(refuse("qfac_two", qfac(2.0), "pixdim[0] (the qform's qfac) = 2.0; expected 1 or -1"))
    cases.append(refuse("qfac_nan", qfac(np.nan), "pixdim[0] (the qform's qfac) = nan"))
    # qfac 0 is read as 1 (the NIfTI standard, ITK's nifti_io): old converters write it
    cases.append(Case("qfac_zero_qform_only", "nifti-geometry", _nifti(d / "qfac_zero.nii.gz", vol, edit=qfac(0.0)),
                      "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0), geometry="qform (qform_code 1)"))
    cases.append(Case("qfac_zero_with_sform", "nifti-geometry",
                      _nifti(d / "qfac_zero_sform.nii.gz", vol, edit=qfac(0.0, sform=True)),
                      "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0), geometry="sform (sform_code 1)"))
    cases.append(Case("qfac_two_with_sform", "nifti-geometry",
                      _nifti(d / "qfac_two_sform.nii.gz", vol, edit=qfac(2.0, sform=True)),
                      "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0),
                      geometry="sform (sform_code 1); the qform (qform_code 1) disagrees and was not used"))
    # qform and sform disagree: nibabel's rule takes the sform, and says so
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float) * [1.25, 1.25, 3.0]
    s_aff = np.eye(4)
    s_aff[:3, :3], s_aff[:3, 3] = rot, [10, 20, 30]
    q_aff = np.diag([0.8, 0.9, 2.0, 1.0])

    def disagree(h):
        h.set_qform(q_aff, code=1)
        h.set_sform(s_aff, code=2)

    path = _nifti(d / "qform_sform_disagree.nii.gz", vol, edit=disagree)
    cases.append(Case("qform_sform_disagree", "nifti-geometry", path, "accept", expected=ours(vol), spacing=(1.25, 1.25, 3.0),
                      geometry="qform (qform_code 1) disagrees and was not used"))

    def qform_only(h):
        h.set_sform(None, code=0)
        h.set_qform(s_aff, code=1)

    path = _nifti(d / "qform_only.nii.gz", vol, edit=qform_only)
    cases.append(Case("qform_only", "nifti-geometry", path, "accept", expected=ours(vol), spacing=(1.25, 1.25, 3.0),
                      geometry="qform (qform_code 1)"))

    def neither(h):
        h.set_sform(None, code=0)
        h.set_qform(None, code=0)
        h.set_zooms((0.7, 0.6, 2.5))

    path = _nifti(d / "no_transform.nii.gz", vol, edit=neither)
    cases.append(Case("no_qform_no_sform", "nifti-geometry", path, "accept", expected=ours(vol), spacing=(0.7, 0.6, 2.5),
                      geometry="pixdim only"))
    flipped = np.diag([-0.8, 0.9, 2.0, 1.0])
    path = _nifti(d / "left_handed.nii.gz", vol, flipped)
    cases.append(Case("left_handed_qfac", "nifti-geometry", path, "accept", expected=ours(vol), spacing=(0.8, 0.9, 2.0)))
    flat = _volume(5, (14, 9))
    path = d / "two_d.nii.gz"
    img2 = nib.Nifti1Image(flat, np.diag([0.5, 0.25, 1.0, 1.0]))
    img2.header.set_sform(img2.affine, code=1)
    nib.save(img2, str(path))
    cases.append(Case("two_d_nifti", "nifti-geometry", path, "accept", expected=ours(flat)[None]))
    return cases


# --- G. NIfTI voxel types ---------------------------------------------------------------------
@builder
def nifti_types(d: Path) -> list[Case]:
    cases = []
    rng = np.random.default_rng(9)
    shape = (8, 6, 4)

    def write(name, data):
        return _nifti(d / f"{name}.nii.gz", data)

    cases.append(Case("complex64", "nifti-types", write("complex64", (rng.random(shape) + 1j).astype(np.complex64)),
                      "refuse", "complex-valued voxels"))
    cases.append(Case("complex128", "nifti-types", write("complex128", (rng.random(shape) + 1j).astype(np.complex128)),
                      "refuse", "complex-valued voxels"))
    raw = bytearray(_nifti(d / "bin_src.nii", rng.integers(0, 2, shape).astype(np.uint8)).read_bytes())
    _put(raw, DATATYPE, "hh", 1, 1)
    cases.append(Case("binary_1bit", "nifti-types", _write_bytes(d / "binary.nii", bytes(raw)), "refuse", "1-bit"))
    raw = bytearray(_nifti(d / "f128_src.nii", rng.random(shape).astype(np.float64)).read_bytes())
    _put(raw, DATATYPE, "hh", 1536, 128)
    cases.append(Case("float128", "nifti-types", _write_bytes(d / "float128.nii", bytes(raw) + bytes(raw[352:])),
                      "refuse", "128-bit float"))
    for dtype in (np.uint8, np.int8, np.uint16, np.int32, np.float32, np.float64):
        data = (rng.random(shape) * 100).astype(dtype)
        name = f"type_{np.dtype(dtype).name}"
        cases.append(Case(name, "nifti-types", write(name, data), "accept", expected=ours(data)))
    with_nan = rng.random(shape).astype(np.float32)
    with_nan[1, 2, 3] = np.nan
    expected = ours(with_nan).copy()
    expected[np.isnan(expected)] = np.nanmin(with_nan)
    cases.append(Case("float_with_nan", "nifti-types", write("with_nan", with_nan), "accept",
                      "1 NaN/infinite voxels", expected=expected))
    def scaling(slope, inter):
        def fn(h):
            h["scl_slope"], h["scl_inter"] = slope, inter
        return fn

    ints = (rng.random(shape) * 100).astype(np.int16)
    # a valid slope with an infinite intercept: ITK read the raw integers as if unscaled, nibabel raises
    cases.append(Case("scl_inter_inf", "nifti-types", _nifti(d / "inter_inf.nii.gz", ints, edit=scaling(1.0, np.inf)),
                      "refuse", "scl_inter = inf with scl_slope = 1; the voxel scaling needs a finite intercept"))
    # scl_slope 0 or NaN means no scaling (the NIfTI standard, nibabel), but ITK still added the intercept
    for name, slope in (("scl_slope_zero", 0.0), ("scl_slope_nan", np.nan)):
        cases.append(Case(f"{name}_inter_7", "nifti-types", _nifti(d / f"{name}_7.nii.gz", ints, edit=scaling(slope, 7.0)),
                          "refuse", "(no scaling) with scl_inter = 7: readers disagree whether to add the intercept"))
        cases.append(Case(f"{name}_inter_0", "nifti-types", _nifti(d / f"{name}_0.nii.gz", ints, edit=scaling(slope, 0.0)),
                          "accept", expected=ours(ints)))
    # inf too for both readers, yet the header asked for a scaling: it opened unscaled without a word (session 24)
    for inter in (7.0, 0.0):
        cases.append(Case(f"scl_slope_inf_inter_{inter:g}", "nifti-types",
                          _nifti(d / f"scl_slope_inf_{inter:g}.nii.gz", ints, edit=scaling(np.inf, inter)),
                          "refuse", "scl_slope = inf: expected a finite voxel scaling (or 0 or NaN for none)"))
    cases.append(Case("all_nan", "nifti-types", write("all_nan", np.full(shape, np.nan, np.float32)), "refuse", "every voxel is NaN"))
    return cases


# --- H. files, links and names ----------------------------------------------------------------
@builder
def files_and_names(d: Path) -> list[Case]:
    cases = []
    good = _nifti(d / "good.nii.gz", _volume(6, (6, 5, 3)))
    for name in ("pipe.nii.gz", "pipe.dcm", "pipe.png"):
        os.mkfifo(d / name)
        cases.append(Case(f"fifo_{name.replace('.', '_')}", "files", d / name, "refuse", "a pipe, not a regular file"))
    series, _, _ = _series(d / "series_with_fifo", 3)
    os.mkfifo(series / "IM0009.dcm")
    cases.append(Case("fifo_in_series_folder", "files", series, "refuse", "IM0009.dcm: a pipe"))
    # links: `medseg` follows them to regular files (the user's own files: datalad/git-annex datasets
    # are links), and refuses targets that are not regular files; a server keeps links in their folder
    # (data.untrusted; tests/data/test_links.py checks that policy)
    for name, target, fragment in (("passwd.nii.gz", "/etc/passwd", "not a readable NIfTI file"),
                                   ("hostname.dcm", "/etc/hostname", "not a readable DICOM file"),
                                   ("zero.nii", "/dev/zero", "a device, not a regular file")):
        os.symlink(target, d / name)
        cases.append(Case(f"link_to_{Path(target).name}", "files", d / name, "refuse", fragment))
    os.mkfifo(d / "fifo_target")
    os.symlink(d / "fifo_target", d / "link_to_fifo.nii.gz")
    cases.append(Case("link_to_fifo", "files", d / "link_to_fifo.nii.gz", "refuse", "a pipe, not a regular file"))
    outside, _, _ = _series(d / "elsewhere", 1)  # same series UID, slice 1 at z = 0
    series, _, _ = _series(d / "series_with_outside_link", 3)
    (series / "IM0002.dcm").unlink()
    (series / "sub").mkdir()
    os.symlink(outside / "IM0001.dcm", series / "sub" / "IM0002.dcm")  # followed: a second image at z = 0
    cases.append(Case("link_out_of_series_folder", "files", series, "refuse", "two images at the same position"))
    annex = d / "dataset" / ".git" / "annex" / "objects"
    nii = annex / "Xk" / "2v" / "SHA256E-s1--a.nii.gz" / "SHA256E-s1--a.nii.gz"
    nii.parent.mkdir(parents=True)
    anat = d / "dataset" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(good, nii)
    os.symlink(os.path.relpath(nii, anat), anat / "sub-01_T1w.nii.gz")
    cases.append(Case("datalad_annexed_nifti", "files", anat / "sub-01_T1w.nii.gz", "accept",
                      expected=ours(np.asarray(nib.load(str(good)).dataobj))))
    os.symlink(os.path.relpath(annex / "Qq" / "9z" / "SHA256E-s2--b.nii.gz" / "SHA256E-s2--b.nii.gz", anat),
               anat / "sub-01_T2w.nii.gz")
    cases.append(Case("datalad_not_fetched", "files", anat / "sub-01_T2w.nii.gz", "refuse", "`datalad get`"))
    store, stack, _ = _series(d / "dataset_store", 4)
    ct = d / "dataset" / "sub-01" / "ct"
    ct.mkdir()
    for k, f in enumerate(sorted(store.glob("*.dcm"))):
        key = annex / f"D{k}" / "ab" / f"SHA256E-s{k}--{f.name}"
        key.mkdir(parents=True)
        shutil.move(str(f), key / f.name)
        os.symlink(os.path.relpath(key / f.name, ct), ct / f.name)
    cases.append(Case("datalad_annexed_series", "files", ct, "accept", expected=stack, spacing=(0.5, 0.5, 1.5)))
    os.symlink("good.nii.gz", d / "alias.nii.gz")
    cases.append(Case("link_inside_folder", "files", d / "alias.nii.gz", "accept",
                      expected=ours(np.asarray(nib.load(str(good)).dataobj))))
    os.symlink("missing.nii.gz", d / "dangling.nii.gz")
    cases.append(Case("broken_link", "files", d / "dangling.nii.gz", "refuse", "a broken link"))
    cut = good.read_bytes()[:60]
    for label, name in (("newline", "bad\nname.nii.gz"), ("escape", "bad\x1b[31mred.nii.gz"),
                        ("carriage_return", "bad\rname.nii.gz"), ("line_separator", "bad\u2028name.nii.gz")):
        cases.append(Case(f"control_chars_{label}", "files", _write_bytes(d / name, cut), "refuse", "damaged gzip stream"))
    for suffix in (".nii.gz", ".nii", ".dcm", ".png"):
        cases.append(Case(f"empty_file{suffix.replace('.', '_')}", "files", _write_bytes(d / f"empty{suffix}", b""), "refuse"))
    (d / "folder.nii.gz").mkdir()
    cases.append(Case("folder_named_nii_gz", "files", d / "folder.nii.gz", "refuse", "no DICOM image series"))
    return cases


# --- I. PNG / JPEG ----------------------------------------------------------------------------
@builder
def images(d: Path) -> list[Case]:
    cases = []
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2, (30, 41)).astype(bool)
    Image.fromarray(bits).convert("1").save(d / "one_bit.png")
    cases.append(Case("png_1bit", "images", d / "one_bit.png", "accept", expected=(bits * 255).astype(np.uint8)[None]))
    deep = rng.integers(0, 65535, (20, 17)).astype(np.uint16)
    Image.fromarray(deep).save(d / "sixteen.png")
    cases.append(Case("png_16bit", "images", d / "sixteen.png", "accept", expected=deep[None]))
    gray = rng.integers(0, 255, (12, 9)).astype(np.uint8)
    Image.fromarray(gray).convert("LA").save(d / "gray_alpha.png")
    cases.append(Case("png_gray_alpha", "images", d / "gray_alpha.png", "accept", expected=gray[None]))
    rgb = rng.integers(0, 255, (10, 13, 3)).astype(np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    cases.append(Case("png_rgba", "images", d / "rgba.png", "accept", expected=rgb[None]))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(d / "palette.png")
    cases.append(Case("png_palette", "images", d / "palette.png", "accept", expected=np.asarray(pal.convert("RGB"))[None]))
    Image.fromarray(gray[:1, :1]).save(d / "one_pixel.png")
    cases.append(Case("png_1x1", "images", d / "one_pixel.png", "accept", expected=gray[:1, :1][None]))
    png = (d / "sixteen.png").read_bytes()
    cases.append(Case("png_truncated", "images", _write_bytes(d / "cut.png", png[: len(png) // 2]), "refuse", "not a readable PNG"))
    bad_crc = bytearray(png)
    bad_crc[33 + 8 + 20] ^= 0xFF  # inside the first IDAT chunk's data
    cases.append(Case("png_crc_mismatch", "images", _write_bytes(d / "crc.png", bytes(bad_crc)), "refuse", "not a readable PNG"))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png_header(w, h, body=b""):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")

    cases.append(Case("png_bomb_20000", "images", _write_bytes(d / "bomb.png", png_header(20000, 20000, b"\0" * 20001)),
                      "refuse", "too large"))
    cases.append(Case("png_over_voxel_limit", "images", _write_bytes(d / "big.png", png_header(4096, 4096, b"\0" * 4097)),
                      "refuse", "more than the limit"))
    cases.append(Case("png_zero_width", "images", _write_bytes(d / "zero.png", png_header(0, 10)), "refuse",
                      "a PNG of 0 x 10 pixels, an empty picture"))  # session 22: was "not a readable PNG"
    # a complete zlib stream of 10 of 64 rows, then IEND: PIL padded the rest black (session 18)
    short = png_header(64, 64, b"".join(b"\0" + bytes([200]) * 64 for _ in range(10)))
    cases.append(Case("png_image_data_ends_early", "images", _write_bytes(d / "short.png", short), "refuse",
                      "image data ends after 10 of 64 rows"))
    # PIL decodes ~40 formats by their bytes: PostScript named .png ran through Ghostscript, GIF/TIFF/BMP opened
    ps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 10\nnewpath 0 0 moveto 20 0 lineto 20 10 lineto fill\n%%EOF\n"
    cases.append(Case("postscript_named_png", "images", _write_bytes(d / "scan.png", ps), "refuse",
                      "not a readable PNG/JPEG image (its bytes are neither PNG nor JPEG)"))
    frames = [Image.fromarray(np.roll(gray, n, axis=0)) for n in range(3)]
    for fmt in ("GIF", "TIFF", "BMP"):
        frames[0].save(d / f"{fmt.lower()}_named.png", format=fmt)
        cases.append(Case(f"{fmt.lower()}_named_png", "images", d / f"{fmt.lower()}_named.png", "refuse",
                          "its bytes are neither PNG nor JPEG"))
    # 16-bit PNGs with colour or alpha: PIL read them at 8 bits (59900 became 233)
    import cv2

    deep_rgb = np.dstack([deep, deep, deep])
    cv2.imwrite(str(d / "grey_as_rgb16.png"), deep_rgb)
    cases.append(Case("png_16bit_grey_stored_as_rgb", "images", d / "grey_as_rgb16.png", "accept", expected=deep[None]))
    rows = b"".join(b"\0" + b"".join(struct.pack(">HH", int(v), 65535) for v in row) for row in deep)
    ga = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", deep.shape[1], deep.shape[0], 16, 4, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    cases.append(Case("png_16bit_grey_alpha", "images", _write_bytes(d / "grey_alpha16.png", ga), "accept", expected=deep[None]))
    colour16 = np.dstack([deep, deep // 2, deep // 3])  # cv2 writes BGR: the file's RGB is the reverse
    cv2.imwrite(str(d / "colour16.png"), colour16)
    cases.append(Case("png_16bit_colour", "images", d / "colour16.png", "accept", "a 16-bit colour PNG, opened at 8 bits",
                      expected=(colour16[..., ::-1] >> 8).astype(np.uint8)[None]))
    frames[0].save(d / "animated.png", save_all=True, append_images=frames[1:])  # APNG: frames 2, 3 were dropped
    cases.append(Case("apng_3_frames", "images", d / "animated.png", "refuse", "an animated PNG of 3 frames"))
    Image.fromarray(rgb).save(d / "phone.jpg", format="MPO", save_all=True, append_images=[Image.fromarray(rgb[::2, ::2])])
    with Image.open(d / "phone.jpg") as im:  # a phone's JPEG with a second picture: the primary one opens
        primary = np.asarray(im.convert("RGB"))
    cases.append(Case("jpeg_mpo_two_pictures", "images", d / "phone.jpg", "accept", expected=primary[None]))
    Image.fromarray(rgb).save(d / "photo.jpg", quality=90)
    jpg = (d / "photo.jpg").read_bytes()
    cases.append(Case("jpeg_truncated", "images", _write_bytes(d / "cut.jpg", jpg[: len(jpg) // 2]), "refuse", "not a readable PNG/JPEG"))
    cases.append(Case("jpeg_header_only", "images", _write_bytes(d / "hdr.jpg", jpg[:200]), "refuse", "not a readable PNG/JPEG"))
    # the first two thirds of a JPEG, then EOI: opened with the rest grey (Pillow silences libjpeg; session 18)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(d / "noise.jpg", quality=90)
    noise = (d / "noise.jpg").read_bytes()
    cut_eoi = _write_bytes(d / "cut_eoi.jpg", noise[: 2 * len(noise) // 3] + b"\xff\xd9")
    cases.append(Case("jpeg_cut_closed_with_eoi", "images", cut_eoi, "refuse",
                      "the JPEG's image data ends before its last row"))
    return cases


# --- J. legitimate DICOM that pydicom decodes itself (nothing hostile may break these) ----------
@builder
def legit_dicom(d: Path) -> list[Case]:
    cases = []
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
                 "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "examples_rgb_color.dcm", "rtdose.dcm", "MR_small_padded.dcm"):
        src = PYDICOM_FILES / name
        if not src.exists():
            continue
        path = d / name
        shutil.copy(src, path)
        cases.append(Case(f"pydicom_{name[:-4]}", "legit", path, "accept", expected=db.decoded_reference(path)))
    cases.append(Case("pydicom_MR_truncated", "legit", Path(shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", d)),
                      "refuse", "truncated"))
    return cases


# --- K. the largest legitimate studies the corpus limit allows (memory references) ------------
@builder
def references(d: Path) -> list[Case]:
    cases = []
    n = REFERENCE_VOXELS
    side = 512
    slices = n // (side * side)
    folder = d / "series_int16"
    folder.mkdir()
    rng = np.random.default_rng(13)
    base = rng.integers(-1000, 2000, (side, side)).astype(np.int16)
    for k in range(slices):
        db.write(db.image_dataset(np.roll(base, k, axis=0), series_uid="1.2.826.0.1.3680043.8.498.4001", instance=k + 1,
                                  ipp=(0.0, 0.0, 2.0 * k), spacing=(0.7, 0.7)), folder / f"IM{k:04d}.dcm")
    cases.append(Case("reference_dicom_series_int16", "reference", folder, "accept", reference=True))
    for dtype in (np.float32, np.float64):
        data = np.linspace(-1000, 1000, n, dtype=dtype).reshape(256, 256, n // 65536)
        # gzip level 1: 48 MB at level 6 took ~5 s of the corpus' set-up; the files are 6 and 22 MB either way
        path = _nifti(d / f"nifti_{np.dtype(dtype).name}.nii.gz", data, level=1)
        cases.append(Case(f"reference_nifti_{np.dtype(dtype).name}", "reference", path, "accept", reference=True))
    return cases
