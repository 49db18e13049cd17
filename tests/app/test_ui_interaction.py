"""Prompting through the UI's actions with the real LiteMedSAM on the bundled CT: boxes, clicks,
refinement with fed-back logits, first-click alternatives, labels, measurements, export, prefetch,
propagation and restore."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from app import controller, interaction
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher, merged_plane
from app.render import Plane
from app.session import SessionError, SessionStore
from data.windowing import default_window, slice_to_rgb
from models import point_prompts
from models.prompts import PromptError, Prompts
from tests.conftest import DATA, SAMPLES, memoised_embeddings

CT_NAME = "CT head (DICOM series, 12 slices)"
# Display pixels (512 x 512 for this 256 x 256 coronal slice): a box around the left lateral
# ventricle region and a point inside the brain.
BOX = ((180, 150), (330, 330))
PLANE_BOX = (89.75, 74.75, 164.75, 164.75)  # BOX on the 256 x 256 plane grid
INSIDE = (256, 240)


def _box_area(box) -> float:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)


class SpyRunner(ModelRunner):
    """The real runner, recording every Prompts the model receives."""

    def __init__(self):
        super().__init__("cpu")
        self.calls = []

    def segmenter(self, name):
        real = super().segmenter(name)
        spy = self

        class Recorder:
            def __getattr__(self, attr):
                return getattr(real, attr)

            def predict(self, embedding, prompts, **kw):
                spy.calls.append(prompts)
                return real.predict(embedding, prompts, **kw)

        return Recorder()


@pytest.fixture(scope="module", autouse=True)
def encodes(litemedsam):
    """The CT's coronal slice 6 is the slice three sessions here open on (the bundled series, its 3-slice
    NIfTI cut, a re-open) and the box test's reference: encoded once, not four times. An image that differs
    by one byte is encoded afresh (``tests/conftest.py: memoised_embeddings``)."""
    with memoised_embeddings(litemedsam) as counts:
        yield counts


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, litemedsam):
    runner = SpyRunner()
    return AppContext(SessionStore(tmp_path_factory.mktemp("sessions")), runner, Prefetcher(runner, radius=0))


@pytest.fixture(scope="module")
def opened(ctx):
    """A session with the CT open and its shown slice encoded (the one embedding most tests share)."""
    sid = controller.start(ctx, None).session_id
    vm = controller.open_sample(ctx, sid, CT_NAME)
    assert (vm.view, vm.slice_index, vm.image.shape) == ("coronal", 6, (512, 512, 3))
    controller.warm(ctx, sid)
    return sid


def _draw_box(ctx, sid):
    controller.set_display(ctx, sid, "default", 40, 400, 0.45, "box")
    first = controller.click(ctx, sid, *BOX[0])
    assert "opposite corner" in first.status
    return controller.click(ctx, sid, *BOX[1])


def test_box_segments_inside_the_box_and_undo_redo_round_trip(ctx, opened, litemedsam, encodes):
    session = ctx.store.get(opened)
    before = session.labels.copy()
    vm = _draw_box(ctx, opened)
    plane = session.region("coronal", 6)
    # the reference: the model called directly on the stored slice 6 (the coronal plane of this LIP
    # series), windowed independently of the UI, with the box's plane corners
    volume = session.volume
    image = slice_to_rgb(volume, 6, default_window(volume))
    misses = encodes.misses
    reference = litemedsam.predict(litemedsam.embed(image), Prompts(box=PLANE_BOX)).best_mask
    assert encodes.misses == misses  # the UI's model input was this independently windowed slice, byte for byte
    assert 500 < int(reference.sum()) < 0.9 * _box_area(PLANE_BOX)  # a mask that fills the box is not this
    np.testing.assert_array_equal(plane == 1, reference)
    assert vm.measurements[0][2] == int((plane == 1).sum())
    after = session.labels.copy()
    controller.undo(ctx, opened)
    np.testing.assert_array_equal(session.labels, before)
    controller.redo(ctx, opened)
    np.testing.assert_array_equal(session.labels, after)


def test_clicks_accumulate_points_and_feed_back_the_previous_logits(ctx, opened):
    _draw_box(ctx, opened)
    session = ctx.store.get(opened)
    box_logits = session.prompt.logits.copy()
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point −")
    ctx.runner.calls.clear()
    controller.click(ctx, opened, 300, 300)
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point +")
    controller.click(ctx, opened, *INSIDE)
    first, second = ctx.runner.calls
    np.testing.assert_array_equal(first.mask_logits, box_logits)
    assert first.box is not None and first.point_labels.tolist() == [0]
    assert second.point_labels.tolist() == [0, 1] and len(second.points) == 2
    np.testing.assert_array_equal(second.mask_logits, session.undo_stack[-2].prompt_after.logits)
    assert len(session.history[1]) >= 3 and session.history[1][-1]["kind"] == "click+"


def test_a_click_after_undo_never_resends_the_undone_point(ctx, opened):
    """Box, negative click, Undo, positive click: the model gets the box and [1], not [0, 1]."""
    _draw_box(ctx, opened)
    session = ctx.store.get(opened)
    after_box = session.labels.copy()
    box_logits = session.prompt.logits.copy()
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point −")
    controller.click(ctx, opened, 300, 300)
    assert controller.undo(ctx, opened).status == "Undid negative click on coronal slice 6."
    np.testing.assert_array_equal(session.labels, after_box)
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point +")
    ctx.runner.calls.clear()
    controller.click(ctx, opened, *INSIDE)
    (call,) = ctx.runner.calls
    assert call.point_labels.tolist() == [1] and len(call.points) == 1
    assert call.box is not None
    np.testing.assert_array_equal(call.mask_logits, box_logits)  # the box's logits, not the undone click's
    assert session.prompt.point_labels == (1,)
    controller.undo(ctx, opened)  # and back to the box once more: still no negative point
    assert session.prompt.point_labels == () and session.prompt.box is not None


def test_lone_first_click_is_the_models_answer_to_a_point_and_choosing_an_alternative_swaps_the_mask(
    ctx, opened, litemedsam, monkeypatch
):
    calls = []
    real = point_prompts.decode_points_many  # every points-alone answer goes through it (batched or not)
    monkeypatch.setattr(point_prompts, "decode_points_many", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    controller.new_object(ctx, opened)
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point +")
    vm = controller.click(ctx, opened, *INSIDE)
    session = ctx.store.get(opened)
    # one answer to a lone point, the one medseg eval's points:1 gets (models.point_prompts), with the plane's spacing
    (prompts,) = calls
    assert prompts.box is None and prompts.point_labels.tolist() == [1]
    assert prompts.pixel_spacing == Plane.of(session.volume, "coronal").spacing(session.volume)
    expected = litemedsam.predict(ctx.runner.embedding(session, "coronal", 6), prompts, multimask_output=True)
    alternatives = session.prompt.alternatives
    assert len(vm.alternatives) == len(alternatives) == len(expected.masks) == len(point_prompts.HALF_SIDES_MM)
    for (mask, _, score, box), m, s, b in zip(alternatives, expected.masks, expected.scores, expected.boxes):
        np.testing.assert_array_equal(mask, m)
        assert score == pytest.approx(float(s)) and box == tuple(float(v) for v in b)
    assert vm.chosen == vm.alternatives[expected.best_index]
    other = next(i for i in range(len(alternatives)) if vm.alternatives[i] != vm.chosen)
    interaction.choose_alternative(ctx.store.get(opened), other)  # the viewer's ``alternative`` action
    expected = session.prompt.alternatives[other][0]
    plane = session.region("coronal", 6)
    base = session.prompt.base  # the earlier objects of label 1 stay; the candidate fills only empty pixels
    np.testing.assert_array_equal(plane == 1, (base == 1) | (expected & (base == 0)))


def test_a_negative_first_click_is_a_user_error(ctx, opened):
    controller.new_object(ctx, opened)
    controller.set_display(ctx, opened, "default", 40, 400, 0.45, "point −")
    with pytest.raises(PromptError, match="positive click"):
        controller.click(ctx, opened, *INSIDE)


@pytest.mark.parametrize(
    "base, mask, label, expected",
    [
        ([[0, 0], [0, 0]], [[1, 1], [0, 0]], 1, [[1, 1], [0, 0]]),
        ([[2, 0], [1, 1]], [[1, 1], [0, 0]], 1, [[2, 1], [1, 1]]),  # label 2 and the first object are kept
        ([[2, 2], [0, 0]], [[1, 1], [1, 1]], 2, [[2, 2], [2, 2]]),
    ],
)
def test_merged_plane_never_overwrites_other_labels(base, mask, label, expected):
    out = merged_plane(np.array(base, np.uint16), np.array(mask, bool), label)
    np.testing.assert_array_equal(out, expected)


def test_paint_labels_and_measurements_in_mm(ctx, opened):
    controller.add_label(ctx, opened, "painted")
    session = ctx.store.get(opened)
    mask = np.zeros((256, 256), bool)
    mask[10:20, 10:30] = True  # 200 px on the plane grid
    vm = controller.mask(ctx, opened, mask, use_model=False)
    row = next(r for r in vm.measurements if r[1] == "painted")
    sx, sy, sz = session.volume.spacing  # coronal plane: rows along j, columns along i
    assert row[2] == 200
    assert row[3] == pytest.approx(200 * sy * sx, abs=0.01)
    assert row[4] == pytest.approx(200 * sx * sy * sz / 1000, abs=1e-4)
    controller.edit_label(ctx, opened, "painted roi", "#00ff80")
    assert session.label(session.active).colour == (0, 255, 128)


def test_a_rename_goes_to_the_label_the_form_showed_not_the_active_one(ctx, opened):
    """Name + Enter typed right after a legend pick reached the server after the pick: the active label (the one
    picked) was renamed, with the colour of the label the form showed. The rename names its label now; a label
    that no longer exists is refused in one line and nothing changes."""
    session = ctx.store.get(opened)
    shown = controller.add_label(ctx, opened, "").active  # the form shows the label added
    controller.select_label(ctx, opened, 1)  # the pick, applied before the rename typed for it
    before = {d.value: (d.name, d.colour) for d in session.label_defs}
    vm = controller.edit_label(ctx, opened, "kidney", "#3cb44b", shown)
    assert {d.value: (d.name, d.colour) for d in session.label_defs} == {**before, shown: ("kidney", (60, 180, 75))}
    assert session.active == 1 and vm.status == f"Label {shown}: kidney, colour #3cb44b."
    with pytest.raises(SessionError, match=r"^label 99 no longer exists; nothing renamed"):
        controller.edit_label(ctx, opened, "liver", "#ff0000", "99")
    assert {d.value: d.name for d in session.label_defs} == {**{v: n for v, (n, _) in before.items()}, shown: "kidney"}


@pytest.mark.parametrize("typed", ["rgb(300, 0, 0)", "rgb(-5, 0, 0)", "rgb(1e400, 0, 0)", "rgb(1, 2)"])
def test_a_colour_out_of_0_255_is_refused_and_the_label_keeps_its_colour(ctx, opened, typed):
    """rgb(300, 0, 0) was kept as (300, 0, 0): the viewer got "#12c0000" and the DICOM-SEG export then failed
    ("colour of label 1 must be 3 values in 0..255"); rgb(1e400, 0, 0) raised OverflowError, an internal error."""
    session = ctx.store.get(opened)
    before = session.label(session.active).colour
    with pytest.raises(ValueError, match=r"is not '#rrggbb' or rgb\(r, g, b\) with r, g, b in 0\.\.255"):
        controller.edit_label(ctx, opened, "roi", typed)
    assert session.label(session.active).colour == before


@pytest.mark.parametrize("call, message", [
    (("set_display", "custom", float("nan"), 400.0, 0.5, "point +"), "window level must be a finite number, got 'nan'"),
    (("set_display", "custom", 40.0, float("inf"), 0.5, "point +"), "window width must be a finite number, got 'inf'"),
    (("set_display", "default", 40.0, 400.0, float("nan"), "point +"), "opacity must be a finite number, got 'nan'"),
    (("set_display", "hounsfield", 40.0, 400.0, 0.5, "point +"), "unknown window 'hounsfield'; expected one of default"),
    (("set_slice", None), "the slice must be a finite number, got 'None'"),
    (("select_label", None), "the label must be a finite number, got 'None'"),
])
def test_display_values_that_are_no_finite_number_are_refused_and_the_viewer_keeps_working(ctx, opened, call, message):
    """A NaN level, an infinite width, a NaN opacity or an unknown window name (a Gradio API client, the number
    box) were saved with the session: from then on the viewer's /state answered "Out of range float values are
    not JSON compliant" on every poll, for good. set_slice(None) / select_label(None) were internal errors."""
    from starlette.responses import JSONResponse

    from app.viewer import actions

    name, *args = call
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(controller, name)(ctx, opened, *args)
    session = ctx.store.get(opened)
    assert JSONResponse(actions.state(session)).status_code == 200


