"""3D propagation with SAM 2's memory bank: the slices of a volume are the frames of a video.

``app.propagation.propagate`` / ``propagate_anchors`` hand over to :func:`propagate_memory` when the
segmenter tracks with memory (``Sam2Segmenter.memory_tracking``), so ``medseg propagate``, the UI's
Propagate and the MONAI Label 3D model all get it through their usual entry point.

The rule (``SAM2VideoPredictor`` as MedSAM2's 3D scripts use it):

- the prompted start slice (box and/or clicks, or a drawn mask) and every anchor (a corrected or drawn
  slice, kept as it is) are conditioning frames of one fresh inference state, so a correction re-runs
  the whole propagation with it as a new conditioning frame;
- one forward walk from the lowest conditioning frame (it fills the gaps between anchors with every
  conditioning frame in memory) and one reverse walk from the same frame (``propagate_in_video``'s
  default start);
- beyond the outermost anchors a walk stops at the first slice whose mask is smaller than
  ``min_area_px``: SAM 2's occlusion head gave "no object" (its masks are then all negative) or the
  structure has shrunk away. That slice is left empty. ``max_slices`` caps each walk.

``PropagationResult.scores`` holds SAM 2's object-presence probability (sigmoid of the occlusion
logit) per slice: the video model has no IoU prediction on tracked frames. The other stop cues of
the slice-by-slice rule (score drop, overlap drop, area drop) do not apply and are ignored.
"""

from __future__ import annotations

import numpy as np

from data.volume import Volume
from data.windowing import Window, slice_to_rgb
from models.prompts import PromptError, Prompts


def medsam2_slice(volume: Volume, k: int, window: Window | None) -> np.ndarray:
    """Slice k -> (H, W, 3) uint8 as MedSAM2's scripts: clip to the window, scale to 0..255, truncate.

    MedSAM2 min-max scales the clipped volume; with a window the volume reaches at both ends (CT with
    air and bone) that is the window's bounds, which we use so that a slice does not depend on the others.
    """
    if window is None or volume.is_rgb:
        return slice_to_rgb(volume, k, window)
    s = np.clip(np.asarray(volume.slice(k), dtype=np.float64), window.lo, window.hi)
    grey = ((s - window.lo) / max(window.hi - window.lo, 1e-12) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _frames(segmenter, volume: Volume, window: Window | None):
    from models.sam2_memory import FrameStack

    to_rgb = medsam2_slice if segmenter.variant.preprocessing == "medsam2" else slice_to_rgb
    return FrameStack(volume.num_slices, lambda k: segmenter.frame_tensor(to_rgb(volume, k, window)).to(segmenter.device))


def propagate_memory(
    segmenter,
    volume: Volume,
    *,
    window: Window | None,
    start_slice: int,
    prompts: Prompts | None = None,
    anchors: dict[int, np.ndarray] | None = None,
    settings=None,
    directions: tuple[str, ...] = ("up", "down"),
    progress=None,
    on_slice=None,
):
    """Conditioning frames (``prompts`` on ``start_slice`` and/or ``anchors``) -> PropagationResult."""
    from app.propagation import PropagationResult, PropagationSettings
    from models.sam2_memory import MemoryTracker

    settings = settings or PropagationSettings()
    anchors = {int(k): np.asarray(m, dtype=bool) for k, m in (anchors or {}).items()}
    n, (h, w) = volume.num_slices, volume.slice_shape
    for k, m in anchors.items():
        volume.slice(k)  # IndexError naming the valid range
        if m.shape != (h, w):
            raise ValueError(f"anchor mask of slice {k} has shape {m.shape}, the slice is {(h, w)}")
        if not m.any():
            raise PromptError(f"anchor slice {k} is empty: draw the structure there or remove the anchor")
    k0 = int(start_slice)
    volume.slice(k0)
    masks = np.zeros((n, h, w), dtype=bool)
    result = PropagationResult(masks=masks, start_slice=k0)
    tracker = MemoryTracker(segmenter.model, _frames(segmenter, volume, window), h, w)
    done, total = 0, n

    def report(message: str) -> None:
        if progress is not None:
            progress(min(done, total), total, message)

    def keep(k: int, mask: np.ndarray, what: str) -> None:
        nonlocal done
        masks[k] = mask
        result.scores[k] = tracker.object_score(k)
        done += 1
        report(f"slice {k}: {what}, {int(mask.sum())} px")
        if on_slice is not None:
            on_slice(k, mask)

    if prompts is not None and k0 not in anchors:
        prompts.validate((h, w))
        if prompts.points is not None or prompts.box is not None:
            logits = tracker.add_prompt(k0, prompts.points, prompts.point_labels, prompts.box)
        elif prompts.mask_logits is not None:  # low-res logits of this model -> a mask at the slice size
            import torch

            up = segmenter.geometry.logits_to_original(torch.as_tensor(prompts.mask_logits[None]), (h, w))
            logits = tracker.add_mask(k0, (up > 0)[0, 0].numpy())
        else:
            raise PromptError("the start slice needs a box, clicks or a mask")
        first = logits > 0
        if first.sum() < settings.min_area_px:
            result.anchors = [k0]
            result.scores[k0] = tracker.object_score(k0)
            result.stopped = {d: "empty start" for d in directions}
            report(f"slice {k0}: empty mask, nothing to propagate")
            return result
        keep(k0, first, "start")
    for k in sorted(anchors):
        keep(k, anchors[k], "anchor")
        tracker.add_mask(k, anchors[k])
    cond = sorted({*anchors, *([k0] if prompts is not None else [])})
    if not cond:
        raise PromptError("no anchor: segment or draw the structure on at least one slice")
    result.anchors = cond
    lo, hi = cond[0], cond[-1]
    limit = settings.max_slices

    def walk(reverse: bool) -> str:
        """One propagate_in_video pass from the lowest conditioning frame; returns why it ended."""
        go_on = ("down" if reverse else "up") in directions
        if reverse:
            max_frames = limit
        elif not go_on:  # the forward walk fills the gaps between anchors even when "up" was not asked for
            max_frames = hi - lo
        else:
            max_frames = None if limit is None else (hi - lo) + limit
        for k, logits in tracker.propagate(reverse=reverse, start=lo, max_frames=max_frames):
            if k in cond:
                result.scores[k] = tracker.object_score(k)
                continue
            mask = logits > 0
            if (k > hi if not reverse else k < lo) and mask.sum() < settings.min_area_px:
                result.scores[k] = tracker.object_score(k)
                report(f"slice {k}: stopped ({int(mask.sum())} px, object score {result.scores[k]:.2f})")
                return "no object" if result.scores[k] < 0.5 else "empty"
            keep(k, mask, "tracked")
        room = (n - 1 - hi) if not reverse else lo
        return "max slices" if limit is not None and limit < room else "end of volume"

    up = walk(reverse=False)
    if "up" in directions:
        result.stopped["up"] = up
    for a, b in zip(cond, cond[1:]):
        if b - a > 1:
            result.stopped[f"gap {a}..{b}"] = "filled"
    if "down" in directions:
        result.stopped["down"] = walk(reverse=True)
    done = total
    reached = result.slices
    report(f"done: slices {reached[0]}..{reached[-1]}" if reached else "done: no slice")
    return result
