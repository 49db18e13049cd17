"""PerSAM-F: PerSAM plus two learned weights that mix SAM's three multimask outputs.

Follows ``persam_f.py`` of ZrrSkywalker/Personalize-SAM (``persam_f_steps`` in
``shared/parity/persam/manifest.json``): the target feature is ``max / 2 + mean / 2`` of the masked
reference features; only the positive point is used; the mixing weights ``[1 - w0 - w1, w0, w1]``
are trained on the reference itself with Dice + sigmoid focal loss (AdamW lr 1e-3, eps 1e-4,
cosine schedule with T_max = iterations, 1000 iterations).

The official loop calls the decoder again at every iteration, under ``no_grad`` and with the same
prompt, so its logits are the same every time: here they are computed once and only the 2 weights
are trained (identical numbers, 1000x less work). The losses are MONAI's ``DiceLoss`` (smooth 1/1)
and ``FocalLoss`` (gamma 2, alpha 0.25, sigmoid), which compute exactly the official formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adapters.persam import (
    PerSAMReference,
    PerSAMResult,
    check_same_model,
    box_refinement,
    candidate_half_sides,
    decoder_prompts,
    half_extent,
    relative_box,
    location_confidence,
    reference_features,
    run_step,
    select_points,
    similarity_grid,
)
from models.prompts import Prompts
from models.segmenter import Embedding, Segmenter

ITERATIONS = 1000
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class MaskWeights:
    """Learned mixing weights and how they were reached.

    weights: (3,) float32 ``[1 - w0 - w1, w0, w1]`` applied to the 3 multimask logits.
    trajectory: (T, 2) the parameter ``(w0, w1)`` BEFORE each optimiser step. loss_dice / loss_focal: (T,).
    """

    weights: np.ndarray
    trajectory: np.ndarray
    loss_dice: np.ndarray
    loss_focal: np.ndarray


@dataclass(frozen=True)
class PerSAMFModel:
    """A fitted PerSAM-F: the reference's target feature, the learned weights, the training point."""

    reference: PerSAMReference
    mask_weights: MaskWeights
    train_point_xy: np.ndarray
    train_low_res_logits: np.ndarray


def persam_f_reference(
    segmenter: Segmenter, embedding: Embedding, mask: np.ndarray, *, parity: bool = False,
    intensity_range: tuple[float, float] | None = None, sized: bool = True,
) -> PerSAMReference:
    """PerSAM-F's target feature: (max + mean) / 2 of the masked reference features, unit norm (``sized``: as
    ``adapters.persam.persam_reference``)."""
    feats, selected = reference_features(segmenter, embedding, mask, parity=parity)
    mean = feats.mean(0)
    target = (torch.max(feats, dim=0)[0] / 2 + mean / 2).unsqueeze(0)
    target = target / target.norm(dim=-1, keepdim=True)
    return PerSAMReference(
        target, mean[None, None], selected, embedding.model_name, parity, None if parity else intensity_range,
        half_extent(mask) if sized and not parity else None, None if parity else relative_box(mask),
    )


