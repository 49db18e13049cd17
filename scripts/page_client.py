"""A simulated browser tab of ``medseg serve``, speaking Gradio's own page protocol over HTTP.

Why not ``gradio_client``: the page's handlers take the session id from a ``gr.State`` and a
click from ``gr.SelectData``, which the API client can neither set nor send. This client does
exactly what the page's JavaScript does instead: it reads ``/config``, posts each event to
``/gradio_api/queue/join`` (``fn_index``, ``trigger_id``, ``event_data``, its own
``session_hash``), reads the answer from the ``/gradio_api/queue/data`` event stream, runs the
``.then`` steps the page chains after an event, uploads through ``/gradio_api/upload`` and
downloads exports through the ``file=`` URL. The server keeps each tab's ``gr.State`` by its
session hash, as it does for a browser, and the session itself by the HttpOnly cookie it sets
when the page is first fetched (``app.web_session``); the client's cookie jar keeps it, as a
browser does. Image prompts go where the page's viewer sends them: the viewer's JSON routes
(``app.viewer.api``, which act on the cookie's session); after each, the page's ``#viewer-sync``
refresh, as the viewer does. Used by ``scripts/load_test.py`` and the crash test.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.render import display_size, display_to_plane

ROOT = Path(__file__).resolve().parent.parent
COOKIE = "medseg_session"  # app.web_session.COOKIE
# the page's outputs, in app.ui's order (after the session id), by what they show
OUTPUTS = ("sid", "viewer_state", "label", "label_name", "colour", "table", "alternatives", "facts", "status",
           "model", "window", "level", "width")


class InFlight:
    """A viewer request sent from a thread; ``close`` forgets it (the crash test kills the server meanwhile)."""

    def __init__(self, page: "Page", body: dict[str, Any] | None, settle_s: float = 0.5):
        import threading

        self.thread = None
        if body is not None:
            url = f"{page.url}/viewer-api/action"
            cookies = dict(page.http.cookies)  # the tab's session cookie, as the browser sends it

            def send() -> None:
                try:
                    httpx.post(url, json=body, cookies=cookies, timeout=600)
                except httpx.HTTPError:
                    pass  # the server was killed: that is the point

            self.thread = threading.Thread(target=send, daemon=True)
            self.thread.start()
            time.sleep(settle_s)  # the server has it and works on it

    def close(self) -> None:
        pass


class PageError(RuntimeError):
    """The server failed an event (an exception, a warning toast, or a dropped stream)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """``medseg serve`` as a child process on loopback; ``kill9()`` and ``start()`` again on the same state."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    prefetch: int = 1
    malloc_arenas: int | None = None  # None: the server's default
    threads: int | None = None  # torch threads (OMP_NUM_THREADS); match a replay's for bit-equal results
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()  # more `medseg serve` arguments (--device cuda, --batch-window-ms MS)
    env: dict[str, str] = field(default_factory=dict)  # more environment (MEDSEG_* settings)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "ServerProcess":
        """Start the server and wait until its page configuration answers."""
        log = open(self.log_path or os.devnull, "ab")
        medseg = Path(sys.executable).parent / "medseg"
        cmd = [str(medseg) if medseg.is_file() else sys.executable, *([] if medseg.is_file() else ["-m", "app.cli"]),
               "serve", "--port", str(self.port), "--state-dir", str(self.state_dir), "--prefetch", str(self.prefetch),
               *([] if self.malloc_arenas is None else ["--malloc-arenas", str(self.malloc_arenas)]), *self.extra_args]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **self.env}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PageError(f"medseg serve exited with {self.proc.returncode} before serving (log: {self.log_path})")
            try:
                if httpx.get(self.url + "/config", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise PageError(f"medseg serve did not answer on {self.url} within {timeout_s:.0f} s")

    def rss_mib(self) -> float:
        """The server's resident memory now (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill9(self) -> None:
        """SIGKILL: no handler, no flush, no atexit; what is on disk is all that survives."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Page:
    """One browser tab: its own session hash (so its own ``gr.State``) and the page's event wiring.

    ``token``: the session cookie a browser kept (restores that session); None: a new browser, whose
    cookie the server sets on the first request.
    """

    def __init__(self, url: str, timeout_s: float = 600.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.api = self.url + "/gradio_api"
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        if token:  # as the server's own Set-Cookie stores it (host-only, Path=/): a new token it sends replaces it
            self.http.cookies.set(COOKIE, token, domain=urlsplit(self.url).hostname or "", path="/")
        self.session_hash = uuid.uuid4().hex[:11]
        config = self.http.get(self.url + "/config").raise_for_status().json()
        self._elem = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c["props"].get("elem_id")}
        self._deps = config["dependencies"]
        # component id -> what it shows: the page's outputs as app.ui lists them, the download, the stored id
        self._names = dict(zip(self._dep("open-sample", "click")["outputs"], OUTPUTS))
        self._names[self._elem["download"]] = "download"
        self.last: dict[str, Any] = {}
        self.viewer: dict[str, Any] = {}  # what the page's viewer was told (#viewer-state)
        self.mode = "point +"
        self.corner: tuple[float, float] | None = None

    @property
    def token(self) -> str | None:
        """The session cookie the server set for this tab (what a browser keeps across reloads)."""
        return self.http.cookies.get(COOKIE)

    def close(self) -> None:
        self.http.close()

    # --- protocol ----------------------------------------------------------------------------
    def _dep(self, elem_id: str | None, event: str) -> dict:
        target = None if elem_id is None else self._elem[elem_id]
        for d in self._deps:
            if any(t[1] == event and (target is None or t[0] == target) for t in d["targets"]):
                return d
        raise KeyError(f"no {event} event on {elem_id!r} in the page")

    def _then(self, dep: dict) -> list[dict]:
        return [d for d in self._deps if d.get("trigger_after") == dep["id"]]

    def _submit(self, dep: dict, data: list[Any], event_data: Any = None, trigger: int | None = None) -> list[Any]:
        """Post one event and wait for its completion message; returns the output values."""
        body = {"data": data, "fn_index": dep["id"], "session_hash": self.session_hash,
                "event_data": event_data, "trigger_id": trigger}
        event_id = self.http.post(self.api + "/queue/join", json=body).raise_for_status().json()["event_id"]
        with self.http.stream("GET", self.api + "/queue/data", params={"session_hash": self.session_hash}) as s:
            for line in s.raise_for_status().iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                kind = msg.get("msg")
                if kind == "log" and msg.get("level") in ("warning", "error"):
                    raise PageError(f"{dep.get('api_name')}: {msg.get('log')}")
                if kind == "unexpected_error":
                    raise PageError(f"{dep.get('api_name')}: {msg.get('message')}")
                if kind == "process_completed":
                    if not msg.get("success"):
                        raise PageError(f"{dep.get('api_name')}: {msg.get('output')}")
                    return msg["output"]["data"]
        raise PageError(f"{dep.get('api_name')}: the event stream ended without an answer")

    def raw_event(self, elem_id: str | None, event: str, data: list[Any], event_data: Any = None) -> list[dict]:
        """Post one event and return every message the server sent for it (nothing raised, no ``.then``).

        For tests that look at what a user would see: warning toasts (``msg == "log"``), a failed
        event (``process_completed`` with ``success`` false: Gradio's red "Error"), the outputs.
        """
        dep = self._dep(elem_id, event)
        body = {"data": data, "fn_index": dep["id"], "session_hash": self.session_hash,
                "event_data": event_data, "trigger_id": None if elem_id is None else self._elem[elem_id]}
        event_id = self.http.post(self.api + "/queue/join", json=body).raise_for_status().json()["event_id"]
        seen: list[dict] = []
        with self.http.stream("GET", self.api + "/queue/data", params={"session_hash": self.session_hash}) as s:
            for line in s.raise_for_status().iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("event_id") not in (None, event_id):
                        continue
                    seen.append(msg)
                    if msg.get("msg") in ("process_completed", "unexpected_error"):
                        break
        return seen

    def upload_files(self, paths: list[Path]) -> list[dict]:
        """Upload files through ``/gradio_api/upload`` and the upload event; the event's messages."""
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
        r = self.http.post(self.api + "/upload", files=files).raise_for_status()
        data = [{"path": p, "orig_name": Path(src).name, "meta": {"_type": "gradio.FileData"}}
                for p, src in zip(r.json(), paths)]
        return self.raw_event("upload", "upload", [None, data])

    def start_event(self, elem_id: str, event: str, data: list[Any], event_data: Any = None) -> httpx.Response:
        """Post an event and return once the server has started processing it (its answer not read).

        Close the returned stream when done; the crash test kills the server at this point.
        """
        dep = self._dep(elem_id, event)
        body = {"data": data, "fn_index": dep["id"], "session_hash": self.session_hash,
                "event_data": event_data, "trigger_id": self._elem[elem_id]}
        event_id = self.http.post(self.api + "/queue/join", json=body).raise_for_status().json()["event_id"]
        request = self.http.build_request("GET", self.api + "/queue/data", params={"session_hash": self.session_hash})
        stream = self.http.send(request, stream=True)
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("event_id") == event_id and msg.get("msg") in ("process_starts", "process_completed"):
                    return stream
        stream.close()
        raise PageError(f"{dep.get('api_name')}: the event stream ended before processing started")

    def event(self, elem_id: str | None, event: str, data: list[Any], event_data: Any = None) -> dict[str, Any]:
        """Fire an event as the page does, then its chained ``.then`` steps; the page state after it."""
        dep = self._dep(elem_id, event)
        trigger = None if elem_id is None else self._elem[elem_id]
        out = self._submit(dep, data, event_data, trigger)
        self._absorb(dep, out)
        for follow in self._then(dep):
            self._absorb(follow, self._submit(follow, [None] * len(follow["inputs"])))
        return self.last

    def _absorb(self, dep: dict, out: list[Any]) -> None:
        """Keep the values the page would show, by component; a '⚠' status is the UI's error message."""
        for component, value in zip(dep["outputs"], out):
            name = self._names.get(component)
            if name is None or (isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value):
                continue  # gr.skip(): the page keeps what it shows
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "maximum" in value:
                    self.last[name + "_max"] = value["maximum"]
                if "choices" in value:
                    self.last[name + "_choices"] = value["choices"]
                value = value["value"]
            if name == "viewer_state" and isinstance(value, str) and (m := re.search(r'data-state="([^"]*)"', value)):
                self._viewer_state(json.loads(html.unescape(m.group(1))))
            self.last[name] = value
        status = self.last.get("status")
        if isinstance(status, str) and status.startswith("⚠"):
            raise PageError(f"{dep.get('api_name')}: {status}")

    # --- what a user does ----------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Open the page: the server restores the session of this tab's cookie, or starts one."""
        return self.event(None, "load", [])

    def open_sample(self, name: str) -> dict[str, Any]:
        return self.event("open-sample", "click", [None, name])

    def upload(self, paths: list[Path]) -> dict[str, Any]:
        """Upload files the way the file picker does, then open them."""
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
        r = self.http.post(self.api + "/upload", files=files).raise_for_status()
        data = [{"path": p, "orig_name": Path(src).name, "meta": {"_type": "gradio.FileData"}}
                for p, src in zip(r.json(), paths)]
        return self.event("upload", "upload", [None, data])

    def _viewer_state(self, state: dict[str, Any]) -> None:
        self.viewer = state
        if state.get("study"):
            view = state["view"]
            plane = state["planes"][view]
            self.last.update(slice=state["index"], slice_max=plane["count"] - 1, label=state["active"],
                             view=view, image_hw=display_size(tuple(plane["hw"]), tuple(plane["spacing"])))

    def viewer_action(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request of the page's viewer, then the page's refresh; the viewer's answer is in ``last['viewer']``."""
        r = self.http.post(f"{self.url}/viewer-api/action", json=body)
        answer = r.json()
        if not answer.get("ok"):
            raise PageError(f"viewer {body.get('kind')}: {answer.get('error')}")
        self.event("viewer-sync", "click", [None, self.last.get("label_name")])  # the Name box as the page has it
        self.last["viewer"] = answer
        return self.last

    def _at(self, x: float, y: float) -> list[float]:
        """A display pixel of the old image panel (512 px on the long side) -> [plane index, x, y]."""
        plane = self.viewer["planes"][self.viewer["view"]]
        px, py = display_to_plane((x, y), tuple(plane["hw"]), self.last["image_hw"])
        return [self.viewer["index"], px, py]

    def set_slice(self, index: int) -> dict[str, Any]:
        """Page to a slice (the viewer reports it after paging), then encode it as the viewer asks."""
        self.viewer_action({"kind": "view", "view": self.viewer["view"], "at": [int(index), 0, 0]})
        self.http.post(f"{self.url}/viewer-api/encode").raise_for_status()
        return self.last

    def set_mode(self, mode: str) -> dict[str, Any]:
        self.mode, self.corner = mode, None
        return self.last

    def _click_body(self, x: float, y: float) -> dict[str, Any] | None:
        view = self.viewer["view"]
        if self.mode == "box":
            if self.corner is None:
                self.corner = (x, y)
                return None
            corner, self.corner = self.corner, None
            return {"kind": "box", "view": view, "at": self._at(*corner), "at2": self._at(x, y)}
        return {"kind": "point", "view": view, "at": self._at(x, y), "positive": self.mode == "point +"}

    def click(self, x: float, y: float) -> dict[str, Any]:
        """A click at display pixel (x, y); in box mode the second click sends the box (a drag, in the page)."""
        body = self._click_body(x, y)
        return self.last if body is None else self.viewer_action(body)

    def start_click(self, x: float, y: float) -> "InFlight":
        """A click whose answer is not awaited: returns once the request is on its way."""
        body = self._click_body(x, y)
        return InFlight(self, body)

    def new_object(self) -> dict[str, Any]:
        return self.viewer_action({"kind": "new_object"})

    def add_label(self, name: str) -> dict[str, Any]:
        return self.event("add-label", "click", [None, name])

    def export(self, dest: Path) -> Path:
        """Export NIfTI and download it (what the browser's download link fetches)."""
        state = self.event("export-btn", "click", [None, "NIfTI (.nii.gz)", False])
        url = state["download"]["url"]
        r = self.http.get(url).raise_for_status()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(r.content)
        return dest
