"""A live medseg server (in a thread of the test process, on a free port) and headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` (installed by ``make test``'s set-up) driven by
Playwright. ``MEDSEG_UI_SCREENSHOTS=DIR`` saves the screenshots there (``docs/img`` for the docs).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from app.session import SESSION_ID
from tests.conftest import memoised_embeddings, real_server_turn

CHROMIUM = Path(os.environ.get("MEDSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",  # containers (the GPU machine) give /dev/shm 64 MB; /tmp instead
    "--use-angle=swiftshader",  # WebGL2 for the NiiVue viewer without a GPU
    "--enable-unsafe-swiftshader",
]
needs_browser = pytest.mark.skipif(
    not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None,
    reason=f"Chromium not found at {CHROMIUM} (make test installs Debian's chromium)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The running app: its URL, its on-disk session store (what the server holds) and its model runner
    (a test that holds ``runner.turn()`` makes the server's model work wait).

    A click's full save runs after its answer (``SessionStore.save_edit``), so the files are read once
    the session's background save is done."""

    def __init__(self, url: str, sessions: Path, store, runner=None, demo=None):
        self.url, self.sessions, self.store, self.runner, self.demo = url, sessions, store, runner, demo

    def gradio_idle(self) -> bool:
        """No page event waits in Gradio's queue or runs: every page the server will build for what was asked
        so far is built (a test that races a pick against a click waits for this first)."""
        queue = self.demo._queue
        return (not any(len(q.queue) for q in queue.event_queue_per_concurrency_id.values())
                and all(job is None for job in queue.active_jobs))

    def session_ids(self) -> set[str]:
        return {p.name for p in self.sessions.iterdir() if p.is_dir() and SESSION_ID.match(p.name)}

    def flush(self, sid: str) -> None:
        assert self.store.flush(sid), "the session's background save did not finish"

    def labels(self, sid: str) -> np.ndarray:
        self.flush(sid)
        with np.load(self.sessions / sid / "labels.npz") as z:
            return z["labels"]


@pytest.fixture(scope="package")
def server(tmp_path_factory, litemedsam):
    from app.ui import launch

    state = tmp_path_factory.mktemp("medseg-state")
    # Every test opens the CT sample in a session of its own, and each session encoded its slices afresh (2.3 s of
    # CPU each; two propagations walked all 12): now each distinct slice image is encoded once for the package.
    with real_server_turn(), memoised_embeddings(litemedsam, per_image=True):
        port = _free_port()
        demo = launch("127.0.0.1", port, "litemedsam", "cpu", state_dir=state, prefetch_radius=0, prevent_thread_lock=True)
        yield Server(f"http://127.0.0.1:{port}/", state / "sessions", demo.medseg_ctx.store, demo.medseg_ctx.runner,
                     demo)
        demo.close()


@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield b
        for key in [k for k in _shared if k[0] == id(b)]:
            del _shared[key]
        b.close()


VIEWPORT = {"width": 1440, "height": 900}


class SharedContext:
    """One browser context per server, lent to one test at a time as a fresh browser would be: no cookie (so a new
    session), no localStorage (the viewer keeps a study's locked labels there), no page of an earlier test. What it
    keeps is the HTTP cache (Gradio's scripts, the sample's volume): a page load took ~3.2 s of CPU in a context of its
    own and ~2.1 s in this one (docs/testing.md, session 29), over ~90 tests a run. A page left open on the server's
    origin (``keeper``, a static file: no session, no script) is where the origin's localStorage is cleared."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.keeper = self.context.new_page()
        self.keeper.goto(url + "favicon.ico")
        self.lent = False

    def lend(self) -> "SharedContext":
        self.give_back()
        self.keeper.evaluate("() => { localStorage.clear(); sessionStorage.clear() }")
        self.context.clear_cookies()
        assert not self.context.cookies(), "the shared browser context kept a cookie"
        self.lent = True
        return self

    def give_back(self) -> None:
        """Closes the test's pages (what ``context.close()`` did to a context of its own); the context stays."""
        for page in self.context.pages:
            if page is not self.keeper:
                page.close()
        self.lent = False

    def close(self) -> None:
        self.give_back()

    def __getattr__(self, name: str):  # new_page, cookies, new_cdp_session: the context's own
        return getattr(self.context, name)


_shared: dict[tuple[int, str], SharedContext] = {}


def new_context(browser, url: str, **options):
    """A browser context for a test's page on the server at ``url``: the shared one (see :class:`SharedContext`) when
    the test asks for no other options and has not already borrowed it (a second browser of the same test, another
    user, gets one of its own), else a new one with ``options``. Either way ``close()`` ends it for the test."""
    if not options:
        shared = _shared.get((id(browser), url))
        if shared is None:
            shared = _shared[id(browser), url] = SharedContext(browser, url)
        if not shared.lent:
            return shared.lend()
    return browser.new_context(**{"viewport": VIEWPORT, "accept_downloads": True, **options})


@pytest.fixture(autouse=True)
def _shared_context_given_back():
    """A test that failed before its ``context.close()`` leaves no page in the shared context for the next test."""
    yield
    for shared in _shared.values():
        if shared.lent:
            shared.give_back()


@pytest.fixture()
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("MEDSEG_UI_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def type_colour(page, hex_colour: str) -> None:
    """Type a hex colour into the label's colour picker and close it, as a user does (Enter, then a click away)."""
    page.locator("#label-colour .dialog-button").click()
    hex_input = page.locator("#label-colour .input-wrap input[type=text]")
    hex_input.fill(hex_colour)
    hex_input.press("Enter")
    page.locator("#facts").click()  # close the picker
