"""What every reader raises, warns and checks first: the one-line :class:`StudyError` (and the refusals a caller can
act on: several series to pick from, uneven spacing to accept), :class:`StudyWarning` for a repair the user should
know about, and the voxel limit checked from a header before anything is decoded. Its own module so that the
readers of each format (``data.readers``, ``data.pictures``, ``data.dicom_pixels``) share it without importing
each other."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom

from data import limits
from data.limits import LimitError
from data.untrusted import one_line


class StudyError(ValueError):
    """A study that cannot be read; the message names the file and what was expected, on one line
    (control characters in file names are escaped, so a name with a newline cannot split it)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


class SeveralSeriesError(StudyError):
    """A folder holds several image volumes and none was named. ``series`` lists them (SeriesInstanceUID, modality,
    description, images; scouts left out) so that a caller can offer them: the UI's picker takes them from the
    isolated reader's refusal, and the server process never parses an upload's headers itself."""

    def __init__(self, message: object, series: list[tuple[str, str, str, int]]) -> None:
        super().__init__(message)
        self.series = series


# the end of a refusal for uneven slices (``data.series_geometry``): advice for the CLI, whose commands that read a
# study take --allow-uneven; callers without that flag drop it (``without_cli_advice``)
ALLOW_UNEVEN_ADVICE = ", or pass --allow-uneven"
# the advice in a refusal of a folder of several series (``data.readers``): the CLI's --series, which ``medseg
# oneshot``, eval manifests and the label server do not take; they say what to give instead (session 25)
SERIES_ADVICE = ", pick one with --series UID"
SERIES_ADVICE_WITHOUT_FLAG = "; expected one: give the files of one series alone"
LOCALIZER_ADVICE = "; --series UID opens one"  # the end of the note on a scout left out (``data.readers``)
# the start of the note on a study opened at its mean slice spacing (``data.series_geometry``): the CLI's flag that
# asked for it; the UI names its own choice instead (``app.controller``, session 25's leftover)
UNEVEN_NOTE = "--allow-uneven: "


def without_cli_advice(text: str) -> str:
    """A reader's refusal or note without the CLI's ``--allow-uneven`` and ``--series``, for a caller that has no such
    flags: the label server, an eval manifest's row (session 24's pass: both said to pass them), ``medseg oneshot``,
    the UI's status line (session 25: `left out 1 localizer series (UID; --series UID opens one)`)."""
    return (text.replace(ALLOW_UNEVEN_ADVICE, "").replace(SERIES_ADVICE, SERIES_ADVICE_WITHOUT_FLAG)
            .replace(LOCALIZER_ADVICE, ""))


class UnevenStudyError(StudyError):
    """A study refused only for uneven slice spacing or missing slices: ``allow_uneven=True`` opens it at the mean
    spacing with a note (the CLI's ``--allow-uneven``, the UI's choice under Upload)."""


class StudyWarning(UserWarning):
    """A study that was read with a repair the user should know about (e.g. NaN voxels replaced)."""


def voxel_limit(max_voxels: int | None = None) -> int:
    """``max_voxels``, else ``$MEDSEG_MAX_VOXELS``, else DEFAULT_MAX_VOXELS (see app.settings)."""
    try:
        return limits.voxel_limit(max_voxels)
    except LimitError as e:
        raise StudyError(str(e)) from None


def check_voxels(path: Path, shape: tuple[int, ...], limit: int) -> None:
    shape = tuple(int(n) for n in shape)
    if any(n <= 0 for n in shape):
        raise StudyError(f"{path}: empty image of size {shape}")
    if int(np.prod(shape, dtype=np.float64)) > limit:
        raise StudyError(
            f"{path}: {' x '.join(map(str, shape))} voxels is more than the limit of {limit} "
            "(raise MEDSEG_MAX_VOXELS, or crop/downsample the study)"
        )


def header_int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(getattr(ds, keyword, default) or default)
    except (TypeError, ValueError):
        return default


def first_line(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    # ITK names the object by its address ("GDCMImageIO(0x5564...)"): noise to a user, different each run
    return one_line(re.sub(r"\(0x[0-9a-fA-F]+\)", "", text[-1].strip())[:200]) if text else type(e).__name__
