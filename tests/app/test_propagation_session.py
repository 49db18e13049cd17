"""Propagation in a UI session with the real LiteMedSAM: anchors from corrections, re-propagation
that keeps them, undo that restores the volume as it was, review (accept / cut), and a study that
stays usable (browsing, clicking) while a propagation runs in the background.

A 5-slice cut of the bundled CT series keeps the encoding cheap, and each slice is encoded once here
(``study_encoded``): the study encoder runs once, counting its encodes for the last test, and each other
test's session starts with its embeddings, as a server's session does once its study encoder has run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from app import controller, interaction
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.propagation_job import anchors_of
from app.session import SessionStore
from tests.app.propagation_fixtures import held_walk
from tests.conftest import SAMPLES

BOX = ((180, 150), (330, 330))  # display pixels (512 x 512) around the brain on the coronal slices


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, litemedsam):
    runner = ModelRunner("cpu")
    return AppContext(SessionStore(tmp_path_factory.mktemp("sessions")), runner, Prefetcher(runner, radius=0))


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    from data.readers import read_study

    ct = read_study(SAMPLES / "ct_head_0051_series")
    path = tmp_path_factory.mktemp("study") / "five.nii.gz"
    sitk.WriteImage(replace(ct, array=ct.array[4:9]).to_sitk(), str(path))
    return path


@pytest.fixture(scope="module")
def study_encoded(ctx, five):
    """The study encoder (``encode_study``, what ``medseg serve`` runs after an open when prefetching is on)
    run once on the five slices with the real model, counting the slices it encodes in each background turn:
    (slices per turn, the session's propagation cache afterwards as (key, embedding) items)."""
    from app.propagation_job import encode_study, propagation_cache

    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(five)])
    session = ctx.store.get(sid)
    real, per_turn = ctx.runner.segmenter(session.model), []

    class Counting:  # the real model, counting the slices encoded while one background turn is held
        name = real.name

        def embed_batch(self, images):
            per_turn.append(len(images))
            return real.embed_batch(images)

    runner = ctx.runner
    original = runner.segmenter
    runner.segmenter = lambda name: Counting()
    try:
        encode_study(runner, session).join(600)
    finally:
        runner.segmenter = original
    return per_turn, propagation_cache(session).items()


@pytest.fixture(scope="module")
def five_embeddings(study_encoded):
    """The five slices' embeddings as the study encoder left them in its session's propagation cache."""
    return study_encoded[1]


# What the box's click encodes on each slice a test draws it on (``ModelRunner.embedding``, the session's cache of
# shown planes), kept from the first test that boxes there: each later session starts with it, as a server's session
# has it once its prefetcher encoded that slice (app.interaction.Prefetcher). Only that encode is saved (one a test:
# 135 -> 70 CPU-seconds for the file alone, session 29); every click still decodes through the real path, and a slice
# not boxed before is encoded as usual.
_BOXED_SLICES: dict[int, list] = {}


def _box_on(ctx, sid, embeddings, slice_index=2) -> str:
    """In the open study, whose study encoder has run (``embeddings``), draw the box on ``slice_index``."""
    from app.interaction import embeddings_of
    from app.propagation_job import propagation_cache

    session = ctx.store.get(sid)
    cache = propagation_cache(session)
    for key, embedding in embeddings:
        cache.put(key, embedding)
    controller.set_slice(ctx, sid, slice_index)
    shown = embeddings_of(session)
    for key, embedding in _BOXED_SLICES.get(slice_index, ()):
        shown.put(key, embedding)
    controller.set_display(ctx, sid, "default", 40, 400, 0.45, "box")
    controller.click(ctx, sid, *BOX[0])
    controller.click(ctx, sid, *BOX[1])
    _BOXED_SLICES.setdefault(slice_index, [(key, e) for key, e in shown.items() if key[2] == slice_index])
    return sid


def _open_and_box(ctx, path, embeddings, slice_index=2):
    """Open the study in a new session whose study encoder has run (``embeddings``), then draw the box."""
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(path)])
    return _box_on(ctx, sid, embeddings, slice_index)


