"""HTTP routes of the browser viewer, added to Gradio's own FastAPI app (``launch(app_kwargs=...)``).

Every route acts on the session of the request's HttpOnly cookie (``app.web_session``), the same
credential the Gradio events carry: the page's scripts never hold a token or a session id, and the
cookie is SameSite=Strict, so another site cannot make the browser send it. User errors answer 400
with one escaped line without server paths or the session id (``app.messages``); anything else is
logged and answers 500 with one line.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' real annotations (Request).

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from app import messages, trace, web_session
from app.controller import AppContext
from app.errors import USER_ERRORS
from app.session import Session, SessionError
from app.viewer import actions
from models.prompts import PromptError

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
STATIC_URL = "/medseg-viewer"
API_URL = "/viewer-api"


NO_COOKIE = "this page has no session cookie: allow cookies for this site, then reload"


def head_html() -> str:
    """The tags the Gradio page needs in its <head> to load the viewer bundle."""
    return (f'<link rel="stylesheet" href="{STATIC_URL}/viewer.css">'
            f'<script type="module" src="{STATIC_URL}/viewer.js"></script>')


# Runs before Gradio's own scripts (it is the page's first script): a listener registered first runs first (on the
# window, registration order rules, capture or not). Gradio's ``beforeunload`` listener closes its connection whether
# or not the user stays; the viewer's question (``askBeforeLeaving``) stops it while edits are queued.
LEAVE_GUARD = (b"<script>addEventListener('beforeunload', function (e) { var v = window.medsegViewer; "
               b"if (v && v.askBeforeLeaving) v.askBeforeLeaving(e) })</script>")


class LeaveGuard:
    """ASGI middleware: the page's HTML gets :data:`LEAVE_GUARD` as the first thing in its ``<head>``.

    The viewer's bundle comes in Gradio's ``head=`` tags, which Gradio adds only after it has connected and
    registered its own ``beforeunload`` listener (it closes the connection): a user who chose to stay on the page
    then lost the page's events on their way, and Gradio reloaded the page 2 s later, asking again for the same
    edits or, with none queued by then, reloading under the user. Only the page's HTML (GET ``/``) is rewritten."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def is_page(scope) -> bool:
        """The request is for the page itself (``/`` under the app's root path)."""
        root, path = scope.get("root_path", "") or "", scope.get("path", "")
        return (path[len(root):] if root and path.startswith(root) else path) == "/"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET" or not self.is_page(scope):
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def guarded(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # held until the body is whole: its length changes
                return
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body, headers = with_leave_guard(b"".join(chunks), start.get("headers", []))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, guarded)


def with_leave_guard(body: bytes, headers: list) -> tuple[bytes, list]:
    """The page with :data:`LEAVE_GUARD` right after ``<head>`` and its Content-Length to match; anything else
    (not HTML, compressed, no ``<head>``) unchanged."""
    named = {k.lower(): v for k, v in headers}
    if not named.get(b"content-type", b"").startswith(b"text/html") or named.get(b"content-encoding"):
        return body, headers
    at = body.find(b"<head>")
    if at < 0:
        return body, headers
    at += len(b"<head>")
    body = body[:at] + LEAVE_GUARD + body[at:]
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return body, headers + [(b"content-length", str(len(body)).encode())]


