"""``app.interaction`` on one real plane with the real LiteMedSAM: the prompts each user action sends to the
model, the masks that land on the label map against the model called directly, undo, erase, measurements,
the model runner's turns and the prefetcher.

Fast by construction (issue 26's mutation runs call these tests hundreds of times): the CT head's coronal
plane 6 is encoded once per process (``_warm``) and put in each new session's embedding cache, as the
prefetcher would have; only the tests of the encoding path itself see the encoder called, and they check
the image it receives. Under mutmut (``scripts/mutants.py``) the fork server imports this module once and
forks a child per mutant, so warming at import there spares each child the model load and the encode.
"""

from __future__ import annotations

import functools
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app import interaction
from app.embedding_cache import EMBEDDING_BYTES
from app.interaction import ModelRunner, Prefetcher
from app.render import Plane
from app.session import PromptState, Session, SessionError
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from models import point_prompts
from models.prompts import MaskResult, PromptError, Prompts
from tests.conftest import DATA, SAMPLES

DATA_CT_NIFTI = DATA / "ct_head_0051_slabA_image.nii.gz"

VIEW, INDEX = "coronal", 6  # the CT head's acquisition plane, 256 x 256
BOX = (89.75, 74.75, 164.75, 164.75)  # around the left lateral ventricle region (plane pixels)
INSIDE = (128.0, 120.0)
SID = "0" * 32


@functools.cache
def _warm() -> dict:
    """The study, its model input on plane 6 (windowed independently of the app) and both models' embeddings."""
    from models.registry import load_segmenter

    volume = read_study(SAMPLES / "ct_head_0051_series")
    image = slice_to_rgb(volume, INDEX, default_window(volume))  # coronal plane 6 is stored slice 6
    models = {name: load_segmenter(name, device="cpu") for name in ("litemedsam", "litemedsam-base")}
    embeddings = {name: m.embed(image) for name, m in models.items()}
    # the answers to a lone click at INSIDE, asked of each model directly (the slow prompt: computed once)
    lone = Prompts(points=np.array([INSIDE], np.float32), point_labels=np.array([1]),
                   pixel_spacing=Plane.of(volume, VIEW).spacing(volume))
    answers = {"litemedsam": models["litemedsam"].predict(embeddings["litemedsam"], lone, multimask_output=True),
               "litemedsam-base": point_prompts.predict_points(models["litemedsam-base"],
                                                               embeddings["litemedsam-base"], lone, True)}
    return {"volume": volume, "image": image, "models": models, "embeddings": embeddings, "lone": lone,
            "answers": answers}


if "mutmut" in sys.modules:  # the mutation run's fork server: warm once, every mutant's child inherits it
    _warm()


class SpyRunner(ModelRunner):
    """The real runner and models, recording the prompts (and multimask flag) of every prediction and the
    image of every encode; an encode of plane 6's model input returns its precomputed embedding."""

    def __init__(self, **kw):
        super().__init__("cpu", **kw)
        self.calls: list[tuple[Prompts, bool]] = []
        self.encoded: list[np.ndarray] = []

    def segmenter(self, name):
        real = _warm()["models"][name]
        spy = self

        class Recorder:
            def __getattr__(self, attr):
                return getattr(real, attr)

            def predict(self, embedding, prompts, multimask_output=False):
                spy.calls.append((prompts, multimask_output))
                return real.predict(embedding, prompts, multimask_output=multimask_output)

            def embed(self, image):
                spy.encoded.append(np.array(image, copy=True))
                if np.array_equal(image, _warm()["image"]):
                    return _warm()["embeddings"][name]
                return real.embed(image)

        return Recorder()


def _session(tmp_path: Path, model: str = "litemedsam", encoded: bool = True) -> Session:
    session = Session(id=SID, directory=tmp_path, model=model)
    session.start_study(_warm()["volume"], str(SAMPLES / "ct_head_0051_series"), "CT head")
    assert (session.view.view, session.view.index[VIEW]) == (VIEW, INDEX)
    if encoded:
        interaction.embeddings_of(session).put((model, VIEW, INDEX), _warm()["embeddings"][model])
    return session


@pytest.fixture
def runner() -> SpyRunner:
    return SpyRunner()


@pytest.fixture
def session(tmp_path) -> Session:
    return _session(tmp_path)


def _reference(prompts: Prompts, model: str = "litemedsam", multimask: bool = False):
    return _warm()["models"][model].predict(_warm()["embeddings"][model], prompts, multimask_output=multimask)


def _spacing(session: Session) -> tuple[float, float]:
    return Plane.of(session.volume, VIEW).spacing(session.volume)


