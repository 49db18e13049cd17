"""How the server reads a user's study: in a child process with the limits of ``app.settings``.

Uploads and PACS series are hostile until read; ``data.isolated_read`` keeps a crash, a runaway
allocation or a hang in a native decoder inside one child, so the server answers one error and
keeps serving everyone else. The bundled samples (our own files) are read in process.
"""

from __future__ import annotations

from pathlib import Path

from data.isolated_read import ReadLimits, read_study_isolated
from data.volume import Volume


def read_untrusted(path: str | Path, scratch: str | Path, series_uid: str | None = None) -> Volume:
    """``read_study(path)`` in a limited child; ``scratch`` (the session's folder) holds the hand-over file."""
    from app.settings import get_settings

    settings = get_settings()
    limits = ReadLimits.resolve(settings.max_voxels, settings.read_memory_mb, settings.read_timeout_s)
    return read_study_isolated(path, scratch=scratch, series_uid=series_uid, max_voxels=settings.max_voxels,
                               read_limits=limits)
