"""`medseg labelserver`'s HTTP surface against a browser-borne attacker and an unbounded client.

* DNS rebinding: a page on attacker.example whose name then resolves to 127.0.0.1 reads a loopback server
  as same-origin. Without a token, the server answered it the datastore listing and the patients' images.
  Now a server without a token answers only requests addressed to a loopback name (Host header).
* A chunked upload (no Content-Length) passed the MEDSEG_MAX_UPLOAD_MB check, which read only that header:
  20 MiB went to disk under a 1 MiB limit. Now the body is counted as it arrives and cut at the limit (413).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from app.labelserver.datastore import Sessions, StudiesDir
from app.labelserver.server import ServerConfig, build_app

LIMIT = 1 << 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path: Path, token: str | None):
    import uvicorn

    studies = tmp_path / "studies"
    studies.mkdir()
    image = sitk.GetImageFromArray(np.arange(4 * 32 * 32, dtype=np.int16).reshape(4, 32, 32))
    sitk.WriteImage(image, str(studies / "ct.nii.gz"))
    cfg = ServerConfig(model="litemedsam", segmenter=None, backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work", token=token,
                       max_upload_bytes=LIMIT)
    port = _port()
    server = uvicorn.Server(uvicorn.Config(build_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # 200 polls of 0.05 s until session 25, then went on unstarted
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the label server did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}", port


@pytest.fixture()
def loopback(tmp_path):
    server, thread, url, port = serve(tmp_path, None)
    yield url, port, tmp_path
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("path", ["/datastore/?output=all", "/datastore/image?image=ct", "/info/"])
def test_a_rebound_attacker_name_gets_nothing_from_a_server_without_a_token(loopback, path):
    url, port, _ = loopback
    reply = requests.get(url + path, headers={"Host": f"attacker.example:{port}"}, timeout=30)
    assert reply.status_code == 403
    assert b"ct" not in reply.content and "MEDSEG_TOKEN" in reply.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost", "[::1]:{port}", "127.0.0.2"])
def test_loopback_names_still_reach_it(loopback, host):
    url, port, _ = loopback
    reply = requests.get(url + "/datastore/image?image=ct", headers={"Host": host.format(port=port)}, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-disposition"].startswith("attachment")
    image = sitk.ReadImage(str(_saved(loopback[2], reply.content)))
    assert sitk.GetArrayFromImage(image).shape == (4, 32, 32)


def _saved(folder: Path, body: bytes) -> Path:
    path = folder / "got.nii.gz"
    path.write_bytes(body)
    return path


def test_with_a_token_any_host_name_may_ask_a_proxy_passes_its_own(tmp_path):
    token = "t" * 24
    server, thread, url, port = serve(tmp_path, token)
    try:
        headers = {"Host": "medseg.example.org", "Authorization": f"Bearer {token}"}
        assert requests.get(url + "/datastore/?output=all", headers=headers, timeout=30).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_chunked_upload_is_cut_at_the_limit_and_nothing_is_kept(loopback):
    url, port, tmp_path = loopback
    sent = []

    def body():
        yield (b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(20):  # 20 MiB against a 1 MiB limit, without a Content-Length
            sent.append(1)
            yield b"\0" * (1 << 20)
        yield b"\r\n--xx--\r\n"

    try:
        reply = requests.put(url + "/datastore/image?image=big", data=body(),
                             headers={"Content-Type": "multipart/form-data; boundary=xx"}, timeout=60)
        assert reply.status_code == 413 and "MEDSEG_MAX_UPLOAD_MB" in reply.json()["detail"]
    except requests.ConnectionError:
        pass  # the server may close the connection while the client is still sending: also a refusal
    assert not list((tmp_path / "studies").glob("big*"))
    assert requests.get(url + "/datastore/?output=all", timeout=30).status_code == 200  # still serving


DEEP = "[" * 100_000 + "]" * 100_000  # 195 KiB of nested lists: deeper than the JSON parser's stack


@pytest.mark.parametrize("route", ["infer", "label"])
def test_params_nested_too_deep_are_one_400_line(loopback, route):
    """Before: RecursionError out of ``json.loads`` -> 500 "Internal Server Error" and a traceback in the log."""
    url, _, _ = loopback
    if route == "infer":
        reply = requests.post(url + "/infer/litemedsam?image=ct", files={"params": (None, DEEP)}, timeout=30)
    else:
        reply = requests.put(url + "/datastore/label?image=ct", timeout=30,
                             files={"params": (None, DEEP), "label": ("ct.nii.gz", b"x", "application/gzip")})
    assert reply.status_code == 400, reply.text[:200]
    assert reply.json()["detail"] == "params: not valid JSON (nested too deep)"
    assert requests.get(url + "/info/", timeout=30).status_code == 200
