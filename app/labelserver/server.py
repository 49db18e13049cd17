"""``medseg labelserver``: MONAI Label's REST API at the root of the port, so 3D Slicer's MONAILabel
module, OHIF's monai-label extension and ``MONAILabelClient`` can call medseg's models.

Routes (MONAI Label 0.8 wire formats): ``GET /info/``; ``POST /infer/{model}?image=ID[&session_id=S]
[&output=image|json|all|dicom_seg]`` (multipart: ``params`` JSON, optional ``file``/``label``);
``PUT /session/`` (multipart ``files``), ``GET|DELETE /session/{id}``; ``GET /datastore/?output=all|stats``,
``PUT /datastore/`` and ``/datastore/image`` (upload), ``GET /datastore/image``, ``PUT|GET /datastore/label``;
``POST /activelearning/{first|random}`` (the next image to label, ``app.labelserver.activelearning``);
``GET /auth/``, ``POST /auth/token`` (login with the access token as password).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from app.access import LOGIN_USER, bearer, is_loopback_host_header, token_matches
from app.body_limit import BodyLimit, size_text
from app.embedding_cache import EmbeddingCache
from app.labelserver.activelearning import NextSample, UnknownStrategy
from app.labelserver.datastore import (
    BadLabel,
    Datastore,
    ImageExists,
    NotFound,
    Sessions,
    SessionsFull,
    check_id,
    check_tag,
    label_names_from_params,
    read_label_on_grid,
    write_label_file,
)
from app.labelserver.inference import InferError, model_entries, run_infer
from data.dicom_seg import DicomSegError, medseg_version, write_dicom_seg
from data.readers import StudyError
from data.study_errors import without_cli_advice
from data.volume import Volume
from models.prompts import PromptError

OPEN_PATHS = ("/auth/", "/auth/token", "/auth/token/valid")
RESULT_EXTS = (".nrrd", ".nii.gz", ".nii")
RESULT_DTYPES = {"uint8": "uint8", "uint16": "uint16", "int16": "int16", "int32": "int32", "float32": "float32"}


@dataclass
class ServerConfig:
    model: str
    segmenter: Any
    backend: str  # the one segmenter runs with: its 3D model's default propagation rule (app.propagation_defaults)
    datastore: Datastore
    sessions: Sessions
    work_dir: Path
    token: str | None = None
    max_upload_bytes: int = 2048 * 2**20


def _public(message: str) -> str:
    """Drop the server's folders from a message (a client sees file names, never our paths)."""
    return re.sub(r"(?<![\w:])/(?:[^\s/:'\"]+/)+", "", str(message))[:500]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": _public(message)}, status_code=status)


