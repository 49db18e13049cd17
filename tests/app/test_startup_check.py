"""``medseg serve`` on a busy machine: Gradio's launch check gave up at the first HEAD slower than 3 s and the server
exited with "When localhost is not accessible, a shareable link must be created" (session 23, at load 9)."""

from __future__ import annotations

import socket

import gradio as gr
import httpx
import pytest

from app.startup_check import answers, patient_launch_check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_first_answer_slower_than_3_s_does_not_stop_the_launch(monkeypatch):
    """The server's first HEAD times out (as on a loaded machine), the next answers: the launch goes on and the page
    is served. Without the patient check Gradio raises its 'shareable link' error and the server is gone."""
    real_head, heads = httpx.head, []

    def first_one_slow(url, **kwargs):
        heads.append(url)
        if len(heads) == 1:
            raise httpx.ReadTimeout("the busy machine's first answer took over 3 s")
        return real_head(url, **kwargs)

    monkeypatch.setattr(httpx, "head", first_one_slow)
    with gr.Blocks() as demo:
        gr.Markdown("medseg")
    with patient_launch_check():
        demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        assert len(heads) >= 2
        assert httpx.get(demo.local_url, timeout=10).status_code == 200
    finally:
        demo.close()


def test_a_server_that_never_answers_still_fails_the_check():
    """Patience, not blindness: a port nobody listens on is not taken as a server."""
    assert not answers(f"http://127.0.0.1:{_free_port()}/", patience_s=0.6)


@pytest.mark.parametrize("patched", [False, True])
def test_the_check_is_gradios_own_outside_the_block(patched):
    from gradio import networking

    original = networking.url_ok
    if patched:
        with patient_launch_check():
            assert networking.url_ok is answers
    assert networking.url_ok is original
