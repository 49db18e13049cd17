"""The exceptions that mean 'the user gave something we cannot use' (exit code 2, one line)."""

from __future__ import annotations

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
