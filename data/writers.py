"""Write results on the exact source grid: NIfTI label maps, PNG masks. All writes are atomic."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, PngImagePlugin

from data.volume import Volume


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target folder; rename it over ``path`` only on success.

    A crash mid-write leaves the previous file intact, never a truncated one. ``suffix``: the
    temporary's suffix when the writer needs another spelling than ``path``'s (default: path's).
    The file gets the mode ``open()`` would give it (the umask's), or keeps the mode of the file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(path.suffixes) or ".tmp"
    mode = _output_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # after the writer: some delete and create the file again
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _output_mode(path: Path) -> int:
    """The mode an output should have: the replaced file's, else 0666 less the umask. Why: mkstemp makes its file
    0600, so every label map, SEG and mask medseg wrote was readable by its writer alone (a PACS importer or a
    colleague reading a shared folder got "Permission denied"), and a 0644 file it replaced became 0600."""
    try:
        return path.stat().st_mode & 0o777  # no set-id or sticky bits onto a label map
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` sets it, which races other threads' writes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # no /proc: set and restore (a file created meanwhile is at most more private)
    os.umask(mask)
    return mask


def label_volume_image(labels: np.ndarray, reference: Volume) -> sitk.Image:
    """(K, J, I) integer labels -> a SimpleITK image with the reference's geometry."""
    if labels.shape != reference.array.shape[:3]:
        raise ValueError(f"label array {labels.shape} does not match the source grid {reference.array.shape[:3]}")
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=dtype))
    reference.copy_geometry_to(image)
    return image


def write_label_nifti(labels: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a NIfTI label map on the source grid (SimpleITK converts LPS -> the NIfTI RAS affine)."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI label map must end in .nii or .nii.gz")
    return write_nifti(label_volume_image(labels, reference), nifti_codes(reference), path)


def write_nifti(image: sitk.Image, codes: tuple[int, int, int], path: str | Path) -> Path:
    """Write ``image`` as NIfTI with (sform_code, qform_code, intent_code) ``codes`` (``nifti_codes``): ITK writes 1, 1
    and no intent whatever it is told, so other codes are patched into the header."""
    path = Path(path)
    compress = path.name.lower().endswith(".gz")
    # ITK writes NIfTI only under a lower-case suffix ('OUT.NII.GZ' fails); the file keeps the user's name
    with atomic_output(path, suffix=".nii.gz" if compress else ".nii") as tmp:
        if codes == ITK_CODES:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        else:  # ITK writes codes 1 whatever it is told: patch the header of an uncompressed copy, then compress
            plain = tmp.with_name(tmp.name.removesuffix(".gz") + ".plain.nii")
            try:
                sitk.WriteImage(image, str(plain), useCompression=False)
                _set_codes(plain, codes)
                if compress:
                    with open(plain, "rb") as src, gzip.GzipFile(tmp, "wb", compresslevel=6, mtime=0) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                else:
                    os.replace(plain, tmp)
            finally:
                plain.unlink(missing_ok=True)
    return path


ITK_CODES = (1, 1, 0)  # what ITK writes on every NIfTI: sform and qform scanner-anatomical, no intent
NIFTI_INTENT_LABEL = 1002


def nifti_codes(reference: Volume) -> tuple[int, int, int]:
    """(sform_code, qform_code, intent_code) for a label map of ``reference``.

    Why: a map of an MNI image (code 4; Talairach 3, aligned 2) written with code 1 has the same affine, but
    FSL-based tools take the codes as different spaces. A NIfTI source's codes are kept, both 0 too (pixdim only:
    readers differ on where to draw such an image, ITK at the origin, nibabel centred and x flipped, so a map with
    codes 1 was drawn mirrored and shifted against its image by nibabel-based tools; with codes 0 and the same
    pixdim every reader places the two alike); a DICOM or picture source gets ITK's scanner codes. The intent is
    the label intent when the source had it, else none: a t-map's intent (and its degrees of freedom) would
    misdescribe labels.
    """
    codes = tuple(reference.source.nifti_codes)
    if reference.source.format != "nifti" or len(codes) != 3:
        return ITK_CODES
    sform, qform, intent = (int(c) for c in codes)
    return sform, qform, NIFTI_INTENT_LABEL if intent == NIFTI_INTENT_LABEL else 0


