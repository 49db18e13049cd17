"""Every answer a PACS sends, read with a byte cap and a pace before dicomweb-client sees it.

Why: requests (inside dicomweb-client) reads a whole answer body into memory, then dicomweb-client
copies it again to split the multipart parts and once more to parse each with pydicom, all before
``data.dicomweb`` could compare an instance's size with what its metadata announced. A hostile or
broken PACS could so send one instance (or a metadata or search answer) of any size and exhaust the
app's memory. dicomweb-client's own hook, the ``callback`` it installs as the requests session's
response hook, runs when the headers have arrived and the body has not been read: :func:`read_capped`
reads the body there, as it arrives (``read1``: what one receive gives, at most ``CHUNK_BYTES``),
counting the bytes after any ``Content-Encoding`` is undone (a gzip bomb counts as what it inflates
to), and hands it to requests as if requests had read it. It stops with :class:`AnswerTooLarge` as
soon as the count passes the cap, or at once when ``Content-Length`` already says more (so a lie
in either direction is bounded: a length under the truth is all that is read, a chunked answer with
no length is counted); and with :class:`AnswerTooSlow` when, after the first ``timeout`` seconds,
the answer has averaged less than ``MIN_BYTES_PER_S`` (a PACS that drips a byte a second never
trips the per-receive timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

CHUNK_BYTES = 2**20  # at most one receive's worth a read: memory beyond the body is this
MIN_BYTES_PER_S = 64 * 2**10  # a slow legitimate link moves 1 MiB/s or more; a drip moves bytes


class AnswerTooLarge(requests.exceptions.RequestException):
    """An answer body over the cap; ``declared`` is its Content-Length when that alone said so."""

    def __init__(self, cap: int, declared: int | None = None):
        self.cap, self.declared = cap, declared
        said = f"declared {declared} bytes" if declared is not None else "sent more"
        super().__init__(f"answer over {cap} bytes ({said})")


class AnswerTooSlow(requests.exceptions.Timeout):
    """An answer that keeps coming, too slowly to ever finish in reasonable time."""

    def __init__(self, received: int, seconds: float):
        self.received, self.seconds = received, seconds
        super().__init__(f"{received} bytes in {seconds:.0f} s")


@dataclass
class AnswerLimit:
    """The cap for the next answer (the caller sets ``max_bytes`` before each request) and the
    seconds of silence the client allows (the pace rule starts after as many)."""

    max_bytes: int
    timeout: float


def read_capped(limit: AnswerLimit, r: requests.Response, *args, **kwargs) -> requests.Response:
    """A requests response hook: read ``r``'s body within ``limit`` or close ``r`` and raise."""
    if r._content_consumed or r.raw is None:  # type: ignore[attr-defined]
        return r
    cap = limit.max_bytes
    declared = _content_length(r)
    if declared is not None and declared > cap:
        r.close()
        raise AnswerTooLarge(cap, declared)
    body = bytearray()
    start = time.monotonic()
    try:
        while chunk := r.raw.read1(CHUNK_BYTES, decode_content=True):
            if len(body) + len(chunk) > cap:
                raise AnswerTooLarge(cap)
            body += chunk
            late = time.monotonic() - start - limit.timeout
            if late > 0 and len(body) < late * MIN_BYTES_PER_S:
                raise AnswerTooSlow(len(body), late + limit.timeout)
    except ReadTimeoutError as e:  # requests itself would call a silent body a ConnectionError
        r.close()
        raise requests.exceptions.ReadTimeout(e) from None
    except ProtocolError as e:  # cut short (fewer bytes than Content-Length), broken chunks
        r.close()
        raise requests.exceptions.ChunkedEncodingError(e) from None
    except DecodeError as e:
        r.close()
        raise requests.exceptions.ContentDecodingError(e) from None
    except BaseException:
        r.close()
        raise
    r._content = bytes(body)  # type: ignore[attr-defined]
    r._content_consumed = True  # type: ignore[attr-defined]
    return r


def _content_length(r: requests.Response) -> int | None:
    text = (r.headers.get("Content-Length") or "").strip()
    return int(text) if text.isdigit() else None
