"""Issue 23, the server half, piece by piece (fast; ``test_hostile_server.py`` runs it all on a real server):
escaped messages, the session cookie and what it gates, upload folders, quotas, the prefetcher."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app import controller, messages, web_session
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.render import Plane
from app.session import SessionError, SessionStore
from app.settings import Settings, get_settings
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"
NIFTI = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


# --- messages ---------------------------------------------------------------------------------------
def test_messages_are_one_line_without_paths_or_the_session_and_never_markup():
    sid = "0123456789abcdef0123456789abcdef"
    raw = (f"/home/u/.local/state/medseg/sessions/{sid}/uploads/x/IM0005.dcm: truncated\n"
           "member '<img src=x onerror=alert(1)>' and [sign in](http://evil.example)")
    text = messages.plain(raw, hide=[sid])
    assert "\n" not in text and "/home" not in text and sid not in text and text.startswith("IM0005.dcm: truncated")
    toast = messages.for_toast(raw, hide=[sid])
    assert "<" not in toast and "&lt;img" in toast
    md = messages.for_markdown(raw, hide=[sid])
    assert "<" not in md and "\\[sign in\\]\\(http://evil.example\\)" in md
    assert len(messages.plain("x" * 5000)) == messages.MAX_CHARS


# --- the cookie and what it gates -------------------------------------------------------------------
@pytest.fixture()
def gated(tmp_path):
    """The middleware around a stand-in for Gradio's routes (page, upload, file=)."""
    store = SessionStore(tmp_path / "sessions")
    shelf = web_session.ExportShelf(tmp_path / "gradio")

    async def page(request):  # says which session the handlers behind the middleware see
        return PlainTextResponse(f"page {web_session.sid_of_request(request)}")

    async def upload(request):
        return PlainTextResponse("stored")

    async def action(request):  # a viewer route: says which session it sees
        return PlainTextResponse(f"action {web_session.sid_of_request(request)}")

    async def file(request):
        return FileResponse(request.path_params["path"], media_type="text/html", content_disposition_type="inline")

    async def join(request):  # Gradio's queue/join (and cancel): says what body it was given
        body = await request.body()
        try:
            return PlainTextResponse(f"joined {len(body)} {json.loads(body).get('session_hash')}")
        except (ValueError, RecursionError):
            return PlainTextResponse("Gradio's own answer", status_code=422)

    async def data(request):  # Gradio's event stream and heartbeat: the tab's outputs
        return PlainTextResponse(f"data: outputs of {request.query_params.get('session_hash')}\n\n")

    app = Starlette(routes=[Route("/", page), Route("/config", page), Route("/gradio_api/upload", upload, methods=["POST"]),
                            Route("/viewer-api/action", action, methods=["POST"]),
                            Route("/gradio_api/file={path:path}", file), Route("/gradio_api/file/{path:path}", file),
                            Route("/gradio_api/queue/join", join, methods=["POST"]),
                            Route("/gradio_api/cancel", join, methods=["POST"]),
                            Route("/gradio_api/queue/data", data), Route("/gradio_api/heartbeat/{hash}", data)])
    tokens = web_session.TokenTable(store.root / web_session.TOKENS_DIR, 3600, store.exists)
    wrapped = web_session.SessionCookieMiddleware(app, session_exists=store.exists, shelf=shelf, tokens=tokens,
                                                  max_age_s=3600, renewed_prefix="/viewer-api/")
    return TestClient(wrapped, base_url="http://127.0.0.1"), store, shelf


def test_the_page_sets_an_httponly_strict_cookie_and_the_id_is_derived_on_the_server(gated):
    client, store, _ = gated
    r = client.get("/")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and r.headers["x-content-type-options"] == "nosniff"
    token = client.cookies.get(web_session.COOKIE)
    sid = web_session.sid_of_token(token)
    assert sid and sid not in token and store.open(sid)[0].id == sid
    again = client.get("/")  # the page opens on the session again: same session, a new token (issue 23's fixation)
    assert again.text == f"page {sid}" and client.cookies.get(web_session.COOKIE) != token
    assert web_session.sid_of_token("../../etc") is None and web_session.sid_of_token("A" * 64) is None