def test_the_model_sees_the_plane_in_the_studys_default_window_encoded_once(tmp_path, runner):
    session = _session(tmp_path, encoded=False)
    session.view.level, session.view.width = 500.0, 50.0  # the display's window never reaches the model
    np.testing.assert_array_equal(interaction.plane_image(session, VIEW, INDEX), _warm()["image"])
    embedding = runner.embedding(session, VIEW, np.int64(INDEX))
    (image,) = runner.encoded
    np.testing.assert_array_equal(image, _warm()["image"])
    assert embedding is _warm()["embeddings"]["litemedsam"]
    assert ("litemedsam", VIEW, INDEX) in interaction.embeddings_of(session)
    assert runner.embedding(session, VIEW, INDEX) is embedding and len(runner.encoded) == 1  # a hit: no encode
    assert interaction.model_window(session) is session.runtime["model_window"]
    assert (session.runtime["model_window"].lo, session.runtime["model_window"].hi) == (
        default_window(session.volume).lo, default_window(session.volume).hi)
    window = session.runtime["model_window"]
    session.runtime["model_window"] = "kept"  # computed once per study, then read back
    assert interaction.model_window(session) == "kept"
    session.runtime["model_window"] = window
    # another view's plane: the numpy slice of the volume through the same window
    axial = interaction.plane_image(session, "axial", 100)
    window = default_window(session.volume)
    expected = slice_to_rgb(replace(session.volume, array=session.volume.array[:, 100, :][None]), 0, window)
    np.testing.assert_array_equal(axial, expected)
    cache = interaction.embeddings_of(session)
    assert interaction.embeddings_of(session) is cache
    # under the key a closed tab's release (SessionStore) frees and the memory report counts
    assert session.runtime["embeddings"] is cache
    assert (cache.max_items, cache.max_bytes) == (24, 24 * EMBEDDING_BYTES)
    assert interaction.PlaneEmbeddings(3, 7).max_bytes == 7


def test_a_box_segments_what_the_model_answers_to_that_box_and_undo_restores(session, runner):
    before = session.labels.copy()
    edit = interaction.box_prompt(runner, session, BOX)
    ((prompts, multimask),) = runner.calls
    assert list(prompts.box) == list(BOX) and prompts.points is None and prompts.point_labels is None
    assert prompts.mask_logits is None and prompts.pixel_spacing == _spacing(session) and multimask is False
    reference = _reference(Prompts(box=BOX, pixel_spacing=_spacing(session)))
    assert 500 < int(reference.best_mask.sum()) < 0.9 * 76 * 91  # not a mask that fills the box
    plane = session.region(VIEW, INDEX)
    np.testing.assert_array_equal(plane == 1, reference.best_mask)
    assert set(np.unique(session.labels)) == {0, 1} and int((session.labels == 1).sum()) == int(reference.best_mask.sum())
    np.testing.assert_array_equal(session.prompt.logits, reference.low_res_logits[reference.best_index][None])
    assert session.prompt.box == BOX and session.prompt.points == () and session.prompt.label == 1
    assert edit.description == "box" and session.history[1][-1]["kind"] == "box"
    session.undo()
    np.testing.assert_array_equal(session.labels, before)
    assert session.prompt is None


def test_a_box_drawn_with_two_clicks_in_any_order_and_its_undo(session, runner):
    assert interaction.box_click(runner, session, BOX[2], BOX[1]) is None  # top-right corner first
    assert session.prompt.corner == (BOX[2], BOX[1]) and session.prompt.base is not None and not runner.calls
    edit = interaction.box_click(runner, session, BOX[0], BOX[3])
    assert edit.description == "box" and list(runner.calls[0][0].box) == list(BOX)
    assert session.prompt.corner is None and session.prompt.box == BOX
    session.undo()
    assert session.prompt is None  # only a corner was set before: undo goes back to nothing
    # a corner on another label is forgotten: the next click starts a new box
    interaction.box_click(runner, session, 10, 10)
    session.add_label("second")
    session.active = 2
    assert interaction.box_click(runner, session, BOX[0], BOX[1]) is None
    assert session.prompt.corner == (BOX[0], BOX[1]) and session.prompt.label == 2


def test_a_box_of_two_clicks_on_one_row_is_refused_before_the_model(session, runner):
    """Session 22: two corners with the same y (or the same point twice) made a box without area; the model
    answered an empty mask with no hint. The same rule as the CLI and the label server (models.prompts)."""
    interaction.box_click(runner, session, 10, 20)
    with pytest.raises(PromptError, match=r"box 10 20 30 20 has no area: a box needs x0 < x1 and y0 < y1"):
        interaction.box_click(runner, session, 30, 20)
    assert not runner.calls and not session.labels.any()


def test_a_corner_on_another_plane_is_forgotten(session, runner):
    """Box mode: a first corner on plane 6, then scroll to plane 5 and click: a new first corner there, never a
    box spanning two planes."""
    interaction.box_click(runner, session, *BOX[:2])
    session.view.index[VIEW] = 5
    assert interaction.box_click(runner, session, *BOX[2:]) is None and not runner.calls
    assert (session.prompt.index, session.prompt.corner) == (5, BOX[2:]) and not session.labels.any()


def test_undoing_a_second_box_goes_back_to_the_first_object(session, runner):
    """Two boxes on one label are two objects; undoing the second makes the first the current object again, so
    the next click refines it (its box and logits)."""
    interaction.box_prompt(runner, session, BOX)
    first = session.prompt
    interaction.box_prompt(runner, session, (20.0, 20.0, 60.0, 60.0))
    assert session.undo_stack[-1].prompt_before is first
    session.undo()
    assert session.prompt is first
    runner.calls.clear()
    interaction.click(runner, session, *INSIDE, positive=True)
    ((refine, _),) = runner.calls
    assert list(refine.box) == list(BOX) and refine.points.tolist() == [list(INSIDE)]
    np.testing.assert_array_equal(refine.mask_logits, first.logits)


