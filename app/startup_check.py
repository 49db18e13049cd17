"""Gradio's check that the server it has just started answers, made patient enough for a busy machine.

Why: ``Blocks.launch`` ends with ``gradio.networking.url_ok(local_url)``, which gives up at the first HEAD that takes
over 3 s (the timeout leaves its retry loop) and then raises "When localhost is not accessible, a shareable link must
be created": on a machine at load 9 ``medseg serve`` exited at its start with that line (seen in session 23's test
runs; a clinician's workstation busy with other work is that machine). By then the server runs in this process; only
the check's patience changes, and a server that never answers still fails the launch.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import httpx

PATIENCE_S = 60.0
"""How long a fresh server may take to answer its first HEAD before the launch gives up."""
ANSWERED = (200, 401, 301, 302, 303, 307, 308)  # what Gradio's own check takes as "it answers" (auth, redirects)


def answers(url: str, patience_s: float = PATIENCE_S) -> bool:
    """Whether ``url`` answers a HEAD as Gradio's check wants, trying again after a refused connection or an answer
    slower than 3 s until ``patience_s`` has passed."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if httpx.head(url, timeout=3, verify=False).status_code in ANSWERED:
                return True
        except (httpx.TimeoutException, httpx.TransportError, ConnectionError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@contextlib.contextmanager
def patient_launch_check() -> Iterator[None]:
    """Within this block, ``Blocks.launch`` checks its server with :func:`answers` instead of Gradio's ``url_ok``."""
    from gradio import networking

    original = networking.url_ok
    networking.url_ok = answers
    try:
        yield
    finally:
        networking.url_ok = original
