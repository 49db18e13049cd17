"""A corrective click corrects where it was clicked: outside that, the previous mask stays.

Why (issue 18): the click refiner (``models.click_refiner``) answers a click with a whole new mask, and on
structures never trained on it sometimes changes the mask far from the click: on Colin27's other
structures the first click after a good box lowered the mean Dice from 0.682 to 0.603, and on MNI152
clicks 2-5 each lost a little (docs/clicks.md). A user who clicks on a missed tip does not expect the
other side of the structure to move. So, for a corrective click (points with the previous low-res logits
fed back as the mask prompt, answered by the shipped click model), the new logits are taken only where the
change has the click's own sign (``CHANGE`` "signed": pixels added by a positive click, removed by a
negative one) and either lies in a connected region (8-connected, on the low-res grid) that reaches within
``TOUCH_PX`` low-res pixels of the newest click, or lies within ``RADIUS`` equivalent radii of the structure
(sqrt(area / pi)) of the click; everywhere else the previous logits are kept. When no such change exists,
the whole new mask is taken (``FALLBACK`` "new": keeping the previous mask there made the simulated user
click the same pixel again and again, stuck). The kept logits are what comes back
(``MaskResult.low_res_logits``) and so what is fed back on the next click: the mask and the fed-back
logits agree.

The rule and its parameters were chosen on the click model's validation slices (INIA19 structures held
out of training), never on the held-out evaluation sets: ``experiments/click_locality.py``,
docs/clicks.md. Run once on the three held-out sets it made clicks 1..5 closer to monotone on MNI152 and
Colin27-other but lowered the click-5 mean by 0.017 (shared) and 0.026 (Colin27-other), so it is **off by
default**: ``MEDSEG_LOCAL_CLICKS=1`` (or ``--local-clicks`` on the commands that take ``--model``) turns it on.

Applied in one place, ``models.decode_many.predict_many`` (behind ``Segmenter.predict``), so the UI,
``medseg segment``, ``medseg eval``, ``medseg batch`` and the label server all get it. A box alone, points
alone (the point route, ``models.point_prompts``), a mask prompt without points (3D propagation) and
``litemedsam-base`` never come here.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from scipy import ndimage

ENV_VAR = "MEDSEG_LOCAL_CLICKS"
CHANGES = ("any", "signed")  # which change may reach the click: any (added or removed), or the click's own sign
FALLBACKS = ("previous", "new")  # when no change reaches the click: keep the previous mask, or take the new one
CHANGE = "signed"
TOUCH_PX = 2  # low-res pixels: a changed region this close to the click counts as the click's
FALLBACK = "new"
RADIUS = 2.0  # also every change within this many equivalent radii of the structure (sqrt(area / pi)) of the click
_EIGHT = np.ones((3, 3), dtype=bool)


DEFAULT_ON = False  # measured on the held-out sets: it lowered the click-5 mean (docs/clicks.md), so it is opt-in


def enabled() -> bool:
    """``$MEDSEG_LOCAL_CLICKS`` 1/on/true/yes or 0/off/false/no; unset: ``DEFAULT_ON`` (read at each call: the
    switch works at run time)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return DEFAULT_ON
    return value not in ("0", "off", "false", "no")


def applies(prompts, refined: bool) -> bool:
    """Whether a result for ``prompts`` is localised: a corrective click (points + the previous logits) that
    the click model answered (``refined``), with the rule on."""
    return refined and prompts.points is not None and prompts.mask_logits is not None and enabled()


def click_in_low_res(geometry, xy: np.ndarray, original: tuple[int, int], low_res_size: int) -> tuple[int, int]:
    """(row, col) of the low-res logit pixel under the click (x, y) in original pixels."""
    frame = geometry.apply_coords(np.asarray(xy, np.float32).reshape(1, 2), original)[0]
    scale = low_res_size / geometry.target
    col = int(np.clip(np.floor(frame[0] * scale), 0, low_res_size - 1))
    row = int(np.clip(np.floor(frame[1] * scale), 0, low_res_size - 1))
    return row, col


