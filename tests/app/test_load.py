"""Load: concurrent tabs on the real server never see each other's work, and per-session memory is bounded.

The full run (20 tabs for minutes) is ``scripts/load_test.py``, with its figures in
``docs/reliability.md``; here a short run of the same script (3 tabs, one round on one slice each) and the
bound of the undo history, the per-session store that grows with every edit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.session import MAX_UNDO, MAX_UNDO_BYTES, Edit, PromptState, SessionStore, undo_nbytes
from data.readers import read_study
from tests.conftest import SAMPLES


def _click_edit(session, n: int) -> Edit:
    """An edit as a refining click makes it: the plane before/after and a prompt with its logits."""
    view, index = session.view.view, session.view.index[session.view.view]
    region = session.region(view, index)
    after = np.array(region, copy=True)
    after[n % 50, :] = 1
    prompt = PromptState(view, index, 1, points=((1.0, 2.0),), point_labels=(1,),
                         base=np.array(region, copy=True), logits=np.full((1, 256, 256), n, np.float32))
    return Edit(f"click {n}", view, index, np.array(region, copy=True), after, session.prompt, prompt)


def _first_click_edit(session, n: int) -> Edit:
    """A first click's edit: three multimask candidates (mask, logits, score) ride with its prompt (~1 MiB)."""
    edit = _click_edit(session, n)
    h, w = edit.after.shape
    candidates = tuple((np.zeros((h, w), bool), np.full((1, 256, 256), n + c, np.float32), 0.5) for c in range(3))
    return Edit(edit.description, edit.view, edit.index, edit.before, edit.after, edit.prompt_before,
                PromptState(**{**edit.prompt_after.__dict__, "alternatives": candidates}))


def test_undo_history_is_bounded_in_bytes_and_undo_still_restores_the_newest_steps(tmp_path):
    session = SessionStore(tmp_path).create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    snapshots = []
    for n in range(150):
        snapshots.append(session.labels.copy())
        session.apply(_first_click_edit(session, n), "click+")
    kept = len(session.undo_stack)
    assert sum(undo_nbytes(session.undo_stack)) <= MAX_UNDO_BYTES
    assert 10 <= kept < MAX_UNDO, f"{kept} steps kept: the byte bound should bind before the count on these steps"
    assert [e.description for e in session.undo_stack] == [f"click {n}" for n in range(150 - kept, 150)]
    for n in range(149, 149 - kept, -1):  # each kept step undoes to exactly what it was before
        session.undo()
        np.testing.assert_array_equal(session.labels, snapshots[n])
    assert session.undo() is None