def mix(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(3, ...) logits and (3,) or (3, 1) weights -> (...) weighted sum."""
    return (logits * weights.reshape((3,) + (1,) * (logits.ndim - 1))).sum(0)


def train_mask_weights(
    logits_high: torch.Tensor, gt: np.ndarray, *, iterations: int = ITERATIONS, lr: float = LEARNING_RATE,
    t_max: int | None = None,
) -> MaskWeights:
    """Fit the two weights on (3, H, W) full-resolution logits against the (H, W) bool reference mask.

    t_max: period of the cosine schedule (default: ``iterations``, as the official code); a smaller
    ``iterations`` with ``t_max=1000`` stops the official run early, step for step.
    """
    if iterations < 1:
        raise ValueError(f"PerSAM-F needs at least 1 training iteration, got {iterations}")
    logits = logits_high.detach().float().reshape(3, -1)
    target = torch.as_tensor(np.asarray(gt, dtype=bool).reshape(1, 1, -1), dtype=torch.float32, device=logits.device)
    param = nn.Parameter(torch.ones(2, 1, device=logits.device) / 3)
    optimizer = torch.optim.AdamW([param], lr=lr, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t_max or iterations)
    from monai.losses import DiceLoss, FocalLoss  # here: MONAI's import is ~3 s of every `medseg` start

    dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)
    focal = FocalLoss(gamma=2.0, alpha=0.25, use_softmax=False)
    trajectory = np.zeros((iterations, 2), np.float32)
    losses = np.zeros((2, iterations), np.float32)
    with torch.enable_grad():
        for i in range(iterations):
            trajectory[i] = param.detach().cpu().numpy()[:, 0]
            weights = torch.cat((1 - param.sum(0, keepdim=True), param), dim=0)
            logit = (logits * weights).sum(0)[None, None]
            loss_dice, loss_focal = dice(logit, target), focal(logit, target)
            optimizer.zero_grad()
            (loss_dice + loss_focal).backward()
            optimizer.step()
            scheduler.step()
            losses[:, i] = (loss_dice.item(), loss_focal.item())
    final = torch.cat((1 - param.sum(0, keepdim=True), param), dim=0).detach().cpu().numpy()[:, 0]
    return MaskWeights(final.astype(np.float32), trajectory, losses[0], losses[1])


def _upscaled(segmenter: Segmenter, low_res: np.ndarray, embedding: Embedding) -> torch.Tensor:
    """(3, h, w) low-res logits -> (3, H, W) at the original size (what ``predict`` thresholds)."""
    t = torch.as_tensor(low_res, dtype=torch.float32, device=segmenter.device)[None]
    return segmenter.geometry.logits_to_original(t, embedding.original_size)[0]


def _positive_point(
    segmenter: Segmenter, reference: PerSAMReference, embedding: Embedding, allowed: np.ndarray | None = None
):
    sim = similarity_grid(reference.target_feat, embedding)
    _, conf = location_confidence(segmenter, sim, embedding)
    pos, _ = select_points(conf, None if reference.parity else allowed)
    return pos, conf


def fit_persam_f(
    segmenter: Segmenter, embedding: Embedding, mask: np.ndarray, *, parity: bool = False,
    iterations: int = ITERATIONS, lr: float = LEARNING_RATE, intensity_range: tuple[float, float] | None = None,
    allowed: np.ndarray | None = None, sized: bool = True,
) -> PerSAMFModel:
    """Learn PerSAM-F's weights on the reference image (embedded) and its (H, W) bool mask.

    allowed: where the training point may lie on the reference (``adapters.persam.location_allowed`` of the
    reference image): the ungated arg-max lands in the air on the Colin27 slab's k=1 too, and the weights are
    then fitted to a mask of the background.
    """
    reference = persam_f_reference(segmenter, embedding, mask, parity=parity, intensity_range=intensity_range,
                                   sized=sized)
    pos, _ = _positive_point(segmenter, reference, embedding, allowed)
    prompts = Prompts(points=pos[None].astype(np.float32), point_labels=np.array([1]),
                      candidate_half_sides_mm=candidate_half_sides(reference, "persam_f"))
    result = segmenter.predict(embedding, decoder_prompts(segmenter, prompts), multimask_output=True)
    if result.low_res_logits.shape[0] != 3:
        raise ValueError(
            f"PerSAM-F mixes 3 multimask outputs but {segmenter.name!r} returned {result.low_res_logits.shape[0]}"
        )
    with torch.inference_mode(False):
        logits_high = _upscaled(segmenter, result.low_res_logits, embedding)
        weights = train_mask_weights(logits_high, np.asarray(mask, dtype=bool), iterations=iterations, lr=lr)
    return PerSAMFModel(reference, weights, pos, result.low_res_logits)


def persam_f_segment(
    segmenter: Segmenter, model: PerSAMFModel, embedding: Embedding, *, allowed: np.ndarray | None = None
) -> PerSAMResult:
    """Segment with the learned weights: weighted multimask step, then two box refinements.

    allowed: where the positive point may lie (``adapters.persam.location_allowed``).
    """
    check_same_model(model.reference, embedding)
    pos, conf = _positive_point(segmenter, model.reference, embedding, allowed)
    points, labels = pos[None].astype(np.float32), np.array([1], dtype=np.int64)
    sides = candidate_half_sides(model.reference, "persam_f")
    step1 = run_step(segmenter, embedding, "step1",
                     Prompts(points=points, point_labels=labels, candidate_half_sides_mm=sides), multimask=True)
    w = torch.as_tensor(model.mask_weights.weights)
    mixed_mask = (mix(_upscaled(segmenter, step1.result.low_res_logits, embedding).cpu(), w) > 0).numpy()
    mixed_logit = mix(torch.as_tensor(step1.result.low_res_logits), w).numpy()[None]
    steps = [step1]
    refine1 = box_refinement(segmenter, embedding, "refine1", points, labels, mixed_mask, mixed_logit)
    final = mixed_mask
    if refine1 is not None:
        steps.append(refine1)
        final = refine1.mask
        refine2 = box_refinement(
            segmenter, embedding, "refine2", points, labels, refine1.mask,
            refine1.result.low_res_logits[refine1.best_idx : refine1.best_idx + 1],
        )
        if refine2 is not None:
            steps.append(refine2)
            final = refine2.mask
    return PerSAMResult(
        mask=final, positive_xy=pos, negative_xy=None,
        location_confidence=conf.detach().cpu().numpy().astype(np.float32), steps=tuple(steps),
    )
