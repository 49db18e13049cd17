"""Where to click next: the place the model is least sure about, for the UI to show.

Two signals, each turned into a map of uncertainty in [0, 1] at the slice's size:

* ``logits``: the current mask's own logits: ``1 - |2 sigmoid(l) - 1|``, 1 on the decision
  boundary, 0 where the model is certain (no extra model call);
* ``candidates``: the disagreement of the base decoder's three multimask candidates (for the same
  prompts, one decoder call) and the current mask: the share of the four that differ from their majority.

The suggested click is the interior point (farthest from the border, Euclidean distance
transform) of the largest connected region of the map above ``threshold`` (as the simulated
user's ``evaluation.clicks.next_click`` picks inside an error region); ``positive`` guesses its
sign: positive when the point lies outside the current mask. ``experiments/eval_click_suggestion.py``
measures a click there against the simulated error-region click (docs/clicks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding, Segmenter

METHODS = ("logits", "candidates")


@dataclass(frozen=True)
class Suggestion:
    x: int
    y: int
    positive: bool  # a guess: the point lies outside the current mask
    score: float  # mean uncertainty of the chosen region (0..1)
    uncertainty: np.ndarray  # (H, W) float32 in [0, 1], for a faint overlay


def logits_at_slice_size(segmenter: Segmenter, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
    """(1, h, w) low-res logits -> (H, W) logits at the slice's size (the decoder's own upsampling)."""
    t = torch.as_tensor(np.asarray(low_res_logits, np.float32))[None]
    return segmenter.geometry.logits_to_original(t, embedding.original_size)[0, 0].numpy()


def uncertainty_of(logits: np.ndarray) -> np.ndarray:
    """1 - |2 sigmoid(l) - 1| = 1 - |tanh(l / 2)|: 1 on the decision boundary, 0 where the model is certain."""
    return (1.0 - np.abs(np.tanh(logits / 2.0))).astype(np.float32)


def uncertainty_from_logits(segmenter: Segmenter, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
    """(1, h, w) low-res logits -> (H, W) 1 - |2 sigmoid - 1| at the slice's size."""
    return uncertainty_of(logits_at_slice_size(segmenter, embedding, low_res_logits))


@torch.inference_mode()
def uncertainty_from_candidates(segmenter: Segmenter, embedding: Embedding, prompts: Prompts, mask: np.ndarray) -> np.ndarray:
    """Disagreement of the base decoder's 3 multimask candidates and ``mask``: 0, 0.25 or 0.5 per pixel."""
    sparse, dense = segmenter.encode_prompts(embedding, Prompts(points=prompts.points, point_labels=prompts.point_labels,
                                                                box=prompts.box))
    low, _ = segmenter.decode(embedding, sparse, dense, True)
    up = segmenter.geometry.logits_to_original(low.float(), embedding.original_size)[0] > 0
    votes = np.concatenate([up.cpu().numpy(), np.asarray(mask, bool)[None]]).astype(np.float32)
    share = votes.mean(axis=0)
    return np.minimum(share, 1.0 - share).astype(np.float32)


def suggest_click(
    segmenter: Segmenter,
    embedding: Embedding,
    prompts: Prompts,
    result: MaskResult,
    *,
    method: str = "logits",
    threshold: float = 0.2,
) -> Suggestion | None:
    """The most uncertain place of the current result; None when the model is sure everywhere."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    mask = result.best_mask
    if method == "logits":
        unc = uncertainty_from_logits(segmenter, embedding, result.best_logits)
    else:
        unc = uncertainty_from_candidates(segmenter, embedding, prompts, mask)
    return pick(unc, mask, threshold)


def suggest_from_logits(
    segmenter: Segmenter, embedding: Embedding, low_res_logits: np.ndarray, *, threshold: float = 0.2
) -> Suggestion | None:
    """:func:`suggest_click`'s ``logits`` method from a prompt's stored low-res logits alone (what the UI
    keeps of an answer): the current mask is the logits' own (> 0 at the slice's size, as the decoder's)."""
    up = logits_at_slice_size(segmenter, embedding, low_res_logits)  # upsampled once, for the map and the mask
    return pick(uncertainty_of(up), up > 0, threshold)


def pick(unc: np.ndarray, mask: np.ndarray, threshold: float = 0.2) -> Suggestion | None:
    """The interior point of the largest (size x uncertainty) region of ``unc`` above ``threshold``."""
    region_mask = unc > threshold
    labels, count = ndimage.label(region_mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return None
    weights = ndimage.sum(unc, labels, index=np.arange(1, count + 1))  # size x uncertainty
    k = int(np.argmax(weights)) + 1
    region = labels == k
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Suggestion(x=int(col), y=int(row), positive=not bool(mask[row, col]), score=float(unc[region].mean()),
                      uncertainty=unc)
