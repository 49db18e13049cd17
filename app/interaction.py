"""Prompting on a plane: clicks, boxes and masks become :class:`Prompts`; results become edits.

The interaction protocol (``DESIGN.md``): the first prompt may be a box, a click or a mask; each
later click on the same object adds a point and feeds back the previous low-resolution logits,
as SAM's interactive loop does. A lone first click is ambiguous (part or whole?), so it asks for
the model's candidates, keeps the one with the best predicted IoU and offers the others; for
LiteMedSAM, trained with boxes only, they are boxes of several sizes around the click
(``models.point_prompts``, see ``_first_click_candidates``).

Model work goes through one :class:`ModelRunner` (a lock shared by user requests and the
background :class:`Prefetcher`); embeddings are cached per session, per plane.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import replace
from typing import Iterator

import numpy as np

from app import heap, trace
from app.embedding_cache import EMBEDDING_BYTES, EmbeddingCache
from app.model_catalog import backend_for, load_model
from app.render import Plane, to_rgb
from app.session import Edit, PromptState, Session, SessionError
from data.windowing import Window, default_window
from models import decode_many
from models.click_suggest import Suggestion, suggest_from_logits
from models.point_prompts import predict_points
from models.prompts import MaskResult, PromptError, Prompts, check_box_area
from models.segmenter import Embedding, Segmenter

log = logging.getLogger(__name__)
EMBEDDINGS_PER_SESSION = 24  # LiteMedSAM: 4 MiB each
MIN_CANDIDATE_PX = 10  # a multimask candidate smaller than this is "nothing"


class PlaneEmbeddings(EmbeddingCache):
    """LRU cache of one session's embeddings keyed by (model, view, index): at most
    ``EMBEDDINGS_PER_SESSION`` of them and the bytes of that many LiteMedSAM embeddings (96 MiB), counted
    as the embeddings really hold them (a model with extra feature maps keeps fewer)."""

    def __init__(self, max_items: int = EMBEDDINGS_PER_SESSION, max_bytes: int | None = None):
        super().__init__(max_items, EMBEDDINGS_PER_SESSION * EMBEDDING_BYTES if max_bytes is None else max_bytes)


def embeddings_of(session: Session) -> PlaneEmbeddings:
    return session.runtime.setdefault("embeddings", PlaneEmbeddings())


def model_window(session: Session) -> Window | None:
    """The study's default window (what the model sees), computed once per study."""
    if "model_window" not in session.runtime:
        session.runtime["model_window"] = default_window(session.require_study())
    return session.runtime["model_window"]


def plane_image(session: Session, view: str, index: int) -> np.ndarray:
    """(H, W, 3) uint8 model input of one plane (the study's default window, not the display's)."""
    volume = session.require_study()
    return to_rgb(np.ascontiguousarray(Plane.of(volume, view).extract(volume.array, index)), model_window(session))


class BackgroundStopped(Exception):
    """A user request came while background work held the model, and stopped it (:meth:`ModelRunner.background`)."""


