"""Propagation in a session: anchors, a background job the study stays usable during, study encoding.

Why a module of its own: the UI (``app.controller``) and any other front end (MONAI Label's 3D
model) drive the same engine (``app.propagation``) through these few functions; the engine knows
nothing of sessions, threads or undo.

- Anchors: every slice of a label that the user prompted, corrected or accepted is an anchor
  (``session.runtime['anchors'][label]``); re-propagation keeps them and recomputes the rest.
- :class:`PropagationJob`: runs in a thread, taking the model one call at a time (clicks and
  slice browsing go on meanwhile), reports per slice, and lands as ONE undoable edit.
- :func:`encode_study`: encodes the study's stored slices in the background when it opens, in
  batches, into the session's propagation cache, only while no user request needs the model.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from app.embedding_cache import EMBEDDING_BYTES, EmbeddingCache, volume_key
from app.propagation import PropagationResult, PropagationSettings, repropagate
from app.propagation_defaults import default_propagation, rule_of
from app.session import ANCHORS, Edit, Session, SessionError

log = logging.getLogger(__name__)
EMBEDDING_BYTES_BUDGET = 1 << 30  # per session: 256 LiteMedSAM slices (4 MiB each) stay encoded


FILLS: tuple[str, ...] = ("shape", "model", "guided")
"""``PropagationSettings.fill`` values a user may pick (the UI's choice; the CLI's ``--fill``)."""


def anchors_of(session: Session, label: int) -> set[int]:
    """The anchor slices of ``label`` (stored-slice indices k)."""
    return session.runtime.setdefault(ANCHORS, {}).setdefault(int(label), set())


def add_anchor(session: Session, label: int, k: int) -> None:
    anchors_of(session, label).add(int(k))


def propagation_cache(session: Session) -> EmbeddingCache:
    """The session's embeddings of its stored slices, sized to keep the study (up to the budget).

    Every use marks the cache as recently used and makes room under the server-wide budget
    (:func:`make_room`): other sessions' study caches, least recently used first, are dropped.
    """
    cache = session.runtime.get("propagation_cache")
    n = session.require_study().num_slices
    want = max(8, min(n, EMBEDDING_BYTES_BUDGET // EMBEDDING_BYTES))
    if cache is None or cache.max_items < want:
        old = cache
        cache = EmbeddingCache(max_items=want, max_bytes=max(EMBEDDING_BYTES_BUDGET, 8 * EMBEDDING_BYTES))
        if old is not None:
            for key, emb in old.items():
                cache.put(key, emb)
        session.runtime["propagation_cache"] = cache
    with _live_lock:
        _live[cache] = time.monotonic()
    make_room(keep=cache)
    return cache


# --- the server-wide budget of study embeddings ---------------------------------------------------
# Why: each session may keep up to 1 GiB of its study encoded, and a server keeps 32 sessions in
# memory, so 20 users on long CTs would need ~20 GiB. Study embeddings are a cache (propagation
# encodes a missing slice again), so the server keeps at most MEDSEG_STUDY_EMBEDDINGS_MB of them in
# all, plus the working set of the session in use; the background encoder stops at the budget.
_live: "weakref.WeakKeyDictionary[EmbeddingCache, float]" = weakref.WeakKeyDictionary()  # cache -> last use
_live_lock = threading.Lock()


def budget_bytes() -> int:
    """Bytes of study embeddings all sessions together may keep (``MEDSEG_STUDY_EMBEDDINGS_MB``)."""
    from app.settings import get_settings

    return max(1, int(get_settings().study_embeddings_bytes))


def live_study_caches() -> list[EmbeddingCache]:
    """The study caches of all live sessions now."""
    with _live_lock:
        return list(_live)


def study_embeddings_held() -> int:
    """Study embeddings held by all live sessions' caches now."""
    return sum(len(c) for c in live_study_caches())


def study_bytes_held() -> int:
    """Bytes the study embeddings of all live sessions hold now (as the embeddings really hold them)."""
    return sum(c.nbytes for c in live_study_caches())


def make_room(keep: EmbeddingCache | None = None, need: int = 0) -> None:
    """Drop other sessions' study caches, least recently used first, until ``need`` more bytes fit the budget."""
    limit = budget_bytes()
    with _live_lock:
        caches = sorted(_live.items(), key=lambda item: item[1])
    total = sum(c.nbytes for c, _ in caches)
    for cache, _ in caches:
        if total + need <= limit:
            return
        if cache is not keep and len(cache):
            total -= cache.nbytes
            cache.clear()