def _as(client, token: str | None) -> TestClient:
    """``client`` sending exactly this cookie from now on (a browser whose cookie was planted or kept)."""
    client.cookies.clear()
    if token:
        client.cookies.set(web_session.COOKIE, token, domain="127.0.0.1", path="/")
    return client


def test_a_planted_cookie_stops_opening_the_session_once_the_victims_page_opens(gated):
    """Session fixation (seen in session 23's pass): a page on another port of the host can plant a cookie in the
    user's browser. The planter's own token opened the planter's session for the user, and the planter then read
    what the user opened there. Before: the victim's page kept the planted token; the planter's requests with it
    went on seeing the session."""
    client, store, _ = gated
    attacker = TestClient(client.app, base_url="http://127.0.0.1")
    attacker.get("/")
    planted = attacker.cookies.get(web_session.COOKIE)
    sid = web_session.sid_of_token(planted)
    store.open(sid)  # the attacker opened a session with it (any study, or none)
    victim = _as(client, planted)
    page = victim.get("/")
    assert page.text == f"page {sid}"  # the victim's page works on ...
    fresh = victim.cookies.get(web_session.COOKIE)
    assert fresh != planted  # ... with a token the planter never saw
    assert _as(attacker, planted).get("/config").text == "page None"  # the planted token opens nothing now
    assert _as(attacker, planted).post("/gradio_api/upload").status_code == 403
    assert _as(victim, fresh).get("/config").text == f"page {sid}"
    assert "/" not in "".join(p.name for p in (store.root / web_session.TOKENS_DIR).iterdir())


def test_a_cookie_planted_while_the_page_is_open_is_revoked_by_the_upload(gated):
    """The planted cookie arrives after the victim's page opened (no page load to rotate it): the upload of the
    victim's study gives a new token, and the planted one is dead before the study is opened with it."""
    client, store, _ = gated
    client.get("/")
    planted = client.cookies.get(web_session.COOKIE)
    sid = web_session.sid_of_token(planted)
    store.open(sid)
    victim = _as(client, planted)  # no page load after the plant
    assert victim.post("/gradio_api/upload").text == "stored"
    fresh = victim.cookies.get(web_session.COOKIE)
    assert fresh != planted and _as(victim, fresh).get("/config").text == f"page {sid}"
    attacker = _as(TestClient(client.app, base_url="http://127.0.0.1"), planted)
    assert attacker.get("/config").text == "page None"


def test_rotated_tokens_survive_a_restart_and_revoked_ones_stay_revoked(gated):
    client, store, shelf = gated
    client.get("/")
    first = client.cookies.get(web_session.COOKIE)
    sid = web_session.sid_of_token(first)
    store.open(sid)
    client.get("/")
    second = client.cookies.get(web_session.COOKIE)
    folder = store.root / web_session.TOKENS_DIR
    restarted = web_session.TokenTable(folder, 3600, store.exists)  # a new server process reads them
    assert restarted.first_token(second) == first and restarted.first_token(first) is None
    client.get("/")
    restarted = web_session.TokenTable(folder, 3600, store.exists)
    assert restarted.first_token(second) is None  # each page load revokes the token it came with
    third = client.cookies.get(web_session.COOKIE)
    assert restarted.first_token(third) == first

    # past the cookie's lifetime: expired tokens' files go, but the first token stays revoked while its session
    # lives (without its file it would be a first token again: a planted one would open the session once more)
    for entry in folder.iterdir():
        os.utime(entry, (time.time() - 7200, time.time() - 7200))
    restarted = web_session.TokenTable(folder, 3600, store.exists)
    assert restarted.first_token(first) is None and restarted.first_token(third) == third
    assert store.cleanup(now=time.time() + store.ttl_s + 60) == [sid]  # the session expires
    restarted = web_session.TokenTable(folder, 3600, store.exists)
    assert not any(folder.iterdir())  # its session gone: nothing left to guard


