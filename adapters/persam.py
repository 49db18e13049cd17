"""PerSAM, training-free one-shot personalisation of any SAM-family ``Segmenter``.

Follows ``persam.py`` of ZrrSkywalker/Personalize-SAM (Zhang et al., "Personalize Segment Anything
Model with One Shot", ICLR 2024), step by step (``shared/parity/persam/manifest.json``,
``persam_steps``):

1. target embedding = mean of the reference image features under the reference mask;
2. location confidence = cosine similarity of that embedding with every target feature, upsampled
   like SAM's mask logits to the target image;
3. positive point = arg-max, negative point = arg-min of the map (first occurrence on ties);
4. step 1: decoder call with both points, the location prior as target-guided attention and the
   target embedding as target-semantic prompt (``adapters.decoder_hooks``);
5. refinement 1: same points + step-1 logits as mask prompt (multimask, best score);
6. refinement 2: same points + the box of the best mask + its logits (multimask, best score).

``parity=True`` reproduces three behaviours of the official code that this module otherwise fixes
(the default is the clean behaviour; ``tests/adapters/test_persam_parity.py`` shows each difference):

* the reference mask is drawn in (128, 0, 0) and pushed through the model's image preprocessing
  (pixel normalisation for SAM), so a feature cell is selected when the bilinearly sampled value is
  > 0 after normalisation (R > 123.7), not by how much of the cell the mask covers. Clean: the mask
  is resampled into the model's input frame and a cell is selected when the mask covers >= 50 % of
  it (the most-covered cell if none does);
* the in-place ``queries += target_embedding`` that also shifts ``query_pe`` (see decoder_hooks);
* the attention prior is the original-size map stretched onto the whole feature grid, which for a
  non-square image ignores SAM's bottom/right padding and shifts the prior. Clean: the similarity
  is standardised on the feature grid itself over the cells that hold the image, padding cells get
  the lowest value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from adapters.decoder_hooks import mask_decoder_of, persam_guidance
from models import point_prompts
from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding, Segmenter

# PerSAM's annotation colour (RGB); only the red channel matters.
PERSAM_MASK_RGB = (128, 0, 0)
MIN_COVERAGE = 0.5
POINT_ROUTE = True  # points alone through models.point_prompts (PerSAM-F brain 0.429 -> 0.596: docs/clicks.md, One-shot)
# The positive point may only lie on pixels whose grey value is within these percentiles of the reference
# structure's (fixed a priori, not tuned): see ``location_allowed``.
GATE_PERCENTILES = (1.0, 99.0)
# The point route's box candidates on a target, as multiples of the reference structure's half extent, for the
# methods in SIZED_METHODS (docs/clicks.md, "One-shot: candidates the size of the reference"; the factors were fixed
# before the run). The route's own sizes (5, 10, 20 mm) cannot hold a whole brain, and PerSAM's prompts carry no
# spacing, so a reference in pixels is the one size a one-shot method knows.
SIZE_FACTORS = (0.5, 1.0, 1.5)
SIZED_METHODS: frozenset[str] = frozenset({"persam", "persam_f"})
# The positive point may only lie within the reference structure's box, scaled by POSITION_FACTOR about its centre, at
# the same place relative to the target image (anatomy stays roughly in place between slices of a study), for the
# methods in POSITION_METHODS (docs/clicks.md, "One-shot: the point near where the reference was"; the factor was
# fixed before the run, and every method joined by its rule in session 18: held out PerSAM-box 0.460 -> 0.480,
# PerSAM and PerSAM-F +0.0003, shared brain and head unchanged).
POSITION_FACTOR = 1.5
POSITION_METHODS: frozenset[str] = frozenset({"persam", "persam_f", "persam_box"})


class ReferenceMaskError(ValueError):
    """The reference mask cannot define a target (empty, wrong shape)."""


@dataclass(frozen=True)
class DecoderStep:
    """One decoder call of the cascade: what went in, what came out, which mask was kept."""

    name: str
    prompts: Prompts
    result: MaskResult
    best_idx: int

    @property
    def mask(self) -> np.ndarray:
        return self.result.masks[self.best_idx]


@dataclass(frozen=True)
class PerSAMResult:
    """Output on one target image.

    mask: (H, W) bool, the final mask. positive_xy / negative_xy: (2,) int pixel (x, y) of the chosen
    points (negative_xy None for PerSAM-F). location_confidence: (H, W) float32 cosine-similarity map.
    steps: the decoder calls in order (step1, refine1, refine2; fewer when a step gave an empty mask).
    """

    mask: np.ndarray
    positive_xy: np.ndarray
    negative_xy: np.ndarray | None
    location_confidence: np.ndarray
    steps: tuple[DecoderStep, ...]
    attn_sim: np.ndarray | None = None

    @property
    def score(self) -> float:
        last = self.steps[-1]
        return float(last.result.scores[last.best_idx])


@dataclass(frozen=True)
class PerSAMReference:
    """What PerSAM keeps of the reference: a unit target feature and the raw target embedding.

    target_feat: (1, C) unit vector for the cosine similarity. target_embedding: (1, 1, C), added to
    the decoder's token queries. selected: (h, w) bool, the feature cells that defined it.
    intensity_range: (lo, hi) grey values of the reference structure (``reference_intensity_range``), where the
    positive point may lie; None (parity, or a reference saved before it existed) = no gate.
    half_extent_px: half the larger side of the reference structure's tight box (``half_extent``), for the point
    route's candidate boxes (``candidate_half_sides``); None = the route's fixed sizes.
    position_box: the reference structure's tight box as fractions of the image's width and height (x0, y0, x1, y1),
    for ``position_region``; None (parity) = no position gate.
    """

    target_feat: torch.Tensor
    target_embedding: torch.Tensor
    selected: np.ndarray
    model_name: str
    parity: bool
    intensity_range: tuple[float, float] | None = None
    half_extent_px: float | None = None
    position_box: tuple[float, float, float, float] | None = None


# --- reference ----------------------------------------------------------------------------------
def _check_mask(mask: np.ndarray, embedding: Embedding) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(embedding.original_size):
        raise ReferenceMaskError(
            f"reference mask has shape {mask.shape} but the reference image is {tuple(embedding.original_size)}: "
            "give the mask of that very slice"
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise ReferenceMaskError("reference mask is empty: draw the structure on the reference slice first")
    return mask


def reference_grid_values(
    segmenter: Segmenter, mask: np.ndarray, grid: tuple[int, int], *, parity: bool
) -> torch.Tensor:
    """(H, W) bool mask -> (h, w) float on the feature grid; cells with value > threshold are selected.

    parity: the official path (annotation image through ``segmenter.preprocess``, bilinear to the
    grid, channel 0; select > 0). Clean: fraction of each cell covered by the mask (select >= 0.5).
    """
    if parity:
        rgb = np.zeros(mask.shape + (3,), dtype=np.uint8)
        rgb[mask] = PERSAM_MASK_RGB
        x = segmenter.preprocess(rgb)
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)[0, 0]
    geometry = segmenter.geometry
    newh, neww = geometry.input_size(mask.shape)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(newh, neww), mode="bilinear", align_corners=False, antialias=True)
    s = geometry.target
    t = F.pad(t, (0, s - neww, 0, s - newh))
    return F.adaptive_avg_pool2d(t, grid)[0, 0]


def select_reference_cells(values: torch.Tensor, *, parity: bool) -> torch.Tensor:
    """(h, w) values -> (h, w) bool selection (never empty in clean mode)."""
    if parity:
        return values > 0
    selected = values >= MIN_COVERAGE
    if not bool(selected.any()):
        selected = values == values.max()
    return selected


def reference_features(
    segmenter: Segmenter, embedding: Embedding, mask: np.ndarray, *, parity: bool
) -> tuple[torch.Tensor, np.ndarray]:
    """Features of the reference under its mask -> ((N, C) float, (h, w) bool selection)."""
    mask = _check_mask(mask, embedding)
    feats = embedding.features[0]  # (C, h, w)
    grid = tuple(feats.shape[-2:])
    values = reference_grid_values(segmenter, mask, grid, parity=parity).to(feats.device)
    selected = select_reference_cells(values, parity=parity)
    if not bool(selected.any()):
        raise ReferenceMaskError(
            f"the reference mask ({int(mask.sum())} px) covers no feature cell of the {grid[0]}x{grid[1]} grid "
            "in parity mode; use the default (clean) mode for small structures"
        )
    return feats.permute(1, 2, 0)[selected], selected.cpu().numpy()


def persam_reference(
    segmenter: Segmenter, embedding: Embedding, mask: np.ndarray, *, parity: bool = False,
    intensity_range: tuple[float, float] | None = None, sized: bool = True,
) -> PerSAMReference:
    """PerSAM's target embedding: the mean reference feature under the mask.

    sized: keep the reference's size for the point route's candidates (``candidate_half_sides``); False = the route's
    own sizes, as before session 17."""
    selected_feats, selected = reference_features(segmenter, embedding, mask, parity=parity)
    target_embedding = selected_feats.mean(0).unsqueeze(0)
    target_feat = target_embedding / target_embedding.norm(dim=-1, keepdim=True)
    return PerSAMReference(
        target_feat, target_embedding.unsqueeze(0), selected, embedding.model_name, parity,
        None if parity else intensity_range, half_extent(mask) if sized and not parity else None,
        None if parity else relative_box(mask),
    )


def half_extent(mask: np.ndarray) -> float | None:
    """Half the larger side (pixels) of the (H, W) mask's tight box; None if it is empty."""
    box = box_of(np.asarray(mask, dtype=bool))
    return None if box is None else float(max(box[2] - box[0], box[3] - box[1]) + 1) / 2