class TurnTaking:
    """A segmenter seen through the app's model door: each model call takes one turn of ``runner``.

    So a long walk lets a click of the same (or another) session in between two slices."""

    def __init__(self, segmenter, runner):
        self._segmenter, self._runner = segmenter, runner

    def __getattr__(self, name: str):
        return getattr(self._segmenter, name)

    def embed_batch(self, images):
        with self._runner.turn():
            return self._segmenter.embed_batch(images)

    def predict(self, embedding, prompts, **kwargs):
        with self._runner.turn():
            return self._segmenter.predict(embedding, prompts, **kwargs)

    def predict_many(self, embeddings, prompts, **kwargs):
        with self._runner.turn():
            return self._segmenter.predict_many(embeddings, prompts, **kwargs)


@dataclass
class PropagationJob:
    """One propagation of one label, started from one slice; the UI polls its fields."""

    label: int
    start: int
    anchors: list[int]
    study: str | None = None  # the study key it walks: another may be open when it lands
    study_name: str = ""  # that study's name, for a status read while another is open
    total: int = 0
    done: int = 0
    message: str = "starting"
    rule: str = ""  # the rule it walks (``propagation_defaults.rule_of``): the default depends on the backend
    state: str = "running"  # running | done | failed | dropped (not applied: see :class:`Dropped`)
    finished: list[int] = field(default_factory=list)
    result: PropagationResult | None = None
    error: str | None = None
    # a Propagate of another start pressed while this one ran: said after its progress and its result. As a refusal
    # (an error, which the viewer keeps until the user acts) it hid this walk's progress and "Propagated to ..." for good
    not_started: str = ""
    # slices of its label the user edited while it ran: they stay as the user left them (the walk skips them)
    kept: list[int] = field(default_factory=list)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self, open_study: str | None = None) -> str:
        """One status line; ``open_study``: the key of the study open now (None: its own), so a job of a study
        the user left says where it runs or landed (there, not here, is where Undo reverts it)."""
        line = self._progress(open_study)
        return f"{line} {self.not_started}" if self.not_started else line

    def _progress(self, open_study: str | None) -> str:
        elsewhere = open_study is not None and self.study is not None and open_study != self.study
        if self.state == "running" and elsewhere:
            return (f"Propagating in {self.study_name}: {self.done}/{self.total} slices ({self.message}); "
                    "it lands there, and this study stays usable.")
        if self.state == "running":
            return f"Propagating: {self.done}/{self.total} slices ({self.message}). The study stays usable."
        if self.state == "done" and elsewhere:
            return (f"Propagated in {self.study_name}, not the study open now: open it to see it "
                    "(Undo there reverts it).")
        if self.state == "failed":
            return f"Propagation failed: {self.error}"
        if self.state == "dropped":
            return f"Propagation not applied: {self.error}"
        reached = self.result.slices if self.result else []
        span = f"slices {reached[0]}..{reached[-1]}" if reached else "no slice"
        why = ", ".join(f"{d}: {r}" for d, r in (self.result.stopped if self.result else {}).items())
        rule = f" (rule: {self.rule})" if self.rule else ""
        return f"Propagated to {span} ({why}){rule}.{self._kept_phrase()} Undo reverts the whole propagation."

    def _kept_phrase(self) -> str:
        """The slices the walk left as the user edited them while it ran: "Propagated to slices 0..11" alone
        claimed them, and the user who corrected slice 8 meanwhile found the structure missing there."""
        if not self.kept:
            return ""
        if len(self.kept) == 1:
            return f" Slice {self.kept[0]}, edited while it ran, is kept as you left it (not propagated there)."
        return (f" Slices {', '.join(map(str, self.kept))}, edited while it ran, are kept as you left them "
                "(not propagated there).")


def job_of(session: Session) -> PropagationJob | None:
    return session.runtime.get("propagation_job")


