"""Per-user annotation sessions: typed state, undoable edits, atomic autosave, restore, expiry.

A :class:`Session` is what one browser works on: the study it opened, a label map on the source
grid, the label table, the object being prompted, undo/redo stacks and the current view. The
:class:`SessionStore` keeps sessions by id (a random token that also names the session folder)
behind a lock, saves each one atomically after every edit and reloads it from disk when a page
comes back after the server forgot it (restart, idle eviction).

On disk, ``<root>/<id>/``: ``state.json`` (everything but arrays), ``labels.npz`` (the label map),
``uploads/`` (the study, when uploaded) and ``exports/``; ``prompt.npz``: the arrays of the object being refined
(:data:`PROMPT_FILE`). Undo history and the embedding cache live in memory only: they survive a page reload, not a
server restart.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app import save_journal, trace
from app.access import make_private
from app.packed import PackedArray, pack
from app.render import VIEWS, Plane, acquisition_view
from app.reading import read_untrusted
from data.readers import StudyError, read_study
from data.untrusted import DIRECTION_CONTROL, LONE_SURROGATE
from data.volume import Volume
from data.writers import atomic_output

STATE_VERSION = 1
MAX_UNDO = 100
# A label's name: what a DICOM-SEG segment label holds (LO, 64 characters). Why a bound: a 10 MB name was taken,
# then sent in every page state, journalled with every click and cut to 64 characters in the SEG anyway.
MAX_LABEL_NAME = 64
# Undo history per session is also bounded by the bytes its arrays hold (``undo_nbytes``: packed label
# planes, the prompts' low-res logits and first-click candidates, each array once). A click step is
# ~0.26 MiB (its 256 x 256 float32 logits; the packed planes are a few KiB), so 100 steps fit; steps
# with first-click candidates (~1 MiB) and whole-study edits are what the byte bound stops.
# The newest step is always kept, whatever its size.
MAX_UNDO_BYTES = 32 * 2**20
# The per-label prompt history (a log in state.json; undo/redo keeps its own prompts) is serialised into the
# journal with every click and into state.json with every save. Each record held the prompt's whole point list,
# so a prompt refined by n clicks stored 1 + 2 + ... + n points: 500 clicks on one label made a 2.45 MB journal
# record per click (docs/bench/s13/prompt_history_before.jsonl). Now a record whose prompt the next record
# extends keeps only ``n_points`` (its points are the first n of the next one's: nothing is lost), and a
# label keeps its newest MAX_HISTORY records.
MAX_HISTORY = 1000
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
UNRESTORED = ".unrestored"  # <root>/.unrestored/: folders of sessions that could not be restored (kept, not deleted)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


class SessionError(ValueError):
    """A session id that is malformed or unknown, or a session without a study yet."""


@dataclass(frozen=True)
class LabelDef:
    """One label of the study: its value in the label map, a name and a display colour (RGB 0-255)."""

    value: int
    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class PromptState:
    """The object being prompted on one plane: the prompts so far and what the model returned.

    points: ((x, y), ...) on the plane grid; point_labels: 1 foreground / 0 background;
    box: (x0, y0, x1, y1) or None; corner: the first click of a two-click box, waiting for the second.
    base: the label plane before this object started (each refinement re-applies onto it, so
    other objects on the plane are never eaten). logits: (1, 256, 256) low-res logits of the
    last result, fed back on the next click. alternatives: the multimask candidates of an
    ambiguous first click, ((mask (H, W) bool, logits (1, h, w), score), ...).
    """

    view: str
    index: int
    label: int
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None
    base: np.ndarray | None = field(default=None, repr=False, compare=False)
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    alternatives: tuple = field(default=(), repr=False, compare=False)
    chosen: int = 0

    def same_target(self, view: str, index: int, label: int) -> bool:
        return (self.view, self.index, self.label) == (view, index, label)

    def record(self, kind: str) -> dict[str, Any]:
        """A JSON-able line of the per-label prompt history."""
        return {
            "kind": kind,
            "view": self.view,
            "index": self.index,
            "points": [list(p) for p in self.points],
            "point_labels": list(self.point_labels),
            "box": list(self.box) if self.box is not None else None,
            "time": round(time.time(), 3),
        }


def log_prompt(log: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Append ``record`` to a label's prompt history, bounded (see MAX_HISTORY).

    When ``record``'s prompt extends the last one's (same plane and box, its points starting with the last
    one's), the last keeps ``n_points`` instead of its list: the full list is the newest record's, so a prompt
    refined by n clicks stores n points, not n (n + 1) / 2."""
    if log:
        last = log[-1]
        points, labels = last.get("points"), last.get("point_labels")
        if (isinstance(points, list) and points and isinstance(labels, list)
                and all(last.get(k) == record.get(k) for k in ("view", "index", "box"))
                and record.get("points", [])[: len(points)] == points
                and record.get("point_labels", [])[: len(labels)] == labels):
            del last["points"], last["point_labels"]
            last["n_points"] = len(points)
    log.append(record)
    del log[:-MAX_HISTORY]


@dataclass(frozen=True)
class Edit:
    """One undoable change of the label map: a plane (view, index), or the whole map (view None).

    ``before`` and ``after`` are kept packed (:class:`app.packed.PackedArray`, lossless): label planes
    are mostly zeros, and undo history is the per-session memory that grows with every click."""

    description: str
    view: str | None
    index: int | None
    before: PackedArray = field(repr=False)
    after: PackedArray = field(repr=False)
    prompt_before: PromptState | None = field(default=None, repr=False)
    prompt_after: PromptState | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "before", pack(self.before))
        object.__setattr__(self, "after", pack(self.after))

    @functools.cached_property
    def owners(self) -> tuple[tuple[int, int], ...]:
        """(identity, bytes) of each array this step keeps alive (:func:`_owner`). Computed once: an Edit and
        its PromptStates are frozen, and the undo bound asked it of every step on every click (~19 % of a
        click's interpreter time in the 20-session py-spy samples, docs/benchmarks.md H)."""
        return tuple(_owner(a) for a in _edit_arrays(self))


def note_anchor(edit: Edit, label: int, k: int) -> None:
    """``edit`` made slice ``k`` an anchor of ``label`` (``controller.mark_anchor``): Undo of it takes the anchor
    away, Redo brings it back (:meth:`Session.undo`). Why: an undone correction stayed an anchor, so Propagate
    again kept that slice as the walk had left it instead of recomputing it. Kept on the (frozen) edit itself,
    so the mark travels with it through a study's kept history and dies with it."""
    edit.__dict__["made_anchor"] = (int(label), int(k))


