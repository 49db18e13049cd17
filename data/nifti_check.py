"""Check a NIfTI file's header against the bytes present, and choose its geometry, before any
voxel is decoded (issue 23: a cut .nii opened with its missing slices as zeros, a 352-byte
header "opened" as a 16000 x 16000 image, a .nii.gz bomb within the voxel limit took 9 GB).

What is checked, from the fixed header (348/540 bytes) and the extension chain only:

* the voxel type is real-valued (complex, 1-bit and 128-bit float are refused), ``bitpix`` agrees;
* one 2D/3D volume of at most ``max_voxels`` voxels;
* ``vox_offset + voxels x bitpix/8`` bytes are present: the file size for ``.nii``, the gzip stream
  for ``.nii.gz`` (decompressed in 1 MiB steps, counted, and refused once it runs past what the
  header declares plus ``GZIP_SLACK_BYTES``, so a bomb costs 1 MiB of memory);
* spacing (``pixdim``) finite and > 0, and an orientation matrix that is finite, non-degenerate
  and without shear.

Geometry rule (nibabel's ``get_best_affine``, NIfTI-1 "method 3 before method 2"): the sform when
``sform_code > 0``, else the qform when ``qform_code > 0``, else pixdim scaling alone (method 1).
ITK prefers the qform when both are set and they disagree, so the reader applies this choice and
says which was used (``Volume.source.geometry``).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.limits import GZIP_SLACK_BYTES, MAX_DICOM_HEADER_BYTES

# NIfTI datatype code -> (bits per voxel, name); what ITK and medseg can show
REAL_TYPES = {
    2: (8, "uint8"), 4: (16, "int16"), 8: (32, "int32"), 16: (32, "float32"), 64: (64, "float64"),
    256: (8, "int8"), 512: (16, "uint16"), 768: (32, "uint32"), 1024: (64, "int64"), 1280: (64, "uint64"),
    128: (24, "RGB24"), 2304: (32, "RGBA32"),
}
REFUSED_TYPES = {
    1: "1-bit (binary) voxels", 32: "complex-valued voxels (complex64)", 1792: "complex-valued voxels (complex128)",
    2048: "complex-valued voxels (complex256)", 1536: "128-bit float voxels",
}
MAX_HEADER_BYTES = MAX_DICOM_HEADER_BYTES  # vox_offset: header plus extensions


class NiftiCheckError(ValueError):
    """The header does not describe the bytes present, or its geometry is invalid (caller adds the path)."""


@dataclass(frozen=True)
class NiftiFacts:
    """What the header says, after checking: shape (i, j, k...), the geometry rule used, LPS geometry."""

    shape: tuple[int, ...]
    datatype: str
    geometry: str  # e.g. "sform (sform_code 1)"
    spacing: tuple[float, float, float]  # (i, j, k) mm
    origin: tuple[float, float, float]  # LPS mm
    direction: tuple[float, ...]  # 3x3 row-major, LPS, columns = i, j, k axes
    codes: tuple[int, int, int] = (0, 0, 0)  # (sform_code, qform_code, intent_code) as the header says
    version: int = 1  # NIfTI-1 or NIfTI-2 (whose voxels ITK cannot read here: "not recognized as a NIFTI file")


def check_nifti(path: Path, *, max_voxels: int) -> NiftiFacts:
    """Check ``path`` (see the module doc); raises NiftiCheckError naming the field and what was expected."""
    gz = path.name.lower().endswith(".gz")
    try:
        prefix = _read_prefix(path, gz, 544)
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiCheckError(f"not a readable NIfTI file ({'damaged gzip stream: ' if gz else ''}{e})") from None
    header, hdr_size = _parse_header(prefix)
    dims = [int(d) for d in header["dim"]]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise NiftiCheckError(f"dim[0] = {ndim}; expected 1 to 7 dimensions")
    shape = tuple(dims[1 : ndim + 1])
    _check_dims_past_ndim(dims)
    if any(n < 1 for n in shape):
        raise NiftiCheckError(f"empty image of size {shape}")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise NiftiCheckError(f"a {len(shape)}D NIfTI of size {shape}; expected a 2D or 3D image (one volume)")
    code = int(header["datatype"])
    if code in REFUSED_TYPES:
        raise NiftiCheckError(f"{REFUSED_TYPES[code]} (NIfTI datatype {code}); expected real-valued voxels")
    if code not in REAL_TYPES:
        raise NiftiCheckError(f"unknown NIfTI datatype {code}")
    bits, name = REAL_TYPES[code]
    if int(header["bitpix"]) != bits:
        raise NiftiCheckError(f"bitpix {int(header['bitpix'])} does not match datatype {name} ({bits} bits)")
    _check_scaling(float(header["scl_slope"]), float(header["scl_inter"]))
    _check_scaled_values(float(header["scl_slope"]), float(header["scl_inter"]), name)
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise NiftiCheckError(
            f"{' x '.join(map(str, shape))} voxels is more than the limit of {max_voxels} "
            "(raise MEDSEG_MAX_VOXELS, or crop/downsample the study)"
        )
    offset = _voxel_offset(header, hdr_size)
    _check_extensions(path, gz, prefix, hdr_size, offset, header.endianness)
    needed = offset + voxels * bits // 8
    _check_bytes_present(path, gz, needed)
    geometry, spacing, origin, direction = _geometry(header, shape)
    codes = (int(header["sform_code"]), int(header["qform_code"]), int(header["intent_code"]))
    return NiftiFacts(shape=shape, datatype=name, geometry=geometry, spacing=spacing, origin=origin, direction=direction,
                      codes=codes, version=1 if hdr_size == 348 else 2)


def _check_dims_past_ndim(dims: list[int]) -> None:
    """dim[0] counts the dimensions; the sizes past it must be 1 (or 0, unused). A size > 1 there means the header
    disagrees with itself: ITK and nibabel take dim[0] and read only the first part (measured: dim[0] = 2 over an
    image of 8 slices opened as its first slice, as if valid)."""
    ndim = dims[0]
    for axis in range(ndim + 1, 8):
        if dims[axis] > 1:
            raise NiftiCheckError(f"dim[0] = {ndim} but dim[{axis}] = {dims[axis]}: the header disagrees with itself "
                                  "on the image's size (readers take dim[0] and would drop the voxels past it); "
                                  f"expected dim[{ndim + 1}] to dim[7] to be 1 (or 0)")


def _check_scaling(slope: float, inter: float) -> None:
    """Refuse voxel scalings that readers apply differently (measured with SimpleITK and nibabel): NIfTI and
    nibabel read a slope of 0, NaN or inf as no scaling, ITK still added a finite intercept (-1024 would shift
    every HU); with a valid slope, nibabel refuses an infinite or NaN intercept ("Valid slope but invalid intercept")
    and ITK reads it as 0: a slope of 2 with a NaN intercept opened as 2 x stored (session 21; a 2D one, read by
    nibabel, was refused in its words). A NaN intercept without a slope (nibabel writes NaN, NaN for "no scaling") is
    no scaling to both. An infinite slope opened unscaled without a word (session 24's pass): refused, as in doubt."""
    if math.isinf(slope):  # 0 and NaN are "no scaling" as NIfTI and nibabel write it; inf is a scaling none can apply
        raise NiftiCheckError(f"scl_slope = {slope:g}: expected a finite voxel scaling (or 0 or NaN for none); the "
                              "header asks for a scaling that cannot be applied")
    if math.isnan(slope) or slope == 0:
        if math.isfinite(inter) and inter != 0:
            raise NiftiCheckError(f"scl_slope = {slope:g} (no scaling) with scl_inter = {inter:g}: readers disagree "
                                  "whether to add the intercept; set scl_inter to 0 or give a valid scl_slope")
    elif not math.isfinite(inter):
        raise NiftiCheckError(f"scl_inter = {inter} with scl_slope = {slope:g}; the voxel scaling needs a finite intercept")


# ITK applies scl_slope only above double's epsilon (itk::NiftiImageIO::MustRescale); nibabel applies any non-zero
ITK_SLOPE_EPSILON = float(np.finfo(np.float64).eps)
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_STEP = 2.0**-23  # float32's relative spacing: ITK reads a scaled NIfTI as float32


def _check_scaled_values(slope: float, inter: float, datatype: str) -> None:
    """Voxel scalings that readers cannot hold or apply alike (session 17; measured on the real CT with SimpleITK):
    scl_slope 1e-30 was ignored by ITK (the CT opened unscaled, -1024..1746) where nibabel applies it; scl_inter 1e30
    (or 1e10) swamped every stored step in ITK's float32 (one flat value, or 4 values for 2757); scl_slope 1e38 made
    2.2 million voxels infinite, then 'repaired' with a warning. Refused naming the field. A negative or large slope
    whose values fit float32 is what the file says (NIfTI bounds neither) and opens."""
    if not (math.isfinite(slope) and slope != 0) or (slope == 1 and inter == 0) or datatype.startswith("RGB"):
        return  # no scaling (_check_scaling refused the cases readers disagree on)
    if abs(slope) < ITK_SLOPE_EPSILON:
        raise NiftiCheckError(f"scl_slope = {slope:g}: readers disagree whether to apply it (ITK takes a slope under "
                              f"{ITK_SLOPE_EPSILON:.3g} as no scaling, nibabel applies it); save the voxels scaled, "
                              "or with a slope of 1")
    if abs(slope) <= abs(inter) * FLOAT32_STEP:
        raise NiftiCheckError(f"scl_inter = {inter:g} with scl_slope = {slope:g}: the intercept swamps the slope, so "
                              "the voxels' differences would be lost in float32 (the type scaled voxels are read "
                              "into); the scaling is wrong")
    kind = np.dtype(datatype)
    if kind.kind in "iu":
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        reach = max(abs(slope * low + inter), abs(slope * high + inter))
        if reach > FLOAT32_MAX:
            raise NiftiCheckError(f"scl_slope = {slope:g}, scl_inter = {inter:g} make {datatype} voxels reach "
                                  f"{reach:.3g}, past what float32 holds ({FLOAT32_MAX:.3g}); the scaling is wrong")


def _read_prefix(path: Path, gz: bool, n: int) -> bytes:
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        return f.read(n)  # gzip's read(n) decompresses only what n needs


def _parse_header(prefix: bytes):
    import nibabel as nib

    if len(prefix) < 348:
        raise NiftiCheckError(f"{len(prefix)} bytes; a NIfTI header needs 348")
    for cls, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order in "<>":
            if struct.unpack(order + "i", prefix[:4])[0] == size:
                if len(prefix) < size:
                    raise NiftiCheckError(f"{len(prefix)} bytes; a NIfTI-2 header needs 540")
                header = cls(binaryblock=prefix[:size], endianness=order, check=False)
                magic = bytes(header["magic"]).rstrip(b"\0")
                if magic in (b"ni1", b"ni2"):
                    raise NiftiCheckError("a header of a .hdr/.img pair; expected a single-file NIfTI (magic n+1)")
                if magic not in (b"n+1", b"n+2"):
                    raise NiftiCheckError(f"NIfTI magic {magic!r}; expected b'n+1' or b'n+2'")
                return header, size  # NIfTI-2 too: checked alike, its voxels read by nibabel (``NiftiFacts.version``)
    raise NiftiCheckError("no NIfTI header (sizeof_hdr is neither 348 nor 540)")


def _voxel_offset(header, hdr_size: int) -> int:
    """Where a single file's voxels start. Below ``hdr_size + 4`` (352) readers disagree: nifti1_io and nibabel read
    from 352, ITK from byte 348 (measured: the header's last 4 bytes became the first 2 int16 voxels, the last 2 were
    lost; 351 mixed neighbouring bytes), so the study would open shifted as if valid: refused."""
    value = float(header["vox_offset"])
    if not math.isfinite(value) or value < 0:
        raise NiftiCheckError(f"vox_offset {value}; expected a byte offset >= {hdr_size + 4}")
    if value > MAX_HEADER_BYTES:
        raise NiftiCheckError(f"vox_offset {value:.0f}: more than {MAX_HEADER_BYTES} bytes of header and extensions")
    if value < hdr_size + 4:
        raise NiftiCheckError(f"vox_offset {value:g}: a single-file NIfTI's voxels start at byte {hdr_size + 4} or "
                              f"later, after its header; readers disagree where these start (ITK at byte {hdr_size}, "
                              f"nibabel at {hdr_size + 4}): save the file again (e.g. "
                              "nibabel.save(nibabel.load(IN), OUT)) and open that")
    return int(value)


def _check_extensions(path: Path, gz: bool, prefix: bytes, hdr_size: int, offset: int, order: str) -> None:
    """The extension chain (esize, ecode)* must end inside the header: nibabel reads each one whole."""
    if offset <= hdr_size + 4:
        return
    if len(prefix) < hdr_size + 4:
        raise NiftiCheckError(f"truncated header: {len(prefix)} bytes, vox_offset {offset}")
    if prefix[hdr_size] == 0:
        return  # no extensions
    try:
        block = _read_prefix(path, gz, offset)
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiCheckError(f"damaged header extensions ({e})") from None
    pos = hdr_size + 4
    while pos + 8 <= offset:
        if pos + 8 > len(block):
            raise NiftiCheckError(f"truncated: the header extensions end at byte {len(block)}, before vox_offset {offset}")
        esize = struct.unpack(order + "i", block[pos : pos + 4])[0]
        if esize < 8 or pos + esize > offset:
            raise NiftiCheckError(f"a header extension of {esize} bytes at byte {pos} runs past vox_offset {offset}")
        pos += esize


def _check_bytes_present(path: Path, gz: bool, needed: int) -> None:
    if not gz:
        size = path.stat().st_size
        if size < needed:
            raise NiftiCheckError(f"truncated: {size} of the {needed} bytes that the header declares")
        return
    from data.untrusted import gzip_length

    cap = needed + GZIP_SLACK_BYTES
    try:
        length = gzip_length(path, cap)
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiCheckError(f"damaged or truncated gzip stream ({e})") from None
    if length < needed:
        raise NiftiCheckError(f"truncated: the gzip stream holds {length} of the {needed} bytes that the header declares")
    if length > cap:
        raise NiftiCheckError(
            f"the gzip stream holds more than {cap} bytes, {needed} declared by the header (a gzip bomb?); refused "
            "without decompressing the rest"
        )


XFORM_CODES = range(6)  # nifti1.h's NIFTI_XFORM_*: unknown, scanner, aligned, Talairach, MNI 152, another template
# xyzt_units' spatial codes other than mm (2) and unknown (0): ITK scales spacing and origin by these (nibabel does
# not), and the label written back says mm; reading them as mm put a label 1000 times too small over the image.
SPATIAL_UNITS = {1: ("metres", 1000.0), 3: ("micrometres", 0.001)}
# Codes 4-7 (xyzt_units & 7) are undefined in NIfTI-1: ITK and nibabel read them as mm without a word, a guess at
# the size of the image; refused since session 17 ("doubtful geometry is refused, not guessed").
UNDEFINED_SPATIAL_UNITS = range(4, 8)


# Axes off perpendicular by more than this (a cosine) are shear. ITK refuses an sform from 1e-4 (measured: 9.99e-5
# opens, 1.0e-4 is "not a readable NIfTI file (ITK ERROR: ITK only supports orthonormal direction cosines ...)"),
# or silently takes the qform instead; the limit sits just under ITK's so that such a file is named as sheared.
SHEAR_TOLERANCE = 9.9e-5


def _geometry(header, shape: tuple[int, ...]):
    """(rule, spacing, origin LPS, direction LPS) from the sform/qform/pixdim, or NiftiCheckError."""
    pixdim = [float(x) for x in header["pixdim"]]
    n = min(len(shape), 3)
    for axis in range(1, n + 1):
        if not (math.isfinite(pixdim[axis]) and pixdim[axis] > 0):
            raise NiftiCheckError(f"pixdim[{axis}] = {pixdim[axis]}: voxel spacing must be a finite number > 0 mm")
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    for name, code in (("sform_code", sform_code), ("qform_code", qform_code)):
        if code not in XFORM_CODES:  # nibabel and FSL take it as 0: they would place the image elsewhere
            raise NiftiCheckError(f"{name} {code}: expected a NIfTI space code 0-5; readers disagree on where such an "
                                  "image lies (nibabel takes it as 0)")
    if sform_code > 0:
        affine = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=float)
        rule = f"sform (sform_code {sform_code})"
        if qform_code > 0:
            qform = _qform(header)
            if qform is not None and np.linalg.det(qform[:, :3]) * np.linalg.det(affine[:, :3]) < 0:
                # one is the other's mirror: opened by the sform without a word, while a reader of the qform (ITK
                # for some files, tools that trust the scanner's) shows left as right (hostile25b)
                raise NiftiCheckError(f"the sform (sform_code {sform_code}) and the qform (qform_code {qform_code}) "
                                      "are mirror images of each other (their handedness differs), so which side is "
                                      "the patient's left is in doubt; make them agree (e.g. fslorient "
                                      "-copysform2qform, or -copyqform2sform)")
            if qform is None or not np.allclose(qform, affine, atol=1e-3, rtol=1e-4):
                rule += f"; the qform (qform_code {qform_code}) disagrees and was not used"
    elif qform_code > 0:
        affine = _qform(header)
        if affine is None:
            raise NiftiCheckError(_qform_problem(header))
        rule = f"qform (qform_code {qform_code})"
    else:
        affine = np.zeros((3, 4))
        affine[[0, 1, 2], [0, 1, 2]] = [pixdim[1], pixdim[2] if n > 1 else 1.0, pixdim[3] if n > 2 else 1.0]
        rule = "pixdim only (qform_code and sform_code 0: NIfTI method 1, no orientation)"
    if not np.isfinite(affine).all():
        raise NiftiCheckError(f"the {rule.split()[0]} holds NaN or infinite values")
    unit = int(header["xyzt_units"]) & 0x07
    if unit in UNDEFINED_SPATIAL_UNITS:
        raise NiftiCheckError(f"xyzt_units {int(header['xyzt_units'])}: spatial unit code {unit} is not defined by "
                              "NIfTI-1 (0 unknown, 1 metres, 2 millimetres, 3 micrometres), so the size and place of "
                              "the image are in doubt; set xyzt_units to the unit its sform/pixdim are in (2 for mm)")
    if unit in SPATIAL_UNITS:  # metres or micrometres: millimetres, as ITK (3D Slicer) reads them and labels are written
        name, factor = SPATIAL_UNITS[unit]
        affine = affine * factor
        rule += f"; {name} (xyzt_units {unit}) scaled to mm"
    matrix = affine[:, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if (spacing[:n] <= 1e-9).any() or abs(np.linalg.det(matrix)) <= 1e-12 * float(np.prod(spacing)):
        raise NiftiCheckError(f"the {rule.split()[0]} is degenerate (zero or collinear axes); no orientation can be derived")
    cosines = matrix / spacing
    if np.abs(cosines.T @ cosines - np.eye(3)).max() > SHEAR_TOLERANCE:
        raise NiftiCheckError(f"the {rule.split()[0]} has shear (its axes are not perpendicular); resample the image first")
    flip = np.array([-1.0, -1.0, 1.0])  # RAS (NIfTI) -> LPS (ITK)
    direction = (cosines * flip[:, None]).ravel()
    origin = affine[:, 3] * flip
    return rule, tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction))


def _qform_problem(header) -> str:
    """Why the qform cannot be used ('' when it can)."""
    b, c, d = (float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d"))
    if not all(map(math.isfinite, (b, c, d))) or b * b + c * c + d * d > 1 + 1e-6:
        return "the qform quaternion is not a rotation (b^2 + c^2 + d^2 > 1, or not finite)"
    qfac = float(header["pixdim"][0])
    if qfac not in (-1.0, 0.0, 1.0):
        return f"pixdim[0] (the qform's qfac) = {qfac}; expected 1 or -1 (0 is read as 1)"
    return ""


def _qform(header) -> np.ndarray | None:
    """The qform's 3 x 4 affine (nibabel's, qfac and pixdim applied), None when the quaternion or qfac is invalid.

    qfac (pixdim[0]) 0 is read as 1, as the NIfTI standard and ITK's nifti_io read it (old converters write 0):
    nibabel raises HeaderDataError on it, which escaped every reader as a traceback."""
    if _qform_problem(header):
        return None
    if float(header["pixdim"][0]) == 0.0:
        header = header.copy()
        header["pixdim"][0] = 1.0
    return np.asarray(header.get_qform(), dtype=float)[:3]
