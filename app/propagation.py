"""3D propagation: carry one slice's mask up and down a volume, slice by slice.

Why in ``app/``: it composes a study (``data``: Volume, windows) with a model (``models``:
Segmenter) and a per-session cache, like the CLI and the UI that call it; ``models/`` stays free
of volumes and windows.

The rule (MedSAM's 3D inference, ``CVPR24_LiteMedSAM_infer.py::MedSAM_infer_npz_3D``, plus a
stop): slice k+-1 is prompted with the box of the mask on slice k grown by ``margin_px``
(optionally with slice k's low-resolution logits as a mask prompt), and the walk stops where the
structure ends: the new mask has fewer than ``min_area_px`` pixels or a predicted IoU below
``min_score``; that slice is left empty. MedSAM itself never stops early (it walks the z range of
a 3D box the user gives) and falls back to that box on an empty slice; ``MEDSAM_RULE`` is its
per-slice rule without those two (no 3D box exists here), the baseline in docs/evaluation.md.

Masks are (H, W) bool on slice k of ``volume.array[k]``; boxes are x0, y0, x1, y1 pixels
(x = column), inclusive, as everywhere in ``models.prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from app.embedding_cache import EmbeddingCache, volume_key
from data.volume import Volume
from data.windowing import Window
from models.prompts import PromptError, Prompts
from models.segmenter import Segmenter

Direction = Literal["up", "down"]  # up = increasing k, down = decreasing k
ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, message): ``done`` of at most ``total`` slices handled so far."""


@dataclass(frozen=True)
class PropagationSettings:
    """How the next slice is prompted and when the walk stops (defaults chosen in docs/evaluation.md).

    margin_px: pixels added on each side of the previous mask's box (original pixels).
    use_mask_prompt: also feed the previous slice's low-res logits as SAM's mask prompt.
    min_area_px: a mask smaller than this means the structure has ended.
    min_score: a predicted IoU below this means the structure has ended (0 disables).
    max_slices: walk at most this many slices each way (None: to the end of the volume).
    batch_size: slices encoded per forward pass, ahead of the walk.
    """

    margin_px: float = 3.0
    use_mask_prompt: bool = False
    min_area_px: int = 10
    min_score: float = 0.5
    max_slices: int | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.margin_px < 0:
            raise ValueError(f"margin_px must be >= 0, got {self.margin_px}")
        if self.min_area_px < 1:
            raise ValueError(f"min_area_px must be >= 1 (an empty mask always stops), got {self.min_area_px}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score is a predicted IoU in 0..1, got {self.min_score}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


MEDSAM_RULE = PropagationSettings(margin_px=3.0, use_mask_prompt=False, min_area_px=1, min_score=0.0)
"""MedSAM's own per-slice rule: previous mask's box + 3 px, no mask prompt, stop only on an empty mask."""


@dataclass
class PropagationResult:
    """masks: (K, H, W) bool, the structure on every slice reached (others empty).
    scores: slice -> predicted IoU of every slice tried (including the ones that stopped the walk).
    stopped: direction -> why the walk ended ('empty', 'low score', 'end of volume', 'max slices').
    """

    masks: np.ndarray
    start_slice: int
    scores: dict[int, float] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)

    @property
    def slices(self) -> list[int]:
        """Slices that hold a mask, in increasing order."""
        return [int(k) for k in np.flatnonzero(self.masks.reshape(len(self.masks), -1).any(axis=1))]


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


