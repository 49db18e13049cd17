"""The browser viewer's server side (issue 19): world mm <-> plane pixels, prompts in mm answered with
the changed label plane, the brush and eraser, several objects per label, locks, the files the
browser loads keep the study's geometry, and user errors answer one line without server paths."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import SimpleITK as sitk

from app import controller, messages
from app.controller import AppContext
from app.interaction import ModelRunner, PlaneEmbeddings, Prefetcher
from app.render import Plane
from app.session import SessionStore
from app.viewer import actions
from app.viewer.api import routes
from app.viewer.geometry import from_plane, to_plane
from data.readers import read_study
from models.prompts import PromptError
from tests.conftest import SAMPLES

CT_NAME = "CT head (DICOM series, 12 slices)"
CT = SAMPLES / "ct_head_0051_series"
MR = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
# Coronal slice 7 of the CT (plane pixels x, y): inside the left and the right frontal horn.
LEFT_HORN, RIGHT_HORN = (115.0, 85.0), (150.0, 82.0)


@pytest.mark.parametrize("path", [CT, MR], ids=["ct", "mr"])
def test_plane_pixels_round_trip_through_world_mm(path):
    volume = read_study(path)
    for view in ("axial", "coronal", "sagittal"):
        plane = Plane.of(volume, view)
        n = plane.count(volume.array.shape)
        h, w = plane.extract(volume.array, 0).shape[:2]
        for index, x, y in [(0, 0.0, 0.0), (n - 1, w - 1.0, h - 1.0), (n // 2, w / 3, h / 4)]:
            got = to_plane(volume, view, from_plane(volume, view, index, x, y))
            assert got[0] == index and got[1:] == pytest.approx((x, y), abs=1e-6)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, litemedsam):
    runner = ModelRunner("cpu")
    return AppContext(SessionStore(tmp_path_factory.mktemp("sessions")), runner, Prefetcher(runner, radius=0))


@pytest.fixture(scope="module")
def embeddings():
    return PlaneEmbeddings()


@pytest.fixture()
def opened(ctx, embeddings):
    """A fresh session on the CT, coronal slice 7; the slice's embedding is shared between the tests."""
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    session = ctx.store.get(sid)
    session.view.index["coronal"] = 7
    session.runtime["embeddings"] = embeddings
    return session


def _mm(session, x, y, index=7, view="coronal"):
    return from_plane(session.volume, view, index, x, y)


def _apply(session, answer):
    """The browser's side: write the answer's patch into its copy of the labels."""
    p = answer["patch"]
    values = np.frombuffer(base64.b64decode(p["data"]), "<u2").reshape(p["shape"])
    return p["axis"], p["index"], values


def _near(mask, xy, px=15.0):
    rows, cols = np.nonzero(mask)
    return len(rows) > 0 and np.hypot(cols.mean() - xy[0], rows.mean() - xy[1]) < px


def test_a_second_object_on_the_same_slice_and_label_keeps_the_first(ctx, opened):
    """Issue 19: CT slice 7, click the left frontal horn, New object, click the right horn: both stay."""
    s = opened
    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    plane = s.region("coronal", 7)
    left = plane == 1
    assert left.sum() > 30 and _near(left, LEFT_HORN)
    actions.act(ctx, s, {"kind": "new_object"})
    answer = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *RIGHT_HORN), "positive": True})
    plane = s.region("coronal", 7)
    assert _near((plane == 1) & ~left, RIGHT_HORN)
    assert (plane[left] == 1).all(), "the first object was erased by the second"
    axis, index, values = _apply(s, answer)
    np.testing.assert_array_equal(values, np.take(s.labels, index, axis=axis))
    assert answer["object"]["points"][0]["mm"] == pytest.approx(_mm(s, *RIGHT_HORN), abs=1e-6)
    undone = actions.act(ctx, s, {"kind": "undo"})
    assert undone["status"].startswith("Undid") and (s.region("coronal", 7) == left).all()



def test_undo_and_redo_say_on_which_slice_they_acted(ctx, opened):
    """A click on slice 7, paging to slice 3 (or a click made in another tab of the session), then ctrl+Z: the undo
    took back the click on slice 7, out of sight, and said only "Undid positive click.", so a hurried user saw nothing
    change and pressed it again, undoing the edit before it too. The line now says where."""
    s = opened
    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    actions.act(ctx, s, {"kind": "view", "view": "coronal", "mm": _mm(s, 128, 128, index=3)})
    assert actions.act(ctx, s, {"kind": "undo"})["status"] == "Undid positive click on coronal slice 7."
    assert actions.act(ctx, s, {"kind": "redo"})["status"] == "Redid positive click on coronal slice 7."
    assert controller.undo(ctx, s.id).status == "Undid positive click on coronal slice 7."
    assert actions.act(ctx, s, {"kind": "undo"})["status"] == "Nothing to undo."

def test_box_brush_and_eraser_in_mm(ctx, opened):
    s = opened
    answer = actions.act(ctx, s, {"kind": "box", "view": "coronal", "mm": _mm(s, 90, 60), "mm2": _mm(s, 170, 140)})
    box_px = int((s.region("coronal", 7) == 1).sum())
    assert box_px > 300 and answer["status"].startswith("Box")
    s.add_label("painted")
    actions.act(ctx, s, {"kind": "brush", "view": "coronal", "radius": 3,
                         "points": [_mm(s, 20, 200), _mm(s, 60, 200)]})
    painted = s.region("coronal", 7) == 2
    assert painted[200, 20:61].all() and not painted[210, 40] and 200 < painted.sum() < 320
    actions.act(ctx, s, {"kind": "erase", "view": "coronal", "radius": 3, "points": [_mm(s, 40, 200)]})
    assert not (s.region("coronal", 7) == 2)[200, 38:43].any()
    assert int((s.region("coronal", 7) == 1).sum()) == box_px, "the eraser touched another label"


def test_locked_label_and_bad_prompts_are_one_line_user_errors(ctx, opened):
    s = opened
    with pytest.raises(PromptError, match="locked"):
        actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, 100, 100), "locked": [1]})
    with pytest.raises(PromptError, match=r"mm: expected \[x, y, z\]"):
        actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": "here"})
    with pytest.raises(PromptError, match="window width must be a positive number"):
        actions.act(ctx, s, {"kind": "window", "level": 40, "width": 0})
    with pytest.raises(PromptError, match="unknown action"):
        actions.act(ctx, s, {"kind": "rm -rf"})
    assert not s.labels.any() and not s.undo_stack