def test_exports_equal_the_server_labels(ctx, opened):
    session = ctx.store.get(opened)
    path, _ = controller.export(ctx, opened, "nifti")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), session.labels)
    assert image.GetSpacing() == pytest.approx(session.volume.spacing)
    assert path.parent == session.directory / "exports"
    seg_path, _ = controller.export(ctx, opened, "dicom-seg")
    from data.dicom_seg import read_dicom_seg

    seg = read_dicom_seg(seg_path, reference=session.volume)
    present = np.unique(session.labels[session.labels > 0])
    assert seg.labels.array.shape == session.labels.shape
    for value in present:  # segment numbers may be renumbered; the voxels must agree
        name = session.label(int(value)).name
        number = next(n for n, nm in seg.names.items() if nm == name)
        np.testing.assert_array_equal(seg.labels.array == number, session.labels == value)


def test_exporting_a_study_without_labels_says_the_file_is_empty(ctx):
    """Export labels on a study where nothing is labelled (not yet, or all undone, or the work was on another
    study): it said "Exported ..." as for real work; now it says the file holds no label."""
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    path, vm = controller.export(ctx, sid, "nifti")
    assert path.is_file() and "no label has any voxel" in vm.status.lower() and "empty" in vm.status
    with pytest.raises(ValueError, match="nothing is segmented"):  # a DICOM-SEG is refused with one message
        controller.export(ctx, sid, "dicom-seg")


