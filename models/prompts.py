"""Typed prompts and results shared by every segmenter.

All coordinates are in **original-image pixels, x (column) then y (row)**; sizes are (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# The most points one prompt may hold. Each point is a token that the mask decoder attends over the image with: on the
# CPU here LiteMedSAM took 1.9 s for 10 points, 6.5 s for 1000 and 29 s (+770 MiB) for 4000, so a label server
# request of 10^5 clicks (0.8 MB of JSON, under Starlette's 1 MB a form field) held the model lock for an hour or more
# and asked ~19 GB (session 26b). Slicer, OHIF and the viewer send tens; 1000 keeps session 13's 500 clicks on one object.
MAX_PROMPT_POINTS = 1000


class PromptError(ValueError):
    """A prompt that cannot be applied to this image (outside it, empty box, ...)."""


def check_box_area(box: "np.ndarray | tuple[float, ...] | None") -> None:
    """Refuse a box the user gave whose corners share an x or a y: it has no area, and the model answers it with an
    empty mask (``medseg segment --box 10 10 10 10`` wrote an empty mask with no hint). Called where a user's box
    comes in (CLI, UI, label server), not in ``validate``: boxes made from a 1-pixel-wide mask are the app's own."""
    if box is None:
        return
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)[:4])
    if x0 == x1 or y0 == y1:  # reversed corners are validate's refusal
        raise PromptError(f"box {x0:g} {y0:g} {x1:g} {y1:g} has no area: a box needs x0 < x1 and y0 < y1 "
                          "(two opposite corners); for a single pixel give a point")


def _check_float32(what: str, values) -> None:
    """Refuse finite coordinates past float32's range (prompts are float32) as outside the image. Why: ``--box 0 0
    1e300 10`` became inf and was refused as "box has non-finite values: [0.0, 0.0, inf, 10.0]", numbers the user
    never typed (session 23)."""
    try:
        wide = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return  # not numbers: the float32 conversion below says so
    huge = np.isfinite(wide) & (np.abs(wide) > np.finfo(np.float32).max)
    if huge.any():
        raise PromptError(f"{what} {' '.join(f'{v:g}' for v in wide)} lies outside the image: a coordinate of "
                          f"{wide[huge][0]:g} is past any image's size")


