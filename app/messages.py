"""Text the page shows a user: one line, no server paths, no session id, and never markup.

Why: error messages quote what users and files supply (a zip member name, a SeriesInstanceUID, a
file name). Toasts render HTML and the status line and study facts render Markdown, so such text
could draw a fake "session expired: sign in" link; and readers' messages carry absolute paths
that show the session folder. Everything shown goes through :func:`for_toast` or
:func:`for_markdown`.
"""

from __future__ import annotations

import html
import re
import secrets
import threading
from datetime import datetime, timezone
from typing import Iterable

from data.untrusted import escape_markdown, visible_direction_controls

MAX_CHARS = 400
# an absolute POSIX path (after start, space, quote or bracket): shown as its last part
_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"(),;]+/)+([^\s/'\"(),;]*)")


def plain(text: object, hide: Iterable[str] = ()) -> str:
    """``text`` as one line of at most MAX_CHARS, with paths shortened to names and ``hide`` removed."""
    s = str(text)
    for secret in hide:
        if secret:
            s = s.replace(secret, "…")
    s = _PATH.sub(lambda m: m.group(1) or "…", s)
    s = visible_direction_controls(" ".join(s.split()))  # newlines, tabs: one line; direction controls written out
    return s if len(s) <= MAX_CHARS else s[: MAX_CHARS - 1] + "…"


def for_toast(text: object, hide: Iterable[str] = ()) -> str:
    """For ``gr.Warning``/``gr.Info`` (rendered as HTML): plain text, HTML-escaped."""
    return html.escape(plain(text, hide), quote=True)


def for_markdown(text: object, hide: Iterable[str] = ()) -> str:
    """For a ``gr.Markdown`` (the status line): plain text that renders as itself."""
    return escape_markdown(plain(text, hide))


_stamp_lock = threading.Lock()
_last_stamp = 0
# Names this server process in the news order: a restarted server counts its stamps from 1 again, so the viewer
# takes a message of another process as newer than any it has shown. Random, not a clock: a clock stepped back
# between two runs made the new process's news look older. Not a credential (it only tells processes apart).
BOOT = secrets.token_hex(4)


def news_stamp() -> int:
    """The next number of this process's news order (1, 2, ...): when a message's news happened. The viewer never
    shows a message over one whose news is newer (a warm-up's late "Opened ... Ready" replaced the answer of a
    click made meanwhile). A count, not the wall clock: an NTP step back would have made later news look older
    (a restarted server's for as long as the step); :data:`BOOT` tells processes apart."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp += 1
        return _last_stamp


def last_stamp() -> int:
    """The newest stamp :func:`news_stamp` gave (0 before any)."""
    with _stamp_lock:
        return _last_stamp


STAMP = re.compile(r'<time hidden datetime="[^"<>]*" title="news [0-9a-f]+\.\d+"></time>$')


def unstamped(status: str) -> str:
    """A status line without the stamp :func:`stamped` added: the text the user reads."""
    return STAMP.sub("", status)


def stamped(markdown: str, at: int) -> str:
    """A status line (already :func:`for_markdown`) with its place in the news order, as a hidden ``<time>`` the
    viewer reads: ``title="news BOOT.N"`` (Gradio's Markdown keeps ``<time>``, ``datetime`` and ``title`` and
    drops ``data-`` attributes); ``datetime`` is when it was sent (UTC), for a person reading the page."""
    iso = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f'{markdown}<time hidden datetime="{iso}" title="news {BOOT}.{int(at)}"></time>'


def error_text(error: BaseException) -> str:
    """The message of a user error (KeyError's repr quotes dropped)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)
