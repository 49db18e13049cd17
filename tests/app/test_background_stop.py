"""A click never waits for background encoding (issue 19): on a CPU a slice encode takes seconds, and the
prefetch of the neighbouring planes after each prompt made a clicking user wait for it (in
benchmarks/bench_sessions.py at a clinician's pace, 1.7 s of a 2.3 s click went to waiting for the model's
turn). A user request now stops the background encode's ONNX Runtime run at its next node."""

from __future__ import annotations

import threading
import time

import pytest

from app import controller
from app.controller import AppContext
from app.interaction import BackgroundStopped, ModelRunner, Prefetcher, embeddings_of
from app.session import SessionStore

CT_NAME = "CT head (DICOM series, 12 slices)"


@pytest.fixture()
def onnx_session(tmp_path):
    runner = ModelRunner("cpu", backend="onnx-int8-fast")  # the CPU default's kind: ONNX Runtime encodes
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    return runner, ctx.store.get(sid)


def test_a_user_request_stops_a_background_encode_instead_of_waiting_for_it(onnx_session):
    runner, session = onnx_session
    view = session.view.view
    started, outcome = threading.Event(), {}

    def background() -> None:
        try:
            with runner.background() as got:
                assert got
                started.set()
                runner.embedding(session, view, 3)
                outcome["result"] = "finished"
        except BackgroundStopped:
            outcome["result"] = "stopped"

    worker = threading.Thread(target=background)
    worker.start()
    assert started.wait(60)
    with runner.turn():  # the user's request: before, it waited here for the whole encode
        encoded_when_served = (session.model, view, 3) in embeddings_of(session)
    worker.join(600)  # bounded patience (60 s until session 25)
    assert outcome == {"result": "stopped"} and not encoded_when_served
    while runner.busy:  # background work waits until the user has been idle for a moment
        threading.Event().wait(0.05)
    with runner.background() as got:  # the next background turn runs normally (the stop was for that run only)
        assert got
        runner.embedding(session, view, 3)
    assert (session.model, view, 3) in embeddings_of(session)


def test_background_work_yields_when_a_request_is_waiting(onnx_session):
    runner, _ = onnx_session
    with runner.turn():
        with runner.background() as got:
            assert not got


def test_a_stopped_prefetch_is_done_again_once_the_user_is_idle(onnx_session):
    runner, session = onnx_session
    view, index = session.view.view, session.view.index[session.view.view]
    prefetcher = Prefetcher(runner, radius=1)
    stops = []

    def click_during_the_first_encode() -> None:
        deadline = time.monotonic() + 600  # bounded patience (60 s until session 25): a niced CI worker is slow
        while time.monotonic() < deadline:
            if runner._stop_background is not None:  # a background encode is running
                with runner.turn():  # a user's request arrives
                    stops.append(1)
                return
            threading.Event().wait(0.01)

    user = threading.Thread(target=click_during_the_first_encode)
    user.start()
    try:
        prefetcher.request(session, view, index)
        user.join(600)
        deadline = time.monotonic() + 600  # the neighbours' encodes, at a niced worker's pace
        while not prefetcher.idle() and time.monotonic() < deadline:
            threading.Event().wait(0.1)
    finally:
        prefetcher.stop()
    neighbours = prefetcher.neighbours(session, view, index)
    assert stops and all((session.model, view, k) in embeddings_of(session) for k in neighbours)