def valid_low_res(geometry, original: tuple[int, int], low_res_size: int) -> tuple[int, int]:
    """(h, w) of the low-res grid that the image covers (the rest is the model's padding)."""
    newh, neww = geometry.input_size(original)
    scale = low_res_size / geometry.target
    return min(low_res_size, int(np.ceil(newh * scale))), min(low_res_size, int(np.ceil(neww * scale)))


def keep_region(
    previous: np.ndarray,
    new: np.ndarray,
    click_rc: tuple[int, int],
    positive: bool,
    *,
    change: str = CHANGE,
    touch_px: int = TOUCH_PX,
    fallback: str = FALLBACK,
    radius: float | None = RADIUS,
) -> np.ndarray:
    """(h, w) bool: where the new mask is taken; ``previous``/``new`` (h, w) bool masks on the low-res grid.

    The connected regions of the change (``change`` "any": new XOR previous; "signed": pixels added by a
    positive click, removed by a negative one) that come within ``touch_px`` of ``click_rc``; when none does,
    nothing (``fallback`` "previous") or every change ("new"). ``radius``: also every change within ``radius``
    equivalent radii (sqrt(area / pi) of the larger of the two masks) of the click."""
    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if change == "any":
        changed = previous ^ new
    else:
        changed = (new & ~previous) if positive else (previous & ~new)
    labels, count = ndimage.label(changed, structure=_EIGHT)
    if count == 0:
        return changed
    r, c = click_rc
    h, w = changed.shape
    r0, r1, c0, c1 = max(0, r - touch_px), min(h, r + touch_px + 1), max(0, c - touch_px), min(w, c + touch_px + 1)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    near = (yy - r) ** 2 + (xx - c) ** 2 <= touch_px**2
    ids = np.unique(labels[r0:r1, c0:c1][near])
    ids = ids[ids > 0]
    keep = np.isin(labels, ids)
    if radius is not None:
        reach = radius * np.sqrt(max(int(previous.sum()), int(new.sum())) / np.pi)
        yy, xx = np.ogrid[:h, :w]
        keep |= changed & ((yy - r) ** 2 + (xx - c) ** 2 <= reach**2)
    if not keep.any():
        return changed if fallback == "new" else keep
    return keep


def localise(
    previous_logits: torch.Tensor,
    new_logits: torch.Tensor,
    click_rc: tuple[int, int],
    positive: bool,
    valid_hw: tuple[int, int],
    **rule,
) -> torch.Tensor:
    """(1, K, h, w) logits: ``new_logits`` where :func:`keep_region` takes the new mask, else ``previous_logits``
    ((1, 1, h, w) or (1, h, w), broadcast over K). Pixels in the model's padding keep the new logits."""
    new = new_logits.float()
    prev = previous_logits.float().reshape(1, 1, *new.shape[-2:]).to(new.device).expand_as(new)
    vh, vw = valid_hw
    out = new.clone()
    prev_np = (prev[0, 0, :vh, :vw] > 0).cpu().numpy()
    for k in range(new.shape[1]):
        keep = keep_region(prev_np, (new[0, k, :vh, :vw] > 0).cpu().numpy(), click_rc, positive, **rule)
        keep_t = torch.from_numpy(keep).to(new.device)
        out[0, k, :vh, :vw] = torch.where(keep_t, new[0, k, :vh, :vw], prev[0, k, :vh, :vw])
    return out


def localise_result(segmenter, embedding, prompts, low_res: torch.Tensor, **rule) -> torch.Tensor:
    """:func:`localise` for a decoded corrective click: the newest click is the last point of ``prompts``."""
    size = embedding.original_size
    low = segmenter.low_res_size
    click = click_in_low_res(segmenter.geometry, prompts.points[-1], size, low)
    previous = torch.as_tensor(prompts.mask_logits, dtype=torch.float32)
    return localise(previous, low_res, click, bool(prompts.point_labels[-1] == 1),
                    valid_low_res(segmenter.geometry, size, low), **rule)
