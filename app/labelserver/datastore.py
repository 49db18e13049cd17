"""Where the label server's images come from and where submitted labels go.

* ``StudiesDir``: a folder of NIfTI files and DICOM series folders; the image id is the file name
  without ``.nii``/``.nii.gz`` or the folder name (MONAI Label's local datastore uses file stems too).
  Submitted labels go to ``DIR/labels/<tag>/<id>.nii.gz``, like MONAI Label's.
* ``DicomWebStore``: a PACS; the image id is the SeriesInstanceUID (what OHIF sends). Series are
  retrieved on first use (limits checked first) and kept for the server's lifetime; a submitted label
  is written as a DICOM-SEG and stored on the PACS over STOW-RS.
* ``Sessions``: images a viewer uploads (``PUT /session/``), e.g. a volume open in 3D Slicer.

Every image read here goes through ``data.readers`` (geometry kept, size checked from the header).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import SimpleITK as sitk

from data.isolated_read import read_study_isolated
from data.nrrd_check import check_geometry, header_fields, itk_reason
from data.readers import StudyError, _finite, check_geometry_range, has_dicom_magic, read_study, voxel_limit
from data.untrusted import NRRD_HEADER_BYTES, UntrustedFileError, check_nrrd_attached
from data.volume import SourceRef, Volume
from data.writers import atomic_output

LABEL_EXTS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd")  # one file, one image: never a slice of a series
UPLOAD_EXTS = (*IMAGE_EXTS, ".dcm")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SAFE_TAG = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class NotFound(LookupError):
    """An image, label or session id the server does not have (HTTP 404)."""


class BadLabel(ValueError):
    """A submitted label (or an uploaded image's id) we refuse (HTTP 400): unreadable, not on the image's grid, or
    no id."""


def check_id(value: str, what: str = "image") -> str:
    if not _SAFE_ID.match(value or "") or value in (".", ".."):
        raise NotFound(f"{what} {value!r}: unknown id")
    return value


def new_image_id(given: str, name: str) -> str:
    """The id an uploaded image is stored under: ``?image=ID``, else the file name's stem; BadLabel (400) naming the
    rule when it is no id. Why: ``check_id`` answers a lookup (404 ``unknown id``), which told a client uploading
    ``ct (1).nii.gz`` that the server lacked an image, not that the name was the fault."""
    value = given or stem(Path(name).name)
    if _SAFE_ID.match(value) and value not in (".", ".."):
        return value
    rule = "letters, digits, '.', '-' and '_' only, at most 128"
    if given:
        raise BadLabel(f"image id {value[:128]!r}: {rule}; give another ?image=ID")
    raise BadLabel(f"image id {value[:128]!r} (from the file name): {rule}; rename the file or give ?image=ID")


def _fitted(name: str, limit: int = 200) -> str:
    """``name`` cut to ``limit`` UTF-8 bytes, its known suffix kept: a file name holds 255 bytes, and a legal one of
    250 moved to ``00000_<name>`` could not be created (a 500 blaming the server)."""
    if len(name.encode()) <= limit:
        return name
    suffix = next((e for e in (".seg.nrrd", *UPLOAD_EXTS) if name.lower().endswith(e)), "")
    stem = name[: len(name) - len(suffix)]
    while len((stem + suffix).encode()) > limit:
        stem = stem[:-1]
    return stem + suffix


def check_tag(tag: str) -> str:
    if not _SAFE_TAG.match(tag or ""):
        raise BadLabel(f"tag {tag!r}: letters, digits, '-' and '_' only")
    return tag


def stem(name: str) -> str:
    low = name.lower()
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def read_image_file(path: Path, name: str | None = None) -> Volume:
    """A viewer's upload: NRRD (3D Slicer's default) via SimpleITK with the size checked from the
    header first, anything else through ``data.readers.read_study``. ``name``: the client's file name."""
    name = name or path.name
    if path.name.lower().endswith(".nrrd"):
        reader = _nrrd_reader(path, name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise StudyError(f"{name}: not a readable NRRD file ({itk_reason(e, path, name)})") from None
        size = reader.GetSize()
        if int(np.prod(size, dtype=np.float64)) > voxel_limit() or len(size) not in (2, 3):
            raise StudyError(f"{name}: {size} voxels is not a 2D/3D image within the limit of {voxel_limit()}")
        try:
            image = reader.Execute()
        except RuntimeError as e:
            raise StudyError(f"{name}: the NRRD pixel data could not be read ({itk_reason(e, path, name)})") from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise StudyError(f"{name}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
        volume = Volume.from_sitk(image, source=SourceRef(path=str(path), format="nrrd"))
        check_geometry_range(name, volume)  # what the label map written back can hold, as for every reader
        from data.readers import guess_modality

        array = _finite(volume.array, name)  # NaN/Inf (a float map from Slicer): the readers' one rule
        return Volume(array=array, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                      modality=guess_modality(array), source=volume.source)
    try:
        return read_study(path)
    except StudyError as e:  # the reader names the file it read: a staged upload's is ours, not the client's
        if name == path.name:
            raise
        raise StudyError(str(e).replace(path.name, name)) from None


def _nrrd_reader(path: Path, name: str) -> sitk.ImageFileReader:
    """ITK's NRRD reader on a file proved self-contained (``check_nrrd_attached``); StudyError otherwise."""
    try:
        check_nrrd_attached(path)
    except (UntrustedFileError, OSError) as e:
        raise StudyError(str(e).replace(path.name, name, 1) if isinstance(e, UntrustedFileError)
                         else f"{name}: cannot be read") from None
    check_geometry(header_fields(path), name)  # what ITK would guess or ignore (units, space, axes), named
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NrrdImageIO")  # never another ITK reader chosen by the bytes (MetaImage has detached data too)
    reader.SetFileName(str(path))
    return reader


def read_upload(path: Path, scratch: Path) -> Volume:
    """A viewer's upload (a file, or a folder of DICOM files): read in a child process with memory
    and time limits (``data.isolated_read``), so a file that crashes a decoder cannot take the
    server down; NRRD (header-checked SimpleITK, ``read_image_file``) is still read in process."""
    if not path.is_dir() and path.name.lower().endswith(".nrrd"):
        return read_image_file(path)
    return read_study_isolated(path, scratch=scratch)


def read_label_on_grid(path: Path, volume: Volume, *, name: str | None = None) -> np.ndarray:
    """A submitted label file as a ``[k, j, i]`` uint array on ``volume``'s grid; BadLabel when its size
    or geometry differs (a label shifted by a voxel must not be saved as if it fitted). ``name``: the
    file name the client sent (messages name it, not our temporary file).

    Its header is read first: a 4D image (time or channels as an axis) is refused, not folded onto the
    grid, and a size other than the image's is refused before any voxel is decoded. A NIfTI's place is the one
    medseg's NIfTI reader gives an image (nibabel's rule, a 2D file's 3D affine); a 2D label is checked as a 3D one
    is (it was checked for its size only, and a coronal slice's could not be read at all)."""
    name = name or path.name
    low = name.lower()
    if low.endswith(".nrrd"):
        dim, size, read, place = _nrrd_label(path, name)
    elif low.endswith((".nii", ".nii.gz")):
        dim, size, read, place = _nifti_label(path, name)
    else:  # ITK would pick any of its readers by the bytes: MetaImage's ElementDataFile reads other files
        raise BadLabel(f"{name}: expected a .nii.gz, .nii or .nrrd (.seg.nrrd) label image")
    grid = volume.array.shape[:3]
    if dim not in (2, 3):
        raise BadLabel(f"{name}: a {dim}D label image of size {size}; expected a 3D label on the image's grid {grid}")
    if (size if dim == 3 else (1, *size)) != grid:
        raise BadLabel(f"{name}: label grid {size} (k, j, i) differs from the image's {grid}")
    try:
        array = read()
    except RuntimeError:
        raise BadLabel(f"{name}: the label's voxels could not be read (truncated or damaged file)") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4:  # a .seg.nrrd whose segments lie in several layers (Slicer's overlapping segments)
        array = _merged_layers(path, name, array)
    if differs := _off_grid(place, volume):
        raise BadLabel(f"{name}: {differs}; the label is not on the image's grid: export it on the image's grid")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.mod(array, 1) == 0):
            raise BadLabel(f"{name}: label values must be whole numbers")
    if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise BadLabel(f"{name}: label values must be in 0..65535")
    return np.asarray(array, dtype=np.uint8 if array.max(initial=0) < 256 else np.uint16)


def _merged_layers(path: Path, name: str, layers: np.ndarray) -> np.ndarray:
    """One label map from a ``.seg.nrrd``'s layers ((k, j, i, layer), as ITK reads Slicer's ``kinds: list domain
    domain domain``). Why: Slicer puts segments that overlap in separate layers, often each with label value 1; a
    max() over the layers kept the larger value where two overlapped and merged segments of one value in different
    layers: annotations lost without a word. The saved label holds one value a voxel, so such a file is refused
    naming the segments; layers that neither overlap nor share a value are merged as before."""
    segments = _seg_nrrd_segments(path)

    def named(layer: int, value: int) -> str:
        return repr(segments[(layer, value)]) if (layer, value) in segments else f"value {value} of layer {layer}"

    marked = layers != 0
    for a in range(layers.shape[-1]):
        for b in range(a + 1, layers.shape[-1]):
            both = marked[..., a] & marked[..., b]
            if both.any():
                va, vb = int(layers[..., a][both][0]), int(layers[..., b][both][0])  # the first such voxel's
                raise BadLabel(f"{name}: segments {named(a, va)} and {named(b, vb)} overlap ({int(both.sum())} voxels "
                               "in all between layers); a saved label holds one segment a voxel, so one would be lost: "
                               "make the segments not overlap (or send them as separate labels) and send it again")
            shared = np.intersect1d(layers[..., a][marked[..., a]], layers[..., b][marked[..., b]])
            if shared.size:
                v = int(shared[0])
                raise BadLabel(f"{name}: segments {named(a, v)} and {named(b, v)} share label value {v} in different "
                               "layers; one label map cannot tell them apart: give each segment its own value (or "
                               "send them as separate labels) and send it again")
    return layers.max(axis=-1)


def _seg_nrrd_segments(path: Path) -> dict[tuple[int, int], str]:
    """(layer, label value) -> segment name, from Slicer's ``SegmentN_Layer/_LabelValue/_Name:=`` header fields
    (empty when the file has none)."""
    with open(path, "rb") as f:
        head = f.read(NRRD_HEADER_BYTES)
    head = head[: head.find(b"\n\n")] if b"\n\n" in head else head
    fields: dict[str, dict[str, str]] = {}
    for line in head.decode("utf-8", "replace").splitlines():
        found = re.match(r"^Segment(\d+)_(Layer|LabelValue|Name):=(.*)$", line.strip())
        if found:
            fields.setdefault(found[1], {})[found[2]] = found[3].strip()
    named = {}
    for f in fields.values():
        try:
            named[(int(f.get("Layer", "0")), int(f["LabelValue"]))] = f.get("Name", "")[:64]
        except (KeyError, ValueError):
            continue
    return named


Place = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]  # spacing, origin, direction (3D, LPS)