def test_add_label_with_the_name_box_untouched_gives_a_new_name(ctx):
    """Add label takes the Name box, which shows the active label's name: pressed without typing, it made a
    second "label 1" (two segments of one name in the table, the legend and a DICOM-SEG)."""
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    vm = controller.add_label(ctx, sid, "label 1")
    assert [d.name for d in ctx.store.get(sid).label_defs] == ["label 1", "label 2"] and "Added label 2" in vm.status
    controller.add_label(ctx, sid, "kidney")
    assert [d.name for d in ctx.store.get(sid).label_defs] == ["label 1", "label 2", "kidney"]


def test_restore_in_a_new_store_keeps_labels_and_view(ctx, opened):
    session = ctx.store.get(opened)
    again = SessionStore(ctx.store.root)
    restored_ctx = AppContext(again, ctx.runner, ctx.prefetcher)
    vm = controller.start(restored_ctx, opened)
    assert vm.session_id == opened and vm.status == "Session restored."
    np.testing.assert_array_equal(again.get(opened).labels, session.labels)
    assert (vm.view, vm.slice_index) == ("coronal", 6)


def test_prefetcher_encodes_the_neighbour_while_idle(ctx, opened):
    session = ctx.store.get(opened)
    prefetcher = Prefetcher(ctx.runner, radius=1)
    controller.set_slice(ctx, opened, 0)
    prefetcher.request(session, "coronal", 0)  # slice 0 has one neighbour: 1
    deadline = time.monotonic() + 600  # bounded patience for one encode (120 s until session 25)
    while not prefetcher.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    prefetcher.stop()
    assert (session.model, "coronal", 1) in interaction.embeddings_of(session)
    controller.set_slice(ctx, opened, 6)


