"""DICOMweb in and out of a PACS (QIDO-RS search, WADO-RS retrieve, STOW-RS store) with dicomweb-client.

Why a module of its own: every command and both servers take studies from a PACS the same way, with
the same limits and the same one-line errors. A series is named by its URL,
``http(s)://HOST/PREFIX/studies/{StudyInstanceUID}/series/{SeriesInstanceUID}``; the PACS by its
DICOMweb base URL (``http(s)://HOST/PREFIX``, e.g. Orthanc's ``http://pacs:8042/dicom-web``).

Retrieval checks the series' size from its WADO-RS metadata (no pixels) against the voxel, byte and
instance limits first, then fetches one instance at a time into a fresh folder, reporting progress;
any failure removes that folder, so nothing half-written is left. Every answer's body is read under a
byte cap before dicomweb-client holds it (``data/dicomweb_body.py``): an instance may be what its
metadata announced plus ``MAX_DICOM_HEADER_BYTES``, within what the series' budget has left; a
search or metadata answer ``MAX_JSON_BYTES``. Errors are :class:`DicomWebError` (a ``StudyError``:
exit code 2, one line naming the URL and what to check).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import requests
from pydicom.errors import InvalidDicomError  # a part that is not a DICOM file (no preamble and DICM)

from data.dicomweb_body import AnswerLimit, AnswerTooLarge, AnswerTooSlow, read_capped
from data.limits import MAX_DICOM_HEADER_BYTES
from data.readers import StudyError

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_INSTANCES = 10_000  # MEDSEG_MAX_UPLOAD_FILES's default: an upload may hold as many files
HEADER_BYTES = 64 * 2**10  # what a series' byte budget adds to its pixels per instance, for headers
FRAMING_BYTES = 4 * 2**10  # multipart boundaries and part headers around one instance
# a search, metadata or STOW answer (DICOM JSON): Orthanc's metadata of the bundled CT is 2.7 KiB a
# slice (10,000 slices: 27 MiB), an enhanced multi-frame's header may be MAX_DICOM_HEADER_BYTES (more
# as JSON); json.loads then holds ~4x the text (measured here), so at most ~0.5 GiB
MAX_JSON_BYTES = 4 * MAX_DICOM_HEADER_BYTES
ProgressFn = Callable[[int, int], None]  # (instances done, instances in all)

_SERIES_URL = re.compile(
    r"^(?P<base>https?://[^?#]+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$", re.IGNORECASE
)


class DicomWebError(StudyError):
    """A PACS that cannot be reached or does not have what was asked; the message names the URL."""


@dataclass(frozen=True)
class SeriesURL:
    """A DICOMweb series address, split into its base URL and UIDs."""

    base: str
    study_uid: str
    series_uid: str

    def __str__(self) -> str:
        return f"{self.base}/studies/{self.study_uid}/series/{self.series_uid}"


def parse_series_url(text: str) -> SeriesURL | None:
    """``SeriesURL`` when ``text`` is a DICOMweb series URL, else None (a file path)."""
    m = _SERIES_URL.match(str(text).strip())
    if not m:
        return None
    return SeriesURL(base=m["base"].rstrip("/"), study_uid=m["study"], series_uid=m["series"])


def is_url(text: str) -> bool:
    return str(text).lower().startswith(("http://", "https://"))


def check_base_url(base: str) -> str:
    """A DICOMweb base URL without its trailing slash; DicomWebError if it is not http(s)."""
    base = str(base).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base, re.IGNORECASE):
        raise DicomWebError(f"{base or '(empty)'}: expected a DICOMweb base URL such as http://pacs:8042/dicom-web")
    return base


def _headers() -> dict[str, str]:
    """An ``Authorization: Bearer`` header from ``$MEDSEG_DICOMWEB_TOKEN`` for a PACS that wants one."""
    token = os.environ.get("MEDSEG_DICOMWEB_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(base: str, timeout: float = DEFAULT_TIMEOUT_S, limit: AnswerLimit | None = None):
    """A dicomweb-client for ``base`` that fails fast (no retries) after ``timeout`` seconds of silence
    and reads every answer under ``limit`` (default: ``MAX_JSON_BYTES``; the caller may change
    ``limit.max_bytes`` between requests)."""
    from dicomweb_client import DICOMwebClient

    limit = limit or AnswerLimit(MAX_JSON_BYTES, float(timeout))
    c = DICOMwebClient(check_base_url(base), headers=_headers(), timeout=float(timeout),
                       callback=functools.partial(read_capped, limit))
    c.set_http_retry_params(retry=False)
    return c


def _explain(e: BaseException, url: str, what: str, timeout: float) -> DicomWebError:
    """One line for a failed request: unreachable, too slow, not found, refused, or not DICOMweb."""
    if isinstance(e, AnswerTooLarge):
        return DicomWebError(f"{url}: the PACS's answer is larger than the {_size(e.cap)} allowed while {what} "
                             f"({_declared(e)}); stopped, nothing kept")
    if isinstance(e, AnswerTooSlow):
        return DicomWebError(f"{url}: the PACS sent only {e.received} bytes in {e.seconds:.0f} s while {what}; "
                             "stopped (is the PACS overloaded?)")
    if isinstance(e, requests.exceptions.Timeout):
        return DicomWebError(f"{url}: no answer within {timeout:g} s while {what}; is the PACS overloaded? "
                             "(raise MEDSEG_DICOMWEB_TIMEOUT_S)")
    if isinstance(e, requests.exceptions.ConnectionError):
        return DicomWebError(f"{url}: cannot connect while {what}; is the PACS running and the URL right?")
    if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        code = e.response.status_code
        if code == 404:
            return DicomWebError(f"{url}: not found (HTTP 404) while {what}; check the UIDs and the DICOMweb prefix")
        if code in (401, 403):
            return DicomWebError(f"{url}: access refused (HTTP {code}) while {what}; set MEDSEG_DICOMWEB_TOKEN")
        return DicomWebError(f"{url}: the PACS answered HTTP {code} while {what}")
    if isinstance(e, RecursionError):
        return DicomWebError(f"{url}: {what} failed (the PACS sent a data set nested too deep to read)")
    return DicomWebError(f"{url}: {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")


# what pydicom raises (inside dicomweb-client) on a damaged data set a PACS sends: sequences nested 100,000 deep
# (RecursionError), a sequence never closed (OSError "No tag to read"), a delimiter where an element belongs
# (NotImplementedError "Unknown Value Representation"); they escaped as tracebacks
PARSE_ERRORS = (RecursionError, OSError, NotImplementedError, EOFError, IndexError, OverflowError, struct.error)


def _size(n: int) -> str:
    """Bytes as a user reads them: 24 bytes, 68 KiB, 32 MiB."""
    if n < 2**10:
        return f"{n} bytes"
    return f"{n / 2**10:.0f} KiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


def _declared(e: AnswerTooLarge) -> str:
    return f"the PACS declared {_size(e.declared)}" if e.declared is not None else "the PACS sent more"


def _call(fn, url: str, what: str, timeout: float, too_large: Callable[[AnswerTooLarge], str] | None = None):
    try:
        return fn()
    except DicomWebError:
        raise
    except AnswerTooLarge as e:
        raise (DicomWebError(too_large(e)) if too_large else _explain(e, url, what, timeout)) from None
    except (requests.exceptions.RequestException, ValueError, KeyError, TypeError, InvalidDicomError, *PARSE_ERRORS) as e:
        raise _explain(e, url, what, timeout) from None


# --- QIDO-RS ------------------------------------------------------------------------------------
def _value(item: dict, tag: str, default: str = "") -> str:
    values = (item.get(tag) or {}).get("Value") or []
    if not values or values[0] is None:  # DICOM JSON writes an empty value as null
        return default
    v = values[0]
    if isinstance(v, dict):  # person name
        return str(v.get("Alphabetic", default))
    return str(v)


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_name: str
    patient_id: str
    date: str
    description: str
    modalities: str


@dataclass(frozen=True)
class SeriesSummary:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: str
    instances: str


def search_studies(base: str, *, limit: int = 200, timeout: float = DEFAULT_TIMEOUT_S) -> list[StudySummary]:
    """The PACS's studies (QIDO-RS), newest first as the PACS returns them."""
    c = client(base, timeout)
    found = _call(lambda: c.search_for_studies(limit=limit, fields=["StudyDescription", "ModalitiesInStudy"]),
                  base, "searching studies (QIDO-RS)", timeout)
    return [StudySummary(study_uid=_value(s, "0020000D"), patient_name=_value(s, "00100010"),
                         patient_id=_value(s, "00100020"), date=_value(s, "00080020"),
                         description=_value(s, "00081030"), modalities=_value(s, "00080061"))
            for s in found or []]


