"""Bring an uploaded study into a session's upload folder, safely.

Browsers hand us temporary files (NIfTI, single DICOM files, a zip of a series, PNG/JPEG). We
copy them into ``<session>/uploads/<n>/`` so the session owns them (Gradio's cache is cleaned on a
timer), and unpack zips there. A zip is untrusted input: members with absolute paths or ``..``
are refused, and the unpacked size and member count are capped before anything is written
(a "zip bomb" would otherwise fill the disk).
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from data.readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES, StudyError, has_dicom_magic

MAX_UNZIPPED_BYTES = 2 * 1024**3  # 2 GiB: a large CT series, not a disk filler
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_DEPTH = 64  # folders in a member's path: a series is a few deep; 2000 ended Path.mkdir in RecursionError


class UploadError(StudyError):
    """An upload we will not unpack or cannot read; the message names the file and the fix."""


def safe_extract_zip(
    archive: str | Path, dest: str | Path, *, max_bytes: int = MAX_UNZIPPED_BYTES, max_members: int = MAX_ZIP_MEMBERS
) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member; returns ``dest``.

    Raises UploadError for an unreadable zip, an absolute or ``..`` member, a symlink or encrypted
    member, more than ``max_members`` files, more than ``max_bytes`` uncompressed, or a member whose
    data is damaged (bad CRC, broken deflate stream, unsupported compression).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"{archive.name}: not a readable zip file ({e})") from e
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise UploadError(f"{archive.name}: {len(members)} members; at most {max_members} are accepted")
        total = 0
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (m.filename[1:2] == ":"):
                raise UploadError(f"{archive.name}: member {m.filename!r} points outside the archive; refused")
            if len(name.parts) > MAX_ZIP_DEPTH:
                shown = m.filename if len(m.filename) <= 40 else m.filename[:40] + "..."
                raise UploadError(f"{archive.name}: member {shown!r} is {len(name.parts) - 1} folders deep; "
                                  f"at most {MAX_ZIP_DEPTH} are accepted")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise UploadError(f"{archive.name}: member {m.filename!r} is a symbolic link; refused")
            if m.flag_bits & 0x1:
                raise UploadError(
                    f"{archive.name}: member {m.filename!r} is encrypted; upload a zip without a password"
                )
            total += m.file_size
            if total > max_bytes:
                raise UploadError(
                    f"{archive.name}: unpacks to more than {max_bytes / 1024**2:.0f} MiB; upload a smaller series"
                )
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        seen: dict[Path, zipfile.ZipInfo] = {}
        for m in members:
            target = (dest / m.filename).resolve()
            if root not in target.parents and target != root:
                raise UploadError(f"{archive.name}: member {m.filename!r} points outside the archive; refused")
            first = seen.setdefault(target, m)
            files = not (m.is_dir() or first.is_dir())  # a folder's name as a file's: refused when unpacked, below
            if first is not m and files and (first.CRC, first.file_size) != (m.CRC, m.file_size):
                # the later copy was written over the earlier without a word: another unzipper (or a listing) shows
                # the first, medseg opened the last (session 25)
                raise UploadError(f"{archive.name}: member {m.filename!r} is in the archive twice with different "
                                  "contents, so which one is meant is in doubt; make the zip again")
            try:  # zipfile stops at the declared size and checks the CRC: a lying header ends in BadZipFile
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                raise UploadError(
                    f"{archive.name}: member {m.filename!r} cannot be unpacked ({e}); make the zip again"
                ) from e
            except OSError as e:  # a name used as a file and a folder, too long a name: without our folder's path
                raise UploadError(f"{archive.name}: member {m.filename!r} cannot be unpacked "
                                  f"({e.strerror or type(e).__name__}); make the zip again") from e
    return dest


def import_upload(
    files: list[str | Path], upload_dir: str | Path, *, settings=None, room_bytes: int | None = None
) -> Path:
    """Copy uploaded files into ``upload_dir`` and return the path ``read_study`` should open.

    One NIfTI / PNG / JPEG / DICOM file -> that file; several DICOM files -> their folder;
    a zip -> the folder it unpacks to (or the single NIfTI/image inside it). ``settings``
    (default ``app.settings.get_settings()``) bounds the file count and sizes; ``room_bytes`` is
    the disk the session may still fill (its quota and the server's). A refused upload leaves
    nothing behind: ``upload_dir`` is removed before the error is raised.
    """
    try:
        return _import(files, Path(upload_dir), settings, room_bytes)
    except BaseException:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise


def _import(files: list[str | Path], upload_dir: Path, settings, room_bytes: int | None) -> Path:
    from app.settings import get_settings

    settings = settings or get_settings()
    paths = [Path(f) for f in files if f]
    if not paths:
        raise UploadError("no file was uploaded: choose a NIfTI, DICOM files, a zip of a series, or PNG/JPEG")
    if len(paths) > settings.max_upload_files:
        raise UploadError(f"{len(paths)} files uploaded; at most {settings.max_upload_files} (MEDSEG_MAX_UPLOAD_FILES)")
    size = sum(p.stat().st_size for p in paths)
    if size > settings.max_upload_bytes:
        raise UploadError(
            f"the upload is {size / 1024**2:.0f} MiB; at most {settings.max_upload_bytes / 1024**2:.0f} MiB "
            "(MEDSEG_MAX_UPLOAD_MB)"
        )
    zips = [p for p in paths if p.name.lower().endswith(".zip")]
    if room_bytes is not None and not zips and size > room_bytes:
        raise UploadError(f"the upload is {size / 1024**2:.0f} MiB but this session has room for "
                          f"{max(room_bytes, 0) / 1024**2:.0f} MiB more (disk quota)")
    upload_dir.mkdir(parents=True, exist_ok=True)
    if zips:
        if len(paths) > 1:
            raise UploadError("upload one zip on its own (it should hold one series)")
        cap = settings.max_unzipped_bytes if room_bytes is None else min(settings.max_unzipped_bytes, room_bytes)
        if cap <= 0:
            raise UploadError("this session has no disk room left (disk quota); close some studies")
        out = safe_extract_zip(zips[0], upload_dir / "unzipped", max_bytes=cap, max_members=settings.max_upload_files)
        return _single_study_in(out)
    _refuse_hdr_img(paths)
    singles = [p for p in paths if p.name.lower().endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES)]
    if singles:
        if len(paths) > 1:
            raise UploadError("upload one NIfTI or image file at a time (several files must be DICOM slices)")
        target = upload_dir / _safe_name(paths[0].name)
        shutil.copyfile(paths[0], target)
        return target
    if len(paths) == 1:
        target = upload_dir / _safe_name(paths[0].name)
        shutil.copyfile(paths[0], target)
        return target
    series = upload_dir / "series"
    series.mkdir(exist_ok=True)
    for i, p in enumerate(paths):
        shutil.copyfile(p, series / f"{i:05d}_{_safe_name(p.name)}")
    return series


def _single_study_in(folder: Path) -> Path:
    """A folder unpacked from a zip: its lone NIfTI/image when no DICOM file is beside it (a BIDS sidecar or a
    README may be: before, such a zip was read as a DICOM folder, "no DICOM image series found"), else the folder."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UploadError("the zip is empty: it should hold the files of one DICOM series or one NIfTI")
    _refuse_hdr_img(files)
    singles = sorted(p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES))
    if not singles and not any(_is_dicom(p) for p in files):
        inner = sorted(p.name for p in files if p.name.lower().endswith(".zip"))
        if inner:  # not unpacked: one level of untrusted archive only
            raise UploadError(f"the zip holds another zip ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}) "
                              "and no study files; unpack it and upload the inner zip")
    if not singles or any(_is_dicom(p) for p in files if p not in singles):
        return folder
    if len(singles) == 1:
        return singles[0]
    shown = ", ".join(p.name for p in singles[:5]) + (", ..." if len(singles) > 5 else "")
    raise UploadError(f"the zip holds {len(singles)} NIfTI/PNG/JPEG files ({shown}) and no DICOM series; "
                      "upload one at a time")


