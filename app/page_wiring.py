"""What a panel of the page needs to connect its events to the session (``app/ui.py`` builds one; ``app/pacs.py`` and
``app/series_picker.py`` take it), so each panel's ``wire`` takes one object, not seven positional arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from app.controller import AppContext


@dataclass(frozen=True)
class PageWiring:
    ctx: AppContext
    sid: Any  # the page's session-id component (an input of every event)
    outputs: list  # the components every action refreshes (app.ui's ``present`` order)
    status: Any  # the status line
    guarded: Callable[..., list]  # runs a controller action: its outputs, or one line on error
    warm: Callable  # encodes the shown slice after an open (its event's ``then``)
    gpu: dict  # the model events' queue settings (one at a time, or batched)