def test_a_first_token_costs_one_file_lookup_not_one_per_request(gated, monkeypatch):
    """Every HTTP request asks the table for its cookie's session; a session's first token (until its first reload
    or upload) has no file, and each request tried to open one. Once known, a first token is answered from memory,
    and revoking it still takes effect."""
    client, store, _ = gated
    tokens = web_session.TokenTable(store.root / web_session.TOKENS_DIR, 3600, store.exists)
    first = web_session.new_token()
    opened = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: opened.append(self) or real(self, *a, **k))
    assert [tokens.first_token(first) for _ in range(5)] == [first] * 5
    assert len(opened) == 1
    tokens.rotate(first, first)
    assert tokens.first_token(first) is None


def test_a_pacs_open_asks_for_a_new_token_first_and_only_an_open_session_gets_one(gated):
    """``POST /medseg-rotate`` (the PACS panel's Open sends it before the retrieve: a study arriving without an
    upload): a new token for the session, the one sent revoked; nothing for no session, a revoked token or a GET."""
    client, store, _ = gated
    assert client.post("/medseg-rotate").status_code == 403  # no cookie
    client.get("/")
    token = client.cookies.get(web_session.COOKIE)
    assert client.post("/medseg-rotate").status_code == 403  # a cookie, no session opened with it
    sid = web_session.sid_of_token(token)
    store.open(sid)
    assert client.get("/medseg-rotate").status_code == 403
    r = client.post("/medseg-rotate")
    fresh = client.cookies.get(web_session.COOKIE)
    assert r.status_code == 204 and fresh != token and client.get("/config").text == f"page {sid}"
    assert _as(TestClient(client.app, base_url="http://127.0.0.1"), token).post("/medseg-rotate").status_code == 403


def test_a_viewer_request_with_a_token_renewed_meanwhile_is_told_to_send_again(gated):
    """Another tab's page load renews the token while this tab's action is on its way: 409 with the renewed header
    (the viewer sends it again with the new cookie), nothing done; the new token's request goes through."""
    client, store, _ = gated
    client.get("/")
    old = client.cookies.get(web_session.COOKIE)
    sid = web_session.sid_of_token(old)
    store.open(sid)
    client.get("/")  # the other tab
    new = client.cookies.get(web_session.COOKIE)
    stale = TestClient(client.app, base_url="http://127.0.0.1")
    r = _as(stale, old).post("/viewer-api/action")
    assert r.status_code == 409 and r.headers[web_session.RENEWED_HEADER.decode()] == "1" and r.json()["renewed"]
    assert _as(stale, new).post("/viewer-api/action").text == f"action {sid}"
    fresh = _as(stale, None).post("/viewer-api/action")  # no cookie at all: the route's own answer, not a retry
    assert fresh.status_code == 200 and fresh.text == "action None"


def test_two_different_session_cookies_in_one_request_open_nothing(gated):
    """A cookie planted under a longer path (or a parent domain) is sent beside ours, first: neither is taken."""
    client, store, _ = gated
    client.get("/")
    ours = client.cookies.get(web_session.COOKIE)
    store.open(web_session.sid_of_token(ours))
    other = web_session.new_token()
    store.open(web_session.sid_of_token(other))
    raw = TestClient(client.app, base_url="http://127.0.0.1")
    header = {"cookie": f"{web_session.COOKIE}={other}; {web_session.COOKIE}={ours}"}
    assert raw.post("/gradio_api/upload", headers=header).status_code == 403
    assert raw.get("/config", headers=header).text == "page None"  # the handlers behind see no cookie either
    assert raw.get("/config", headers={"cookie": f"theme=dark; {web_session.COOKIE}={ours}"}).text != "page None"