def test_propagation_carries_the_label_and_undoes_as_one_edit(ctx, tmp_path, litemedsam):
    from data.readers import read_study

    ct = read_study(SAMPLES / "ct_head_0051_series")
    small = tmp_path / "three.nii.gz"
    sitk.WriteImage(replace(ct, array=ct.array[5:8]).to_sitk(), str(small))  # 3 slices keep this test cheap
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(small)])
    _draw_box(ctx, sid)
    session = ctx.store.get(sid)
    assert session.view.index["coronal"] == 1 and (session.labels[1] == 1).sum() > 500
    before = session.labels.copy()
    controller.propagate(ctx, sid)
    controller.propagation_job(ctx, sid).wait()
    assert "Propagated" in controller.propagation_status(ctx, sid).status
    assert (session.labels[0] == 1).sum() > 100 and (session.labels[2] == 1).sum() > 100
    controller.undo(ctx, sid)
    np.testing.assert_array_equal(session.labels, before)


def test_brush_canvas_layer_becomes_the_mask_of_the_plane(ctx, opened):
    """The ImageEditor's painted layer (RGBA at display size) is the mask, mapped to the plane grid."""
    from app.ui import _mask_action

    controller.set_slice(ctx, opened, 6)
    controller.add_label(ctx, opened, "brushed")
    session = ctx.store.get(opened)
    layer = np.zeros((512, 512, 4), np.uint8)  # display size: 2 display px per plane px
    layer[100:140, 200:260, 3] = 255
    _mask_action(ctx, opened, {"background": None, "layers": [layer], "composite": None}, None, use_model=False)
    plane = session.region("coronal", 6)
    expected = np.zeros((256, 256), bool)
    expected[50:70, 100:130] = True  # display rows 100..139, columns 200..259 halved
    np.testing.assert_array_equal(plane == session.active, expected)