def search_series(base: str, study_uid: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[SeriesSummary]:
    """The series of one study (QIDO-RS)."""
    c = client(base, timeout)
    found = _call(lambda: c.search_for_series(study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"]),
                  f"{base}/studies/{study_uid}", "searching series (QIDO-RS)", timeout)
    return [SeriesSummary(study_uid=study_uid, series_uid=_value(s, "0020000E"), modality=_value(s, "00080060"),
                          description=_value(s, "0008103E"), number=_value(s, "00200011"),
                          instances=_value(s, "00201209"))
            for s in found or []]


def find_series(base: str, series_uid: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> SeriesURL:
    """The full address of a series known only by its UID (what OHIF sends as an image id)."""
    c = client(base, timeout)
    found = _call(lambda: c.search_for_series(search_filters={"SeriesInstanceUID": series_uid}),
                  base, f"looking up series {series_uid} (QIDO-RS)", timeout)
    if not found:
        raise DicomWebError(f"{base}: no series {series_uid} on this PACS")
    return SeriesURL(base=check_base_url(base), study_uid=_value(found[0], "0020000D"), series_uid=series_uid)


def list_all_series(base: str, *, limit: int = 500, timeout: float = DEFAULT_TIMEOUT_S) -> list[SeriesSummary]:
    """Every image series on the PACS (segmentations left out)."""
    c = client(base, timeout)
    found = _call(lambda: c.search_for_series(limit=limit, fields=["SeriesDescription"]),
                  base, "searching series (QIDO-RS)", timeout)
    return [SeriesSummary(study_uid=_value(s, "0020000D"), series_uid=_value(s, "0020000E"),
                          modality=_value(s, "00080060"), description=_value(s, "0008103E"),
                          number=_value(s, "00200011"), instances=_value(s, "00201209"))
            for s in found or [] if _value(s, "00080060") not in ("SEG", "SR", "PR", "RTSTRUCT")]


def seg_series(base: str, *, limit: int = 2000, timeout: float = DEFAULT_TIMEOUT_S) -> list[SeriesURL]:
    """Every segmentation series (Modality SEG) on the PACS (QIDO-RS)."""
    c = client(base, timeout)
    found = _call(lambda: c.search_for_series(search_filters={"Modality": "SEG"}, limit=limit),
                  base, "searching segmentation series (QIDO-RS)", timeout)
    return [SeriesURL(base=check_base_url(base), study_uid=_value(s, "0020000D"), series_uid=_value(s, "0020000E"))
            for s in found or [] if _value(s, "0020000E")]


def referenced_series(url: SeriesURL, *, timeout: float = DEFAULT_TIMEOUT_S) -> set[str]:
    """The SeriesInstanceUIDs a SEG series' instances reference (ReferencedSeriesSequence, from WADO-RS
    metadata): which image series it labels."""
    c = client(url.base, timeout)
    metadata = _call(lambda: c.retrieve_series_metadata(url.study_uid, url.series_uid), str(url),
                     "reading a segmentation's metadata (WADO-RS)", timeout)
    refs: set[str] = set()
    for m in metadata or []:
        for item in (m.get("00081115") or {}).get("Value") or []:
            if isinstance(item, dict) and _value(item, "0020000E"):
                refs.add(_value(item, "0020000E"))
    return refs


# --- WADO-RS ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSize:
    instances: int
    voxels: int
    bytes: int


def instance_size(m: dict) -> tuple[int, int]:
    """Voxels and uncompressed pixel bytes one instance announces in its metadata."""
    rows, cols = int(_value(m, "00280010", "0") or 0), int(_value(m, "00280011", "0") or 0)
    frames = int(float(_value(m, "00280008", "1") or 1))
    samples = int(_value(m, "00280002", "1") or 1)
    bits = int(_value(m, "00280100", "16") or 16)
    return rows * cols * frames, rows * cols * frames * samples * max(bits // 8, 1)


def series_size(metadata: list[dict]) -> SeriesSize:
    """Instances, voxels and uncompressed pixel bytes a series will hold, from its metadata alone."""
    sizes = [instance_size(m) for m in metadata]
    return SeriesSize(instances=len(metadata), voxels=sum(v for v, _ in sizes), bytes=sum(b for _, b in sizes))


def fetch_series(
    url: SeriesURL,
    dest: Path | None = None,
    *,
    max_voxels: int,
    max_bytes: int,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: ProgressFn | None = None,
) -> Path:
    """Retrieve a series (WADO-RS) into a new folder and return it (``dest`` or a fresh temp folder).

    The instance count and sizes are checked from the metadata before any pixel is fetched; each
    instance's answer is read under a cap (what its metadata announced plus MAX_DICOM_HEADER_BYTES,
    within what the budget has left) before dicomweb-client holds it, written as it arrives (so memory
    holds one at a time) and the running byte count is checked again. On any error the folder is
    removed and DicomWebError raised.
    """
    limit = AnswerLimit(MAX_JSON_BYTES, float(timeout))
    c = client(url.base, timeout, limit)
    where = str(url)
    metadata = _call(lambda: c.retrieve_series_metadata(url.study_uid, url.series_uid), where,
                     "reading the series metadata (WADO-RS)", timeout)
    if not metadata:
        raise DicomWebError(f"{where}: the series has no instances")
    if len(metadata) > max_instances:
        raise DicomWebError(f"{where}: {len(metadata)} instances is more than the limit of {max_instances} "
                            "(raise MEDSEG_MAX_UPLOAD_FILES); nothing was downloaded")
    size = series_size(metadata)
    if size.voxels > max_voxels:
        raise DicomWebError(f"{where}: {size.voxels} voxels in {size.instances} images is more than the limit of "
                            f"{max_voxels} (raise MEDSEG_MAX_VOXELS); nothing was downloaded")
    if size.bytes > max_bytes:
        raise DicomWebError(f"{where}: {size.bytes / 2**20:.0f} MiB of pixels is more than the limit of "
                            f"{max_bytes / 2**20:.0f} MiB (raise MEDSEG_MAX_UPLOAD_MB); nothing was downloaded")
    sops = [_value(m, "00080018") for m in metadata]
    if not all(sops):
        raise DicomWebError(f"{where}: the series metadata lacks SOPInstanceUIDs")
    folder = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="medseg-dicomweb-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        received = 0
        budget = max_bytes + HEADER_BYTES * len(sops)  # headers on top of the pixels
        for n, sop in enumerate(sops):
            pixels = instance_size(metadata[n])[1]
            limit.max_bytes = min(budget - received, pixels + MAX_DICOM_HEADER_BYTES) + FRAMING_BYTES

            def too_large(e: AnswerTooLarge, n: int = n, sop: str = sop, pixels: int = pixels) -> str:
                why = (f"what its metadata announced ({_size(pixels)} of pixels) plus {_size(MAX_DICOM_HEADER_BYTES)} "
                       "of header" if e.cap - FRAMING_BYTES == pixels + MAX_DICOM_HEADER_BYTES else
                       f"the rest of the series' budget (MEDSEG_MAX_UPLOAD_MB {_size(max_bytes)} plus "
                       f"{_size(HEADER_BYTES)} of header an instance)")
                return (f"{where}: instance {n + 1} of {len(sops)} (SOPInstanceUID {sop}) is larger than the "
                        f"{_size(e.cap)} allowed, {why}; {_declared(e)}; download stopped, nothing kept")

            ds = _call(lambda sop=sop: c.retrieve_instance(url.study_uid, url.series_uid, sop), where,
                       f"retrieving instance {n + 1} of {len(sops)} (WADO-RS)", timeout, too_large)
            path = folder / f"{n:05d}.dcm"
            try:  # pydicom reads elements lazily: a damaged one may fail only now
                ds.save_as(path, enforce_file_format=True)
            except (ValueError, KeyError, TypeError, *PARSE_ERRORS) as e:
                raise _explain(e, where, f"writing instance {n + 1} of {len(sops)} the PACS sent", timeout) from None
            received += path.stat().st_size
            if received > budget:
                raise DicomWebError(f"{where}: the PACS sent more than the {max_bytes / 2**20:.0f} MiB its metadata "
                                    "announced; download stopped")
            if progress is not None:
                progress(n + 1, len(sops))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


# --- STOW-RS ------------------------------------------------------------------------------------
def store(base: str, files: Iterable[str | Path], *, timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Store DICOM files on the PACS (STOW-RS); returns their SOPInstanceUIDs as the PACS acknowledged them."""
    import pydicom

    datasets = [pydicom.dcmread(f) for f in files]
    c = client(base, timeout)
    reply = _call(lambda: c.store_instances(datasets), base, "storing (STOW-RS)", timeout)
    # dicomweb-client hands the reply over as a pydicom Dataset (not DICOM JSON)
    failed = getattr(reply, "FailedSOPSequence", None)
    if failed:
        reasons = {str(item.get("FailureReason", "?")) for item in failed}
        raise DicomWebError(f"{base}: the PACS refused {len(failed)} instance(s) (failure reason "
                            f"{', '.join(sorted(reasons))})")
    return [str(ds.SOPInstanceUID) for ds in datasets]