def test_a_cross_site_navigation_reloads_instead_of_replacing_the_cookie(gated):
    client, _, _ = gated
    r = client.get("/", headers={"sec-fetch-site": "cross-site"})
    assert "set-cookie" not in r.headers and "http-equiv='refresh'" in r.text


def test_uploads_need_the_cookie_of_an_existing_session(gated):
    client, store, _ = gated
    assert client.post("/gradio_api/upload").status_code == 403
    client.get("/")  # a cookie, but no session opened with it yet
    assert client.post("/gradio_api/upload").status_code == 403
    store.open(web_session.sid_of_token(client.cookies.get(web_session.COOKIE)))
    assert client.post("/gradio_api/upload").text == "stored"


def test_exports_are_served_only_to_their_session_and_only_as_downloads(gated, tmp_path):
    client, store, shelf = gated
    client.get("/")
    sid = web_session.sid_of_token(client.cookies.get(web_session.COOKIE))
    export = tmp_path / "x_labels.nii.gz"
    export.write_bytes(b"<html>labels</html>")
    served = shelf.publish(export, sid)
    r = client.get(f"/gradio_api/file={served}")
    assert r.status_code == 200 and r.content == export.read_bytes()
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="x_labels.nii.gz"'
    stranger = TestClient(client.app, base_url="http://127.0.0.1")
    stranger.get("/")
    for route in ("/gradio_api/file=", "/gradio_api/file/", "/gradio_api/file/../file="):  # and Gradio's alias
        assert stranger.get(f"{route}{served}").status_code == 404, route
    assert client.get(f"/gradio_api/file/{served}").headers["content-disposition"].startswith("attachment")
    unknown = Path(served).parent.parent / ("0" * 32) / "x.nii.gz"
    assert client.get(f"/gradio_api/file={unknown}").status_code == 404
    assert shelf.publish(export, sid) != served  # same bytes, new URL: never shared between sessions


def _join(client: TestClient, session_hash: str, **headers):
    return client.post("/gradio_api/queue/join", json={"data": [], "fn_index": 3, "session_hash": session_hash},
                       headers=headers)


def test_a_tabs_session_hash_serves_only_the_session_that_used_it_first(gated):
    """Session 27's leftover: Gradio hands a tab's event outputs to whoever opens ``/gradio_api/queue/data`` with the
    tab's ``session_hash``. Now the hash is bound to the session (cookie) of its first request: another session or a
    client without the cookie gets one 403 line and nothing of the tab, at every route that takes the hash (query,
    path, JSON body; every value of a repeated parameter). Before: 200 with the tab's outputs."""
    client, store, _ = gated
    client.get("/")
    sid = web_session.sid_of_token(client.cookies.get(web_session.COOKIE))
    store.open(sid)
    tab = "k3v9x0q2m1a"
    joined = _join(client, tab)
    assert joined.text.startswith("joined ") and joined.text.endswith(f" {tab}")  # the body reaches Gradio whole
    assert client.get("/gradio_api/queue/data", params={"session_hash": tab}).text == f"data: outputs of {tab}\n\n"
    thief = TestClient(client.app, base_url="http://127.0.0.1")  # no cookie (curl, another program)
    other = TestClient(client.app, base_url="http://127.0.0.1")
    other.get("/")  # another browser's session
    for who in (thief, other):
        for r in (who.get("/gradio_api/queue/data", params={"session_hash": tab}),
                  who.get(f"/gradio_api/queue/data?session_hash=mine{id(who)}&session_hash={tab}"),
                  who.get(f"/gradio_api/heartbeat/{tab}"), _join(who, tab),
                  who.post("/gradio_api/cancel", json={"session_hash": tab, "fn_index": 3, "event_id": "e"})):
            assert r.status_code == 403 and r.text == web_session.STOLEN_HASH.decode(), r.text
            assert "outputs" not in r.text and "\n" not in r.text
    client.get("/")  # the page reloads: a new token, the same session
    assert client.cookies.get(web_session.COOKIE) and _join(client, tab).status_code == 200  # a late event of the tab
    assert _join(client, "secondtab01").status_code == 200  # another tab of the session: its own hash
    assert _join(thief, "gradioclie1").status_code == 200  # a cookie-less client (gradio_client) with its own hash
    assert thief.get("/gradio_api/queue/data", params={"session_hash": "gradioclie1"}).status_code == 200
    assert _join(client, "gradioclie1").status_code == 403  # ... is its own too


