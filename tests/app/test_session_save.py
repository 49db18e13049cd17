"""Autosave writes the label map only when it changed, and what it skips is never lost.

Every viewer action saved the session, and every save compressed the whole label map: 1.1 s for a
300 x 512 x 512 CT on 2 cores, for each slice step or window change that left the labels as they were."""

from __future__ import annotations

import json

import numpy as np

from app.session import Edit, SessionStore
from data.readers import read_study
from tests.conftest import SAMPLES

CT = SAMPLES / "ct_head_0051_series"


def _paint(session, value: int) -> Edit:
    region = session.region(session.view.view, session.view.index[session.view.view])
    after = np.array(region, copy=True)
    after[10:20, 10:20] = value
    return Edit("paint", session.view.view, session.view.index[session.view.view], np.array(region, copy=True), after)


def test_saves_rewrite_the_labels_only_when_they_changed_and_a_restore_has_every_edit(tmp_path):
    store = SessionStore(tmp_path / "sessions", ttl_s=3600)
    s = store.create()
    s.start_study(read_study(CT), str(CT), "ct")
    labels_file = s.directory / "labels.npz"
    store.save(s)
    written = labels_file.stat().st_ino, labels_file.stat().st_mtime_ns

    s.view.index[s.view.view] -= 1  # paging and windowing: the labels are unchanged
    s.view.level, s.view.width = 35.0, 90.0
    store.save(s)
    assert (labels_file.stat().st_ino, labels_file.stat().st_mtime_ns) == written  # not rewritten
    assert json.loads((s.directory / "state.json").read_text())["view"]["level"] == 35.0  # the view is saved all the same

    s.apply(_paint(s, 1))
    store.save(s)
    assert labels_file.stat().st_ino != written[0]  # an edit is written (atomically: a new file)
    s.undo()
    store.save(s)
    with np.load(labels_file) as z:
        assert not z["labels"].any()  # the undo is written too, though it restored an earlier content
    s.redo()
    store.save(s)

    restored = SessionStore(tmp_path / "sessions", ttl_s=3600).get(s.id)
    np.testing.assert_array_equal(restored.labels, s.labels)
    assert int((restored.labels == 1).sum()) == 100