@pytest.mark.parametrize("body, message", [
    ({"kind": "point", "view": "coronal", "label": [1]}, "label: expected a number, got '[1]'"),
    ({"kind": "point", "view": "coronal", "label": "abc"}, "label: expected a number, got 'abc'"),
    ({"kind": "point", "view": "coronal", "label": 1e300}, "label: expected a label number 1..65535, got '1e+300'"),
    ({"kind": "point", "view": "coronal", "locked": 5}, "locked: expected a list of label numbers"),
    ({"kind": "point", "view": "coronal", "at": [float("nan"), 3, 3]}, "at: expected finite numbers [plane index, x, y]"),
    ({"kind": "brush", "view": "coronal", "radius": None, "points": [[0, 0, 0]]}, "radius: expected a number, got 'None'"),
    ({"kind": "window", "level": None, "width": 5}, "level: expected a number, got 'None'"),
    ({"kind": "window", "level": 40, "width": "wide"}, "width: expected a number, got 'wide'"),
    ({"kind": "active", "label": None}, "label: expected a number, got 'None'"),
    ({"kind": "active", "label": True}, "label: expected a number, got 'True'"),
])
def test_wrong_typed_action_fields_are_one_line_naming_the_field(ctx, opened, body, message):
    """A scripted client's null, list or text where a number belongs answered 500 "internal error (TypeError)"
    (or "invalid literal for int() with base 10: 'abc'"); now a 400 naming the field, and nothing changes."""
    s = opened
    with pytest.raises(PromptError) as e:
        actions.act(ctx, s, body)
    assert str(e.value) == message
    assert not s.labels.any() and not s.undo_stack and s.view.window == "default" and s.active == 1


def test_routes_act_on_the_cookie_session_and_serve_the_study_with_its_geometry(ctx, embeddings, tmp_path):
    """The viewer's routes take the session from the HttpOnly cookie only (nothing in the URL or the
    page); no cookie, another browser's cookie or a forged one reach nothing; errors name no paths."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    s.labels[7, 10:20, 30:40] = 1
    app = FastAPI(routes=routes(ctx))
    client = TestClient(app, headers={"Cookie": f"{web_session.COOKIE}={token}"})
    state = client.get("/viewer-api/state").json()
    assert state["study"] == s.study_key and state["labels"][0]["colour"] == "#e6194b"
    assert state["window"] == {"level": 40.0, "width": 400.0}
    assert token not in str(state) and sid not in str(state)  # the page holds no credential
    for what in ("volume", "labels"):
        r = client.get(f"/viewer-api/{what}/{s.study_key}.nii.gz")
        assert r.status_code == 200
        path = tmp_path / f"{what}.nii.gz"
        path.write_bytes(r.content)
        image = sitk.ReadImage(str(path))
        assert image.GetSpacing() == pytest.approx(s.volume.spacing)
        assert image.GetOrigin() == pytest.approx(s.volume.origin)
        assert image.GetDirection() == pytest.approx(s.volume.direction)
        expected = s.volume.array if what == "volume" else s.labels
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    r = client.post("/viewer-api/action", json={"kind": "window", "level": 40, "width": -5})
    assert r.status_code == 400 and r.json() == {"ok": False, "error": "window width must be a positive number, got -5"}
    for what in ("volume", "labels"):  # a stale page asks for a study that is no longer open
        r = client.get(f"/viewer-api/{what}/0123456789abcdef.nii.gz")
        assert r.status_code == 400 and r.json()["error"] == "that study is no longer open: reload the page"
        assert str(s.directory) not in r.text and sid not in r.text

    for cookies in ({}, {web_session.COOKIE: web_session.new_token()}, {web_session.COOKIE: sid}):
        other = TestClient(app, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
        r = other.get("/viewer-api/state")
        assert r.status_code == 400 and "reload" in r.json()["error"], cookies
        r = other.post("/viewer-api/action", json={"kind": "undo"})
        assert r.status_code == 400, cookies
        assert other.get(f"/viewer-api/labels/{s.study_key}.nii.gz").status_code == 400
    assert ctx.store.get(sid).view.window == "default"  # nobody else changed this session


@pytest.mark.parametrize("error, shown", [
    (ValueError("/srv/medseg/state/sessions/0123456789abcdef0123456789abcdef/uploads/x/scan.nii.gz: unreadable"),
     "scan.nii.gz: unreadable"),
    (KeyError("no label 3"), "no label 3"),
    (ValueError("no saved session 0123456789abcdef0123456789abcdef"), "no saved session …"),
])
def test_user_messages_carry_no_server_paths_or_session_ids(error, shown):
    from app import messages

    assert messages.plain(messages.error_text(error), hide=["0123456789abcdef0123456789abcdef"]) == shown


def test_refinement_clicks_label_only_the_clicked_structure(ctx, opened):
    """The viewer's first walk (issue 19): a click on CT coronal slice 6, six refinement clicks around it,
    then a box as a new object. On the click path of the first viewer build (ed75254) the clicks left
    ~2300 label pixels scattered in the air around the head: the "dotted patches" of its screenshots,
    which the measurements table counted too (data, not drawing). Every pixel must stay near the prompts."""
    s = opened
    s.view.index["coronal"] = 6
    s.runtime.pop("embeddings", None)  # slice 6: its own encode

    def act(body):
        return actions.act(ctx, s, body)

    for x, y in [(128, 120), (118, 115), (138, 115), (128, 133), (120, 128), (136, 128), (128, 108)]:
        act({"kind": "point", "view": "coronal", "mm": _mm(s, x, y, index=6), "positive": True})
    clicked = s.labels[6] == 1
    assert clicked.sum() > 50
    far = clicked.copy()
    far[60:190, 80:180] = False  # well around the clicks (rows 108-133, columns 118-138)
    assert far.sum() <= 5, f"{int(far.sum())} label pixels far from the clicks"
    act({"kind": "new_object"})
    act({"kind": "box", "view": "coronal", "mm": _mm(s, 90, 74, index=6), "mm2": _mm(s, 166, 166, index=6)})
    boxed = s.labels[6] == 1
    assert boxed[clicked].all()  # the box, a new object, kept the clicked one
    far = boxed.copy()
    far[60:190, 80:180] = False
    assert far.sum() <= 5, f"{int(far.sum())} label pixels far from the prompts"


def test_encoding_the_shown_slice_is_news_only_when_it_encoded(ctx, opened):
    """The viewer asks to encode the shown slice after every prompt; for a slice already encoded the
    answer's "Ready" replaced the prompt's own message ("Negative click ...", seen in the e2e flow)."""
    opened.view.index["coronal"] = 8  # a slice no test has encoded yet
    assert not actions.shown_is_encoded(opened)
    assert actions.encode_shown(ctx, opened) == "Ready: the slice is encoded."
    assert actions.encode_shown(ctx, opened) == ""  # already encoded: nothing to say
    assert actions.shown_is_encoded(opened)  # but the viewer can still tell that it is (a study's first Ready)
    opened.view.index["coronal"] = 7


def test_a_suggested_click_comes_only_when_asked_and_lies_on_the_objects_unsure_border(ctx, opened):
    """Issue 18's "where to click next", opt-in in the viewer: a prompt's answer carries the place where the
    object's answer is least sure, on the object's plane, with its sign guessed from the drawn mask (inside:
    negative), the same place ``models.click_suggest`` gives on the prompt's logits; undo moves it back."""
    from models.click_suggest import suggest_from_logits

    s = opened
    plane = Plane.of(s.volume, "coronal")
    first = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    assert "suggest" not in first  # not asked
    box = {"kind": "box", "view": "coronal", "mm": _mm(s, 100, 70), "mm2": _mm(s, 135, 105), "new_object": True, "suggest": True}
    answer = actions.act(ctx, s, box)["suggest"]
    assert answer["view"] == "coronal" and answer["index"] == 7
    index, x, y = to_plane(s.volume, "coronal", answer["mm"])
    assert index == 7
    expected = suggest_from_logits(ctx.runner.segmenter(s.model), ctx.runner.embedding(s, "coronal", 7), s.prompt.logits)
    assert (round(x), round(y), answer["positive"]) == (expected.x, expected.y, expected.positive)
    drawn = plane.extract(s.labels, 7) == s.active
    assert answer["positive"] == (not drawn[round(y), round(x)])
    # on the border band of the object, not anywhere on the slice: within a few pixels of the mask's edge
    from scipy import ndimage

    edge = drawn ^ ndimage.binary_erosion(drawn)
    assert ndimage.distance_transform_edt(~edge)[round(y), round(x)] <= 6
    clicked = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": answer["mm"], "positive": answer["positive"],
                                   "suggest": True})
    assert clicked["suggest"] is None or clicked["suggest"]["mm"] != answer["mm"]
    undone = actions.act(ctx, s, {"kind": "undo", "suggest": True})
    assert undone["suggest"] == answer  # back to the box's answer, back to its suggestion


