"""``data.nifti_check``: a NIfTI header is checked against the bytes present, and its geometry chosen by
nibabel's rule, before ITK decodes a voxel.

Geometry is compared with nibabel's own affine (RAS, turned to LPS here by hand) on the real files;
each refusal is one edited header field, asserted whole (``medseg`` prints it after the file name).
"""

from __future__ import annotations

import gzip
import io
import struct

import nibabel as nib
import numpy as np
import pytest

from data import nifti_check
from data.nifti_check import NiftiCheckError, check_nifti
from tests.conftest import DATA

SHAPE = (2, 3, 4)


def nifti_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.to_file_map(img.make_file_map({"image": buf, "header": buf}))
    return buf.getvalue()


PLAIN = nifti_bytes(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(SHAPE), np.eye(4)))  # 352 + 48 bytes


def edited(raw: bytes = PLAIN, **fields) -> bytes:
    """``raw`` with header fields set (a dict sets single elements of an array field)."""
    header = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    for key, value in fields.items():
        if isinstance(value, dict):
            for i, x in value.items():
                header[key][i] = x
        else:
            header[key] = value
    return header.binaryblock + raw[348:]


def check(tmp_path, raw: bytes, name: str = "x.nii", max_voxels: int = 10**6):
    path = tmp_path / name
    path.write_bytes(raw)
    return check_nifti(path, max_voxels=max_voxels)


def refused(tmp_path, raw: bytes, message: str, name: str = "x.nii", **kwargs) -> None:
    with pytest.raises(NiftiCheckError) as e:
        check(tmp_path, raw, name, **kwargs)
    assert str(e.value) == message


def lps(affine: np.ndarray):
    """(spacing, origin, direction) of a RAS affine, in ITK's LPS convention."""
    flip = np.array([-1.0, -1.0, 1.0])
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    return spacing, affine[:3, 3] * flip, ((matrix / spacing) * flip[:, None]).ravel()


# --- geometry ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct_head_0051_slabA_image.nii.gz", "mr_t1_colin27_slabA_image.nii.gz",
                                  "synthetic_shepp_logan_image.nii.gz"])
def test_real_files_geometry_is_nibabels_best_affine(name):
    img = nib.load(DATA / name)
    facts = check_nifti(DATA / name, max_voxels=10**8)
    assert facts.shape == img.shape and facts.datatype == str(img.get_data_dtype())
    assert facts.geometry == f"sform (sform_code {int(img.header['sform_code'])})"
    spacing, origin, direction = lps(img.header.get_best_affine())
    np.testing.assert_allclose(facts.spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(facts.origin, origin, atol=1e-5)
    np.testing.assert_allclose(facts.direction, direction, atol=1e-6)


def test_the_qform_is_used_without_an_sform_and_pixdim_without_either(tmp_path):
    img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), None)
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # left-handed: qfac -1
    qform = np.eye(4)
    qform[:3, :3], qform[:3, 3] = rotation * [2.0, 3.0, 4.0], [5.0, -6.0, 7.0]
    img.header.set_qform(qform, code=1)
    img.header.set_sform(None, code=0)
    facts = check(tmp_path, nifti_bytes(img))
    assert facts.geometry == "qform (qform_code 1)"
    spacing, origin, direction = lps(nib.load(tmp_path / "x.nii").header.get_qform())
    np.testing.assert_allclose(facts.spacing, (2, 3, 4), atol=1e-6)
    np.testing.assert_allclose(facts.origin, origin, atol=1e-6)
    np.testing.assert_allclose(facts.direction, direction, atol=1e-6)
    facts = check(tmp_path, edited(nifti_bytes(img), qform_code=0, pixdim={1: 2.0, 2: 3.0, 3: 4.0}))
    assert facts.geometry == "pixdim only (qform_code and sform_code 0: NIfTI method 1, no orientation)"
    assert facts.spacing == (2.0, 3.0, 4.0) and facts.origin == (0.0, 0.0, 0.0)
    assert facts.direction == (-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0)
    flat = nifti_bytes(nib.Nifti1Image(np.zeros((5, 6), np.uint8), None))
    facts = check(tmp_path, edited(flat, qform_code=0, sform_code=0, pixdim={1: 0.5, 2: 0.25, 3: 0.0}))
    assert facts.shape == (5, 6) and facts.spacing == (0.5, 0.25, 1.0)  # a 2D image: pixdim[3] unused
    one = nifti_bytes(nib.Nifti1Image(np.zeros((5,), np.uint8), None))
    assert check(tmp_path, edited(one, qform_code=0, sform_code=0, pixdim={1: 0.5, 2: 0.0})).spacing == (0.5, 1.0, 1.0)