def test_one_step_larger_than_the_bound_stays_undoable(tmp_path):
    session = SessionStore(tmp_path).create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    session.apply(_click_edit(session, 0))
    huge = np.random.default_rng(0).random((2, MAX_UNDO_BYTES // 16 + 1))  # two halves exceed the bound alone
    whole = Edit("propagate", None, None, session.labels.copy(), session.labels + 1, session.prompt,
                 PromptState("axial", 0, 1, base=huge[0].copy(), logits=huge[1].copy()))
    session.apply(whole)
    assert [e.description for e in session.undo_stack] == ["propagate"]
    session.undo()
    assert (session.labels[session.labels != 0] == 1).all()


def test_a_hundred_refining_clicks_keep_all_their_undo_steps_and_the_bytes_counted_are_the_bytes_held(tmp_path):
    """Undo keeps its 100 steps of ordinary clicks within the byte bound, and what the bound counts is
    what the steps really hold (tracemalloc sees numpy's buffers): label planes are packed, and an
    object's base plane and the logits two steps share are counted once."""
    import tracemalloc

    session = SessionStore(tmp_path).create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    view, index = session.view.view, session.view.index[session.view.view]
    yy, xx = np.mgrid[:256, :256]
    snapshots = []
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for n in range(MAX_UNDO):
            if n % 4 == 0:  # a new object: its base is the plane as it is now
                base = np.array(session.region(view, index), copy=True)
                logits = None
            after = base.copy()  # the object grows click by click (a disc)
            after[(yy - 128) ** 2 + (xx - 128) ** 2 < (10 + 5 * (n % 4) + n // 4) ** 2] = 1 + n // 4
            prev = session.prompt
            logits = np.random.default_rng(n).standard_normal((1, 256, 256)).astype(np.float32)
            prompt = PromptState(view, index, 1, points=((1.0, 2.0),), point_labels=(1,), base=base, logits=logits)
            snapshots.append(session.labels.copy())
            session.apply(Edit(f"click {n}", view, index, np.array(session.region(view, index), copy=True),
                               after, prev, prompt), "click+")
            del after, prompt, prev, logits
        del base
        held = tracemalloc.get_traced_memory()[0] - start - sum(a.nbytes for a in snapshots)
    finally:
        tracemalloc.stop()
    counted = sum(undo_nbytes(session.undo_stack))
    assert len(session.undo_stack) == MAX_UNDO, f"only {len(session.undo_stack)} of {MAX_UNDO} click steps kept"
    assert counted <= MAX_UNDO_BYTES
    assert abs(counted - held) <= 0.1 * held, f"counted {counted / 2**20:.1f} MiB, held {held / 2**20:.1f} MiB"
    for n in range(MAX_UNDO - 1, MAX_UNDO - 6, -1):  # packed steps undo exactly
        session.undo()
        np.testing.assert_array_equal(session.labels, snapshots[n])


def test_prefetch_queue_holds_each_plane_once_while_users_keep_the_model_busy(tmp_path):
    from app.interaction import ModelRunner, Prefetcher

    session = SessionStore(tmp_path).create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    runner = ModelRunner("cpu")
    prefetcher = Prefetcher(runner, radius=1)
    with runner.turn():  # a user request holds the model: background work must wait
        for _ in range(50):  # every click asks for the same neighbours again
            prefetcher.request(session, "coronal", 5)
        queued = prefetcher._jobs.unfinished_tasks
        prefetcher.stop()
    assert queued == 2, f"{queued} jobs queued for the 2 neighbours of slice 5"


@pytest.mark.slow
def test_three_tabs_on_the_real_server_see_only_their_own_work(tmp_path, exclusive_server):
    from scripts import load_test

    out = tmp_path / "load.json"
    code = load_test.main(["--sessions", "3", "--seconds", "1", "--slices", "1", "--think", "0",
                           "--prefetch", "0", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["errors"] == [] and figures["cross_talk"] == [], figures
    assert figures["exports_checked"] == 3 and figures["clicks"] == 3 * 6
    assert code == 0


def test_soak_tells_caches_filling_from_a_leak():
    """load_test --soak: the RSS floor minus what the server's caches hold; flat when only caches grow."""
    from scripts.load_test import cache_figures

    t0 = 1000.0
    reports = [{"unix_time": t0 + 60 * m + 30, "embeddings_mib": 100 * m, "undo_mib": 10.0 * m} for m in range(12)]
    filling = [(60 * m + s, 2000 + 110 * m + (400 if s % 7 else 0), 1.0) for m in range(12) for s in range(0, 60, 5)]
    figures = cache_figures(reports, filling, t0)
    assert [row[3] for row in figures["rss_floor_caches_rest_per_minute_mib"]] == [2000] * 11
    assert figures["rest_spread_last_window_pct"] == 0.0
    leaking = [(t, m + 50 * (t // 60), la) for t, m, la in filling]  # +50 MiB a minute beyond the caches
    assert cache_figures(reports, leaking, t0)["rest_spread_last_window_pct"] > 10


def test_studies_left_in_a_session_share_its_undo_bound_and_keep_their_labels_packed(tmp_path):
    """A session that moves between studies keeps one undo bound in all (the studies it left give way
    first) and keeps their label maps packed; going back restores the labels and the newest steps exactly."""
    session = SessionStore(tmp_path).create()
    volume = read_study(SAMPLES / "ct_head_0051_series")
    for name in ("a", "b", "c"):
        session.start_study(volume, name, name)
        for n in range(40):  # ~1 MiB a step: each study alone fills the bound
            session.apply(_first_click_edit(session, n), "click+")
    held = sum(undo_nbytes(session.undo_stack)) + sum(
        sum(undo_nbytes(kept["undo"] + kept["redo"])) for kept in session.stashed.values())
    assert held <= MAX_UNDO_BYTES, f"{held / 2**20:.1f} MiB of undo in the session"
    assert all(kept["labels"].nbytes < volume.array.size // 20 for kept in session.stashed.values())
    labels_c = session.labels.copy()
    session.start_study(volume, "b", "b")
    assert session.labels.any() and session.labels.dtype == np.uint16
    session.start_study(volume, "c", "c")
    np.testing.assert_array_equal(session.labels, labels_c)
    assert session.undo() is not None


def test_undo_counts_logits_that_view_a_tensor_as_the_tensors_whole_storage(tmp_path):
    """A logits map that is ``tensor[0].numpy()`` of a larger decoder output keeps the whole storage:
    the bound must count that, or the history holds several times its bound."""
    import torch

    session = SessionStore(tmp_path).create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    edit = _click_edit(session, 0)
    output = torch.zeros(1, 4, 256, 256)  # 1 MiB, as LiteMedSAM's decoder returns it
    view = output[0, 1:2].numpy()  # the 256 KiB map the app would keep
    step = Edit(edit.description, edit.view, edit.index, edit.before, edit.after, None,
                PromptState(**{**edit.prompt_after.__dict__, "logits": view}))
    assert undo_nbytes([step])[0] >= output.untyped_storage().nbytes() + edit.prompt_after.base.nbytes