def test_paging_and_windowing_save_in_the_background_and_survive_a_restore(ctx, opened, monkeypatch, tmp_path):
    """A slice step or a window change is what is shown, not an annotation: the request no longer writes and
    fsyncs state.json itself (every wheel step did), the background save writes it, and a new store restores
    the slice and the window from disk."""
    import json
    import threading

    written = []
    save = ctx.store.save
    monkeypatch.setattr(ctx.store, "save", lambda s: written.append(threading.current_thread().name) or save(s))
    actions.act(ctx, opened, {"kind": "view", "view": "coronal", "at": [9, 0, 0]})
    actions.act(ctx, opened, {"kind": "window", "level": 35, "width": 90})
    assert ctx.store.flush(opened.id)
    assert written and set(written) == {"medseg-autosave"}  # the saver thread's, not the request's
    state = json.loads((opened.directory / "state.json").read_text())
    assert state["view"]["index"]["coronal"] == 9 and (state["view"]["level"], state["view"]["width"]) == (35, 90)
    restored = SessionStore(ctx.store.root).get(opened.id)
    assert restored.view.index["coronal"] == 9 and (restored.view.level, restored.view.width) == (35, 90)


def test_a_prompt_made_on_a_study_no_longer_open_is_refused_not_applied_to_the_other(ctx, opened):
    """Open another sample and click on the old one's image before the viewer has switched (the click waits for
    the open's lock): the click's millimetres were applied to the study opened meanwhile. Now the viewer says
    which study it prompted and the server refuses a prompt for another one with one message; what is shown
    (paging, window) of the old study is dropped quietly."""
    from app.session import SessionError

    s = opened
    ct_key = s.study_key
    controller.open_sample(ctx, s.id, "MR T1 brain, Colin27 (NIfTI, 32 slices)")
    mr_view = s.view.view, dict(s.view.index)
    click = {"kind": "point", "view": "coronal", "mm": from_plane(read_study(SAMPLES / "ct_head_0051_series"),
             "coronal", 7, *LEFT_HORN), "positive": True, "study": ct_key}
    with pytest.raises(SessionError, match="not applied"):
        actions.act(ctx, s, click)
    assert not s.labels.any()
    answer = actions.act(ctx, s, {"kind": "view", "view": "coronal", "mm": click["mm"], "study": ct_key})
    assert answer["ok"] and (s.view.view, dict(s.view.index)) == mr_view