def test_the_click_after_undoing_a_box_starts_a_new_box(session, runner):
    """Box mode: corner, corner, Undo, click. The click is a new first corner ("click the opposite corner");
    it drew a box from the undone box's first corner at once (undo restored the half-drawn box)."""
    interaction.box_click(runner, session, BOX[0], BOX[1])
    interaction.box_click(runner, session, BOX[2], BOX[3])
    session.undo()
    assert interaction.box_click(runner, session, 120, 120) is None and len(runner.calls) == 1
    assert session.prompt.corner == (120.0, 120.0) and not session.labels.any()


def test_clicks_refine_the_box_with_its_points_and_the_previous_logits(session, runner):
    interaction.box_prompt(runner, session, BOX)
    box_logits = session.prompt.logits
    runner.calls.clear()
    edit = interaction.click(runner, session, 150, 150, positive=False)
    ((first, multimask),) = runner.calls
    assert multimask is False and list(first.box) == list(BOX) and first.point_labels.tolist() == [0]
    assert first.points.dtype == np.float32 and first.points.tolist() == [[150.0, 150.0]]
    assert first.point_labels.dtype == np.int64
    np.testing.assert_array_equal(first.mask_logits, box_logits)
    reference = _reference(first)
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, reference.best_mask)
    np.testing.assert_array_equal(session.prompt.logits, reference.low_res_logits[reference.best_index][None])
    assert edit.description == "negative click" and session.history[1][-1]["kind"] == "click-"
    assert session.prompt.box == BOX and session.prompt.alternatives == ()
    interaction.click(runner, session, *INSIDE, positive=True)
    second = runner.calls[-1][0]
    assert second.points.tolist() == [[150.0, 150.0], list(INSIDE)] and second.point_labels.tolist() == [0, 1]
    np.testing.assert_array_equal(second.mask_logits, reference.low_res_logits[reference.best_index][None])
    assert session.history[1][-1]["kind"] == "click+" and session.undo_stack[-1].description == "positive click"
    # undo the positive click, click again: the undone point is never sent (issue 26's undo bug)
    session.undo()
    interaction.click(runner, session, 140, 100, positive=True)
    assert runner.calls[-1][0].point_labels.tolist() == [0, 1]
    assert runner.calls[-1][0].points.tolist() == [[150.0, 150.0], [140.0, 100.0]]


def test_an_object_on_another_label_or_plane_starts_anew(session, runner):
    interaction.box_prompt(runner, session, BOX)
    first_object = session.region(VIEW, INDEX).copy()
    session.add_label("two")
    session.active = 2
    with pytest.raises(PromptError, match="^start an object with a positive click, a box or a mask; a negative "
                                          "click only refines$"):
        interaction.click(runner, session, *INSIDE, positive=False)
    interaction.box_prompt(runner, session, (60.0, 60.0, 200.0, 200.0))
    plane = session.region(VIEW, INDEX)
    np.testing.assert_array_equal(plane == 1, first_object == 1)  # label 1 is kept where label 2 overlaps it
    assert session.prompt.label == 2 and ((plane == 2) & (first_object == 0)).sum() > 500
    np.testing.assert_array_equal(session.prompt.base, first_object)
    # another plane: the current object's prompt is not continued there
    session.view.index[VIEW] = 5
    assert interaction.current_prompt(session, VIEW, 5).box is None
    assert interaction.current_prompt(session, VIEW, INDEX).box is not None


def test_a_lone_first_click_gets_the_models_answer_to_a_point_and_its_alternatives(session, runner, monkeypatch):
    """One call of ``point_prompts`` (what ``medseg eval --protocol points:1`` gets); the best candidate lands,
    the others are offered, and choosing one swaps the mask."""
    interaction.box_click(runner, session, 5, 5)  # a half-drawn box: the click cancels it
    edit = interaction.click(runner, session, *INSIDE, positive=True)
    ((prompts, multimask),) = runner.calls
    assert multimask is True and prompts.box is None and prompts.mask_logits is None
    assert prompts.points.tolist() == [list(INSIDE)] and prompts.point_labels.tolist() == [1]
    assert prompts.pixel_spacing == _spacing(session) == _warm()["lone"].pixel_spacing
    expected = _warm()["answers"]["litemedsam"]
    alternatives = session.prompt.alternatives
    assert len(alternatives) == len(expected.masks) == len(point_prompts.HALF_SIDES_MM)
    for (mask, logits, score, box), m, lg, s, b in zip(alternatives, expected.masks, expected.low_res_logits,
                                                       expected.scores, expected.boxes):
        np.testing.assert_array_equal(mask, m)
        np.testing.assert_array_equal(logits, lg[None])
        assert score == pytest.approx(float(s)) and box == tuple(float(v) for v in b)
    best = int(np.argmax(expected.scores))
    assert session.prompt.chosen == best and session.prompt.box == tuple(float(v) for v in expected.boxes[best])
    assert session.prompt.corner is None and edit.prompt_before.corner == (5.0, 5.0)
    assert edit.description == "positive click"
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[best])
    np.testing.assert_array_equal(session.prompt.logits, expected.low_res_logits[best][None])
    assert session.history[1][-1]["kind"] == "click+"
    other = (best + 1) % len(alternatives)
    chosen = interaction.choose_alternative(session, other)
    assert chosen.description == f"alternative {other + 1}" and session.prompt.chosen == other
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[other])
    np.testing.assert_array_equal(session.prompt.logits, expected.low_res_logits[other][None])
    assert session.prompt.box == tuple(float(v) for v in expected.boxes[other])
    assert session.prompt.points == ((INSIDE),) and session.prompt.point_labels == (1,)
    assert session.prompt.alternatives is alternatives and len(session.history[1]) == 1  # a choice is no prompt
    with pytest.raises(PromptError, match=r"^alternative 4 does not exist; choose 1\.\.3$"):
        interaction.choose_alternative(session, 3)
    with pytest.raises(PromptError, match=r"^alternative 0 does not exist; choose 1\.\.3$"):
        interaction.choose_alternative(session, -1)
    session.undo()
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[best])
    assert session.prompt.chosen == best
    # the first alternative can be chosen too; the next click refines the chosen candidate (its box and logits)
    # with both points, on the same object (no more alternatives)
    interaction.choose_alternative(session, 0)
    assert session.prompt.chosen == 0 and session.prompt.box == tuple(float(v) for v in expected.boxes[0])
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[0])
    runner.calls.clear()
    interaction.click(runner, session, 130, 118, positive=True)
    ((refine, multimask),) = runner.calls
    assert multimask is False and refine.point_labels.tolist() == [1, 1] and session.prompt.alternatives == ()
    assert refine.points.tolist() == [list(INSIDE), [130.0, 118.0]] and len(session.history[1]) == 2
    assert list(refine.box) == [float(v) for v in expected.boxes[0]]
    np.testing.assert_array_equal(refine.mask_logits, expected.low_res_logits[0][None])
    session.prompt = None
    with pytest.raises(PromptError, match="^no alternatives to choose from: they exist only after a lone first "
                                          "click$"):
        interaction.choose_alternative(session, 0)