def test_a_qform_that_agrees_with_the_sform_is_not_reported(tmp_path):
    assert check(tmp_path, edited(qform_code=1)).geometry == "sform (sform_code 2)"
    off = edited(qform_code=1, qoffset_x=0.0009)  # 0.9 um apart: the same geometry
    assert check(tmp_path, off).geometry == "sform (sform_code 2)"
    assert check(tmp_path, edited(qform_code=3, qoffset_x=0.0011)).geometry == (
        "sform (sform_code 2); the qform (qform_code 3) disagrees and was not used")
    assert check(tmp_path, edited(qform_code=1, quatern_b=0.9, quatern_c=0.9)).geometry == (
        "sform (sform_code 2); the qform (qform_code 1) disagrees and was not used")  # not even a rotation


def test_geometry_that_gives_no_orientation_is_refused(tmp_path):
    refused(tmp_path, edited(pixdim={1: 0.0}), "pixdim[1] = 0.0: voxel spacing must be a finite number > 0 mm")
    refused(tmp_path, edited(pixdim={2: -1.0}), "pixdim[2] = -1.0: voxel spacing must be a finite number > 0 mm")
    refused(tmp_path, edited(pixdim={3: np.inf}), "pixdim[3] = inf: voxel spacing must be a finite number > 0 mm")
    refused(tmp_path, edited(srow_x=[np.nan, 0, 0, 0]), "the sform holds NaN or infinite values")
    refused(tmp_path, edited(srow_z=[0, 0, 1, np.inf]), "the sform holds NaN or infinite values")
    refused(tmp_path, edited(srow_x=[0, 0, 0, 0]), "the sform is degenerate (zero or collinear axes); no orientation can be derived")
    refused(tmp_path, edited(srow_x=[1, 1, 0, 0], srow_y=[0, 0, 0, 0]),
            "the sform is degenerate (zero or collinear axes); no orientation can be derived")
    refused(tmp_path, edited(srow_x=[1, 0.01, 0, 0]), "the sform has shear (its axes are not perpendicular); resample the image first")
    # ITK refuses 1e-4 and more (test_a_slight_shear_that_itk_refuses_is_named_as_shear); within that it opens
    refused(tmp_path, edited(srow_x=[1, 0.0009, 0, 0]),
            "the sform has shear (its axes are not perpendicular); resample the image first")
    assert check(tmp_path, edited(srow_x=[1, 0.00009, 0, 0])).geometry == "sform (sform_code 2)"
    tiny = edited(srow_x=[1e-4, 0, 0, 0], srow_y=[0, 1e-4, 0, 0], srow_z=[0, 0, 1e-4, 0], pixdim={1: 1e-4, 2: 1e-4, 3: 1e-4})
    assert check(tmp_path, tiny).spacing == pytest.approx((1e-4, 1e-4, 1e-4))  # 0.1 um voxels: small, not degenerate
    refused(tmp_path, edited(sform_code=0, qform_code=1, quatern_b=0.9, quatern_c=0.9),
            "the qform quaternion is not a rotation (b^2 + c^2 + d^2 > 1, or not finite)")
    refused(tmp_path, edited(sform_code=0, qform_code=1, quatern_d=np.nan),
            "the qform quaternion is not a rotation (b^2 + c^2 + d^2 > 1, or not finite)")
    assert check(tmp_path, edited(sform_code=0, qform_code=1, quatern_b=1.0)).geometry == "qform (qform_code 1)"



