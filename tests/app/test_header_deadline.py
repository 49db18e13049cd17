"""A request line and headers that do not arrive in time get 408 and a closed connection (``app.header_deadline``).

Before: uvicorn, as Gradio starts it, kept a connection that sent nothing, or its headers a byte at a time, open for
ever (the sockets below were still open after 6 s); the body deadline of ``app.web_session`` never saw such a request.
The stand-in app runs on a real uvicorn with ``http="auto"`` re-pointed by ``install`` (what ``medseg serve`` does), or
with each of uvicorn's two parsers; a last test checks a real ``medseg serve``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
import uvicorn.config
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import header_deadline
from scripts.page_client import ServerProcess

DEADLINE_S = 1.0


async def hello(request):
    return PlainTextResponse(f"hello {len(await request.body())}")


async def slow_answer(request):
    async def parts():
        for _ in range(5):
            await asyncio.sleep(0.5)  # 2.5 s in all: longer than the header deadline
            yield b"part "

    return StreamingResponse(parts())


APP = Starlette(routes=[Route("/", hello, methods=["GET", "POST"]), Route("/slow", slow_answer)])


@pytest.fixture(params=["auto installed", "httptools", "h11"])
def port(request, monkeypatch):
    if request.param == "auto installed":
        # uvicorn's table of protocol names is the process's: restored after, for the other tests in this worker
        monkeypatch.setitem(uvicorn.config.HTTP_PROTOCOLS, "auto", uvicorn.config.HTTP_PROTOCOLS["auto"])
        header_deadline.install(DEADLINE_S)
        http = "auto"  # as Gradio's launch builds its Config
    else:
        base = HttpToolsProtocol if request.param == "httptools" else H11Protocol
        http = header_deadline.protocol_class(base, DEADLINE_S)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=free, log_level="warning", http=http,
                                           timeout_keep_alive=60))  # the deadline must not lean on uvicorn's 5 s
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if request.param == "auto installed":
        assert issubclass(server.config.http_protocol_class, header_deadline.HeaderDeadline)
    yield free
    server.should_exit = True
    thread.join(10)


def _talk(port: int, parts: list[bytes], gap_s: float, quiet_s: float = 6.0) -> tuple[bytes, float]:
    """Send each of ``parts`` ``gap_s`` apart (stopping if the server closes); -> (all it answered, seconds until it
    closed, or ``quiet_s`` of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=quiet_s) as s:
        t0 = time.monotonic()
        for i, part in enumerate(parts):
            if i:
                time.sleep(gap_s)
            try:
                s.sendall(part)
            except OSError:
                break  # closed by the server
        reply = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            reply += chunk
        return reply, time.monotonic() - t0


def _refused(reply: bytes, seconds: float) -> bool:
    return (reply.startswith(b"HTTP/1.1 408 ") and reply.endswith(b"did not arrive in time")
            and b"connection: close" in reply.lower() and DEADLINE_S * 0.9 < seconds < DEADLINE_S + 2)


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(port):
    assert _refused(*_talk(port, [b""], 0))


def test_headers_sent_a_byte_at_a_time_are_answered_408_and_closed(port):
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 20 + b"\r\n\r\n"
    reply, seconds = _talk(port, [request[i:i + 1] for i in range(len(request))], 0.1)
    assert _refused(reply, seconds), reply


def test_requests_in_time_are_answered_and_a_kept_alive_connections_slow_next_request_is_cut(port):
    fast = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    slow_next = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the blank line never comes
    reply, seconds = _talk(port, [fast, fast, slow_next], 0.3)
    assert reply.count(b"HTTP/1.1 200 ") == 2 and reply.count(b"hello 0") == 2, reply
    assert reply.endswith(b"did not arrive in time") and 0.6 + DEADLINE_S * 0.9 < seconds < 0.6 + DEADLINE_S + 2


def test_an_answer_longer_than_the_deadline_and_a_slow_body_are_not_cut(port):
    reply, _ = _talk(port, [b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"], 0)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"part ") == 5, reply
    # the headers in time, the body over 1.5 s: the header deadline is not a body deadline
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\n"
    reply, _ = _talk(port, [head, b"a", b"b", b"c"], 0.5)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hello 3"), reply


def test_a_pipelined_requests_late_headers_are_cut_once_the_answer_in_flight_is_out(port):
    """A next request's headers trickling in while the previous answer still streams (HTTP/1.1 pipelining), then
    silence: before, httptools started no clock for it, and the connection was held until uvicorn's keep-alive
    timeout (for ever with a long one). Found in session 29's review."""
    first = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    partial = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "
    reply, seconds = _talk(port, [first] + [partial[i:i + 1] for i in range(len(partial))], 0.05, quiet_s=20)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"part ") == 5, reply  # the answer was not cut
    assert reply.endswith(b"did not arrive in time") and 2.5 < seconds < 2.5 + DEADLINE_S + 2, (reply[-80:], seconds)


def test_medseg_serve_closes_a_silent_connection(tmp_path):
    server = ServerProcess(tmp_path / "state", prefetch=0, env={"MEDSEG_HEADER_TIMEOUT_S": "2"}).start()
    try:
        reply, seconds = _talk(server.port, [b"GET /config HTTP/1.1\r\n"], 0, quiet_s=10)
        assert reply.startswith(b"HTTP/1.1 408 ") and 1.8 < seconds < 6, (reply, seconds)
        reply, _ = _talk(server.port, [b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"], 0)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    finally:
        server.stop()
