"""Request bodies cut at a size per route, counted as they arrive: one ASGI middleware for both servers.

Why: a route that reads its body whole (Starlette's ``request.body()``, FastAPI's ``Body``, Gradio's JSON
routes) held whatever a client sent: one client posting a multi-GB JSON body to ``/viewer-api/action``
made the server hold it, then json-parse it. A check of the Content-Length header alone is not enough: a
chunked body has none. So the header is checked first (refused before a byte of the body is read), then
every body message is counted as the app receives it, and the body is cut the moment it passes the
limit: the server holds at most the limit plus one message (uvicorn's read buffer, ~64 KiB).

The app below may swallow the cut (FastAPI answers any error while reading a body with its own 400,
Gradio's upload parser with its own): whatever it answers after the cut is dropped and replaced by the
413, unless it had started answering before.
"""

from __future__ import annotations

from typing import Any, Callable

# scope -> the route's limit in bytes (None: no limit, e.g. a GET)
LimitFor = Callable[[dict[str, Any]], "int | None"]
# (scope, limit, declared size or None when counted) -> an ASGI app answering the 413
Refusal = Callable[[dict[str, Any], int, "int | None"], Callable]


class BodyTooLarge(Exception):
    """Raised from the counted ``receive`` once the body passes the limit."""


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit_for(scope)`` bytes (declared or counted)."""

    def __init__(self, app, limit_for: LimitFor, refuse: Refusal):
        self.app = app
        self.limit_for = limit_for
        self.refuse = refuse

    async def __call__(self, scope, receive, send):
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self.refuse(scope, limit, int(declared))(scope, receive, send)
        seen, cut, started = 0, False, False

        async def counted():
            nonlocal seen, cut
            if cut:  # the app reading on after the cut gets nothing more
                raise BodyTooLarge
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                cut = True
                raise BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            if cut and not started:
                return  # the app's answer to a body it never got whole: replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not cut or started:
                raise
        if cut and not started:
            await self.refuse(scope, limit, None)(scope, receive, send)


def size_text(n: int) -> str:
    """A limit as people read it: 4 MiB, 2048 MiB, 512 KiB."""
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


# medseg serve's limits (``app.ui.launch`` installs BodyLimit inside the session cookie middleware).
# The viewer's biggest legitimate action is a brush stroke at MAX_STROKE_POINTS (2000) points with every
# coordinate at 17 digits, plus a list of locked labels: 120 KiB measured (tests/app/test_body_limits.py, 300
# locked labels); even all 65535 labels locked adds 384 KiB. 4 MiB leaves a wide margin and is still nothing
# to hold.
VIEWER_BODY_BYTES = 4 * 2**20
# Gradio's JSON routes (queue/join, run, component_server, login, ...): their biggest body is an upload's
# event, one FileData (~300 bytes; path, url, original name up to 255 bytes) per file: 8 MB for the
# default MEDSEG_MAX_UPLOAD_FILES of 10000 at 800 bytes each. 32 MiB, or 4 KiB a file when more are allowed.
GRADIO_BODY_BYTES = 32 * 2**20
# An upload's multipart framing: headers per file (name, type) on top of the files' bytes.
MULTIPART_BYTES_PER_FILE = 1024


def gradio_body_bytes(max_upload_files: int) -> int:
    """The limit of Gradio's JSON routes (``app.web_session`` reads the hash-bearing ones whole under it too)."""
    return max(GRADIO_BODY_BYTES, max_upload_files * 4096)


def serve_limit_for(max_upload_bytes: int, max_upload_files: int) -> LimitFor:
    """The limit of each ``medseg serve`` route with a body: the viewer's actions, Gradio's upload (all its
    files together under MEDSEG_MAX_UPLOAD_MB, which Gradio's ``max_file_size`` checks per file only),
    Gradio's JSON routes."""
    upload = max_upload_bytes + max_upload_files * MULTIPART_BYTES_PER_FILE + 2**20
    gradio = gradio_body_bytes(max_upload_files)

    def limit_for(scope: dict[str, Any]) -> int | None:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return None
        path = scope.get("path", "")
        if "/viewer-api/" in path:
            return VIEWER_BODY_BYTES
        if path.endswith("/gradio_api/upload"):
            return upload
        return gradio

    return limit_for


def serve_refusal(scope: dict[str, Any], limit: int, size: int | None) -> Callable:
    """One line: JSON ``{"ok": false, "error": ...}`` for the viewer (it shows ``error``), text elsewhere."""
    from starlette.responses import JSONResponse, PlainTextResponse

    what = f"the request of {size / 2**20:.0f} MiB" if size is not None else "the request body"
    setting = " (MEDSEG_MAX_UPLOAD_MB)" if scope.get("path", "").endswith("/gradio_api/upload") else ""
    text = f"{what} is over the limit of {size_text(limit)} for this route{setting}"
    headers = {"Cache-Control": "no-store"}
    if "/viewer-api/" in scope.get("path", ""):
        return JSONResponse({"ok": False, "error": text}, status_code=413, headers=headers)
    return PlainTextResponse(text, status_code=413, headers=headers)
