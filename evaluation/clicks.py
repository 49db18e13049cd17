"""Simulated users: turn a ground-truth mask into prompts, deterministically from a seed.

Protocols (the ``--protocol`` string):

* ``box``: the tight box of the ground truth grown by ``margin`` px on each side, optionally
  moved by up to ``jitter`` px per side, clipped to the image. One step, click 0.
* ``points:N``: SAM-Med2D's ``init_point_sampling``: N = 1 is one positive point inside the
  ground truth; otherwise N//2 positives inside and N - N//2 negatives outside, drawn at random
  with replacement. One step, reported as click N.
* ``clicks:N``: N iterative clicks. Each click goes to the interior point (farthest from the
  region's border, Euclidean distance transform) of the largest error region of the current
  mask: positive on a missed region, negative on a false-positive one (the first click, on an
  empty mask, is therefore the most central point of the ground truth). Points accumulate and
  the previous best low-resolution logits are fed back as the mask prompt, as SAM does.
* ``box+clicks:N``: the ``box`` step (click 0), then N clicks as above with the box kept.

All coordinates are (x = column, y = row) pixels of the (H, W) slice; masks are (H, W) bool.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage

from models.prompts import MaskResult, Prompts

KINDS = ("box", "points", "clicks", "box+clicks")
PROTOCOL_HELP = "box | points:N | clicks:N | box+clicks:N (N clicks after the box)"

# (prompts, multimask_output) -> MaskResult: a segmenter bound to one slice's embedding.
Predict = Callable[[Prompts, bool], MaskResult]


class ProtocolError(ValueError):
    """A protocol string that cannot be parsed, or a case it cannot be applied to."""


@dataclass(frozen=True)
class Protocol:
    kind: str  # one of KINDS
    n: int = 0  # points or clicks; 0 for "box"

    def __str__(self) -> str:
        return self.kind if self.kind == "box" else f"{self.kind}:{self.n}"

    @property
    def click_steps(self) -> list[int]:
        """The ``clicks`` values of the steps this protocol reports, in order."""
        if self.kind == "box":
            return [0]
        if self.kind == "points":
            return [self.n]
        if self.kind == "clicks":
            return list(range(1, self.n + 1))
        return list(range(0, self.n + 1))


def parse_protocol(text: str) -> Protocol:
    """``"box"``, ``"points:3"``, ``"clicks:5"``, ``"box+clicks:9"`` -> :class:`Protocol`."""
    s = str(text).strip().lower().replace(" ", "")
    if s == "box":
        return Protocol("box", 0)
    m = re.fullmatch(r"(points|clicks|box\+clicks):(\d+)", s)
    if not m:
        raise ProtocolError(f"unknown protocol {text!r}; expected {PROTOCOL_HELP}")
    kind, n = m.group(1), int(m.group(2))
    if n < 1:
        raise ProtocolError(f"protocol {text!r}: N must be at least 1")
    if n > 100:
        raise ProtocolError(f"protocol {text!r}: N = {n} clicks is more than the 100 this simulator allows")
    return Protocol(kind, n)


# --- prompt generators ------------------------------------------------------------------------
def box_from_mask(
    gt: np.ndarray, margin: int = 0, *, jitter: int = 0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 (inclusive pixels): the tight box + ``margin``, jittered, clipped."""
    gt = np.asarray(gt, dtype=bool)
    if not gt.any():
        raise ProtocolError("the ground truth is empty on this slice: there is no box to draw")
    if margin < 0 or jitter < 0:
        raise ProtocolError(f"margin and jitter must be >= 0 px, got margin {margin}, jitter {jitter}")
    rows, cols = np.nonzero(gt)
    box = np.array([cols.min() - margin, rows.min() - margin, cols.max() + margin, rows.max() + margin], dtype=np.int64)
    if jitter:
        if rng is None:
            raise ProtocolError("box jitter needs a random generator (a seed)")
        box = box + rng.integers(-jitter, jitter + 1, size=4)
    h, w = gt.shape
    box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def sample_points(gt: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SAM-Med2D's point sampling -> ((n, 2) float32 xy, (n,) int64 labels). See the module doc."""
    gt = np.asarray(gt, dtype=bool)
    fg = np.argwhere(gt)[:, ::-1]  # (x, y)
    bg = np.argwhere(~gt)[:, ::-1]
    if len(fg) == 0:
        raise ProtocolError("the ground truth is empty on this slice: no positive point can be placed")
    n_fg = 1 if n == 1 else n // 2
    n_bg = n - n_fg
    if n_bg and len(bg) == 0:
        raise ProtocolError("the ground truth fills the whole slice: no negative point can be placed")
    pts = [fg[rng.integers(len(fg), size=n_fg)]]
    labels = [np.ones(n_fg, dtype=np.int64)]
    if n_bg:
        pts.append(bg[rng.integers(len(bg), size=n_bg)])
        labels.append(np.zeros(n_bg, dtype=np.int64))
    return np.concatenate(pts).astype(np.float32), np.concatenate(labels)


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool


def next_click(gt: np.ndarray, pred: np.ndarray) -> Click | None:
    """The corrective click for ``pred``: see the module doc; None when there is no error.

    Regions are 8-connected; on a tie in area a miss wins over a false positive. Within a
    region, of the pixels farthest from its border (often a whole ridge in an elongated region)
    the one nearest the region's centroid, first in row-major order on a tie: where a user
    would click.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    best: tuple[int, bool, np.ndarray] | None = None
    eight = np.ones((3, 3), dtype=bool)
    for positive, error in ((True, gt & ~pred), (False, pred & ~gt)):
        labels, count = ndimage.label(error, structure=eight)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(areas))
        if best is None or areas[k] > best[0]:
            best = (int(areas[k]), positive, labels == k + 1)
    if best is None:
        return None
    _, positive, region = best
    # Pad so the image edge counts as a border: a click hugging the edge is not "interior".
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    candidates = np.argwhere(dist == dist.max())
    centroid = np.argwhere(region).mean(axis=0)
    row, col = candidates[int(np.argmin(((candidates - centroid) ** 2).sum(axis=1)))]
    return Click(x=int(col), y=int(row), positive=positive)


# --- the simulated session ---------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One reported step: the prompts given, the mask kept, and the model time it took."""

    clicks: int
    prompts: Prompts
    mask: np.ndarray  # (H, W) bool
    seconds: float


def _timed(predict: Predict, prompts: Prompts, multimask: bool) -> tuple[MaskResult, float]:
    t0 = time.perf_counter()
    result = predict(prompts, multimask)
    return result, time.perf_counter() - t0


def simulate(
    predict: Predict,
    gt: np.ndarray,
    protocol: Protocol,
    *,
    margin: int = 5,
    jitter: int = 0,
    rng: np.random.Generator,
    feed_logits: bool = True,
    spacing: tuple[float, float] | None = None,
) -> Iterator[Step]:
    """Run ``protocol`` against ``predict`` on one slice, yielding one :class:`Step` per reported click.

    A single positive point alone is ambiguous, so it asks for multimask output and keeps the
    best-scored mask (DESIGN.md); every other prompt asks for one mask. When the mask has no
    error left, later steps repeat it without calling the model (0 s). ``spacing`` (row_mm, col_mm) goes
    with every prompt (``Prompts.pixel_spacing``): points without a box become boxes of physical sizes.
    """
    gt = np.asarray(gt, dtype=bool)
    if not gt.any():
        raise ProtocolError("the ground truth is empty on this slice; these protocols need a structure to prompt")
    if protocol.kind == "points":
        pts, labels = sample_points(gt, protocol.n, rng)
        prompts = Prompts(points=pts, point_labels=labels, pixel_spacing=spacing)
        result, sec = _timed(predict, prompts, protocol.n == 1)
        yield Step(protocol.n, prompts, result.best_mask, sec)
        return

    prompts = Prompts(pixel_spacing=spacing)
    mask = np.zeros_like(gt)
    clicks = 0
    if protocol.kind in ("box", "box+clicks"):
        prompts = Prompts(box=box_from_mask(gt, margin, jitter=jitter, rng=rng), pixel_spacing=spacing)
        result, sec = _timed(predict, prompts, False)
        mask = result.best_mask
        if feed_logits:
            prompts = Prompts(box=prompts.box, mask_logits=result.best_logits, pixel_spacing=spacing)
        yield Step(0, prompts, mask, sec)
        if protocol.kind == "box":
            return
    while clicks < protocol.n:
        clicks += 1
        click = next_click(gt, mask)
        if click is None:
            yield Step(clicks, prompts, mask, 0.0)
            continue
        prompts = prompts.with_click(click.x, click.y, click.positive)
        single_point = prompts.box is None and len(prompts.points) == 1
        result, sec = _timed(predict, prompts, single_point)
        mask = result.best_mask
        if feed_logits:
            prompts = Prompts(points=prompts.points, point_labels=prompts.point_labels, box=prompts.box,
                              mask_logits=result.best_logits, pixel_spacing=spacing)
        yield Step(clicks, prompts, mask, sec)
