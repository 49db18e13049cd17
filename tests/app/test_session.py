"""Sessions: edits are undoable, every save restores exactly, ids cannot escape the store, old sessions expire."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from app.session import Edit, SessionError, SessionStore
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"


@pytest.fixture(scope="module")
def ct_volume():
    return read_study(CT)


@pytest.fixture()
def store(tmp_path):
    return SessionStore(tmp_path / "sessions", ttl_s=3600)


def _plane_edit(session, value: int, rows: slice, cols: slice) -> Edit:
    region = session.region(session.view.view, session.view.index[session.view.view])
    after = np.array(region, copy=True)
    after[rows, cols] = value
    return Edit("paint", session.view.view, session.view.index[session.view.view], np.array(region, copy=True), after)


def test_undo_redo_restore_each_edit_exactly(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    first = _plane_edit(s, 1, slice(10, 20), slice(10, 20))
    s.apply(first)
    s.add_label("lesion")
    second = _plane_edit(s, 2, slice(15, 30), slice(15, 30))
    s.apply(second)
    snapshots = [np.zeros_like(s.labels), None, s.labels.copy()]
    assert s.undo() is second
    snapshots[1] = s.labels.copy()
    assert int((snapshots[1] == 1).sum()) == 100 and not (snapshots[1] == 2).any()
    assert s.undo() is first
    np.testing.assert_array_equal(s.labels, snapshots[0])
    assert s.undo() is None  # nothing left: a no-op, not an error
    s.redo(), s.redo()
    np.testing.assert_array_equal(s.labels, snapshots[2])
    s.undo()
    s.apply(_plane_edit(s, 2, slice(0, 2), slice(0, 2)))  # a new edit forgets the redo branch
    assert s.redo() is None


def test_clear_label_is_one_undoable_edit_over_the_study(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.labels[0, :5, :5] = 1
    s.labels[11, :5, :5] = 1
    s.labels[3, 100, 100] = 2
    s.add_label("other")
    s.clear_label(1)
    assert not (s.labels == 1).any() and s.labels[3, 100, 100] == 2
    s.undo()
    assert int((s.labels == 1).sum()) == 50


def test_saved_session_restores_in_a_fresh_store(store, ct_volume, tmp_path):
    s = store.create()
    s.start_study(ct_volume, str(CT), "CT head")
    s.add_label("ventricle", (1, 2, 3))
    s.labels[4, 50:60, 70:90] = 2
    s.view.window, s.view.opacity, s.view.index["axial"] = "brain", 0.7, 3
    s.history[2] = [{"kind": "box", "box": [1, 2, 3, 4]}]
    store.save(s)

    again = SessionStore(tmp_path / "sessions").get(s.id)  # as after a server restart
    np.testing.assert_array_equal(again.labels, s.labels)
    assert again.labels.dtype == s.labels.dtype
    table = [(d.value, d.name, d.colour) for d in again.label_defs]
    assert table == [(1, "label 1", s.label_defs[0].colour), (2, "ventricle", (1, 2, 3))]
    assert (again.active, again.view.window, again.view.opacity, again.view.index["axial"]) == (2, "brain", 0.7, 3)
    assert again.history == {2: [{"kind": "box", "box": [1, 2, 3, 4]}]}
    assert again.volume.array.shape == (12, 256, 256) and again.volume.spacing == ct_volume.spacing


def test_uploaded_study_path_is_stored_relative_to_the_session(store, ct_volume, tmp_path):
    s = store.create()
    upload = s.directory / "uploads" / "a" / "series"
    upload.mkdir(parents=True)
    for f in CT.iterdir():
        (upload / f.name).write_bytes(f.read_bytes())
    s.start_study(ct_volume, str(upload), "upload")
    store.save(s)
    state = json.loads((s.directory / "state.json").read_text())
    assert state["study_path"] == "@session/uploads/a/series"
    moved = tmp_path / "moved"
    (tmp_path / "sessions").rename(moved)  # the whole store moves (backup restore): still opens
    assert SessionStore(moved).get(s.id).volume.num_slices == 12


@pytest.mark.parametrize("bad", ["../../etc", "", "A" * 32, "0123456789abcdef0123456789abcde/", None])
def test_malformed_session_ids_are_refused(store, bad):
    with pytest.raises(SessionError):
        store.get(bad)


def test_open_unknown_id_starts_a_new_empty_session_under_that_id(store):
    """The id comes from the browser's cookie (``app.web_session``): the new session must keep it,
    or the next reload would not find it."""
    s, restored = store.open("0" * 32)
    assert not restored and s.id == "0" * 32 and (s.directory / "state.json").is_file() and s.volume is None
    again, restored = store.open("0" * 32)
    assert restored and again is s
    with pytest.raises(SessionError):
        store.open("../../etc")


def test_cleanup_deletes_only_expired_sessions(store):
    old, fresh = store.create(), store.create()
    past = time.time() - 7200
    os.utime(old.directory / "state.json", (past, past))
    assert store.cleanup() == [old.id]
    assert not old.directory.exists() and fresh.directory.exists()
    assert old.id not in store.in_memory()


def test_release_drops_embeddings_but_keeps_work(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.runtime["embeddings"] = object()
    store.bind("hash-a", s.id)
    store.bind("hash-b", s.id)  # a second tab of the same browser
    store.release("hash-a")
    assert "embeddings" in s.runtime  # the other tab still uses it
    store.release("hash-b")
    assert "embeddings" not in s.runtime and store.get(s.id).labels is not None


MR = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


def test_opening_another_study_keeps_the_first_ones_labels_view_and_undo(store, ct_volume, tmp_path):
    """Issue 19: opening a study used to drop the open one's labels ("Nothing to undo" after)."""
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.add_label("horn")
    edit = _plane_edit(s, 2, slice(10, 20), slice(10, 20))
    s.apply(edit)
    s.view.window, s.view.level, s.view.width = "custom", 40.0, 80.0
    ct_labels = s.labels.copy()
    store.save(s)

    s.start_study(read_study(MR), str(MR), "mr")  # another study: fresh labels, its own default window
    assert not s.labels.any() and [d.name for d in s.label_defs] == ["label 1"] and s.view.window == "default"
    assert not s.undo_stack
    store.save(s)

    s.start_study(ct_volume, str(CT), "ct")  # back: labels, table, window and undo history are there
    np.testing.assert_array_equal(s.labels, ct_labels)
    assert [d.name for d in s.label_defs] == ["label 1", "horn"] and s.active == 2
    assert (s.view.window, s.view.level, s.view.width) == ("custom", 40.0, 80.0)
    assert s.undo() is edit and not s.labels.any()
    s.redo()

    # the kept study survives a restart: the MR's (empty) work is on disk, the CT's too
    s.start_study(read_study(MR), str(MR), "mr")
    store.save(s)
    restored = SessionStore(store.root).get(s.id)
    restored.start_study(ct_volume, str(CT), "ct")
    np.testing.assert_array_equal(restored.labels, ct_labels)


def test_reopening_the_open_study_keeps_its_labels(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.apply(_plane_edit(s, 1, slice(0, 5), slice(0, 5)))
    before = s.labels.copy()
    s.start_study(read_study(CT), str(CT), "ct")
    np.testing.assert_array_equal(s.labels, before)
    assert len(s.undo_stack) == 1