class ModelRunner:
    """The one door to the models: a lock so that one model call runs at a time.

    Weights come from ``app.model_catalog.load_model`` (cached per process, shared read-only). ``busy`` counts
    user requests waiting or running, so the prefetcher steps aside for them.

    With ``batch_window_ms`` > 0 (a GPU server, ``medseg serve --batch-window-ms``) user requests no longer take
    the lock: their encodes go through one :class:`app.encode_batcher.EncodeBatcher` and their prompts through
    one :class:`app.decode_batcher.DecodeBatcher` (sessions' requests batched, served round-robin), the latter
    only for a model whose decoder can batch (:meth:`batches_decodes`). Background work still takes turns.
    """

    def __init__(
        self, device: str = "cpu", idle_after_s: float = 0.5, backend: str | None = None, batch_window_ms: float = 0.0
    ):
        self.device = device
        self.backend = backend  # None or "auto": $MEDSEG_BACKEND or the rule (runtime.backend_choice)
        self.batcher = None
        self.decode_batcher = None
        if batch_window_ms > 0:
            from app.decode_batcher import DecodeBatcher
            from app.encode_batcher import EncodeBatcher

            self.batcher = EncodeBatcher(self.segmenter, window_s=batch_window_ms / 1000.0)
            self.decode_batcher = DecodeBatcher(self.segmenter, window_s=batch_window_ms / 1000.0)
        self.idle_after_s = idle_after_s
        self._lock = threading.Lock()
        self._waiting = 0
        self._last_user = -math.inf  # no user request yet (0.0 read as one at boot: busy for idle_after_s after it)
        self._count_lock = threading.Lock()
        self._stop_background = None  # stops the background work in flight, while there is some

    def segmenter(self, name: str) -> Segmenter:
        """A registry model or an adapter (``app.model_catalog``), loaded once per process."""
        return load_model(name, self.device, self.backend)

    def backend_choice(self, name: str):
        """Which backend ``name`` runs with here and why (for the status line)."""
        return backend_for(name, self.device, self.backend)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the model for a user request."""
        with self._count_lock:
            self._waiting += 1
            stop = self._stop_background
        if stop is not None:
            stop()  # a user never waits for a background encode to finish: it stops at its next node (ONNX)
        try:
            with contextlib.nullcontext() if self.batcher is not None else self._lock:
                yield
        finally:
            with self._count_lock:
                self._waiting -= 1
                self._last_user = time.monotonic()
            heap.trim()  # the model call's freed activations go back to the system (app/heap.py)

    @property
    def busy(self) -> bool:
        """A user request is waiting or running, or one ended less than ``idle_after_s`` ago."""
        return self._waiting > 0 or time.monotonic() - self._last_user < self.idle_after_s

    def try_background_turn(self) -> bool:
        """Take the model for background work only if no user request is waiting (release after)."""
        if self.busy:
            return False
        return self._lock.acquire(blocking=False)

    def release_background_turn(self) -> None:
        self._lock.release()
        heap.trim()

    @contextlib.contextmanager
    def background(self) -> Iterator[bool]:
        """Hold the model for background work: yields False when a user request needs it (do it later).

        A user request that comes while the work runs stops the work's ONNX Runtime runs at their next node
        (``runtime.onnx_backend.stoppable_runs``); the work then raises :class:`BackgroundStopped` here, and
        the user's request takes the model at once instead of waiting for a whole slice encode (seconds on a
        CPU). A torch encoder cannot be stopped midway: the request waits for it, as before."""
        if not self.try_background_turn():
            yield False
            return
        from runtime.onnx_backend import stoppable_runs

        stopped = threading.Event()
        try:
            with stoppable_runs() as stop_runs:

                def stop() -> None:
                    stopped.set()
                    stop_runs()

                with self._count_lock:
                    late = self._waiting > 0  # a request came between the turn and here: leave it the model
                    if not late:
                        self._stop_background = stop
                if late:
                    yield False
                    return
                try:
                    yield True
                except Exception as e:
                    if stopped.is_set():
                        raise BackgroundStopped("a user request came first") from e
                    raise
                finally:
                    with self._count_lock:
                        self._stop_background = None
        finally:
            self.release_background_turn()

    def embedding(self, session: Session, view: str, index: int) -> Embedding:
        """The plane's embedding from the session cache, encoding it on a miss (caller holds a turn)."""
        key = (session.model, view, int(index))
        cache = embeddings_of(session)
        hit = cache.get(key)
        if hit is None:
            image = plane_image(session, view, index)
            if self.batcher is not None:
                hit = self.batcher.embed(session.id, session.model, image)
            else:
                hit = self.segmenter(session.model).embed(image)
            cache.put(key, hit)
        return hit

    def batches_decodes(self, model: str) -> bool:
        """Whether ``model``'s prompts go through the decode batcher: only where the runner batches and the
        model's decoder can serve several requests in one call (:func:`models.decode_many.batches`).

        Why: where it cannot (decoders replayed as CUDA graphs, ``torch-fp16``; ONNX decoders), the batcher's
        worker would answer its requests one by one anyway, adding only the hand-off and the sessions' threads
        contending for the GIL: on one H100, 20 sessions clicking every 0.3 s had a click p95 of 50-94 ms through
        the batcher against 23-37 ms one at a time (docs/benchmarks.md, section H). Such prompts go straight to
        the model, as with ``batch_window_ms`` 0 (without the runner's lock: encodes may still be batched)."""
        return self.decode_batcher is not None and decode_many.batches(self.segmenter(model))

    def serving(self, model: str) -> str:
        """One line on how ``model``'s requests are served here, for the server's start-up message."""
        if self.decode_batcher is None:
            return "model calls one at a time"
        window = f"{self.decode_batcher.window_s * 1000:g} ms"
        if self.batches_decodes(model):
            return f"sessions' encodes and prompts batched within {window}"
        return (f"sessions' encodes batched within {window}; prompts one at a time ({model}'s decoder, "
                f"{self.backend_choice(model).backend}, cannot batch them)")

    def predict(self, session: Session, embedding: Embedding, prompts: Prompts, multimask: bool = False) -> MaskResult:
        """The session model's answer to ``prompts`` (caller holds a turn): batched with other sessions'
        prompts where :meth:`batches_decodes`, else the segmenter's own ``predict``."""
        if self.batches_decodes(session.model):
            return self.decode_batcher.predict(session.id, session.model, embedding, prompts, multimask)
        return self.segmenter(session.model).predict(embedding, prompts, multimask_output=multimask)