def test_a_qform_that_mirrors_the_sform_is_refused(tmp_path):
    """The real Colin27 slab with its sform's x axis flipped (code 2) and its qform kept (code 1): opened by the sform
    without a word, mirrored left to right against its qform, where a reader of the qform puts left (hostile25b). A
    qform 50 mm off the sform (a registered file: an MNI sform, the scanner's qform) opens by the sform as before."""
    from data.readers import StudyError, read_study

    img = nib.load(DATA / "mr_t1_colin27_slabA_image.nii.gz")
    flipped = img.affine.copy()
    flipped[:, 0] *= -1
    mirrored = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    mirrored.set_qform(img.affine, code=1)
    mirrored.set_sform(flipped, code=2)
    nib.save(mirrored, tmp_path / "mirrored.nii.gz")
    with pytest.raises(StudyError) as e:
        read_study(tmp_path / "mirrored.nii.gz")
    assert str(e.value) == (f"{tmp_path / 'mirrored.nii.gz'}: the sform (sform_code 2) and the qform (qform_code 1) "
                            "are mirror images of each other (their handedness differs), so which side is the "
                            "patient's left is in doubt; make them agree (e.g. fslorient -copysform2qform, or "
                            "-copyqform2sform)")
    shifted = img.affine.copy()
    shifted[:3, 3] += 50
    moved = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    moved.set_qform(img.affine, code=1)
    moved.set_sform(shifted, code=2)
    nib.save(moved, tmp_path / "moved.nii.gz")
    volume = read_study(tmp_path / "moved.nii.gz")
    assert volume.source.geometry == "sform (sform_code 2); the qform (qform_code 1) disagrees and was not used"


def test_a_space_code_that_is_no_nifti_code_is_refused(tmp_path):
    """sform_code 99 was read as "use the sform" here, while nibabel (and the FSL tools) take an unknown code as 0 and
    place the image by the qform or pixdim: two readers, two geometries. Found in review (session 13), when the label
    map writer began to copy the source's codes. Codes 0-5 (nifti1.h's, 5 = another template) are read as before."""
    refused(tmp_path, edited(sform_code=99), "sform_code 99: expected a NIfTI space code 0-5; readers disagree on "
            "where such an image lies (nibabel takes it as 0)")
    refused(tmp_path, edited(sform_code=0, qform_code=-1), "qform_code -1: expected a NIfTI space code 0-5; readers "
            "disagree on where such an image lies (nibabel takes it as 0)")
    for code in range(6):
        assert check(tmp_path, edited(sform_code=code, qform_code=1)).codes[:2] == (code, 1)

# --- the header ---------------------------------------------------------------------------------------------
def test_shape_and_voxel_type_are_checked(tmp_path):
    refused(tmp_path, edited(dim={0: 0}), "dim[0] = 0; expected 1 to 7 dimensions")
    refused(tmp_path, edited(dim={0: 8}), "dim[0] = 8; expected 1 to 7 dimensions")
    refused(tmp_path, edited(dim={2: 0}), "empty image of size (2, 0, 4)")
    four = nifti_bytes(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.int16), np.eye(4)))
    refused(tmp_path, four, "a 4D NIfTI of size (2, 3, 4, 2); expected a 2D or 3D image (one volume)")
    one_volume = nifti_bytes(nib.Nifti1Image(np.zeros((*SHAPE, 1), np.int16), np.eye(4)))
    assert check(tmp_path, one_volume).shape == (2, 3, 4, 1)
    refused(tmp_path, edited(datatype=3), "unknown NIfTI datatype 3")
    refused(tmp_path, edited(datatype=1, bitpix=1), "1-bit (binary) voxels (NIfTI datatype 1); expected real-valued voxels")
    refused(tmp_path, nifti_bytes(nib.Nifti1Image(np.zeros(SHAPE, np.complex64), np.eye(4))),
            "complex-valued voxels (complex64) (NIfTI datatype 32); expected real-valued voxels")
    refused(tmp_path, edited(bitpix=8), "bitpix 8 does not match datatype int16 (16 bits)")
    for dtype, name in [(np.uint8, "uint8"), (np.float32, "float32"), (np.float64, "float64"), (np.uint16, "uint16")]:
        assert check(tmp_path, nifti_bytes(nib.Nifti1Image(np.zeros(SHAPE, dtype), np.eye(4)))).datatype == name


