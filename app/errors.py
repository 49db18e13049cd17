"""The exceptions that mean 'the user gave something we cannot use' (exit code 2, one line)."""

from __future__ import annotations

import re

from data.readers import StudyError
from models.checkpoint import CheckpointError
from models.prompts import PromptError


class UsageError(ValueError):
    """A bad combination of arguments."""


# KeyError covers unknown model names (the registry's message names the known ones);
# IndexError covers a slice out of range; OSError covers unwritable outputs.
USER_ERRORS: tuple[type[BaseException], ...] = (
    StudyError,
    CheckpointError,
    PromptError,
    UsageError,
    KeyError,
    IndexError,
    ValueError,
    OSError,
)


_SESSION_ID = re.compile(r"\b[0-9a-f]{32}\b")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;)]+){2,}[\\/]?")


def public_message(e: BaseException) -> str:
    """One line for the user: the error's text with server paths cut to their last part."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    text = " ".join(str(text).split())
    text = _PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    return _SESSION_ID.sub("…", text)[:300]
