"""A session whose files were damaged on disk (a truncated or hand-edited state.json, a cut labels.npz, a study
that can no longer be read). Before: the page load deleted the whole session folder (labels, uploads) without
a word, or raised AttributeError/TypeError from deep inside the restore on every reload. Now the page says in
one line what could not be restored, naming the file and field, a new session starts under the browser's id,
and the old folder is set aside on the server with everything the user annotated."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from app import controller
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionError, SessionStore
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"


def state_edit(**fields):
    return lambda text: json.dumps({**json.loads(text), **fields})


DAMAGE = {  # what was done to state.json -> a fragment the one-line reason must hold
    "truncated": (lambda text: text[: len(text) // 2], "state.json"),
    "emptied": (lambda text: "", "state.json"),
    "a list": (lambda text: "[]", "state.json: expected a JSON object"),
    "label value text": (state_edit(labels=[{"value": "x", "name": "a", "colour": [1, 2, 3]}]), "labels"),
    "label without value": (state_edit(labels=[{"name": "a"}]), "labels"),
    "label colour of one value": (state_edit(labels=[{"value": 1, "name": "a", "colour": [1]}]), "colour"),
    "view a list": (state_edit(view=[]), "view"),
    "slice index text": (state_edit(view={"view": "axial", "index": {"axial": "x"}}), "view.index"),
    "history a list": (state_edit(history=[1]), "history"),
    "active text": (state_edit(active="one"), "active"),
    "study path a number": (state_edit(study_path=5), "study_path"),
    "updated text": (state_edit(updated="x"), "updated"),
    "studies a list": (state_edit(studies=[1]), "studies"),
    "journal_seq text": (state_edit(journal_seq="x"), "journal_seq"),
    "anchor slice text": (state_edit(anchors={"1": ["x"]}), "anchors"),
    "study gone": (state_edit(study_path="/nonexistent/ct"), "can no longer be read"),
}


@pytest.fixture()
def saved(tmp_path):
    """A session with the CT open and 100 voxels of label 1, saved; returns (root, id)."""
    store = SessionStore(tmp_path / "sessions")
    session = store.create()
    session.start_study(read_study(CT), str(CT), "ct")
    session.labels[3, 10:20, 10:20] = 1
    store.save(session)
    return tmp_path / "sessions", session.id


def the_work_set_aside(root, sid) -> np.ndarray:
    """The labels of the session's folder as it was set aside (exactly one such folder)."""
    aside = [p for p in (root / ".unrestored").iterdir() if p.name.startswith(sid)]
    assert len(aside) == 1, aside
    with np.load(aside[0] / "labels.npz") as z:
        return z["labels"]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_state_is_one_line_naming_the_field_and_the_labels_are_kept(damage, saved):
    root, sid = saved
    spoil, fragment = DAMAGE[damage]
    state = root / sid / "state.json"
    state.write_text(spoil(state.read_text()))

    with pytest.raises(SessionError) as raised:  # every action's lookup: one clear error, not a crash
        SessionStore(root).get(sid)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)

    session, restored = SessionStore(root).open(sid)  # the page load
    assert not restored and session.id == sid and session.volume is None
    assert int((the_work_set_aside(root, sid) == 1).sum()) == 100  # nothing the user annotated is lost


def test_the_page_says_what_was_not_restored_and_a_new_session_works(saved):
    root, sid = saved
    (root / sid / "state.json").write_text("{\"labels\": 7")
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(root), runner, Prefetcher(runner, radius=0))
    vm = controller.start(ctx, sid)
    assert vm.status.startswith("⚠") and "could not be restored" in vm.status and "state.json" in vm.status
    assert "\n" not in vm.status and sid not in vm.status
    vm = controller.open_sample(ctx, sid, next(iter(controller.sample_studies())))  # the new session is usable at once
    assert vm.slice_max > 0
    assert int((the_work_set_aside(root, sid) == 1).sum()) == 100


def test_a_cut_label_file_is_named_and_the_rest_is_set_aside(saved):
    root, sid = saved
    labels = root / sid / "labels.npz"
    labels.write_bytes(labels.read_bytes()[:200])
    with pytest.raises(SessionError, match="labels.npz"):
        SessionStore(root).get(sid)
    SessionStore(root).open(sid)
    aside = [p for p in (root / ".unrestored").iterdir() if p.name.startswith(sid)]
    assert len(aside) == 1 and (aside[0] / "state.json").is_file()


def test_sessions_set_aside_expire_with_the_session_ttl(saved):
    root, sid = saved
    (root / sid / "state.json").write_text("")
    store = SessionStore(root, ttl_s=3600)
    store.open(sid)
    store.cleanup()
    assert any((root / ".unrestored").iterdir())  # kept while young
    store.cleanup(now=time.time() + 7200)
    assert not any((root / ".unrestored").iterdir())