def test_the_voxel_limit_counts_every_axis(tmp_path):
    assert check(tmp_path, PLAIN, max_voxels=24).shape == SHAPE
    refused(tmp_path, PLAIN, "2 x 3 x 4 voxels is more than the limit of 23 (raise MEDSEG_MAX_VOXELS, or "
            "crop/downsample the study)", max_voxels=23)


def test_headers_that_are_not_single_file_nifti1_are_refused(tmp_path):
    refused(tmp_path, PLAIN[:300], "300 bytes; a NIfTI header needs 348")
    refused(tmp_path, b"\0" * 400, "no NIfTI header (sizeof_hdr is neither 348 nor 540)")
    refused(tmp_path, edited(magic=b"ni1"), "a header of a .hdr/.img pair; expected a single-file NIfTI (magic n+1)")
    refused(tmp_path, edited(magic=b"xyz"), "NIfTI magic b'xyz'; expected b'n+1' or b'n+2'")
    two = nifti_bytes(nib.Nifti2Image(np.zeros(SHAPE, np.int16), np.eye(4)))
    assert check(tmp_path, two).version == 2  # opened since session 26 (test_a_nifti2_opens_as_its_nifti1_twin)
    refused(tmp_path, two[:400], "400 bytes; a NIfTI-2 header needs 540")
    big_endian = nib.Nifti1Header(binaryblock=PLAIN[:348]).as_byteswapped(">")
    data = np.arange(24, dtype=">i2").reshape(SHAPE).tobytes(order="F")
    facts = check(tmp_path, big_endian.binaryblock + b"\0" * 4 + data)
    assert facts.shape == SHAPE and facts.datatype == "int16" and facts.spacing == (1.0, 1.0, 1.0)


def test_vox_offset_and_extensions_must_end_where_the_voxels_start(tmp_path):
    refused(tmp_path, edited(vox_offset=-1), "vox_offset -1.0; expected a byte offset >= 352")
    refused(tmp_path, edited(vox_offset=np.nan), "vox_offset nan; expected a byte offset >= 352")
    refused(tmp_path, edited(vox_offset=2**26), "vox_offset 67108864: more than 33554432 bytes of header and extensions")
    refused(tmp_path, edited(vox_offset=352)[:-1], "truncated: 399 of the 400 bytes that the header declares")
    head = edited(vox_offset=400)[:348]
    assert check(tmp_path, head + b"\0" * 4 + b"\0" * 48 + PLAIN[352:]).shape == SHAPE  # no extension flag
    extension = b"\1\0\0\0" + struct.pack("<ii", 48, 0) + b"\0" * 40
    assert check(tmp_path, head + extension + PLAIN[352:]).shape == SHAPE  # one 48-byte extension up to 400
    refused(tmp_path, head + b"\1\0\0\0" + struct.pack("<ii", 60, 0) + b"\0" * 100,
            "a header extension of 60 bytes at byte 352 runs past vox_offset 400")
    refused(tmp_path, head + b"\1\0\0\0" + struct.pack("<ii", 4, 0) + b"\0" * 100,
            "a header extension of 4 bytes at byte 352 runs past vox_offset 400")
    refused(tmp_path, head + b"\1\0\0\0" + struct.pack("<ii", 40, 0) + b"\0" * 100,
            "a header extension of 0 bytes at byte 392 runs past vox_offset 400")
    refused(tmp_path, head + b"\1\0\0\0" + struct.pack("<ii", 16, 0), "truncated: the header extensions end at byte 360, "
            "before vox_offset 400")
    refused(tmp_path, head[:348] + b"\1\0", "truncated header: 350 bytes, vox_offset 400")
    gz = gzip.compress(head + extension + PLAIN[352:])
    assert check(tmp_path, gz, "x.nii.gz").shape == SHAPE