def test_a_point_far_outside_the_image_is_refused_and_a_box_overhanging_the_edge_is_clamped(ctx, embeddings):
    """A hostile or buggy client posted clicks at x = -10000 or 1e9 mm (or plane pixels): they were clamped to the
    image's edge and segmented whatever lay there. Now a point more than :data:`actions.POINT_TOLERANCE_PX` past
    the image (in the plane, or off the slices) answers 400 with one line and changes nothing; the session goes
    on. A point within the tolerance (a click on the edge pixel's outer half) is kept on the edge pixel, and a
    box corner past the edge is still clamped to it (the viewer's drag released past the edge)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    s.view.index["coronal"] = 7
    s.runtime["embeddings"] = embeddings
    s.add_label("second")
    s.active = 1  # the refused points name label 2: the active label stays 1
    client = TestClient(FastAPI(routes=routes(ctx)), headers={"Cookie": f"{web_session.COOKIE}={token}"})
    h, w = s.region("coronal", 7).shape
    volume = s.volume
    far = [
        {"mm": from_plane(volume, "coronal", 7, -10000, 100)},
        {"mm": from_plane(volume, "coronal", 7, 1e9, 100)},
        {"mm": from_plane(volume, "coronal", 7, 100, -2.0)},  # 1.5 px past the top edge (at -0.5)
        {"mm": from_plane(volume, "coronal", 7, 100, h + 0.6)},
        {"mm": [-10000.0, 0.0, 0.0]},
        {"mm": from_plane(volume, "coronal", 1e6, 100, 100)},  # on the image's rows and columns, far off its slices
        {"at": [7, -10000, 100]},  # a scripted client's plane pixels
        {"at": [7, 100, 1e9]},
    ]
    before = (s.labels.copy(), s.revision, s.active, dict(s.view.index), s.view.view)
    for where in far:
        r = client.post("/viewer-api/action", json={"kind": "point", "view": "coronal", "positive": True,
                                                   "label": 2, **where})
        assert r.status_code == 400, where
        error = r.json()["error"]
        assert error.startswith("the point is outside the image") and "\n" not in error, error
    assert s.prompt is None and not s.undo_stack and len(s.label_defs) == 2
    after = (s.labels, s.revision, s.active, dict(s.view.index), s.view.view)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1:] == before[1:], "a refused point changed the session"

    # the session goes on: a point within the tolerance lands on the edge pixel; a box past the edge is clamped
    r = client.post("/viewer-api/action", json={"kind": "point", "view": "coronal", "positive": True,
                                               "mm": from_plane(volume, "coronal", 7, -1.4, 120)})
    assert r.status_code == 200 and r.json()["ok"]
    assert s.prompt.points[0] == pytest.approx((0.0, 120.0), abs=1e-6)
    r = client.post("/viewer-api/action", json={"kind": "box", "view": "coronal", "mm": _mm(s, 90, 60),
                                               "mm2": from_plane(volume, "coronal", 7, 1e9, 140)})
    assert r.status_code == 200 and r.json()["ok"]
    assert s.prompt.box == pytest.approx((90, 60, w - 1, 140), abs=1e-6)


def test_answers_say_when_their_news_happened_and_which_label_table_they_found(ctx, embeddings):
    """The contract the viewer orders its messages and refreshes its label table by: the warm-up's "Ready" is as
    old as the open it reports, so a click answered meanwhile is newer; a rename changes the table's digest in
    the state and in the next answer (another tab of the session compares it with its own)."""
    sid = controller.start(ctx, None).session_id
    opened = controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    s.runtime["embeddings"] = embeddings
    table = actions.state(s)["table"]
    click = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    ready = controller.warm(ctx, sid)
    assert "Ready" in ready.status and ready.status_at == opened.status_at < click["at"]
    assert click["table"] == table
    controller.edit_label(ctx, sid, "ventricle", "#00ff00")
    assert actions.state(s)["table"] != table
    assert actions.act(ctx, s, {"kind": "view", "view": "coronal", "at": [7, 0, 0]})["table"] == actions.state(s)["table"]


def test_an_answer_says_which_pages_were_built_before_the_action(ctx, opened):
    """The contract the viewer drops a late page by (viewer/src/page_state.ts pagesBefore): a page built before a label pick and
    delivered after its answer made the old label active again in the viewer. The answer names the newest page
    built before the action; a page built after it has a higher number."""
    before = actions.PAGES.next()  # a page's sync built now, still on its way
    answer = actions.act(ctx, opened, {"kind": "active", "label": 1})
    assert answer["page"] >= before
    assert actions.PAGES.next() > answer["page"]


def test_an_idle_tab_polls_the_label_tables_digest_without_the_lock_or_a_load(ctx, tmp_path):
    """A tab that sends nothing never learned of another tab's rename until its next answer. It now polls
    ``GET /viewer-api/news``: a few hundred bytes at most, the cookie's session only, no credential in it; it
    answers while a prompt holds the session's lock (a poll never queues behind the model), and it never loads a
    session the server holds only on disk (no table: nothing changed since it was last in memory)."""
    import threading

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    app = FastAPI(routes=routes(ctx))
    client = TestClient(app, headers={"Cookie": f"{web_session.COOKIE}={token}"})
    r = client.get("/viewer-api/news")
    news = r.json()
    assert r.status_code == 200 and len(r.content) < 300 and r.headers["cache-control"] == "no-store"
    assert news["study"] == s.study_key and news["table"] == actions.state(s)["table"]
    assert token not in r.text and sid not in r.text
    controller.edit_label(ctx, sid, "ventricle", "#00ff00")
    assert client.get("/viewer-api/news").json()["table"] == actions.state(s)["table"] != news["table"]

    held, release, gave_up = threading.Event(), threading.Event(), threading.Event()

    def prompt_running():
        with s.lock:
            held.set()
            if not release.wait(120):
                gave_up.set()  # set while still holding the lock: a poll that waited for the lock sees it

    worker = threading.Thread(target=prompt_running)
    worker.start()
    try:
        assert held.wait(60)
        assert client.get("/viewer-api/news").json()["table"] == actions.state(s)["table"]
        # the poll answered while the prompt still held the session's lock (until released, or for 120 s): no
        # wall-clock limit (5 s until session 25) that a niced CI worker could miss
        assert not gave_up.is_set(), "the poll waited for the session's lock"
    finally:
        release.set()
        worker.join()

    store = ctx.store
    assert store.flush(sid)
    with store._lock:
        store._sessions.pop(sid)  # evicted: held on disk only
    r = client.get("/viewer-api/news")
    assert r.status_code == 200 and r.json()["table"] is None and store.peek(sid) is None
    for cookies in ("", f"{web_session.COOKIE}={web_session.new_token()}"):
        r = TestClient(app, headers={"Cookie": cookies}).get("/viewer-api/news")
        assert r.status_code == 400 and "reload" in r.json()["error"] and s.study_key not in r.text


def _viewer_takes(new: dict, shown: dict) -> bool:
    """The viewer's rule (``showStatus`` in viewer/src/status_line.ts): a server message replaces the one shown unless it
    comes from the same server process and is earlier in its news order."""
    return new.get("boot") != shown.get("boot") or new["at"] > shown["at"]


def _page_news(markup: str) -> dict:
    """The news order the viewer reads from the page's status line (``readPageStatus``)."""
    import re

    m = re.search(r'<time hidden [^>]*title="news ([0-9a-f]+)\.(\d+)"></time>$', markup)
    assert m, f"no news stamp the viewer reads in {markup!r}"
    return {"boot": m.group(1), "at": int(m.group(2))}


