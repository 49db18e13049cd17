"""DNS rebinding against `medseg serve` on loopback without a token: a page of attacker.example whose name then
resolves to 127.0.0.1 is same-origin with the server. It gets a session of its own (the cookie keeps users
apart), but everything served without a session was its to read: the operator's `MEDSEG_ALLOWED_ROOTS`
files, and the page and its configuration. Now a server without a token answers only requests addressed to a
loopback name, as `medseg labelserver` does (`app.access.is_loopback_host_header`)."""

from __future__ import annotations

import httpx

from scripts.page_client import ServerProcess
from tests.conftest import ROOT


def test_a_rebound_name_gets_nothing_and_loopback_names_are_served(tmp_path, exclusive_server, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's code, not the venv's `medseg` install's
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "report.txt").write_text("patient Jane Doe, MRN 1234")
    monkeypatch.setenv("MEDSEG_ALLOWED_ROOTS", str(shared))
    server = ServerProcess(tmp_path / "state", prefetch=0, log_path=tmp_path / "serve.log").start()
    try:
        port = server.url.rsplit(":", 1)[1]
        file_url = f"{server.url}/gradio_api/file={shared / 'report.txt'}"
        assert "Jane Doe" in httpx.get(file_url, headers={"Host": f"localhost:{port}"}, timeout=30).text  # served
        for path in (file_url, server.url + "/", server.url + "/config", server.url + "/viewer-api/news"):
            reply = httpx.get(path, headers={"Host": f"attacker.example:{port}"}, timeout=30)
            assert reply.status_code == 403 and "Jane Doe" not in reply.text, (path, reply.status_code)
            assert "MEDSEG_TOKEN" in reply.text and "set-cookie" not in reply.headers
        for host in (f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert httpx.get(server.url + "/config", headers={"Host": host}, timeout=30).status_code == 200
    finally:
        server.stop()