def test_cut_and_bomb_files_are_refused_from_their_bytes(tmp_path, monkeypatch):
    refused(tmp_path, PLAIN[:-5], "truncated: 395 of the 400 bytes that the header declares")
    refused(tmp_path, gzip.compress(PLAIN[:-5]), "truncated: the gzip stream holds 395 of the 400 bytes that the header "
            "declares", "x.nii.gz")
    assert check(tmp_path, gzip.compress(PLAIN), "X.NII.GZ").shape == SHAPE  # the suffix in any case
    with pytest.raises(NiftiCheckError, match=r"^not a readable NIfTI file \(damaged gzip stream: Not a gzipped file"):
        check(tmp_path, PLAIN, "x.nii.gz")
    with pytest.raises(NiftiCheckError, match=r"^not a readable NIfTI file \(damaged gzip stream: Compressed file ended"):
        check(tmp_path, gzip.compress(PLAIN)[:30], "x.nii.gz")
    noise = np.random.default_rng(0).integers(0, 2**15, size=(40, 40, 40), dtype=np.int16)
    big = gzip.compress(nifti_bytes(nib.Nifti1Image(noise, np.eye(4))))
    with pytest.raises(NiftiCheckError, match=r"^damaged or truncated gzip stream \(.+\)$"):
        check(tmp_path, big[:-100], "x.nii.gz")
    monkeypatch.setattr(nifti_check, "GZIP_SLACK_BYTES", 10)
    assert check(tmp_path, gzip.compress(PLAIN + b"\0" * 10), "x.nii.gz").shape == SHAPE
    refused(tmp_path, gzip.compress(PLAIN + b"\0" * (2 * 1024**2)), "the gzip stream holds more than 410 bytes, 400 "
            "declared by the header (a gzip bomb?); refused without decompressing the rest", "x.nii.gz")


def test_a_gzip_stream_cut_inside_the_header_extensions_is_refused(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, size=5000, dtype=np.uint8).tobytes()
    head = edited(vox_offset=352 + 8 + 5000)[:348]
    data = head + b"\1\0\0\0" + struct.pack("<ii", 8 + 5000, 0) + noise + PLAIN[352:]
    assert check(tmp_path, gzip.compress(data), "x.nii.gz").shape == SHAPE
    cut = gzip.compress(data)[:3000]  # the first 544 bytes inflate, the extensions do not
    refused(tmp_path, cut, "damaged header extensions (Compressed file ended before the end-of-stream marker was "
            "reached)", "x.nii.gz")


# --- boundaries the first mutation run left open --------------------------------------------------------------
def test_header_sizes_at_their_boundaries(tmp_path):
    refused(tmp_path, PLAIN[:348], "truncated: 348 of the 400 bytes that the header declares")  # a header, no voxels
    refused(tmp_path, edited(vox_offset=400)[:352], "truncated: 352 of the 448 bytes that the header declares")
    refused(tmp_path, edited(vox_offset=2**25), f"truncated: 400 of the {2**25 + 48} bytes that the header declares")
    two = nifti_bytes(nib.Nifti2Image(np.zeros(SHAPE, np.int16), np.eye(4)))
    refused(tmp_path, two.replace(b"n+2\0", b"ni2\0", 1), "a header of a .hdr/.img pair; expected a single-file NIfTI "
            "(magic n+1)")
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    with pytest.raises(NiftiCheckError, match=r"^not a readable NIfTI file \(\[Errno 21\] Is a directory"):
        check_nifti(folder, max_voxels=10**6)
    seven = edited(dim={0: 7, 4: 1, 5: 1, 6: 1, 7: 1})
    assert check(tmp_path, seven).shape == (2, 3, 4, 1, 1, 1, 1)
    one_volume = edited(nifti_bytes(nib.Nifti1Image(np.zeros((*SHAPE, 1), np.int16), np.eye(4))), pixdim={4: 0.0})
    assert check(tmp_path, one_volume).shape == (2, 3, 4, 1)  # the time step of a single volume is not a spacing