class TokenGate(BaseHTTPMiddleware):
    """Every request but the login ones carries ``Authorization: Bearer TOKEN`` when a token is set. Without
    one (loopback), only requests addressed to a loopback name are answered: DNS rebinding let a web page
    read the datastore's images."""

    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if self.token is None and not is_loopback_host_header(request.headers.get("host")):
            return _error(403, f"Host {request.headers.get('host', '')[:100]!r}: a server without a token answers "
                               "only requests to localhost or a loopback address; set MEDSEG_TOKEN to serve others")
        if self.token is not None and request.url.path not in OPEN_PATHS:
            if not token_matches(bearer(request.headers.get("authorization")), self.token):
                return JSONResponse({"detail": "missing or wrong access token: send 'Authorization: Bearer TOKEN'"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def _too_large(scope, limit: int, size: int | None) -> JSONResponse:
    """The label server's 413 (``app.body_limit``): the size when declared, the limit and its setting."""
    what = f"request of {size / 2**20:.0f} MiB" if size is not None else "request body"
    return _error(413, f"{what} is over the limit of {size_text(limit)} (MEDSEG_MAX_UPLOAD_MB)")


class BadParams(Exception):
    """The form's ``params`` part is not JSON: answered 400 with its message (the app's exception handlers)."""


# Why: a 5000-digit integer in params answered Python's own words, "Exceeds the limit (4300 digits) for integer string
# conversion ...; use sys.set_int_max_str_digits() to increase the limit", advice for the server's code (session 26b)
LONG_NUMBER = f"params: not valid JSON here (a number of more than {sys.get_int_max_str_digits()} digits)"


def _params(form) -> Any:
    """The form's ``params`` JSON; BadParams when it is not JSON, nested too deep (``json.loads`` raised
    RecursionError, which answered 500 with a traceback in the log), or a file part instead of a field."""
    text = form.get("params")
    if isinstance(text, UploadFile):  # a part with a file name (curl -F params=@p.json): TypeError, a 500, before
        raise BadParams("params: expected a form field of JSON text, not a file part")
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError:
        raise BadParams("params: not valid JSON") from None
    except ValueError:  # json.loads' other refusal: an integer past Python's digit limit
        raise BadParams(LONG_NUMBER) from None
    except RecursionError:
        raise BadParams("params: not valid JSON (nested too deep)") from None


async def _json_body(request: Request, limit: int = 64 * 1024) -> dict:
    """A small JSON object body (``/activelearning``'s params; MONAILabelClient posts them as JSON), or {}."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadParams(f"params: a JSON body of at most {limit // 1024} KiB expected")
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadParams("params: the request body is not valid JSON") from None
    except ValueError:
        raise BadParams(LONG_NUMBER) from None
    except RecursionError:
        raise BadParams("params: not valid JSON (nested too deep)") from None
    if not isinstance(params, dict):
        raise BadParams("params: expected a JSON object")
    return params


def _multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> Response:
    """A multipart/form-data reply (what MONAI Label sends and its client parses): name -> (filename, body, type)."""
    boundary = uuid4().hex
    chunks = []
    for name, (filename, body, ctype) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        chunks.append(body + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), media_type=f"multipart/form-data; boundary={boundary}")


# what a temporary upload's name may end in: the client's name decides the format, and its last two suffixes taken
# whole made a 255-byte name (legal) ".ggg...g" that no file could be created under (a 500 blaming the server)
KNOWN_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm", ".zip", ".json")


async def _save_upload(upload: UploadFile, folder: Path) -> Path:
    """The upload's bytes in a temporary file of ``folder`` named with its known suffix (else ``.bin``)."""
    name = Path(upload.filename or "upload").name.lower()
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=next((s for s in KNOWN_SUFFIXES if name.endswith(s)), ".bin"))
    with open(fd, "wb") as f:
        while chunk := await upload.read(2**20):
            f.write(chunk)
    return Path(tmp)


def build_app(cfg: ServerConfig) -> Starlette:
    entries = model_entries(cfg.model)
    cache = EmbeddingCache(max_items=16)
    next_sample = NextSample(cfg.datastore)
    model_lock = threading.Lock()
    uploads = cfg.work_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)

    def info_json() -> dict:
        return {
            "name": "medseg",
            "description": f"medseg promptable segmentation ({cfg.model}); MONAI Label API",
            "version": medseg_version(),
            "labels": ["structure"],
            "models": {name: e.info() for name, e in entries.items()},
            "trainers": {},
            "strategies": next_sample.info(),
            "scoring": {},
            "train_stats": {},
            "datastore": cfg.datastore.status(),
        }

    async def info(request: Request):
        return JSONResponse(await _threaded(info_json))

    def volume_for(image: str, session_id: str) -> Volume:
        if session_id:
            return cfg.sessions.get(session_id).volume
        if not image:
            raise InferError("give ?image=ID (a datastore image) or &session_id=ID (an uploaded session)")
        return cfg.datastore.volume(check_id(image))

    async def infer(request: Request):
        model = request.path_params["model"]
        entry = entries.get(model)
        if entry is None:
            return _error(404, f"model {model!r} not found; this server has {', '.join(entries)}")
        output = request.query_params.get("output") or "all"
        if output not in ("image", "json", "all", "dicom_seg"):
            return _error(400, f"output={output!r}: expected image, json, all or dicom_seg")
        form = await request.form(max_files=4, max_fields=16)
        params = _params(form)
        if not isinstance(params, dict):
            return _error(400, "params: expected a JSON object")
        tmp_files = []
        carried_image = contextlib.ExitStack()
        try:
            upload = form.get("file")
            image, session_id = request.query_params.get("image", ""), request.query_params.get("session_id", "")
            carried: Volume | None = None
            if isinstance(upload, UploadFile):  # the image itself in the request: a temporary, not a session
                tmp = await _save_upload(upload, uploads)
                tmp_files.append(tmp)
                carried = await _threaded(lambda: carried_image.enter_context(
                    cfg.sessions.temporary([(upload.filename or "image.nii.gz", tmp)])))
            ext = str(params.get("result_extension") or ".nii.gz")
            if ext not in RESULT_EXTS:
                return _error(400, f"params.result_extension {ext!r}: expected one of {', '.join(RESULT_EXTS)}")
            dtype = RESULT_DTYPES.get(str(params.get("result_dtype") or "uint8"))
            if dtype is None:
                return _error(400, f"params.result_dtype: expected one of {', '.join(RESULT_DTYPES)}")
            compress = bool(params.get("result_compress", True)) or ext == ".nii.gz"

            def work():
                volume = carried if carried is not None else volume_for(image, session_id)
                with model_lock:
                    result = run_infer(cfg.segmenter, entry, volume, params, cache, backend=cfg.backend)
                return volume, result

            volume, result = await _threaded(work)
            reply = {"label_names": result.label_names, "latencies": result.latencies, "slice": result.slice}
            if output == "json":
                return JSONResponse(reply)
            source_id = uuid4().hex if carried is not None else image or session_id  # a carried image has no id
            name = f"label_{entry.name}_{source_id[-24:]}"
            if output == "dicom_seg":
                if volume.source.format != "dicom-series":
                    return _error(400, "output=dicom_seg needs a DICOM series image; ask for output=image")
                names = {v: n for n, v in result.label_names.items()}
                path = uploads / f"{uuid4().hex}.dcm"
                await _threaded(lambda: write_dicom_seg(result.labels, volume, path, label_names=names,
                                                        model_name=cfg.model))
                return FileResponse(path, media_type="application/dicom", filename=f"{name}.dcm",
                                    background=BackgroundTask(path.unlink, missing_ok=True))
            path = uploads / f"{uuid4().hex}{ext}"
            await _threaded(lambda: write_label_file(result.labels.astype(dtype), volume, path, compress=compress))
            body = path.read_bytes()
            path.unlink(missing_ok=True)
            ctype = "application/octet-stream"
            if output == "image":
                return Response(body, media_type=ctype,
                                headers={"Content-Disposition": f'attachment; filename="{name}{ext}"'})
            return _multipart({"params": (None, json.dumps(reply).encode(), "application/json"),
                               "image": (f"{name}{ext}", body, ctype)})
        finally:
            carried_image.close()
            for f in tmp_files:
                f.unlink(missing_ok=True)

    async def session_put(request: Request):
        form = await request.form(max_files=10_000, max_fields=16)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            return _error(400, "send the image as multipart 'files' parts")
        try:
            expiry = float(request.query_params.get("expiry") or 0)
        except ValueError:
            expiry = -1.0
        longest = cfg.sessions.max_expiry_s
        if not 0 <= expiry <= longest:  # NaN or inf never expired, and inf broke the reply (int(inf)); 1e300 too
            return _error(400, f"expiry={request.query_params.get('expiry')!r}"[:100] + ": expected seconds from 0 "
                          f"(the default, {cfg.sessions.default_expiry_s:.0f}) to {longest:.0f} "
                          f"(MEDSEG_SESSION_TTL_HOURS, {longest / 3600:g} h): a session keeps its image on the server "
                          "until it expires")
        saved = [(f.filename or f"file{n}", await _save_upload(f, uploads)) for n, f in enumerate(files)]
        try:
            session = await _threaded(lambda: cfg.sessions.add(saved, expiry_s=expiry))
        finally:
            for _, tmp in saved:
                tmp.unlink(missing_ok=True)
        return JSONResponse({"session_id": session.session_id, "session_info": session.info()})

    async def session_get(request: Request):
        return JSONResponse(cfg.sessions.get(request.path_params["session_id"]).info())

    async def session_delete(request: Request):
        return JSONResponse(cfg.sessions.remove(request.path_params["session_id"]).info())

    async def datastore_get(request: Request):
        output = request.query_params.get("output") or "stats"
        if output == "all":
            return JSONResponse(await _threaded(cfg.datastore.as_json))
        if output == "train":
            return JSONResponse([])
        return JSONResponse(await _threaded(cfg.datastore.status))

    async def datastore_put_image(request: Request):
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _error(400, "send the image as a multipart 'file' part")
        tmp = await _save_upload(upload, uploads)
        try:
            image_id = await _threaded(lambda: cfg.datastore.add_image(request.query_params.get("image", ""),
                                                                       upload.filename or "image.nii.gz", tmp))
        finally:
            tmp.unlink(missing_ok=True)
        return JSONResponse({"image": image_id})

    async def datastore_get_image(request: Request):
        image = check_id(request.query_params.get("image", ""))
        volume = await _threaded(lambda: cfg.datastore.volume(image))
        path = uploads / f"{uuid4().hex}.nii.gz"
        await _threaded(lambda: _write_image(volume, path))
        return FileResponse(path, media_type="application/octet-stream", filename=f"{image}.nii.gz",
                            background=BackgroundTask(path.unlink, missing_ok=True))

    async def label_put(request: Request):
        image = request.query_params.get("image", "")
        tag = check_tag(request.query_params.get("tag") or "final")
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("label")
        if not isinstance(upload, UploadFile):
            return _error(400, "send the label as a multipart 'label' part")
        params = _params(form)
        tmp = await _save_upload(upload, uploads)
        try:
            def work():
                volume = cfg.datastore.volume(check_id(image))
                labels = read_label_on_grid(tmp, volume, name=Path(upload.filename or "label").name)
                names = label_names_from_params(params.get("label_info") if isinstance(params, dict) else None)
                return cfg.datastore.save_label(image, labels, tag, names)

            label_id = await _threaded(work)
        finally:
            tmp.unlink(missing_ok=True)
        return JSONResponse({"image": image, "label": label_id})

    async def label_get(request: Request):
        label = request.query_params.get("label") or request.query_params.get("image", "")
        path = cfg.datastore.label_file(label, request.query_params.get("tag") or "final")
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    async def activelearning(request: Request):
        params = await _json_body(request)
        strategy = request.path_params["strategy"]
        return JSONResponse(await _threaded(lambda: next_sample(strategy, params)))

    async def auth_info(request: Request):
        return JSONResponse({"enabled": cfg.token is not None, "client_id": "medseg", "realm": ""})

    async def auth_token(request: Request):
        if cfg.token is None:
            return _error(404, "this server needs no login (bound to loopback)")
        form = await request.form(max_files=0, max_fields=8)
        if form.get("username") != LOGIN_USER or not token_matches(form.get("password"), cfg.token):
            return _error(401, f"wrong user or token: log in as {LOGIN_USER!r} with the access token as password")
        return JSONResponse({"access_token": cfg.token, "token_type": "Bearer"})

    async def auth_valid(request: Request):
        ok = cfg.token is None or token_matches(bearer(request.headers.get("authorization")), cfg.token)
        return JSONResponse({}, status_code=200 if ok else 401)

    routes = [
        Route("/info/", info, methods=["GET"]),
        Route("/infer/{model}", infer, methods=["POST"]),
        Route("/session/", session_put, methods=["PUT"]),
        Route("/session/{session_id}", session_get, methods=["GET"]),
        Route("/session/{session_id}", session_delete, methods=["DELETE"]),
        Route("/datastore/", datastore_get, methods=["GET"]),
        Route("/datastore/", datastore_put_image, methods=["PUT"]),
        Route("/datastore/image", datastore_put_image, methods=["PUT"]),
        Route("/datastore/image", datastore_get_image, methods=["GET"]),
        Route("/datastore/label", label_put, methods=["PUT"]),
        Route("/datastore/label", label_get, methods=["GET"]),
        Route("/activelearning/{strategy}", activelearning, methods=["POST"]),
        Route("/auth/", auth_info, methods=["GET"]),
        Route("/auth/token", auth_token, methods=["POST"]),
        Route("/auth/token/valid", auth_valid, methods=["GET"]),
    ]
    handlers = {
        # Starlette's own refusals (a form of too many parts, no multipart boundary, a wrong method) answered
        # text/plain; MONAI Label (FastAPI) answers them as JSON {"detail": ...}, which its clients show (session 24)
        HTTPException: lambda r, e: JSONResponse({"detail": _public(str(e.detail))}, status_code=e.status_code,
                                                 headers=e.headers),
        NotFound: lambda r, e: _error(404, str(e)),
        ImageExists: lambda r, e: _error(409, str(e)),
        SessionsFull: lambda r, e: _error(429, str(e)),
        UnknownStrategy: lambda r, e: _error(404, str(e)),
        InferError: lambda r, e: _error(400, str(e)),
        BadParams: lambda r, e: _error(400, str(e)),
        PromptError: lambda r, e: _error(400, str(e)),
        BadLabel: lambda r, e: _error(400, str(e)),
        DicomSegError: lambda r, e: _error(400, str(e)),
        # no --allow-uneven here: a --studies series folder or a PACS series with a slice missing said to pass it
        StudyError: lambda r, e: _error(_study_status(e), without_cli_advice(str(e))),
        ValueError: lambda r, e: _error(400, str(e)),
        OSError: lambda r, e: _error(500, "the server could not read or write a file"),
    }

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:  # the server's temporary images go with it
            cfg.sessions.close()
            cfg.datastore.close()
            shutil.rmtree(uploads, ignore_errors=True)

    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan,
                     middleware=[Middleware(TokenGate, token=cfg.token),
                                 Middleware(BodyLimit, limit_for=_uploads_limit(cfg.max_upload_bytes),
                                            refuse=_too_large)])


def _uploads_limit(max_bytes: int):
    """Every PUT and POST body is held to MEDSEG_MAX_UPLOAD_MB (uploads are the label server's biggest bodies)."""
    return lambda scope: max_bytes if scope.get("method") in ("PUT", "POST") else None


def _study_status(e: StudyError) -> int:
    """400 for a bad image; for a PACS: 404 when it lacks the series, 502 when it fails."""
    if type(e).__name__ != "DicomWebError":
        return 400
    return 404 if ("HTTP 404" in str(e) or "no series" in str(e)) else 502


def _write_image(volume: Volume, path: Path) -> None:
    """The image a viewer asks for (``GET /datastore/image``) as NIfTI with the source's space codes, as its labels
    are written (``write_label_nifti``). Why: written by ITK alone it carried codes 1 whatever the source: an MNI
    image (code 4) lost its space, and one placed by pixdim only (codes 0) was placed by nibabel-based tools elsewhere
    than the labels saved for it."""
    from data.writers import nifti_codes, write_nifti

    sform, qform, _ = nifti_codes(volume)
    write_nifti(volume.to_sitk(), (sform, qform, 0), path)


async def _threaded(fn):
    """Run blocking work (reading studies, the model) off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)
