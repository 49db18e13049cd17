"""Oversized and hostile request bodies against a real ``medseg serve`` (session 12's second adversarial pass).

Before: ``POST /viewer-api/action`` (and Gradio's JSON routes) read any body whole: a client with a session
cookie posted 256 MiB and the server held it (then json-parsed it). Now each route has a byte limit
(``app.body_limit``), checked on the Content-Length and counted as a chunked body arrives: 413 with one line
once past it, the server's memory flat, the session answering clicks after.

The bodies go out over a raw socket, a MiB at a time, and the sender stops as soon as the server answers:
``sent`` is what the server had to take before it refused.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid

import httpx
import pytest

from app.body_limit import serve_limit_for
from app.settings import get_settings
from scripts.page_client import Page, ServerProcess

CT = "CT head (DICOM series, 12 slices)"
ATTACK = 256 * 2**20  # bytes a hostile client posts
MIB = 2**20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real server (no prefetch: its memory stays still) and a page with the CT open."""
    state = tmp_path_factory.mktemp("state")
    server = ServerProcess(state, prefetch=0, log_path=state.parent / "serve.log",
                           extra_args=()).start()
    page = Page(server.url)
    page.load()
    page.open_sample(CT)
    try:
        yield server, page
    finally:
        page.close()
        server.stop()


def _post_raw(server: ServerProcess, path: str, token: str, *, total: int, chunked: bool,
              content_length: int | None) -> tuple[int | None, str, int, float, float]:
    """POST ``total`` bytes of a JSON body a MiB at a time until the server answers.

    -> (status or None when the connection dropped first, the answer's body, bytes sent, seconds, peak RSS growth MiB).
    """
    rss0, peak, stop = server.rss_mib(), [0.0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss_mib())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json",
            f"Cookie: medseg_session={token}"]
    head += [f"Content-Length: {content_length}"] if content_length is not None else []
    head += ["Transfer-Encoding: chunked"] if chunked else []
    body_start = b'{"kind": "point", "pad": "'
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    t0, sent = time.monotonic(), 0
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break  # the server answered (or closed): stop sending
            piece = (body_start if sent == 0 else b"") + b"a" * (MIB - (len(body_start) if sent == 0 else 0))
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except (TimeoutError, OSError):
                break  # the server stopped reading
            sent += len(piece)
        reply = b""
        s.settimeout(30)
        try:
            while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except (TimeoutError, OSError):
            pass
    finally:
        seconds = time.monotonic() - t0
        s.close()
        stop.set()
        watcher.join()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    text = reply.split(b"\r\n\r\n", 1)[1].decode(errors="replace") if b"\r\n\r\n" in reply else ""
    return status, text, sent, seconds, peak[0] - rss0


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _still_clicks(page: Page) -> None:
    hw = page.last["image_hw"]
    page.click(hw[1] / 2, hw[0] / 2)
    assert page.last["viewer"]["ok"]


@pytest.mark.parametrize("case", ["chunked", "declared", "lying", "short"])
@pytest.mark.parametrize("path", ["/viewer-api/action", "/gradio_api/queue/join"])
def test_an_oversized_body_is_refused_early_and_the_session_still_works(served, case, path):
    """256 MiB to the viewer's action or Gradio's queue: chunked (no Content-Length), declared; then two lying
    Content-Lengths of 1000: beside a chunked body (uvicorn's parser refuses the pair: 400) and before 256 MiB
    of plain body (uvicorn reads 1000 bytes, the rest is no request). The last two passed before the fix too."""
    server, page = served
    status, text, sent, seconds, grown = _post_raw(
        server, path, page.token, total=ATTACK, chunked=case in ("chunked", "lying"),
        content_length={"chunked": None, "declared": ATTACK, "lying": 1000, "short": 1000}[case])
    print(f"{path} {case}: {status} after {sent / MIB:.0f} MiB sent, {seconds:.2f} s, RSS +{grown:.0f} MiB: {text!r}")
    if case in ("chunked", "declared"):
        assert status == 413, (status, text)
        assert "over the limit" in text and "\n" not in text.strip()
        if path.startswith("/viewer-api"):
            assert json.loads(text)["ok"] is False  # the viewer shows its error line
    else:
        assert status in (400, 413, 422), (status, text)
    limit = serve_limit_for(get_settings().max_upload_bytes, get_settings().max_upload_files)(
        {"method": "POST", "path": path})  # 4 MiB for the viewer, 39 MiB for Gradio's JSON routes
    assert sent <= limit + 16 * MIB  # refused once past the limit (plus the sockets' buffers), not after 256 MiB
    assert seconds < 60  # a bound, not a timing (20 s until session 25): this worker and its server are niced on CI
    assert grown < limit / MIB + 32  # the body was 256 MiB (before: +252 to +560 MiB, held, then parsed)
    _still_clicks(page)


def test_the_longest_brush_stroke_the_viewer_may_send_is_accepted(served):
    """The biggest legitimate action (a 2000-point stroke, every coordinate 17 digits, 300 locked labels)
    stays far under the limit and answers."""
    from app.viewer.geometry import from_plane
    from data.readers import read_study
    from tests.conftest import SAMPLES

    _, page = served
    view, index = page.viewer["view"], page.viewer["index"]
    plane = page.viewer["planes"][view]
    volume = read_study(SAMPLES / "ct_head_0051_series")  # the CT the page opened: the stroke lies on its image
    points = [[v + 1e-13 for v in from_plane(volume, view, index, 20 + 0.123456789012345 * (i % 50),
                                                 20 + 0.987654321098765 * (i % 40))] for i in range(2000)]
    body = {"kind": "brush", "view": page.viewer["view"], "points": points, "radius": 3.5, "label": 1,
            "locked": list(range(2, 302)), "study": page.viewer["study"]}
    size = len(json.dumps(body))
    print(f"longest stroke: {size / 1024:.0f} KiB ({plane['hw']})")
    assert size < 256 * 1024
    page.viewer_action(body)
    assert page.last["viewer"]["ok"]