def test_extension_sizes_are_read_signed_and_may_be_8_bytes(tmp_path):
    head = edited(vox_offset=400)[:348] + b"\1\0\0\0"
    refused(tmp_path, head + struct.pack("<ii", -8, 0) + b"\0" * 100,
            "a header extension of -8 bytes at byte 352 runs past vox_offset 400")
    chain = struct.pack("<ii", 8, 0) + struct.pack("<ii", 40, 0) + b"\0" * 32  # an empty one, then one up to 400
    assert check(tmp_path, head + chain + PLAIN[352:]).shape == SHAPE


def test_the_qform_note_follows_the_tolerance_and_needs_a_qform(tmp_path):
    shifted = edited(srow_x=[1, 0, 0, 100.0], qform_code=1, qoffset_x=100.005)  # 5 um at 100 mm: within 1e-4
    assert check(tmp_path, shifted).geometry == "sform (sform_code 2)"
    far = edited(srow_x=[1, 0, 0, 100.0], qform_code=1, qoffset_x=150.0)
    assert check(tmp_path, far).geometry == "sform (sform_code 2); the qform (qform_code 1) disagrees and was not used"
    scaled = edited(srow_x=[2, 0, 0, 0], pixdim={1: 2.0}, qform_code=0, qoffset_x=5.0)  # no qform to disagree with
    assert check(tmp_path, scaled).geometry == "sform (sform_code 2)"
    refused(tmp_path, edited(sform_code=0, qform_code=1, quatern_b=0.8, quatern_d=0.8),
            "the qform quaternion is not a rotation (b^2 + c^2 + d^2 > 1, or not finite)")


def test_a_vox_offset_inside_the_header_is_refused_not_read_shifted(tmp_path):
    """A single file's voxels start at byte 352 at the earliest. Below that ITK read them from byte 348 (the header's
    last 4 bytes became the first 2 voxels and the last 2 were lost; 351 mixed the bytes of neighbours) while nibabel
    and nifti1_io read them from 352: the study opened shifted, as if valid. 352 and above read as before."""
    from data.readers import read_study
    from data.study_errors import StudyError

    values = np.arange(1, 25, dtype=np.int16).reshape(SHAPE)
    raw = nifti_bytes(nib.Nifti1Image(values, np.eye(4)))
    for offset in (0, 300, 348, 351):
        message = (f"vox_offset {offset}: a single-file NIfTI's voxels start at byte 352 or later, after its header; "
                   "readers disagree where these start (ITK at byte 348, nibabel at 352): save the file again "
                   "(e.g. nibabel.save(nibabel.load(IN), OUT)) and open that")
        refused(tmp_path, edited(raw, vox_offset=offset), message)
        path = tmp_path / f"cut{offset}.nii.gz"
        path.write_bytes(gzip.compress(edited(raw, vox_offset=offset)))
        with pytest.raises(StudyError, match=r"^.+cut\d+\.nii\.gz: vox_offset \d+: a single-file NIfTI's voxels start"):
            read_study(path)
    path = tmp_path / "ok.nii"
    path.write_bytes(edited(raw, vox_offset=352))
    assert np.array_equal(read_study(path).array, values.transpose(2, 1, 0))