def _server_run(code: str, clock: str, *args: str) -> dict:
    """Run ``code`` as a server process of its own (its own ``messages.BOOT``) with the wall clock as it is
    (``clock`` "now") or stepped back an hour ("back": ``time.time`` and ``time.time_ns``, as after an NTP step);
    ``code`` prints one JSON object, returned. ``args`` reach it as ``sys.argv[1:]``."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    prelude = ("import sys, time\n"
               "if sys.argv.pop(1) == 'back':\n"
               "    real, real_ns = time.time, time.time_ns\n"
               "    time.time = lambda: real() - 3600\n"
               "    time.time_ns = lambda: real_ns() - 3600 * 10**9\n")
    out = subprocess.run([sys.executable, "-c", prelude + code, clock, *args], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_news_order_holds_when_the_wall_clock_steps_back(ctx, monkeypatch):
    """The viewer orders messages by when their news happened. That was the server's wall clock in ms: an NTP
    step back between two runs of the server made the restarted server's news older than what an open page had
    shown, and the page dropped every message for as long as the step. Now it is a count per server process,
    with the process named (``messages.BOOT``): here the clock steps back an hour inside one process (answers
    and the page's status line keep their order) and between two processes (the second one's news is taken)."""
    import time

    from app import messages

    code = ("import json\n"
            "from app import messages\n"
            "at = messages.news_stamp()\n"
            "print(json.dumps({'at': at, 'boot': getattr(messages, 'BOOT', None), 'page': messages.stamped('x', at)}))\n")
    before, restarted = _server_run(code, "now"), _server_run(code, "back")  # the server restarted after the step back
    assert _viewer_takes(restarted, before), "a restarted server's news looked older than the old one's"
    assert _viewer_takes(_page_news(restarted["page"]), _page_news(before["page"]))

    real, real_ns, offset = time.time, time.time_ns, [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(offset[0] * 1e9))
    sid = controller.start(ctx, None).session_id
    opened = controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    first = actions.act(ctx, s, {"kind": "new_object"})
    offset[0] = -3600.0  # NTP steps the clock back an hour
    second = actions.act(ctx, s, {"kind": "new_object"})
    page = _page_news(messages.stamped("Clicked.", messages.news_stamp()))
    offset[0] = -7200.0
    third = actions.act(ctx, s, {"kind": "new_object"})
    order = [{"boot": getattr(messages, "BOOT", None), "at": opened.status_at}, first, second, page, third]
    for earlier, later in zip(order, order[1:]):
        assert _viewer_takes(later, earlier) and not _viewer_takes(earlier, later), (earlier, later)


def test_an_action_made_on_a_study_another_tab_left_is_refused_409_and_changes_nothing(ctx):
    """Two tabs of one session: tab B opens the MR while tab A still shows the CT. A's click (on the CT, at the
    CT's millimetres), its undo or its label choice must never land on the MR (an undo would take back B's edit
    there). The action carries the study it was made on: a mismatch answers 409 with one line naming the study
    now open, and changes nothing (the MR's labels, revision and undo history; the CT's kept labels come back
    when it is opened again). The poll names that study, so the viewer can say which one it follows."""
    import json

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    client = TestClient(FastAPI(routes=routes(ctx)), headers={"Cookie": f"{web_session.COOKIE}={token}"})

    def post(body):
        return client.post("/viewer-api/action", content=json.dumps(body), headers={"Content-Type": "application/json"})

    ct_key, ct_name = s.study_key, s.study_name
    brush = {"kind": "brush", "view": "coronal", "radius": 6, "points": [_mm(s, *LEFT_HORN)], "study": ct_key}
    assert post(brush).status_code == 200  # tab A's work on the CT
    ct_labels = s.labels.copy()
    assert ct_labels.any()
    mr_name = "MR T1 brain, Colin27 (NIfTI, 32 slices)"
    controller.open_sample(ctx, sid, mr_name)  # tab B
    mr_key = s.study_key
    mr_brush = {"kind": "brush", "view": "axial", "radius": 6, "study": mr_key,
                "points": [from_plane(s.volume, "axial", 10, 40.0, 40.0)]}
    assert post(mr_brush).status_code == 200  # B's edit on the MR
    before = (s.labels.copy(), s.revision, len(s.undo_stack), s.active)
    assert client.get("/viewer-api/news").json()["name"] == s.study_name

    for body in ({"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True},
                 {"kind": "box", "view": "coronal", "mm": _mm(s, 90, 74), "mm2": _mm(s, 166, 166)},
                 {**brush, "study": None}, {"kind": "undo"}, {"kind": "redo"}, {"kind": "new_object"},
                 {"kind": "active", "label": 1}):
        r = post({**body, "study": ct_key})
        assert r.status_code == 409, (body["kind"], r.status_code, r.text)
        error = r.json()["error"]
        said = actions.SAID[body["kind"]]
        assert error.startswith(f"this {said} was made on the study shown before {s.study_name} was opened") \
            and "\n" not in error and sid not in error and token not in error, error
        assert s.study_key == mr_key
        np.testing.assert_array_equal(s.labels, before[0])
        assert (s.revision, len(s.undo_stack), s.active) == before[1:], f"A's {body['kind']} changed the MR"
    for kind in ("view", "window"):  # what A showed of a study left meanwhile: nothing to keep, nothing changes
        r = post({"kind": kind, "view": "coronal", "mm": _mm(s, 0, 0), "level": 40, "width": 80, "study": ct_key})
        assert r.status_code == 200 and s.revision == before[1]
    controller.open_sample(ctx, sid, CT_NAME)  # A's CT work is kept in the session
    np.testing.assert_array_equal(s.labels, ct_labels)


def _tab_reloads(news: dict, tab: dict) -> bool:
    """The viewer's rule (``labelsNewer`` in viewer/src/study_loader.ts, for the page's state and the idle tab's poll): the
    server's label map is news to a tab holding revision ``tab["rev"]`` of server process ``tab["boot"]`` when it
    comes from another process or has a higher revision; the tab then fetches the labels again."""
    return news.get("boot") != tab.get("boot") or news["rev"] > tab["rev"]


def test_an_open_tab_reloads_the_labels_a_restarted_server_changed_with_its_clock_stepped_back(tmp_path):
    """The label revision started at the session's load time on the wall clock. The server restarted with its clock
    an hour back (NTP) loaded the session at a revision below the one an open tab held, so an edit made after the
    restart (another tab's brush here; a propagation, a Clear label alike) was no news to that tab: it showed the
    old labels until its own next action. Now the revision counts within one server process and the state, the
    answers, the label file and the poll name that process (``boot``): the tab reloads, and shows the new labels."""
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from app import controller\n"
            "from app.controller import AppContext\n"
            "from app.interaction import ModelRunner, Prefetcher\n"
            "from app.session import SessionStore\n"
            "from app.viewer import actions\n"
            "from app.viewer.geometry import from_plane\n"
            "folder, sid, x, y = sys.argv[1], sys.argv[2] or None, float(sys.argv[3]), float(sys.argv[4])\n"
            "runner = ModelRunner('cpu')\n"
            "ctx = AppContext(SessionStore(Path(folder)), runner, Prefetcher(runner, radius=0))\n"
            "if sid is None:\n"
            f"    sid = controller.start(ctx, None).session_id; controller.open_sample(ctx, sid, {CT_NAME!r})\n"
            "s = ctx.store.get(sid)\n"
            "mm = from_plane(s.volume, 'coronal', 7, x, y)\n"
            "actions.act(ctx, s, {'kind': 'brush', 'view': 'coronal', 'radius': 6, 'points': [mm], 'study': s.study_key})\n"
            "assert ctx.store.flush(sid)\n"
            "state, news = actions.state(s), actions.news(s)\n"
            "print(json.dumps({'sid': sid, 'voxels': int((s.labels > 0).sum()), 'news': news,\n"
            "                  'state': {k: state.get(k) for k in ('study', 'rev', 'boot')}}))\n")
    folder = str(tmp_path / "sessions")
    before = _server_run(code, "now", folder, "", *map(str, LEFT_HORN))  # the tab shows this process's labels
    tab = {**before["state"], "voxels": before["voxels"]}
    # the server restarts with its clock an hour back; another tab of the session brushes the right horn
    after = _server_run(code, "back", folder, before["sid"], *map(str, RIGHT_HORN))
    assert after["state"]["study"] == tab["study"] and after["voxels"] > tab["voxels"] > 0
    for news in (after["state"], after["news"]):  # the page's sync, and the idle tab's poll of /viewer-api/news
        assert _tab_reloads(news, tab), f"the open tab ({tab}) took the restarted server's labels ({news}) as older"
    if _tab_reloads(after["state"], tab):
        tab.update(after["state"], voxels=after["voxels"])  # what the tab fetches (GET /viewer-api/labels/...)
    assert tab["voxels"] == after["voxels"], "the open tab still shows the labels from before the restart"


def test_a_brush_point_far_outside_the_image_is_refused_and_a_stroke_over_the_edge_paints(ctx, embeddings):
    """Brush and eraser points were clamped to the image's edge whatever their distance: a stroke from a buggy or
    hostile client with a point at x = -10000 (or NaN, or 1e6 slices off) painted a line to the edge. Now a point
    more than the brush's radius + :data:`actions.POINT_TOLERANCE_PX` past the edge, off the slices by more than
    the tolerance, or not finite answers 400 with one line naming the point, and nothing changes. A clinician's
    stroke along the border that runs over it by up to the radius + 1 pixel still paints what it covers inside."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    s.view.index["coronal"] = 7
    client = TestClient(FastAPI(routes=routes(ctx)), headers={"Cookie": f"{web_session.COOKIE}={token}"})
    h, w = s.region("coronal", 7).shape
    volume = s.volume

    def stroke(kind, *points, radius=3):
        body = {"kind": kind, "view": "coronal", "radius": radius, "points": list(points)}
        import json

        return client.post("/viewer-api/action", content=json.dumps(body), headers={"Content-Type": "application/json"})

    inside = _mm(s, 100, 100)
    far = [
        (from_plane(volume, "coronal", 7, -10000, 100), "points[1] is outside the image"),
        (from_plane(volume, "coronal", 7, 100, 1e9), "points[1] is outside the image"),
        (from_plane(volume, "coronal", 7, w - 0.5 + 4.6, 100), "points[1] is outside the image"),  # radius 3 + 1.6
        (from_plane(volume, "coronal", 1e6, 100, 100), "points[1] is outside the image"),  # far off the slices
        ([float("nan"), 0.0, 0.0], "points[1]: expected [x, y, z] in millimetres (finite numbers)"),
        ([float("inf"), 0.0, 0.0], "points[1]: expected [x, y, z] in millimetres (finite numbers)"),
        ("here", "points[1]: expected [x, y, z] in millimetres (finite numbers)"),
    ]
    before = (s.labels.copy(), s.revision, len(s.undo_stack))
    for kind in ("brush", "erase"):
        for point, message in far:
            r = stroke(kind, inside, point, inside)
            assert r.status_code == 400, (kind, point, r.text)
            error = r.json()["error"]
            assert error.startswith(message) and "\n" not in error, error
    np.testing.assert_array_equal(s.labels, before[0])
    assert (s.revision, len(s.undo_stack)) == before[1:], "a refused stroke changed the session"

    # along the left border, running 3.9 px past it (radius 3 + 0.9): accepted, and the inside it covers is painted
    r = stroke("brush", _mm(s, 4, 60), from_plane(volume, "coronal", 7, -4.4, 60), from_plane(volume, "coronal", 7, -4.4, 90))
    assert r.status_code == 200 and r.json()["ok"], r.text
    painted = s.region("coronal", 7) == 1
    assert painted[60, 0:8].all() and painted[60:91, 0].all() and not painted[:, 9:].any()
    r = stroke("erase", from_plane(volume, "coronal", 7, -4.4, 75))
    assert r.status_code == 200 and not (s.region("coronal", 7) == 1)[75, 0]


@pytest.mark.parametrize("field, value, message", [
    ("positive", "false", "positive: expected true or false, got 'false'"),
    ("positive", "0", "positive: expected true or false, got '0'"),
    ("positive", None, "positive: expected true or false, got 'None'"),
    ("new_object", "no", "new_object: expected true or false, got 'no'"),
    ("locked", ["1"], "locked: expected a list of label numbers, got '1'"),
])
def test_a_flag_or_lock_sent_as_text_is_refused_not_read_the_other_way(ctx, opened, field, value, message):
    """A scripted client's ``"positive": "false"`` made a positive click (any non-empty text is truthy), and a
    lock ``["1"]`` did not lock label 1 (text is not the number): a silently wrong annotation. Now one line
    naming the field, nothing changes; JSON false, 0 and 1 keep their meaning."""
    s = opened
    body = {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), field: value}
    with pytest.raises(PromptError) as e:
        actions.act(ctx, s, body)
    assert str(e.value) == message
    assert not s.labels.any() and not s.undo_stack and s.prompt is None
    answer = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    assert answer["status"] == "Positive click (1 point): overlay updated."  # it said "(1 points)"
    answer = actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *RIGHT_HORN), "positive": 0})
    assert answer["status"] == "Negative click (2 points): overlay updated." and [p["positive"] for p in answer["object"]["points"]] == [True, False]


