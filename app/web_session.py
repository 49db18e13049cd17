"""The browser's hold on a session: an HttpOnly cookie, and the only door to session files.

Why: the page used to keep the session id in localStorage, wrapped with a key that Gradio sends to
every client in the page config, so any script on the origin (a stored upload served inline) could
read and unwrap it; and exports were served by a URL with the id in it, to anyone.

Now the server sets ``medseg_session`` (HttpOnly, SameSite=Strict, path /) holding a random
256-bit token when a page is opened without one. Page scripts cannot read it. The session id is
``sha256(token)[:32]``: it names the session folder on disk, so nothing on disk, in a log or in a
path is the credential itself. Every handler checks that the event's cookie is the session's
(:func:`sid_of_request`).

:class:`SessionCookieMiddleware` (plain ASGI, so Gradio's event streams pass untouched) also:
- refuses ``/gradio_api/upload`` without the cookie of an existing session (403);
- serves exports (:class:`ExportShelf`) only to the session that made them (404 otherwise), as
  ``Content-Disposition: attachment`` with ``application/octet-stream``;
- answers a cross-site navigation without the cookie (SameSite=Strict withholds it) with a page that
  reloads itself from the same site, so the cookie arrives instead of a new one replacing it;
- adds ``X-Content-Type-Options: nosniff`` to every response;
- gives the browser a new token, and revokes the one it sent, when a page opens on an existing session, when a
  file is uploaded into one, and on ``POST /medseg-rotate`` (the PACS panel's open asks first; :class:`TokenTable`):
  a token planted in the user's browser (cookies ignore ports, so any page on another port of the same host can set
  one) stops working before the user's study arrives;
- without a token (loopback), answers only requests addressed to a loopback name: DNS rebinding made a
  page of another site same-origin with the server (``MEDSEG_ALLOWED_ROOTS`` files were its to read);
- binds each Gradio ``session_hash`` to the session of the first request that uses it (:class:`HashBinding`): whoever
  knew a tab's hash opened its event stream and took the tab's outputs;
- answers 408 to a request body whose next part does not come within ``MEDSEG_BODY_TIMEOUT_S`` (:class:`_BodyClock`):
  a body sent a byte a minute held its connection for ever (uvicorn, as Gradio starts it, has no such timeout).
Session folders are never served: ``app.ui.launch`` puts the session root in Gradio's
``blocked_paths``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

from app.access import is_loopback_host_header, make_private
from app.body_limit import GRADIO_BODY_BYTES, serve_refusal

COOKIE = "medseg_session"
TOKEN = re.compile(r"^[0-9a-f]{64}$")
EXPORTS_DIR = "medseg-exports"  # under Gradio's cache folder
RELOAD_PAGE = b"<!doctype html><meta http-equiv='refresh' content='0'><title>medseg</title>"
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")  # Gradio's file route and its deprecated alias
PAGE_PATHS = ("/", "/config")  # where a missing cookie is issued (the page and its configuration)


ROTATE_PATHS = ("/",)  # a GET here on an existing session gets a new token (uploads too: _rotates)
ROTATE_URL = "/medseg-rotate"  # POST: a new token for the session, before a study arrives another way (the PACS)
REVOKED = "revoked"
RENEWED_HEADER = b"x-medseg-renewed"  # on that 409 (viewer/src/util.ts reads it; 409 alone: another study opened)
RENEWED = json.dumps({"ok": False, "renewed": True, "error": "this tab's session token was renewed by another tab or "
                      "an upload: send it again"}).encode()
NO_FILE = ""  # TokenTable's memory of a token without a file (a first token); safe to keep, as this process is
# the state folder's only server (app.session's flock) and writes every change through _write, which replaces it
TOKENS_DIR = ".tokens"  # under the session root (never served: the root is in Gradio's blocked_paths)
BODY_TIMEOUT_S = 30.0  # the longest wait for a request body's next part (MEDSEG_BODY_TIMEOUT_S; app.settings)
SLOW_BODY = b"the request body stopped arriving (nothing for a while): send it again"
HASH_BINDINGS = 20_000  # Gradio session hashes remembered (least recently used forgotten first)
STOLEN_HASH = b"refused: this page's event stream belongs to another session (reload the page)"
# Gradio's routes that take a tab's session_hash: in the JSON body (POST), in the path (GET); any other
# /gradio_api/ request carries it in its query string (queue/data, deep_link)
HASH_IN_BODY = ("/gradio_api/queue/join", "/gradio_api/cancel", "/gradio_api/component_server")
HASH_IN_BODY_PREFIXES = ("/gradio_api/run/", "/gradio_api/api/")
HASH_IN_PATH = ("/gradio_api/heartbeat/", "/gradio_api/stream/")


def new_token() -> str:
    return secrets.token_hex(32)


def rotate_first_js(inputs: int) -> str:
    """A Gradio event's ``js=``: ask for a new token before the event leaves (its request then carries the new one).
    For the ways a study enters a session without an upload (a PACS retrieve). ``inputs``: the event's input count,
    passed on unchanged. A failed request is no reason to keep the study from opening: the event goes anyway."""
    return (f"async (...args) => {{ try {{ await fetch('{ROTATE_URL.lstrip('/')}', {{method: 'POST', "
            f"credentials: 'same-origin'}}) }} catch (e) {{}} return args.slice(0, {int(inputs)}) }}")


class TokenTable:
    """Which session a cookie token opens, once tokens have been rotated; kept on disk to survive a restart.

    Why: the session id is ``sha256(token)[:32]`` of the session's *first* token, so a token that an attacker was
    issued (any visit gets one) and planted in the user's browser opened the attacker's session for the user, and
    the attacker then read what the user opened and drew (session fixation; signing tokens does not help: the
    planted token is a genuine one). Now the token changes when a page opens on an existing session and when a
    file is uploaded into it: the new token maps to the session's first token (downstream code keeps deriving the
    session id from that), and the token sent is revoked. The planter never learns the new token.

    One file per token ever rotated, named by the token's sha256 (the folder never holds a live token in its
    name): it holds the session's first token, or ``revoked``. A token without a file is a first token. The first
    token stored in a file is revoked itself: reading it off the disk opens nothing. At start, files older than the
    cookie's lifetime go (their cookies have expired), except a revoked first token's while its session exists:
    without its file it would open the session again. A first token's file name begins with its session id
    (the id is ``sha256(token)[:32]``).
    """

    CACHED = 4096  # entries kept in memory (the rest are read from disk)

    def __init__(self, folder: str | Path, max_age_s: float, session_exists: Callable[[str], bool]):
        self.folder = Path(folder)
        make_private(self.folder)
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        now = time.time()
        for entry in self.folder.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime <= max_age_s:
                    continue
                if entry.read_text().strip() == REVOKED and session_exists(entry.name[:32]):
                    continue  # a first token that was planted or kept: revoked for as long as its session lives
                entry.unlink()

    @staticmethod
    def _name(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def _entry(self, token: str) -> str | None:
        name = self._name(token)
        with self._lock:
            if name in self._known:
                self._known.move_to_end(name)
                return self._known[name] or None
        try:
            value = (self.folder / name).read_text().strip()
        except FileNotFoundError:
            value = NO_FILE  # a first token, the common case: remembered too, or each request opened a file
        except OSError:
            return None
        self._remember(name, value)
        return value or None

    def _remember(self, name: str, value: str) -> None:
        with self._lock:
            self._known[name] = value
            self._known.move_to_end(name)
            while len(self._known) > self.CACHED:
                self._known.popitem(last=False)

    def first_token(self, token: str | None) -> str | None:
        """The session's first token that ``token`` stands for; None for a revoked (or no) token."""
        if token is None:
            return None
        entry = self._entry(token)
        if entry is None:
            return token
        return entry if TOKEN.match(entry) else None

    def rotate(self, token: str, first: str) -> str:
        """A new token for ``first``'s session; ``token`` (the one sent) is revoked. The new token's file is written
        before the revocation, and both before the browser hears of it, so a crash leaves a working cookie."""
        fresh = new_token()
        self._write(fresh, first)
        self._write(token, REVOKED)
        if first != token:
            self._write(first, REVOKED)  # the first token stays revoked whatever happened before
        return fresh

    def _write(self, token: str, value: str) -> None:
        name = self._name(token)
        tmp = self.folder / f".{name}.{secrets.token_hex(4)}"
        tmp.write_text(value)
        os.replace(tmp, self.folder / name)
        self._remember(name, value)