def relative_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The (H, W) mask's tight box as fractions of the width and height, edges outside (x0, y0, x1, y1); None if empty."""
    mask = np.asarray(mask, dtype=bool)
    box = box_of(mask)
    if box is None:
        return None
    h, w = mask.shape
    return (box[0] / w, box[1] / h, (box[2] + 1) / w, (box[3] + 1) / h)


def position_region(
    size: tuple[int, int], reference: PerSAMReference, method: str, on: bool | None = None
) -> np.ndarray | None:
    """(H, W) bool: where ``method``'s positive point may lie on a target of ``size`` (H, W): the reference's
    ``position_box`` scaled by ``POSITION_FACTOR`` about its centre; None (anywhere) for methods not in
    ``POSITION_METHODS`` (``on``: True / False overrides that for one call), parity references and references
    without a box."""
    gated = method in POSITION_METHODS if on is None else on
    if not gated or reference.parity or reference.position_box is None:
        return None
    h, w = size
    x0, y0, x1, y1 = reference.position_box
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * POSITION_FACTOR, (y1 - y0) / 2 * POSITION_FACTOR
    rows = slice(max(0, math.floor((cy - hy) * h)), math.ceil((cy + hy) * h))
    cols = slice(max(0, math.floor((cx - hx) * w)), math.ceil((cx + hx) * w))
    out = np.zeros((h, w), dtype=bool)
    out[rows, cols] = True
    return out