def test_a_page_actions_message_is_as_old_as_the_action_not_the_page_built_after_it(ctx, opened):
    """Clear label, then ctrl+Z at once (Chromium): the server cleared, the viewer's undo brought the label back, and
    the status line said "Cleared label 1 (undo brings it back)." over "Undid clear label 1.": the page's message
    was stamped in the news order when the page was built (``app.ui.present``), after the undo had answered, so it
    looked newer and replaced the undo's. An action's message is stamped when it ends, under the session's lock."""
    s = opened
    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    vm = controller.clear(ctx, s.id)  # its answer is on its way to the page
    undone = actions.act(ctx, s, {"kind": "undo"})  # the viewer's ctrl+Z, answered first
    assert undone["status"].startswith("Undid clear") and (s.labels == 1).any()
    page = vm.status_at or messages.news_stamp()  # the stamp app.ui.present gives the page's message
    assert page < undone["at"], "the clear's message looks newer than the undo that came after it"


def test_a_grey_picture_is_shown_as_its_pixels_and_the_boxes_say_so(tmp_path):
    """A grey 8-bit PNG (the model sees its pixels as they are): the state gave no window, so NiiVue stretched the
    data's range (0..200 showed 200 as white) while the Level/Width boxes kept 40/400. Found in session 14's
    walk-through. Now the window is the pixels' own, 0..255, in the viewer and in the boxes."""
    from pathlib import Path

    from PIL import Image

    from app.session import Session

    img = np.zeros((200, 240), np.uint8)
    img[60:140, 80:160] = 200
    Image.fromarray(img).save(tmp_path / "square.png")
    session = Session(id="s" * 32, directory=Path(tmp_path), model="litemedsam")
    session.start_study(read_study(tmp_path / "square.png"), str(tmp_path / "square.png"), "square.png")
    assert actions.window_of(session) == {"level": 127.5, "width": 255.0}
    assert actions.state(session)["window"] == {"level": 127.5, "width": 255.0}