def _edit_arrays(edit: Edit) -> list:
    """The arrays an undo step keeps alive: its packed planes and both prompts' arrays."""
    arrays: list = [edit.before, edit.after]
    for p in (edit.prompt_before, edit.prompt_after):
        if p is not None:
            arrays += [p.base, p.logits]
            for alternative in p.alternatives:
                arrays += [a for a in alternative if isinstance(a, np.ndarray)]
    return [a for a in arrays if isinstance(a, (np.ndarray, PackedArray))]


def _owner(a) -> tuple[int, int]:
    """(identity, bytes) of what holds ``a``'s memory: a view counts as its base array, and an array
    made by ``tensor.numpy()`` as the tensor's whole storage (a slice of a decoder's output keeps all of it)."""
    while isinstance(a, np.ndarray) and isinstance(a.base, np.ndarray):
        a = a.base
    base = getattr(a, "base", None)
    if base is not None and hasattr(base, "untyped_storage"):  # a torch tensor
        storage = base.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    return id(a), a.nbytes


def undo_nbytes(edits: list[Edit]) -> list[int]:
    """Bytes each step of ``edits`` (oldest first) adds, counting every array once: a refining click's
    prompt shares the object's base plane and the previous click's logits with the steps around it.
    Each shared array is counted at the newest step that holds it, so dropping the oldest steps frees
    what they are counted for."""
    seen: set[int] = set()
    sizes = [0] * len(edits)
    for i in range(len(edits) - 1, -1, -1):
        for key, nbytes in edits[i].owners:
            if key not in seen:
                seen.add(key)
                sizes[i] += nbytes
    return sizes


def edit_nbytes(edit: Edit) -> int:
    """Bytes one undo step keeps alive on its own (its arrays, each once)."""
    return sum(undo_nbytes([edit]))


@dataclass
class ViewState:
    """What the user is looking at; display settings never change what the model sees."""

    view: str = "axial"
    index: dict[str, int] = field(default_factory=lambda: {"axial": 0, "coronal": 0, "sagittal": 0})
    window: str = "default"
    level: float = 40.0
    width: float = 400.0
    opacity: float = 0.45
    mode: str = "point +"