class Prefetcher:
    """Encodes neighbouring planes in a background thread while no user request needs the model.

    Started lazily on the first request (importing does nothing); one daemon thread per app.
    A new request for a session replaces its older one (only the current neighbourhood matters).
    """

    def __init__(self, runner: ModelRunner, radius: int = 1):
        self.runner = runner
        self.radius = radius
        self._jobs: "queue.Queue[tuple[Session, str, int, str]]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: set[tuple[str, str, str, int]] = set()  # queued (session, model, view, index), once each
        self._pending_lock = threading.Lock()
        self.done = 0

    def neighbours(self, session: Session, view: str, index: int) -> list[int]:
        n = Plane.of(session.require_study(), view).count(session.labels.shape)
        out = []
        for d in range(1, self.radius + 1):
            out += [i for i in (index + d, index - d) if 0 <= i < n]
        return out

    def request(self, session: Session, view: str, index: int) -> None:
        if self.radius <= 0 or session.volume is None:
            return
        for i in self.neighbours(session, view, index):
            key = (session.id, session.model, view, i)
            if (session.model, view, i) in embeddings_of(session):
                continue
            with self._pending_lock:  # under sustained load the queue never drains: queue each plane once
                if key in self._pending:
                    continue
                self._pending.add(key)
            self._jobs.put((session, view, i, session.model, session.volume))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="medseg-prefetch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def idle(self) -> bool:
        return self._jobs.unfinished_tasks == 0

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                session, view, index, model, volume = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._one(session, view, index, model, volume)
            except Exception:  # a background nicety must never take the server down
                if session.volume is volume:
                    log.exception("prefetch of %s %d failed", view, index)
                else:  # the study changed under it: the job is moot, not a fault
                    log.debug("prefetch of %s %d dropped: the study changed", view, index)
            finally:
                with self._pending_lock:
                    self._pending.discard((session.id, model, view, index))
                self._jobs.task_done()

    def _one(self, session: Session, view: str, index: int, model: str, volume=None) -> None:
        while not self._stop.is_set():
            if session.model != model or session.volume is None or (model, view, index) in embeddings_of(session):
                return
            if volume is not None and session.volume is not volume:
                return  # another study was opened since the request
            try:
                with self.runner.background() as got:
                    if got:
                        self.runner.embedding(session, view, index)
                        self.done += 1
                        return
            except BackgroundStopped:
                pass  # a click came: try again once the user is idle
            self._stop.wait(0.05)


# --- prompts -> results -> edits --------------------------------------------------------------
def new_prompt(session: Session, view: str, index: int) -> PromptState:
    """Start a new object on the plane, remembering the plane as it is now."""
    base = np.array(session.region(view, index), copy=True)
    return PromptState(view=view, index=index, label=session.active, base=base)


def current_prompt(session: Session, view: str, index: int) -> PromptState:
    """The object being refined on this plane and label, or a new one."""
    p = session.prompt
    if p is not None and p.base is not None and p.same_target(view, index, session.active):
        return p
    return new_prompt(session, view, index)