class SamStyleRunner(SpyRunner):
    """A SAM-style model without an IoU head: its multimask answer to a lone point is three masks (here the real
    model's candidates), with NaN scores and no boxes."""

    def predict(self, session, embedding, prompts, multimask=False):
        if multimask:  # the lone click: the real model's candidates, computed once in _warm (the slow prompt)
            self.calls.append((prompts, multimask))
            r = _warm()["answers"]["litemedsam"]
        else:
            r = super().predict(session, embedding, prompts, multimask)
        return MaskResult(r.masks, np.full(len(r.masks), np.nan, np.float32), r.low_res_logits, None)


def test_a_sam_style_lone_click_offers_its_masks_without_boxes_or_scores(session):
    """The candidates are the model's own masks (no boxes asked for), scored 0 where the model gives no IoU (the
    UI prints "IoU 0.00", not nan or a made-up 1.00); the first is kept and a click refines it without a box."""
    runner = SamStyleRunner()
    interaction.click(runner, session, *INSIDE, positive=True)
    expected = _warm()["answers"]["litemedsam"]
    assert len(runner.calls) == 1 and runner.calls[0][1] is True  # no second try with boxes around the click
    alternatives = session.prompt.alternatives
    assert [(score, box) for _, _, score, box in alternatives] == [(0.0, None)] * len(expected.masks)
    for (mask, _, _, _), m in zip(alternatives, expected.masks):
        np.testing.assert_array_equal(mask, m)
    assert session.prompt.chosen == 0 and session.prompt.box is None
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[0])
    interaction.click(runner, session, 130, 118, positive=True)
    refine = runner.calls[-1][0]
    assert refine.box is None and refine.point_labels.tolist() == [1, 1]
    np.testing.assert_array_equal(refine.mask_logits, expected.low_res_logits[0][None])


def test_a_box_trained_model_answers_a_lone_click_with_boxes_around_it(tmp_path, runner, monkeypatch):
    """``litemedsam-base`` (no click model): its multimask answers to a point are specks, so the candidates
    are ``point_prompts``'s boxes, the same answer ``medseg eval --protocol points:1`` gets."""
    session = _session(tmp_path, model="litemedsam-base")
    specks = _reference(interaction._prompts_of(session, PromptState(VIEW, INDEX, 1, points=(INSIDE,),
                                                                      point_labels=(1,))), "litemedsam-base", True)
    assert specks.boxes is None and max(int(m.sum()) for m in specks.masks) < interaction.MIN_CANDIDATE_PX
    interaction.click(runner, session, *INSIDE, positive=True)
    prompts = runner.calls[0][0]
    assert prompts.points.tolist() == [list(INSIDE)] and prompts.point_labels.tolist() == [1]
    assert prompts.box is None and prompts.pixel_spacing == _warm()["lone"].pixel_spacing
    expected = _warm()["answers"]["litemedsam-base"]
    alternatives = session.prompt.alternatives
    assert len(alternatives) == len(expected.masks) == 3
    for (mask, _, score, box), m, s, b in zip(alternatives, expected.masks, expected.scores, expected.boxes):
        np.testing.assert_array_equal(mask, m)
        assert score == pytest.approx(float(s)) and box == tuple(float(v) for v in b)
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected.masks[int(np.argmax(expected.scores))])


