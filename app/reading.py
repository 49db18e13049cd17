"""How the server reads a user's study: in a child process with the limits of ``app.settings``.

Uploads and PACS series are hostile until read; ``data.isolated_read`` keeps a crash, a runaway
allocation or a hang in a native decoder inside one child, so the server answers one error and
keeps serving everyone else. The bundled samples (our own files) are read in process.
The CLI reads in process unless ``MEDSEG_ISOLATE_READS=1`` (:func:`read_for_cli`).
"""

from __future__ import annotations

import os
from pathlib import Path

from data.isolated_read import ReadLimits, read_study_isolated
from data.volume import Volume


def read_untrusted(path: str | Path, scratch: str | Path, series_uid: str | None = None, *,
                   allow_uneven: bool = False) -> Volume:
    """``read_study(path)`` in a limited child; ``scratch`` (the session's folder) holds the hand-over file."""
    from app.settings import get_settings

    settings = get_settings()
    limits = ReadLimits.resolve(settings.max_voxels, settings.read_memory_mb, settings.read_timeout_s)
    return read_study_isolated(path, scratch=scratch, series_uid=series_uid, max_voxels=settings.max_voxels,
                               read_limits=limits, allow_uneven=allow_uneven)


def read_for_cli(path: str | Path, *, series_uid: str | None = None, max_voxels: int | None = None,
                 allow_uneven: bool = False) -> Volume:
    """The CLI's read: in process, or isolated when ``MEDSEG_ISOLATE_READS=1``.

    Why opt-in: a crash in a native decoder then ends in one line and exit 2 instead of a signal,
    but the fork server's start costs 0.7-4.6 s on the shared 2-core machine, once per command.
    The CLI's link rule (follow links to regular files) holds in the child too.
    """
    if os.environ.get("MEDSEG_ISOLATE_READS", "").strip().lower() in ("1", "true", "yes"):
        return read_study_isolated(path, series_uid=series_uid, max_voxels=max_voxels, allow_uneven=allow_uneven)
    from data.readers import read_study

    return read_study(path, series_uid=series_uid, max_voxels=max_voxels, allow_uneven=allow_uneven)