def to_prompts(p: PromptState) -> Prompts:
    points = np.asarray(p.points, dtype=np.float32).reshape(-1, 2) if p.points else None
    labels = np.asarray(p.point_labels, dtype=np.int64) if p.points else None
    return Prompts(points=points, point_labels=labels, box=p.box, mask_logits=p.logits)


def merged_plane(base: np.ndarray, mask: np.ndarray, label: int) -> np.ndarray:
    """``base`` with ``mask`` painted as ``label`` where ``base`` is empty.

    ``base`` is the plane before this object started, so everything on it stays: other labels
    and the label's other objects (a second object never erases the first).
    """
    out = np.array(base, copy=True)
    out[np.asarray(mask, bool) & (out == 0)] = label
    return out


def erase(session: Session, mask: np.ndarray) -> Edit:
    """Remove the active label under ``mask`` on the current plane (other labels are untouched)."""
    view, index = session.view.view, session.view.index[session.view.view]
    region = session.region(view, index)
    mask = np.asarray(mask, bool)
    if mask.shape != region.shape:
        raise PromptError(f"the eraser mask is {mask.shape[1]}x{mask.shape[0]}; this plane is "
                          f"{region.shape[1]}x{region.shape[0]}")
    after = np.where(mask & (region == session.active), 0, region).astype(region.dtype)
    edit = Edit("erase", view, index, np.array(region, copy=True), after, session.prompt, None)
    session.apply(edit, kind="erase")
    return edit


def _edit(session: Session, before_prompt: PromptState | None, after: PromptState, mask: np.ndarray, what: str) -> Edit:
    region = session.region(after.view, after.index)
    return Edit(
        description=what,
        view=after.view,
        index=after.index,
        before=np.array(region, copy=True),
        after=merged_plane(after.base, mask, after.label),
        prompt_before=before_prompt,
        prompt_after=after,
    )


def click(runner: ModelRunner, session: Session, x: float, y: float, positive: bool) -> Edit:
    """A click at plane pixel (x, y): refine the current object, or start one (multimask)."""
    view, index = session.view.view, session.view.index[session.view.view]
    before = session.prompt
    p = current_prompt(session, view, index)
    if p.corner is not None:
        p = PromptState(view=view, index=index, label=p.label, points=p.points, point_labels=p.point_labels,
                        box=p.box, base=p.base, logits=p.logits)  # a click cancels a half-drawn box
    if not p.points and p.box is None and p.logits is None and not positive:
        raise PromptError("start an object with a positive click, a box or a mask; a negative click only refines")
    points = p.points + ((float(x), float(y)),)
    point_labels = p.point_labels + (1 if positive else 0,)
    p = PromptState(view=view, index=index, label=p.label, points=points, point_labels=point_labels,
                    box=p.box, base=p.base, logits=p.logits)
    ambiguous = len(points) == 1 and p.box is None and p.logits is None
    if ambiguous:
        candidates = _first_click_candidates(runner, session, p)
        best = int(np.argmax([c[2] for c in candidates]))
        mask, logits, _, box = candidates[best]
        after = PromptState(view=view, index=index, label=p.label, points=points, point_labels=point_labels, box=box,
                            base=p.base, logits=logits, alternatives=tuple(candidates), chosen=best)
    else:
        result = _predict(runner, session, p, multimask=False)
        best = result.best_index
        mask = result.masks[best]
        after = PromptState(view=view, index=index, label=p.label, points=points, point_labels=point_labels,
                            box=p.box, base=p.base, logits=result.low_res_logits[best][None])
    edit = _edit(session, before, after, mask, f"{'positive' if positive else 'negative'} click")
    session.apply(edit, kind="click+" if positive else "click-")
    return edit


def box_click(runner: ModelRunner, session: Session, x: float, y: float) -> Edit | None:
    """First call remembers a corner; the second draws the box and segments (a new object)."""
    view, index = session.view.view, session.view.index[session.view.view]
    p = session.prompt
    if p is None or p.corner is None or not p.same_target(view, index, session.active):
        fresh = new_prompt(session, view, index)
        session.prompt = PromptState(view=view, index=index, label=session.active, corner=(float(x), float(y)),
                                     base=fresh.base)
        return None
    (xa, ya), before = p.corner, _without_corner(p)
    box = (min(xa, x), min(ya, y), max(xa, x), max(ya, y))
    return box_prompt(runner, session, box, before=before)