def test_a_mask_file_on_a_transparent_layer_is_its_painted_pixels_not_the_whole_plane(ctx, opened, tmp_path):
    """A mask exported from a paint program: a white square on a layer whose hidden pixels are white too, fully
    transparent. Read as grey, the whole plane became the mask (the session-11 review found it); only the opaque
    pixels are the annotation, whether the transparency is an alpha channel or a palette colour."""
    from PIL import Image

    from app.ui import _mask_action

    controller.set_slice(ctx, opened, 6)
    session = ctx.store.get(opened)
    for name, square in (("alpha", (slice(180, 200), slice(20, 50))), ("palette", (slice(220, 240), slice(200, 230)))):
        controller.add_label(ctx, opened, name)
        painted = np.zeros((256, 256), bool)
        painted[square] = True
        free = session.region("coronal", 6) == 0  # the module's other tests label pixels too; a mask keeps them
        assert (painted & free).sum() > 300
        if name == "alpha":
            rgba = np.full((256, 256, 4), 255, np.uint8)  # white everywhere, opaque only on the square
            rgba[..., 3] = np.where(painted, 255, 0)
            Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
        else:  # grey 128 is the transparent palette entry
            Image.fromarray(np.where(painted, 255, 128).astype(np.uint8)).convert("P").save(
                tmp_path / "mask.png", transparency=128)
        _mask_action(ctx, opened, None, str(tmp_path / "mask.png"), use_model=False)
        np.testing.assert_array_equal(session.region("coronal", 6) == session.active, painted & free)


def test_nothing_painted_is_a_user_error(ctx, opened):
    from app.session import SessionError
    from app.ui import _mask_action

    with pytest.raises(SessionError, match="nothing painted"):
        _mask_action(ctx, opened, {"background": None, "layers": [], "composite": None}, None, use_model=True)


def test_a_mask_file_is_a_png_or_jpeg_by_its_bytes_and_bombs_are_user_errors(ctx, opened, tmp_path):
    """The mask-file upload went to PIL's Image.open with every format: PostScript named mask.png ran through
    Ghostscript (and became a mask), and a 20000 x 20000 PNG raised DecompressionBombError, which the page
    showed as "internal error". Both are now one user error, and the labels stay as they were."""
    import struct
    import zlib

    from app.ui import _mask_action
    from data.readers import StudyError

    ps = tmp_path / "mask.png"
    ps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 256 256\n"
                   b"newpath 0 0 moveto 256 0 lineto 256 256 lineto fill\n%%EOF\n")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 20001)) + chunk(b"IEND", b""))
    session = ctx.store.get(opened)
    before = session.labels.copy()
    with pytest.raises(StudyError, match=r"mask\.png: not a readable PNG/JPEG image \(its bytes are neither PNG nor JPEG\)$"):
        _mask_action(ctx, opened, None, str(ps), use_model=False)
    with pytest.raises(StudyError, match=r"bomb\.png: image too large to open safely"):
        _mask_action(ctx, opened, None, str(bomb), use_model=False)
    np.testing.assert_array_equal(session.labels, before)


def test_a_mask_file_of_another_size_is_refused_from_its_header_before_decoding(ctx, opened, tmp_path):
    """A mask file is read in the server's process (not the isolated reader): a 480 KB PNG of 13000 x 13000 black
    pixels was decoded whole first (2.3 GB peak, 7 s of CPU here) and only then refused as not the plane's size
    (session 18). Its size is now checked from the header. This one's IDAT holds one row: decoded, it would be
    refused as a damaged PNG instead."""
    import struct
    import zlib

    from app.ui import _mask_action

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"\0" * 39001)) + chunk(b"IEND", b""))
    session = ctx.store.get(opened)
    before = session.labels.copy()
    with pytest.raises(PromptError, match=r"^the mask big\.png is 13000x13000 pixels; expected the plane \(256x256\) "
                                          r"or the display \(512x512\)$"):
        _mask_action(ctx, opened, None, str(big), use_model=False)
    np.testing.assert_array_equal(session.labels, before)