def test_a_painted_mask_is_kept_as_drawn_and_a_mask_prompt_sends_its_box_and_logits(session, runner):
    mask = np.zeros((256, 256), bool)
    mask[100:140, 90:150] = True
    session.region(VIEW, INDEX)[0:5, 0:5] = 1  # an earlier object of label 1 stays
    edit = interaction.mask_prompt(runner, session, mask, use_model=False)
    assert not runner.calls and edit.description == "paint" and session.history[1][-1]["kind"] == "paint"
    expected = mask.copy()
    expected[0:5, 0:5] = True
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, expected)
    assert session.prompt.box is None and session.prompt.logits is None
    session.undo()
    edit = interaction.mask_prompt(runner, session, mask)
    ((prompts, multimask),) = runner.calls
    assert list(prompts.box) == [90.0, 100.0, 149.0, 139.0] and multimask is False and prompts.points is None
    np.testing.assert_array_equal(prompts.mask_logits, _warm()["models"]["litemedsam"].mask_prompt_from_mask(mask))
    reference = _reference(prompts)
    plane = session.region(VIEW, INDEX)
    np.testing.assert_array_equal(plane == 1, reference.best_mask | expected & ~mask)
    np.testing.assert_array_equal(session.prompt.logits, reference.low_res_logits[reference.best_index][None])
    assert list(session.prompt.box) == list(prompts.box) and edit.description == "mask prompt"
    assert session.history[1][-1]["kind"] == "mask"
    # a click refines the mask prompt's object: its box and logits go with the point
    runner.calls.clear()
    interaction.click(runner, session, *INSIDE, positive=True)
    ((refine, _),) = runner.calls
    assert list(refine.box) == [90.0, 100.0, 149.0, 139.0] and refine.point_labels.tolist() == [1]
    np.testing.assert_array_equal(refine.mask_logits, reference.low_res_logits[reference.best_index][None])
    session.undo()
    # on top of a box, a mask prompt is a new object whose undo goes back to the box's prompt
    session.undo()
    interaction.box_prompt(runner, session, BOX)
    boxed = session.prompt
    interaction.mask_prompt(runner, session, mask)
    assert session.undo_stack[-1].prompt_before is boxed
    session.undo()
    assert session.prompt is boxed
    interaction.mask_prompt(runner, session, mask, use_model=False)
    assert session.undo_stack[-1].prompt_before is boxed and session.prompt.view == VIEW
    with pytest.raises(PromptError, match="^the mask is empty: paint over the structure first$"):
        interaction.mask_prompt(runner, session, np.zeros((256, 256), bool), use_model=False)
    session.view.view, session.view.index["axial"] = "axial", 100  # a 256 x 12 plane
    with pytest.raises(PromptError, match="^the mask is 20x10 pixels; this plane is 256x12$"):
        interaction.mask_prompt(runner, session, np.ones((10, 20), bool))


def test_a_click_after_painting_keeps_the_paint(session, runner):
    """Paint a region, then click elsewhere on the same label: the click's object is added to the painted one.
    The click continued the paint's prompt, whose base plane was the one before the paint: the paint vanished."""
    square = np.zeros((256, 256), bool)
    square[20:40, 20:40] = True  # far from the click
    interaction.mask_prompt(runner, session, square, use_model=False)
    interaction.click(runner, session, *INSIDE, positive=True)
    plane = session.region(VIEW, INDEX)
    assert (plane[square] == 1).all()
    chosen = session.prompt.alternatives[session.prompt.chosen][0]
    np.testing.assert_array_equal(plane == 1, square | chosen)
    session.undo()
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, square)


def test_the_eraser_removes_only_the_active_label_under_it(session, runner):
    plane = session.region(VIEW, INDEX)
    plane[10:20, 10:20] = 1
    plane[10:20, 20:30] = 2
    before = session.labels.copy()
    interaction.box_prompt(runner, session, BOX)
    prompt = session.prompt
    after_box = session.labels.copy()
    eraser = np.zeros((256, 256), bool)
    eraser[12:18, 5:120] = True
    edit = interaction.erase(session, eraser)
    expected = after_box.copy()
    region = Plane.of(session.volume, VIEW).extract(expected, INDEX)
    region[eraser & (region == 1)] = 0
    np.testing.assert_array_equal(session.labels, expected)
    assert session.labels.dtype == np.uint16 and (session.region(VIEW, INDEX)[12:18, 20:30] == 2).all()
    assert edit.description == "erase" and edit.prompt_before is prompt and session.prompt is None
    session.undo()
    np.testing.assert_array_equal(session.labels, after_box)
    assert session.prompt is prompt and not np.array_equal(after_box, before)
    interaction.erase(session, eraser.astype(np.float32) * 2)  # a painted layer's 0 / 2.0 values
    np.testing.assert_array_equal(session.labels, expected)
    assert np.asarray(edit.after).dtype == np.uint16  # the undo step keeps the label map's dtype
    session.view.view, session.view.index["axial"] = "axial", 100  # a 256 x 12 plane
    with pytest.raises(PromptError, match="^the eraser mask is 3x2; this plane is 256x12$"):
        interaction.erase(session, np.ones((2, 3), bool))