def candidate_half_sides(reference: PerSAMReference, method: str) -> tuple[float, ...] | None:
    """The point route's half-sides for ``method``'s point prompts: ``SIZE_FACTORS`` x the reference's half extent
    where ``method`` is in ``SIZED_METHODS`` (never in parity mode); else None, the route's own sizes. They are
    pixels read as mm, since one-shot prompts carry no spacing (1 mm a pixel)."""
    if method not in SIZED_METHODS or reference.parity or reference.half_extent_px is None:
        return None
    return tuple(f * reference.half_extent_px for f in SIZE_FACTORS)


# --- location gate -------------------------------------------------------------------------------
def grey(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) model input -> (H, W) float32 grey value (a windowed slice repeats it in RGB)."""
    a = np.asarray(image, dtype=np.float32)
    return a.mean(axis=2) if a.ndim == 3 else a


def reference_intensity_range(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """[1st, 99th] percentile of the reference image's grey values under its (H, W) bool mask."""
    lo, hi = np.percentile(grey(image)[np.asarray(mask, dtype=bool)], GATE_PERCENTILES)
    return float(lo), float(hi)


def location_allowed(image: np.ndarray | None, intensity_range: tuple[float, float] | None) -> np.ndarray | None:
    """(H, W) bool: where the positive point may lie on ``image`` (None = anywhere).

    Why: the cosine-similarity arg-max often falls in the air outside the head (session 10, PerSAM-F on
    held-out volumes: 5 of 11 Colin27 cerebellum and 15 of 29 Colin27 brain targets; the mask then covers
    most of the slice). A point may only land on pixels that look like the reference structure: grey value
    within the reference's ``intensity_range`` (None for parity references and ones saved before it: no gate).
    """
    if image is None or intensity_range is None:
        return None
    lo, hi = intensity_range
    g = grey(image)
    return (g >= lo) & (g <= hi)