def propagate(
    segmenter: Segmenter,
    volume: Volume,
    start_slice: int,
    prompts: Prompts | None = None,
    *,
    start_mask: np.ndarray | None = None,
    window: Window | None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings = PropagationSettings(),
    directions: tuple[Direction, ...] = ("up", "down"),
    progress: ProgressFn | None = None,
) -> PropagationResult:
    """Segment ``start_slice`` from ``prompts`` (or take ``start_mask`` as it is), then carry it.

    ``window`` is the intensity window the model sees (``data.windowing.default_window``);
    ``cache`` keeps embeddings for later calls (a new, call-local one when None).
    """
    if (prompts is None) == (start_mask is None):
        raise ValueError("give exactly one of prompts (segment the start slice) or start_mask (a drawn/corrected mask)")
    k0 = int(start_slice)
    volume.slice(k0)  # IndexError naming the valid range
    cache = cache if cache is not None else EmbeddingCache(max_items=max(settings.batch_size * 2, 8))
    vkey = volume_key(volume)
    total = _walk_length(volume.num_slices, k0, directions, settings.max_slices) + 1
    done = 0
    masks = np.zeros(volume.array.shape[:3], dtype=bool)
    result = PropagationResult(masks=masks, start_slice=k0)

    def report(message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    if prompts is not None:
        emb = cache.embeddings(segmenter, volume, [k0], window, vkey=vkey)[k0]
        first = segmenter.predict(emb, prompts)
        seed_mask, seed_logits = first.best_mask, first.best_logits
        result.scores[k0] = float(first.scores[first.best_index])
    else:
        seed_mask = np.asarray(start_mask, dtype=bool)
        if seed_mask.shape != volume.slice_shape:
            raise ValueError(f"start_mask has shape {seed_mask.shape}, slice {k0} is {volume.slice_shape}")
        seed_logits = segmenter.mask_prompt_from_mask(seed_mask)
    done += 1
    if seed_mask.sum() < settings.min_area_px:
        result.stopped = {d: "empty start" for d in directions}
        report(f"slice {k0}: empty mask, nothing to propagate")
        return result
    masks[k0] = seed_mask
    report(f"slice {k0}: {int(seed_mask.sum())} px")

    for direction in directions:
        step = 1 if direction == "up" else -1
        limit = _walk_length(volume.num_slices, k0, (direction,), settings.max_slices)
        prev_mask, prev_logits = seed_mask, seed_logits
        reason = "end of volume" if settings.max_slices is None or limit < settings.max_slices else "max slices"
        ahead: dict = {}
        for n in range(1, limit + 1):
            k = k0 + step * n
            if k not in ahead:  # encode the next batch of slices in the direction of travel
                chunk = [k0 + step * m for m in range(n, min(limit, n + settings.batch_size - 1) + 1)]
                ahead = cache.embeddings(segmenter, volume, chunk, window, vkey=vkey, batch_size=settings.batch_size)
            res = segmenter.predict(ahead[k], _next_prompts(prev_mask, prev_logits, settings))
            mask, score = res.best_mask, float(res.scores[res.best_index])
            result.scores[k] = score
            done += 1
            if mask.sum() < settings.min_area_px:
                reason = "empty"
            elif settings.min_score > 0 and score < settings.min_score:
                reason = "low score"
            else:
                masks[k] = mask
                prev_mask, prev_logits = mask, res.best_logits
                report(f"slice {k}: {int(mask.sum())} px, predicted IoU {score:.2f}")
                continue
            report(f"slice {k}: stopped ({reason}, {int(mask.sum())} px, predicted IoU {score:.2f})")
            break
        result.stopped[direction] = reason
    done = total
    report(f"done: slices {result.slices[0]}..{result.slices[-1]}")
    return result


def repropagate(
    segmenter: Segmenter,
    volume: Volume,
    labels: np.ndarray,
    start_slice: int,
    label_value: int = 1,
    *,
    window: Window | None,
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings = PropagationSettings(),
    directions: tuple[Direction, ...] = ("up", "down"),
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, PropagationResult]:
    """After the user corrected ``label_value`` on ``start_slice``, carry that slice's mask again.

    labels: (K, H, W) integer label map on ``volume``'s grid. Returns a new label map in which,
    on the side(s) walked, ``label_value`` is replaced by the new propagation (pixels of that
    label beyond where the walk stopped are cleared; other labels are never overwritten), and
    the propagation result.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape[:3]:
        raise ValueError(f"labels {labels.shape} do not match the volume grid {volume.array.shape[:3]}")
    seed = labels[start_slice] == label_value
    if not seed.any():
        raise PromptError(f"slice {start_slice} holds no pixel of label {label_value}: draw or segment it first")
    result = propagate(
        segmenter, volume, start_slice, start_mask=seed, window=window, cache=cache, settings=settings,
        directions=directions, progress=progress,
    )
    out = labels.copy()
    walked = np.zeros(labels.shape[0], dtype=bool)
    for d in directions:
        if d == "up":
            walked[start_slice + 1 :] = True
        else:
            walked[:start_slice] = True
    region = walked[:, None, None]
    out[region & (out == label_value)] = 0
    free = (out == 0) | (out == label_value)
    out[region & result.masks & free] = label_value
    return out, result


def _next_prompts(prev_mask: np.ndarray, prev_logits: np.ndarray, settings: PropagationSettings) -> Prompts:
    return Prompts(
        box=box_around(prev_mask, settings.margin_px),
        mask_logits=prev_logits if settings.use_mask_prompt else None,
    )


def _walk_length(num_slices: int, k0: int, directions: tuple[Direction, ...], max_slices: int | None) -> int:
    n = 0
    for d in directions:
        if d not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {d!r}")
        room = num_slices - 1 - k0 if d == "up" else k0
        n += room if max_slices is None else min(room, max_slices)
    return n


__all__ = [
    "MEDSAM_RULE",
    "PropagationResult",
    "PropagationSettings",
    "box_around",
    "propagate",
    "repropagate",
]