def test_measurements_per_label_on_the_plane_and_over_the_study(session):
    session.add_label("kidney")
    session.add_label("empty")
    session.region(VIEW, INDEX)[0:10, 0:20] = 1  # 200 px on this plane
    session.region(VIEW, 3)[0:5, 0:5] = 1  # 25 voxels elsewhere: the volume only
    session.region(VIEW, INDEX)[50:53, 50:53] = 2  # 9 px
    row_mm, col_mm = _spacing(session)
    voxel_ml = float(np.prod(session.volume.spacing)) / 1000
    rows = interaction.measurements(session)
    assert rows == [
        [1, "label 1", 200, round(200 * row_mm * col_mm, 2), round(225 * voxel_ml, 4)],
        [2, "kidney", 9, round(9 * row_mm * col_mm, 2), round(9 * voxel_ml, 4)],
        [3, "empty", 0, 0.0, 0.0],
    ]
    assert rows[0][3] == 183.18 and rows[0][4] == 0.3091  # 0.957 mm pixels, 1.374 mm^3 voxels
    session.view.index[VIEW] = 3
    assert [r[2] for r in interaction.measurements(session)] == [25, 0, 0]


def test_a_prompt_without_its_base_plane_is_an_internal_error(session, runner):
    with pytest.raises(SessionError, match="^internal: a prompt without its base plane$"):
        interaction._predict(runner, session, PromptState(VIEW, INDEX, 1, box=BOX), multimask=False)
    assert interaction.to_prompts(PromptState(VIEW, INDEX, 1, box=BOX)).points is None


def test_the_runner_serves_the_shared_model_with_the_backend_asked_for(monkeypatch):
    """``--backend torch``: the session's model is the process's one loaded copy (no second load per request), and
    the status line says torch, chosen by the flag, even where the machine's default ($MEDSEG_BACKEND) is another
    backend. A GPU-only backend asked for on the CPU is refused in one line."""
    from runtime.backend_choice import BackendError

    monkeypatch.setenv("MEDSEG_BACKEND", "torch-fp16")  # a GPU machine's default: the flag wins over it
    runner = ModelRunner(backend="torch")  # on the CPU by default
    assert runner.segmenter("litemedsam") is _warm()["models"]["litemedsam"]
    assert runner.segmenter("litemedsam-base") is _warm()["models"]["litemedsam-base"]
    choice = runner.backend_choice("litemedsam")
    assert (choice.backend, choice.source, choice.reason) == ("torch", "flag", "asked for with --backend")
    with pytest.raises(BackendError, match=r"^--backend torch-fp16: needs a CUDA GPU \(--device cuda\)$"):
        ModelRunner("cpu", backend="torch-fp16").backend_choice("litemedsam")


def test_user_requests_hold_the_model_and_background_work_steps_aside():
    runner = ModelRunner("cpu", idle_after_s=3600)
    assert not runner.busy and runner.try_background_turn()  # idle: background work may take the model
    assert not runner.try_background_turn()  # held by background work
    runner.release_background_turn()
    with runner.turn():
        assert runner.busy and not runner.try_background_turn()
        assert runner._lock.locked()
    assert runner.busy  # it ended less than idle_after_s ago
    assert not runner.try_background_turn()
    quick = ModelRunner("cpu", idle_after_s=0.0)
    with quick.turn():
        assert quick.busy
    assert not quick.busy and quick.try_background_turn()
    quick.release_background_turn()
    assert not quick._lock.locked()


def test_background_work_waits_half_a_second_after_the_last_user_request(monkeypatch):
    """The prefetcher steps aside while the user is active: for 0.5 s after a request ends, by default."""
    now = [1000.0]
    monkeypatch.setattr(interaction.time, "monotonic", lambda: now[0])
    runner = ModelRunner()
    with runner.turn():
        pass
    now[0] += 0.45
    assert runner.busy and not runner.try_background_turn()
    now[0] += 0.1
    assert not runner.busy and runner.try_background_turn()
    runner.release_background_turn()


def test_a_batching_runner_sends_encodes_and_prompts_through_the_batchers_and_takes_no_lock(tmp_path):
    runner = ModelRunner("cpu", batch_window_ms=5)
    assert runner.batcher is not None and ModelRunner("cpu").batcher is None
    assert runner.decode_batcher is not None and ModelRunner("cpu").decode_batcher is None
    for batcher in (runner.batcher, runner.decode_batcher):  # each waits 5 ms for other sessions' requests and
        assert batcher.window_s == pytest.approx(0.005) and batcher.load == runner.segmenter  # runs the runner's models
    assert ModelRunner("cpu", batch_window_ms=0.5).batcher is not None  # any positive window batches
    seen, decoded = [], []

    class Batcher:
        def embed(self, sid, model, image):
            seen.append((sid, model, image))
            return _warm()["embeddings"]["litemedsam"]

    class DecodeBatcher:
        def predict(self, sid, model, embedding, prompts, multimask):
            decoded.append((sid, model, embedding, prompts, multimask))
            return _reference(prompts, model, multimask)

    runner.batcher, runner.decode_batcher = Batcher(), DecodeBatcher()
    session = _session(tmp_path, encoded=False)
    with runner.turn():
        assert not runner._lock.locked()
        assert runner.embedding(session, VIEW, INDEX) is _warm()["embeddings"]["litemedsam"]
    ((sid, model, image),) = seen
    assert (sid, model) == (SID, "litemedsam")
    np.testing.assert_array_equal(image, _warm()["image"])
    # a box: the session's prompt goes to the decode batcher with its session, model and embedding
    interaction.box_prompt(runner, session, BOX)
    ((sid, model, embedding, prompts, multimask),) = decoded
    assert (sid, model, multimask) == (SID, "litemedsam", False) and embedding is _warm()["embeddings"]["litemedsam"]
    assert list(prompts.box) == list(BOX) and prompts.pixel_spacing == _spacing(session)
    np.testing.assert_array_equal(session.region(VIEW, INDEX) == 1, _reference(prompts).best_mask)