def test_ready_is_news_only_after_an_open(ctx, tmp_path):
    """The page runs warm() after every upload, failed ones too: under load its "Ready" replaced a
    failed upload's message before the viewer showed it (the e2e test saw "Ready", never "notes.txt").
    And "Ready" carries the news it follows: the page polls the status, and "Opened ..." lasted only
    one encode, so a re-open of the same sample showed "Ready" without "Opened"."""
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    ready = controller.warm(ctx, sid).status
    assert ready.startswith(f"Opened {CT_NAME}.") and "Ready" in ready
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(Exception, match="notes.txt"):
        controller.open_upload(ctx, sid, [str(bad)])
    assert controller.warm(ctx, sid).status is None  # the page keeps the upload's error
    with pytest.raises(ValueError, match="window width must be positive"):
        controller.set_display(ctx, sid, "custom", 40, 0, 0.45, "box")
    assert controller.warm(ctx, sid).status is None


def test_a_study_zip_with_its_scout_opens_in_the_ui_and_says_what_it_left_out(ctx, tmp_path):
    """A PACS export of a CT study (scout + axial series) was refused in the UI with "pick one with --series UID",
    which a browser user cannot pass; now it opens the axial series, and the page says the scout was left out. The
    readers' notes (a scout left out, NaN voxels replaced, an EXIF turn) reached no UI user before: logged only."""
    import zipfile

    import pydicom

    ct = DATA / "dicom" / "ct_head_0051_series_k050-061"
    scout = pydicom.dcmread(sorted(ct.iterdir())[0])
    scout.SeriesInstanceUID = scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4001"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(tmp_path / "scout.dcm")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(ct.iterdir()):
            zf.write(f, f"CT/{f.name}")
        zf.write(tmp_path / "scout.dcm", "CT/scout.dcm")
    sid = controller.start(ctx, None).session_id
    status = controller.open_upload(ctx, sid, [str(archive)]).status
    assert status.startswith("Opened study.zip. Note: opened series ") and "left out 1 localizer series" in status
    assert "/" not in status.split("Note:")[1]  # no server path
    # nor a command-line flag a browser user cannot pass: `(1.2...; --series UID opens one)` before (session 25)
    assert status.split("Note:")[1].startswith(" opened series 1.2.826.0.1.3680043.8.498.") and "--series" not in status
    assert ctx.store.get(sid).volume.array.shape == (12, 256, 256)


def _two_series_zip(tmp_path):
    """The bundled CT series and a second volume of it (another SeriesInstanceUID, description 'bone') in one zip."""
    import zipfile

    import pydicom

    ct = DATA / "dicom" / "ct_head_0051_series_k050-061"
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, f in enumerate(sorted(ct.iterdir())):
            zf.write(f, f"CT/soft/{f.name}")
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SeriesDescription = "1.2.826.0.1.3680043.8.498.5001", "bone"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.5001.{n + 1}"
            ds.save_as(tmp_path / f"b{n}.dcm")
            zf.write(tmp_path / f"b{n}.dcm", f"CT/bone/b{n}.dcm")
    return archive


def test_a_series_description_of_any_length_is_cut_in_the_picker(ctx, tmp_path):
    """A hostile header's SeriesDescription of 20,000 characters crossed the isolated reader's socket and filled the
    picker's label whole; the offered list cuts it to DICOM's 64 characters (and at most 500 series are offered)."""
    import zipfile

    import pydicom

    ct = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())
    archive = tmp_path / "long.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, f in enumerate(ct):
            zf.write(f, f"CT/a/{f.name}")
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SeriesDescription = "1.2.826.0.1.3680043.8.498.5002", "x" * 20_000
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.5002.{n + 1}"
            ds.save_as(tmp_path / f"b{n}.dcm")
            zf.write(tmp_path / f"b{n}.dcm", f"CT/b/b{n}.dcm")
    sid = controller.start(ctx, None).session_id
    vm = controller.open_upload(ctx, sid, [str(archive)])
    assert vm.status == "long.zip holds 2 series: pick the one to open in the list under Upload."
    from app import series_picker

    labels = [label for label, _ in series_picker.pending_choices(ctx, sid)]
    assert max(len(label) for label in labels) < 120 and any("x" * 64 in label for label in labels)