def test_dimensions_past_dim0_that_hold_more_than_one_are_refused(tmp_path):
    """dim[0] = 2 over a 2 x 3 x 4 image: ITK and nibabel read the first 2 x 3 slice and dropped the other three
    (the study opened as one slice, as if valid). Sizes of 1 past dim[0] (what writers leave) still open."""
    from data.readers import read_study
    from data.study_errors import StudyError

    refused(tmp_path, edited(dim={0: 2}), "dim[0] = 2 but dim[3] = 4: the header disagrees with itself on the image's "
            "size (readers take dim[0] and would drop the voxels past it); expected dim[3] to dim[7] to be 1 (or 0)")
    refused(tmp_path, edited(dim={0: 3, 5: 2}), "dim[0] = 3 but dim[5] = 2: the header disagrees with itself on the "
            "image's size (readers take dim[0] and would drop the voxels past it); expected dim[4] to dim[7] to be 1 "
            "(or 0)")
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(edited(dim={0: 2})))
    with pytest.raises(StudyError, match=r"two\.nii\.gz: dim\[0\] = 2 but dim\[3\] = 4"):
        read_study(path)
    assert check(tmp_path, edited(dim={0: 3, 4: 1, 5: 0})).shape == SHAPE
    flat = nifti_bytes(nib.Nifti1Image(np.zeros((2, 3), np.int16), np.eye(4)))  # nibabel's 2D: dim[3..7] = 1
    assert check(tmp_path, flat).shape == (2, 3)


@pytest.mark.parametrize("qform_code", [0, 1])
def test_a_slight_shear_that_itk_refuses_is_named_as_shear(tmp_path, qform_code):
    """ITK refuses an sform whose axes are off perpendicular by 1e-4 (a cosine) or more; the check here allowed up to
    1e-3, so a shear of 5e-4 reached ITK and was refused as `not a readable NIfTI file (ITK ERROR: ITK only supports
    orthonormal direction cosines. No orthonormal definition found!)`: readable, and named as what it is now. A
    shear under 1e-4 (float rounding of a resampled sform) opens as before."""
    from data.readers import read_study
    from data.study_errors import StudyError

    def sheared(e: float):
        affine = np.diag([0.8, 0.9, 2.5, 1.0])
        affine[0, 1] = e * 0.9
        img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), affine)
        img.set_sform(affine, 1)
        img.set_qform(np.diag([0.8, 0.9, 2.5, 1.0]), qform_code)
        path = tmp_path / f"shear{e:g}.nii"
        nib.save(img, path)
        return path

    with pytest.raises(StudyError) as e:
        read_study(sheared(5e-4))
    assert str(e.value).endswith("the sform has shear (its axes are not perpendicular); resample the image first")
    assert read_study(sheared(5e-5)).array.shape == SHAPE[::-1]


