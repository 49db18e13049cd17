"""Limits every reader enforces on untrusted files, in one place (``app/settings.py`` documents the
environment variables; the constants here are the bounds that have no knob).

Why these numbers:

* ``DEFAULT_MAX_VOXELS`` 2**28 = 512 x 512 x 1024, a long CT; ~1 GiB as float32 while windowing.
* ``MAX_DICOM_DEPTH`` 32 nested sequences: real files nest at most ~6 deep (enhanced multi-frame
  functional groups, structured reports ~10). GDCM parses sequences recursively and a file with
  ~100,000 nested items overflows its C stack (signal 11), so the depth is checked before it reads.
* ``MAX_DICOM_ITEMS`` 200,000 sequence items per file: a 5,000-frame enhanced CT carries ~30 per
  frame. Bounds the time and memory pydicom spends building the header.
* ``MAX_DICOM_HEADER_BYTES`` 32 MiB of elements other than pixel data (an enhanced 5,000-frame
  header is ~15 MiB); also what a deflated data set may inflate to before its pixel data, and
  the most a NIfTI header with extensions may take (``vox_offset``).
* ``GZIP_SLACK_BYTES`` 1 MiB: what a .nii.gz may hold after the voxels its header declares before
  it counts as a gzip bomb (real files hold 0 bytes there).
"""

from __future__ import annotations

import os

DEFAULT_MAX_VOXELS = 2**28
MAX_DICOM_DEPTH = 32
MAX_DICOM_ITEMS = 200_000
MAX_DICOM_HEADER_BYTES = 32 * 1024**2
GZIP_SLACK_BYTES = 1024**2
MAX_BYTES_PER_VOXEL = 8  # float64 pixel data: the most one voxel of a legitimate study takes
MAX_SAMPLES_PER_PIXEL = 4


class LimitError(ValueError):
    """A limit setting that cannot be used (the readers turn it into a StudyError)."""


def voxel_limit(max_voxels: int | None = None) -> int:
    """``max_voxels``, else ``$MEDSEG_MAX_VOXELS``, else DEFAULT_MAX_VOXELS (see app.settings)."""
    if max_voxels is not None:
        return int(max_voxels)
    text = os.environ.get("MEDSEG_MAX_VOXELS", "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_VOXELS
    except ValueError:
        raise LimitError(f"MEDSEG_MAX_VOXELS={text!r}: expected a whole number of voxels") from None


# --- the child process that reads untrusted files (data.isolated_read) ---------------------------
READ_BASE_BYTES = 512 * 1024**2
READ_BYTES_PER_VOXEL = 32
DEFAULT_READ_TIMEOUT_S = 120.0


def read_memory_bytes(max_voxels: int, memory_mb: float | None = None) -> int:
    """Address space an isolated read may add to its warm process: ``memory_mb``, else
    ``$MEDSEG_READ_MEMORY_MB``, else 512 MiB + 32 bytes per allowed voxel.

    Why 32 bytes: the largest legitimate study is float64 (8 bytes a voxel); ITK's image, the NumPy
    copy and the NaN check hold about three copies at once, plus room for glibc's arenas and ITK's
    thread stacks (virtual, counted by RLIMIT_AS). At the default 2**28 voxels that is 8.5 GiB; at
    the corpus's 2**22, 640 MiB.
    """
    if memory_mb is None:
        text = os.environ.get("MEDSEG_READ_MEMORY_MB", "").strip()
        try:
            memory_mb = float(text) if text else None
        except ValueError:
            raise LimitError(f"MEDSEG_READ_MEMORY_MB={text!r}: expected a number of MiB > 0") from None
    if memory_mb is None:
        return READ_BASE_BYTES + READ_BYTES_PER_VOXEL * int(max_voxels)
    if not memory_mb > 0:
        raise LimitError(f"MEDSEG_READ_MEMORY_MB={memory_mb!r}: must be > 0")
    return int(memory_mb * 1024**2)


def read_timeout_s(seconds: float | None = None) -> float:
    """Wall-clock (and CPU) seconds one isolated read may take: ``seconds``, else
    ``$MEDSEG_READ_TIMEOUT_S``, else 120: far above a legitimate read (the bundled CT and Colin27 read in
    well under a second), low enough that a read stuck in native code frees its slot."""
    if seconds is None:
        text = os.environ.get("MEDSEG_READ_TIMEOUT_S", "").strip()
        try:
            seconds = float(text) if text else DEFAULT_READ_TIMEOUT_S
        except ValueError:
            raise LimitError(f"MEDSEG_READ_TIMEOUT_S={text!r}: expected a number of seconds > 0") from None
    if not seconds > 0:
        raise LimitError(f"MEDSEG_READ_TIMEOUT_S={seconds!r}: must be > 0")
    return float(seconds)