@dataclass(frozen=True)
class Prompts:
    """What the user gave on one slice.

    points: (N, 2) float, (x, y) pixels. point_labels: (N,) int, 1 = foreground, 0 = background.
    box: (4,) float, x0, y0, x1, y1 pixels (inclusive corners, x0 <= x1, y0 <= y1).
    mask_logits: (1, h, w) float low-resolution logits, as returned in ``MaskResult.low_res_logits``
    by the same model (fed back on the next click, as SAM does).
    base_decoder: answer with the model's own decoder even where a click model is attached (one-shot
    methods: their point prompts and decoder hooks are not what the click model was trained on).
    pixel_spacing: (row_mm, col_mm) of the image's pixels; points without a box become boxes of
    physical sizes around them (``models.point_prompts``), 1 mm when None.
    candidate_half_sides_mm: the half-sides of those boxes where the caller knows the structure's size (a
    one-shot reference: ``adapters.persam.candidate_half_sides``); None = ``point_prompts.HALF_SIDES_MM``.
    """

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None
    base_decoder: bool = False
    pixel_spacing: tuple[float, float] | None = None
    candidate_half_sides_mm: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            _check_float32("point", self.points)
            pts = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
            labels = np.asarray(
                self.point_labels if self.point_labels is not None else np.ones(len(pts)), dtype=np.int64
            ).reshape(-1)
            if len(labels) != len(pts):
                raise PromptError(f"{len(pts)} points but {len(labels)} point labels")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError(f"point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
            object.__setattr__(self, "points", pts)
            object.__setattr__(self, "point_labels", labels)
        elif self.point_labels is not None:
            raise PromptError("point labels were given without points")
        if self.box is not None:
            _check_float32("box", self.box)
            box = np.asarray(self.box, dtype=np.float32).reshape(-1)
            if box.shape != (4,):
                raise PromptError(f"a box needs 4 numbers x0 y0 x1 y1, got {box.tolist()}")
            if not np.isfinite(box).all():
                raise PromptError(f"box has non-finite values: {box.tolist()}")
            object.__setattr__(self, "box", box)
        if self.mask_logits is not None:
            m = np.asarray(self.mask_logits, dtype=np.float32)
            if m.ndim == 2:
                m = m[None]
            object.__setattr__(self, "mask_logits", m)
        if self.pixel_spacing is not None:
            sp = tuple(float(v) for v in np.asarray(self.pixel_spacing, dtype=np.float64).reshape(-1))
            if len(sp) != 2 or not all(np.isfinite(v) and v > 0 for v in sp):
                raise PromptError(f"pixel spacing must be two positive mm values (row, col), got {list(sp)}")
            object.__setattr__(self, "pixel_spacing", sp)
        if self.candidate_half_sides_mm is not None:
            hs = tuple(float(v) for v in np.asarray(self.candidate_half_sides_mm, dtype=np.float64).reshape(-1))
            if not hs or not all(np.isfinite(v) and v > 0 for v in hs):
                raise PromptError(f"candidate half-sides must be positive mm values, got {list(hs)}")
            object.__setattr__(self, "candidate_half_sides_mm", hs)

    @property
    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask_logits is None

    def validate(self, image_size: tuple[int, int]) -> None:
        """Raise PromptError naming the prompt if it does not fit an (H, W) image."""
        h, w = image_size
        if self.is_empty:
            raise PromptError("no prompt given: pass a box, a point or a mask")
        if self.box is not None:
            x0, y0, x1, y1 = (float(v) for v in self.box)
            if x1 < x0 or y1 < y0:
                raise PromptError(f"box {x0:g} {y0:g} {x1:g} {y1:g} is empty: need x0 <= x1 and y0 <= y1")
            if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
                raise PromptError(
                    f"box {x0:g} {y0:g} {x1:g} {y1:g} lies outside the image: x must be in 0..{w - 1}, y in 0..{h - 1}"
                )
        if self.points is not None and len(self.points) > MAX_PROMPT_POINTS:
            raise PromptError(f"{len(self.points)} points in one prompt: at most {MAX_PROMPT_POINTS} (each one costs "
                              "the model time and memory); start a new object")
        if self.points is not None:
            for (x, y) in self.points:
                if not (0 <= x <= w - 1 and 0 <= y <= h - 1) or not np.isfinite([x, y]).all():
                    raise PromptError(f"point ({x:g}, {y:g}) lies outside the image: x in 0..{w - 1}, y in 0..{h - 1}")

    def with_click(self, x: float, y: float, positive: bool) -> "Prompts":
        """Add one click (keeps the box; the caller sets mask_logits from the last result)."""
        pts = np.array([[x, y]], dtype=np.float32)
        lab = np.array([1 if positive else 0], dtype=np.int64)
        if self.points is not None:
            pts = np.concatenate([self.points, pts])
            lab = np.concatenate([self.point_labels, lab])
        return Prompts(points=pts, point_labels=lab, box=self.box, mask_logits=self.mask_logits,
                       pixel_spacing=self.pixel_spacing, candidate_half_sides_mm=self.candidate_half_sides_mm)


@dataclass(frozen=True)
class MaskResult:
    """Output of one prediction.

    masks: (K, H, W) bool at the original image size. scores: (K,) predicted IoU (NaN when the
    model has no IoU head). low_res_logits: (K, h, w) float32, to feed back as ``Prompts.mask_logits``.
    boxes: (K, 4) the box each mask was derived from when points alone were answered with boxes
    (``models.point_prompts``), else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Own the memory: ``tensor[0].numpy()`` is a view that keeps the decoder's whole output alive
        # (LiteMedSAM: 1 MiB behind a 256 KiB logits map), and the app keeps logits in every undo step.
        for name in ("masks", "scores", "low_res_logits"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray) and value.base is not None:
                object.__setattr__(self, name, value.copy())

    @property
    def best_index(self) -> int:
        scores = np.nan_to_num(self.scores, nan=-np.inf)
        return int(np.argmax(scores)) if len(scores) else 0

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[self.best_index]

    @property
    def best_logits(self) -> np.ndarray:
        """(1, h, w) logits of the best mask, ready for ``Prompts.mask_logits``."""
        return self.low_res_logits[self.best_index][None]
