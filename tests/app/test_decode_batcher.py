"""Decoder requests of several sessions batched (app/decode_batcher.py) through the runner a GPU server uses
(``ModelRunner(batch_window_ms=...)``, here on the CPU with the real model): clicks of two sessions at once are
answered by one batch, each with the mask it gets from a one-at-a-time runner, and a bad click fails alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app import controller, interaction
from app.controller import AppContext
from app.decode_batcher import DecodeBatcher
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionStore
from models.prompts import PromptError

CT = "CT head (DICOM series, 12 slices)"


def test_requests_of_one_model_and_mask_count_share_a_batch_and_errors_stay_with_their_request():
    calls = []

    class Fake:
        def predict_many(self, embeddings, prompts, *, multimask_output=False):
            calls.append((list(prompts), multimask_output))
            return [ValueError("bad prompt") if p == "bad" else f"mask of {p}" for p in prompts]

    b = DecodeBatcher(lambda model: Fake(), window_s=0.0, autostart=False)
    futures = {(s, p, mm): b.submit(s, "m", None, p, mm) for s, p, mm in
               [("a", "p1", False), ("b", "bad", False), ("c", "p3", True), ("d", "p4", False)]}
    b.run(b.take())  # the longest-waiting session's group: single-mask requests of a, b, d
    assert calls == [(["p1", "bad", "p4"], False)]
    assert futures[("a", "p1", False)].result(timeout=1) == "mask of p1"
    assert futures[("d", "p4", False)].result(timeout=1) == "mask of p4"
    with pytest.raises(ValueError, match="bad prompt"):
        futures[("b", "bad", False)].result(timeout=1)
    assert not futures[("c", "p3", True)].done()
    b.run(b.take())
    assert calls[-1] == (["p3"], True) and futures[("c", "p3", True)].result(timeout=1) == "mask of p3"


def _sessions(tmp_path, runner, slices=(4, 7)):
    ctx = AppContext(SessionStore(tmp_path), runner, Prefetcher(runner, radius=0))
    out = []
    for k in slices:
        sid = controller.start(ctx, None).session_id
        controller.open_sample(ctx, sid, CT)
        session = ctx.store.get(sid)
        session.view.index[session.view.view] = k
        out.append(session)
    return out


def test_two_sessions_clicks_are_one_batch_with_the_one_at_a_time_masks(tmp_path, litemedsam):
    batching = ModelRunner("cpu", batch_window_ms=3000.0)  # a long window: both clicks surely meet
    serial = ModelRunner("cpu")
    sessions = _sessions(tmp_path / "a", batching)
    references = _sessions(tmp_path / "b", serial)
    for s, r in zip(sessions + references, references + sessions):  # one encode each, shared: decoder alone differs
        view, k = s.view.view, s.view.index[s.view.view]
        if (s.model, view, k) not in interaction.embeddings_of(s):
            embedding = litemedsam.embed(interaction.plane_image(s, view, k))
            interaction.embeddings_of(s).put((s.model, view, k), embedding)
            interaction.embeddings_of(r).put((r.model, view, k), embedding)
    w = sessions[1].region(sessions[1].view.view, 7).shape[1]
    clicks = [(120.0, 110.0, True), (float(w + 10), 40.0, True)]  # the second outside the plane: its error alone
    answers: dict[int, object] = {}

    def click(i: int) -> None:
        try:
            answers[i] = interaction.click(batching, sessions[i], *clicks[i])
        except PromptError as e:
            answers[i] = e

    # the batch closes once both clicks are in; the window only bounds the wait (3 s until session 25, which a niced
    # CI worker's second thread could miss, and which every run waited out)
    batching.decode_batcher.window_s, batching.decode_batcher.max_batch = 600.0, 2
    threads = [threading.Thread(target=click, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(batching.decode_batcher.history[0]) == sorted(s.id for s in sessions)  # one batch
    batching.decode_batcher.window_s = 0.0  # the next click comes alone: no one to wait for
    assert isinstance(answers[1], PromptError) and "outside the image" in str(answers[1])
    expected = interaction.click(serial, references[0], *clicks[0])
    assert expected.after.unpack().any()
    np.testing.assert_array_equal(answers[0].after.unpack(), expected.after.unpack())
    # the next click refines (box + points + logits): batched again with the one-at-a-time mask
    second = interaction.click(batching, sessions[0], 130.0, 120.0, True)
    np.testing.assert_array_equal(second.after.unpack(), interaction.click(serial, references[0], 130.0, 120.0, True).after.unpack())