def test_the_hash_read_from_a_join_body_keeps_gradios_own_answers_and_limits(gated):
    """The join body is read whole here to find the hash: a body that is not JSON (or nested past the parser) goes to
    Gradio as sent, for its own 400/422; past Gradio's body limit it is refused here, as BodyLimit would, one line."""
    client, _, _ = gated
    r = client.post("/gradio_api/queue/join", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.text == "Gradio's own answer"
    client.app.hash_body_bytes = 1000
    big = {"data": ["x" * 2000], "session_hash": "bigbody0001"}
    declared = client.post("/gradio_api/queue/join", json=big)
    assert declared.status_code == 413 and "over the limit of 1 KiB" in declared.text, declared.text

    def chunks():
        yield json.dumps(big).encode()

    counted = client.post("/gradio_api/queue/join", content=chunks())  # chunked: no Content-Length
    assert counted.status_code == 413 and counted.text == "the request body is over the limit of 1 KiB for this route"


def test_the_hash_table_is_bounded_and_forgets_the_least_recently_used():
    table = web_session.HashBinding(size=3)
    assert table.admits("a", "s1") and table.admits("b", None) and table.admits("c", "s2")
    assert table.admits("a", "s1")  # used again: now the most recent
    assert table.admits("d", "s3")  # "b" forgotten
    assert not table.admits("a", "s9") and not table.admits("c", None) and table.admits("b", "s9")
    huge = "h" * 2**20 + "\ud800"  # a JSON body's hash may be any length (and a lone surrogate): kept as a digest
    assert table.admits(huge, None) and not table.admits(huge, "s1") and {len(k) for k in table._sids} == {32}


@pytest.fixture()
def slow_server(tmp_path):
    """The middleware around a stand-in app on a real uvicorn (as Gradio starts it), the body deadline 1 s."""
    async def echo(request):
        return PlainTextResponse(f"got {len(await request.body())}")

    async def slow_answer(request):
        await request.body()

        async def parts():
            for _ in range(3):
                await asyncio.sleep(0.4)
                yield b"part "

        return StreamingResponse(parts())

    async def whoami(request):
        return PlainTextResponse(f"session {web_session.sid_of_request(request)}")

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/slow", slow_answer, methods=["POST"]),
                            Route("/gradio_api/upload", echo, methods=["POST"]), Route("/whoami", whoami),
                            Route("/", whoami)])
    store = SessionStore(tmp_path / "sessions")
    tokens = web_session.TokenTable(store.root / web_session.TOKENS_DIR, 3600, store.exists)
    wrapped = web_session.SessionCookieMiddleware(app, session_exists=store.exists, shelf=web_session.ExportShelf(
        tmp_path / "gradio"), tokens=tokens, max_age_s=3600)
    wrapped.body_timeout_s = 1.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(wrapped, host="127.0.0.1", port=port, log_level="warning",
                                           log_config=None))  # its errors reach caplog
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port, store
    server.should_exit = True
    thread.join(10)


