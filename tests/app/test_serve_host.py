"""DNS rebinding against `medseg serve` on loopback without a token: a page of attacker.example whose name then
resolves to 127.0.0.1 is same-origin with the server. It gets a session of its own (the cookie keeps users
apart), but everything served without a session was its to read: the operator's `MEDSEG_ALLOWED_ROOTS`
files, and the page and its configuration. Now a server without a token answers only requests addressed to a
loopback name, as `medseg labelserver` does (`app.access.is_loopback_host_header`)."""

from __future__ import annotations

import httpx

from scripts.page_client import Page, ServerProcess
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


def test_another_ports_page_neither_reads_the_session_nor_acts_in_it_and_monitoring_is_off(tmp_path, exclusive_server,
                                                                                            monkeypatch):
    """Session 27's real-server pass. Browsers count other ports of this host as the same site: a page served on
    ``localhost:8080`` (``python -m http.server`` over a downloaded HTML file, a dev server) sends medseg's
    SameSite=Strict cookie to ``localhost:7860``, and Gradio's CORS reflected any localhost origin with credentials:
    it read the session's study (``/viewer-api/state``, then its volume) and posted actions into it. Now a request a
    browser marks as another page's (``Sec-Fetch-Site`` same-site or cross-site, not a navigation) is refused before
    anything runs. Gradio's ``/monitoring`` answered anyone and printed its dashboard's key into the server's log;
    it is off."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    server = ServerProcess(tmp_path / "state", prefetch=0, log_path=tmp_path / "serve.log",
                           extra_args=("--open-sample",)).start()
    try:
        port = server.url.rsplit(":", 1)[1]
        base = f"http://localhost:{port}"
        page = Page(base)
        try:
            page.load()  # the CT opens (--open-sample)
            own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Origin": base}
            assert page.http.get(base + "/viewer-api/state", headers=own).json().get("study")  # our page: served
            other = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Origin": "http://localhost:8080"}
            read = page.http.get(base + "/viewer-api/state", headers=other)
            assert read.status_code == 403 and "study" not in read.text, read.text
            assert "another port" in read.text and page.token not in read.text
            act = page.http.post(base + "/viewer-api/action", json={"kind": "new_object"},
                                 headers={**other, "Sec-Fetch-Site": "cross-site"})
            assert act.status_code == 403, act.text
            link = page.http.get(base + "/", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"})
            assert link.status_code == 200  # a link from that page to medseg's still opens it
            assert page.http.get(base + "/viewer-api/state").json().get("study")  # curl-like clients as before
            monitoring = httpx.get(base + "/monitoring", timeout=30)
            assert monitoring.status_code == 403, monitoring.text
        finally:
            page.close()
    finally:
        server.stop()
    assert "Monitoring URL" not in (tmp_path / "serve.log").read_text()