def sid_of_token(token: str | None) -> str | None:
    """The session id a cookie token stands for (None for anything that is not a token we issue)."""
    if not isinstance(token, str) or not TOKEN.match(token):
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def token_of_request(request: Any) -> str | None:
    """The cookie token of a ``gr.Request`` / starlette request (None when absent)."""
    raw = getattr(request, "request", None) or request  # gr.Request wraps the starlette request
    cookies = getattr(raw, "cookies", None)
    if cookies is None and hasattr(request, "kwargs"):
        cookies = request.kwargs.get("cookies")
    try:
        token = dict(cookies or {}).get(COOKIE)
    except (TypeError, ValueError):
        return None
    return token if isinstance(token, str) and TOKEN.match(token) else None


def sid_of_request(request: Any) -> str | None:
    return sid_of_token(token_of_request(request))


def cookie_header(token: str, max_age_s: int) -> bytes:
    return f"{COOKIE}={token}; Path=/; Max-Age={int(max_age_s)}; HttpOnly; SameSite=Strict".encode()


class ExportShelf:
    """Exports copied into Gradio's cache under a random folder each, with the session that owns them.

    Gradio serves files of its cache by path; the middleware checks the owner first. Names are not
    content hashes (Gradio's own scheme), so two sessions exporting identical bytes never share a URL.
    """

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir).resolve() / EXPORTS_DIR
        make_private(self.root.parent)  # Gradio's cache: every accepted upload stays there too (0644) until expiry
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def publish(self, path: str | Path, sid: str) -> str:
        """Copy ``path`` to a fresh folder of the shelf; returns the copy Gradio will serve."""
        folder = self.root / secrets.token_hex(16)
        make_private(self.root)  # the copies take the umask's mode (0644): other accounts read every export here
        folder.mkdir(exist_ok=False)
        target = folder / Path(path).name
        shutil.copyfile(path, target)
        with self._lock:
            self._owners[str(target)] = sid
        return str(target)

    def owner(self, path: str) -> str | None:
        with self._lock:
            return self._owners.get(path)

    def holds(self, path: str) -> bool:
        """True for any path under the shelf (owned or not: unknown ones are refused, not passed on)."""
        try:
            return Path(path).resolve().is_relative_to(self.root)
        except (OSError, ValueError):
            return True  # unparseable: refuse