def test_a_model_choice_is_a_viewer_action_that_keeps_the_labels_and_refuses_an_unknown_model(ctx, opened):
    """The Model box's pick is the viewer's own action (kind ``model``), applied in order with the prompts: Gradio's
    event switched the model at once, so clicks still queued began a second object on the new model. An unknown
    name is one line and changes nothing; a switch keeps the labels and the undo history; the model in use picked
    again keeps the object being refined; the box's label for a model names it too; no study is needed."""
    from app.model_catalog import choices
    from app.session import SessionError

    s = opened
    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    labels, undo, prompt = s.labels.copy(), len(s.undo_stack), s.prompt
    assert labels.any() and prompt is not None
    for body, error, message in [
        ({"kind": "model", "model": "no-such-model"}, SessionError, "unknown model 'no-such-model'"),
        ({"kind": "model"}, PromptError, "model: expected a model name, got 'None'"),
        ({"kind": "model", "model": ["litemedsam"]}, PromptError, "model: expected a model name"),
    ]:
        with pytest.raises(error) as e:
            actions.act(ctx, s, body)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
        assert s.model == "litemedsam" and s.prompt is prompt and len(s.undo_stack) == undo
        np.testing.assert_array_equal(s.labels, labels)

    same = actions.act(ctx, s, {"kind": "model", "model": "litemedsam"})
    assert same["status"] == "Model: litemedsam (already in use)." and s.prompt is prompt and same["object"]

    shown = next(label for label, name in choices() if name == "litemedsam-base")  # as the Model box shows it
    answer = actions.act(ctx, s, {"kind": "model", "model": shown})
    assert answer["ok"] and answer["model"] == "litemedsam-base" == s.model and answer["object"] is None
    assert answer["status"] == "Model: litemedsam-base. The next prompt starts a new object."
    assert answer["rev"] == answer["base"] and s.prompt is None and len(s.undo_stack) == undo
    np.testing.assert_array_equal(s.labels, labels)
    assert ctx.store.flush(s.id)
    assert json.loads((ctx.store.root / s.id / "state.json").read_text())["model"] == "litemedsam-base"  # saved

    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *RIGHT_HORN), "positive": True})
    assert len(s.prompt.points) == 1 and (s.labels[labels == 1] == 1).all(), "the first object was kept"

    empty = ctx.store.get(controller.start(ctx, None).session_id)
    answer = actions.act(ctx, empty, {"kind": "model", "model": "litemedsam-base"})
    assert answer["model"] == empty.model == "litemedsam-base"


def test_an_alternative_is_a_viewer_action_for_the_first_click_it_was_shown_for(ctx, opened):
    """The alternatives' pick is the viewer's own action (kind ``alternative``), after the prompts queued before it:
    Gradio's event reached the server before or after them as it happened, and after N and a first click on another
    structure it swapped that structure's mask for an alternative of the first one's list. A pick names the first
    click its list was shown for; one for another click, a refined click or a wrong field is one line and changes
    nothing."""
    s = opened
    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True})
    first = s.prompt
    assert len(first.alternatives) >= 2
    pick = next(i for i in range(len(first.alternatives)) if i != first.chosen) + 1
    labels, undo = s.labels.copy(), len(s.undo_stack)
    for body, message in [({"alternative": pick, "first": _mm(s, *RIGHT_HORN)}, "the alternatives picked were those "
                           "of an earlier click: a prompt made since began another object; pick again from the list "
                           "shown now"),
                          ({"alternative": "two"}, "alternative: expected a number, got 'two'"),
                          ({"alternative": 1.5}, "alternative: expected a whole number, got 1.5"),
                          ({"alternative": pick, "first": "here"}, "first: expected [x, y, z] in mm, got 'here'"),
                          ({"alternative": 99}, f"alternative 99 does not exist; choose 1..{len(first.alternatives)}")]:
        with pytest.raises(PromptError) as e:
            actions.act(ctx, s, {"kind": "alternative", **body})
        assert str(e.value) == message
        assert s.prompt is first and len(s.undo_stack) == undo
        np.testing.assert_array_equal(s.labels, labels)

    answer = actions.act(ctx, s, {"kind": "alternative", "alternative": pick, "first": _mm(s, *LEFT_HORN)})
    assert s.prompt.chosen == pick - 1
    assert answer["status"] == f"Alternative {pick} of the first click: overlay updated."
    axis, index, values = _apply(s, answer)
    np.testing.assert_array_equal(values, np.take(s.labels, index, axis=axis))
    assert actions.act(ctx, s, {"kind": "alternative", "alternative": 1})["ok"]  # a scripted client: the current one

    actions.act(ctx, s, {"kind": "point", "view": "coronal", "mm": _mm(s, 118.0, 90.0), "positive": True})
    refined = s.prompt
    with pytest.raises(PromptError, match="no alternatives to choose from"):
        actions.act(ctx, s, {"kind": "alternative", "alternative": pick, "first": _mm(s, *LEFT_HORN)})
    assert s.prompt is refined