def test_deeply_nested_json_in_an_action_is_one_400_line(served):
    """100000 nested lists (195 KiB): the parser's RecursionError. Before: FastAPI's 400 ``{"detail": "There was
    an error parsing the body"}`` (no traceback), which the viewer, reading ``error``, showed as "request failed
    (400)"; now the viewer's one line."""
    server, page = served
    deep = '{"kind": "point", "mm": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = page.http.post(server.url + "/viewer-api/action", content=deep.encode(),
                       headers={"Content-Type": "application/json"})
    print(r.status_code, r.text)
    assert r.status_code == 400
    assert r.json()["ok"] is False and "\n" not in r.json()["error"]
    assert "Traceback" not in (server.log_path.read_text(errors="replace") if server.log_path else "")
    _still_clicks(page)


def test_an_upload_over_the_limit_in_many_small_files_is_cut(tmp_path, monkeypatch):
    """Gradio's ``max_file_size`` (MEDSEG_MAX_UPLOAD_MB) checks each file alone: 16 files of 3 MiB under a 4 MiB
    limit were all taken (48 MiB into Gradio's cache) and refused only by medseg's check afterwards. Now the
    whole upload is counted: 413 once past the limit plus its framing allowance."""
    monkeypatch.setenv("MEDSEG_MAX_UPLOAD_MB", "4")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    server = ServerProcess(tmp_path / "state", prefetch=0, log_path=tmp_path / "serve.log").start()
    page = Page(server.url)
    try:
        page.load()
        files = [("files", (f"IM{i:04d}.dcm", bytes([i]) * (3 * MIB))) for i in range(16)]
        r = page.http.post(page.api + "/upload", files=files)
        print(r.status_code, r.text[:200])
        assert r.status_code == 413 and "MEDSEG_MAX_UPLOAD_MB" in r.text
        cached = sum(p.stat().st_size for p in (tmp_path / "gradio").rglob("*") if p.is_file())
        print(f"in Gradio's cache: {cached / MIB:.1f} MiB")
        assert cached < 16 * MIB  # not the 48 MiB sent
        ok = page.http.post(page.api + "/upload", files=[("files", ("small.dcm", b"x" * 1000))])
        assert ok.status_code == 200  # uploads under the limit still go through
    finally:
        page.close()
        server.stop()


@pytest.mark.parametrize("path", ["/gradio_api/queue/join", "/gradio_api/component_server"])
def test_deeply_nested_json_to_gradio_is_refused_without_a_traceback(served, path):
    """Gradio's JSON routes parse through FastAPI (a 400 or 422), never a 500 or a traceback (checked, no change)."""
    server, page = served
    deep = '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = page.http.post(server.url + path, content=deep.encode(), headers={"Content-Type": "application/json"})
    print(path, r.status_code, r.text[:120])
    assert r.status_code in (400, 422)
    assert "Traceback" not in server.log_path.read_text(errors="replace")
    _still_clicks(page)


def test_another_client_neither_reads_nor_joins_a_tabs_event_stream(served):
    """Session 27's leftover, on the real server: a client without the tab's cookie that knew its ``session_hash``
    opened ``/gradio_api/queue/data`` while the tab's event was queued and took its outputs (the page's state and
    status); the tab got nothing. Now: 403, one line, and the tab's own stream gets the event; a join with the
    tab's hash is refused; a cookie-less client (gradio_client) with its own hash works as before.
    (Here for its server: ``test_server_hardening.py`` checks the middleware route by route.)"""
    server, page = served
    load = page._dep(None, "load")

    def join(client: httpx.Client, session_hash: str) -> httpx.Response:
        return client.post(page.api + "/queue/join", json={"data": [], "fn_index": load["id"], "event_data": None,
                                                            "session_hash": session_hash, "trigger_id": None})

    def outputs(client: httpx.Client, session_hash: str, event_id: str) -> list[dict]:
        seen = []
        with client.stream("GET", page.api + "/queue/data", params={"session_hash": session_hash}) as s:
            assert s.status_code == 200, s.read()
            for line in s.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                    if seen[-1].get("event_id") == event_id and seen[-1].get("msg") == "process_completed":
                        break
        return seen

    event_id = join(page.http, page.session_hash).raise_for_status().json()["event_id"]  # the tab's event, queued
    with httpx.Client(timeout=30) as thief:
        stolen = thief.get(page.api + "/queue/data", params={"session_hash": page.session_hash})
        print(stolen.status_code, stolen.text[:200])
        assert stolen.status_code == 403 and "data:" not in stolen.text and "\n" not in stolen.text
        assert join(thief, page.session_hash).status_code == 403
        done = outputs(page.http, page.session_hash, event_id)[-1]  # the tab's own stream has its outputs
        assert done["success"] and "CT head" in json.dumps(done["output"]["data"])
        own = uuid.uuid4().hex[:11]  # a gradio_client's own hash, no cookie: served as before
        done = outputs(thief, own, join(thief, own).raise_for_status().json()["event_id"])[-1]
        assert done["msg"] == "process_completed" and done["success"]
    _still_clicks(page)