@pytest.mark.parametrize("slope, inter, said", [
    # ITK ignored it (the CT opened unscaled, -1024..1746), nibabel applies it
    (1e-30, 0.0, "scl_slope = 1e-30: readers disagree whether to apply it (ITK takes a slope under 2.22e-16 as no "
                 "scaling, nibabel applies it); save the voxels scaled, or with a slope of 1"),
    # ITK's float32 lost every step: one flat 1e30 (1e10: 4 values where the CT has 2757)
    (1.0, 1e30, "scl_inter = 1e+30 with scl_slope = 1: the intercept swamps the slope, so the voxels' differences "
                "would be lost in float32 (the type scaled voxels are read into); the scaling is wrong"),
    (1.0, 1e10, "scl_inter = 1e+10 with scl_slope = 1: the intercept swamps"),
    # 2.2 million voxels infinite, 'repaired' to +-3e38 with a warning
    (1e38, 0.0, "scl_slope = 1e+38, scl_inter = 0 make int16 voxels reach 3.28e+42, past what float32 holds "
                "(3.4e+38); the scaling is wrong"),
    # session 21: ITK read the NaN intercept as 0 (2 x stored), nibabel refuses it; a 2D file was refused in its words
    (2.0, float("nan"), "scl_inter = nan with scl_slope = 2; the voxel scaling needs a finite intercept"),
    # session 24's pass: opened unscaled without a word (ITK and nibabel both ignore a slope that is not finite), where
    # the header asked for a scaling it cannot hold; 0 and NaN stay "no scaling", as NIfTI and nibabel write them
    (float("inf"), 0.0, "scl_slope = inf: expected a finite voxel scaling (or 0 or NaN for none); the header asks for "
                        "a scaling that cannot be applied"),
    (float("-inf"), 0.0, "scl_slope = -inf: expected a finite voxel scaling"),
], ids=["slope_1e-30", "inter_1e30", "inter_1e10", "slope_1e38", "inter_nan", "slope_inf", "slope_-inf"])
def test_a_voxel_scaling_readers_cannot_hold_or_apply_alike_is_refused(tmp_path, slope, inter, said):
    """Session 17: each opened, as if valid, on the real CT. A negative or large slope that fits float32 still opens
    as the file says (NIfTI bounds neither)."""
    from data.readers import StudyError, read_study

    source = nib.load(str(DATA / "ct_head_0051_slabA_image.nii.gz"))
    stored = np.asarray(source.dataobj)
    image = nib.Nifti1Image(stored, source.affine, source.header)
    finite = np.isfinite([slope, inter]).all()
    image.header.set_slope_inter(slope if finite else 2.0, inter if finite else 0.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, str(path))
    if not finite:  # nibabel will not write a NaN intercept beside a valid slope, nor an infinite slope; others do
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[112:120] = struct.pack("<ff", slope, inter)  # scl_slope, scl_inter (little-endian, as nibabel wrote it)
        path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(StudyError) as e:
        read_study(path)
    assert str(e.value).startswith(f"{path}: {said}") and "\n" not in str(e.value)
    for kept in (-1.0, 1e30):
        image.header.set_slope_inter(kept, 0.0)
        nib.save(image, str(path))
        volume = read_study(path)
        np.testing.assert_allclose(volume.array, (stored.astype(np.float64) * kept).transpose(2, 1, 0), rtol=1e-6)


@pytest.mark.parametrize("name, shape", [("mr_t1_colin27_slabA_image.nii.gz", None), ("ct_head_0051_slabA_image.nii.gz", None),
                                         ("mr_t1_colin27_slabA_image.nii.gz", "2d"), ("mr_t1_colin27_slabA_image.nii.gz", "4d"),
                                         ("mr_t1_colin27_slabA_image.nii.gz", "qform")])
def test_a_nifti2_opens_as_its_nifti1_twin(tmp_path, name, shape):
    """A valid NIfTI-2 (the real Colin27 MR and CT slabs saved as NIfTI-2 by nibabel; a 2D slice; (i, j, k, 1); a qform
    alone) was refused: `a NIfTI-2 file; medseg reads NIfTI-1: convert it` (SimpleITK here reads no NIfTI-2). It is
    checked as a NIfTI-1 is and its voxels read by nibabel: voxels, spacing, origin and direction equal its NIfTI-1
    twin's as medseg reads it (session 26). A NIfTI-2 past the voxel limit, or cut short, is still refused."""
    from data.readers import StudyError, read_study

    one = nib.load(str(DATA / name))
    if shape == "2d":
        one = nib.Nifti1Image(np.asanyarray(one.dataobj)[:, :, 16], one.affine, one.header)
    elif shape == "4d":
        one = nib.Nifti1Image(np.asanyarray(one.dataobj)[..., None], one.affine, one.header)
    elif shape == "qform":
        one.header.set_sform(None, code=0)
    nib.save(one, tmp_path / "one.nii.gz")
    nib.save(nib.Nifti2Image.from_image(one), tmp_path / "two.nii.gz")
    assert nib.load(tmp_path / "two.nii.gz").header.sizeof_hdr == 540
    a, b = read_study(tmp_path / "one.nii.gz"), read_study(tmp_path / "two.nii.gz")
    assert a.array.dtype == b.array.dtype and a.source.geometry == b.source.geometry
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)
    with pytest.raises(StudyError, match="voxels is more than the limit of 1000"):
        read_study(tmp_path / "two.nii.gz", max_voxels=1000)
    raw = gzip.decompress((tmp_path / "two.nii.gz").read_bytes())
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StudyError, match="cut.nii: "):
        read_study(tmp_path / "cut.nii")