def _without_corner(p: PromptState) -> PromptState | None:
    """The prompt state an undo of a box goes back to: none if only the corner was set."""
    return None if not p.points and p.box is None and p.logits is None else p


_CURRENT = PromptState(view="", index=-1, label=-1)  # box_prompt's default: undo goes back to session.prompt


def box_prompt(
    runner: ModelRunner,
    session: Session,
    box: tuple[float, float, float, float],
    *,
    before: PromptState | None = _CURRENT,
) -> Edit:
    """Segment from a box (x0, y0, x1, y1) on the current plane: starts a new object.

    ``before`` is the prompt state its undo restores: the session's by default; ``None`` (a box drawn from a
    lone corner) is kept as None, so a click after the undo starts a new box rather than finishing the old one.
    """
    check_box_area(box)
    view, index = session.view.view, session.view.index[session.view.view]
    before = session.prompt if before is _CURRENT else before
    base = new_prompt(session, view, index).base
    p = PromptState(view=view, index=index, label=session.active, box=tuple(float(v) for v in box), base=base)
    result = _predict(runner, session, p, multimask=False)
    after = PromptState(view=view, index=index, label=p.label, box=p.box, base=base,
                        logits=result.low_res_logits[result.best_index][None])
    edit = _edit(session, before, after, result.best_mask, "box")
    session.apply(edit, kind="box")
    return edit


def mask_prompt(runner: ModelRunner, session: Session, mask: np.ndarray, *, use_model: bool = True) -> Edit:
    """A drawn or uploaded (H, W) mask on the current plane: paint it, or prompt the model with it.

    As a prompt it gives both the mask (as logits) and its bounding box: LiteMedSAM was trained
    with boxes, and the box keeps the result where the user drew.
    """
    view, index = session.view.view, session.view.index[session.view.view]
    mask = np.asarray(mask, bool)
    plane_hw = session.region(view, index).shape
    if mask.shape != plane_hw:
        raise PromptError(
            f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels; this plane is {plane_hw[1]}x{plane_hw[0]}"
        )
    if not mask.any():
        raise PromptError("the mask is empty: paint over the structure first")
    before = session.prompt
    base = new_prompt(session, view, index).base
    if not use_model:  # the paint is an object of its own: a click after it starts the next one on top of it
        after = PromptState(view=view, index=index, label=session.active, base=merged_plane(base, mask, session.active))
        edit = _edit(session, before, after, mask, "paint")
        session.apply(edit, kind="paint")
        return edit
    rows, cols = np.nonzero(mask)
    box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    segmenter = runner.segmenter(session.model)
    p = PromptState(view=view, index=index, label=session.active, box=box, base=base,
                    logits=segmenter.mask_prompt_from_mask(mask))
    result = _predict(runner, session, p, multimask=False)
    after = PromptState(view=view, index=index, label=p.label, box=box, base=base,
                        logits=result.low_res_logits[result.best_index][None])
    edit = _edit(session, before, after, result.best_mask, "mask prompt")
    session.apply(edit, kind="mask")
    return edit


def choose_alternative(session: Session, which: int) -> Edit:
    """Swap the result of an ambiguous first click for multimask candidate ``which``."""
    p = session.prompt
    if p is None or not p.alternatives:
        raise PromptError("no alternatives to choose from: they exist only after a lone first click")
    if not 0 <= which < len(p.alternatives):
        raise PromptError(f"alternative {which + 1} does not exist; choose 1..{len(p.alternatives)}")
    mask, logits, _, box = p.alternatives[which]
    after = PromptState(view=p.view, index=p.index, label=p.label, points=p.points, point_labels=p.point_labels,
                        box=box, base=p.base, logits=logits, alternatives=p.alternatives, chosen=which)
    edit = _edit(session, p, after, mask, f"alternative {which + 1}")
    session.apply(edit)
    return edit