def _sample_and_box(ctx, monkeypatch, five, embeddings) -> str:
    """A new session with two samples to switch between ("five", the 5-slice CT, and "MR"): "five" open, boxed."""
    samples = {"five": five, "MR": SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"}
    monkeypatch.setattr(controller, "sample_studies", lambda: samples)
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, "five")
    return _box_on(ctx, sid, embeddings)


def _propagate(ctx, sid):
    controller.propagate(ctx, sid)
    job = controller.propagation_job(ctx, sid)
    job.wait(600)
    assert job.state == "done", job.error
    return job


def test_the_ui_propagates_with_the_default_rule_of_its_models_backend(ctx, five, five_embeddings, monkeypatch):
    """The UI's Propagate runs the rule ``medseg propagate`` runs for the backend the model runs with
    (``app.propagation_defaults``): on torch (these tests) the click model's mask + box guarded by the box answer."""
    import app.propagation_job
    from app.propagation_defaults import default_propagation

    used, real = [], app.propagation_job.repropagate

    def spy(*args, settings, **kwargs):
        used.append(settings)
        return real(*args, settings=settings, **kwargs)

    monkeypatch.setattr(app.propagation_job, "repropagate", spy)
    sid = _open_and_box(ctx, five, five_embeddings)
    _propagate(ctx, sid)
    backend = ctx.runner.backend_choice(ctx.store.get(sid).model).backend
    assert backend == "torch" and used == [default_propagation("torch")]
    assert (used[0].prompt, used[0].guard, used[0].stride) == ("auto", 0.7, 2)
    assert all((ctx.store.get(sid).labels[k] == 1).sum() > 500 for k in range(5))


def test_the_propagation_status_names_the_rule_that_ran_on_each_backend(ctx, five, five_embeddings, monkeypatch):
    """The default rule depends on the backend (``app.propagation_defaults``); the CLI's report line named it, the
    UI's status did not, so a user could not tell which rule made the masks. The finished status now names it: the
    guard rule on torch (these tests' backend), the box rule where the backend is onnx-int8-conv (the CPU default;
    here the same torch model reported as that backend, so the rule is the only difference)."""
    sid = _open_and_box(ctx, five, five_embeddings)
    assert ctx.runner.backend_choice(ctx.store.get(sid).model).backend == "torch"
    job = _propagate(ctx, sid)
    assert "(rule: mask+box, guard 0.7, stride 2, fill shape). Undo reverts" in job.status(), job.status()
    assert "rule: mask+box, guard 0.7, stride 2, fill shape" in controller.propagation_status(ctx, sid).status

    real = ctx.runner.backend_choice
    monkeypatch.setattr(ctx.runner, "backend_choice", lambda name: replace(real(name), backend="onnx-int8-conv"))
    sid = _open_and_box(ctx, five, five_embeddings)
    job = _propagate(ctx, sid)
    assert job.status().startswith("Propagated to slices 0..4") and "(rule: box, stride 2, fill shape)." in job.status(), job.status()


def test_the_fill_picked_in_the_ui_reaches_the_walk_and_a_pasted_one_is_refused(ctx, five, five_embeddings, monkeypatch):
    """The UI's "Fill between corrected slices" (``app.ui.FILL_CHOICES``) goes to the walk as
    ``PropagationSettings.fill`` over the backend's default rule; the status names it. A value the choice does not
    offer (a pasted or scripted one) is refused in one line and starts nothing."""
    import app.propagation_job
    from app.propagation_defaults import default_propagation
    from app.session import SessionError
    from app.ui import FILL_CHOICES

    used, real = [], app.propagation_job.repropagate

    def spy(*args, settings, **kwargs):
        used.append(settings)
        return real(*args, settings=settings, **kwargs)

    monkeypatch.setattr(app.propagation_job, "repropagate", spy)
    assert [v for _, v in FILL_CHOICES] == ["shape", "model", "guided"]
    sid = _open_and_box(ctx, five, five_embeddings)
    controller.propagate(ctx, sid, fill="guided")
    job = controller.propagation_job(ctx, sid)
    job.wait(600)
    assert job.state == "done", job.error
    assert used == [replace(default_propagation("torch"), fill="guided")] and "fill guided" in job.status()
    with pytest.raises(SessionError, match="^fill between slices must be one of shape, model, guided, got 'smooth'$"):
        controller.propagate(ctx, sid, fill="smooth")
    assert len(used) == 1 and controller.propagation_job(ctx, sid) is job


