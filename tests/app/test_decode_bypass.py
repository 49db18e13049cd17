"""A batching runner (``ModelRunner(batch_window_ms=4)``: ``medseg serve --batch-window-ms 4``, a load test, a
benchmark) sends a prompt through the decode batcher only where the model's decoder can batch
(``ModelRunner.batches_decodes``, ``models.decode_many.batches``); elsewhere straight to the model.

Why (issue 22, docs/benchmarks.md section H): on ``torch-fp16`` the decoders replay as CUDA graphs, one request
each, so the batcher's worker ran them one by one anyway; on one H100, 20 sessions' click p95 was 50-94 ms
through it against 23-37 ms one at a time. The graphed segmenter here is the one ``torch-fp16`` builds
(``runtime.fast.tuned(..., cuda_graphs=True)``), in fp32 on the CPU, where the graphs' static-shape code runs
without a capture (tests/runtime/test_cuda_graphs.py): its decoder is replaced exactly as on the GPU.
Real LiteMedSAM weights, the bundled CT."""

from __future__ import annotations

import numpy as np
import pytest

from app import controller, interaction
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionStore
from runtime.fast import tuned

CT = "CT head (DICOM series, 12 slices)"
BOX = (100.0, 90.0, 160.0, 150.0)
CLICK = (130.0, 120.0)


def _graphed(segmenter):
    return tuned(segmenter, precision="fp32", fuse=False, channels_last=False, cuda_graphs=True)


def _session(tmp_path, runner):
    ctx = AppContext(SessionStore(tmp_path), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT)
    session = ctx.store.get(sid)
    session.view.index[session.view.view] = 5
    return session


def _box_then_click(runner, session) -> list[np.ndarray]:
    """A box, then a click on the same object (box + point + the box's logits fed back): the planes after each."""
    box = interaction.box_prompt(runner, session, BOX)
    click = interaction.click(runner, session, *CLICK, True)
    return [box.after.unpack(), click.after.unpack()]


def _runners(tmp_path, monkeypatch, segmenter):
    """A batching runner and a one-at-a-time runner, both answering with ``segmenter``, each with a session."""
    monkeypatch.setattr(interaction, "load_model", lambda name, device, backend: segmenter)
    batching, serial = ModelRunner("cpu", batch_window_ms=4), ModelRunner("cpu")
    return (batching, _session(tmp_path / "a", batching)), (serial, _session(tmp_path / "b", serial))


@pytest.mark.parametrize("model", ["litemedsam_base", "litemedsam"])
def test_a_decoder_replayed_as_cuda_graphs_is_not_handed_to_the_batcher(tmp_path, monkeypatch, request, model):
    """Before, every prompt went through the batcher, which ran it alone (the base model), or batched the click
    model's prompts eagerly around the refiner's graphs (the shipped model, whose click after the box goes to its
    refiner); now none does, and the masks are the one-at-a-time runner's."""
    graphed = _graphed(request.getfixturevalue(model))
    (batching, session), (serial, reference) = _runners(tmp_path, monkeypatch, graphed)
    planes = _box_then_click(batching, session)
    assert list(batching.decode_batcher.history) == []  # no decode reached the batcher
    assert not batching.batches_decodes(session.model)
    assert "encodes batched within 4 ms; prompts one at a time" in batching.serving(session.model)  # serve says so
    assert list(batching.batcher.history)  # encodes are still batched (a separate question)
    expected = _box_then_click(serial, reference)
    assert planes[0].any() and not np.array_equal(planes[0], planes[1])  # the click changed the box's mask
    for got, want in zip(planes, expected):
        np.testing.assert_array_equal(got, want)


def test_a_plain_torch_decoder_still_goes_through_the_batcher(tmp_path, monkeypatch, litemedsam_base):
    """The same model with its eager torch decoder (``--backend torch`` on a GPU) is batched, as before."""
    (batching, session), (serial, reference) = _runners(tmp_path, monkeypatch, litemedsam_base)
    planes = _box_then_click(batching, session)
    assert [len(b) for b in batching.decode_batcher.history] == [1, 1]  # each prompt, one batch of one session
    assert batching.batches_decodes(session.model) and not serial.batches_decodes(session.model)
    assert batching.serving(session.model) == "sessions' encodes and prompts batched within 4 ms"
    assert serial.serving(session.model) == "model calls one at a time"
    for got, want in zip(planes, _box_then_click(serial, reference)):
        np.testing.assert_array_equal(got, want)
