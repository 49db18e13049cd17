"""Sessions: edits are undoable, every save restores exactly, ids cannot escape the store, old sessions expire."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.session import (
    PALETTE, Edit, LabelDef, PromptState, Session, SessionError, SessionStore, ViewState, edit_nbytes, study_key,
)
from data.readers import read_study
from tests.conftest import DATA, SAMPLES

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
    # the viewer orders label revisions within one server process: a session loaded again counts on above them
    # (another process is told apart by its ``messages.BOOT``)
    assert again.revision > s.revision


def test_propagation_anchors_survive_a_restart_and_a_study_switch(store, ct_volume, tmp_path):
    """The slices a user corrected (anchors, which re-propagation keeps) lived only in memory: after a restart or
    a look at another study a re-propagation overwrote the corrections (docs/ui.md, the 3D workflow in a hurry)."""
    from app.propagation_job import anchors_of

    s = store.create()
    s.start_study(ct_volume, str(CT), "CT head")
    s.labels[4, 50:60, 70:90] = 1
    anchors_of(s, 1).update({2, 4})
    store.save(s)
    again = SessionStore(tmp_path / "sessions").get(s.id)  # as after a server restart
    assert anchors_of(again, 1) == {2, 4}
    other = replace(ct_volume, array=ct_volume.array[:6])
    again.start_study(other, str(CT) + "-cut", "cut")
    assert anchors_of(again, 1) == set()
    again.start_study(ct_volume, str(CT), "CT head")
    assert anchors_of(again, 1) == {2, 4}


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
DATA_CT = DATA / "ct_head_0051_slabA_image.nii.gz"


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


# --- values a user sees after each session operation (issue 26: mutation testing) -------------------


def test_a_new_study_starts_with_one_label_in_the_middle_slices(store, ct_volume):
    s = store.create()
    s.view.mode = "box"
    s.start_study(ct_volume, str(CT), "ct")
    assert s.labels.shape == (12, 256, 256) and s.labels.dtype == np.uint16 and not s.labels.any()
    assert s.label_defs == [LabelDef(1, "label 1", PALETTE[0])] and s.active == 1 and s.prompt is None
    assert s.view.view == "coronal" and s.view.index == {"axial": 128, "coronal": 6, "sagittal": 128}
    assert s.view.mode == "box"  # the tool stays; the rest of the view is the new study's
    store.save(s)
    assert s.studies == {} and not (s.directory / "studies").exists()  # nothing was open before


def test_a_2d_rgb_image_has_one_view_and_grey_labels(store, tmp_path):
    from PIL import Image

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    volume = read_study(tmp_path / "photo.png")
    s = store.create()
    s.start_study(volume, str(tmp_path / "photo.png"), "photo")
    assert s.labels.shape == (1, 20, 30) and s.view.index == {"axial": 0}
    s.labels[0, 1, 1] = 1
    s.runtime["embeddings"] = "cached"
    s.start_study(read_study(tmp_path / "photo.png"), str(tmp_path / "photo.png"), "photo again")
    assert s.labels[0, 1, 1] == 1 and s.runtime == {"embeddings": "cached"} and s.study_name == "photo again"
    s.start_study(read_study(CT), str(CT), "ct")  # away and back: the photo's labels come back
    store.save(s)
    store.save(s)  # autosave runs after every edit: a second save of the kept study works too
    s.start_study(read_study(tmp_path / "photo.png"), str(tmp_path / "photo.png"), "photo")
    assert s.labels.shape == (1, 20, 30) and s.labels[0, 1, 1] == 1
    store.save(s)
    again = SessionStore(store.root).get(s.id)  # and after a restart
    assert again.labels.shape == (1, 20, 30) and again.labels[0, 1, 1] == 1
    (s.directory / "labels.npz").unlink()  # a lost label map: an empty one on the image's grid
    assert SessionStore(store.root).get(s.id).labels.shape == (1, 20, 30)
    again.start_study(read_study(CT), str(CT), "ct")
    store.save(again)
    (again.directory / "studies" / f"{study_key(str(tmp_path / 'photo.png'))}.npz").unlink()
    restarted = SessionStore(store.root).get(again.id)
    restarted.start_study(read_study(tmp_path / "photo.png"), str(tmp_path / "photo.png"), "photo")
    assert restarted.labels.shape == (1, 20, 30) and not restarted.labels.any()


def test_reopening_keeps_the_cache_and_counts_one_change(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.runtime["embeddings"] = "cached"
    s.prompt = PromptState("axial", 1, 1)
    revision = s.revision
    s.start_study(ct_volume, str(CT), "ct")
    assert s.runtime == {"embeddings": "cached"} and s.prompt is None and s.revision == revision + 1


def test_the_same_file_with_another_series_uid_is_another_study(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "a", series_uid="1.2.3")
    s.labels[0, 0, 0] = 1
    revision = s.revision
    s.start_study(ct_volume, str(CT), "b", series_uid="1.2.4")
    assert not s.labels.any() and s.prompt is None and s.revision == revision + 1
    s.start_study(ct_volume, str(CT), "a", series_uid="1.2.3")
    assert s.labels[0, 0, 0] == 1
    assert study_key(str(CT), "1.2.3") != study_key(str(CT)) == study_key(str(CT), "")


def test_study_keys_are_stable_across_versions():
    """The key names the kept labels file of saved sessions (studies/<key>.npz): it must not change."""
    assert study_key("/data/ct.nii.gz") == study_key("/data/../data/ct.nii.gz") == "be7096903e7f8e19"
    assert study_key("/data/ct.nii.gz", "1.2") == "432ef96c773cdd4f"


def test_switching_studies_without_a_save_keeps_labels_history_and_redo(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    edit = _plane_edit(s, 1, slice(0, 4), slice(0, 4))
    s.apply(edit)
    s.undo()  # the edit waits on the redo stack
    s.history[1] = [{"kind": "click"}]
    s.labels[5, 5, 5] = 1
    painted = s.labels.copy()
    s.start_study(read_study(MR), str(MR), "mr")  # no save in between: the work is in memory
    s.start_study(ct_volume, str(CT), "ct")
    np.testing.assert_array_equal(s.labels, painted)
    assert s.history == {1: [{"kind": "click"}]} and s.redo() is edit
    s.start_study(read_study(MR), str(MR), "mr")
    del s.studies[study_key(str(CT))]["history"]  # kept by a version without prompt history
    s.start_study(ct_volume, str(CT), "ct")
    assert s.history == {} and s.labels[5, 5, 5] == 1


def test_a_kept_study_whose_file_changed_shape_starts_empty(store, tmp_path):
    """The study file was replaced by another of a different size: its kept labels cannot apply."""
    import shutil as sh

    path = tmp_path / "study.nii.gz"
    sh.copyfile(MR, path)
    s = store.create()
    s.start_study(read_study(path), str(path), "study")
    s.labels[...] = 1
    s.start_study(read_study(CT), str(CT), "ct")
    sh.copyfile(DATA_CT, path)
    other = read_study(path)
    s.start_study(other, str(path), "study")
    assert s.labels.shape == other.array.shape and s.labels.dtype == np.uint16 and not s.labels.any()


def test_labels_table(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.prompt = PromptState("axial", 1, 1)
    second = s.add_label("  ")
    assert second == LabelDef(2, "label 2", PALETTE[1]) and s.active == 2 and s.prompt is None
    for _ in range(9):
        last = s.add_label()
    assert last == LabelDef(11, "label 11", PALETTE[0])  # the palette wraps
    assert s.label(2) == second
    with pytest.raises(SessionError, match=r"^no label 99; labels are 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11$"):
        s.label(99)
    s.edit_label(2, name=" horn ")
    s.edit_label(2, colour=(1, 2, 3))
    s.edit_label(2, name="")  # an empty name keeps the old one
    assert s.label(2) == LabelDef(2, "horn", (1, 2, 3)) and s.label(1) == LabelDef(1, "label 1", PALETTE[0])
    assert s.colours()[2] == (1, 2, 3)
    with pytest.raises(SessionError):
        s.edit_label(99, name="x")
    s.label_defs = [LabelDef(65534, "last but one", (0, 0, 0))]
    assert s.add_label().value == 65535  # the largest uint16 value
    with pytest.raises(SessionError, match=r"^at most 65535 labels per study$"):
        s.add_label()
    fresh = Session(id="f" * 32, directory=Path("."))
    assert fresh.add_label().value == 1


def test_edits_record_their_prompt_and_count_each_change(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    before = PromptState("axial", 3, 1)
    after = PromptState("axial", 3, 1, points=((1.5, 2.0),), point_labels=(1,), box=(1.0, 2.0, 3.0, 4.0))
    assert after.same_target("axial", 3, 1) and not after.same_target("axial", 3, 2)
    s.prompt = before
    r = s.revision
    edit = replace_prompts(_plane_edit(s, 1, slice(0, 2), slice(0, 2)), before, after)
    s.apply(edit, "box")
    assert s.prompt is after and s.revision == r + 1
    record = s.history[1][0]
    assert record == {"kind": "box", "view": "axial", "index": 3, "points": [[1.5, 2.0]], "point_labels": [1],
                      "box": [1.0, 2.0, 3.0, 4.0], "time": record["time"]}
    assert isinstance(record["time"], float) and abs(record["time"] - time.time()) < 60
    assert record["time"] == round(record["time"], 3)
    assert PromptState("axial", 3, 1).record("click")["box"] is None
    s.apply(replace_prompts(_plane_edit(s, 1, slice(2, 3), slice(0, 2)), after, after))  # no kind: not logged
    s.apply(replace_prompts(_plane_edit(s, 1, slice(3, 4), slice(0, 2)), after, None), "click")
    assert len(s.history[1]) == 1
    s.undo(), s.undo()
    assert s.prompt is after and s.revision == r + 5
    s.undo()
    assert s.prompt is before and s.revision == r + 6
    s.redo()
    assert s.prompt is after and s.revision == r + 7


def replace_prompts(edit: Edit, before, after) -> Edit:
    return replace(edit, prompt_before=before, prompt_after=after)


def test_undo_memory_counts_every_array_of_a_step():
    """The prompt a step leads to keeps its base plane, logits and every alternative alive: each counts."""
    def arrays():
        return np.zeros((4, 4), np.uint16), np.zeros((1, 8, 8), np.float32)

    def alternative():
        return np.zeros((4, 4), bool), np.zeros((1, 8, 8), np.float32), 0.9

    base, logits = arrays()
    prompt = PromptState("axial", 0, 1, base=base, logits=logits, alternatives=(alternative(), alternative()))
    plane = np.zeros((4, 4), np.uint8)
    bare = Edit("x", "axial", 0, plane.copy(), plane.copy(), None, None)
    full = Edit("x", "axial", 0, plane.copy(), plane.copy(), None, prompt)
    assert edit_nbytes(full) - edit_nbytes(bare) == 32 + 256 + 2 * (16 + 256)


def test_undo_history_is_bounded_by_bytes_and_keeps_the_newest(tmp_path):
    """The newest steps that fit in MAX_UNDO_BYTES stay; one step larger than that alone still stays."""
    from app.session import MAX_UNDO_BYTES

    rng = np.random.default_rng(0)
    s = Session(id="a" * 32, directory=tmp_path)
    s.labels = rng.integers(0, 60000, (512, 1024), dtype=np.uint16)  # 1 MiB that does not compress
    edits = []
    for _ in range(20):
        after = rng.integers(0, 60000, s.labels.shape, dtype=np.uint16)
        edits.append(Edit("fill", None, None, s.labels.copy(), after))
        s.apply(edits[-1])
    sizes = [edit_nbytes(e) for e in edits]
    fit = max(k for k in range(1, 21) if k == 1 or sum(sizes[-k:]) <= MAX_UNDO_BYTES)
    assert 10 <= fit < 20 and s.undo_stack == edits[-fit:]
    s.labels = rng.integers(0, 60000, (17, 512, 1024), dtype=np.uint16)  # a step of more than 32 MiB
    big = [Edit("big", None, None, s.labels.copy(), rng.integers(0, 60000, s.labels.shape, dtype=np.uint16))
           for _ in range(2)]
    s.apply(big[0])
    assert s.undo_stack == [big[0]]
    s.apply(big[1])
    assert s.undo_stack == [big[1]]


def test_a_session_without_a_study_says_so(tmp_path):
    s = Session(id="a" * 32, directory=tmp_path)
    message = r"^no study is open: pick a sample or upload one first$"
    with pytest.raises(SessionError, match=message):
        s.require_study()
    s.volume = read_study(CT)  # a volume but no label map yet
    with pytest.raises(SessionError, match=message):
        s.require_study()


def test_clearing_a_label_keeps_the_map_type_and_the_prompt(store, ct_volume):
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.add_label("lesion")
    assert s.clear_label(2) is None  # nothing to clear: no step
    s.labels[2, 3, 4] = 2
    prompt = PromptState("axial", 1, 2)
    s.prompt = prompt
    edit = s.clear_label(2)
    assert edit.description == "clear lesion" and s.labels.dtype == np.uint16 and not s.labels.any()
    assert edit.after.dtype == np.uint16  # the undo step's bytes count against MAX_UNDO_BYTES
    assert s.prompt is None
    s.undo()
    assert s.prompt is prompt and s.labels[2, 3, 4] == 2


def test_state_json_and_restore_keep_every_field(store, ct_volume, tmp_path):
    s = store.create()
    s.model = "medsam"
    s.start_study(ct_volume, str(CT), "CT head", series_uid=None)
    store.save(s)
    state = json.loads((s.directory / "state.json").read_text())
    assert (state["version"], state["id"], state["model"], state["study_name"], state["series_uid"]) == (
        1, s.id, "medsam", "CT head", None)
    assert state["study_path"] == str(CT) and state["updated"] == s.updated
    again = SessionStore(store.root).get(s.id)
    assert (again.model, again.study_name, again.study_path, again.updated) == ("medsam", "CT head", str(CT), s.updated)


@pytest.mark.parametrize("uploaded", [False, True])
def test_a_session_of_one_series_in_a_folder_of_two_restores_that_series(store, tmp_path, uploaded):
    """The folder holds two series (without the uid, reading it is an error): the saved uid picks one,
    for a sample (read in process) and an upload (read in the limited child)."""
    import pydicom

    s = store.create()
    folder = (s.directory / "uploads" / "1" / "two") if uploaded else (tmp_path / "two")
    folder.mkdir(parents=True)
    files = sorted(CT.iterdir())
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    for f in files[:4]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(folder / f"b_{f.name}")
    uid = "1.2.826.0.1.3680043.8.498.4242"
    s.start_study(read_study(folder, series_uid=uid), str(folder), "b", series_uid=uid)
    store.save(s)
    again = SessionStore(store.root).get(s.id)
    assert again.series_uid == uid and again.volume.num_slices == 4 and again.labels.shape[0] == 4


def test_an_old_minimal_state_restores_with_defaults(store):
    s = store.create()
    (s.directory / "state.json").write_text(json.dumps({"version": 1}))
    again = SessionStore(store.root).get(s.id)
    assert (again.model, again.study_name, again.series_uid, again.label_defs, again.active) == (
        "litemedsam", "", None, [], 1)
    assert (again.history, again.studies, again.view, again.volume) == ({}, {}, ViewState(), None)
    assert isinstance(again.updated, float) and abs(again.updated - time.time()) < 60


def test_restore_errors_and_a_missing_or_stale_label_map(store, ct_volume, tmp_path):
    fresh = SessionStore(store.root)
    with pytest.raises(SessionError, match=r"^no saved session: reload the page$"):
        fresh.get("b" * 32)
    s = store.create()
    (s.directory / "state.json").write_text("{not json")
    with pytest.raises(SessionError, match=r"^state\.json: not readable JSON \(Expecting property name enclosed in "
                                           r"double quotes: line 1 column 2 \(char 1\)\)$"):
        SessionStore(store.root).get(s.id)
    gone = tmp_path / "gone.nii.gz"
    t = store.create()
    t.start_study(read_study(MR), str(gone), "gone")
    store.save(t)
    with pytest.raises(Exception) as read_error:
        read_study(gone)
    expected = f"the session's study can no longer be read ({read_error.value})"
    with pytest.raises(SessionError, match=f"^{re.escape(expected)}$"):
        SessionStore(store.root).get(t.id)
    u = store.create()
    u.start_study(ct_volume, str(CT), "ct")
    u.labels[0, 0, 0] = 1
    store.save(u)
    (u.directory / "labels.npz").unlink()  # lost: an empty map of the study's shape
    restored = SessionStore(store.root).get(u.id)
    assert restored.labels.shape == (12, 256, 256) and restored.labels.dtype == np.uint16 and not restored.labels.any()
    with open(u.directory / "labels.npz", "wb") as f:
        np.savez_compressed(f, labels=np.ones((2, 2, 2), np.uint8))  # another study's map
    restored = SessionStore(store.root).get(u.id)
    assert restored.labels.shape == (12, 256, 256) and restored.labels.dtype == np.uint16 and not restored.labels.any()


def test_store_ids_memory_and_reopen(tmp_path):
    store = SessionStore(tmp_path / "s")
    with pytest.raises(SessionError, match=r"^malformed session id$"):
        store.create("../x")
    with pytest.raises(SessionError, match=r"^malformed session id: reload the page$"):
        store.get("../x")
    first = store.create("c" * 32)
    (first.directory / "state.json").write_text(json.dumps({"version": 1, "study_name": "mine"}))
    with pytest.raises(FileExistsError):
        store.create("c" * 32)  # never two sessions in one folder
    assert json.loads((first.directory / "state.json").read_text())["study_name"] == "mine"
    sessions = [first] + [store.create() for _ in range(32)]  # 32 are kept in memory by default
    assert store.in_memory() == [x.id for x in sessions[1:]] and store.peek(first.id) is None
    assert store.exists(first.id) and store.exists(sessions[-1].id)
    assert not store.exists("d" * 32) and not store.exists("../x") and not store.exists(None)
    small = SessionStore(tmp_path / "s", max_in_memory=2)
    a, b = small.get(sessions[1].id), small.get(sessions[2].id)
    assert small.get(a.id) is a and small.peek(a.id) is a  # a is now the most recently used
    small.get(sessions[3].id)
    assert small.in_memory() == [a.id, sessions[3].id] and b.id not in small.in_memory()
    broken = small.create("e" * 32)
    (broken.directory / "state.json").write_text("{not json")
    (broken.directory / "stray.bin").write_bytes(b"x")
    fresh_store = SessionStore(tmp_path / "s")
    again, restored = fresh_store.open("e" * 32)  # unreadable: starts again, empty, under the same id
    assert not restored and again.id == "e" * 32 and not (again.directory / "stray.bin").exists()


def test_disk_bytes_count_every_file(store):
    s, t = store.create(), store.create()
    (s.directory / "uploads").mkdir()
    (s.directory / "uploads" / "a.bin").write_bytes(b"x" * 1000)
    (t.directory / "b.bin").write_bytes(b"y" * 10)

    def du(folder):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    assert store.disk_bytes(s.id) == du(s.directory) >= 1000
    assert store.disk_bytes() == du(store.root) == du(s.directory) + du(t.directory)
    assert store.disk_bytes("f" * 32) == 0


def test_release_stops_the_study_encoder_and_drops_every_cache(store):
    import threading

    s = store.create()
    stop = threading.Event()
    s.runtime.update(embeddings=1, propagation_cache=2, study_encoded=3, study_encoder=(None, stop), model=4)
    store.release("never-bound")  # an unknown page: nothing to do
    store.bind("h", s.id)
    store.release("h")
    assert stop.is_set() and s.runtime == {"model": 4}


def test_cleanup_boundaries(tmp_path):
    store = SessionStore(tmp_path / "s", ttl_s=100)
    now = time.time()
    kept, expired = store.create("1" * 32), store.create("2" * 32)
    os.utime(kept.directory / "state.json", (now - 100, now - 100))  # exactly the ttl: kept
    os.utime(expired.directory / "state.json", (now - 101, now - 101))
    for name in ("zz", "notes", "x" * 32):
        (store.root / name).mkdir()
    (store.root / "README").write_text("not a session")
    stateless = store.root / ("3" * 32)
    stateless.mkdir()  # a session folder whose state was never written: its folder's age counts
    os.utime(stateless, (now - 500, now - 500))
    young = store.root / ("4" * 32)
    young.mkdir()
    other = SessionStore(tmp_path / "s", ttl_s=100)  # the expired ones are not in its memory
    assert sorted(other.cleanup(now=now)) == ["2" * 32, "3" * 32]
    assert kept.directory.exists() and young.exists() and (store.root / "zz").exists()
    assert sorted(other.cleanup(now=now + 1000)) == ["1" * 32, "4" * 32]  # `now` is the one given
    assert SessionStore(tmp_path / "nothing").cleanup() == []


def test_a_label_name_longer_than_a_seg_holds_is_refused_and_an_old_one_still_edits(store, ct_volume):
    """A 10 MB name was taken: then sent in every page state, journalled with every click (10 MB a click) and cut
    to 64 characters in the DICOM-SEG. Now one line naming the field; the table and state.json stay as they were.
    A name of 64 characters is kept whole; a longer one a session already held still takes a colour change."""
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    for name in ("x" * 10_000_000, "y" * 65):
        with pytest.raises(SessionError) as e:
            s.add_label(name)
        assert str(e.value) == f"label name: at most 64 characters (what a DICOM-SEG segment label holds), got {len(name)}"
        with pytest.raises(SessionError):
            s.edit_label(1, name=name)
    assert [(d.value, d.name) for d in s.label_defs] == [(1, "label 1")]
    store.save(s)
    state = (s.directory / "state.json").read_text()
    assert len(state) < 64 * 1024 and "y" * 65 not in state
    assert s.add_label("é" * 64).name == "é" * 64
    old = "z" * 200  # restored from a session saved before the bound
    s.label_defs = [LabelDef(1, old, (1, 2, 3))]
    s.edit_label(1, name=old, colour=(4, 5, 6))
    assert s.label(1) == LabelDef(1, old, (4, 5, 6))


def test_other_accounts_cannot_read_a_sessions_uploads_or_exports(tmp_path):
    """An upload is copied in with the umask's mode (0644), in 0755 folders: any other account on the server read
    every session's patient images straight from the disk, around the session cookie. Now the sessions folder is
    0700 (made so, and tightened when a server starts on an older, open one)."""
    from app.uploads import import_upload

    old = tmp_path / "old" / "sessions"
    (old / ("a" * 32)).mkdir(parents=True)
    os.chmod(old, 0o755)
    SessionStore(old)
    assert old.stat().st_mode & 0o777 == 0o700
    store = SessionStore(tmp_path / "new" / "sessions")
    s = store.create()
    upload = import_upload([DATA / "dicom" / "pydicom_CT_small.dcm"], s.directory / "uploads" / "1")
    assert upload.stat().st_mode & 0o044  # the file itself keeps the umask's mode: the folder is the guard
    assert upload.is_relative_to(store.root) and store.root.stat().st_mode & 0o777 == 0o700


def test_other_accounts_cannot_list_or_read_the_exports_shelf(tmp_path):
    """The UI's downloads are copied into Gradio's cache (``medseg-exports/<random>/``) with the umask's mode, in
    a 0755 folder another account could list: every session's exports, a SEG that kept the patient's identity
    among them. The shelf is 0700 now."""
    from app import web_session

    cache = tmp_path / "gradio"
    cache.mkdir(mode=0o755)
    export = tmp_path / "seg.dcm"
    export.write_bytes(b"DICM")
    served = Path(web_session.ExportShelf(cache).publish(export, "s" * 32))
    assert served.read_bytes() == b"DICM"
    assert (cache / web_session.EXPORTS_DIR).stat().st_mode & 0o777 == 0o700


def test_gradios_upload_cache_is_made_private_unless_it_is_a_shared_folder(tmp_path):
    """Gradio keeps each accepted upload (a patient's DICOM files) in its cache, 0644 in a 0755 folder, until the
    cache expires: any account on the server could read it. The server makes the cache 0700 when it starts; a
    shared folder (sticky, as /tmp would be if GRADIO_TEMP_DIR named it) is left as it is."""
    from app import web_session

    cache = tmp_path / "gradio"
    (cache / "3f2a").mkdir(parents=True, mode=0o755)
    os.chmod(cache, 0o755)
    web_session.ExportShelf(cache)
    assert cache.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    web_session.ExportShelf(shared)
    assert shared.stat().st_mode & 0o7777 == 0o1777


def test_a_label_name_with_half_an_emoji_is_refused_not_kept_to_break_the_page(store, ct_volume):
    """JSON's "\\ud83d" (half an emoji, cut by a length limit or sent by a script) became a name no UTF-8 encoder
    takes: the viewer's state answered an error on every load of the session, and the DICOM-SEG export failed."""
    import json

    from starlette.responses import JSONResponse

    from app.viewer.actions import label_rows

    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    broken = json.loads('"liver \\ud83d"')
    with pytest.raises(SessionError) as e:
        s.add_label(broken)
    assert str(e.value) == "label name: not valid text (a broken character at position 7); type the name again"
    with pytest.raises(SessionError):
        s.edit_label(1, name=broken)
    s.add_label(json.loads('"liver \\ud83e\\udec1"'))  # a whole emoji is text like any other
    assert JSONResponse({"labels": label_rows(s)}).body.decode("utf-8").count("liver \U0001fac1") == 1


def test_a_label_name_with_a_text_direction_override_is_refused(store, ct_volume):
    """A right-to-left override (U+202E) pasted into a label name reversed the rest of every line showing it: the
    viewer's status line read "Label 1: ba, .b4916e# ruoloc" after the rename (session 24, seen in Chromium). The
    explicit direction controls are refused in one line; right-to-left letters need none and are taken."""
    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    with pytest.raises(SessionError) as e:
        s.add_label("liver \u202eab")
    assert str(e.value) == ("label name: an invisible text-direction control (U+202E, often pasted with the text) at "
                            "position 7 would reorder the text shown after the name; type the name again")
    with pytest.raises(SessionError, match="U\\+2067"):
        s.edit_label(1, name="\u2067kidney")
    s.edit_label(1, name="\u05db\u05d1\u05d3 liver")  # Hebrew letters are text like any other
    assert s.label(1).name == "\u05db\u05d1\u05d3 liver"


def test_renaming_a_label_to_another_labels_name_is_refused(store, ct_volume, tmp_path):
    """Adding a label under a name in use gives it the default name (two segments of one name in an export); renaming
    did not check: label 2 renamed "liver" beside label 1 "liver" made a SEG with two "liver" segments."""
    from data.dicom_seg import write_dicom_seg

    s = store.create()
    s.start_study(ct_volume, str(CT), "ct")
    s.edit_label(1, name="liver")
    s.add_label("spleen")
    with pytest.raises(SessionError) as e:
        s.edit_label(2, name=" liver ")
    assert str(e.value) == "label name: 'liver' is already label 1's; choose another name"
    s.edit_label(2, name="spleen", colour=(9, 9, 9))  # its own name again, with a new colour: fine
    s.labels[3, 10:20, 10:20], s.labels[4, 10:20, 10:20] = 1, 2
    out = write_dicom_seg(s.labels, ct_volume, tmp_path / "s.dcm", label_names={d.value: d.name for d in s.label_defs})
    assert [d.SegmentLabel for d in pydicom.dcmread(out).SegmentSequence] == ["liver", "spleen"]


def test_a_kept_studys_damaged_anchors_are_dropped_and_the_study_opens_with_its_labels(store, ct_volume):
    """A kept study's ``anchors`` in state.json is not checked with the file: damaged, it raised in the middle of
    opening that study. Now they are dropped (they only steer a re-propagation) and the study opens with its labels."""
    from app.propagation_job import anchors_of

    s = store.create()
    s.start_study(ct_volume, str(CT), "CT head")
    s.labels[4, 50:60, 70:90] = 1
    anchors_of(s, 1).add(4)
    s.start_study(replace(ct_volume, array=ct_volume.array[:6]), str(CT) + "-cut", "cut")
    (meta,) = s.studies.values()
    meta["anchors"] = {"1": "x", "2": [3]}
    s.start_study(ct_volume, str(CT), "CT head")
    assert int((s.labels == 1).sum()) == 200 and anchors_of(s, 1) == set() and anchors_of(s, 2) == {3}