@dataclass
class Session:
    """One user's work. Arrays follow ``data.volume``: ``labels[k, j, i]`` on the study grid."""

    id: str
    directory: Path
    model: str = "litemedsam"
    study_path: str | None = None
    series_uid: str | None = None
    allow_uneven: bool = False  # the user chose to open the study's uneven slice spacing at its mean (restored so)
    study_name: str = ""
    labels: np.ndarray | None = field(default=None, repr=False)
    label_defs: list[LabelDef] = field(default_factory=list)
    active: int = 1
    view: ViewState = field(default_factory=ViewState)
    prompt: PromptState | None = None
    history: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    undo_stack: list[Edit] = field(default_factory=list, repr=False)
    redo_stack: list[Edit] = field(default_factory=list, repr=False)
    updated: float = field(default_factory=time.time)
    # the other studies opened in this session, by study key: their labels stay (studies/<key>.npz)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    # runtime only (never saved)
    # bumped on every change of the label map: the viewer's cue, and its order (a page state older than the
    # labels the viewer holds is no news). An order within this server process only: the state and every answer
    # carry ``messages.BOOT`` and the viewer takes a revision of another process as news (it reloads). It starts at
    # the load time in µs on the monotonic clock, so a session evicted and loaded again counts on above its old
    # revisions. It was the wall clock: after a restart with the clock stepped back (NTP), an open tab held a
    # higher revision than the server's and ignored its label changes until its next action.
    revision: int = field(default_factory=lambda: time.monotonic_ns() // 1000, repr=False)
    stashed: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # other studies' arrays, undo
    volume: Volume | None = field(default=None, repr=False)
    runtime: dict[str, Any] = field(default_factory=dict, repr=False)  # model window, embedding cache
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    # --- study -------------------------------------------------------------------------------
    def require_study(self) -> Volume:
        if self.volume is None or self.labels is None:
            raise SessionError("no study is open: pick a sample or upload one first")
        return self.volume

    @property
    def study_key(self) -> str | None:
        """The open study's key (its path and series): the same study opened again finds its labels."""
        return study_key(self.study_path, self.series_uid) if self.study_path else None

    def start_study(self, volume: Volume, path: str, name: str, series_uid: str | None = None, *,
                    allow_uneven: bool = False) -> None:
        """Open a study. The open one's labels, label table, view and undo history are kept in the
        session (``studies``) and come back when it is opened again; re-opening the open study keeps it."""
        key = study_key(path, series_uid)
        if key == self.study_key and self.labels is not None and self.labels.shape == volume.array.shape[:3]:
            self.volume, self.study_name, self.allow_uneven = volume, name, allow_uneven
            self.prompt = None
            self.revision += 1
            return
        if self.study_key is not None and self.labels is not None:
            self._stash()
        self.volume = volume
        self.study_path, self.series_uid, self.study_name = path, series_uid, name
        self.allow_uneven = allow_uneven
        self.prompt = None
        job = self.runtime.get("propagation_job")  # a walk goes on in its own study (app.propagation_job): the page
        self.runtime.clear()                      # polls it, and a second start of it is refused, as in its study
        if job is not None:
            self.runtime["propagation_job"] = job
        self.revision += 1
        if self._unstash(key, volume):
            self._trim_undo()  # all the session's studies share its undo bound
            return
        self.labels = np.zeros(volume.array.shape[:3], dtype=np.uint16)
        self.label_defs = [LabelDef(1, "label 1", PALETTE[0])]
        self.active = 1
        self.history = {}
        self.undo_stack.clear()
        self.redo_stack.clear()
        shape = volume.array.shape[:3]
        self.view = ViewState(mode=self.view.mode)
        self.view.view = acquisition_view(volume)
        views = VIEWS if not volume.is_2d else ("axial",)
        self.view.index = {v: Plane.of(volume, v).count(shape) // 2 for v in views}

    def _stash(self) -> None:
        """Keep the open study's work under its key (arrays in memory until the store writes them)."""
        key = self.study_key
        self.studies[key] = {
            "study_path": self.study_path, "series_uid": self.series_uid, "study_name": self.study_name,
            "labels": [{"value": d.value, "name": d.name, "colour": list(d.colour)} for d in self.label_defs],
            "active": self.active, "view": asdict(self.view),
            "history": {str(k): v for k, v in self.history.items()}, "anchors": self.anchors_json(),
        }
        # packed: a session may keep several studies' work, and a label map is mostly zeros
        self.stashed[key] = {"labels": pack(self.labels), "undo": list(self.undo_stack), "redo": list(self.redo_stack),
                             "dirty": True}

    def kept_labels(self, key: str) -> np.ndarray | None:
        """The label map of another study of this session, kept in memory since it was left (None if not)."""
        labels = self.stashed.get(key, {}).get("labels")
        return None if labels is None else np.asarray(labels)

    def apply_kept(self, key: str, edit: Edit) -> None:
        """Apply a whole-map ``edit`` to another study's kept work (a background job of that study ended after
        the user left it): its labels and undo history, saved with the session's next save."""
        kept = self.stashed[key]
        kept["labels"] = edit.after  # packed, immutable: shared with the undo step
        kept["undo"] = [*kept.get("undo", []), edit]
        kept["redo"] = []
        kept["dirty"] = True
        self._trim_undo()

    def _unstash(self, key: str, volume: Volume) -> bool:
        """Bring back a study's kept work; False when the session has none for it."""
        meta = self.studies.pop(key, None)
        if meta is None:
            return False
        arrays = self.stashed.pop(key, None) or {}
        labels = arrays.get("labels")
        if isinstance(labels, PackedArray):
            labels = labels.unpack()
        if labels is None:
            labels_file = self.directory / "studies" / f"{key}.npz"
            if labels_file.is_file():
                with np.load(labels_file) as z:
                    labels = z["labels"]
        if labels is None or labels.shape != volume.array.shape[:3]:
            labels = np.zeros(volume.array.shape[:3], dtype=np.uint16)
        self.labels = labels
        self.label_defs = [LabelDef(int(d["value"]), str(d["name"]), tuple(d["colour"])) for d in meta["labels"]]
        self.active = int(meta["active"])
        self.view = ViewState(**{k: v for k, v in meta["view"].items() if k in ViewState.__dataclass_fields__})
        self.history = {int(k): v for k, v in meta.get("history", {}).items()}
        self.restore_anchors(meta.get("anchors", {}))
        self.undo_stack[:] = arrays.get("undo", [])
        self.redo_stack[:] = arrays.get("redo", [])
        return True

    # --- labels table ----------------------------------------------------------------------
    def label(self, value: int) -> LabelDef:
        for d in self.label_defs:
            if d.value == value:
                return d
        raise SessionError(f"no label {value}; labels are {', '.join(str(d.value) for d in self.label_defs)}")

    def add_label(self, name: str = "", colour: tuple[int, int, int] | None = None) -> LabelDef:
        value = max((d.value for d in self.label_defs), default=0) + 1
        if value > 65535:
            raise SessionError("at most 65535 labels per study")
        # the Name box holds the active label's name: Add label pressed without typing made a second "label 1"
        # (two segments of one name in an export); a name already in the table gets the default one
        name = _checked_name(name)
        if not name or name in {d.name for d in self.label_defs}:
            name = f"label {value}"
        d = LabelDef(value, name, colour or PALETTE[(value - 1) % len(PALETTE)])
        self.label_defs.append(d)
        self.active = value
        self.prompt = None
        return d

    def edit_label(self, value: int, name: str | None = None, colour: tuple[int, int, int] | None = None) -> None:
        old = self.label(value)
        new_name = (_checked_name(name, old.name) or old.name) if name is not None else old.name
        taken = next((d for d in self.label_defs if d.name == new_name and d.value != value), None)
        if taken is not None and new_name != old.name:  # as add_label: one name, one segment of an export
            raise SessionError(f"label name: {new_name!r} is already label {taken.value}'s; choose another name")
        new = replace(old, name=new_name, colour=colour or old.colour)
        self.label_defs = [new if d.value == value else d for d in self.label_defs]

    def colours(self) -> dict[int, tuple[int, int, int]]:
        return {d.value: d.colour for d in self.label_defs}

    # --- edits -------------------------------------------------------------------------------
    def region(self, view: str | None, index: int | None) -> np.ndarray:
        """The label plane an edit covers (a view into ``labels``), or the whole map."""
        if view is None:
            return self.labels
        return Plane.of(self.require_study(), view).extract(self.labels, index)

    def apply(self, edit: Edit, kind: str = "") -> None:
        """Apply ``edit`` and push it on the undo stack (clears redo). ``kind`` logs the prompt."""
        self.region(edit.view, edit.index)[...] = edit.after.unpack()
        self.prompt = edit.prompt_after
        self.revision += 1
        self.undo_stack.append(edit)
        self.redo_stack.clear()
        self._trim_undo()
        if kind and edit.prompt_after is not None:
            log_prompt(self.history.setdefault(edit.prompt_after.label, []), edit.prompt_after.record(kind))

    def _trim_undo(self) -> None:
        """Drop the oldest steps beyond MAX_UNDO or MAX_UNDO_BYTES (keeps the newest). The bound is the
        session's: the other studies' kept history counts too, and gives way first."""
        del self.undo_stack[:-MAX_UNDO]
        sizes = undo_nbytes(self.undo_stack)
        total, drop = sum(sizes), 0
        for kept in reversed(list(self.stashed.values())):  # the most recently left study keeps its history first
            held = sum(undo_nbytes(list(kept.get("undo", ())) + list(kept.get("redo", ()))))
            if total + held > MAX_UNDO_BYTES:
                kept["undo"], kept["redo"] = [], []
            else:
                total += held
        while total > MAX_UNDO_BYTES and drop < len(sizes) - 1:
            total -= sizes[drop]
            drop += 1
        del self.undo_stack[:drop]

    def undo(self) -> Edit | None:
        if not self.undo_stack:
            return None
        edit = self.undo_stack.pop()
        self.region(edit.view, edit.index)[...] = edit.before.unpack()
        self._follow_anchor(edit, made=False)
        self.prompt = edit.prompt_before
        self.revision += 1
        self.redo_stack.append(edit)
        return edit

    def redo(self) -> Edit | None:
        if not self.redo_stack:
            return None
        edit = self.redo_stack.pop()
        self.region(edit.view, edit.index)[...] = edit.after.unpack()
        self._follow_anchor(edit, made=True)
        self.prompt = edit.prompt_after
        self.revision += 1
        self.undo_stack.append(edit)
        return edit

    def _follow_anchor(self, edit: Edit, made: bool) -> None:
        """The anchor ``edit`` made (:func:`note_anchor`) follows it: gone on Undo, back on Redo."""
        mark = edit.__dict__.get("made_anchor")
        if mark is not None:
            anchors = self.runtime.setdefault(ANCHORS, {}).setdefault(mark[0], set())
            if made:
                anchors.add(mark[1])
            else:
                anchors.discard(mark[1])

    def clear_label(self, value: int) -> Edit | None:
        """Remove ``value`` from the whole study as one undoable edit (None when it was empty)."""
        self.require_study()
        if not (self.labels == value).any():
            return None
        after = np.where(self.labels == value, 0, self.labels).astype(self.labels.dtype)
        edit = Edit(f"clear {self.label(value).name}", None, None, self.labels.copy(), after, self.prompt, None)
        self.apply(edit)
        return edit

    # --- persistence -----------------------------------------------------------------------
    def anchors_json(self) -> dict[str, list[int]]:
        """The open study's propagation anchors (``app.propagation_job.anchors_of``) as JSON: they are saved with
        the study's work, since a re-propagation overwrites every slice that is not one (a correction was lost
        when they lived in ``runtime`` alone, which opening another study or a restart clears)."""
        return {str(v): sorted(int(k) for k in ks) for v, ks in self.runtime.get(ANCHORS, {}).items() if ks}

    def restore_anchors(self, data: Any) -> None:
        """Bring back the anchors :meth:`anchors_json` wrote. A kept study's entry is not checked with state.json
        (``check_state``), so a damaged one is dropped with a warning: anchors only steer a re-propagation, and
        refusing to open the study over them would keep its labels out of reach."""
        anchors: dict[int, set[int]] = {}
        for value, ks in (data.items() if isinstance(data, dict) else ()):
            if re.fullmatch(r"-?[0-9]+", str(value)) and isinstance(ks, list) and all(type(k) is int for k in ks):
                anchors[int(value)] = set(ks)
            else:
                log.warning("session %s: propagation anchors of label %r dropped (not slice numbers)", self.id, value)
        self.runtime[ANCHORS] = anchors

    def to_json(self) -> dict[str, Any]:
        study = self.study_path
        if study is not None and Path(study).resolve().is_relative_to(self.directory.resolve()):
            study = "@session/" + str(Path(study).resolve().relative_to(self.directory.resolve()))
        return {
            "version": STATE_VERSION,
            "id": self.id,
            "model": self.model,
            "study_path": study,
            "series_uid": self.series_uid,
            "allow_uneven": self.allow_uneven,
            "study_name": self.study_name,
            "labels": [{"value": d.value, "name": d.name, "colour": list(d.colour)} for d in self.label_defs],
            "active": self.active,
            "view": asdict(self.view),
            "history": {str(k): v for k, v in self.history.items()},
            "anchors": self.anchors_json(),
            "studies": self.studies,
            "updated": self.updated,
        }


# state.json, field by field: (key, accepted types, what the message says was expected)
_STATE_FIELDS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("model", (str,), "a model name"), ("study_path", (str, type(None)), "a path or null"),
    ("series_uid", (str, type(None)), "a UID or null"), ("allow_uneven", (bool,), "true or false"),
    ("study_name", (str,), "a name"),
    ("labels", (list,), "a list of labels"), ("active", (int,), "a label value"), ("view", (dict,), "an object"),
    ("history", (dict,), "an object"), ("studies", (dict,), "an object"), ("updated", (int, float), "a time"),
    ("journal_seq", (int,), "a record number"), ("anchors", (dict,), "slice lists by label value"),
    ("prompt", (dict, type(None)), "the object being refined or null"),
)
_VIEW_FIELDS = {"view": (str,), "window": (str,), "mode": (str,), "level": (int, float), "width": (int, float),
                "opacity": (int, float)}


def check_state(state: Any, name: str = "state.json") -> dict[str, Any]:
    """``state`` if it has the shape :meth:`Session.to_json` writes, else SessionError naming the file and
    the field: a hand-edited or damaged file raised AttributeError/TypeError deep in the restore."""
    def bad(where: str, expected: str) -> SessionError:
        return SessionError(f"{name}: {where}: expected {expected}")

    if not isinstance(state, dict):
        raise SessionError(f"{name}: expected a JSON object, found {type(state).__name__}")
    for key, types, expected in _STATE_FIELDS:
        if key in state and (not isinstance(state[key], types) or (isinstance(state[key], bool) and bool not in types)):
            raise bad(key, expected)
    for n, d in enumerate(state.get("labels", [])):
        if not isinstance(d, dict) or not isinstance(d.get("value"), int) or not isinstance(d.get("name"), str):
            raise bad(f"labels[{n}]", "{\"value\": integer, \"name\": text, \"colour\": [r, g, b]}")
        colour = d.get("colour")
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise bad(f"labels[{n}].colour", "3 integers 0-255")
    view = state.get("view", {})
    for key, types in _VIEW_FIELDS.items():
        if key in view and not isinstance(view[key], types):
            raise bad(f"view.{key}", types[0].__name__)
    index = view.get("index", {})
    if not isinstance(index, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in index.items()):
        raise bad("view.index", "slice numbers by view")
    if not all(re.fullmatch(r"-?[0-9]+", k) and isinstance(v, list) for k, v in state.get("history", {}).items()):
        raise bad("history", "prompt lists by label value")
    if not all(re.fullmatch(r"-?[0-9]+", k) and isinstance(v, list) and all(type(i) is int for i in v)
               for k, v in state.get("anchors", {}).items()):
        raise bad("anchors", "slice numbers by label value")
    if not all(isinstance(v, dict) for v in state.get("studies", {}).values()):
        raise bad("studies", "an object per study")
    return state


def default_state_dir() -> Path:
    """``$MEDSEG_STATE_DIR`` or ``~/.local/state/medseg`` (sessions survive reboots, unlike /tmp)."""
    return Path(os.environ.get("MEDSEG_STATE_DIR", Path.home() / ".local" / "state" / "medseg"))


_HELD_ROOTS: dict[Path, Any] = {}  # the lock files of the state folders this process serves, open until it exits


def claim_root(root: str | Path) -> None:
    """Make this process the only server of the state folder ``root`` (an flock on ``<root>/.lock``, freed
    when the process ends, kill -9 included; beside ``sessions/``, whose entries are sessions only). Two servers
    on one folder each kept a session in memory and saved over the other's labels (the browser's cookie is not
    bound to a port, so both opened the same session). A folder this process holds already is claimed again
    (``medseg serve`` claims it before Gradio is imported, ``app.ui.launch`` when it starts)."""
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if root.resolve() in _HELD_ROOTS:
        return
    handle = open(root / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        pid = handle.read().strip()[:20] or "?"
        handle.close()
        raise SessionError(f"{root}: another medseg serve (pid {pid}) keeps its sessions here, and two servers "
                           "would overwrite each other's labels; give this one its own --state-dir DIR") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD_ROOTS[root.resolve()] = handle


# What a save writes beside its target before the rename (data.writers.atomic_output: ``.<name>.<random><suffix>``;
# prompt.npz: ``.prompt.npz.<token>.tmp``); kill -9 between the two leaves it, never read and never removed.
SAVE_TEMPORARY = re.compile(r"\.(labels\.npz|state\.json|prompt\.npz)\..+")
STUDY_TEMPORARY = re.compile(r"\..+\.npz\..+\.npz")


def remove_save_temporaries(sessions_root: str | Path) -> int:
    """Delete what interrupted saves left in the session folders; returns how many. Only at start, once
    :func:`claim_root` holds the state folder: no save of this process runs yet, and no other server's can."""
    removed = 0
    root = Path(sessions_root)
    for directory in root.iterdir() if root.is_dir() else ():
        if not directory.is_dir() or not SESSION_ID.match(directory.name):
            continue
        found = [f for f in directory.glob(".*") if SAVE_TEMPORARY.fullmatch(f.name)]
        found += [f for f in (directory / "studies").glob(".*") if STUDY_TEMPORARY.fullmatch(f.name)]
        for f in found:
            with contextlib.suppress(OSError):
                f.unlink()
                removed += 1
    return removed


def folder_bytes(folder: Path) -> int:
    """Apparent size of the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def study_key(path: str, series_uid: str | None = None) -> str:
    """A short stable key of a study: its resolved path and series (names its kept labels file)."""
    text = f"{Path(path).resolve()}|{series_uid or ''}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


LABELS_ON_DISK = "labels_on_disk"  # session.runtime key: labels_signature() of what labels.npz holds
ANCHORS = "anchors"  # session.runtime key: {label: {slice k}} (app.propagation_job.anchors_of), saved with the study
JOURNAL_SEQ = "journal_seq"  # session.runtime key: the last journal record written (app.save_journal)
# The object being refined survives a restart as the labels do. Why: after a restart the next click on the structure
# started a new object ("Positive click (1 point)" where "(2 points)" was due), painted over the first object's mask
# instead of refining it. Its points, box and plane go into the state (the journal's with every click, state.json's);
# its arrays (the plane before it began, the last low-res logits) into prompt.npz, written before the state that names
# it by a token: a state whose token the file does not hold (a crash between the two) restores no object, never a
# stale one; the labels are kept either way.
PROMPT_FILE = "prompt.npz"
PROMPT_ON_DISK = "prompt_on_disk"  # session.runtime key: (the PromptState prompt.npz holds, its token, packed base)
log = logging.getLogger(__name__)


def _alternatives_arrays(alternatives: tuple) -> dict[str, np.ndarray]:
    """A lone first click's candidates (mask, logits, score, box or None) as prompt.npz's arrays: the masks' bits,
    the logits, scores and boxes (NaN for none). Why: after a restart the ``Alternative`` choice of the object's first
    click was gone, its masks not saved."""
    masks = np.stack([np.asarray(a[0], bool) for a in alternatives])
    return {"alt_masks": np.packbits(masks), "alt_mask_shape": np.array(masks.shape),
            "alt_logits": np.stack([np.asarray(a[1], np.float32) for a in alternatives]),
            "alt_scores": np.array([float(a[2]) for a in alternatives]),
            "alt_boxes": np.array([a[3] if len(a) > 3 and a[3] is not None else (np.nan,) * 4 for a in alternatives],
                                  np.float64)}


def _alternatives_of(z, plane_shape: tuple[int, ...]) -> tuple:
    """The candidates :func:`_alternatives_arrays` wrote, () when there are none; ValueError when they are not of
    ``plane_shape`` or their counts differ (a damaged file)."""
    if "alt_masks" not in z.files:
        return ()
    shape = tuple(int(n) for n in z["alt_mask_shape"])
    n = shape[0]
    logits, scores, boxes = np.array(z["alt_logits"], np.float32), z["alt_scores"], z["alt_boxes"]
    if shape[1:] != tuple(plane_shape) or len(logits) != n or scores.shape != (n,) or boxes.shape != (n, 4):
        raise ValueError(f"its {n} alternatives are not of its plane {tuple(plane_shape)} or not one of each")
    masks = np.unpackbits(z["alt_masks"], count=int(np.prod(shape))).reshape(shape).astype(bool)
    return tuple((masks[i], logits[i], float(scores[i]),
                  None if np.isnan(boxes[i]).any() else tuple(float(v) for v in boxes[i])) for i in range(n))


def _check_logits(model: str, logits: list[np.ndarray | None]) -> None:
    """ValueError unless each of ``logits`` is the (1, side, side) finite low-res logits ``model``'s decoder takes back.
    Why: a damaged prompt.npz's were restored as they came, and the next click failed on them (the model refused the
    mask prompt) where the restore could have dropped the object."""
    from models.registry import get_spec  # torch: only once a prompt is restored

    side = get_spec(model).low_res_size
    for a in logits:
        if a is not None and (a.shape != (1, side, side) or not np.isfinite(a).all()):
            raise ValueError(f"its low-res logits are {a.shape}{'' if np.isfinite(a).all() else ', not all finite'};"
                             f" model {model} takes (1, {side}, {side})")


def _checked_name(name: str, unchanged: str | None = None) -> str:
    """A typed label name, stripped; SessionError past :data:`MAX_LABEL_NAME` characters (``unchanged``, the name the
    label already has, passes: a colour change sends it back, and a session saved before the bound kept it)."""
    name = str(name).strip()
    if (broken := LONE_SURROGATE.search(name)) is not None:  # half an emoji: no UTF-8 encoder takes it (page, SEG)
        raise SessionError(f"label name: not valid text (a broken character at position {broken.start() + 1}); "
                           "type the name again")
    if (flip := DIRECTION_CONTROL.search(name)) is not None and name != unchanged:
        # a right-to-left override in a name turned the rest of every line showing it backwards (the viewer's status
        # line read "Label 1: ba, .b4916e# ruoloc" after a rename), so a name could make the text around it lie
        raise SessionError(f"label name: an invisible text-direction control (U+{ord(flip.group()):04X}, often pasted "
                           f"with the text) at position {flip.start() + 1} would reorder the text shown after the "
                           "name; type the name again")
    if len(name) > MAX_LABEL_NAME and name != unchanged:
        raise SessionError(f"label name: at most {MAX_LABEL_NAME} characters (what a DICOM-SEG segment label holds), "
                           f"got {len(name)}")
    return name


def labels_signature(labels: np.ndarray) -> tuple:
    """Shape, dtype and CRC-32 of a label map: cheap next to compressing it (47 ms against 1.1 s for a
    300 x 512 x 512 map), so a save after paging or windowing, which leave the labels as they were, skips
    rewriting them."""
    return labels.shape, labels.dtype.str, zlib.crc32(np.ascontiguousarray(labels))


def _walking(session: Session) -> bool:
    """Whether a propagation of ``session`` runs now (``app.propagation_job``: its job in the session's runtime)."""
    job = session.runtime.get("propagation_job")
    return bool(job is not None and getattr(job, "running", False))


class SessionStore:
    """Sessions keyed by id, behind a lock; one folder each under ``root``.

    ``ttl_s``: a session untouched this long is deleted from disk by :meth:`cleanup`.
    ``max_in_memory``: least recently used sessions beyond this are dropped from memory (their
    files stay and they reload on the next request).
    """

    def __init__(self, root: str | Path, *, ttl_s: float = 14 * 86400, max_in_memory: int = 32):
        self.root = Path(root)
        self.ttl_s = float(ttl_s)
        self.max_in_memory = int(max_in_memory)
        self._sessions: dict[str, Session] = {}
        self._bound: dict[str, str] = {}  # Gradio session hash -> session id (for unload)
        self._lock = threading.Lock()
        self._later: dict[str, Session] = {}  # sessions whose full save is due (save_edit), oldest first
        self._saving: set[str] = set()
        self._later_cond = threading.Condition()
        self._saver: threading.Thread | None = None
        if self.root.is_dir():
            make_private(self.root)  # a folder an older medseg made 0755: its sessions become private now

    # --- lookup ------------------------------------------------------------------------------
    def create(self, sid: str | None = None) -> Session:
        """A new session; ``sid`` (from ``app.web_session.sid_of_token``) or a random id."""
        sid = sid or secrets.token_hex(16)
        if not SESSION_ID.match(sid):
            raise SessionError("malformed session id")
        directory = self.root / sid
        make_private(self.root)  # uploads are copied in with the umask's mode: this folder keeps them ours
        directory.mkdir(exist_ok=False)
        session = Session(id=sid, directory=directory)
        self.save(session)
        with self._lock:
            self._sessions[sid] = session
            self._evict_locked()
        return session

    def peek(self, sid: str) -> Session | None:
        """The session ``sid`` if it is in memory (no load, no change of its recency): for reports."""
        with self._lock:
            return self._sessions.get(sid)

    def get(self, sid: str) -> Session:
        """The session ``sid`` from memory, else from its folder. SessionError if malformed/unknown."""
        if not isinstance(sid, str) or not SESSION_ID.match(sid):
            raise SessionError("malformed session id: reload the page")
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None:
                self._sessions[sid] = self._sessions.pop(sid)  # most recently used last
                return session
        self.flush(sid)  # an evicted session's due save lands before its files are read
        session = self._load(sid)
        with self._lock:
            session = self._sessions.setdefault(sid, session)
            self._evict_locked()
        return session

    def open(self, sid: str | None) -> tuple[Session, bool]:
        """Restore ``sid`` if it exists, else start a new session under that id (a random one when
        ``sid`` is None). Returns (session, restored).

        A session whose folder exists but cannot be restored (a damaged state.json or labels.npz, its study
        gone) starts again empty under the same id, the browser's cookie keeps pointing at it; the old
        folder is set aside, not deleted, and the new session's ``runtime[UNRESTORED]`` says why.
        """
        reason = None
        if sid:
            try:
                return self.get(sid), True
            except SessionError as e:
                if not SESSION_ID.match(sid):
                    raise
                reason = str(e)
            if (self.root / sid).exists():
                self._set_aside(sid, reason)
        session = self.create(sid)
        if reason is not None and (self.root / UNRESTORED).is_dir():
            session.runtime[UNRESTORED] = reason
        return session, False

    def _set_aside(self, sid: str, reason: str) -> None:
        """Move a session folder that cannot be restored to ``<root>/.unrestored/<id>-<time>``: a damaged
        state.json or an unreadable study must not cost the user's labels (they were deleted here before).
        It expires with the session TTL (:meth:`cleanup`)."""
        aside = self.root / UNRESTORED / f"{sid}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        aside.parent.mkdir(exist_ok=True)
        with self._lock:
            self._sessions.pop(sid, None)
        os.replace(self.root / sid, aside)
        os.utime(aside)  # its age counts from now
        log.warning("session %s could not be restored (%s); its folder is kept in %s", sid, reason, aside)

    def exists(self, sid: str) -> bool:
        """A session with this id is in memory or saved (cheap: no study is read)."""
        if not isinstance(sid, str) or not SESSION_ID.match(sid):
            return False
        with self._lock:
            if sid in self._sessions:
                return True
        return (self.root / sid / "state.json").is_file()

    def bind(self, session_hash: str, sid: str) -> None:
        with self._lock:
            self._bound[session_hash] = sid

    def release(self, session_hash: str) -> None:
        """The page went away: drop the session's memory-heavy runtime, keep its files and work.

        That is the shown planes' embeddings (up to 96 MiB) and the study's (propagation; up to
        1 GiB), and the background study encoder is stopped: left running it would go on filling a
        cache nobody reads, for minutes of CPU. Both are rebuilt when a page shows the session again.
        """
        with self._lock:
            sid = self._bound.pop(session_hash, None)
            if sid is None or sid in self._bound.values():
                return  # another tab still shows it
            session = self._sessions.get(sid)
        if session is not None:
            with session.lock:
                for key in ("embeddings", "propagation_cache", "study_encoded"):
                    session.runtime.pop(key, None)
                encoder = session.runtime.pop("study_encoder", None)
                if encoder is not None:
                    encoder[1].set()  # (thread, stop event): app.propagation_job.encode_study

    def disk_bytes(self, sid: str | None = None) -> int:
        """Bytes under one session's folder, or under the whole store (``sid`` None)."""
        return folder_bytes(self.root / sid if sid else self.root)

    def in_memory(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    # --- disk --------------------------------------------------------------------------------
    def save(self, session: Session) -> None:
        """Atomically write labels first, then the state that refers to them (and the journal record it
        covers); then drop the journal if no record came after."""
        session.updated = time.time()
        seq = session.runtime.get(JOURNAL_SEQ, 0)
        for key, arrays in session.stashed.items():
            if arrays.pop("dirty", False):
                (session.directory / "studies").mkdir(exist_ok=True)
                with atomic_output(session.directory / "studies" / f"{key}.npz") as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, labels=np.asarray(arrays["labels"]))
        if session.labels is not None:
            signature = labels_signature(session.labels)
            if session.runtime.get(LABELS_ON_DISK) != signature:
                with atomic_output(session.directory / "labels.npz") as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, labels=session.labels)
                session.runtime[LABELS_ON_DISK] = signature
        with atomic_output(session.directory / "state.json") as tmp:
            # compact: json's C encoder serves only indent=None; with indent=1 the pure-Python one took ~5x as
            # long, and the prompt history grows with every click (py-spy, docs/benchmarks.md H)
            tmp.write_text(json.dumps({**session.to_json(), "journal_seq": seq, "prompt": self._prompt_json(session)},
                                      separators=(",", ":")))
        with self._later_cond:  # save_edit appends under this lock: no record is dropped unsaved
            if session.runtime.get(JOURNAL_SEQ, 0) == seq:
                save_journal.clear(session.directory)

    def save_edit(self, session: Session, edit: Edit) -> None:
        """The click path's save (``app.save_journal``): ``edit``'s plane and the session's state appended to
        the journal now, so the edit survives kill -9 once this returns; the full atomic save of
        :meth:`save` follows in the background, coalesced per session. An edit of the whole map saves now."""
        if edit.view is None or session.labels is None:
            self.save(session)
            return
        session.updated = time.time()
        prompt = self._prompt_json(session)  # its arrays on disk before the record that names them
        with self._later_cond:
            seq = session.runtime.get(JOURNAL_SEQ, 0) + 1
            save_journal.append(session.directory, seq, edit.view, int(edit.index), edit.after,
                                {**session.to_json(), "prompt": prompt})
            session.runtime[JOURNAL_SEQ] = seq
            self._queue_save_locked(session)

    def _prompt_json(self, session: Session) -> dict[str, Any] | None:
        """The object being refined, for the state (None without one); its arrays written to prompt.npz first when
        they are not there yet (a rename, no fsync: on the click path, as the journal's append)."""
        p = session.prompt
        if p is None or p.base is None or session.labels is None:
            session.runtime.pop(PROMPT_ON_DISK, None)
            return None
        on_disk = session.runtime.get(PROMPT_ON_DISK)
        if on_disk is None or on_disk[0] is not p:
            base = on_disk[2] if on_disk is not None and on_disk[0].base is p.base else pack(p.base)
            token = secrets.token_hex(8)
            arrays = {"token": np.array(token), "base": np.frombuffer(base.compressed, np.uint8),
                      "base_shape": np.array(base.shape), "base_dtype": np.array(base.dtype.str)}
            if p.logits is not None:
                arrays["logits"] = np.asarray(p.logits)
            if p.alternatives:
                arrays.update(_alternatives_arrays(p.alternatives))
            tmp = session.directory / f".{PROMPT_FILE}.{token}.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, session.directory / PROMPT_FILE)
            on_disk = (p, token, base)
            session.runtime[PROMPT_ON_DISK] = on_disk
        return {"view": p.view, "index": p.index, "label": p.label, "points": [list(q) for q in p.points],
                "point_labels": list(p.point_labels), "box": list(p.box) if p.box is not None else None,
                "corner": list(p.corner) if p.corner is not None else None, "arrays": on_disk[1],
                "chosen": p.chosen}

    def save_soon(self, session: Session) -> None:
        """A change of what is shown (slice, window), no annotation: saved in the background, coalesced per
        session. Paging a slice or dragging the window used to write and fsync state.json in the request
        itself; a kill -9 now may lose the last view, never an edit (the journal holds those)."""
        session.updated = time.time()
        with self._later_cond:
            self._queue_save_locked(session)

    def _queue_save_locked(self, session: Session) -> None:
        self._later[session.id] = session
        if self._saver is None or not self._saver.is_alive():
            self._saver = threading.Thread(target=self._save_later, name="medseg-autosave", daemon=True)
            self._saver.start()
        self._later_cond.notify_all()

    def flush(self, sid: str | None = None, timeout: float = 60.0) -> bool:
        """Wait until the background save of ``sid`` (of every session: None) is done; False on timeout."""
        def due() -> bool:
            return bool(self._later or self._saving) if sid is None else (sid in self._later or sid in self._saving)

        with self._later_cond:
            return self._later_cond.wait_for(lambda: not due(), timeout)

    def _save_later(self) -> None:
        while True:
            with self._later_cond:
                self._later_cond.wait_for(lambda: bool(self._later))
                sid = next(iter(self._later))
                session = self._later.pop(sid)
                self._saving.add(sid)
            try:
                with session.lock, trace.span("autosave"):
                    if session.directory.is_dir():  # not deleted meanwhile (cleanup, a new study's restart)
                        self.save(session)
            except Exception:  # noqa: BLE001 - the journal still holds the edits; the saver lives on
                log.exception("background save of a session failed; its edits stay in its journal")
            finally:
                with self._later_cond:
                    self._saving.discard(sid)
                    self._later_cond.notify_all()

    def _load(self, sid: str) -> Session:
        directory = self.root / sid
        state_file = directory / "state.json"
        if not state_file.is_file():
            raise SessionError("no saved session: reload the page")
        try:
            state = check_state(json.loads(state_file.read_text()))
        except (OSError, ValueError) as e:  # SessionError included: it names the field
            raise SessionError(e if isinstance(e, SessionError) else f"state.json: not readable JSON ({e})") from e
        records = [r for r in save_journal.read(directory) if r.seq > state.get("journal_seq", 0)]
        if records:  # the newest state
            state = check_state({**records[-1].state, "journal_seq": state.get("journal_seq", 0)}, "journal.bin")
        view = ViewState(**{k: v for k, v in state.get("view", {}).items() if k in ViewState.__dataclass_fields__})
        session = Session(
            id=sid,
            directory=directory,
            model=state.get("model", "litemedsam"),
            series_uid=state.get("series_uid"),
            allow_uneven=state.get("allow_uneven", False),
            study_name=state.get("study_name", ""),
            label_defs=[LabelDef(d["value"], d["name"], tuple(d["colour"])) for d in state.get("labels", [])],
            active=state.get("active", 1),
            view=view,
            history={int(k): v for k, v in state.get("history", {}).items()},
            studies=dict(state.get("studies", {})),
            updated=float(state.get("updated", time.time())),
        )
        study = state.get("study_path")
        if study:
            path = directory / study.removeprefix("@session/") if study.startswith("@session/") else Path(study)
            session.study_path = str(path)
            try:
                if path.is_relative_to(directory):  # the user's upload: read in a limited child
                    session.volume = read_untrusted(path, directory, series_uid=session.series_uid,
                                                    allow_uneven=session.allow_uneven)
                else:  # a bundled sample
                    session.volume = read_study(path, series_uid=session.series_uid, allow_uneven=session.allow_uneven)
            except StudyError as e:
                raise SessionError(f"the session's study can no longer be read ({e})") from e
            labels_file = directory / "labels.npz"
            if labels_file.is_file():
                try:
                    with np.load(labels_file) as z:
                        session.labels = z["labels"]
                except Exception as e:  # noqa: BLE001 - numpy and zipfile raise many types on a cut file
                    raise SessionError(f"labels.npz: not readable ({type(e).__name__}: {e})") from e
            if session.labels is None or session.labels.shape != session.volume.array.shape[:3]:
                session.labels = np.zeros(session.volume.array.shape[:3], dtype=np.uint16)
            for record in records:  # the edits acknowledged after the last full save (app.save_journal)
                try:
                    region = session.region(record.view, record.index)
                except (KeyError, IndexError, ValueError):
                    continue
                if region.shape == record.plane.shape:
                    region[...] = record.plane
            if state.get("prompt"):
                self._restore_prompt(session, state["prompt"])
        session.restore_anchors(state.get("anchors", {}))
        session.runtime[JOURNAL_SEQ] = max([int(state.get("journal_seq", 0)), *(r.seq for r in records)])
        return session

    def _restore_prompt(self, session: Session, meta: dict[str, Any]) -> None:
        """The object being refined, from the state's ``meta`` and prompt.npz; left out (a log line, the labels
        restored all the same: the next click starts a new object) when the file is not the one the state names."""
        try:
            with np.load(session.directory / PROMPT_FILE) as z:
                if str(z["token"]) != meta["arrays"]:
                    raise ValueError("prompt.npz holds another object than the state names (a crash between the two)")
                shape, dtype = tuple(int(n) for n in z["base_shape"]), np.dtype(str(z["base_dtype"]))
                base = PackedArray.from_compressed(z["base"].tobytes(), shape, dtype).unpack()
                logits = np.array(z["logits"], np.float32) if "logits" in z.files else None
                alternatives = _alternatives_of(z, shape)
            view, index, label = str(meta["view"]), int(meta["index"]), int(meta["label"])
            if index < 0:
                raise ValueError(f"slice {index}")
            region = session.region(view, index)
            if base.shape != region.shape or base.dtype != region.dtype or label not in session.colours():
                raise ValueError(f"its plane {base.shape} or label {label} is not the study's")
            points = tuple((float(x), float(y)) for x, y in meta["points"])
            point_labels = tuple(int(v) for v in meta["point_labels"])
            if len(points) != len(point_labels):
                raise ValueError("its points and their signs differ in number")
            _check_logits(session.model, [logits, *(a[1] for a in alternatives)])
            chosen = int(meta.get("chosen", 0))
            if alternatives and not 0 <= chosen < len(alternatives):
                raise ValueError(f"alternative {chosen} chosen of {len(alternatives)}")
            box, corner = meta.get("box"), meta.get("corner")
            session.prompt = PromptState(
                view=view, index=index, label=label, points=points, point_labels=point_labels,
                box=tuple(float(v) for v in box) if box is not None else None,  # type: ignore[arg-type]
                corner=tuple(float(v) for v in corner) if corner is not None else None,  # type: ignore[arg-type]
                base=base, logits=logits, alternatives=alternatives, chosen=chosen)
        except Exception as e:  # noqa: BLE001 - a damaged or mismatched file: the object goes, never the labels
            log.warning("session %s: the object being refined was not restored (%s: %s); the next click starts "
                        "a new one", session.id, type(e).__name__, e)
            return
        session.runtime[PROMPT_ON_DISK] = (session.prompt, meta["arrays"], pack(base))

    def cleanup(self, now: float | None = None) -> list[str]:
        """Delete sessions untouched for ``ttl_s`` (memory and disk); returns their ids."""
        now = time.time() if now is None else now
        removed = []
        if not self.root.is_dir():
            return removed
        for directory in self.root.iterdir():
            if not directory.is_dir() or not SESSION_ID.match(directory.name):
                continue
            state = directory / "state.json"
            try:
                age = now - state.stat().st_mtime
            except OSError:
                age = now - directory.stat().st_mtime
            if age > self.ttl_s:
                with self._lock:
                    self._sessions.pop(directory.name, None)
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory.name)
        aside = self.root / UNRESTORED
        for directory in aside.iterdir() if aside.is_dir() else ():
            with contextlib.suppress(OSError):
                if now - directory.stat().st_mtime > self.ttl_s:
                    shutil.rmtree(directory, ignore_errors=True)
        return removed

    def _evict_locked(self) -> None:
        """Drop the least recently used sessions beyond ``max_in_memory``, but never one whose propagation runs:
        its walk lands on this very object, and a copy loaded from disk meanwhile never got it (the page lost
        the job, its progress and its result). Such a session may hold the store above its bound for the walk."""
        while len(self._sessions) > self.max_in_memory:
            idle = next((sid for sid, s in self._sessions.items() if not _walking(s)), None)
            if idle is None:
                return
            self._sessions.pop(idle)
