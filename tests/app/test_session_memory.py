"""What sessions keep in memory (the soak's bound, issue 23).

A closed tab must not keep its study's embeddings (up to 1 GiB for propagation) nor keep a
background encoder filling them; the labels and files stay. All sessions' study embeddings
together stay within ``MEDSEG_STUDY_EMBEDDINGS_MB``.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import pytest

import torch

from app.embedding_cache import embedding_nbytes
from app.interaction import EMBEDDINGS_PER_SESSION, ModelRunner, PlaneEmbeddings
from app.propagation_job import encode_study, propagation_cache, study_embeddings_held
from app.session import SessionStore
from app.settings import get_settings
from data.readers import read_study
from models.segmenter import Embedding
from tests.conftest import SAMPLES


def test_a_closed_page_drops_the_study_embeddings_and_stops_their_encoder(tmp_path):
    store = SessionStore(tmp_path)
    session = store.create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    session.labels[5, 100:110, 100:110] = 1
    store.bind("tab", session.id)
    thread = encode_study(ModelRunner("cpu"), session, batch_size=2)
    cache = session.runtime["propagation_cache"]
    deadline = time.monotonic() + 600
    while len(cache) == 0 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first batch is in
    assert len(cache) >= 1

    store.release("tab")  # the page unloads
    thread.join(600)
    assert not thread.is_alive()
    assert len(cache) < session.volume.num_slices, "the encoder went on after the page had gone"
    assert "propagation_cache" not in session.runtime and "study_encoder" not in session.runtime
    assert "embeddings" not in session.runtime
    assert store.get(session.id).labels[5, 105, 105] == 1  # the work stays


def _session_with(store: SessionStore, volume, held: int):
    """A session whose study cache holds ``held`` (stand-in) embeddings, as encoding would leave it."""
    session = store.create()
    session.start_study(volume, "ct", "ct")
    cache = propagation_cache(session)
    for k in range(held):
        cache.put(("v", k, "m", None), _embedding())
    return session, cache


def _embedding(extra_mib: int = 0) -> Embedding:
    """A stand-in LiteMedSAM embedding (4 MiB of features), with ``extra_mib`` of extra feature maps."""
    extras = {"high_res": torch.zeros(extra_mib << 18)} if extra_mib else {}
    return Embedding(torch.zeros(1, 256, 64, 64), (256, 256), (1024, 1024), "m", extras)


def test_caches_of_embeddings_bound_the_bytes_their_embeddings_really_hold():
    """A plane cache keeps at most the 96 MiB of 24 LiteMedSAM embeddings, whatever the model's embedding
    holds: with 12 MiB of extra feature maps each (16 MiB in all), 6 of them; a view keeps its whole storage."""
    plain, big = PlaneEmbeddings(), PlaneEmbeddings()
    for k in range(30):
        plain.put(("m", "axial", k), _embedding())
        big.put(("m", "axial", k), _embedding(12))
    assert len(plain._items) == EMBEDDINGS_PER_SESSION and plain.nbytes == 96 << 20
    assert len(big._items) == 6 and big.nbytes == 96 << 20
    assert [key[2] for key in big._items] == list(range(24, 30))  # the newest stay
    batch = torch.zeros(8, 256, 64, 64)  # an embedding that is a slice of a batch keeps the batch alive
    view = Embedding(batch[:1], (256, 256), (1024, 1024), "m")
    assert embedding_nbytes(view) == 32 << 20


def test_study_embeddings_of_all_sessions_stay_within_the_server_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_STUDY_EMBEDDINGS_MB", str(20 * 4))  # 20 embeddings of 4 MiB
    get_settings.cache_clear()
    try:
        store = SessionStore(tmp_path)
        volume = read_study(SAMPLES / "ct_head_0051_series")
        a, cache_a = _session_with(store, volume, 12)
        b, cache_b = _session_with(store, volume, 12)  # b in use may pass the budget by its working set ...
        assert study_embeddings_held() == 24
        propagation_cache(b)  # ... and at its next step the least recently used study (a) makes room
        assert len(cache_a) == 0 and len(cache_b) == 12 and study_embeddings_held() <= 20
        c, cache_c = _session_with(store, volume, 12)
        propagation_cache(c)
        assert len(cache_b) == 0 and len(cache_c) == 12  # b was the least recently used now
        assert propagation_cache(a) is cache_a and len(cache_c) == 12  # a, empty, refills on demand
    finally:
        get_settings.cache_clear()


def test_the_background_study_encoder_stops_at_the_server_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_STUDY_EMBEDDINGS_MB", str(2 * 4))  # room for 2 embeddings in all
    get_settings.cache_clear()
    try:
        store = SessionStore(tmp_path)
        session = store.create()
        session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
        thread = encode_study(ModelRunner("cpu"), session, batch_size=2)
        thread.join(600)
        assert not thread.is_alive()
        assert len(session.runtime["propagation_cache"]) == 2  # one batch, then the budget was full
    finally:
        get_settings.cache_clear()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or not platform.libc_ver()[0] == "glibc",
                    reason="malloc_trim is glibc's")
def test_memory_a_model_turn_frees_goes_back_to_the_system_when_the_turn_ends():
    """Activations freed inside a model turn must not stay resident (the soak's RSS swings and floor):
    300 MiB of 64 KiB buffers, freed under a buffer that pins the heap's top, are returned at the turn's end."""
    runner = ModelRunner("cpu")
    before = _rss_mib()
    with runner.turn():
        chunks = [np.ones(8192) for _ in range(4800)]  # 64 KiB each: below mmap's threshold, so heap memory
        pin = np.ones(8192)  # allocated after them: freeing the chunks cannot shrink the heap's top
        grown = _rss_mib() - before
        del chunks
    after = _rss_mib() - before
    del pin
    assert grown > 250, f"the test did not allocate on the heap ({grown:.0f} MiB)"
    assert after < 50, f"{after:.0f} of {grown:.0f} MiB freed in the turn stayed resident"


def test_the_memory_report_counts_what_the_caches_really_hold(tmp_path):
    """The soak tells caches filling from a leak by this report, so it must count true bytes: one
    embedding cached under two keys once, and the undo steps of the open study and of a study left."""
    from app.interaction import embeddings_of
    from app.memory_report import report
    from app.session import Edit, PromptState, undo_nbytes

    store = SessionStore(tmp_path)
    session = store.create()
    volume = read_study(SAMPLES / "ct_head_0051_series")
    session.start_study(volume, "a", "a")
    plane = session.region("axial", 3)
    logits = np.random.default_rng(0).standard_normal((1, 256, 256)).astype(np.float32)  # 0.25 MiB
    session.apply(Edit("x", "axial", 3, plane.copy(), plane + 1, None, PromptState("axial", 3, 1, logits=logits)))
    left = sum(undo_nbytes(session.undo_stack))
    session.start_study(volume, "b", "b")
    shared = _embedding()
    embeddings_of(session).put(("m", "axial", 1), shared)
    embeddings_of(session).put(("m", "axial", 2), shared)
    embeddings_of(session).put(("m", "axial", 3), _embedding())
    session.apply(Edit("y", "axial", 3, session.region("axial", 3).copy(), np.ones_like(plane)))
    r = report(store)
    assert r["plane_embeddings"] == 3 and r["plane_mib"] == 8.0
    assert r["undo_mib"] == round((left + sum(undo_nbytes(session.undo_stack))) / 2**20, 1) and left > 2**18
    assert r["bounds_mib"]["all"] == sum(v for k, v in r["bounds_mib"].items() if k != "all")