def _raw(port: int, head: bytes, parts: list[bytes], gap_s: float) -> tuple[bytes, float]:
    """Send ``head`` then each of ``parts`` ``gap_s`` apart; -> (all answered until the server closed, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=6) as s:
        t0 = time.monotonic()
        s.sendall(head)
        for part in parts:
            time.sleep(gap_s)
            s.sendall(part)
        reply = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break  # still open after 6 s of silence
            if not chunk:
                break
            reply += chunk
        return reply, time.monotonic() - t0


@pytest.mark.parametrize("framing", ["length", "chunked", "headers only"])
def test_a_request_body_that_stops_arriving_is_answered_408_and_closed(slow_server, framing):
    """A client sending its body a byte a minute held its connection for ever (uvicorn has no body timeout; Gradio
    passes it no options). Now: one 408 line once no part came for the deadline, and the connection is closed.
    Before: no answer (the socket still open after 6 s)."""
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n" if framing == "chunked" else
        b"Content-Length: 100\r\n\r\n" + (b"0123456789" if framing == "length" else b""))
    reply, seconds = _raw(slow_server[0], head, [], 0)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert reply.endswith(b"\r\n\r\n" + web_session.SLOW_BODY) and b"connection: close" in reply.lower()
    assert 0.9 < seconds < 5


def test_an_upload_cut_by_the_deadline_leaves_the_sessions_cookie_working(slow_server):
    """An upload into a session renews its token, given with the answer: a stalled upload's 408 gives none, so the
    token it carried must stay (before: revoked with no new one sent; the page's next load began a new session)."""
    port, store = slow_server
    token = web_session.new_token()
    sid = web_session.sid_of_token(token)
    store.open(sid)
    cookie = f"Cookie: {web_session.COOKIE}={token}\r\n".encode()
    head = b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie + b"Content-Length: 100\r\n\r\n0123"
    reply, _ = _raw(port, head, [], 0)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"set-cookie" not in reply.lower(), reply
    reply, _ = _raw(port, b"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + cookie + b"\r\n", [], 0)
    assert reply.endswith(f"session {sid}".encode()), reply


def test_an_upload_whose_token_was_revoked_while_it_arrived_renews_nothing(slow_server):
    """The token is renewed as the upload's answer starts: a planter's own slow upload with the planted token, begun
    before the victim's page renewed it, must not get a new token into the victim's session when it ends."""
    port, store = slow_server
    planted = web_session.new_token()
    sid = web_session.sid_of_token(planted)
    store.open(sid)
    cookie = f"Cookie: {web_session.COOKIE}={planted}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=6) as planter:
        planter.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + cookie
                        + b"Content-Length: 8\r\n\r\n0123")
        time.sleep(0.1)
        page, _ = _raw(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + cookie + b"\r\n", [], 0)
        assert page.endswith(f"session {sid}".encode()) and b"set-cookie" in page.lower()  # the victim's, renewed
        planter.sendall(b"4567")
        answer = b""
        while chunk := planter.recv(65536):
            answer += chunk
    assert answer.endswith(b"got 8") and b"set-cookie" not in answer.lower(), answer


def test_a_client_leaving_mid_body_leaves_no_traceback(slow_server, caplog):
    """The app reading a body whose client left fails (Starlette's ``ClientDisconnect``): nobody to answer, so not
    logged. Before: uvicorn's ``Exception in ASGI application`` and a traceback in the server's log."""
    with socket.create_connection(("127.0.0.1", slow_server[0]), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789")
        time.sleep(0.1)
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_body_arriving_in_slow_parts_within_the_deadline_and_a_long_answer_pass(slow_server):
    """Each part within the deadline (the whole body longer than it): answered; an answer streaming longer than the
    deadline after its body came is not cut (the deadline stops with the body's last part)."""
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 40\r\n\r\n"
    reply, seconds = _raw(slow_server[0], head, [b"0123456789"] * 4, 0.4)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"got 40") and seconds > 1.5
    head = b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    reply, seconds = _raw(slow_server[0], head, [], 0)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"part ") == 3 and seconds > 1