# --- location prior ------------------------------------------------------------------------------
def similarity_grid(target_feat: torch.Tensor, embedding: Embedding) -> torch.Tensor:
    """(1, C) unit target feature x (1, C, h, w) features -> (1, 1, h, w) cosine similarity."""
    feats = embedding.features[0]
    c, h, w = feats.shape
    feats = feats / feats.norm(dim=0, keepdim=True)
    return (target_feat.to(feats.device) @ feats.reshape(c, h * w)).reshape(1, 1, h, w)


def location_confidence(
    segmenter: Segmenter, sim: torch.Tensor, embedding: Embedding
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, h, w) similarity -> ((1, 1, 4h, 4w) upsampled, (H, W) map at the original image size).

    The official code upsamples x4 (to the low-res logit size) and then treats the map as mask logits.
    """
    sim_x4 = F.interpolate(sim, scale_factor=4, mode="bilinear", align_corners=False)
    conf = segmenter.geometry.logits_to_original(sim_x4, embedding.original_size)[0, 0]
    return sim_x4, conf


def select_points(conf: torch.Tensor, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) map -> positive (x, y) at the maximum, negative (x, y) at the minimum (first occurrence).

    allowed: (H, W) bool from ``location_allowed``; the positive point is the maximum over those pixels
    (the ungated maximum if there are none). The negative point is never gated.
    """
    flat = conf.detach().cpu().numpy().ravel()
    w = conf.shape[1]
    pos, neg = int(np.argmax(flat)), int(np.argmin(flat))
    if allowed is not None:
        ok = np.asarray(allowed, dtype=bool).ravel()
        if ok.shape != flat.shape:
            raise ValueError(f"allowed has {ok.size} pixels but the location map {tuple(conf.shape)}")
        if ok.any():
            pos = int(np.flatnonzero(ok)[np.argmax(flat[ok])])
    return np.array([pos % w, pos // w], dtype=np.int64), np.array([neg % w, neg // w], dtype=np.int64)


def standardised_prior(
    segmenter: Segmenter, sim: torch.Tensor, conf: torch.Tensor, embedding: Embedding, *, parity: bool
) -> torch.Tensor:
    """The attention prior before the sigmoid, (1, 1, h, w).

    parity: the (H, W) map standardised (unbiased std) and stretched bilinearly onto the grid.
    Clean: the grid similarity standardised over the cells that hold the image; padding cells get
    the minimum, so they attract no attention.
    """
    grid = tuple(sim.shape[-2:])
    if parity:
        z = (conf - conf.mean()) / torch.std(conf)
        return F.interpolate(z[None, None], size=grid, mode="bilinear", align_corners=False)
    newh, neww = segmenter.geometry.input_size(embedding.original_size)
    s = segmenter.geometry.target
    rows = min(grid[0], math.ceil(newh * grid[0] / s))
    cols = min(grid[1], math.ceil(neww * grid[1] / s))
    valid = sim[..., :rows, :cols]
    z = (sim - valid.mean()) / torch.std(valid)
    out = torch.full_like(z, float(z[..., :rows, :cols].min()))
    out[..., :rows, :cols] = z[..., :rows, :cols]
    return out


def attention_prior(standardised: torch.Tensor) -> torch.Tensor:
    """(1, 1, h, w) -> attn_sim (1, 1, 1, h*w): sigmoid, flattened like the official code."""
    return standardised.sigmoid().unsqueeze(0).flatten(3)


# --- the cascade ---------------------------------------------------------------------------------
def box_of(mask: np.ndarray) -> np.ndarray | None:
    """Tight (4,) box x0, y0, x1, y1 (inclusive pixels) of a (H, W) mask; None if it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.int64)


def decoder_prompts(segmenter: Segmenter, prompts: Prompts) -> Prompts:
    """The prompts as one-shot methods send them: the base decoder, not the click model (PerSAM's prompts and
    hooks are what the base was used with; through the click model PerSAM's brain Dice fell from 0.78 to 0.03,
    tests/adapters/test_persam_litemedsam.py). With ``POINT_ROUTE``, points alone take the model's answer to
    points (``models.point_prompts``: box candidates through the base decoder, refined by the click model)."""
    if POINT_ROUTE and point_prompts.takes(segmenter, prompts):
        return prompts
    return replace(prompts, base_decoder=True)


def run_step(
    segmenter: Segmenter, embedding: Embedding, name: str, prompts: Prompts, *, multimask: bool, best: int | None = None
) -> DecoderStep:
    result = segmenter.predict(embedding, decoder_prompts(segmenter, prompts), multimask_output=multimask)
    return DecoderStep(name, prompts, result, result.best_index if best is None else best)


def box_refinement(
    segmenter: Segmenter, embedding: Embedding, name: str, points: np.ndarray, labels: np.ndarray,
    mask: np.ndarray, mask_logits: np.ndarray,
) -> DecoderStep | None:
    """Points + the box of ``mask`` + ``mask_logits`` (1, h, w) as mask prompt; None if ``mask`` is empty."""
    box = box_of(mask)
    if box is None:
        return None
    prompts = Prompts(points=points, point_labels=labels, box=box.astype(np.float32), mask_logits=mask_logits)
    return run_step(segmenter, embedding, name, prompts, multimask=True)


def persam_segment(
    segmenter: Segmenter, reference: PerSAMReference, embedding: Embedding, *, parity: bool | None = None,
    allowed: np.ndarray | None = None,
) -> PerSAMResult:
    """Segment the reference's target on one embedded image (see the module docstring).

    allowed: where the positive point may lie (``location_allowed``); ignored in parity mode.
    """
    parity = reference.parity if parity is None else parity
    check_same_model(reference, embedding)
    decoder = mask_decoder_of(segmenter)
    sim = similarity_grid(reference.target_feat, embedding)
    _, conf = location_confidence(segmenter, sim, embedding)
    pos, neg = select_points(conf, None if parity else allowed)
    points = np.stack([pos, neg]).astype(np.float32)
    labels = np.array([1, 0], dtype=np.int64)
    attn_sim = attention_prior(standardised_prior(segmenter, sim, conf, embedding, parity=parity))

    with persam_guidance(
        decoder,
        attn_sim=attn_sim,
        target_embedding=reference.target_embedding,
        leak_into_query_pe=parity,
    ):
        first = Prompts(points=points, point_labels=labels,
                        candidate_half_sides_mm=candidate_half_sides(reference, "persam"))
        step1 = run_step(segmenter, embedding, "step1", first, multimask=False, best=0)
    steps = [step1]
    refine1 = run_step(
        segmenter, embedding, "refine1",
        Prompts(points=points, point_labels=labels, mask_logits=step1.result.low_res_logits[0:1]), multimask=True,
    )
    steps.append(refine1)
    refine2 = box_refinement(
        segmenter, embedding, "refine2", points, labels, refine1.mask,
        refine1.result.low_res_logits[refine1.best_idx : refine1.best_idx + 1],
    )
    if refine2 is not None:
        steps.append(refine2)
    return PerSAMResult(
        mask=steps[-1].mask, positive_xy=pos, negative_xy=neg,
        location_confidence=conf.detach().cpu().numpy().astype(np.float32), steps=tuple(steps),
        attn_sim=attn_sim.detach().cpu().numpy(),
    )


def check_same_model(reference: PerSAMReference, embedding: Embedding) -> None:
    if reference.model_name != embedding.model_name:
        raise RuntimeError(
            f"the reference was learnt with {reference.model_name!r} but this image was embedded by "
            f"{embedding.model_name!r}: learn the reference again with the same model"
        )