def _set_codes(path: Path, codes: tuple[int, int, int]) -> None:
    """Set sform_code, qform_code and intent_code in an uncompressed NIfTI-1 file's header, in place (nibabel's
    header class reads and writes the 348 bytes; the voxels are not touched)."""
    import nibabel as nib

    sform, qform, intent = codes
    with open(path, "r+b") as f:
        header = nib.Nifti1Header.from_fileobj(f)  # HeaderDataError: not a NIfTI-1 header
        header["intent_code"] = intent  # the intent's parameters and name stay ITK's zeros
        header["qform_code"], header["sform_code"] = qform, sform
        f.seek(0)
        f.write(header.binaryblock)


def write_png_mask(mask: np.ndarray, path: str | Path, *, exif_orientation: int = 1) -> Path:
    """(H, W) bool -> 8-bit PNG with 0 = background, 255 = structure (viewable, and any non-zero reads back).

    ``exif_orientation``: that of the picture the mask was drawn on, shown turned (``Volume.source``): the mask is
    stored as the picture stores its pixels, with the same EXIF Orientation, so it lies on the picture in any viewer,
    turning or not, and medseg reads it back as drawn. Why: written as shown without the tag, `medseg oneshot` refused
    medseg's own mask of a phone photo as --ref-mask ("the reference image has EXIF Orientation 6 and the mask 1"), and
    a tool reading stored pixels saw it turned against the photo (session 26)."""
    return write_png_labels(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8), path,
                            exif_orientation=exif_orientation)


def write_png_labels(labels: np.ndarray, path: str | Path, *, exif_orientation: int = 1,
                     label_names: Mapping[int, str] | None = None,
                     colours: Mapping[int, Sequence[int]] | None = None) -> Path:
    """(H, W) integer label map as shown -> grey PNG whose pixels are the label values, stored as the picture stores
    its pixels with its EXIF Orientation (see ``write_png_mask``). Why the orientation: the UI's labels of a phone photo
    were exported only as a NIfTI in the shown orientation, without the tag, which `medseg oneshot --ref-mask` and
    `medseg eval` refused beside the photo (session 26b).

    Without ``label_names``: 8-bit grey, values up to 255 (a mask). With them (the UI's export, session 27): 8-bit
    grey up to 255, 16-bit grey past it, and an iTXt chunk ``medseg:labels`` naming the values with their colours
    (``data.pictures.label_table_text``, read back by ``read_label_table``): the map was a bare grey map no person or
    tool could name. Grey, not a palette PNG showing the colours: OpenCV's ``imread``, SimpleITK/ITK (so 3D Slicer)
    and many scripts expand a palette into its colours, so a user's pipeline would get colours, not label numbers."""
    from data.pictures import LABELS_CHUNK_KEY, as_stored, label_table_text

    path = Path(path)
    top, limit = int(np.max(labels, initial=0)), 255 if label_names is None else 65535
    if top > limit:
        raise ValueError(f"a PNG label map holds at most {limit} labels")
    picture = Image.fromarray(np.ascontiguousarray(
        as_stored(np.asarray(labels, dtype=np.uint8 if top <= 255 else np.uint16), exif_orientation)))
    info = None
    if label_names is not None:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(LABELS_CHUNK_KEY, label_table_text(label_names, {v: (colours or {}).get(v, (0, 0, 0))
                                                                        for v in label_names}))
    exif = Image.Exif()
    if exif_orientation != 1:
        exif[0x0112] = exif_orientation
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG", exif=exif, pnginfo=info)
    return path
