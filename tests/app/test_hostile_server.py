"""Hostile uploads to a real ``medseg serve`` (issue 23): the server stays up, a second session clicking
meanwhile sees no error, nothing uploaded is served inline or left behind, every message is escaped
text without server paths or the session, exports and uploads need the session's cookie.

The server is the real one (a child process, real LiteMedSAM weights, the prefetcher on) driven
through the page protocol (``scripts/page_client``). The hostile files are crafted here; a larger
corpus joins them when ``tests/hostile/corpus.py`` provides ``build_corpus(dir)``.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from pathlib import Path

import httpx
import pydicom
import pytest

from app.messages import unstamped
from app.session import SESSION_ID
from scripts.page_client import OUTPUTS, Page, PageError, ServerProcess
from tests.conftest import ROOT, SAMPLES

CT = "CT head (DICOM series, 12 slices)"
MARKUP_UID = '1.2.3"><img src=x onerror=alert(1)>[session expired: sign in](http://evil.example)'
UNZIP_CAP_MB = 64


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _hostile_files(folder: Path) -> list[Path]:
    """A handful of crafted uploads; the lead's corpus (``tests/hostile/corpus.py``) when present."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.html").write_text("<script>fetch('/steal?'+document.cookie)</script><h1>sign in</h1>")
    (folder / "evil.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'/steal?\'+document.cookie)"><text>x</text></svg>')
    (folder / "page.nii.gz").write_text("<html><body onload=alert(1)>not a NIfTI</body></html>")
    names = _zip(folder / "names.zip", {
        "<img src=x onerror=alert(document.cookie)>.dcm": b"not dicom",
        "[session expired: sign in](http://evil.example).dcm": b"not dicom either",
    })
    bomb = folder / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("big.dcm", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(UNZIP_CAP_MB + 16):
                member.write(chunk)
    files = [folder / "evil.html", folder / "evil.svg", folder / "page.nii.gz", names, bomb]
    if (ROOT / "tests" / "hostile" / "corpus.py").is_file():
        from tests.hostile.corpus import build_corpus  # the reader half's corpus (issue 23)

        build_corpus(folder / "corpus")  # -> Case objects; a case may be a folder (a series) or a FIFO/link
        # every regular file it wrote, one upload each (FIFOs and links cannot travel over HTTP)
        files += _distinct(sorted(p for p in (folder / "corpus").rglob("*") if p.is_file() and not p.is_symlink()))
    return files


def _distinct(paths: list[Path]) -> list[Path]:
    """One upload per distinct (file name, bytes): a series case's slices travel one by one, and the slices its edit
    did not touch are byte for byte those of the other series cases (the same generator), so the same request went
    to the server up to 29 times (393 uploads, 249 distinct)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for path in paths:
        key = (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


def _markup_uid_dicom(folder: Path) -> Path:
    """A real CT slice whose SeriesInstanceUID is markup: it opens, and the facts show the UID."""
    ds = pydicom.dcmread(sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))[0])
    ds.SeriesInstanceUID = MARKUP_UID
    ds.save_as(folder / "markup_uid.dcm")
    return folder / "markup_uid.dcm"


def _shown(messages: list[dict]) -> tuple[list[str], str | None, bool]:
    """(toasts, status line, succeeded) of one event, as the page would show them."""
    toasts = [m.get("log", "") for m in messages if m.get("msg") == "log"]
    done = [m for m in messages if m.get("msg") == "process_completed"]
    status = None
    if done and done[-1].get("success"):
        data = done[-1]["output"]["data"]
        status = data[OUTPUTS.index("status")] if isinstance(data[OUTPUTS.index("status")], str) else None
    return toasts, status, bool(done and done[-1].get("success"))


def _assert_clean(text: str, secrets: list[str], markdown: bool = True) -> None:
    text = unstamped(text)  # the one tag the server adds: when the news happened (app.messages.stamped)
    assert "<" not in text, text  # escaped, never markup
    if markdown:  # the status line is Markdown: a bracket must be escaped, or it can make a link
        assert not re.search(r"(?<!\\)\[", text), text
    for secret in secrets:
        assert secret not in text, f"{secret!r} shown to the user: {text}"


def _clicker(url: str, ready: threading.Event, stop: threading.Event, errors: list[str], done: list[int]) -> None:
    """Session B: opens the CT, clicks once (then ``ready``), and keeps clicking and stepping slices
    until told to stop."""
    page = Page(url)
    try:
        page.load()
        page.open_sample(CT)
        points = [(250, 250), (260, 240), (240, 262)]
        while not stop.is_set() or done[0] < 4:
            page.click(*points[done[0] % len(points)])
            ready.set()
            if done[0] % 2:
                page.set_slice(int(page.last["slice"]) + (1 if done[0] % 4 == 1 else -1))
            done[0] += 1
    except (PageError, httpx.HTTPError) as e:
        errors.append(str(e))
    finally:
        ready.set()
        page.close()


@pytest.mark.slow
def test_hostile_uploads_leave_the_server_up_and_the_other_session_unharmed(tmp_path, monkeypatch, exclusive_server):
    monkeypatch.setenv("MEDSEG_MAX_UNZIPPED_MB", str(UNZIP_CAP_MB))
    state = tmp_path / "state"
    log = tmp_path / "serve.log"
    server = ServerProcess(state, prefetch=1, log_path=log).start()
    ready, stop, errors, done = threading.Event(), threading.Event(), [], [0]
    clicker = threading.Thread(target=_clicker, args=(server.url, ready, stop, errors, done), daemon=True)
    try:
        # no cookie, no upload
        r = httpx.post(server.url + "/gradio_api/upload", files=[("files", ("a.nii.gz", b"x"))])
        assert r.status_code == 403

        attacker = Page(server.url)
        attacker.load()
        token = attacker.token
        (sid,) = [p.name for p in (state / "sessions").iterdir() if SESSION_ID.match(p.name)]  # not .tokens
        secrets = [token, sid, str(state), str(tmp_path), "/tmp/", str(ROOT)]
        clicker.start()
        hostile = _hostile_files(tmp_path / "hostile")
        assert ready.wait(600) and not errors, errors  # B is clicking while the uploads arrive

        uploaded_urls = []
        for path in hostile:
            files = [("files", (path.name, path.read_bytes()))]
            cached = attacker.http.post(attacker.api + "/upload", files=files).raise_for_status().json()
            uploaded_urls += [f"{attacker.api}/file={p}" for p in cached]
            data = [{"path": p, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}} for p in cached]
            toasts, status, ok = _shown(attacker.raw_event("upload", "upload", [None, data]))
            assert ok, f"{path.name}: the event failed (a red Error on the page)"
            assert len(toasts) <= 1, (path.name, toasts)
            for text in toasts:  # toasts render HTML: escaped, so no tag; brackets are plain text there
                _assert_clean(text, secrets, markdown=False)
            _assert_clean(status or "", secrets)
            if toasts:  # refused: one escaped message, and nothing of it kept in the session
                assert status and status.startswith("⚠"), (path.name, status)
                uploads = state / "sessions" / sid / "uploads"
                kept = [p for p in uploads.iterdir()] if uploads.is_dir() else []
                assert len(kept) <= 1, (path.name, kept)  # at most the folder of a study that opened
            assert server.proc.poll() is None, f"the server died on {path.name}"

        # the study with a markup SeriesInstanceUID opens: its facts show the UID as text
        toasts, status, ok = _shown(attacker.upload_files([_markup_uid_dicom(tmp_path)]))
        assert ok and not toasts and status.startswith("Opened"), (toasts, status)
        facts = next(m for m in attacker.raw_event(None, "load", []) if m.get("msg") == "process_completed")
        shown_facts = facts["output"]["data"][OUTPUTS.index("facts")]
        assert "onerror" in shown_facts and "<img" not in shown_facts and "&lt;img" in shown_facts
        assert "\\[session expired: sign in\\]\\(http://evil.example\\)" in shown_facts

        # nothing uploaded is served inline: refused files are gone, the rest download as attachments
        for url in uploaded_urls:
            r = attacker.http.get(url)
            assert r.status_code in (403, 404) or (
                r.headers["content-disposition"].startswith("attachment")
                or r.headers["content-type"].split(";")[0] in ("image/png", "image/jpeg")), (url, r.headers)
        for path in (state / "sessions" / sid).rglob("*"):  # session folders are never served
            r = attacker.http.get(f"{attacker.api}/file={path}")
            assert r.status_code == 403, (path, r.status_code)

        # a width of 0 + Enter: one clear message, no red Error
        attacker.open_sample(CT)
        toasts, status, ok = _shown(attacker.raw_event("width", "submit", [None, 40, 0]))
        assert ok and len(toasts) == 1 and "width must be positive" in toasts[0] and status.startswith("⚠")

        # exports: only to their session
        attacker.export(tmp_path / "mine.nii.gz")
        url = attacker.last["download"]["url"]
        assert httpx.get(url).status_code == 404  # no cookie
        other = Page(server.url)
        other.load()
        assert other.http.get(url).status_code == 404  # another session's cookie
        other.close()

        stop.set()
        clicker.join(timeout=600)
        assert not clicker.is_alive() and not errors, errors
        assert done[0] >= 4
        assert server.proc.poll() is None
    finally:
        stop.set()
        server.stop()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