def _nrrd_label(path: Path, name: str):
    """(dimension, size k j i, a reader of the voxels, the place) of an NRRD label, from its header alone; a 2D one
    padded to 3D as ``Volume.from_sitk`` pads a 2D image."""
    try:
        reader = _nrrd_reader(path, name)
    except StudyError as e:
        raise BadLabel(str(e)) from None
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise BadLabel(f"{name}: not a readable label image (.nii.gz or .nrrd): {itk_reason(e, path, name)}") from None
    dim, size = reader.GetDimension(), tuple(reversed(reader.GetSize()))
    spacing, origin, d = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if dim == 2:
        spacing, origin = (*spacing, 1.0), (*origin, 0.0)
        d = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    return dim, size, lambda: sitk.GetArrayFromImage(reader.Execute()), (spacing, origin, d)


def _nifti_label(path: Path, name: str):
    """(dimension, size k j i, a reader of the voxels, the place) of a NIfTI label: the header checked as an
    image's is (``check_nifti``), the place by the rule ``read_nifti`` places an image with, a 2D file's or a NIfTI-2's
    voxels read as ``read_nifti`` reads them (ITK keeps only the 2 x 2 corner of its affine and fails on a coronal
    slice's, and reads no NIfTI-2)."""
    from data.nifti_check import NiftiCheckError, check_nifti
    from data.readers import NIFTI_IO, _itk, _nifti_by_nibabel

    try:  # the header against the bytes, no .hdr/.img pair, before ITK's NIfTI reader (the only one allowed)
        facts = check_nifti(path, max_voxels=voxel_limit())
    except NiftiCheckError as e:
        raise BadLabel(f"{name}: {e}") from None
    dim, size = len(facts.shape), tuple(reversed(facts.shape))

    def read() -> np.ndarray:
        if dim == 2 or facts.version == 2:  # ITK here reads no NIfTI-2 (session 26)
            return sitk.GetArrayFromImage(_nifti_by_nibabel(path))
        return sitk.GetArrayFromImage(_itk(sitk.ReadImage, str(path), sitk.sitkUnknown, NIFTI_IO))

    return dim, size, read, (facts.spacing, facts.origin, facts.direction)


