"""Server limits, typed and read once from the environment (so one place documents every knob).

| variable                    | default        | what it bounds                                          |
|-----------------------------|----------------|---------------------------------------------------------|
| ``MEDSEG_MAX_UPLOAD_MB``    | 2048           | one upload (all its files together; also Gradio's cap)  |
| ``MEDSEG_MAX_UNZIPPED_MB``  | 2048           | what a zip may unpack to                                 |
| ``MEDSEG_MAX_UPLOAD_FILES`` | 10000          | files in one upload, members in one zip, instances of a PACS series |
| ``MEDSEG_MAX_VOXELS``       | 268435456      | voxels of a study (checked from the header, before pixels) |
| ``MEDSEG_SESSION_TTL_HOURS``| 336 (14 days)  | a session untouched this long is deleted with its uploads |
| ``MEDSEG_SESSION_DISK_MB``  | 4096           | disk one session may hold (uploads, unpacked zips, exports) |
| ``MEDSEG_TOTAL_DISK_MB``    | 20480          | disk all sessions together may hold                      |
| ``MEDSEG_MAX_STUDIES``      | 4              | studies (uploads) one session keeps on disk at once      |
| ``MEDSEG_DICOMWEB_TIMEOUT_S``| 30           | seconds a PACS may stay silent on one DICOMweb request; after as many, an answer must average 64 KiB/s |
| ``MEDSEG_STUDY_EMBEDDINGS_MB``| 2048        | study embeddings (for propagation) all sessions keep in memory together; least recently used sessions' are dropped |
| ``MEDSEG_READ_MEMORY_MB``   | 512 + 32 B/voxel | memory (address space) the child that reads an upload may add (``data/limits.py``) |
| ``MEDSEG_READ_TIMEOUT_S``   | 120            | wall-clock and CPU seconds that child may take           |
| ``MEDSEG_ISOLATE_READS``    | (off)          | ``1``: the CLI reads its input in that child too (``app/reading.py``) |
| ``MEDSEG_BODY_TIMEOUT_S``   | 30             | seconds ``medseg serve`` waits for a request body's next part; then 408 |
| ``MEDSEG_HEADER_TIMEOUT_S`` | 20             | seconds ``medseg serve`` waits for a request's line and headers; then 408 and the connection closes |
| ``MEDSEG_ALLOWED_ROOTS``    | (none)         | extra folders the server may serve files from (``os.pathsep``-separated); session folders are never served |

The in-memory caches' bounds (plane embeddings and undo per session, study embeddings per server) and
their sum, the server's cache budget (7 GiB by default), are tabled in docs/reliability.md (*Memory*);
``MEDSEG_MEMORY_LOG_S=N`` logs what each holds against its bound (``app/memory_report.py``).

The readers' fixed bounds on untrusted files (DICOM nesting depth 32, 200,000 sequence items, 32 MiB
of header, deflated data sets inflated in capped steps, .nii.gz streams at most 1 MiB past what the
header declares) live in ``data/limits.py``; the deflate cap scales with ``MEDSEG_MAX_VOXELS``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from app.header_deadline import HEADER_TIMEOUT_S
from app.web_session import BODY_TIMEOUT_S
from data.limits import DEFAULT_MAX_VOXELS, DEFAULT_READ_TIMEOUT_S

MIB = 1024**2


class SettingsError(ValueError):
    """An environment variable with a value we cannot use; the message names it and the expected form."""


@dataclass(frozen=True)
class Settings:
    """Limits the server enforces on untrusted input."""

    max_upload_bytes: int = 2048 * MIB
    max_unzipped_bytes: int = 2048 * MIB
    max_upload_files: int = 10_000
    max_voxels: int = DEFAULT_MAX_VOXELS
    session_ttl_s: float = 14 * 86400.0
    session_disk_bytes: int = 4096 * MIB
    total_disk_bytes: int = 20480 * MIB
    max_studies: int = 4
    allowed_roots: tuple[Path, ...] = ()
    dicomweb_timeout_s: float = 30.0
    study_embeddings_bytes: int = 2048 * MIB
    read_memory_mb: float | None = None  # None: data.limits.read_memory_bytes's default for max_voxels
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    header_timeout_s: float = HEADER_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``env`` (default ``os.environ``); unset or empty variables keep the defaults."""
        env = os.environ if env is None else env
        d = cls()
        roots = tuple(Path(p).expanduser().resolve() for p in env.get("MEDSEG_ALLOWED_ROOTS", "").split(os.pathsep) if p)
        for root in roots:
            if not root.is_dir():
                raise SettingsError(f"MEDSEG_ALLOWED_ROOTS: {root} is not a folder")
        return cls(
            max_upload_bytes=int(_number(env, "MEDSEG_MAX_UPLOAD_MB", d.max_upload_bytes / MIB) * MIB),
            max_unzipped_bytes=int(_number(env, "MEDSEG_MAX_UNZIPPED_MB", d.max_unzipped_bytes / MIB) * MIB),
            max_upload_files=int(_number(env, "MEDSEG_MAX_UPLOAD_FILES", d.max_upload_files, whole=True)),
            max_voxels=int(_number(env, "MEDSEG_MAX_VOXELS", d.max_voxels, whole=True)),
            session_ttl_s=_number(env, "MEDSEG_SESSION_TTL_HOURS", d.session_ttl_s / 3600) * 3600,
            session_disk_bytes=int(_number(env, "MEDSEG_SESSION_DISK_MB", d.session_disk_bytes / MIB) * MIB),
            total_disk_bytes=int(_number(env, "MEDSEG_TOTAL_DISK_MB", d.total_disk_bytes / MIB) * MIB),
            max_studies=int(_number(env, "MEDSEG_MAX_STUDIES", d.max_studies, whole=True)),
            allowed_roots=roots,
            dicomweb_timeout_s=_number(env, "MEDSEG_DICOMWEB_TIMEOUT_S", d.dicomweb_timeout_s),
            study_embeddings_bytes=int(_number(env, "MEDSEG_STUDY_EMBEDDINGS_MB", d.study_embeddings_bytes / MIB) * MIB),
            read_memory_mb=_number(env, "MEDSEG_READ_MEMORY_MB", 0) or None,
            read_timeout_s=_number(env, "MEDSEG_READ_TIMEOUT_S", d.read_timeout_s),
            body_timeout_s=_number(env, "MEDSEG_BODY_TIMEOUT_S", d.body_timeout_s),
            header_timeout_s=_number(env, "MEDSEG_HEADER_TIMEOUT_S", d.header_timeout_s),
        )


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> float:
    text = env.get(name, "").strip()
    if not text:
        return float(default)
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected a {'whole ' if whole else ''}number > 0") from None
    if not value > 0:
        raise SettingsError(f"{name}={text!r}: must be > 0")
    return float(value)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use (not at import)."""
    return Settings.from_env()