class CountingRunner(ModelRunner):
    """A runner whose encoder records the planes it is asked for (the prefetcher's scheduling is the point)."""

    def __init__(self):
        super().__init__("cpu", idle_after_s=0.0)
        self.planes = []

    def embedding(self, session, view, index):
        self.planes.append((session.model, view, index))
        interaction.embeddings_of(session).put((session.model, view, index), _warm()["embeddings"]["litemedsam"])


def _drain(prefetcher: Prefetcher) -> None:
    prefetcher._jobs.join()


def test_the_prefetcher_encodes_each_missing_neighbour_once(tmp_path):
    session = _session(tmp_path)  # plane 6 is encoded already
    runner = CountingRunner()
    prefetcher = Prefetcher(runner, radius=2)
    assert prefetcher.neighbours(session, VIEW, 6) == [7, 5, 8, 4]
    assert prefetcher.neighbours(session, VIEW, 0) == [1, 2] and prefetcher.neighbours(session, VIEW, 11) == [10, 9]
    assert Prefetcher(runner).radius == 1 and Prefetcher(runner).neighbours(session, VIEW, 3) == [4, 2]
    assert Prefetcher(runner).neighbours(session, VIEW, 1) == [2, 0]
    with runner.turn():  # a user request holds the model: a second request queues nothing new
        prefetcher.request(session, VIEW, 5)  # 6 is cached: 4, 7, 3
        prefetcher.request(session, VIEW, 5)
        assert prefetcher._jobs.unfinished_tasks == 3 and not prefetcher.idle() and not runner.planes
        worker = prefetcher._thread
        assert worker.name == "medseg-prefetch" and worker.daemon is True  # never holds the server's exit
        prefetcher.request(session, VIEW, 6)  # 7 and 4 are queued already: 5 and 8 join them
        assert prefetcher._jobs.unfinished_tasks == 5 and prefetcher._thread is worker  # one worker
    _drain(prefetcher)
    assert sorted(runner.planes) == [("litemedsam", VIEW, i) for i in (3, 4, 5, 7, 8)]
    assert prefetcher.done == 5 and prefetcher.idle() and not prefetcher._pending
    prefetcher.request(session, VIEW, 5)  # all cached now: nothing queued
    assert prefetcher.idle()
    prefetcher.request(session, VIEW, 9)  # 10, 11 (8 and 7 cached)
    _drain(prefetcher)
    assert sorted(i for _, _, i in runner.planes) == [3, 4, 5, 7, 8, 10, 11] and prefetcher.done == 7
    prefetcher.stop()
    worker.join(30)
    assert prefetcher._stop.is_set() and not worker.is_alive()  # the idle worker notices the stop
    off = Prefetcher(runner, radius=0)
    off.request(session, VIEW, 1)
    empty = Session(id=SID, directory=tmp_path)
    Prefetcher(runner).request(empty, VIEW, 1)
    assert len(runner.planes) == 7 and off._thread is None


def test_the_prefetcher_drops_work_for_a_study_or_model_no_longer_shown(tmp_path, caplog):
    session = _session(tmp_path)
    runner = CountingRunner()
    prefetcher = Prefetcher(runner)
    with runner.turn():
        prefetcher.request(session, VIEW, 3)  # 4 and 2
        session.model = "litemedsam-base"
    _drain(prefetcher)
    assert runner.planes == [] and prefetcher.done == 0
    session.model = "litemedsam"
    with runner.turn():
        prefetcher.request(session, VIEW, 8)  # 9 and 7
        session.volume = replace(session.volume)  # another study opened (the same size)
    _drain(prefetcher)
    assert runner.planes == [] and prefetcher.done == 0
    session.model = "litemedsam-base"
    prefetcher._one(session, VIEW, 2, "litemedsam-base", volume=object())  # another study opened since
    assert runner.planes == []
    prefetcher._one(session, VIEW, 2, "litemedsam-base", volume=session.volume)
    assert runner.planes == [("litemedsam-base", VIEW, 2)]
    prefetcher._one(session, VIEW, 2, "litemedsam-base")  # cached now
    assert prefetcher.done == 1
    # a user request holds the model: the background job waits for it, then runs
    with runner.turn():
        worker = threading.Thread(target=prefetcher._one, args=(session, VIEW, 4, "litemedsam-base"))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and runner.planes == [("litemedsam-base", VIEW, 2)]
    worker.join(30)
    assert runner.planes[-1] == ("litemedsam-base", VIEW, 4) and not runner._lock.locked()
    prefetcher.stop()
    prefetcher._one(session, VIEW, 5, "litemedsam-base")
    assert len(runner.planes) == 2