def _off_grid(place: Place, volume: Volume) -> str:
    """'' when ``place`` is the volume's, else what differs (``Volume.grid_difference``'s tolerances and words)."""
    def fmt(values) -> str:
        return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

    tol = 1e-3 * max(1.0, max(abs(s) for s in volume.spacing))
    for what, mine, theirs, limit in zip(("spacing", "origin", "direction"), place,
                                         (volume.spacing, volume.origin, volume.direction), (tol, 1e-2, 1e-4)):
        if len(mine) != len(theirs) or np.abs(np.subtract(mine, theirs)).max() > limit:
            return f"{what} {fmt(mine)} vs {fmt(theirs)}"
    return ""


@dataclass
class Session:
    session_id: str
    folder: Path
    image: Path
    volume: Volume
    created: float
    expiry_s: float
    last_used: float  # time of its upload, then of the last request that named it (``Sessions.get``)

    def info(self) -> dict:
        return {"name": self.image.name, "path": self.image.name, "image": self.session_id,
                "meta": {}, "create_ts": int(self.created), "last_access_ts": int(self.last_used),
                "expiry": int(self.expiry_s)}


class ImageExists(Exception):
    """An upload under the id of another image of the datastore (HTTP 409): an upload never replaces a study."""


class SessionsFull(Exception):
    """Every session slot holds a live session (HTTP 429): the message names the limit and what frees one."""