# --- uploads: folders, refusals, quotas --------------------------------------------------------------
@pytest.fixture()
def ctx(tmp_path):
    runner = ModelRunner("cpu")
    return AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))


def _uploads(ctx, sid) -> list[Path]:
    folder = ctx.store.get(sid).directory / "uploads"
    return sorted(p for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture()
def limits(monkeypatch):
    def set_(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        get_settings.cache_clear()

    yield set_
    get_settings.cache_clear()


def test_refused_uploads_leave_nothing_and_opened_ones_replace_the_last(ctx, tmp_path, limits):
    limits(MEDSEG_MAX_UNZIPPED_MB=1)
    sid = controller.start(ctx, None).session_id
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.dcm", b"\0" * (3 << 20))
    for bad in (bomb, tmp_path / "evil.html"):
        if bad.suffix == ".html":
            bad.write_text("<script>alert(1)</script>")
        with pytest.raises(Exception):
            controller.open_upload(ctx, sid, [str(bad)])
        assert _uploads(ctx, sid) == []  # nothing of it kept
    controller.open_upload(ctx, sid, [str(NIFTI)])
    controller.open_upload(ctx, sid, [str(NIFTI)])  # the same second: its own folder
    (kept,) = _uploads(ctx, sid)
    assert Path(ctx.store.get(sid).study_path).is_relative_to(kept)  # the earlier one is gone


def test_disk_quotas_refuse_before_copying(ctx, limits):
    size_mb = NIFTI.stat().st_size / 2**20
    limits(MEDSEG_SESSION_DISK_MB=size_mb / 2)
    sid = controller.start(ctx, None).session_id
    with pytest.raises(Exception, match="disk quota"):
        controller.open_upload(ctx, sid, [str(NIFTI)])
    assert _uploads(ctx, sid) == []
    limits(MEDSEG_SESSION_DISK_MB=1024, MEDSEG_TOTAL_DISK_MB=size_mb * 1.5)
    controller.open_upload(ctx, sid, [str(NIFTI)])
    other = controller.start(ctx, None).session_id  # the store now holds one upload: no room for a second
    with pytest.raises(Exception, match="disk quota"):
        controller.open_upload(ctx, other, [str(NIFTI)])


def test_a_session_holds_at_most_max_studies(ctx, limits):
    limits(MEDSEG_MAX_STUDIES=1)
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(NIFTI)])
    with pytest.raises(SessionError, match="MEDSEG_MAX_STUDIES"):
        controller.open_upload(ctx, sid, [str(NIFTI)])
    assert len(_uploads(ctx, sid)) == 1
    assert Settings.from_env({"MEDSEG_MAX_STUDIES": "3", "MEDSEG_TOTAL_DISK_MB": "10"}).max_studies == 3


def test_width_zero_is_one_clear_error(ctx):
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, "CT head (DICOM series, 12 slices)")
    for width in (0, -5):
        with pytest.raises(ValueError, match="window width must be positive"):
            controller.set_display(ctx, sid, "custom", 40, width, 0.45, "point +")
    # an emptied Width box and Enter: said as the user sees it (it said "got None", Python's word, in the browser)
    with pytest.raises(ValueError, match=r"^window width must be positive: the Width box is empty$"):
        controller.set_display(ctx, sid, "custom", 40, None, 0.45, "point +")
    assert ctx.store.get(sid).view.width == 400


# --- the prefetcher after a study change ---------------------------------------------------------------
def test_prefetch_jobs_of_a_closed_study_are_dropped_without_a_traceback(tmp_path, caplog, litemedsam):
    runner = ModelRunner("cpu", idle_after_s=0.0)
    prefetcher = Prefetcher(runner, radius=1)
    store = SessionStore(tmp_path / "sessions")
    session = store.create()
    ct, mr = read_study(CT), read_study(NIFTI)
    session.start_study(mr, str(NIFTI), "mr")
    view = "coronal"
    last = Plane.of(mr, view).count(mr.array.shape[:3]) - 1
    assert last - 1 >= Plane.of(ct, view).count(ct.array.shape[:3])  # the queued plane is not in the next study
    caplog.set_level(logging.DEBUG, logger="app.interaction")
    with runner.turn():  # the model is busy: the jobs wait
        prefetcher.request(session, view, last)
        session.start_study(ct, str(CT), "ct")
        session.view.view = view
    deadline = time.monotonic() + 60
    while not prefetcher.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    prefetcher.stop()
    assert prefetcher.idle()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