def test_a_failed_prefetch_is_logged_and_the_worker_keeps_going(tmp_path, caplog):
    session = _session(tmp_path)
    runner = CountingRunner()
    calls = []

    def fail_once(s, view, index):
        calls.append(index)
        if len(calls) == 1:
            raise RuntimeError("boom")
        CountingRunner.embedding(runner, s, view, index)

    runner.embedding = fail_once
    prefetcher = Prefetcher(runner)
    with caplog.at_level("DEBUG", logger="app.interaction"):
        prefetcher.request(session, VIEW, 3)
        _drain(prefetcher)
    assert sorted(calls) == [2, 4] and len(runner.planes) == 1 and prefetcher.idle()
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert record.levelname == "ERROR" and record.getMessage() in ("prefetch of coronal 4 failed",
                                                                    "prefetch of coronal 2 failed")
    # a failure because the study changed under the job is no fault: a debug line
    caplog.clear()

    def study_changed(s, view, index):
        s.volume = replace(s.volume)
        raise RuntimeError("the study changed")

    runner.embedding = study_changed
    with caplog.at_level("DEBUG", logger="app.interaction"):
        prefetcher.request(session, VIEW, 8)
        _drain(prefetcher)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "app.interaction"]
    assert ("DEBUG", "prefetch of coronal 9 dropped: the study changed") in messages
    assert not [m for m in messages if m[0] == "ERROR"]
    prefetcher.stop()


@pytest.mark.parametrize("name", ["pydicom_US_rgb_lymph_node.dcm", "picture.png"])
def test_no_area_or_volume_is_claimed_where_the_pixel_size_is_unknown(tmp_path, name):
    """An ultrasound frame without PixelSpacing or calibrated regions opened with GDCM's 1 mm default, and a
    picture in pixels: the table said '345 mm²' and '0.345 mL' of sizes nobody measured. Now those cells say "—";
    the pixel count stays."""
    from PIL import Image

    path = DATA / "dicom" / name
    if name.endswith(".png"):
        path = tmp_path / name
        Image.fromarray(np.full((40, 60), 128, np.uint8)).save(path)
    volume = read_study(path)
    assert not volume.size_is_physical
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(path), name)
    session.labels[0, 5:10, 5:10] = 1
    assert interaction.measurements(session) == [[1, "label 1", 25, "—", "—"]]
    from app import controller

    assert "pixel size unknown" in controller.facts(session) and " mm," not in controller.facts(session)


def test_no_volume_is_claimed_where_the_file_does_not_place_its_frames(tmp_path):
    """pydicom's real ultrasound cine (30 frames 33 ms apart, regions calibrated at 0.51 mm, no patient position)
    opened as a volume with GDCM's 1 mm between frames: the table said '0.0065 mL' (and mm² on the planes across the
    frames, facts '× 1 mm') of a distance the file does not hold: its frames are times, not places. Now those cells
    say "—"; a frame's own area stays in mm², from its calibration."""
    import pydicom

    from app import controller

    path = Path(pydicom.__file__).parent / "data" / "test_files" / "examples_ybr_color.dcm"
    volume = read_study(path)
    assert volume.array.shape[:3] == (30, 240, 320) and volume.size_is_physical
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(path), path.name)
    session.labels[:, :, 5:10] = 1  # columns 5..9 of every frame: the same count on any plane of a view
    session.view.view = "axial"  # the frames' plane (their direction is the identity)
    assert interaction.measurements(session) == [[1, "label 1", 1200, round(1200 * 0.510497056**2, 2), "—"]]
    session.view.view = "coronal"  # across the frames
    assert interaction.measurements(session) == [[1, "label 1", 150, "—", "—"]]
    facts = controller.facts(session)
    assert "frames not placed" in facts and " × 1 mm" not in facts
    assert "frames not placed" in volume.source.geometry  # medseg info prints it


def test_no_volume_is_claimed_for_one_slice_that_gives_no_thickness(tmp_path):
    """One slice of the real head CT without SliceThickness and SpacingBetweenSlices opened 1 mm thick (GDCM's
    default): the facts said `0.957 × 0.957 × 1 mm` and the labels table gave mL from that placeholder (session 24's
    pass). Now the volume cell is "—", the facts say the thickness is unknown, `medseg info`'s geometry says why; the
    slice's own area stays in mm², and one with a SliceThickness keeps its mL."""
    import pydicom

    from app import controller

    ds = pydicom.dcmread(DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm")
    del ds.SliceThickness
    ds.save_as(tmp_path / "thin.dcm")
    volume = read_study(tmp_path / "thin.dcm")
    assert volume.size_is_physical and not volume.slice_spacing_is_physical
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(tmp_path / "thin.dcm"), "thin.dcm")
    session.labels[0, 5:15, 5:15] = 1
    session.view.view = "axial"
    assert interaction.measurements(session) == [[1, "label 1", 100, round(100 * 0.9570312**2, 2), "—"]]
    facts = controller.facts(session)
    assert "slice thickness unknown (not in the file: no volume in mL)" in facts and " × 1 mm" not in facts
    assert volume.source.geometry.endswith("; slice thickness unknown: neither SliceThickness nor SpacingBetweenSlices "
                                           "in the file (the 1 mm is a placeholder; no volume is measured)")
    measured = read_study(DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm")  # 1.5 mm thick
    assert measured.slice_spacing_is_physical and "thickness unknown" not in measured.source.geometry


def test_a_study_with_geometry_keeps_its_area_and_volume():
    assert _warm()["volume"].size_is_physical and read_study(DATA_CT_NIFTI).size_is_physical
