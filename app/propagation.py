"""3D propagation: carry masks from prompted or corrected slices (anchors) through a volume.

Why in ``app/``: it composes a study (``data``: Volume, windows) with a model (``models``:
Segmenter) and a per-session cache, like the CLI, the UI and the MONAI Label 3D model that call it
(this module is the one engine behind all three); ``models/`` stays free of volumes and windows.

The rule. Each new slice is prompted from its already-segmented neighbour through the
:class:`~models.segmenter.Segmenter` interface (so the base LiteMedSAM and the click model of
issue 18, which is trained on neighbouring-slice mask prompts, both plug in):

- ``prompt="box"``: the box of the neighbour's mask grown by ``margin_px`` (MedSAM's 3D rule,
  ``CVPR24_LiteMedSAM_infer.py::MedSAM_infer_npz_3D``);
- ``prompt="mask"``: the neighbour's low-res logits as SAM's mask prompt;
- ``prompt="mask+box"``: both.

The walk stops where the structure ends, without copying a miss onward: the new mask is empty
(< ``min_area_px``), its predicted IoU is low (< ``min_score``) or dropped sharply against the
neighbour's (< ``score_drop`` x), its area dropped sharply (< ``area_drop`` x the neighbour's),
or it barely overlaps the neighbour (Dice < ``min_overlap``). That slice is left empty.
The defaults and how they were chosen (on held-out structures) are in docs/evaluation.md.

Anchors. Any slice the user drew or corrected is an anchor: :func:`propagate_anchors` keeps every
anchor as it is, walks outward beyond the first and last one, and fills each gap between two
anchors from both ends, blending the two walks' logits by distance ("model interpolation"), or by
``PropagationSettings.fill``: the plain signed-distance interpolation (:func:`interpolate_shapes`), or the
model prompted with it.

Masks are (H, W) bool on slice k of ``volume.array[k]``; boxes are x0, y0, x1, y1 pixels
(x = column), inclusive, as everywhere in ``models.prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
import torch

from app.embedding_cache import EmbeddingCache, volume_key
from data.volume import Volume
from data.windowing import Window
from models.click_refiner import refiner_for
from models.prompts import PromptError, Prompts
from models.segmenter import Embedding, Segmenter

Direction = Literal["up", "down"]  # up = increasing k, down = decreasing k
PromptRule = Literal["auto", "box", "mask", "mask+box"]
FillRule = Literal["model", "shape", "guided"]
ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, message): ``done`` of at most ``total`` slices handled so far."""
SliceFn = Callable[[int, np.ndarray], None]
"""on_slice(k, mask): a slice's mask is final (the UI shows it while the walk goes on)."""