def read_uploads(uploads: list[tuple[str, Path]], folder: Path) -> tuple[Path, Volume]:
    """(the image, its volume) from a viewer's upload moved into ``folder``: ``uploads`` are (client file name, saved
    temp file); one file is one image, several a DICOM series. ``folder`` is the caller's to remove."""
    images = [Path(name).name for name, _ in uploads if name and name.lower().endswith(IMAGE_EXTS)]
    if len(uploads) > 1 and images:
        # the series opened and the image was left out, told in the server's log only (session 24's pass)
        raise StudyError(f"{images[0]}: a {_ext(Path(images[0]))} image among {len(uploads)} files sent; expected "
                         "one image alone, or DICOM files only (a series): send it in a request of its own")
    for n, (name, tmp) in enumerate(uploads):
        safe = Path(name or f"image{n}").name
        # a lone DICOM file is often named IM0001 or by its UID (its DICM marker tells it; session 24: refused)
        if not safe.lower().endswith(UPLOAD_EXTS) and len(uploads) == 1 and not has_dicom_magic(tmp):
            raise StudyError(f"{safe}: expected a .nii.gz, .nii or .nrrd image, or DICOM files")
        kept = _fitted(safe)
        target = folder / (kept if not (folder / kept).exists() else f"{n:05d}_{kept}")  # only a repeated name numbered
        shutil.move(str(tmp), target)
    if len(uploads) == 1:
        return next(folder.iterdir()), read_upload(next(folder.iterdir()), folder)
    try:
        return folder, read_upload(folder, folder)
    except StudyError as e:
        # the reader names the folder, which is the server's (a uuid), where the client sent files (session 24)
        raise StudyError(str(e).replace(str(folder), f"the {len(uploads)} files sent")) from None