def test_correction_becomes_an_anchor_repropagation_keeps_it_and_undo_restores(ctx, five, five_embeddings):
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    assert anchors_of(session, 1) == {2}
    before_first = session.labels.copy()
    _propagate(ctx, sid)
    assert all((session.labels[k] == 1).sum() > 500 for k in range(5))
    first = session.labels.copy()
    # correct slice 4 with the viewer's eraser: a quarter of the head only is kept (a brush or mask only
    # adds pixels since issue 19: a new prompt never erases another object)
    controller.set_slice(ctx, sid, 4)
    keep = np.zeros(session.labels.shape[1:], bool)
    keep[:128, :128] = True
    corrected = keep & (first[4] == 1)
    interaction.erase(session, ~keep)
    controller.mark_anchor(session)  # what app.viewer.actions does after every correction
    assert anchors_of(session, 1) == {2, 4}
    after_fix = session.labels.copy()
    # re-propagate from the start slice: slice 4 (an anchor) is kept exactly, slice 3 is recomputed
    controller.set_slice(ctx, sid, 2)
    _propagate(ctx, sid)
    np.testing.assert_array_equal(session.labels[4] == 1, corrected)
    np.testing.assert_array_equal(session.labels[2], first[2])
    assert not np.array_equal(session.labels[3], first[3])
    # undo: the whole re-propagation, then the correction, then the first propagation
    controller.undo(ctx, sid)
    np.testing.assert_array_equal(session.labels, after_fix)
    controller.undo(ctx, sid)
    np.testing.assert_array_equal(session.labels, first)
    controller.undo(ctx, sid)
    np.testing.assert_array_equal(session.labels, before_first)


def test_review_accepts_and_cuts_the_range(ctx, five, five_embeddings):
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    full = session.labels.copy()
    vm = controller.review(ctx, sid, "start")
    assert vm.slice_index in (1, 3) and "Review: slice" in vm.status
    controller.review(ctx, sid, "accept")
    assert len(anchors_of(session, 1)) == 2
    # go to slice 4 and cut there: 4 loses the label, nothing else changes
    while controller.review(ctx, sid, "next").slice_index != 4:
        pass
    controller.review(ctx, sid, "cut")
    assert not (session.labels[4] == 1).any()
    np.testing.assert_array_equal(session.labels[:4], full[:4])
    controller.undo(ctx, sid)
    np.testing.assert_array_equal(session.labels, full)


def test_study_stays_usable_while_propagation_runs(ctx, five, five_embeddings):
    """The job is held after its first slices; meanwhile the user browses and segments another slice."""
    sid = _open_and_box(ctx, five, five_embeddings, slice_index=0)
    session = ctx.store.get(sid)
    job, release = held_walk(ctx.runner, session, 0, at=2)
    assert job.running and "Propagating: 2/5" in controller.propagation_status(ctx, sid).status
    vm = controller.set_slice(ctx, sid, 3)  # browsing: the image of another slice
    assert vm.slice_index == 3 and vm.image is not None
    controller.add_label(ctx, sid, "other")  # a second structure on slice 3, segmented while the job waits
    controller.click(ctx, sid, *BOX[0])
    vm = controller.click(ctx, sid, *BOX[1])
    assert (session.labels[3] == 2).sum() > 500
    release.set()
    job.wait(600)
    assert job.state == "done", job.error
    assert (session.labels[3] == 2).sum() > 500  # the user's work during the run is kept
    assert (session.labels[1] == 1).sum() > 500 and (session.labels[4] == 1).sum() > 0


def test_background_study_encoding_gives_the_model_back_after_every_slice_on_the_cpu(study_encoded):
    """A user's click waits for at most one background encode on the CPU. Chunks of four held a first
    click behind four encodes (20-40 s on a loaded 2-core machine: an e2e upload timed out waiting for
    'Ready'). Each background turn here encodes exactly one slice, and every slice gets encoded
    (``study_encoded``: the study encoder run once for this module, its embeddings reused by the tests above)."""
    per_turn, items = study_encoded
    assert per_turn == [1] * 5
    assert sorted(key[1] for key, _ in items) == [0, 1, 2, 3, 4]  # each slice once, in the session's cache