@dataclass(frozen=True)
class PropagationSettings:
    """How the next slice is prompted and when the walk stops (defaults chosen in docs/evaluation.md).

    prompt: what the neighbour gives the next slice: its box, its logits as a mask prompt, or both.
    margin_px: pixels added on each side of the neighbour's box (original pixels).
    min_area_px: a mask smaller than this means the structure has ended.
    min_score: a predicted IoU below this means the structure has ended (0 disables).
    score_drop: stop where the predicted IoU falls below this fraction of the neighbour's (0 disables).
    area_drop: stop where the area falls below this fraction of the neighbour's (0 disables).
    min_overlap: stop where the Dice with the neighbour's mask falls below this (0 disables).
    candidates: 'best' = the model's single mask; 'overlap' = of SAM's three multimask candidates the
    one that overlaps the neighbour's mask most (Dice), the neighbour as a shape prior.
    max_slices: walk at most this many slices each way (None: to the end of the volume).
    batch_size: slices encoded per forward pass, ahead of the walk.
    guard: with a mask prompt, each slice is also segmented from the neighbour's box alone (the base
    model's answer, which the stop thresholds were chosen on); where the two masks agree less than this
    (Dice) the box answer is kept, and the stop rule reads the box answer's predicted IoU. A guard against a
    mask prompt that leaks into the neighbouring structures (0 disables: the mask prompt's answer and its own
    IoU, which the click model predicts lower than the base model).
    stride: the walks beyond the anchors segment every ``stride``-th slice, each prompted from the last one kept
    (a fast path: fewer slices to encode). A slice skipped between two kept ones whose masks agree (Dice >=
    ``stride_agree``) gets the distance-weighted blend of their low-res logits, as "fill between" does; where
    they disagree the skipped slices are segmented one by one from the first of them. Where a strided walk
    stops, it walks on one slice at a time from the last slice it kept, so a structure's end is found as with
    ``stride=1`` (every slice segmented). The default 2 was chosen on the calibration structures and checked on
    the others and the held-out slab, where it is within 0.001 of stride 1 or better (docs/evaluation.md); it
    encodes about 60 % of the slices.
    fill: how the slices between two anchors are filled. 'model' = walked from both ends and the two walks'
    logits blended by distance; 'shape' = signed-distance interpolation of the two anchors (no image looked at,
    as 3D Slicer's "Fill between slices"); 'guided' = the model prompted on each slice with the shape
    interpolation's box (+ ``margin_px``) and its mask as the mask prompt (the shape as a prior the image corrects).
    """

    prompt: PromptRule = "box"
    margin_px: float = 3.0
    min_area_px: int = 10
    min_score: float = 0.5
    score_drop: float = 0.75
    area_drop: float = 0.0
    min_overlap: float = 0.3
    candidates: Literal["best", "overlap"] = "best"
    max_slices: int | None = None
    batch_size: int = 4
    guard: float = 0.0
    stride: int = 2
    stride_agree: float = 0.9
    fill: FillRule = "model"

    def __post_init__(self) -> None:
        if self.prompt not in ("auto", "box", "mask", "mask+box"):
            raise ValueError(f"prompt must be 'auto', 'box', 'mask' or 'mask+box', got {self.prompt!r}")
        if self.candidates not in ("best", "overlap"):
            raise ValueError(f"candidates must be 'best' or 'overlap', got {self.candidates!r}")
        if not 0 <= self.margin_px < float("inf"):  # NaN too: it made NaN boxes on the next slice
            raise ValueError(f"margin_px must be a finite number >= 0, got {self.margin_px}")
        if self.min_area_px < 1:
            raise ValueError(f"min_area_px must be >= 1 (an empty mask always stops), got {self.min_area_px}")
        for name in ("min_score", "score_drop", "area_drop", "min_overlap", "guard"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction in 0..1, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 <= self.stride_agree <= 1.0:
            raise ValueError(f"stride_agree is a fraction in 0..1, got {self.stride_agree}")
        if self.fill not in ("model", "shape", "guided"):
            raise ValueError(f"fill must be 'model', 'shape' or 'guided', got {self.fill!r}")
        if self.max_slices is not None and self.max_slices < 0:
            raise ValueError(f"max_slices must be >= 0, got {self.max_slices}")

    def for_model(self, segmenter: Segmenter) -> "PropagationSettings":
        """``prompt="auto"`` made concrete: ``mask+box`` where the model has a click refiner trained on the
        neighbouring slice's mask (LiteMedSAM's click model), else ``box`` (a box-trained decoder's answer to a mask
        prompt is worse than to the box alone: docs/evaluation.md)."""
        if self.prompt != "auto":
            return self
        return replace(self, prompt="mask+box" if takes_mask_prompts(segmenter) else "box")

    @property
    def use_box(self) -> bool:
        return "box" in self.prompt

    @property
    def use_mask_prompt(self) -> bool:
        return "mask" in self.prompt

    @property
    def guarded(self) -> bool:
        return self.guard > 0 and self.use_mask_prompt


def takes_mask_prompts(segmenter: Segmenter) -> bool:
    """Whether ``segmenter`` answers a mask prompt with a decoder trained for it (LiteMedSAM's click model, trained on
    neighbouring slices' masks); a box-trained decoder does worse with one than with the box alone."""
    model = getattr(getattr(segmenter, "base", segmenter), "model", None)
    probe = Prompts(box=np.zeros(4, np.float32), mask_logits=np.zeros((1, 1, 1), np.float32))
    return refiner_for(model, probe, False) is not None


MEDSAM_RULE = PropagationSettings(
    prompt="box", margin_px=3.0, min_area_px=1, min_score=0.0, score_drop=0.0, area_drop=0.0, min_overlap=0.0, stride=1
)
"""MedSAM's own per-slice rule: previous mask's box + 3 px, no mask prompt, stop only on an empty mask, every slice."""


@dataclass
class PropagationResult:
    """masks: (K, H, W) bool, the structure on every slice reached (others empty).
    scores: slice -> predicted IoU of every slice tried (including the ones that stopped the walk).
    stopped: walk -> why it ended ('empty', 'low score', 'score drop', 'area drop', 'overlap drop',
    'end of volume', 'max slices'); walks are 'up' and 'down' (beyond the outermost anchors) and
    'gap A..B' between two anchors.
    anchors: the slices kept as given.
    """

    masks: np.ndarray
    start_slice: int
    scores: dict[int, float] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    anchors: list[int] = field(default_factory=list)

    @property
    def slices(self) -> list[int]:
        """Slices that hold a mask, in increasing order."""
        return [int(k) for k in np.flatnonzero(self.masks.reshape(len(self.masks), -1).any(axis=1))]


@dataclass
class _Step:
    """One segmented slice: its mask, its low-res logits (1, h, w) and its predicted IoU."""

    mask: np.ndarray
    logits: np.ndarray
    score: float
    yardstick: bool = True  # False: a start answered by the click model, whose first neighbour it can't judge


def box_around(mask: np.ndarray, margin: float) -> np.ndarray:
    """Tight box of an (H, W) bool mask grown by ``margin`` pixels, clipped to the image -> (4,) x0 y0 x1 y1."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PromptError("cannot make a box from an empty mask")
    h, w = mask.shape
    return np.array(
        [
            max(0.0, cols[0] - margin),
            max(0.0, rows[0] - margin),
            min(float(w - 1), cols[-1] + margin),
            min(float(h - 1), rows[-1] + margin),
        ],
        dtype=np.float32,
    )


def neighbour_prompts(prev: _Step, settings: PropagationSettings) -> Prompts:
    """The prompt a slice gets from its segmented neighbour (see the module docstring)."""
    return Prompts(
        box=box_around(prev.mask, settings.margin_px) if settings.use_box else None,
        mask_logits=prev.logits if settings.use_mask_prompt else None,
    )


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def guarded_step(masked: _Step, boxed: _Step, guard: float) -> _Step:
    """The slice's answer under ``PropagationSettings.guard``: the mask-prompted mask where it agrees with the
    box-prompted one, else the box-prompted one; the box answer's predicted IoU either way."""
    chosen = masked if mask_dice(masked.mask, boxed.mask) >= guard else boxed
    return _Step(chosen.mask, chosen.logits, boxed.score, chosen.yardstick)


def stop_reason(new: _Step, prev: _Step, settings: PropagationSettings) -> str | None:
    """Why ``new`` (segmented from its neighbour ``prev``) ends the structure, or None to go on."""
    area, prev_area = int(new.mask.sum()), int(prev.mask.sum())
    if area < settings.min_area_px:
        return "empty"
    if not prev.yardstick:
        return None
    if settings.min_score > 0 and new.score < settings.min_score:
        return "low score"
    if settings.score_drop > 0 and np.isfinite(prev.score) and new.score < settings.score_drop * prev.score:
        return "score drop"
    if settings.area_drop > 0 and area < settings.area_drop * prev_area:
        return "area drop"
    if settings.min_overlap > 0:
        overlap = 2.0 * np.logical_and(new.mask, prev.mask).sum() / max(area + prev_area, 1)
        if overlap < settings.min_overlap:
            return "overlap drop"
    return None


class _SliceSource:
    """Embeddings of one volume, encoded ``batch_size`` slices ahead of the walks."""

    def __init__(
        self, segmenter: Segmenter, volume: Volume, window: Window | None, cache: EmbeddingCache, batch: int,
        vkey: str | None = None,
    ):
        self.segmenter, self.volume, self.window, self.cache, self.batch = segmenter, volume, window, cache, batch
        self.vkey = vkey or volume_key(volume)
        self._ahead: dict[int, Embedding] = {}

    def get_many(self, upcoming: list[list[int]]) -> list[Embedding]:
        """The embedding of each walk's next slice (``upcoming[i][0]``). Missing ones are encoded in one batch
        with the slices that come next in every walk, ``batch_size`` in all, shared between the walks."""
        needed = [u[0] for u in upcoming]
        if any(k not in self._ahead for k in needed):
            share = max(1, self.batch // len(upcoming))
            chunk = list(dict.fromkeys(needed + [j for u in upcoming for j in u[1:share]]))
            self._ahead = self.cache.embeddings(
                self.segmenter, self.volume, chunk, self.window, vkey=self.vkey, batch_size=max(self.batch, len(needed))
            )
        return [self._ahead[k] for k in needed]

    def predict_many(self, prompts: list[Prompts], upcoming: list[list[int]], priors: list[np.ndarray | None]) -> list[_Step]:
        """Segment each walk's next slice, one decoder call for all where the segmenter batches
        (:meth:`Segmenter.predict_many`). With a ``prior`` mask, of the multimask candidates keep the
        one overlapping it most."""
        return self.decode_many(self.get_many(upcoming), prompts, priors)

    def decode_many(self, embeddings: list[Embedding], prompts: list[Prompts], priors: list[np.ndarray | None]) -> list[_Step]:
        """:meth:`predict_many` on embeddings already at hand (a slice may come more than once)."""
        multimask = priors[0] is not None
        if len(prompts) == 1 or not hasattr(self.segmenter, "predict_many"):
            results = [self.segmenter.predict(e, p, multimask_output=multimask) for e, p in zip(embeddings, prompts)]
        else:
            results = self.segmenter.predict_many(embeddings, prompts, multimask_output=multimask)
        steps = []
        for res, prior in zip(results, priors):
            if isinstance(res, Exception):
                raise res
            i = res.best_index
            if prior is not None:
                inter = np.logical_and(res.masks, prior[None]).reshape(len(res.masks), -1).sum(1)
                sizes = res.masks.reshape(len(res.masks), -1).sum(1) + prior.sum()
                i = int(np.argmax(2.0 * inter / np.maximum(sizes, 1)))
            steps.append(_Step(res.masks[i], res.low_res_logits[i][None], float(res.scores[i])))
        return steps


@dataclass
class _Walk:
    """One walk: ``path`` in order, each slice prompted from the one before (``seed`` first).

    stop: apply the stop rule (False between two anchors, where the structure is on both ends).
    on_step(k, step, reason): every slice tried; on_keep(k, step): every slice kept, as it is kept.
    """

    seed: _Step
    path: list[int]
    stop: bool
    on_step: Callable[[int, _Step, str | None], None] | None = None
    on_keep: Callable[[int, _Step], None] | None = None
    kept: dict[int, _Step] = field(default_factory=dict)
    reason: str | None = None
    n: int = 0
    prev: _Step | None = None

    @property
    def active(self) -> bool:
        return self.reason is None and self.n < len(self.path)


def _walk_all(source: _SliceSource, walks: list[_Walk], settings: PropagationSettings) -> None:
    """Run ``walks`` in lockstep: each round segments the next slice of every active walk, in one batched
    decoder call (a volume walked up and down from one slice costs half the sequential decoder calls).
    Each walk's masks are those of running it alone; it ends at its path's end or its stop reason."""
    settings = settings.for_model(source.segmenter)
    for w in walks:
        w.prev = w.seed
    while active := [w for w in walks if w.active]:
        priors = [w.prev.mask if settings.candidates == "overlap" else None for w in active]
        prompts = [neighbour_prompts(w.prev, settings) for w in active]
        upcoming = [w.path[w.n :] for w in active]
        if settings.guarded:  # the same slices from the box alone, in the same decoder call
            boxes = [Prompts(box=box_around(w.prev.mask, settings.margin_px)) for w in active]
            embeddings = source.get_many(upcoming)
            both = source.decode_many(embeddings + embeddings, prompts + boxes, priors + priors)
            steps = [guarded_step(m, b, settings.guard) for m, b in zip(both[: len(active)], both[len(active) :])]
        else:
            steps = source.predict_many(prompts, upcoming, priors)
        for w, new in zip(active, steps):
            k = w.path[w.n]
            w.n += 1
            reason = stop_reason(new, w.prev, settings) if w.stop else None
            if w.on_step is not None:
                w.on_step(k, new, reason)
            if reason is not None:
                w.reason = reason
                continue
            w.kept[k] = new
            if w.on_keep is not None:
                w.on_keep(k, new)
            if new.mask.any():  # an empty slice inside a gap: the next one is prompted from the last non-empty
                w.prev = new


def _blended_step(segmenter: Segmenter, a: _Step, b: _Step, weight_a: float, size: tuple[int, int]) -> _Step:
    """The distance-weighted mean of two walks' low-res logits and its mask (model interpolation); no IoU."""
    logits = weight_a * a.logits + (1.0 - weight_a) * b.logits
    up = segmenter.geometry.logits_to_original(torch.as_tensor(logits[None]), size)
    return _Step((up > 0.0)[0, 0].cpu().numpy(), logits, float("nan"))


def propagate_anchors(
    segmenter: Segmenter,
    volume: Volume,
    anchors: dict[int, np.ndarray],
    *,
    window: Window | None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings = PropagationSettings(),
    beyond: tuple[Direction, ...] = ("up", "down"),
    between: bool = True,
    seed_steps: dict[int, _Step] | None = None,
    progress: ProgressFn | None = None,
    on_slice: SliceFn | None = None,
    vkey: str | None = None,
) -> PropagationResult:
    """Keep every anchor (slice -> (H, W) bool mask) as given; recompute the rest.

    beyond: walk outward from the lowest anchor ('down') and the highest ('up'), with the stop rule.
    between: fill every gap between two consecutive anchors from both ends (no stop: the structure
    is on both anchors), blending the two walks by distance.
    seed_steps: the model's own result on an anchor (logits, score), when it has one; a drawn anchor
    gets :meth:`Segmenter.mask_prompt_from_mask` logits and the predicted IoU of the next slice.
    vkey: the volume's :func:`~app.embedding_cache.volume_key`, when the caller has it (hashing a CT takes 0.2 s).
    """
    if not anchors:
        raise PromptError("no anchor: segment or draw the structure on at least one slice")
    if getattr(segmenter, "memory_tracking", False):  # SAM 2: slices as video frames (app/propagation_memory.py)
        from app.propagation_memory import propagate_memory

        return propagate_memory(
            segmenter, volume, window=window, start_slice=min(int(k) for k in anchors), anchors=anchors,
            settings=settings, directions=beyond, progress=progress, on_slice=on_slice,
        )
    shape = volume.array.shape[:3]
    ks = sorted(int(k) for k in anchors)
    for k in ks:
        volume.slice(k)  # IndexError naming the valid range
        if np.asarray(anchors[k]).shape != volume.slice_shape:
            raise ValueError(f"anchor mask of slice {k} has shape {np.asarray(anchors[k]).shape}, the slice is {volume.slice_shape}")
        if not np.asarray(anchors[k]).any():
            raise PromptError(f"anchor slice {k} is empty: draw the structure there or remove the anchor")
    cache = cache if cache is not None else EmbeddingCache(max_items=max(settings.batch_size * 2, 8))
    source = _SliceSource(segmenter, volume, window, cache, settings.batch_size, vkey)
    steps = dict(seed_steps or {})
    for k in ks:
        if k not in steps:
            mask = np.asarray(anchors[k], dtype=bool)
            steps[k] = _Step(mask, segmenter.mask_prompt_from_mask(mask), float("nan"))
    masks = np.zeros(shape, dtype=bool)
    result = PropagationResult(masks=masks, start_slice=ks[0], anchors=ks)
    result.scores.update({k: s.score for k, s in steps.items() if k in anchors and np.isfinite(s.score)})
    walks = _plan(ks, shape[0], beyond if ks else (), between, settings.max_slices)
    total = len(ks) + sum(len(w) for w in walks.values())
    done = 0

    def report(message: str) -> None:
        if progress is not None:
            progress(min(done, total), total, message)  # a strided walk's stop slice is tried twice

    for k in ks:
        masks[k] = anchors[k]
        done += 1
        report(f"slice {k}: anchor, {int(masks[k].sum())} px")
        if on_slice is not None:
            on_slice(k, masks[k])

    def on_step(k: int, step: _Step, reason: str | None) -> None:
        nonlocal done
        done += 1
        result.scores[k] = step.score
        what = f"stopped ({reason}, " if reason else "("
        report(f"slice {k}: {what}{int(step.mask.sum())} px, predicted IoU {step.score:.2f})")

    def keep(k: int, step: _Step) -> None:
        masks[k] = step.mask
        if on_slice is not None:
            on_slice(k, step.mask)

    beyond_walks: dict[str, _Walk] = {}
    gap_walks: dict[str, tuple[_Walk, _Walk]] = {}
    shape_gaps = {n: p for n, p in walks.items() if n not in ("up", "down") and settings.fill != "model"}
    for name, path in walks.items():
        if name in shape_gaps:
            continue
        if name in ("up", "down"):
            start = ks[-1] if name == "up" else ks[0]
            beyond_walks[name] = _Walk(steps[start], _strided(path, settings.stride), stop=True, on_step=on_step, on_keep=keep)
        else:
            a, b = path[0] - 1, path[-1] + 1
            gap_walks[name] = (_Walk(steps[a], path, stop=False, on_step=on_step), _Walk(steps[b], path[::-1], stop=False))
    _walk_all(source, [*beyond_walks.values(), *(w for pair in gap_walks.values() for w in pair)], settings)

    def filled(k: int, step: _Step, a: int, b: int) -> None:
        nonlocal done
        done += 1
        keep(k, step)
        report(f"slice {k}: between {a} and {b}, which agree ({int(step.mask.sum())} px)")

    if settings.stride > 1:
        _fill_strides(source, beyond_walks, walks, steps, settings, masks.shape[1:], filled, keep, on_step)
    for name, walk in beyond_walks.items():
        start = ks[-1] if name == "up" else ks[0]
        room = shape[0] - 1 - start if name == "up" else start
        result.stopped[name] = walk.reason or ("max slices" if len(walks[name]) < room else "end of volume")
    for name, (from_a, from_b) in gap_walks.items():
        a, b = from_a.path[0] - 1, from_a.path[-1] + 1
        for k in from_a.path:
            masks[k] = _blended_step(segmenter, from_a.kept[k], from_b.kept[k], (b - k) / (b - a), volume.slice_shape).mask
            if on_slice is not None:
                on_slice(k, masks[k])
        result.stopped[name] = "filled"
    for name, path in shape_gaps.items():
        a, b = path[0] - 1, path[-1] + 1
        for k, mask in _shape_fill(source, masks[a], masks[b], path, settings).items():
            masks[k] = mask
            done += 1
            report(f"slice {k}: between {a} and {b} ({settings.fill}, {int(mask.sum())} px)")
            if on_slice is not None:
                on_slice(k, mask)
        result.stopped[name] = f"filled ({settings.fill})"
    done = total
    reached = result.slices
    report(f"done: slices {reached[0]}..{reached[-1]}" if reached else "done: no slice")
    return result


def _shape_fill(
    source: _SliceSource, mask_a: np.ndarray, mask_b: np.ndarray, path: list[int], settings: PropagationSettings
) -> dict[int, np.ndarray]:
    """The slices of ``path`` (strictly between two anchors) by ``settings.fill`` 'shape' or 'guided'.

    'guided' prompts each slice with the shape's box and mask (the box alone where the decoder was not trained on mask
    prompts: :func:`takes_mask_prompts`), ``batch_size`` slices per encoder batch; a slice the shape leaves empty (two
    anchors far apart) stays empty."""
    priors = dict(zip(path, shapes_between(mask_a, mask_b, len(path))))
    if settings.fill == "shape":
        return priors
    out = {k: prior for k, prior in priors.items() if not prior.any()}
    todo = [k for k in path if k not in out]
    segmenter = source.segmenter
    with_mask = takes_mask_prompts(segmenter)
    for i in range(0, len(todo), settings.batch_size):
        chunk = todo[i : i + settings.batch_size]
        prompts = [
            Prompts(box=box_around(priors[k], settings.margin_px),
                    mask_logits=segmenter.mask_prompt_from_mask(priors[k]) if with_mask else None)
            for k in chunk
        ]
        steps = source.predict_many(prompts, [chunk[j:] for j in range(len(chunk))], [None] * len(chunk))
        out.update({k: step.mask for k, step in zip(chunk, steps)})
    return out


def _strided(path: list[int], stride: int) -> list[int]:
    """Every ``stride``-th slice of a walk's path, and its last slice (the volume's end is always tried)."""
    if stride == 1 or not path:
        return path
    picked = path[stride - 1 :: stride]
    return picked if picked and picked[-1] == path[-1] else [*picked, path[-1]]


def _fill_strides(
    source: _SliceSource,
    beyond: dict[str, _Walk],
    paths: dict[str, list[int]],
    seeds: dict[int, _Step],
    settings: PropagationSettings,
    size: tuple[int, int],
    filled: Callable[[int, _Step, int, int], None],
    keep: Callable[[int, _Step], None],
    on_step: Callable[[int, _Step, str | None], None],
) -> None:
    """The slices strided walks skipped (``PropagationSettings.stride``), each kept as it is decided.

    Between two kept slices that agree: the blend of their logits. Where they disagree: the skipped slices
    segmented one by one from the first kept slice (as the walk with stride 1 prompts them). After a strided
    walk's stop: a walk with stride 1 and the stop rule from its last kept slice over the rest of its path.
    Each of these ends the walk's record of kept slices (``walk.kept``) and stop reason."""
    segmenter = source.segmenter
    more: list[tuple[_Walk, _Walk]] = []  # (the strided walk, its one-slice-at-a-time walk)
    for name, walk in beyond.items():
        full = paths[name]
        if not full:
            continue
        order = {k: i for i, k in enumerate(full)}
        start = full[0] - 1 if name == "up" else full[0] + 1
        kept = [start] + [k for k in walk.path[: walk.n] if k in walk.kept]
        step_of = {start: seeds[start], **walk.kept}
        for a, b in zip(kept, kept[1:]):
            skipped = full[order[a] + 1 : order[b]] if a in order else full[: order[b]]
            if not skipped:
                continue
            if mask_dice(step_of[a].mask, step_of[b].mask) >= settings.stride_agree:
                for k in skipped:
                    weight = abs(b - k) / abs(b - a)
                    walk.kept[k] = _blended_step(segmenter, step_of[a], step_of[b], weight, size)
                    filled(k, walk.kept[k], a, b)
            else:
                more.append((walk, _Walk(step_of[a], skipped, stop=False, on_step=on_step, on_keep=keep)))
        if walk.reason is not None:  # the strided walk stopped: carry on one slice at a time from its last kept
            last = kept[-1]
            rest = full[order[last] + 1 :] if last in order else full
            walk.reason = None
            more.append((walk, _Walk(step_of[last], rest, stop=True, on_step=on_step, on_keep=keep)))
    _walk_all(source, [w for _, w in more], settings)
    for walk, extra in more:
        walk.kept.update(extra.kept)
        if extra.stop:
            walk.reason = extra.reason


def _plan(ks: list[int], num_slices: int, beyond: tuple[Direction, ...], between: bool, max_slices: int | None) -> dict[str, list[int]]:
    """The walks to run: name -> slices in walking order."""
    walks: dict[str, list[int]] = {}
    for d in beyond:
        if d not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {d!r}")
        path = list(range(ks[-1] + 1, num_slices)) if d == "up" else list(range(ks[0] - 1, -1, -1))
        walks[d] = path if max_slices is None else path[:max_slices]
    if between:
        for a, b in zip(ks, ks[1:]):
            if b - a > 1:
                walks[f"gap {a}..{b}"] = list(range(a + 1, b))
    return walks


def propagate(
    segmenter: Segmenter,
    volume: Volume,
    start_slice: int,
    prompts: Prompts | None = None,
    *,
    start_mask: np.ndarray | None = None,
    start_logits: np.ndarray | None = None,
    start_yardstick: bool = True,
    anchors: dict[int, np.ndarray] | None = None,
    window: Window | None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings = PropagationSettings(),
    directions: tuple[Direction, ...] = ("up", "down"),
    progress: ProgressFn | None = None,
    on_slice: SliceFn | None = None,
) -> PropagationResult:
    """Segment ``start_slice`` from ``prompts`` (or take ``start_mask`` as it is), then carry it.

    ``start_logits``: the model's own low-res logits whose mask ``start_mask`` is (the UI's last prompt on that
    slice): the first neighbours get them as the mask prompt, as a walk from ``prompts`` does, not a drawn mask's
    +-8 step (:meth:`Segmenter.mask_prompt_from_mask`), which left a 4-pixel grid of holes on torch's mask+box rule.
    ``start_yardstick``: False when those logits came from the click model (see the box-only note below).
    ``anchors``: more corrected slices (slice -> mask) kept as they are; the start slice is one too.
    ``window`` is the intensity window the model sees (``data.windowing.default_window``);
    ``cache`` keeps embeddings for later calls (a new, call-local one when None).
    """
    if (prompts is None) == (start_mask is None):
        raise ValueError("give exactly one of prompts (segment the start slice) or start_mask (a drawn/corrected mask)")
    k0 = int(start_slice)
    volume.slice(k0)  # IndexError naming the valid range
    empty_start = start_mask is not None and np.asarray(start_mask).sum() < settings.min_area_px  # handled below
    if getattr(segmenter, "memory_tracking", False) and not empty_start:  # SAM 2: slices as video frames
        from app.propagation_memory import propagate_memory

        extra = {int(k): np.asarray(m, dtype=bool) for k, m in (anchors or {}).items()}
        if start_mask is not None:
            if np.asarray(start_mask).shape != volume.slice_shape:
                raise ValueError(f"start_mask has shape {np.asarray(start_mask).shape}, slice {k0} is {volume.slice_shape}")
            extra[k0] = np.asarray(start_mask, dtype=bool)
        return propagate_memory(
            segmenter, volume, window=window, start_slice=k0, prompts=prompts, anchors=extra, settings=settings,
            directions=directions, progress=progress, on_slice=on_slice,
        )
    cache = cache if cache is not None else EmbeddingCache(max_items=max(settings.batch_size * 2, 8))
    seeds: dict[int, _Step] = {}
    vkey = volume_key(volume)
    if prompts is not None:
        emb = cache.embeddings(segmenter, volume, [k0], window, vkey=vkey, batch_size=settings.batch_size)[k0]
        first = segmenter.predict(emb, prompts)
        # A box-only start is answered by the decoder the walk uses. Clicks or a mask go through the click model:
        # its IoU head is on another scale and its lone-point masks are small blobs, so such a start is no
        # yardstick for its first neighbours' stop cues (an OHIF point prompt stopped the walk at its first
        # neighbour on "overlap drop", tests/app/test_labelserver.py); only an empty neighbour stops there.
        box_only = prompts.points is None and prompts.mask_logits is None
        seeds[k0] = _Step(first.best_mask, first.best_logits, float(first.scores[first.best_index]), yardstick=box_only)
        seed_mask = first.best_mask
    else:
        seed_mask = np.asarray(start_mask, dtype=bool)
        if seed_mask.shape != volume.slice_shape:
            raise ValueError(f"start_mask has shape {seed_mask.shape}, slice {k0} is {volume.slice_shape}")
        if start_logits is not None:
            seeds[k0] = _Step(seed_mask, np.asarray(start_logits, np.float32), float("nan"), yardstick=start_yardstick)
    if seed_mask.sum() < settings.min_area_px:
        result = PropagationResult(masks=np.zeros(volume.array.shape[:3], bool), start_slice=k0, anchors=[k0])
        result.scores.update({k: s.score for k, s in seeds.items()})
        result.stopped = {d: "empty start" for d in directions}
        if progress is not None:
            progress(1, 1, f"slice {k0}: empty mask, nothing to propagate")
        return result
    all_anchors = {int(k): np.asarray(m, dtype=bool) for k, m in (anchors or {}).items()}
    all_anchors[k0] = seed_mask
    result = propagate_anchors(
        segmenter, volume, all_anchors, window=window, cache=cache, settings=settings, beyond=directions,
        seed_steps=seeds, progress=progress, on_slice=on_slice, vkey=vkey,
    )
    result.start_slice = k0
    return result


def repropagate(
    segmenter: Segmenter,
    volume: Volume,
    labels: np.ndarray,
    start_slice: int,
    label_value: int = 1,
    *,
    anchors: list[int] | tuple[int, ...] = (),
    window: Window | None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings = PropagationSettings(),
    directions: tuple[Direction, ...] = ("up", "down"),
    progress: ProgressFn | None = None,
    on_slice: SliceFn | None = None,
    start_logits: np.ndarray | None = None,
    start_yardstick: bool = True,
) -> tuple[np.ndarray, PropagationResult]:
    """After the user corrected ``label_value`` on ``start_slice``, carry it again, keeping ``anchors``.

    ``start_logits``: the model's low-res logits of the last prompt on ``start_slice``; used only where their mask is
    exactly the label's pixels there (one object, as the model gave it), else the slice is a drawn anchor.

    labels: (K, H, W) integer label map on ``volume``'s grid. ``anchors``: other slices whose
    ``label_value`` pixels are kept as they are (earlier corrections); empty ones are ignored.
    Returns a new label map in which every slice that was walked gets the new propagation for
    ``label_value`` (its old pixels there are cleared; other labels are never overwritten), and the result.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape[:3]:
        raise ValueError(f"labels {labels.shape} do not match the volume grid {volume.array.shape[:3]}")
    seed = labels[start_slice] == label_value
    if not seed.any():
        raise PromptError(f"slice {start_slice} holds no pixel of label {label_value}: draw or segment it first")
    kept = {int(k): labels[k] == label_value for k in anchors if int(k) != start_slice and (labels[k] == label_value).any()}
    if start_logits is not None:
        up = segmenter.geometry.logits_to_original(torch.as_tensor(np.asarray(start_logits, np.float32)[None]),
                                                   seed.shape)
        if not np.array_equal((up > 0.0)[0, 0].cpu().numpy(), seed):
            start_logits = None  # edited since, or more than the model's answer: a drawn anchor
    result = propagate(
        segmenter, volume, start_slice, start_mask=seed, start_logits=start_logits, start_yardstick=start_yardstick,
        anchors=kept, window=window, cache=cache, settings=settings, directions=directions, progress=progress,
        on_slice=on_slice,
    )
    return merge_label(labels, result, label_value, directions), result


def merge_label(labels: np.ndarray, result: PropagationResult, label_value: int, directions: tuple[Direction, ...]) -> np.ndarray:
    """``labels`` with ``label_value`` replaced by ``result`` on every slice the walks covered."""
    ks = result.anchors
    walked = np.zeros(labels.shape[0], dtype=bool)
    walked[ks[0] : ks[-1] + 1] = True
    if "up" in directions:
        walked[ks[-1] + 1 :] = True
    if "down" in directions:
        walked[: ks[0]] = True
    out = labels.copy()
    region = walked[:, None, None]
    out[region & (out == label_value)] = 0
    free = (out == 0) | (out == label_value)
    out[region & result.masks & free] = label_value
    return out


def shapes_between(mask_a: np.ndarray, mask_b: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` evenly spaced masks strictly between two (H, W) masks: their signed distances blended linearly."""
    from scipy.ndimage import distance_transform_edt

    def sdf(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=bool)
        return distance_transform_edt(~m) - distance_transform_edt(m)  # < 0 inside

    da, db = sdf(mask_a), sdf(mask_b)
    return [(1 - t) * da + t * db < 0 for t in (np.arange(1, count + 1) / (count + 1))]


def interpolate_shapes(anchors: dict[int, np.ndarray], num_slices: int) -> np.ndarray:
    """Shape-based interpolation (signed distance, linear in k) between consecutive anchors -> (K, H, W) bool.

    The plain geometric baseline for "fill between slices": no image is looked at. Slices
    outside the first..last anchor stay empty.
    """
    if len(anchors) < 2:
        raise PromptError("shape interpolation needs at least two annotated slices")
    ks = sorted(int(k) for k in anchors)
    shape = np.asarray(anchors[ks[0]]).shape
    out = np.zeros((num_slices, *shape), dtype=bool)
    for a, b in zip(ks, ks[1:]):
        out[a] = anchors[a]
        out[b] = anchors[b]
        if b - a > 1:
            out[a + 1 : b] = np.stack(shapes_between(anchors[a], anchors[b], b - a - 1))
    return out


__all__ = [
    "MEDSAM_RULE",
    "PropagationResult",
    "PropagationSettings",
    "box_around",
    "interpolate_shapes",
    "shapes_between",
    "merge_label",
    "neighbour_prompts",
    "propagate",
    "propagate_anchors",
    "repropagate",
    "stop_reason",
    "takes_mask_prompts",
]