class HashBinding:
    """Which session first used each Gradio ``session_hash``; a later request with that hash from another is refused.

    Why: Gradio keys a tab's events by the hash its page draws (11 characters of ``Math.random``) and hands a tab's
    outputs (status lines, the viewer state) to whoever opens ``/gradio_api/queue/data?session_hash=H``; a client that
    knew the hash opened the stream first and took them, and could join, cancel or end (heartbeat) the tab's events.
    The handlers check the cookie, the stream did not.

    The session is ``sid_of_token`` of the request's cookie (the session's first token: the same across token
    rotation, so a renewed cookie keeps its tab's hash); None for a client without our cookie (gradio_client, curl),
    which keeps its own hashes as before. A page reload draws a new hash, two tabs of one session have two hashes
    of one session: all pass. First come, first bound: the hash is drawn in the user's browser and used at once
    (the heartbeat as the page opens), so another client can only be first by knowing it before it was ever sent.
    At most ``size`` hashes are kept, least recently used forgotten first; a live tab uses its hash on every event.
    """

    def __init__(self, size: int = HASH_BINDINGS):
        self.size = size
        self._sids: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def admits(self, session_hash: str, sid: str | None) -> bool:
        """True when ``session_hash`` is new (now bound to ``sid``) or already ``sid``'s."""
        key = hashlib.sha256(session_hash.encode("utf-8", "surrogatepass")).hexdigest()[:32]  # a client picks its
        with self._lock:  # hash's length (a JSON body's up to 39 MiB): 20,000 of them are kept by a fixed-size digest
            if key in self._sids:
                self._sids.move_to_end(key)
                return self._sids[key] == sid
            self._sids[key] = sid
            while len(self._sids) > self.size:
                self._sids.popitem(last=False)
            return True


class _BodyClock:
    """A request's ``receive`` and ``send`` with a deadline on each part of its body.

    Why: a client sending its body a byte a minute held a connection (and whatever the route had read) for ever;
    uvicorn, as Gradio starts it (``gradio.http_server``: no options passed on), times out only idle keep-alive
    connections. Past ``timeout_s`` without a part: a one-line 408 (``Connection: close``) if nothing was answered
    yet, and the app reading on is told the client left (its own answer to that is dropped). Once the body is
    whole, ``receive`` is the server's own again (a stream waits on it for the client's disconnect). The app's failure
    on a body cut short (Starlette's ``ClientDisconnect``) is nobody's to read: not logged as a traceback."""

    def __init__(self, receive, send, timeout_s: float):
        self._receive, self._send, self.timeout_s = receive, send, timeout_s
        self.whole = False  # the body's last part arrived
        self.late = False  # the deadline passed: the request is over
        self.gone = False  # the client left before its body was whole
        self.started = False  # a response has begun (the app's or our 408)

    async def receive(self):
        if self.late:
            return {"type": "http.disconnect"}
        if self.whole:
            return await self._receive()
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per part, as wait_for would make
                message = await self._receive()
        except TimeoutError:
            self.late = True
            if not self.started:
                self.started = True
                await _plain(self._send, 408, SLOW_BODY, extra=[(b"connection", b"close")])
            return {"type": "http.disconnect"}
        self.gone = message["type"] == "http.disconnect"
        self.whole = self.gone or not message.get("more_body", False)
        return message

    @property
    def cut(self) -> bool:
        """The request ended without its whole body: what the app answers is dropped."""
        return self.late or self.gone

    async def send(self, message) -> None:
        if self.cut and message["type"].startswith("http.response"):
            return  # the 408 is the answer, the app's own was cut off, or no one is there to read it
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length", "").strip()
    return bool(headers.get("transfer-encoding")) or (length not in ("", "0"))


class SessionCookieMiddleware:
    """ASGI middleware: issue the cookie, gate uploads and exports, never let a download render."""

    def __init__(self, app, *, session_exists: Callable[[str], bool], shelf: ExportShelf, tokens: TokenTable,
                 max_age_s: float, loopback_names_only: bool = False, renewed_prefix: str | None = None,
                 body_timeout_s: float = BODY_TIMEOUT_S, hash_body_bytes: int = GRADIO_BODY_BYTES):
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.hashes = HashBinding()
        self.hash_body_bytes = hash_body_bytes  # the hash-bearing JSON bodies read here: BodyLimit's limit for them
        self.session_exists = session_exists
        self.shelf = shelf
        self.tokens = tokens
        self.renewed_prefix = renewed_prefix  # routes whose client sends again on 409 (the viewer's: app.viewer.api)
        self.max_age_s = int(max_age_s)
        self.loopback_names_only = loopback_names_only  # a server without a token: refuse DNS-rebound names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not _has_body(headers):
            return await self._serve(scope, headers, receive, send)
        clock = _BodyClock(receive, send, self.body_timeout_s)
        try:
            await self._serve(scope, headers, clock.receive, clock.send, clock)
        except Exception:
            if not clock.cut:
                raise  # the app failed on a body that never came whole: no one to answer, nothing to report

    async def _serve(self, scope, headers: dict[str, str], receive, send, clock: "_BodyClock | None" = None):
        sent = _cookie(headers.get("cookie", ""))
        token = self.tokens.first_token(sent)
        if token != sent or (sent is None and COOKIE in headers.get("cookie", "")):
            # the handlers behind see the session's first token; none for a revoked token or two different ones
            scope = {**scope, "headers": _with_cookie(scope.get("headers", []), token)}
        sid = sid_of_token(token)
        path = scope.get("path", "")
        root = scope.get("root_path", "") or ""
        local = path[len(root):] if root and path.startswith(root) else path
        method = scope.get("method", "GET")

        if self.loopback_names_only and not is_loopback_host_header(headers.get("host")):
            return await _plain(send, 403, b"this server has no token, so it answers only requests to localhost or "
                                           b"a loopback address (DNS rebinding); set MEDSEG_TOKEN to serve other names")
        if _from_another_sites_page(headers):
            return await _plain(send, 403, b"refused: this request comes from another page than medseg's own (another "
                                           b"site, or another port of this host); open medseg's page itself")
        if local.endswith("/gradio_api/upload") and method == "POST":
            if sid is None or not self.session_exists(sid):
                return await _plain(send, 403, b"uploads need an open session: reload the page")
        marker = next((m for m in FILE_ROUTES if m in local), None)
        if marker is not None:
            served = unquote(local.split(marker, 1)[1])
            if self.shelf.holds(served):
                owner = self.shelf.owner(str(Path(served).resolve())) if served else None
                if owner is None or owner != sid:
                    return await _plain(send, 404, b"not found")
                return await self.app(scope, receive, _with_headers(send, attachment=Path(served).name))
        if sent is not None and token is None and self.renewed_prefix and local.startswith(self.renewed_prefix):
            # another tab renewed the token while this request was on its way: nothing was done, the page sends it
            # again with the browser's new cookie (a brush stroke was refused, with "allow cookies", before)
            return await _plain(send, 409, RENEWED, b"application/json", extra=[(RENEWED_HEADER, b"1")])
        if local.startswith("/gradio_api/"):
            receive = await self._bound_hashes(scope, local, method, sid, receive, send)
            if receive is None:
                return None
        if local == ROTATE_URL:
            if method != "POST" or sid is None or not self.session_exists(sid):
                return await _plain(send, 403, b"a new session token needs the cookie of an open session (POST)")
            fresh = cookie_header(self.tokens.rotate(sent, token), self.max_age_s)
            return await _plain(send, 204, b"", extra=[(b"set-cookie", fresh)])
        issue: bytes | Callable[[], bytes | None] | None = None
        if method == "GET" and local in PAGE_PATHS and sid is None:
            if headers.get("sec-fetch-site") == "cross-site":
                return await _plain(send, 200, RELOAD_PAGE, b"text/html; charset=utf-8")
            issue = cookie_header(new_token(), self.max_age_s)
        elif sid is not None and self._rotates(method, local) and self.session_exists(sid):
            # renewed as the answer starts, the new token in it: an answer never sent (the client left, a stalled
            # body's 408) revokes nothing, or the browser kept a dead token and its next page began a new session
            def renewed() -> bytes | None:
                if clock is not None and clock.cut:
                    return None  # this answer is dropped: the token it would carry is not made
                if self.tokens.first_token(sent) != token:
                    return None  # revoked while the request ran (a page renewed it): a planter's slow upload gets none
                return cookie_header(self.tokens.rotate(sent, token), self.max_age_s)

            issue = renewed
        return await self.app(scope, receive, _with_headers(send, cookie=issue))

    async def _bound_hashes(self, scope, local: str, method: str, sid: str | None, receive, send):
        """The request's ``receive`` (a JSON body read here is replayed) when every session hash it names is new or
        ``sid``'s; None when it was answered here (403 for another session's hash, 413, the client gone)."""
        hashes = [v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                  if k == "session_hash"]  # every value: which one a route reads is the framework's business
        route = local.rstrip("/")
        prefix = next((p for p in HASH_IN_PATH if local.startswith(p)), None)
        if prefix and method in ("GET", "HEAD"):
            hashes.append(local[len(prefix):].split("/", 1)[0])
        if method == "POST" and (route in HASH_IN_BODY or route.startswith(HASH_IN_BODY_PREFIXES)):
            body = await self._json_body(scope, receive, send)
            if body is None:
                return None
            if isinstance(body[1], str):
                hashes.append(body[1])
            receive = _replay(body[0], receive)
        for session_hash in hashes:
            if not self.hashes.admits(session_hash, sid):
                await _plain(send, 403, STOLEN_HASH)
                return None
        return receive

    async def _json_body(self, scope, receive, send) -> tuple[bytes, Any] | None:
        """(the body, its ``session_hash`` or None) read whole, up to ``hash_body_bytes``; None when answered here."""
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.hash_body_bytes:
            await serve_refusal(scope, self.hash_body_bytes, int(declared))(scope, receive, send)
            return None
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left (or the body's deadline passed: already answered)
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.hash_body_bytes:
                await serve_refusal(scope, self.hash_body_bytes, None)(scope, receive, send)
                return None
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            value = None  # not JSON: Gradio answers it (400 or 422)
        return body, value.get("session_hash") if isinstance(value, dict) else None

    @staticmethod
    def _rotates(method: str, local: str) -> bool:
        """A page opening on a session, or a file arriving in it: the moments a planted token must stop working."""
        uploads = method == "POST" and local.endswith("/gradio_api/upload")
        return uploads or (method == "GET" and local in ROTATE_PATHS)


def _replay(body: bytes, receive):
    """``receive`` giving ``body`` whole first (it was read to find the session hash), then the server's messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


def _from_another_sites_page(headers: dict[str, str]) -> bool:
    """A script, image or form of another page (``Sec-Fetch-Site`` same-site or cross-site, not a navigation).

    Our page asks only its own origin. Browsers count other ports of this host as the same site, so a page on
    ``localhost:8080`` sends our SameSite cookie, and Gradio's CORS answers any localhost origin with credentials:
    without this it read the session's study and labels and posted actions into it. Navigations (a link to the page)
    and clients without ``Sec-Fetch-*`` (curl, scripts) pass as before."""
    return (headers.get("sec-fetch-site") in ("same-site", "cross-site")
            and headers.get("sec-fetch-mode", "navigate") != "navigate")


def _cookie(header: str) -> str | None:
    """Our token in a Cookie header; None when absent, malformed, or sent twice with different values (a cookie
    planted under another path or domain rides along with ours: neither is trusted)."""
    values = {part.split("=", 1)[1].strip().strip('"') for part in header.split(";")
              if "=" in part and part.split("=", 1)[0].strip() == COOKIE}
    if len(values) != 1:
        return None
    token = values.pop()
    return token if TOKEN.match(token) else None


def _with_cookie(headers: list, token: str | None) -> list:
    """The request's headers with our cookie set to ``token`` (removed for None), other cookies kept."""
    out, jar = [], []
    for k, v in headers:
        if k.lower() != b"cookie":
            out.append((k, v))
            continue
        jar += [c for c in v.decode("latin-1").split(";") if c.strip() and c.split("=", 1)[0].strip() != COOKIE]
    if token is not None:
        jar.append(f" {COOKIE}={token}")
    if jar:
        out.append((b"cookie", ";".join(c.strip() for c in jar).encode("latin-1")))
    return out


def _with_headers(send, *, cookie: bytes | Callable[[], bytes | None] | None = None, attachment: str | None = None):
    """Add our headers to the response start; ``cookie``: a Set-Cookie value, or made then (a token renewed as the
    answer starts); ``attachment``: the download's file name (forces a download)."""
    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])
                       if not (attachment and k.lower() in (b"content-type", b"content-disposition"))]
            headers.append((b"x-content-type-options", b"nosniff"))
            if attachment:
                name = "".join(c for c in attachment if c.isascii() and (c.isalnum() or c in "._-")) or "download"
                headers += [(b"content-type", b"application/octet-stream"),
                            (b"content-disposition", f'attachment; filename="{name}"'.encode())]
            value = cookie() if callable(cookie) else cookie
            if value:
                headers.append((b"set-cookie", value))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _plain(send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
                 extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
