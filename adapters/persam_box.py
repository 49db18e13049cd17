"""PerSAM-box: PerSAM's location prior turned into a BOX prompt, for box-trained models (LiteMedSAM).

Not in the PerSAM paper; our adaptation, measured in docs/oneshot.md. LiteMedSAM was trained with
boxes only: given PerSAM's point prompts its masks spread over the whole organ or vanish (Dice
0.12 on Colin27's deep nuclei), although the positive point itself usually lands inside the
structure. So keep PerSAM's training-free location step (masked-mean target feature, cosine
location confidence, arg-max point) and ask the model with what it was trained on: a box of the
reference mask's size centred on that point (clipped to the image), one decoder call, no hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapters.persam import (
    DecoderStep,
    PerSAMReference,
    PerSAMResult,
    check_same_model,
    box_of,
    location_confidence,
    persam_reference,
    run_step,
    select_points,
    similarity_grid,
)
from models.prompts import Prompts
from models.segmenter import Embedding, Segmenter


@dataclass(frozen=True)
class PerSAMBoxModel:
    """The PerSAM reference plus the reference structure's box size (width, height) in pixels."""

    reference: PerSAMReference
    box_size: tuple[int, int]


def fit_persam_box(
    segmenter: Segmenter, embedding: Embedding, mask: np.ndarray, *, parity: bool = False,
    intensity_range: tuple[float, float] | None = None,
) -> PerSAMBoxModel:
    reference = persam_reference(segmenter, embedding, mask, parity=parity, intensity_range=intensity_range)
    x0, y0, x1, y1 = box_of(np.asarray(mask, dtype=bool))
    return PerSAMBoxModel(reference, (int(x1 - x0 + 1), int(y1 - y0 + 1)))


def centred_box(centre_xy: np.ndarray, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """(4,) float box of ``size`` (w, h) centred on (x, y), shifted/clipped to fit an (H, W) image."""
    h, w = image_size
    bw, bh = min(size[0], w), min(size[1], h)
    x0 = int(np.clip(int(centre_xy[0]) - bw // 2, 0, w - bw))
    y0 = int(np.clip(int(centre_xy[1]) - bh // 2, 0, h - bh))
    return np.array([x0, y0, x0 + bw - 1, y0 + bh - 1], dtype=np.float32)


def persam_box_segment(
    segmenter: Segmenter, model: PerSAMBoxModel, embedding: Embedding, *, allowed: np.ndarray | None = None
) -> PerSAMResult:
    """allowed: where the positive point (the box centre) may lie (``adapters.persam.location_allowed``)."""
    check_same_model(model.reference, embedding)
    sim = similarity_grid(model.reference.target_feat, embedding)
    _, conf = location_confidence(segmenter, sim, embedding)
    pos, neg = select_points(conf, None if model.reference.parity else allowed)
    box = centred_box(pos, model.box_size, embedding.original_size)
    step: DecoderStep = run_step(segmenter, embedding, "box", Prompts(box=box), multimask=False, best=0)
    return PerSAMResult(
        mask=step.mask, positive_xy=pos, negative_xy=None,
        location_confidence=conf.detach().cpu().numpy().astype(np.float32), steps=(step,),
    )
