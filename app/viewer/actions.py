"""The viewer's actions on a session, free of HTTP: prompts given in world millimetres, brush
strokes, undo/redo, the shown plane, the display window; each answers with what the browser
must change (a label plane, or "reload the labels") and the current object's markers.

Prompts reuse ``app.interaction`` (the same protocol as the CLI and the unit tests); every
edit is saved before the answer goes out (``SessionStore.save``; a prompt's or a brush's plane through
``SessionStore.save_edit``'s journal, the full save following in the background).
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from app import controller, interaction, messages, trace
from app.controller import AppContext
from app.render import Plane, acquisition_view, display_window
from app.session import ANCHORS, Edit, Session, SessionError
from app.viewer.geometry import clip_to_plane, from_plane, outside_by, past_edges, plane_coords
from data.untrusted import visible_direction_controls
from data.writers import atomic_output
from models.prompts import PromptError

KINDS = ("point", "box", "brush", "erase", "new_object", "undo", "redo", "view", "window", "active", "model",
         "alternative")
PROMPTS = ("point", "box", "brush", "erase")  # the actions that edit the labels (each names its label)
SHOWN_ONLY = ("view", "window")  # actions that change what is shown, not the labels: saved in the background
# an action as the user knows it, in a message
SAID = {"point": "click", "box": "box", "brush": "brush stroke", "erase": "eraser stroke", "new_object": "New object",
        "undo": "undo", "redo": "redo", "active": "label choice", "model": "model choice",
        "alternative": "choice of alternative"}
MAX_STROKE_POINTS = 2000
MAX_BRUSH_PX = 200
# A point prompt may lie this far (plane pixels, or slices) past the image's edge and is then taken on the edge
# pixel (a click on the border line); further out it is refused, not clamped: a click at x = -10000 from a buggy
# or hostile client segmented whatever lay on the edge. A box's corner past the edge is still clamped (a drag
# released past the edge ends there).
POINT_TOLERANCE_PX = 1.0


class PageOrder:
    """The order in which the page's states were built (app.ui takes a number under the session's lock with what the
    page shows). Gradio applies each event's outputs when they arrive, so a page built before an Add label but sent
    after it put label 1 back in the label box; the viewer takes a page older than one it has shown as stale and asks
    for the page again. Each action's answer says the last number given (``page``): a page built before a label
    picked in the viewer but delivered after its answer made the old label active again in the viewer, and the click
    made next named it (the flaky add-label/label-pick e2e test); the viewer now takes such a page as stale too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        """The number of a page being built now (1, 2, ...)."""
        with self._lock:
            self._last += 1
            return self._last

    def last(self) -> int:
        """The newest number given (0 before any): every page numbered up to it was built before this moment."""
        with self._lock:
            return self._last


PAGES = PageOrder()


class OtherStudy(SessionError):
    """An action made on a study that is no longer the session's open one (another tab of the session opened
    another): answered 409, and nothing changes. Applied, a click would have landed on the other study at the first
    one's millimetres, and an undo would have taken back the other tab's edit."""


def _json_int(text: str) -> int | float:
    """A JSON integer; one past float's range (a 400-digit ``label``) as infinity, which every field's check refuses
    naming the field. Why: Python reads it as an exact int, and the checks' ``float()`` raised OverflowError: 500
    "internal error" with a traceback in the log (session 26b). Past 4300 digits json.loads refuses it (ValueError)."""
    value = int(text)
    return value if abs(value) <= 2**63 else float(text)