def _first_click_candidates(runner: ModelRunner, session: Session, p: PromptState) -> list[tuple]:
    """Candidates for a lone first click: (mask, logits (1, h, w), predicted IoU, box or None), best first not implied.

    A lone point is ambiguous (part or whole?). Its answer is the model's: LiteMedSAM with its click
    model answers points alone with ``models.point_prompts`` (boxes of several physical sizes around
    the click, chosen by the base decoder's predicted IoU, refined by the click model), the same
    function ``medseg eval --protocol points:N`` and ``medseg segment --point`` reach; every candidate
    comes back, so the other sizes are the alternatives. SAM-style models give their three multimask
    outputs; where every one is smaller than ``MIN_CANDIDATE_PX`` (a box-trained model without the
    click model: ``litemedsam-base``), the candidates come from ``point_prompts.predict_points`` too.
    """
    result = _predict(runner, session, p, multimask=True)
    if result.boxes is None and max(int(m.sum()) for m in result.masks) < MIN_CANDIDATE_PX:
        prompts = _prompts_of(session, p)
        with runner.turn():
            embedding = runner.embedding(session, p.view, p.index)
            result = predict_points(runner.segmenter(session.model), embedding, prompts, True)
    candidates = []
    for i in range(len(result.masks)):
        score = float(result.scores[i]) if np.isfinite(result.scores[i]) else 0.0
        box = None if result.boxes is None else tuple(float(v) for v in result.boxes[i])
        candidates.append((result.masks[i], result.low_res_logits[i][None], score, box))
    return candidates


def _prompts_of(session: Session, p: PromptState) -> Prompts:
    """The model's prompts for ``p``, with the plane's pixel spacing (points alone become boxes in mm)."""
    volume = session.require_study()
    return replace(to_prompts(p), pixel_spacing=Plane.of(volume, p.view).spacing(volume))


def suggest(runner: ModelRunner, session: Session) -> Suggestion | None:
    """Where the current object's answer is least sure, on its plane (issue 18's "where to click next";
    ``models.click_suggest``, from the prompt's stored logits: no model call). Opt-in in the viewer: on the
    shared set a click there gained less than one at the centre of the largest error, which the user sees
    (docs/clicks.md). None without an answered prompt or where the model is sure everywhere."""
    p = session.prompt
    if p is None or p.logits is None or p.corner is not None:
        return None
    with runner.turn():
        embedding = runner.embedding(session, p.view, p.index)
        return suggest_from_logits(runner.segmenter(session.model), embedding, p.logits)


def _predict(runner: ModelRunner, session: Session, p: PromptState, *, multimask: bool) -> MaskResult:
    if p.base is None:
        raise SessionError("internal: a prompt without its base plane")
    prompts = _prompts_of(session, p)
    with runner.turn():
        trace.mark("decode.turn")
        embedding = runner.embedding(session, p.view, p.index)
        with trace.span("decode"):
            return runner.predict(session, embedding, prompts, multimask)


# --- measurements -----------------------------------------------------------------------------
def measurements(session: Session) -> list[list]:
    """Per label: [value, name, voxels on this plane, area mm² on this plane, volume mL over the study]; the area and
    volume are "—" where the study's voxel size is not physical (``Volume.size_is_physical``), the volume and a plane
    across the slices also where the distance between slices is not (``Volume.slice_spacing_is_physical``)."""
    volume = session.require_study()
    view, index = session.view.view, session.view.index[session.view.view]
    plane = Plane.of(volume, view)
    across = volume.slice_spacing_is_physical  # the slice spacing is measured: volumes and every plane's area
    area_ok, volume_ok = volume.size_is_physical and (across or plane.fixed == 0), across
    row_mm, col_mm = plane.spacing(volume)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    region = plane.extract(session.labels, index)
    counts = np.bincount(session.labels.ravel(), minlength=max(d.value for d in session.label_defs) + 1)
    plane_counts = np.bincount(np.asarray(region).ravel(), minlength=len(counts))
    rows = []
    for d in session.label_defs:
        n_plane = int(plane_counts[d.value]) if d.value < len(plane_counts) else 0
        n_all = int(counts[d.value]) if d.value < len(counts) else 0
        rows.append([d.value, d.name, n_plane, round(n_plane * row_mm * col_mm, 2) if area_ok else "—",
                     round(n_all * voxel_ml, 4) if volume_ok else "—"])
    return rows