def test_a_series_with_a_missing_slice_opens_in_the_ui_only_when_asked_at_the_mean_spacing(ctx, tmp_path):
    """A study export that lost one file (a slice missing) was refused with "... or pass --allow-uneven", a flag a
    browser user cannot pass. The refusal now says so in the UI's words and offers the mean spacing under Upload;
    the pick opens it with the reader's note, and a restart of the session from disk opens it the same way."""
    from app import series_picker

    ct = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())
    sid = controller.start(ctx, None).session_id
    vm = controller.open_upload(ctx, sid, [str(_gap_zip(tmp_path))])
    assert vm.status.startswith("Not opened: 1 slice(s) missing between ") and vm.status.endswith(
        "add the missing file(s), open the complete series, or open it at the mean slice spacing under Upload.")
    assert ctx.store.get(sid).volume is None
    ((label, value),) = series_picker.pending_choices(ctx, sid)
    assert label == "Open at the mean slice spacing (slice positions approximate)"
    assert series_picker.label_of([(label, value)]).startswith("The slices are unevenly spaced")
    vm = controller.open_pending_series(ctx, sid, value)
    assert vm.status.startswith("Opened gap.zip. Note: you picked the mean slice spacing under Upload: 1 uneven "
                                "step(s) (1 slice(s) missing")  # was "Note: --allow-uneven: 1 ...", the CLI's flag
    session = ctx.store.get(sid)
    assert session.volume.array.shape[0] == 11 and session.allow_uneven
    assert session.volume.spacing[2] == pytest.approx(11 * ct_spacing(ct) / 10)
    ctx.store.flush(sid)
    again = SessionStore(ctx.store.root)
    restored = controller.start(AppContext(again, ctx.runner, ctx.prefetcher), sid)
    assert restored.status == "Session restored."
    assert again.get(sid).volume.spacing == session.volume.spacing


def test_a_pacs_series_with_a_missing_slice_is_offered_at_the_mean_spacing_not_told_a_cli_flag(ctx, tmp_path,
                                                                                                monkeypatch):
    """The PACS panel's Open of a series less one slice said `... add the missing file(s), open the complete series,
    or pass --allow-uneven` (with the session's folder), a flag the browser user cannot pass (session 24's pass). It
    is now refused and offered at the mean spacing under Upload, as an upload is, and the pick opens it."""
    import data.dicomweb
    from app import pacs, series_picker

    ct = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())

    def fetch(target, folder, **_):  # what the PACS sends: the bundled CT less its sixth slice
        folder.mkdir(parents=True)
        for f in ct[:5] + ct[6:]:
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    monkeypatch.setattr(data.dicomweb, "fetch_series", fetch)
    sid = controller.start(ctx, None).session_id
    vm = pacs.open_series(ctx, sid, "http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4")
    assert vm.status.startswith("Not opened: 1 slice(s) missing between ") and vm.status.endswith(
        "add the missing file(s), open the complete series, or open it at the mean slice spacing under Upload.")
    assert "--allow-uneven" not in vm.status and ctx.store.get(sid).volume is None
    ((_, value),) = series_picker.pending_choices(ctx, sid)
    vm = controller.open_pending_series(ctx, sid, value)
    assert vm.status.startswith("Opened PACS series") and ctx.store.get(sid).volume.array.shape[0] == 11


def _gap_zip(tmp_path):
    """The bundled CT series less its sixth slice (a study export that lost one file), in one zip."""
    import zipfile

    ct = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").iterdir())
    archive = tmp_path / "gap.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in ct[:5] + ct[6:]:
            zf.write(f, f"CT/{f.name}")
    return archive


def ct_spacing(files) -> float:
    """The slice step of the bundled CT series (mm), from its first two positions."""
    import pydicom

    a, b = (np.array(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float) for f in files[:2])
    return float(np.linalg.norm(b - a))