def parse(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """An action's body -> its JSON object; PromptError (one line, 400) for anything else.

    Why here and not FastAPI's ``Body``: JSON nested 100000 deep made the parser raise RecursionError, which
    FastAPI answered ``{"detail": ...}`` where the viewer reads ``error``. Only ``application/json`` is taken
    (a cross-site form cannot send it without a preflight).
    """
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise PromptError("an action is a JSON object sent as application/json")
    try:
        body = json.loads(raw, parse_int=_json_int)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser's stack
        raise PromptError(f"the action is not readable JSON ({type(e).__name__})") from None
    if not isinstance(body, dict):
        raise PromptError("an action is a JSON object")
    return body


def state(session: Session) -> dict[str, Any]:
    """What the browser needs to show the session: the study, its label table, window and revision (with the
    server process it counts in, ``boot``; no credential: the viewer's requests carry the session cookie)."""
    out: dict[str, Any] = {"study": None, "rev": session.revision, "boot": messages.BOOT}
    if session.volume is None or session.labels is None:
        return out
    volume, vs = session.volume, session.view
    out.update(
        study=session.study_key,
        name=visible_direction_controls(session.study_name),  # the viewer's own lines show it (data.untrusted)
        rgb=volume.is_rgb,
        is2d=volume.is_2d,
        views=["axial"] if volume.is_2d else ["axial", "coronal", "sagittal"],
        view=vs.view,
        acquisition=acquisition_view(volume),
        index=vs.index[vs.view],
        slice_mm=from_plane(volume, vs.view, vs.index[vs.view], 0, 0),
        planes=planes(volume),
        labels=label_rows(session),
        table=table_tag(session),
        active=session.active,
        window=window_of(session),
        opacity=vs.opacity,
        object=markers(session),
    )
    # the active label's anchor slices (stored-slice k is the index in the acquisition view): the viewer names them
    anchors = session.runtime.get(ANCHORS, {}).get(session.active, set())
    if anchors:
        out["anchors"] = sorted(int(k) for k in anchors)
    review = session.runtime.get("review")  # app.review: the viewer goes to the slice under review
    if review is not None and review.label == session.active:
        out["review"] = {"index": int(review.current), "position": int(review.position), "n": len(review.slices)}
    return out


def label_rows(session: Session) -> list[dict[str, Any]]:
    """The label table as the viewer shows it (value, name, colour)."""
    return [{"value": d.value, "name": d.name, "colour": "#%02x%02x%02x" % d.colour} for d in session.label_defs]


def table_tag(session: Session) -> str:
    """A digest of the label table: the state and every action's answer carry it, so a tab of the session whose
    table is not the server's (another tab renamed or recoloured a label) refreshes its page on its next answer,
    not only when brought to the front again."""
    return "%08x" % zlib.crc32(json.dumps(label_rows(session)).encode())


def news(session: Session | None) -> dict[str, Any]:
    """The idle tab's poll (``GET /viewer-api/news``): the open study (key and name: a tab showing another one
    follows it and says so) and its label table's digest, read without the session's lock (a torn read during a
    rename only makes one poll sync the page once more), the label map's revision (another tab's edit, a
    propagation: the idle tab fetches the labels again) and the newest news stamp.
    ``session`` None (held on disk only, so unchanged since it was last in memory): no table, no revision."""
    out: dict[str, Any] = {"ok": True, "study": None, "table": None, "rev": None, "at": messages.last_stamp(),
                           "boot": messages.BOOT}
    if session is not None and session.volume is not None:
        out.update(study=session.study_key, name=visible_direction_controls(session.study_name),
                   table=table_tag(session), rev=session.revision)
    return out


def planes(volume) -> dict[str, dict[str, Any]]:
    """Per view: how many planes, their (H, W) and (row, column) spacing (scripted clients use it)."""
    out = {}
    for view in (["axial"] if volume.is_2d else ["axial", "coronal", "sagittal"]):
        plane = Plane.of(volume, view)
        h, w = plane.extract(volume.array, 0).shape[:2]
        out[view] = {"count": plane.count(volume.array.shape), "hw": [h, w], "spacing": list(plane.spacing(volume))}
    return out


def window_of(session: Session) -> dict[str, float] | None:
    """The display window as level/width (what the browser applies and the Level/Width boxes show), None for colour
    images."""
    vs = session.view
    if session.volume.is_rgb:
        return None
    if vs.window == "custom":
        return {"level": float(vs.level), "width": float(vs.width)}
    w = display_window(session.volume, vs.window)
    if w is None:  # a grey 8-bit picture or ultrasound: its pixels as they are, as the model sees them (NiiVue's own
        return {"level": 127.5, "width": 255.0}  # guess, the data's range, showed 200 as white, with 40/400 in the boxes)
    return {"level": (w.lo + w.hi) / 2, "width": w.hi - w.lo}


def markers(session: Session) -> dict[str, Any] | None:
    """The current object's prompts in world mm (points with their sign, the box), for the overlay."""
    p, volume = session.prompt, session.volume
    if p is None or volume is None or p.label != session.active:
        return None
    points = [{"mm": from_plane(volume, p.view, p.index, x, y), "positive": bool(lab)}
              for (x, y), lab in zip(p.points, p.point_labels)]
    box = None
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        box = [from_plane(volume, p.view, p.index, x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    if not points and box is None:
        return None
    return {"view": p.view, "index": p.index, "points": points, "box": box}


# --- files the browser loads ----------------------------------------------------------------------
def volume_file(session: Session) -> Path:
    """The study as NIfTI (written once per study into the session's viewer/ folder)."""
    volume = session.require_study()
    path = session.directory / "viewer" / f"{session.study_key}.nii.gz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if volume.is_rgb:  # NiiVue shows RGB24 NIfTI; SimpleITK would write a vector image
            import nibabel as nib

            rgb = np.ascontiguousarray(volume.array[..., :3].astype(np.uint8))
            structured = rgb.view([("R", "u1"), ("G", "u1"), ("B", "u1")]).reshape(rgb.shape[:3])
            image = nib.Nifti1Image(structured.transpose(2, 1, 0), _ras_affine(session))
            with atomic_output(path) as tmp:
                nib.save(image, str(tmp.with_name(tmp.name + ".nii.gz")))
                tmp.with_name(tmp.name + ".nii.gz").replace(tmp)
        else:
            array = volume.array
            if array.dtype in (np.float64, np.int64, np.uint64):  # NiiVue reads no uint64 (session 30)
                array = array.astype(np.float32)
            image = sitk.GetImageFromArray(np.ascontiguousarray(array))
            volume.copy_geometry_to(image)
            with atomic_output(path) as tmp:
                sitk.WriteImage(image, str(tmp), useCompression=True, compressionLevel=1, imageIO="NiftiImageIO")
    return path


def _ras_affine(session: Session) -> np.ndarray:
    volume = session.volume
    affine = np.eye(4)
    affine[:3, :3] = volume.direction_matrix @ np.diag(volume.spacing)
    affine[:3, 3] = volume.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


def labels_bytes(session: Session) -> bytes:
    """The label map as a gzipped uint16 NIfTI on the study grid (the browser's label layer)."""
    volume = session.require_study()
    image = sitk.GetImageFromArray(np.ascontiguousarray(session.labels, dtype=np.uint16))
    volume.copy_geometry_to(image)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=1, imageIO="NiftiImageIO")
        return path.read_bytes()


# --- actions ---------------------------------------------------------------------------------------
def act(ctx: AppContext, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    """One viewer action (``body["kind"]`` in :data:`KINDS`) under the session's lock."""
    kind = body.get("kind")
    if kind not in KINDS:
        raise PromptError(f"unknown action {str(kind)[:40]!r}; expected one of {', '.join(KINDS)}")
    if kind == "model":  # the session's, not the study's: also with no study open
        return choose_model(ctx, session, body)
    with session.lock:
        trace.mark("action.locked", kind=kind)
        base = session.revision  # the label map this action found: a page that holds another one reloads it
        volume = session.require_study()
        # the study the page showed when the user acted (the viewer sends it; a scripted client may leave it out and
        # acts on the open study)
        study = body.get("study")
        if study is not None and study != session.study_key:
            if kind in SHOWN_ONLY:  # paging or a window of a study left meanwhile: nothing to keep
                return {"ok": True, "status": ""}
            # worded for both ways here: the server cannot tell which tab opened it, and "another tab opened ..." told
            # a user alone with one tab, who pressed Open and drew a box on the study still shown, that someone else had
            raise OtherStudy(f"this {SAID[kind]} was made on the study shown before {session.study_name} was opened "
                             f"(here or in another tab): it was not applied; this tab now shows {session.study_name} "
                             "(your work on the other study is kept in the session)")
        target = session.active  # the browser's active label is the truth for its prompts
        if kind in PROMPTS and body.get("label") is not None:
            target = _label_value(body)
            session.label(target)  # an unknown label is refused here
        if kind in PROMPTS:
            if target in _locked(body):
                raise PromptError(f"{session.label(target).name} is locked: unlock it to edit it")
        if kind == "point":  # checked before anything changes: a refused point leaves the active label too
            point_at = _where(volume, body, "mm", refuse_outside=True)
        if target != session.active:
            session.active, session.prompt = target, None
        edit: Edit | None = None
        status = ""
        if kind == "point":
            view, (index, x, y) = point_at
            _show(session, view, index)
            positive = _flag(body, "positive", True)
            other = _object_changed(session, body)
            if _flag(body, "new_object", False) or other:
                session.prompt = None
            edit = interaction.click(ctx.runner, session, x, y, positive=positive)
            n = len(session.prompt.points)
            status = (f"{'Positive' if positive else 'Negative'} click ({n} point{'s' if n != 1 else ''}"
                      f"{OTHER_OBJECT if other else ''}): overlay updated.")
        elif kind == "box":
            view, (index, x0, y0) = _where(volume, body, "mm")
            _, (_, x1, y1) = _where(volume, body, "mm2", view)
            _show(session, view, index)
            if abs(x1 - x0) < 1 - 1e-6 and abs(y1 - y0) < 1 - 1e-6:  # a keyboard box a pixel across: 0.99999999
                raise PromptError("the box is empty: drag across the structure")
            edit = interaction.box_prompt(ctx.runner, session, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            status = "Box: overlay updated."
        elif kind in ("brush", "erase"):
            view, index, mask = _stroke(volume, body)
            _show(session, view, index)
            session.prompt = None
            if kind == "brush":
                edit = interaction.mask_prompt(ctx.runner, session, mask, use_model=False)
                status = f"Painted {int(mask.sum())} pixels."
            else:
                edit = interaction.erase(session, mask)
                status = "Erased."
        elif kind == "new_object":
            session.prompt = None
            status = "Next prompt starts a new object."
        elif kind in ("undo", "redo"):
            edit = session.undo() if kind == "undo" else session.redo()
            status = controller.history_line(session, kind, edit)
        elif kind == "view":
            view, (index, _, _) = _where(volume, body, "mm")
            _show(session, view, index)
        elif kind == "window":
            level, width = _number(body, "level"), _number(body, "width")
            if width <= 0:
                raise PromptError(f"window width must be a positive number, got {width:g}")
            session.view.window, session.view.level, session.view.width = "custom", level, width
        elif kind == "alternative":
            which = _alternative(session, body)
            edit = interaction.choose_alternative(session, which - 1)
            status = f"Alternative {which} of the first click: overlay updated."
        elif kind == "active":
            value = _label_value(body)
            session.label(value)
            if value != session.active:
                session.active, session.prompt = value, None
        if kind in PROMPTS:
            controller.mark_anchor(session, edit)  # a prompt or correction on a stored slice anchors propagation
        trace.mark("action.acted", kind=kind)
        if kind in PROMPTS and edit is not None:
            ctx.store.save_edit(session, edit)  # its plane journalled now, the full save after the answer
        elif kind in SHOWN_ONLY:
            ctx.store.save_soon(session)  # what is shown, not what is annotated: saved in the background
        else:
            ctx.store.save(session)
        trace.mark("action.saved", kind=kind)
        if kind in PROMPTS:
            ctx.prefetcher.request(session, session.view.view, session.view.index[session.view.view])
        answer: dict[str, Any] = {"ok": True, "status": status, "rev": session.revision, "base": base,
                                  "object": markers(session), "at": messages.news_stamp(), "boot": messages.BOOT,
                                  "table": table_tag(session), "page": PAGES.last()}
        if kind in ("undo", "redo") and edit is not None and edit.view is None:
            answer["reload"] = True
        elif edit is not None:
            answer["patch"] = patch(session, edit.view, edit.index)
        if kind in ("point", "box", "undo", "redo") and session.prompt is not None and session.prompt.alternatives:
            answer["alternatives"] = len(session.prompt.alternatives)
        if kind in ("point", "box", "undo", "redo") and _flag(body, "suggest", False):
            answer["suggest"] = suggestion(ctx, session)
        return answer


def choose_model(ctx: AppContext, session: Session, body: dict[str, Any]) -> dict[str, Any]:
    """The model picked in the Model box (``body["model"]``: its name, or the box's label for it), applied in order
    with the prompts the viewer queued before it (``controller.switch_model``). An unknown or unusable model is
    refused in one line (400) and nothing changes; the labels never do. The answer names the model in use; the
    page's sync after it shows it in the Model box."""
    name = body.get("model")
    if not isinstance(name, str) or not name.strip():
        raise PromptError(f"model: expected a model name, got {str(name)[:40]!r}")
    with session.lock:
        trace.mark("action.locked", kind="model")
        base = session.revision
        status = controller.switch_model(ctx, session, name.strip())
        return {"ok": True, "status": status, "model": session.model, "rev": session.revision, "base": base,
                "object": markers(session), "at": messages.news_stamp(), "boot": messages.BOOT,
                "table": table_tag(session)}


def suggestion(ctx: AppContext, session: Session) -> dict[str, Any] | None:
    """The suggested next click for the viewer's marker, in world mm, with its guessed sign."""
    s = interaction.suggest(ctx.runner, session)
    if s is None:
        return None
    p = session.prompt
    return {"view": p.view, "index": p.index, "mm": from_plane(session.volume, p.view, p.index, s.x, s.y),
            "positive": s.positive, "score": round(s.score, 3)}


READY = "Ready: the slice is encoded."


def _shown_plane(session: Session) -> tuple[str, str, int] | None:
    """(model, view, index) of the shown plane, the key of its embedding; None without a study. Hold the lock."""
    if session.volume is None:
        return None
    view = session.view.view
    return session.model, view, int(session.view.index[view])


def encode_shown(ctx: AppContext, session: Session) -> str:
    """Encode the shown plane now (so the next prompt only runs the decoder).

    Returns "Ready: ..." only when it encoded: the viewer asks after every prompt too, and a slice
    already encoded is no news (its "Ready" replaced the prompt's own message)."""
    with session.lock:
        trace.mark("encode.locked")
        key = _shown_plane(session)
        if key is None or key in interaction.embeddings_of(session):
            return ""
    with ctx.runner.turn():
        ctx.runner.embedding(session, key[1], key[2])
    return READY


def shown_is_encoded(session: Session) -> bool:
    """Whether the shown plane has its embedding, whoever encoded it. A study's first "Ready" must not depend
    on who encoded first: the page's warm-up (``controller.warm``) often does, and then :func:`encode_shown`
    has no news, so a viewer that waited for its news never said "Ready" (the e2e flake of session 8)."""
    with session.lock:
        key = _shown_plane(session)
        return key is not None and key in interaction.embeddings_of(session)


def patch(session: Session, view: str | None, index: int | None) -> dict[str, Any] | None:
    """The label plane an edit changed, in the array's own order (what the browser writes back)."""
    if view is None:
        return None
    plane = Plane.of(session.require_study(), view)
    data = np.ascontiguousarray(np.take(session.labels, index, axis=plane.fixed), dtype="<u2")
    return {"axis": plane.fixed, "index": int(index), "shape": list(data.shape),
            "data": base64.b64encode(data.tobytes()).decode("ascii")}


def follow_shown(session: Session, shown: str | None) -> None:
    """The plane the viewer shows, as the page sends it with a button's event (``#viewer-shown``: JSON
    ``{"study", "view", "mm"}``), becomes the session's shown plane. The viewer tells the server of paging
    300 ms later and behind any queued prompt, so Propagate (or one-shot, or a mask file) pressed right
    after paging ran on the slice shown before. Nothing (another study's plane, none yet) leaves it as it is."""
    if not shown or session.volume is None:
        return
    try:
        where = json.loads(shown)
    except ValueError:
        return
    if not isinstance(where, dict) or where.get("study") != session.study_key:
        return
    view, (index, _, _) = _where(session.volume, where, "mm")
    _show(session, view, index)


def _show(session: Session, view: str, index: int) -> None:
    """The plane the user works on becomes the session's shown plane (propagate, one-shot start there)."""
    session.view.view = view
    session.view.index[view] = int(index)


def _number(body: dict[str, Any], key: str, default: Any = None) -> float:
    """``body[key]`` as a finite number; PromptError naming the field for null, text, a list, NaN or Infinity
    (a scripted client's wrong type answered "internal error (TypeError)" before)."""
    value = body.get(key, default)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise PromptError(f"{key}: expected a number, got {str(value)[:40]!r}")
    return number


OTHER_OBJECT = "; a new object: the one this tab showed was changed meanwhile, in another tab"


def _object_changed(session: Session, body: dict[str, Any]) -> bool:
    """Whether the click's tab showed another object than the session's (``body["object_points"]``: the points of the
    object the tab showed when the click left; a scripted client may leave it out). Why: two tabs of a session share
    the object being refined, and a click in a tab that had not seen the other's object yet became its next point
    ("(2 points)", no mask where it clicked). A click refines the object its tab shows; another starts a new one."""
    seen = body.get("object_points")
    if seen is None:
        return False
    if type(seen) is not int or seen < 0:
        raise PromptError(f"object_points: expected a number of points, got {str(seen)[:40]!r}")
    p = session.prompt
    return p is not None and p.label == session.active and len(p.points) != seen


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    """``body[key]`` as a yes/no: JSON true/false (or 0/1, as SAM's point labels); PromptError naming the field
    otherwise. Why: ``bool("false")`` is True, so a scripted client's ``"positive": "false"`` made a positive click."""
    value = body.get(key, default)
    if isinstance(value, bool):
        return value
    if type(value) in (int, float) and value in (0, 1):
        return bool(value)
    raise PromptError(f"{key}: expected true or false, got {str(value)[:40]!r}")


def _alternative(session: Session, body: dict[str, Any]) -> int:
    """The alternative picked (``body["alternative"]``, numbered from 1 as the list shows them) of the first click the
    page showed them for (``body["first"]``, its world mm; a scripted client may leave it out: the current one's).

    Why the click: the pick comes through the viewer's queue, after the prompts made before it. Gradio's event ran
    whenever it reached the server, before or after clicks still queued: a refinement click queued before it then
    refined the alternative instead of the mask it was made on, and after N and a first click on another structure,
    the pick from the first structure's list swapped the second one's mask. A pick whose list is not the current
    first click's is refused in one line, and nothing changes."""
    which = _number(body, "alternative")
    if which != int(which):
        raise PromptError(f"alternative: expected a whole number, got {which:g}")
    p = session.prompt
    shown = body.get("first")
    if shown is not None and p is not None and p.alternatives and p.points:
        mm = _mm_list(shown, "first")
        at = from_plane(session.volume, p.view, p.index, *p.points[0])
        if p.label != session.active or max(abs(a - b) for a, b in zip(at, mm)) > 1e-3:
            raise PromptError("the alternatives picked were those of an earlier click: a prompt made since began "
                              "another object; pick again from the list shown now")
    return int(which)


def _mm_list(value: Any, key: str) -> list[float]:
    """A world position [x, y, z] in mm from the page; PromptError naming the field otherwise."""
    if not isinstance(value, list) or len(value) != 3 or not all(
            type(v) in (int, float) and math.isfinite(v) for v in value):
        raise PromptError(f"{key}: expected [x, y, z] in mm, got {str(value)[:40]!r}")
    return [float(v) for v in value]


def _locked(body: dict[str, Any]) -> set[int]:
    """``body["locked"]``: the label numbers the page has locked. Text such as ``"1"`` is refused: compared with the
    label number 1 it never matched, so the locked label was edited."""
    locked = body.get("locked") or []
    if not isinstance(locked, list):
        raise PromptError("locked: expected a list of label numbers")
    out = set()
    for v in locked:
        if isinstance(v, bool) or type(v) not in (int, float) or not math.isfinite(v) or v != int(v):
            raise PromptError(f"locked: expected a list of label numbers, got {str(v)[:40]!r}")
        out.add(int(v))
    return out


def _label_value(body: dict[str, Any]) -> int:
    """``body["label"]``: a label number (the label map is uint16)."""
    value = _number(body, "label")
    if value != int(value) or not 1 <= value <= 65535:
        raise PromptError(f"label: expected a label number 1..65535, got {str(body.get('label'))[:40]!r}")
    return int(value)


def _where(volume, body: dict[str, Any], key: str, view: str | None = None,
           refuse_outside: bool = False) -> tuple[str, tuple[int, float, float]]:
    """Where a prompt is: ``key`` in world mm ([x, y, z], the browser), or ``at``/``at2`` as
    [plane index, x, y] on the plane grid (scripted clients), clamped to the image. With ``refuse_outside``
    (a point prompt) a place more than :data:`POINT_TOLERANCE_PX` past the image is a PromptError instead."""
    view = view or str(body.get("view", ""))
    if volume.is_2d:
        view = "axial"
    name = "at2" if key == "mm2" else "at"
    at = body.get(name)
    if at is not None and body.get(key) is None:
        plane = Plane.of(volume, view)
        try:
            index, x, y = (float(v) for v in at)
        except (TypeError, ValueError) as e:
            raise PromptError(f"{name}: expected [plane index, x, y]") from e
        if not np.isfinite([index, x, y]).all():
            raise PromptError(f"{name}: expected finite numbers [plane index, x, y]")
        n = plane.count(volume.array.shape)
        if not 0 <= index < n:
            raise PromptError(f"{view} plane {int(index)} is out of range: 0..{n - 1}")
        coords = (float(int(index)), x, y)
    else:
        mm = body.get(key)
        if not isinstance(mm, (list, tuple)) or len(mm) != 3:
            raise PromptError(f"{key}: expected [x, y, z] in millimetres")
        try:
            values = [float(v) for v in mm]
        except (TypeError, ValueError) as e:
            raise PromptError(f"{key}: expected numbers") from e
        if not all(np.isfinite(values)):
            raise PromptError(f"{key}: expected finite numbers")
        Plane.of(volume, view)  # a clear error for an unknown view
        coords = plane_coords(volume, view, values)
    if refuse_outside and outside_by(volume, view, coords) > POINT_TOLERANCE_PX:
        raise PromptError(f"the point is outside the image of the {view} view (more than {POINT_TOLERANCE_PX:g} pixel "
                          "past its edge): click on the image")
    return view, clip_to_plane(volume, view, coords)


def _stroke(volume, body: dict[str, Any]) -> tuple[str, int, np.ndarray]:
    """A brush stroke (points in mm, a radius in plane pixels) -> (view, plane index, mask).

    A point may lie past the image's edge by the brush's radius plus :data:`POINT_TOLERANCE_PX` (a stroke painted
    along the border runs over it: what it covers inside is painted, the point taken on the edge as before); further
    out, or off the slices by more than the tolerance, or not finite, the stroke is refused naming the point: a
    point at x = -10000 from a buggy or hostile client was clamped to the edge and painted there."""
    import cv2

    points = body.get("points")
    if not isinstance(points, list) or not 0 < len(points) <= MAX_STROKE_POINTS:
        raise PromptError(f"points: expected 1..{MAX_STROKE_POINTS} positions")
    radius = _number(body, "radius", 5)
    if not 0.5 <= radius <= MAX_BRUSH_PX:
        raise PromptError(f"brush radius must be 0.5..{MAX_BRUSH_PX} pixels, got {radius:g}")
    view = "axial" if volume.is_2d else str(body.get("view", ""))
    Plane.of(volume, view)  # a clear error for an unknown view
    at = [_stroke_point(volume, view, i, mm, radius) for i, mm in enumerate(points)]  # all checked before painting
    index, x, y = at[0]
    plane_shape = Plane.of(volume, view).extract(volume.array[..., 0] if volume.is_rgb else volume.array, index).shape
    canvas = np.zeros(plane_shape[:2], np.uint8)
    previous = (x, y)
    r = max(0, int(round(radius - 0.5)))
    for _, px, py in at:
        a = (int(round(previous[0])), int(round(previous[1])))
        b = (int(round(px)), int(round(py)))
        cv2.line(canvas, a, b, 1, thickness=2 * r + 1)
        cv2.circle(canvas, b, r, 1, thickness=-1)
        previous = (px, py)
    cv2.circle(canvas, (int(round(x)), int(round(y))), r, 1, thickness=-1)
    return view, index, canvas.astype(bool)


def _stroke_point(volume, view: str, i: int, mm: Any, radius: float) -> tuple[int, float, float]:
    """Point ``i`` of a stroke -> (plane index, x, y) on the image; PromptError naming ``points[i]``."""
    try:
        values = [float(v) for v in mm] if isinstance(mm, (list, tuple)) and len(mm) == 3 else None
    except (TypeError, ValueError):
        values = None
    if values is None or not all(math.isfinite(v) for v in values):
        raise PromptError(f"points[{i}]: expected [x, y, z] in millimetres (finite numbers), got {str(mm)[:40]!r}")
    coords = plane_coords(volume, view, values)
    slices, *pixels = past_edges(volume, view, coords)
    if slices > POINT_TOLERANCE_PX or max(pixels) > radius + POINT_TOLERANCE_PX:
        raise PromptError(f"points[{i}] is outside the image of the {view} view (more than the brush radius + "
                          f"{POINT_TOLERANCE_PX:g} pixel past its edge): paint on the image")
    return clip_to_plane(volume, view, coords)