def routes(ctx: AppContext) -> list:
    """The viewer's routes and the bundle's static files (Starlette routes, matched before Gradio's)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    router = APIRouter()
    no_store = {"Cache-Control": "no-store"}

    def fail(e: Exception, sid: str | None) -> JSONResponse:
        if isinstance(e, (SessionError, *USER_ERRORS)):
            text = messages.plain(messages.error_text(e), hide=[sid or ""])
            status = 409 if isinstance(e, actions.OtherStudy) else 400  # 409: another study opened meanwhile
            return JSONResponse({"ok": False, "error": text}, status_code=status, headers=no_store)
        log.exception("viewer request failed")
        return JSONResponse({"ok": False, "error": f"internal error ({type(e).__name__}); the session is saved, "
                                                  "try again"}, status_code=500, headers=no_store)

    def known_sid(request: Request) -> str:
        """The cookie's session id (SessionError when the cookie is missing or names no session)."""
        sid = web_session.sid_of_request(request)
        if sid is None or not ctx.store.exists(sid):
            raise SessionError(NO_COOKIE if sid is None else "this page's session is unknown to the server: reload the page")
        return sid

    def session_of(request: Request):
        """The cookie's session (SessionError when the cookie is missing or names no session)."""
        return ctx.store.get(known_sid(request))

    def sid_or_none(request: Request) -> str | None:
        return web_session.sid_of_request(request)

    @contextlib.contextmanager
    def open_study(request: Request, key: str) -> Iterator[Session]:
        """The cookie's session, locked, while ``key`` is still its open study (a stale page asks for an old one)."""
        session = session_of(request)
        with session.lock:
            if key != session.study_key:
                raise SessionError("that study is no longer open: reload the page")
            yield session

    @router.get(API_URL + "/state")
    def get_state(request: Request):
        try:
            session = session_of(request)
            with trace.span("state"), session.lock:
                return JSONResponse(actions.state(session), headers=no_store)
        except Exception as e:  # noqa: BLE001 - answered as one line
            return fail(e, sid_or_none(request))

    @router.get(API_URL + "/news")
    def get_news(request: Request):
        """What an idle tab polls (every few seconds while shown): the open study, the label table's digest and
        the newest news stamp, ~100 bytes. No session lock (a poll never waits behind a prompt's model run or a
        propagation) and no load: a session the server holds only on disk has no news (``table`` null)."""
        try:
            session = ctx.store.peek(known_sid(request))
            return JSONResponse(actions.news(session), headers=no_store)
        except Exception as e:  # noqa: BLE001
            return fail(e, sid_or_none(request))

    @router.get(API_URL + "/volume/{key}.nii.gz")
    def get_volume(key: str, request: Request):
        try:
            with open_study(request, key) as session:
                path = actions.volume_file(session)
            return FileResponse(path, media_type="application/gzip", headers={"Cache-Control": "private, max-age=3600"})
        except Exception as e:  # noqa: BLE001
            return fail(e, sid_or_none(request))

    @router.get(API_URL + "/labels/{key}.nii.gz")
    def get_labels(key: str, request: Request):
        try:
            with trace.span("labels"), open_study(request, key) as session:
                data, rev = actions.labels_bytes(session), session.revision
            return Response(data, media_type="application/gzip",
                            headers={**no_store, "X-Labels-Revision": str(rev), "X-Labels-Boot": messages.BOOT})
        except Exception as e:  # noqa: BLE001
            return fail(e, sid_or_none(request))

    def act(request: Request, body: dict):
        trace.mark("action.arrive", kind=body.get("kind"), id=request.headers.get("x-trace-id"))
        try:
            return JSONResponse(actions.act(ctx, session_of(request), body), headers=no_store)
        except Exception as e:  # noqa: BLE001
            return fail(e, sid_or_none(request))
        finally:
            trace.mark("action.answer", kind=body.get("kind"), id=request.headers.get("x-trace-id"))

    @router.post(API_URL + "/action")
    async def post_action(request: Request):
        # the body arrives under app.body_limit's VIEWER_BODY_BYTES (past it: 413 from the middleware)
        try:
            body = actions.parse(await request.body(), request.headers.get("content-type"))
        except PromptError as e:
            return fail(e, sid_or_none(request))
        return await run_in_threadpool(act, request, body)  # the model and the session lock: off the event loop

    @router.post(API_URL + "/encode")
    def post_encode(request: Request):
        try:
            session = session_of(request)
            with trace.span("encode"):
                status = actions.encode_shown(ctx, session)
            return JSONResponse({"ok": True, "status": status, "encoded": actions.shown_is_encoded(session),
                                 "ready": actions.READY}, headers=no_store)
        except Exception as e:  # noqa: BLE001
            return fail(e, sid_or_none(request))

    out = list(router.routes)
    STATIC.mkdir(parents=True, exist_ok=True)
    out.append(Mount(STATIC_URL, app=StaticFiles(directory=str(STATIC)), name="medseg-viewer"))
    return out
