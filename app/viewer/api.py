"""HTTP routes of the browser viewer, added to Gradio's own FastAPI app (``launch(app_kwargs=...)``).

The page learns a viewer token from the hidden ``#viewer-state`` element; :meth:`ViewerTokens.session_id`
is the one place that turns a request's token into a session id (kept server-side: the token is a
random string, not the session id). User errors answer 400 with one line and no server paths;
anything else is logged and answers 500 with one line.
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

from app.controller import AppContext
from app.errors import USER_ERRORS, public_message
from app.session import SessionError
from app.viewer import actions

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
STATIC_URL = "/medseg-viewer"
API_URL = "/viewer-api"


class ViewerTokens:
    """Random per-session tokens the page uses for the viewer's requests (memory only)."""

    def __init__(self):
        self._by_token: dict[str, str] = {}
        self._by_sid: dict[str, str] = {}
        self._lock = threading.Lock()

    def token(self, sid: str) -> str:
        with self._lock:
            if sid not in self._by_sid:
                token = secrets.token_urlsafe(24)
                self._by_sid[sid], self._by_token[token] = token, sid
            return self._by_sid[sid]

    def session_id(self, token: str) -> str:
        """The session a viewer request acts on; SessionError for an unknown token."""
        with self._lock:
            sid = self._by_token.get(str(token))
        if sid is None:
            raise SessionError("this page's session is unknown to the server (it restarted?): reload the page")
        return sid


def head_html() -> str:
    """The tags the Gradio page needs in its <head> to load the viewer bundle."""
    return (f'<link rel="stylesheet" href="{STATIC_URL}/viewer.css">'
            f'<script type="module" src="{STATIC_URL}/viewer.js"></script>')


def routes(ctx: AppContext, tokens: ViewerTokens) -> list:
    """The viewer's routes and the bundle's static files (Starlette routes, matched before Gradio's)."""
    from fastapi import APIRouter, Body
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    router = APIRouter()

    def fail(e: Exception) -> JSONResponse:
        if isinstance(e, (SessionError, *USER_ERRORS)):
            return JSONResponse({"ok": False, "error": public_message(e)}, status_code=400)
        log.exception("viewer request failed")
        return JSONResponse({"ok": False, "error": f"internal error ({type(e).__name__}); the session is saved, "
                                                  "try again"}, status_code=500)

    def session_of(token: str):
        return ctx.store.get(tokens.session_id(token))

    @router.get(API_URL + "/{token}/state")
    def get_state(token: str):
        try:
            session = session_of(token)
            with session.lock:
                return JSONResponse(actions.state(session, token))
        except Exception as e:  # noqa: BLE001 - answered as one line
            return fail(e)

    @router.get(API_URL + "/{token}/volume/{key}.nii.gz")
    def get_volume(token: str, key: str):
        try:
            session = session_of(token)
            with session.lock:
                if key != session.study_key:
                    raise SessionError("that study is no longer open: reload the page")
                path = actions.volume_file(session)
            return FileResponse(path, media_type="application/gzip", headers={"Cache-Control": "private, max-age=3600"})
        except Exception as e:  # noqa: BLE001
            return fail(e)

    @router.get(API_URL + "/{token}/labels/{key}.nii.gz")
    def get_labels(token: str, key: str):
        try:
            session = session_of(token)
            with session.lock:
                if key != session.study_key:
                    raise SessionError("that study is no longer open: reload the page")
                data, rev = actions.labels_bytes(session), session.revision
            return Response(data, media_type="application/gzip",
                            headers={"Cache-Control": "no-store", "X-Labels-Revision": str(rev)})
        except Exception as e:  # noqa: BLE001
            return fail(e)

    @router.post(API_URL + "/{token}/action")
    def post_action(token: str, body: dict = Body(...)):
        try:
            return JSONResponse(actions.act(ctx, session_of(token), body))
        except Exception as e:  # noqa: BLE001
            return fail(e)

    @router.post(API_URL + "/{token}/encode")
    def post_encode(token: str):
        try:
            return JSONResponse({"ok": True, "status": actions.encode_shown(ctx, session_of(token))})
        except Exception as e:  # noqa: BLE001
            return fail(e)

    out = list(router.routes)
    STATIC.mkdir(parents=True, exist_ok=True)
    out.append(Mount(STATIC_URL, app=StaticFiles(directory=str(STATIC)), name="medseg-viewer"))
    return out