def _refuse_hdr_img(paths: list[Path]) -> None:
    """A .hdr with its .img (Analyze, NIfTI-pair): name the conversion. Before, the two became a "series" folder,
    refused as "no DICOM image series found in this folder"."""
    for p in paths:
        if p.suffix.lower() == ".hdr" and any(q.suffix.lower() == ".img" and q.stem == p.stem for q in paths):
            name = _safe_name(p.name)
            stem = _safe_name(p.stem)
            raise UploadError(f"{name}: a .hdr/.img pair (Analyze or NIfTI-pair); medseg opens single-file NIfTI: save "
                              f"it as {stem}.nii.gz (e.g. nibabel.save(nibabel.load('{name}'), '{stem}.nii.gz')) "
                              "and upload that")


def _is_dicom(path: Path) -> bool:
    """A .dcm name, or the DICM marker at byte 128 (DICOM files are often named IM0001 or by their UID)."""
    return path.name.lower().endswith(".dcm") or has_dicom_magic(path)


SAFE_NAME_BYTES = 200  # a file name holds 255 bytes; loose DICOM files are copied as 00000_<name>


def _safe_name(name: str) -> str:
    """A browser-supplied file name reduced to its last part, with only harmless characters, at most
    ``SAFE_NAME_BYTES`` UTF-8 bytes with its suffix kept (``.dcm``, ``.nii.gz``). Why the cut: a legal name of 250
    bytes became 256 with the copy's number, and the upload failed with "File name too long"."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".") or "upload"
    if len(cleaned.encode()) <= SAFE_NAME_BYTES:
        return cleaned
    low = cleaned.lower()
    suffix = next((s for s in NIFTI_SUFFIXES if low.endswith(s)), None) or PurePosixPath(cleaned).suffix
    suffix = suffix if len(suffix) <= 16 else ""
    stem = cleaned[: len(cleaned) - len(suffix)]
    while len((stem + suffix).encode()) > SAFE_NAME_BYTES:
        stem = stem[:-1]
    return stem + suffix