def test_the_series_of_an_upload_are_listed_by_the_isolated_reader_not_in_the_server(ctx, tmp_path, monkeypatch):
    """The picker's list came from the upload's headers parsed in the server process (and again in the isolated
    reader): a header that hangs or crashes the parser would have taken the server with it. The isolated reader's
    refusal now carries the list."""
    import data.readers

    def parsed_in_the_server(*args, **kwargs):
        raise AssertionError("the upload's headers were parsed in the server process")

    monkeypatch.setattr(data.readers, "list_series", parsed_in_the_server)
    sid = controller.start(ctx, None).session_id
    vm = controller.open_upload(ctx, sid, [str(_two_series_zip(tmp_path))])
    assert vm.status == "two.zip holds 2 series: pick the one to open in the list under Upload."
    from app import series_picker

    assert {uid for _, uid in series_picker.pending_choices(ctx, sid)} >= {"1.2.826.0.1.3680043.8.498.5001"}


def test_an_upload_of_two_series_lets_the_ui_user_pick_one_and_keeps_the_open_study(ctx, tmp_path):
    """Two volumes in one upload were refused with "pick one with --series UID", which a browser user cannot pass.
    Now the upload waits for a pick (the open study and its labels stay), and the picked series opens, also after
    a restart of the session from disk."""
    from app import series_picker

    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, next(iter(controller.sample_studies())))
    before = ctx.store.get(sid).study_key
    vm = controller.open_upload(ctx, sid, [str(_two_series_zip(tmp_path))])
    assert vm.status == "two.zip holds 2 series: pick the one to open in the list under Upload."
    assert ctx.store.get(sid).study_key == before  # nothing opened, nothing lost
    choices = series_picker.pending_choices(ctx, sid)
    assert sorted(label.split(" · ")[0] for label, _ in choices) == [
        "CT bone (12 images)", "CT coronal CT, header written by build_eval_data.py (12 images)"]
    with pytest.raises(SessionError, match="no longer offered"):
        controller.open_pending_series(ctx, sid, "9.9")
    vm = controller.open_pending_series(ctx, sid, "1.2.826.0.1.3680043.8.498.5001")
    assert vm.status.startswith("Opened two.zip, series …")
    session = ctx.store.get(sid)
    assert session.series_uid == "1.2.826.0.1.3680043.8.498.5001" and session.volume.array.shape == (12, 256, 256)
    assert series_picker.pending_choices(ctx, sid) == []
    uploads = [p for p in (session.directory / "uploads").iterdir() if p.is_dir()]
    assert len(uploads) == 1  # the picked upload only


def test_a_jpeg_mask_uploaded_in_the_ui_cut_or_whole_is_refused_and_the_labels_stay(ctx, opened, tmp_path):
    """A mask JPEG cut off and closed with an end marker decodes with its missing rows grey; only libjpeg's stderr
    says so, and the page's events run in server threads, which cannot catch it: a cut mask once painted its grey
    rows into the label. A whole JPEG mask painted the faint pixels JPEG's compression leaves around every edge
    (session 20). Both are refused from the header now, before any decoding. (Run in a thread, as Gradio runs the
    page's events.)"""
    import io
    import threading

    from PIL import Image

    from app.ui import _mask_action
    from data.readers import StudyError

    session = ctx.store.get(opened)
    plane_hw, _ = controller._mask_sizes(session)
    mask = np.zeros(plane_hw, np.uint8)
    mask[40:200, 60:180] = 255
    out = io.BytesIO()
    Image.fromarray(mask).save(out, "JPEG", quality=90)
    whole = out.getvalue()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3] + b"\xff\xd9")
    (tmp_path / "whole.jpg").write_bytes(whole)
    before = session.labels.copy()
    for name in ("cut.jpg", "whole.jpg"):
        raised: list[BaseException] = []

        def upload():
            try:
                _mask_action(ctx, opened, None, str(tmp_path / name), use_model=False)
            except BaseException as e:  # noqa: BLE001 - handed to the test's thread
                raised.append(e)

        worker = threading.Thread(target=upload)
        worker.start()
        worker.join(120)
        assert raised and isinstance(raised[0], StudyError), raised
        assert f"{name}: a JPEG mask; JPEG's lossy compression leaves faint pixels" in str(raised[0])
        np.testing.assert_array_equal(session.labels, before)
    Image.fromarray(mask).save(tmp_path / "mask.png")  # the same mask in PNG is applied, in a thread as well
    worker = threading.Thread(target=lambda: _mask_action(ctx, opened, None, str(tmp_path / "mask.png"),
                                                          use_model=False))
    worker.start()
    worker.join(120)
    assert (session.labels != before).any()