def test_the_pages_html_gets_the_leave_guard_first_and_nothing_else_is_touched():
    """Gradio's ``beforeunload`` listener closed its connection even when the user chose to stay (Gradio then
    reloaded the page 2 s later, asking again); the viewer's bundle comes too late to run before it, so the page's
    HTML gets one script first in its ``<head>``. Only ``GET /`` as HTML; its length follows; the rest unchanged."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from app.viewer.api import LEAVE_GUARD, LeaveGuard

    page = "<!doctype html><html><head><script>gradio()</script></head><body>x</body></html>"
    app = Starlette(routes=[Route("/", lambda r: HTMLResponse(page)), Route("/config", lambda r: JSONResponse({})),
                            Route("/other", lambda r: HTMLResponse(page))], middleware=[Middleware(LeaveGuard)])
    client = TestClient(app)
    got = client.get("/?__theme=dark")
    assert got.text.startswith("<!doctype html><html><head>" + LEAVE_GUARD.decode() + "<script>gradio()")
    assert int(got.headers["content-length"]) == len(got.content)
    assert client.get("/other").text == page
    assert client.get("/config").json() == {}


def test_the_object_being_refined_survives_a_server_restart(ctx, opened, embeddings):
    """Session 24's viewer pass: one click, the server restarted, and the next click on the same structure said
    "Positive click (1 point)": a new object, painted over the first's mask. Now the restarted server refines the
    object the click began: "(2 points)", and the mask is the one an unbroken session gives."""
    s = opened
    first = {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True}
    second = {"kind": "point", "view": "coronal", "mm": _mm(s, LEFT_HORN[0] + 6, LEFT_HORN[1] + 4), "positive": False}
    actions.act(ctx, s, first)
    unbroken = actions.act(ctx, s, second)
    want = np.array(s.region("coronal", 7), copy=True)
    assert "(2 points)" in unbroken["status"]
    actions.act(ctx, s, {"kind": "undo"})
    actions.act(ctx, s, {"kind": "undo"})
    actions.act(ctx, s, first)
    restarted = AppContext(SessionStore(ctx.store.root), ctx.runner, ctx.prefetcher)  # the journal only, or flushed
    again = restarted.store.get(s.id)
    again.runtime["embeddings"] = embeddings
    answer = actions.act(restarted, again, second)
    assert "Negative click (2 points)" in answer["status"], answer["status"]
    np.testing.assert_array_equal(again.region("coronal", 7), want)


def test_a_click_from_a_tab_that_had_not_seen_the_object_starts_a_new_one(ctx, opened):
    """Session 25's pass: two tabs of one session, a click in each at once on two structures. The second tab's click
    (right horn) became the second point of the first tab's object (left horn): "(2 points)" and no mask where it
    clicked. The viewer now sends the points of the object it shows; a click whose tab showed another object than the
    session's starts a new one, said so, and the first object stays. A tab that saw it refines it as before."""
    s = opened
    left = {"kind": "point", "view": "coronal", "mm": _mm(s, *LEFT_HORN), "positive": True, "object_points": 0}
    actions.act(ctx, s, left)
    first = s.region("coronal", 7) == 1
    other_tab = {"kind": "point", "view": "coronal", "mm": _mm(s, *RIGHT_HORN), "positive": True, "object_points": 0}
    answer = actions.act(ctx, s, other_tab)
    assert answer["status"] == ("Positive click (1 point; a new object: the one this tab showed was changed meanwhile, "
                                "in another tab): overlay updated."), answer["status"]
    plane = s.region("coronal", 7)
    assert (plane[first] == 1).all() and _near((plane == 1) & ~first, RIGHT_HORN)
    refine = {"kind": "point", "view": "coronal", "mm": _mm(s, RIGHT_HORN[0] + 4, RIGHT_HORN[1]), "positive": True,
              "object_points": 1}
    assert "Positive click (2 points): overlay updated." == actions.act(ctx, s, refine)["status"]
    with pytest.raises(PromptError, match="object_points: expected a number of points, got '1'"):
        actions.act(ctx, s, {**refine, "object_points": "1"})


BIG = "1" + "0" * 400  # a JSON integer past float's range: Python reads it exactly, float() of it overflows


@pytest.mark.parametrize("body, message", [
    ('{"kind": "active", "label": %s}', "label: expected a number, got 'inf'"),
    ('{"kind": "point", "view": "coronal", "mm": [%s, 0, 0]}', "mm: expected finite numbers"),
    ('{"kind": "point", "view": "coronal", "at": [%s, 1, 1]}', "at: expected finite numbers [plane index, x, y]"),
    ('{"kind": "box", "view": "coronal", "at": [7, 1, 1], "at2": [7, %s, 1]}',
     "at2: expected finite numbers [plane index, x, y]"),
    ('{"kind": "brush", "view": "coronal", "points": [[%s, 0, 0]]}',
     "points[0]: expected [x, y, z] in millimetres (finite numbers), got '[inf, 0, 0]'"),
    ('{"kind": "point", "view": "coronal", "at": [7, 100, 100], "locked": [%s]}',
     "locked: expected a list of label numbers, got 'inf'"),
    ('{"kind": "window", "level": %s, "width": 1}', "level: expected a number, got 'inf'"),
    ('{"kind": "alternative", "alternative": %s}', "alternative: expected a number, got 'inf'"),
])
def test_an_integer_past_floats_range_is_a_400_naming_the_field_not_a_500(ctx, opened, body, message, caplog):
    """A scripted client's 400-digit integer where a number belongs (JSON has no bound; 1e400 was already read as
    Infinity and refused) raised OverflowError in the field's check: 500 "internal error (OverflowError)" and a
    traceback in the server's log (session 26b). Now the field's own one line, 400, nothing changed, nothing logged."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app import web_session

    token = web_session.new_token()
    sid = controller.start(ctx, web_session.sid_of_token(token)).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    s = ctx.store.get(sid)
    client = TestClient(FastAPI(routes=routes(ctx)), headers={"Cookie": f"{web_session.COOKIE}={token}"},
                        raise_server_exceptions=False)
    r = client.post("/viewer-api/action", content=(body % BIG).encode(), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (400, {"ok": False, "error": message})
    assert not s.labels.any() and not s.undo_stack and s.view.window == "default"
    assert "Traceback" not in caplog.text and "viewer request failed" not in caplog.text


# NIfTI datatypes NiiVue decodes (its nvimage switch; anything else is "datatype N not supported" and no image shows)
NIIVUE_DATATYPES = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 2304}


@pytest.mark.parametrize("dtype", ["uint64", "int64", "uint32", "float64"])
def test_the_viewers_copy_of_a_study_is_in_a_datatype_niivue_reads(tmp_path, dtype):
    """Session 30: a uint64 NIfTI (numpy's default for unsigned counts, saved with nibabel's dtype argument) opened,
    medseg info and the model took it, but the viewer's copy was written as uint64, which NiiVue refuses (`datatype
    1280 not supported`): the page showed no image for a study it called open. Its values reach the viewer as float32,
    as int64 and float64 ones did."""
    from pathlib import Path

    import nibabel as nib

    from app.session import Session

    values = np.arange(6 * 7 * 8).reshape(8, 7, 6).astype(dtype)
    nib.save(nib.Nifti1Image(values, np.diag([0.8, 0.9, 2.0, 1.0]), dtype=np.dtype(dtype)), tmp_path / "big.nii.gz")
    session = Session(id="s" * 32, directory=Path(tmp_path), model="litemedsam")
    session.start_study(read_study(tmp_path / "big.nii.gz"), str(tmp_path / "big.nii.gz"), "big.nii.gz")
    shown = nib.load(actions.volume_file(session))
    assert int(shown.header["datatype"]) in NIIVUE_DATATYPES
    np.testing.assert_array_equal(np.asanyarray(shown.dataobj), values)