def test_opening_another_study_while_propagation_runs_lands_it_in_its_own_study(ctx, five, five_embeddings, monkeypatch, caplog):
    """Propagate 3D, open another sample before it ends, come back: the walk had landed on the study open at
    its end (a study of the same shape got the walked label), or, shapes differing, failed with a traceback in
    the log, and the propagated study came back without it. Now it lands in its own study, one undoable edit
    there; the study open meanwhile is untouched."""
    import logging

    sid = _sample_and_box(ctx, monkeypatch, five, five_embeddings)
    session = ctx.store.get(sid)
    boxed = session.labels.copy()
    job, release = _gated(ctx, sid)
    controller.open_sample(ctx, sid, "MR")
    release.set()
    job.wait(600)
    assert job.state == "done", job.error
    assert not session.labels.any(), "the propagation landed on the study opened meanwhile"
    controller.open_sample(ctx, sid, "five")
    assert all((session.labels[k] == 1).sum() > 500 for k in range(5))
    controller.undo(ctx, sid)  # the propagation is one undoable edit of its study
    np.testing.assert_array_equal(session.labels, boxed)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- a hurried clinician's 3D workflow (session 18, ux3d18) ---------------------------------------
def _gated(ctx, sid, k=2, at=1):
    """Start a propagation from slice ``k`` that waits after ``at`` slices until released: (job, release)."""
    return held_walk(ctx.runner, ctx.store.get(sid), k, at, on_done=ctx.store.save)