def start_propagation(
    runner, session: Session, k: int, *, settings: PropagationSettings | None = None,
    on_done: Callable[[Session], None] | None = None, background: bool = True,
    observe: Callable[[PropagationJob], None] | None = None, fill: str | None = None,
) -> PropagationJob:
    """Propagate the active label from stored slice ``k`` keeping its anchors; one undoable edit at the end.

    ``on_done(session)`` runs after the edit landed (the controller saves the session there).
    With ``background=False`` the walk runs in the calling thread (the CLI-like path, tests).
    ``observe(job)`` is called after each slice, outside any lock (a UI push, a test's gate).
    ``settings``: None = the default rule of the backend the model runs with (``app.propagation_defaults``).
    ``fill``: how the slices between anchors are filled, over ``settings`` (``PropagationSettings.fill``; the UI's
    "Fill between corrected slices"); None keeps the settings' own.
    """
    from app.interaction import model_window
    from app.render import acquisition_view

    if fill is not None and fill not in FILLS:  # before anything is recorded: a refused start leaves no job behind
        raise SessionError(f"fill between slices must be one of {', '.join(FILLS)}, got {fill!r}")
    volume = session.require_study()
    label = session.active
    current = job_of(session)
    if current is not None and current.running:
        where = "this study" if current.study == session.study_key else current.study_name
        raise SessionError(f"a propagation of {_label_name(session, current)} is already running in {where}: "
                           "wait for it (progress is shown)")
    if not (session.labels[k] == label).any():
        raise SessionError(f"slice {k} holds nothing of {session.label(label).name}: segment or draw it first")
    add_anchor(session, label, k)
    job = PropagationJob(label=label, start=int(k), anchors=sorted(anchors_of(session, label)), study=session.study_key,
                         study_name=session.study_name)
    session.runtime["propagation_job"] = job
    before = session.labels.copy()
    if settings is None:
        settings = default_propagation(runner.backend_choice(session.model).backend)
    if fill is not None:
        settings = replace(settings, fill=fill)
    segmenter = TurnTaking(runner.segmenter(session.model), runner)
    job.rule = rule_of(settings, segmenter)
    window, cache = model_window(session), propagation_cache(session)
    # the model's own answer to the last prompt on the start slice, as the CLI's walk from a box hands it on
    # (propagation.repropagate takes it only where the label's pixels are still exactly its mask)
    p = session.prompt
    seeded = (p is not None and p.logits is not None and p.label == label
              and p.same_target(acquisition_view(volume), int(k), label))
    start_logits = p.logits if seeded else None
    start_yardstick = not (seeded and p.points)  # clicks went through the click model: no yardstick (propagation)

    def progress(done: int, total: int, message: str) -> None:
        job.done, job.total, job.message = done, total, message
        make_room(keep=cache)  # this study grows: others' least recently used study caches make room
        if observe is not None:
            observe(job)

    def work() -> None:
        try:
            new, result = repropagate(
                segmenter, volume, before, job.start, label, anchors=job.anchors, window=window, cache=cache,
                settings=settings, progress=progress, on_slice=lambda kk, _m: job.finished.append(int(kk)),
                start_logits=start_logits, start_yardstick=start_yardstick,
            )
            with session.lock:
                _land(session, job, before, new)
            job.result = result
            job.state = "done"
            if on_done is not None:
                on_done(session)
        except Dropped as e:  # the user's own doing, not a fault: one line, no traceback in the log
            log.info("propagation not applied: %s", e)
            job.error, job.state = str(e), "dropped"
        except Exception as e:  # noqa: BLE001 - a background job reports, it never kills the server
            log.exception("propagation failed")
            job.error, job.state = (str(e) if isinstance(e, (ValueError, SessionError)) else type(e).__name__), "failed"

    if background:
        job.thread = threading.Thread(target=work, name="medseg-propagate", daemon=True)
        job.thread.start()
    else:
        work()
    return job


class Dropped(SessionError):
    """The walk ended but is not applied: the user removed its start slice meanwhile (Clear label, Undo)."""