# --- export file names --------------------------------------------------------------------------------
def test_a_deidentified_export_is_not_named_after_the_upload_in_either_format(ctx, tmp_path):
    """OsiriX and Horos name their exports ``Name - Study``: the UI's NIfTI download was
    ``DOE_JANE_-_CT_head_labels.nii.gz`` although the export de-identifies (the SEG was already
    ``deidentified_seg.dcm``). Mailed or uploaded, the file name gave the patient away."""
    upload = tmp_path / "DOE JANE - CT head.zip"
    with zipfile.ZipFile(upload, "w") as z:
        for f in sorted(CT.glob("*.dcm")):
            z.write(f, f"DOE JANE/{f.name}")
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(upload)])
    ctx.store.get(sid).labels[5, 100:120, 100:120] = 1
    names = {}
    for fmt in ("nifti", "dicom-seg"):
        for keep in (False, True):
            path, vm = controller.export(ctx, sid, fmt, keep_identifiers=keep)
            assert path.is_file() and path.name in vm.status
            names[fmt, keep] = path.name
    assert names["nifti", False] == "deidentified_labels.nii.gz"
    assert names["dicom-seg", False] == "deidentified_seg.dcm"
    # kept on purpose (the box says the identifiers are kept): the study's name, as before
    assert names["nifti", True] == "DOE_JANE_-_CT_head_labels.nii.gz"
    assert names["dicom-seg", True] == "DOE_JANE_-_CT_head_seg.dcm"


@pytest.mark.parametrize("stem", ["CT head " + "x" * 237, "頭部CT検査 " * 16])
def test_an_export_keeping_identifiers_of_an_upload_with_a_long_name_fits_a_file_name(ctx, tmp_path, stem):
    """A zip named with up to 255 bytes (what the file system allows; a CD export's description and the patient's
    name make long ones) opens; exported with *Keep patient identifiers*, ``<study>_labels.nii.gz`` was longer than
    255 bytes and the export failed with ``File name too long`` (session 18). The study's part is cut to 100 bytes."""
    upload = tmp_path / f"{stem}.zip"
    assert len(upload.name.encode()) <= 255
    with zipfile.ZipFile(upload, "w") as z:
        for f in sorted(CT.glob("*.dcm")):
            z.write(f, f"s/{f.name}")
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(upload)])
    ctx.store.get(sid).labels[5, 100:120, 100:120] = 1
    for fmt, suffix in (("nifti", "_labels.nii.gz"), ("dicom-seg", "_seg.dcm")):
        path, vm = controller.export(ctx, sid, fmt, keep_identifiers=True)
        assert path.is_file() and path.name in vm.status and path.name.endswith(suffix)
        kept = path.name.removesuffix(suffix)
        assert len(kept.encode()) <= 100 and stem.replace(" ", "_").startswith(kept), kept


def test_the_ui_export_of_an_mni_space_upload_keeps_its_space_codes(ctx, tmp_path):
    """The UI reads uploads in a child process (data.isolated_read): the source's NIfTI codes must survive it."""
    import nibabel as nib

    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(NIFTI)])
    ctx.store.get(sid).labels[2, 30:40, 30:40] = 1
    path, _ = controller.export(ctx, sid, "nifti")
    out, source = nib.load(str(path)), nib.load(str(NIFTI))
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (4, 4)
    assert abs(out.affine - source.affine).max() < 1e-4