def test_corrections_stay_anchors_after_opening_another_study_and_coming_back(ctx, five, five_embeddings, monkeypatch):
    """Correct a propagated slice, look at another study, come back, Propagate again: the anchors lived in the
    session's runtime, which opening a study clears, so the walk overwrote the correction. Now they travel
    with the study's kept work and the correction stays."""
    from app.propagation_job import propagation_cache

    sid = _sample_and_box(ctx, monkeypatch, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    controller.set_slice(ctx, sid, 4)
    keep = np.zeros(session.labels.shape[1:], bool)
    keep[:128, :128] = True
    corrected = keep & (session.labels[4] == 1)
    interaction.erase(session, ~keep)
    controller.mark_anchor(session)
    controller.open_sample(ctx, sid, "MR")
    controller.open_sample(ctx, sid, "five")
    for key, embedding in five_embeddings:
        propagation_cache(session).put(key, embedding)
    controller.set_slice(ctx, sid, 2)
    _propagate(ctx, sid)
    np.testing.assert_array_equal(session.labels[4] == 1, corrected)
    assert anchors_of(session, 1) == {2, 4}


def test_clear_label_while_propagation_runs_keeps_the_label_cleared(ctx, five, five_embeddings):
    """Clear label while the walk runs: the walk landed on every slice but the cleared start one, so the label
    the user had just cleared came back on four slices. Now the walk is dropped (its start slice is gone) and
    the status says so in one line."""
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    job, release = _gated(ctx, sid)
    controller.clear(ctx, sid)
    release.set()
    job.wait(600)
    assert not (session.labels == 1).any()
    status = controller.propagation_status(ctx, sid).status
    assert "not applied" in status and "\n" not in status, status
    controller.undo(ctx, sid)  # the clear is the last edit: undo brings the box back
    assert (session.labels[2] == 1).sum() > 500 and not (session.labels[[0, 1, 3, 4]] == 1).any()


def test_export_while_propagation_runs_exports_the_state_before_it_and_says_so(ctx, five, five_embeddings):
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    boxed = session.labels.copy()
    job, release = _gated(ctx, sid)
    try:
        path, vm = controller.export(ctx, sid, "nifti")
    finally:
        release.set()
        job.wait(600)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert (written == boxed.reshape(written.shape)).all()
    assert "is running" in vm.status and "export again when it is done" in vm.status, vm.status


def test_cut_here_on_the_start_slice_is_refused_and_keeps_the_start(ctx, five, five_embeddings):
    """Cut the range on both sides, then Cut here again: the review stood on the start slice and cut it and
    every slice below it (the user's box too). Now that is refused in one line; the start slice stays."""
    from app.session import SessionError

    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    controller.review(ctx, sid, "start")
    for _ in range(3):
        shown = controller.review(ctx, sid, "cut").slice_index
        if shown == 2:
            break
    assert shown == 2 and (session.labels[2] == 1).sum() > 500
    with pytest.raises(SessionError, match="start"):
        controller.review(ctx, sid, "cut")
    assert (session.labels[2] == 1).sum() > 500


def test_accept_on_a_slice_erased_meanwhile_is_refused_in_one_line(ctx, five, five_embeddings):
    """Review, erase the shown slice, Accept: it became an empty anchor, which the walk ignores, so Propagate again
    filled the slice the user had just emptied and accepted. Now Accept refuses and points at Cut here."""
    from app.session import SessionError

    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    k = controller.review(ctx, sid, "start").slice_index
    interaction.erase(session, np.ones(session.labels.shape[1:], bool))
    controller.mark_anchor(session)
    with pytest.raises(SessionError, match="Cut here") as e:
        controller.review(ctx, sid, "accept")
    assert "\n" not in str(e.value)
    assert not (session.labels[k] == 1).any()


def test_a_refused_propagate_keeps_the_review_in_progress(ctx, five, five_embeddings):
    """In Review, erase the shown slice and press Propagate there: refused (nothing to carry), but the review had
    been ended before the refusal, so ◀ ▶ answered "no review in progress". Now a refused Propagate changes nothing."""
    from app.session import SessionError

    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    k = controller.review(ctx, sid, "start").slice_index
    interaction.erase(session, np.ones(session.labels.shape[1:], bool))
    with pytest.raises(SessionError, match="holds nothing"):
        controller.propagate(ctx, sid)
    assert controller.review(ctx, sid, "next").slice_index != k


def test_a_propagation_left_running_is_still_shown_and_guarded_after_coming_back(ctx, five, five_embeddings,
                                                                                monkeypatch):
    """Propagate, open another study, come back while it still runs: opening a study forgot the job, so the page's
    poll stopped (no progress, no result) and Propagate pressed again started a second walk of the same label
    beside the first. Now the job stays the session's: the other study says where it runs, coming back shows its
    progress, a second start is not made (pressed again it shows the walk's progress; from another slice it is not started,
    and says so), and it lands once."""
    sid = _sample_and_box(ctx, monkeypatch, five, five_embeddings)
    session = ctx.store.get(sid)
    job, release = _gated(ctx, sid)
    try:
        controller.open_sample(ctx, sid, "MR")
        assert "Propagating" in controller.propagation_status(ctx, sid).status
        controller.open_sample(ctx, sid, "five")
        assert controller.propagation_job(ctx, sid) is job
        assert "Propagating" in controller.propagation_status(ctx, sid).status
        # pressed again from the slice it walks from: that walk's progress, no second walk beside it
        assert "Propagating" in controller.propagate(ctx, sid).status
        assert controller.propagation_job(ctx, sid) is job
        controller.set_slice(ctx, sid, 3)  # from another slice: not started, one walk at a time
        said = controller.propagate(ctx, sid).status
        assert said.startswith("Propagating") and "from slice 3 was not started" in said, said
        assert controller.propagation_job(ctx, sid) is job
    finally:
        release.set()
        job.wait(600)
    assert job.state == "done", job.error
    assert all((session.labels[k] == 1).sum() > 500 for k in range(5))
    assert session.undo_stack[-1].description == "propagate label 1" and len(session.undo_stack) == 2


def test_a_propagation_that_landed_in_a_study_left_meanwhile_says_where(ctx, five, five_embeddings, monkeypatch):
    """The walk ended after the user opened another study: its status said "Undo reverts the whole propagation",
    but Undo there undid the other study's last edit. Now it names the study it landed in."""
    sid = _sample_and_box(ctx, monkeypatch, five, five_embeddings)
    job, release = _gated(ctx, sid)
    controller.open_sample(ctx, sid, "MR")
    release.set()
    job.wait(600)
    status = controller.propagation_status(ctx, sid).status
    assert "five" in status and "open it" in status and "\n" not in status, status


def test_cut_here_then_undo_brings_the_cut_slices_back_into_the_review(ctx, five, five_embeddings):
    """Cut here, then Undo: the slices came back in the study but the review had dropped them for good, so ◀ ▶
    never reached them again. Now the review follows the labels as they are."""
    sid = _open_and_box(ctx, five, five_embeddings)
    _propagate(ctx, sid)
    controller.review(ctx, sid, "start")
    while controller.review(ctx, sid, "next").slice_index != 4:
        pass
    controller.review(ctx, sid, "cut")
    controller.undo(ctx, sid)
    seen = {controller.review(ctx, sid, step).slice_index for step in ("prev", "prev", "prev", "next", "next", "next")}
    assert 4 in seen, seen


def test_review_pressed_too_early_or_on_another_label_says_why_in_one_line(ctx, five, five_embeddings):
    """Review while the walk ran said "nothing to review: propagate the active label first" (the propagation the
    user had just started was right there), and so it did after picking another label. Now each says why."""
    from app.session import SessionError

    sid = _open_and_box(ctx, five, five_embeddings)
    job, release = _gated(ctx, sid)
    try:
        with pytest.raises(SessionError, match="still running"):
            controller.review(ctx, sid, "start")
    finally:
        release.set()
        job.wait(600)
    controller.add_label(ctx, sid, "other")
    with pytest.raises(SessionError, match="make it the active label") as e:
        controller.review(ctx, sid, "start")
    assert "label 1" in str(e.value) and "\n" not in str(e.value)
    controller.select_label(ctx, sid, 1)
    assert "Review: slice" in controller.review(ctx, sid, "start").status


def test_a_session_whose_propagation_runs_is_not_dropped_from_memory(ctx, five, five_embeddings, tmp_path):
    """A busy server keeps its least recently used sessions on disk only. One whose walk was running was dropped
    too: the walk landed on the dropped copy while the next request loaded another from disk, so the page lost the
    job (no progress, no result) and the propagation never showed. Now a session with a running job stays."""
    small = AppContext(SessionStore(tmp_path / "sessions", max_in_memory=1), ctx.runner,
                       Prefetcher(ctx.runner, radius=0))
    sid = _open_and_box(small, five, five_embeddings)
    job, release = _gated(small, sid)
    try:
        controller.start(small, None)  # another user's page: one session at most stays in memory
        assert controller.propagation_job(small, sid) is job
    finally:
        release.set()
        job.wait(600)
    assert job.state == "done", job.error
    assert all((small.store.get(sid).labels[k] == 1).sum() > 500 for k in range(5))


def test_an_undone_correction_is_no_anchor_and_redo_makes_it_one_again(ctx, five, five_embeddings):
    """Correct a propagated slice, Undo the correction, Propagate again: the slice stayed an anchor, so the walk
    kept it as the first propagation had left it instead of recomputing it. Now the anchor follows Undo / Redo."""
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    _propagate(ctx, sid)
    controller.set_slice(ctx, sid, 4)
    keep = np.zeros(session.labels.shape[1:], bool)
    keep[:128, :128] = True
    edit = interaction.erase(session, ~keep)
    controller.mark_anchor(session, edit)  # what app.viewer.actions does after every correction
    assert anchors_of(session, 1) == {2, 4}
    controller.undo(ctx, sid)
    assert anchors_of(session, 1) == {2}
    controller.redo(ctx, sid)
    assert anchors_of(session, 1) == {2, 4}


def test_propagate_pressed_twice_answers_with_the_walks_progress_not_a_refusal(ctx, five, five_embeddings):
    """Propagate pressed twice quickly (session 20, a hurried user in Chromium): the second press was refused with
    "⚠ a propagation of label 1 is already running in this study: wait for it (progress is shown)", and the viewer
    keeps an error until the user acts, so that line hid the walk's progress and its result for good (the walk had
    landed on 12 slices two minutes later, the status still said "already running"). Pressed again from the slice
    its walk started on, the answer is that walk's progress, no error, and no second walk."""
    sid = _open_and_box(ctx, five, five_embeddings)
    job, release = _gated(ctx, sid)
    try:
        again = controller.propagate(ctx, sid)
        assert again.status.startswith("Propagating: ") and "pressed again" in again.status
        assert "\n" not in again.status and "⚠" not in again.status
        assert controller.propagation_job(ctx, sid) is job
    finally:
        release.set()
        job.wait(600)
    assert job.state == "done", job.error
    assert "Propagated to" in controller.propagation_status(ctx, sid).status


def test_propagate_pressed_on_another_label_while_one_runs_is_said_with_its_progress_and_result(ctx, five,
                                                                                                five_embeddings):
    """A second structure boxed and propagated while the first walks. First it was refused with "a propagation is
    already running in this study", not saying which. Then (named) it was still an error, "⚠ a propagation of label 1
    is already running ...", and the viewer keeps an error until the user acts: a user who waited never saw the
    walk's progress nor "Propagated to ..." (session 20, found in Chromium). Now the second start is not made, and the
    walk's progress and its result say so, with no error."""
    sid = _open_and_box(ctx, five, five_embeddings)
    job, release = _gated(ctx, sid)
    try:
        controller.add_label(ctx, sid, "other")
        controller.set_slice(ctx, sid, 3)
        controller.click(ctx, sid, *BOX[0])
        controller.click(ctx, sid, *BOX[1])
        said = controller.propagate(ctx, sid).status
        note = "Your Propagate of other from slice 3 was not started (one walk at a time)"
        assert said.startswith("Propagating: ") and note in said and "⚠" not in said and "\n" not in said, said
        assert controller.propagation_job(ctx, sid) is job
        assert note in controller.propagation_status(ctx, sid).status  # the page's poll says it with the progress
    finally:
        release.set()
        job.wait(600)
    assert job.state == "done", job.error
    landed = controller.propagation_status(ctx, sid).status
    assert landed.startswith("Propagated to") and note in landed, landed
    assert (ctx.store.get(sid).labels[3] == 2).sum() > 500  # the second box is kept
    assert not ((ctx.store.get(sid).labels == 2).sum(axis=(1, 2)) > 0)[[0, 1, 2, 4]].any()  # and not walked


def test_propagate_after_a_box_walks_as_the_cli_does_from_that_box(ctx, five, five_embeddings):
    """The UI's walk starts from the label's pixels; with nothing more it took the box's answer as a drawn anchor
    and handed its neighbours a +-8 step mask prompt, where ``medseg propagate --box`` (the path the 3D figures are
    measured on) hands on the model's own logits. On torch's mask+box rule the step left a 4-pixel grid of holes (the
    3-slice e2e CT: 138 hole pixels on slice 0). The last prompt's logits now seed the walk while the slice still
    holds exactly their mask: the UI's masks are the CLI's, slice for slice."""
    from app.interaction import model_window
    from app.propagation import propagate
    from app.propagation_defaults import default_propagation
    from app.propagation_job import propagation_cache
    from models.prompts import Prompts

    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    box = np.asarray(session.prompt.box, np.float32)
    _propagate(ctx, sid)
    segmenter = ctx.runner.segmenter(session.model)
    cli = propagate(segmenter, session.volume, 2, Prompts(box=box), window=model_window(session),
                    cache=propagation_cache(session),
                    settings=default_propagation(ctx.runner.backend_choice(session.model).backend))
    ui = ctx.store.get(sid).labels == session.active
    for k in range(ui.shape[0]):
        assert (ui[k] == cli.masks[k]).all(), f"slice {k}: {int(ui[k].sum())} px in the UI, {int(cli.masks[k].sum())} by the CLI"


def test_a_slice_edited_while_the_walk_runs_is_said_to_be_kept(ctx, five, five_embeddings):
    """A hurried user presses Propagate and, while it walks, boxes the structure on another slice. The walk keeps that
    slice as the user left it (its edit is theirs), but the status said only "Propagated to slices 0..4", as if the
    walk had reached it too. It now names the slice kept."""
    sid = _open_and_box(ctx, five, five_embeddings)
    session = ctx.store.get(sid)
    job, release = _gated(ctx, sid)
    controller.set_slice(ctx, sid, 4)
    controller.click(ctx, sid, *BOX[0])
    controller.click(ctx, sid, *BOX[1])
    mine = session.labels[4].copy()
    release.set()
    job.wait(600)
    assert job.state == "done", job.error
    np.testing.assert_array_equal(session.labels[4], mine)
    status = controller.propagation_status(ctx, sid).status
    assert "Slice 4, edited while it ran, is kept as you left it (not propagated there)." in status, status
