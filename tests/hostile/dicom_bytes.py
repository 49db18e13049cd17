"""Byte-level builders for hostile DICOM files: a small valid image written by pydicom, and the
raw elements (nested sequences, bad lengths, deflate streams) spliced into it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
FOR_UID = "1.2.826.0.1.3680043.8.498.1002"
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def pixels(rows: int = 16, cols: int = 16, seed: int = 0, frames: int = 1) -> np.ndarray:
    """A deterministic int16 image [frames, rows, cols] (values -1000..3000, like CT)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 3000, size=(frames, rows, cols), dtype=np.int16)


def image_dataset(
    array: np.ndarray,
    *,
    series_uid: str = "1.2.826.0.1.3680043.8.498.2001",
    instance: int = 1,
    ipp: tuple | list | None = (0.0, 0.0, 0.0),
    iop: tuple | list | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: tuple | list | None = (0.5, 0.5),
    syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A minimal CT image (one frame [rows, cols] int16, or [frames, rows, cols]) that SimpleITK reads."""
    array = np.asarray(array, dtype=np.int16)
    frames = array.shape[0] if array.ndim == 3 else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = f"{series_uid}.{instance}"
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, f"{series_uid}.{instance}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, series_uid, FOR_UID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Hostile^Corpus", "HC001"
    ds.InstanceNumber = instance
    if ipp is not None:
        ds.ImagePositionPatient = list(ipp)
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(array.shape[-2]), int(array.shape[-1])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = array.astype("<i2").tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, little_endian=True,
               implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian)
    return path


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"UC", b"UR"):
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def nested_undefined(depth: int, *, tag: tuple[int, int] = (0x0040, 0xA730), vr: bytes | None = b"SQ") -> bytes:
    """``depth`` sequences of undefined length, each in the one item of the one above. ``vr=None``:
    implicit VR elements; ``vr=b"UN"``: an explicit UN outside, implicit inside (as PS3.5 says UN
    of undefined length is encoded)."""
    def head(v: bytes | None) -> bytes:
        return struct.pack("<HH", *tag) + ((v + b"\0\0") if v else b"") + b"\xff\xff\xff\xff"

    inner = None if vr == b"UN" else vr
    return head(vr) + ITEM + (head(inner) + ITEM) * (depth - 1) + (ITEM_END + SEQ_END) * depth


def nested_defined(depth: int, *, tag: tuple[int, int] = (0x0040, 0xA730)) -> bytes:
    """``depth`` nested sequences with explicit (defined) lengths, built inside out."""
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH", *tag) + b"SQ\0\0" + struct.pack("<I", len(item)) + item
    return inner


def insert_before_pixels(data: bytes, extra: bytes) -> bytes:
    """``extra`` spliced in just before the (7FE0,0010) pixel data element."""
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return data[:at] + extra + data[at:]


def set_pixel_length(data: bytes, new_bytes: bytes) -> bytes:
    """Replace the pixel data value (explicit VR little endian OW/OB) with ``new_bytes``."""
    at = data.rfind(b"\xe0\x7f\x10\x00")
    vr = data[at + 4 : at + 6]
    return data[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + vr + b"\0\0" + struct.pack("<I", len(new_bytes)) + new_bytes


def deflated_file(deflated: bytes, *, extra: bytes = b"", zeros_element_bytes: int = 0, cut: int = 0) -> bytes:
    """Rebuild a deflated-syntax Part 10 file (as pydicom writes it) with ``extra`` plain bytes
    appended to its data set and, with ``zeros_element_bytes``, a private OB element of that many
    zero bytes, written as one compressed 1 MiB block repeated (3 GB cost ~3 MB: a deflate bomb).
    ``cut`` drops that many bytes from the end of the stream."""
    meta_end = _meta_end(deflated)
    body = zlib.decompress(deflated[meta_end:], -zlib.MAX_WBITS) + extra
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = c.compress(body) + c.flush(zlib.Z_FULL_FLUSH)
    if zeros_element_bytes:
        step = 1024**2
        stream += c.compress(struct.pack("<HH", 0x7FE1, 0x0010) + b"OB\0\0" + struct.pack("<I", zeros_element_bytes))
        stream += c.flush(zlib.Z_FULL_FLUSH)
        piece_c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        piece = piece_c.compress(bytes(step)) + piece_c.flush(zlib.Z_FULL_FLUSH)
        stream += piece * (zeros_element_bytes // step)
        stream += c.compress(bytes(zeros_element_bytes % step))
    stream += c.flush(zlib.Z_FINISH)
    out = deflated[:meta_end] + stream
    return out[: len(out) - cut] if cut else out


def _meta_end(data: bytes) -> int:
    pos = 132
    while struct.unpack_from("<H", data, pos)[0] == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"UN", b"SQ", b"OW"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def decoded_reference(path: Path) -> np.ndarray:
    """pydicom's own decoding (with the modality rescale, and an RT Dose's DoseGridScaling, which medseg applies since
    session 25), [frames, rows, cols(, samples)] float64."""
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(path)
    arr = apply_rescale(ds.pixel_array, ds).astype(np.float64)
    if "DoseGridScaling" in ds:
        arr = arr * float(ds.DoseGridScaling)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return arr if frames > 1 else arr[None]


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def enhanced_multiframe(stack: np.ndarray, zs, *, iops=None, spacing=(0.5, 0.5)) -> Dataset:
    """An Enhanced CT image of ``stack`` [frames, rows, cols]: frame n at (-4, -4, zs[n]); the orientation
    shared (axial) unless ``iops`` gives one per frame; no top-level position, orientation or spacing."""
    from pydicom.sequence import Sequence

    ds = image_dataset(stack, ipp=None, iop=None, spacing=None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    shared, measures = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(spacing), 1.5
    shared.PixelMeasuresSequence = Sequence([measures])
    if iops is None:
        plane = Dataset()
        plane.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for n, z in enumerate(zs):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [-4.0, -4.0, float(z)]
        frame.PlanePositionSequence = Sequence([position])
        if iops is not None:
            plane = Dataset()
            plane.ImageOrientationPatient = list(iops[n])
            frame.PlaneOrientationSequence = Sequence([plane])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds
