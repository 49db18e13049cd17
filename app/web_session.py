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
- without a token (loopback), answers only requests addressed to a loopback name: DNS rebinding made a
  page of another site same-origin with the server (``MEDSEG_ALLOWED_ROOTS`` files were its to read).
Session folders are never served: ``app.ui.launch`` puts the session root in Gradio's
``blocked_paths``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import threading
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from app.access import is_loopback_host_header, make_private

COOKIE = "medseg_session"
TOKEN = re.compile(r"^[0-9a-f]{64}$")
EXPORTS_DIR = "medseg-exports"  # under Gradio's cache folder
RELOAD_PAGE = b"<!doctype html><meta http-equiv='refresh' content='0'><title>medseg</title>"
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")  # Gradio's file route and its deprecated alias
PAGE_PATHS = ("/", "/config")  # where a missing cookie is issued (the page and its configuration)


def new_token() -> str:
    return secrets.token_hex(32)


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


class SessionCookieMiddleware:
    """ASGI middleware: issue the cookie, gate uploads and exports, never let a download render."""

    def __init__(self, app, *, session_exists: Callable[[str], bool], shelf: ExportShelf, max_age_s: float,
                 loopback_names_only: bool = False):
        self.app = app
        self.session_exists = session_exists
        self.shelf = shelf
        self.max_age_s = int(max_age_s)
        self.loopback_names_only = loopback_names_only  # a server without a token: refuse DNS-rebound names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = _cookie(headers.get("cookie", ""))
        sid = sid_of_token(token)
        path = scope.get("path", "")
        root = scope.get("root_path", "") or ""
        local = path[len(root):] if root and path.startswith(root) else path
        method = scope.get("method", "GET")

        if self.loopback_names_only and not is_loopback_host_header(headers.get("host")):
            return await _plain(send, 403, b"this server has no token, so it answers only requests to localhost or "
                                           b"a loopback address (DNS rebinding); set MEDSEG_TOKEN to serve other names")
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
        issue = None
        if method == "GET" and local in PAGE_PATHS and sid is None:
            if headers.get("sec-fetch-site") == "cross-site":
                return await _plain(send, 200, RELOAD_PAGE, b"text/html; charset=utf-8")
            issue = cookie_header(new_token(), self.max_age_s)
        return await self.app(scope, receive, _with_headers(send, cookie=issue))


def _cookie(header: str) -> str | None:
    try:
        jar = SimpleCookie()
        jar.load(header)
    except Exception:  # a malformed Cookie header is no cookie
        return None
    morsel = jar.get(COOKIE)
    token = morsel.value if morsel else None
    return token if token and TOKEN.match(token) else None


def _with_headers(send, *, cookie: bytes | None = None, attachment: str | None = None):
    """Add our headers to the response start; ``attachment``: the download's file name (forces a download)."""
    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])
                       if not (attachment and k.lower() in (b"content-type", b"content-disposition"))]
            headers.append((b"x-content-type-options", b"nosniff"))
            if attachment:
                name = "".join(c for c in attachment if c.isascii() and (c.isalnum() or c in "._-")) or "download"
                headers += [(b"content-type", b"application/octet-stream"),
                            (b"content-disposition", f'attachment; filename="{name}"'.encode())]
            if cookie:
                headers.append((b"set-cookie", cookie))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _plain(send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
