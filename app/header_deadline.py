"""A deadline on each request's line and headers (``MEDSEG_HEADER_TIMEOUT_S``, 20 s): then 408 and the connection closes.

uvicorn, as Gradio starts it, times out only an idle keep-alive connection, and only after a response. A client that
opens a connection and sends nothing, or sends its request line and headers a byte at a time ("slowloris"), holds a
connection and its memory for ever, before any ASGI middleware (``app.web_session``'s body deadline included) sees
the request. Apache's ``RequestReadTimeout`` and nginx's ``client_header_timeout`` are the same rule.

The deadline is kept on uvicorn's HTTP protocol object, the one place that sees a request before its headers are
complete. It works with either of uvicorn's parsers (httptools, h11) without their internals: both make a new
``RequestResponseCycle`` exactly when a request's headers are complete, so "the cycle is still the one we had when
the clock started" means "the headers are not all here yet".
"""

from __future__ import annotations

import asyncio
from typing import Any

HEADER_TIMEOUT_S = 20.0  # MEDSEG_HEADER_TIMEOUT_S (app.settings)
_REFUSAL = b"the request line and headers did not arrive in time"


class HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol class: 408 and close when a request's headers are late.

    The clock starts when the connection opens and again when the bytes of a next request begin to arrive (after
    the previous request's body, even while its answer is still going out); it stops when that request's headers
    are complete (a new cycle exists). An answer in flight is never cut: the refusal waits until it is complete.
    """

    header_timeout_s: float = HEADER_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None
    _cycle_at_start: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        # bytes after a request's body is complete are a next request's, whether or not the answer is still going
        # out (pipelined): its clock starts now, and ``_late`` waits for that answer before cutting
        if self._deadline is None and (cycle is None or cycle.response_complete or not cycle.more_body):
            self._start_clock()
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is not None and self.cycle is not self._cycle_at_start:  # type: ignore[attr-defined]
            self._stop_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)  # type: ignore[misc]

    def _start_clock(self) -> None:
        self._cycle_at_start = self.cycle  # type: ignore[attr-defined]
        self._deadline = self.loop.call_later(self.header_timeout_s, self._late)  # type: ignore[attr-defined]

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing() or transport.get_protocol() is not self:  # closed, or now a WebSocket's
            return
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is not self._cycle_at_start:
            return
        if cycle is not None and not cycle.response_complete:  # a response still going out: never cut it
            self._start_clock()
            return
        transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL))
        transport.close()


def protocol_class(base: type, timeout_s: float) -> type:
    """``base`` (uvicorn's ``HttpToolsProtocol`` or ``H11Protocol``) with the header deadline."""
    return type(f"HeaderDeadline{base.__name__}", (HeaderDeadline, base), {"header_timeout_s": timeout_s})


def install(timeout_s: float) -> None:
    """Make uvicorn's ``http="auto"`` (what Gradio's ``launch`` asks for) resolve to the protocol with the deadline.

    Gradio builds its ``uvicorn.Config`` itself and passes no protocol, so the name it resolves is re-pointed here,
    in the serving process only; idempotent.
    """
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    global AUTO
    AUTO = protocol_class(AutoHTTPProtocol, timeout_s)
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:AUTO"


AUTO: type | None = None  # set by install()