class Sessions:
    """Viewer uploads (``PUT /session/``), each in its own folder under ``root``, kept until they expire or are
    deleted, as MONAI Label's are. At most ``max_sessions`` live ones (each holds its volume in memory); when all are
    live, a new one takes the slot of the one left unused longest, if it has been unused for ``idle_s`` (10 minutes):
    an annotator who uploads a twentieth image within the hour is not refused for the nineteen before it. Only when
    every session was used within ``idle_s`` is a new one refused (SessionsFull, 429). Why not evict the oldest: 16
    ``POST /infer`` calls carrying their image (each then made a session) took away the images other viewers had
    uploaded and were working on, who got 'session ... not found (expired?)' (session 23). Those calls now read their
    image as a temporary instead."""

    def __init__(self, root: Path, default_expiry_s: float = 3600.0, max_sessions: int = 16, idle_s: float = 600.0,
                 max_expiry_s: float = 14 * 86400.0):
        self.root = root
        self.max_expiry_s = max_expiry_s  # a client's ?expiry= is bounded: each session keeps a patient image on disk
        self.idle_s = idle_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.default_expiry_s = default_expiry_s
        self.max_sessions = max_sessions
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, uploads: list[tuple[str, Path]], expiry_s: float = 0) -> Session:
        """``uploads``: (client file name, saved temp file). One file = one image; several = a DICOM series."""
        self._expire()
        with self._lock:
            self._make_room(evict=False)  # before reading: a refused upload costs no read, and no one's session
        sid = str(uuid.uuid4())
        folder = self.root / sid
        folder.mkdir()
        try:
            image, volume = read_uploads(uploads, folder)
            now = time.time()
            session = Session(sid, folder, image, volume, now, float(expiry_s or self.default_expiry_s), now)
            with self._lock:
                self._make_room()  # others may have filled the slots while this one was read
                self._items[sid] = session
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return session

    def _make_room(self, evict: bool = True) -> None:
        """Make room for one more session (the caller holds the lock): the one unused longest goes if it has been
        unused for ``idle_s``; else SessionsFull, naming the limit and when a slot frees. ``evict=False`` only checks
        that room can be made: an upload not yet read (it may be refused) must not cost a viewer the session it comes
        back to (session 24)."""
        if len(self._items) < self.max_sessions:
            return
        now = time.time()
        idle = min(self._items.values(), key=lambda s: s.last_used)
        if now - idle.last_used >= self.idle_s:
            if evict:
                self._items.pop(idle.session_id)
                shutil.rmtree(idle.folder, ignore_errors=True)
            return
        soonest = min(min(s.created + s.expiry_s, s.last_used + self.idle_s) - now
                      for s in self._items.values())
        raise SessionsFull(f"the server holds {len(self._items)} sessions, its limit of {self.max_sessions}, each used "
                           f"in the last {self.idle_s:.0f} s: delete one no longer needed (DELETE session/ID), or try "
                           f"again when the next frees (in {max(soonest, 0):.0f} s); an image can also go with its "
                           "infer request (POST /infer with a 'file' part), which keeps no session")

    @contextlib.contextmanager
    def temporary(self, uploads: list[tuple[str, Path]]) -> Iterator[Volume]:
        """The volume of an upload that belongs to one request (``POST /infer`` with a 'file' part), read as a
        session's is but taking no session slot, its folder removed when the request is done."""
        folder = Path(tempfile.mkdtemp(dir=self.root, prefix="request-"))
        try:
            yield read_uploads(uploads, folder)[1]
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._items.get(sid)
        now = time.time()
        if s is None or now - s.created > s.expiry_s:
            raise NotFound(f"session {sid!r} not found (expired?); create one with PUT /session/")
        s.last_used = now
        return s

    def remove(self, sid: str) -> Session:
        s = self.get(sid)
        with self._lock:
            self._items.pop(sid, None)
        shutil.rmtree(s.folder, ignore_errors=True)
        return s

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            old = [k for k, s in self._items.items() if now - s.created > s.expiry_s]
            gone = [self._items.pop(k) for k in old]
        for s in gone:
            shutil.rmtree(s.folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for s in items:
            shutil.rmtree(s.folder, ignore_errors=True)


class Datastore:
    """What ``/datastore/`` and ``?image=ID`` see; subclasses say where images live."""

    name = "medseg"
    description = "medseg datastore"

    def ids(self) -> list[str]:
        raise NotImplementedError

    def volume(self, image_id: str) -> Volume:
        raise NotImplementedError

    def labels(self, image_id: str) -> dict[str, Path]:
        """tag -> stored label file (for /datastore/?output=all and the 'completed' count)."""
        return {}

    def save_label(self, image_id: str, labels: np.ndarray, tag: str, label_names: dict[int, str]) -> str:
        raise NotImplementedError

    def add_image(self, image_id: str, name: str, tmp: Path) -> str:
        """Keep an image a viewer uploads (``PUT /datastore/?image=ID``, Slicer's 'upload'); returns its id."""
        raise NotImplementedError

    def labelled(self, tag: str = "final", ids: list[str] | None = None) -> set[str]:
        """The ids that have a label of ``tag`` (Next Sample passes them over; /info/'s 'completed'); ``ids``: the
        listing the caller already holds (else listed here)."""
        return {i for i in (self.ids() if ids is None else ids) if tag in self.labels(i)}

    def image_info(self, image_id: str) -> dict[str, str]:
        """What a viewer needs to open the image itself (OHIF's Next Sample opens ``StudyInstanceUID``)."""
        return {}

    def label_file(self, image_id: str, tag: str) -> Path:
        path = self.labels(check_id(image_id)).get(check_tag(tag))
        if path is None:
            raise NotFound(f"no label {tag!r} for image {image_id!r}")
        return path

    def status(self) -> dict:
        tags: dict[str, int] = {}
        ids = self.ids()
        for i in ids:
            for tag in self.labels(i):
                tags[tag] = tags.get(tag, 0) + 1
        completed = len(self.labelled("final", ids) & set(ids))  # on a PACS also SEGs stored there by others
        return {"total": len(ids), "completed": completed, "label_tags": tags}

    def as_json(self) -> dict:
        """MONAI Label's datastore model: name, description, images_dir, labels_dir, objects."""
        objects = {}
        for i in self.ids():
            labels = {tag: {"ext": _ext(p), "info": {"ts": int(p.stat().st_mtime)}} for tag, p in self.labels(i).items()}
            objects[i] = {"image": {"ext": self.image_ext(i), "info": {}}, "labels": labels}
        return {"name": self.name, "description": self.description, "images_dir": ".", "labels_dir": "labels",
                "objects": objects}

    def image_ext(self, image_id: str) -> str:
        return ""

    def close(self) -> None:
        pass


def _ext(path: Path) -> str:
    name = path.name.lower()
    return next((e for e in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm") if name.endswith(e)), path.suffix)


class StudiesDir(Datastore):
    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StudyError(f"--studies {root}: not a folder")
        self.description = f"studies in {self.root.name}"
        self._cache: OrderedDict[str, Volume] = OrderedDict()
        self._lock = threading.Lock()
        self._adding = threading.Lock()
        if clash := next(iter(self._clashes().values()), None):
            raise StudyError(f"--studies {self.root}: {clash}")

    def _found(self) -> dict[str, list[Path]]:
        """Each image id with every file or series folder of the folder named so (sorted)."""
        out: dict[str, list[Path]] = {}
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or p.name == "labels":
                continue
            if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz", ".nrrd")):
                out.setdefault(stem(p.name), []).append(p)
            elif p.is_dir() and _SAFE_ID.match(p.name):
                out.setdefault(p.name, []).append(p)
        return {k: v for k, v in out.items() if _SAFE_ID.match(k)}

    def _clashes(self) -> dict[str, str]:
        """Ids that name two images (``ct.nii`` beside ``ct.nii.gz``, a series folder ``ct`` beside ``ct.nii.gz``):
        the first in sorted order was served and the other was invisible to every client (session 24's pass)."""
        return {k: f"{' and '.join(p.name for p in v)} are both image {k!r}; expected one image per name: rename or "
                   "move all but one" for k, v in self._found().items() if len(v) > 1}

    def _entries(self) -> dict[str, Path]:
        return {k: v[0] for k, v in self._found().items()}

    def ids(self) -> list[str]:
        return list(self._entries())

    def path(self, image_id: str) -> Path:
        found = self._found().get(check_id(image_id))
        if found is None:
            raise NotFound(f"image {image_id!r} not in the datastore")
        if len(found) > 1:  # appeared after the start: refused, not one of them picked
            raise StudyError(self._clashes()[image_id])
        return found[0]

    def image_ext(self, image_id: str) -> str:
        p = self.path(image_id)
        return "" if p.is_dir() else _ext(p)

    def volume(self, image_id: str) -> Volume:
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        p = self.path(image_id)
        v = read_study(p) if p.is_dir() else read_image_file(p)
        with self._lock:
            self._cache[image_id] = v
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return v

    def add_image(self, image_id: str, name: str, tmp: Path) -> str:
        ext = _ext(Path(name))
        if ext not in (".nii.gz", ".nii", ".nrrd"):
            raise StudyError(f"{Path(name).name}: expected a .nii.gz, .nii or .nrrd image")
        image_id = new_image_id(image_id, name)
        target = self.root / f"{image_id}{ext}"
        # a staging name of its own: two uploads at once under one id shared one, and each read the other's half-moved
        # file (`i0.nii.gz: not a readable NIfTI file` for a good one) (session 24)
        staged = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part{ext}")
        shutil.move(str(tmp), staged)
        try:
            upload = read_image_file(staged, Path(name).name)  # refuse what we could not read later
            with self._adding:  # the check and the move as one: else two new images under one id both 'added'
                if image_id in self._entries():
                    self._check_same_image(image_id, upload)
                    staged.unlink()  # the same image again (a viewer's re-upload): the study's own file is kept
                    return image_id
                staged.replace(target)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        with self._lock:
            self._cache.pop(image_id, None)
        return image_id

    def _check_same_image(self, image_id: str, upload: Volume) -> None:
        """ImageExists unless ``upload`` is the image ``image_id`` already names (grid and voxels). Why: an upload
        under a study's id (Slicer names it after the volume node, 'ct' of another patient) deleted the study's file
        from --studies and put another image under its saved labels, which then lay on a picture they were not drawn
        on (session 24)."""
        study = self.volume(image_id)
        differs = study.grid_difference(upload) or ("" if np.array_equal(study.array, upload.array)
                                                    else "other voxel values")
        if differs:
            labelled = ", ".join(self.labels(image_id))
            raise ImageExists(f"image {image_id!r} is already in the datastore ({self.path(image_id).name}"
                              f"{f', labelled: {labelled}' if labelled else ''}) and this upload is another image "
                              f"({differs}); an upload never replaces a study: give it another id (?image=ID)")

    def labels(self, image_id: str) -> dict[str, Path]:
        base = self.root / "labels"
        if not base.is_dir():
            return {}
        out = {}
        for tag_dir in sorted(base.iterdir()):
            if tag_dir.is_dir():
                for ext in LABEL_EXTS:
                    f = tag_dir / f"{image_id}{ext}"
                    if f.is_file():
                        out[tag_dir.name] = f
                        break
        return out

    def save_label(self, image_id: str, labels: np.ndarray, tag: str, label_names: dict[int, str]) -> str:
        from data.writers import write_label_nifti

        volume = self.volume(check_id(image_id))
        target = self.root / "labels" / check_tag(tag) / f"{image_id}.nii.gz"
        write_label_nifti(labels, volume, target)
        return image_id


class DicomWebStore(Datastore):
    """A PACS as the datastore; series retrieved into ``cache_dir`` on first use (at most ``keep`` kept)."""

    def __init__(self, base: str, cache_dir: Path, *, max_voxels: int, max_bytes: int, timeout: float,
                 max_instances: int = 10_000, keep: int = 4):
        from data.dicomweb import check_base_url

        self.base = check_base_url(base)
        self.description = f"DICOMweb {self.base}"
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_voxels, self.max_bytes, self.timeout, self.keep = max_voxels, max_bytes, timeout, keep
        self.max_instances = max_instances
        self._volumes: OrderedDict[str, tuple[Volume, Path]] = OrderedDict()
        self._saved: dict[str, dict[str, Path]] = {}
        self._seg_refs: dict[str, set[str]] = {}  # SEG SeriesInstanceUID -> the image series it references
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        from data.dicomweb import list_all_series

        return [s.series_uid for s in list_all_series(self.base, timeout=self.timeout)]

    def image_ext(self, image_id: str) -> str:
        return ""

    def image_info(self, image_id: str) -> dict[str, str]:
        from data.dicomweb import find_series

        url = find_series(self.base, check_id(image_id), timeout=self.timeout)
        return {"StudyInstanceUID": url.study_uid, "SeriesInstanceUID": url.series_uid}

    def volume(self, image_id: str) -> Volume:
        from data.dicomweb import fetch_series, find_series

        check_id(image_id)
        with self._lock:
            if image_id in self._volumes:
                self._volumes.move_to_end(image_id)
                return self._volumes[image_id][0]
        url = find_series(self.base, image_id, timeout=self.timeout)
        folder = fetch_series(url, Path(tempfile.mkdtemp(dir=self.cache_dir)), max_voxels=self.max_voxels,
                              max_bytes=self.max_bytes, max_instances=self.max_instances, timeout=self.timeout)
        try:
            volume = read_study_isolated(folder, scratch=folder, max_voxels=self.max_voxels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._volumes[image_id] = (volume, folder)
            while len(self._volumes) > self.keep:
                _, (_, old) = self._volumes.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)
        return volume

    def add_image(self, image_id: str, name: str, tmp: Path) -> str:
        raise StudyError("this server's datastore is a PACS: send a local image as a session (PUT /session/) "
                         "or store it on the PACS")

    def labels(self, image_id: str) -> dict[str, Path]:
        return dict(self._saved.get(image_id, {}))

    def labelled(self, tag: str = "final", ids: list[str] | None = None) -> set[str]:
        """Series labelled here, and, for ``final``, every series a SEG on the PACS references (MONAI Label's
        DICOMweb datastore counts them so): a server restarted, or a SEG stored by another tool, still counts.
        Each SEG series' references are read once (WADO-RS metadata) and kept: a SEG never changes them."""
        from data.dicomweb import referenced_series, seg_series

        done = {i for i, saved in self._saved.items() if tag in saved}
        if tag != "final":
            return done
        for seg in seg_series(self.base, timeout=self.timeout):
            if seg.series_uid not in self._seg_refs:
                self._seg_refs[seg.series_uid] = referenced_series(seg, timeout=self.timeout)
            done |= self._seg_refs[seg.series_uid]
        return done

    def save_label(self, image_id: str, labels: np.ndarray, tag: str, label_names: dict[int, str]) -> str:
        """Write the label as a DICOM-SEG referencing the series and store it on the PACS (STOW-RS)."""
        from data.dicom_seg import write_dicom_seg
        from data.dicomweb import store

        volume = self.volume(image_id)
        target = self.cache_dir / "labels" / check_tag(tag) / f"{image_id}.dcm"
        write_dicom_seg(labels, volume, target, label_names=label_names, model_name="medseg labelserver",
                        series_description=f"medseg label ({tag})")
        try:
            (uid,) = store(self.base, [target], timeout=self.timeout)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self._saved.setdefault(image_id, {})[tag] = target
        return uid

    def close(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def label_names_from_params(info: Iterable | None) -> dict[int, str]:
    """Slicer's ``label_info`` ``[{"name": ..., "idx": n}, ...]`` (or ``"id"``) -> {value: name}."""
    names: dict[int, str] = {}
    for item in info or []:
        if isinstance(item, dict) and item.get("name"):
            try:
                names[int(item.get("idx", item.get("id")))] = str(item["name"])[:64]
            except (TypeError, ValueError, OverflowError):  # OverflowError: "idx": 1e400 (json reads infinity)
                continue
    return names


def write_label_file(labels: np.ndarray, volume: Volume, path: Path, *, compress: bool = True) -> Path:
    """A label map on the source grid as .nrrd or .nii.gz (SimpleITK keeps spacing/origin/direction; a NIfTI
    keeps a NIfTI source's space codes, ``data.writers.write_label_nifti``)."""
    from data.writers import label_volume_image, write_label_nifti

    if path.name.lower().endswith(".nii.gz") or (path.name.lower().endswith(".nii") and not compress):
        return write_label_nifti(labels, volume, path)
    image = label_volume_image(labels, volume)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path