def _land(session: Session, job: PropagationJob, before: np.ndarray, new: np.ndarray) -> None:
    """Apply the walk as one edit on the map as it is NOW: the job's label is replaced by the walk's,
    except on slices where the user changed that label meanwhile (those stay theirs and become anchors);
    other labels, drawn meanwhile or not, are never overwritten. When the user opened another study
    meanwhile, the edit goes to the walked study's kept work (it had landed on the open study)."""
    label = job.label
    kept = job.study is not None and job.study != session.study_key  # the user opened another study meanwhile
    current = session.kept_labels(job.study) if kept else session.labels
    if current is None:
        raise SessionError("its study was closed before it ended: propagate again")
    if not (current[job.start] == label).any():  # Clear label or Undo of the seed while it ran: the user wants it gone
        name = _label_name(session, job)
        raise Dropped(f"{name} was removed from slice {job.start}, where it started, while it ran (Clear label or "
                      "Undo); nothing changed. Draw it and propagate again if you want it.")
    touched = ((current == label) != (before == label)).reshape(len(current), -1).any(axis=1)
    job.kept = [int(k) for k in np.flatnonzero(touched)]
    after = current.copy()
    walked = ~touched[:, None, None]
    after[walked & (after == label)] = 0
    after[walked & (new == label) & (after == 0)] = label
    if kept:  # its own study gets the edit (undoable there); the open one is not touched
        meta = session.studies.get(job.study, {})
        mine = {int(k) for k in meta.get("anchors", {}).get(str(label), [])}
        mine |= {int(k) for k in np.flatnonzero(touched) if (current[k] == label).any()}
        meta.setdefault("anchors", {})[str(label)] = sorted(mine)
        name = _label_name(session, job)
        session.apply_kept(job.study, Edit(f"propagate {name}", None, None, current.copy(), after, None, None))
        return
    for k in np.flatnonzero(touched):
        if (current[k] == label).any():
            add_anchor(session, label, int(k))
    edit = Edit(f"propagate {session.label(label).name}", None, None, current.copy(), after, session.prompt, None)
    session.apply(edit)


def _label_name(session: Session, job: PropagationJob) -> str:
    """The name of the job's label, in the open study or (opened another meanwhile) in its own study's kept table."""
    if job.study is None or job.study == session.study_key:
        return session.label(job.label).name
    defs = session.studies.get(job.study, {}).get("labels", [])
    return next((d["name"] for d in defs if d["value"] == job.label), f"label {job.label}")


def encode_study(runner, session: Session, *, batch_size: int | None = None, stop: threading.Event | None = None) -> threading.Thread:
    """Encode every stored slice of the study into :func:`propagation_cache`, outward from the shown slice,
    in a daemon thread that steps aside whenever a user request needs the model.

    A user's click waits for at most one chunk, so on the CPU a chunk is one slice (a batch of four
    held a click for four encodes, 20-40 s on a loaded 2-core machine); a GPU batches four."""
    if batch_size is None:
        batch_size = 1 if str(getattr(runner, "device", "cpu")).startswith("cpu") else 4
    from app.interaction import BackgroundStopped, model_window
    from app.render import acquisition_view

    volume = session.require_study()
    model, cache, window = session.model, propagation_cache(session), model_window(session)
    vkey = volume_key(volume)
    k0 = session.view.index.get(acquisition_view(volume), 0)
    order = sorted(range(volume.num_slices), key=lambda k: (abs(k - k0), k))[: cache.max_items]
    stop = stop or threading.Event()

    def work() -> None:
        segmenter = runner.segmenter(model)
        if getattr(segmenter, "memory_tracking", False):
            return  # SAM 2 propagates with its own per-frame features (app/propagation_memory.py), not these
        todo = list(order)
        while todo and not stop.is_set():
            if session.volume is not volume or session.model != model:
                return  # another study or model: this work is moot
            each = cache.nbytes // len(cache) if len(cache) else EMBEDDING_BYTES
            if study_bytes_held() + each * min(batch_size, len(todo)) > budget_bytes():
                return  # the server-wide budget is full: encoding ahead is a nicety, not worth evicting for
            try:
                with runner.background() as got:
                    if not got:
                        stop.wait(0.05)
                        continue
                    chunk = todo[:batch_size]
                    cache.embeddings(segmenter, volume, chunk, window, vkey=vkey, batch_size=batch_size)
                    todo = todo[batch_size:]
            except BackgroundStopped:
                continue  # a user request came: the chunk is done again when the user is idle
            except Exception:  # noqa: BLE001 - a background nicety must never take the server down
                log.exception("study encoding failed")
                return

    thread = threading.Thread(target=work, name="medseg-encode-study", daemon=True)
    thread.start()
    session.runtime["study_encoder"] = (thread, stop)
    return thread
