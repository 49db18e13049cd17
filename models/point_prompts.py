"""Points without a box or a mask, for a model trained with boxes: box candidates, then the points.

Why: LiteMedSAM was trained with boxes only, so a lone point gives its decoder an empty mask, and the
shipped click refiner (``models/click_model.py``) answers points alone with a small blob (points:1
Dice 0.24 on the shared set, docs/clicks.md). A box it does understand. So a prompt of points alone
becomes boxes derived from the positive points: their extent (a lone point: the point itself) grown
by each of ``HALF_SIDES_MM`` on every side, physical sizes that need the pixel spacing
(``Prompts.pixel_spacing``, 1 mm when unknown). ``$MEDSEG_POINT_BOXES=picture`` (or ``mm+picture``) gives a lone
positive point the boxes of the region of similar grey level around it instead (or as well;
``models.picture_boxes``): they hold large structures the mm boxes never do, but lose on small nuclei, so they are
not the default (docs/clicks.md). The base decoder segments each box; its predicted
IoU picks one; then, where the model carries a click refiner, every point (negatives too) goes to the
refiner with the chosen box's logits as the mask prompt, which is what the refiner was trained on
(corrective clicks after a box).

This is the one answer to "points, no box" for such a model: ``Segmenter.predict`` sends it here
(``takes``), and so does every caller that asks with points: ``medseg eval --protocol points:N``,
``medseg segment --point``, the UI's lone first click (which offers the other candidates as
alternatives) and PerSAM's point prompts. A box, or a mask, never comes here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.picture_boxes import picture_boxes
from models.prompts import MaskResult, Prompts

if TYPE_CHECKING:
    from models.segmenter import Embedding, Segmenter

HALF_SIDES_MM = (5.0, 10.0, 20.0)  # grown on each side of the positives' extent (docs/clicks.md: measured)
BOXES = ("mm", "picture", "mm+picture")  # a lone positive point's candidate boxes: the mm boxes (the default), the
# picture's boxes (models.picture_boxes), or both; measured in docs/clicks.md ("A lone point's boxes from the picture")
BOXES_ENV = "MEDSEG_POINT_BOXES"
DEFAULT_BOXES = "mm"  # the picture's boxes win on large structures, lose on small nuclei: not the default by the rule
REFINES = ("none", "points", "points+box")
REFINE = "points"  # refine the candidates with every point through the click refiner, where there is one
DEFAULT_SPACING_MM = (1.0, 1.0)  # (row, col) mm per pixel when the caller does not know it
GROW_STEPS = 0  # times a candidate box whose mask touches its border is grown and decoded again
CHOICES = ("iou", "iou*stability", "refined-iou")  # what picks the candidate: the base decoder's predicted IoU,
# or it times SAM's stability score (IoU of the candidate's masks at logit > +1 and > -1), or the click refiner's
# predicted IoU of each candidate refined with the points (every candidate refined;
# experiments/point_choice_validation.py)
CHOICE_ENV = "MEDSEG_POINT_CHOICE"
DEFAULT_CHOICE = "iou"  # iou*stability won on validation, lost held out; refined-iou lost on validation, won held out:
# neither is the default by the rules fixed before their held-out runs (docs/clicks.md)
STABILITY_OFFSET = 1.0
TOUCH_PX = 2  # a mask this close to a box side touches it


def boxes_source() -> str:
    """Where a lone positive point's candidate boxes come from: ``$MEDSEG_POINT_BOXES`` (one of ``BOXES``), else
    ``DEFAULT_BOXES``."""
    value = os.environ.get(BOXES_ENV, "").strip().lower() or DEFAULT_BOXES
    if value not in BOXES:
        raise ValueError(f"{BOXES_ENV} must be one of {', '.join(BOXES)}, got {value!r}")
    return value


def choice() -> str:
    """The candidate chooser: ``$MEDSEG_POINT_CHOICE`` (one of ``CHOICES``), else ``DEFAULT_CHOICE``."""
    value = os.environ.get(CHOICE_ENV, "").strip().lower() or DEFAULT_CHOICE
    if value not in CHOICES:
        raise ValueError(f"{CHOICE_ENV} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def stability(low: torch.Tensor, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """(1, 1, h, w) logits -> (1, 1) SAM's stability score: area at logit > +offset over area at > -offset."""
    hi = (low > offset).flatten(1).sum(dim=1).float()
    lo = (low > -offset).flatten(1).sum(dim=1).float()
    return torch.where(lo > 0, hi / lo.clamp(min=1), torch.zeros_like(lo))[:, None]


def refiner_of(segmenter: "Segmenter"):
    """The click refiner that answers every point and mask prompt (the shipped click model), or None.

    ONNX segmenters keep the torch variant as ``base``; its model carries the refiner."""
    owner = getattr(segmenter, "base", segmenter)
    refiner = getattr(getattr(owner, "model", None), "click_refiner", None)
    return refiner if refiner is not None and getattr(refiner, "scope", None) == "prompts" else None


def takes(segmenter: "Segmenter", prompts: Prompts) -> bool:
    """Whether ``prompts`` are answered here: points, no box, no mask, a model with the click model."""
    return (
        prompts.points is not None
        and prompts.box is None
        and prompts.mask_logits is None
        and not prompts.base_decoder
        and refiner_of(segmenter) is not None
    )


def candidate_boxes(
    points: np.ndarray,
    labels: np.ndarray,
    image_size: tuple[int, int],
    spacing: tuple[float, float] | None = None,
    half_sides_mm: tuple[float, ...] | None = None,
) -> np.ndarray:
    """(K, 4) float32 boxes x0, y0, x1, y1: the positive points' extent grown by each half-side, clipped.

    ``points`` (N, 2) x, y pixels; ``labels`` 1 = positive; ``spacing`` (row_mm, col_mm). Always one box
    per half-side, even where clipping makes two equal: callers that mix candidates (PerSAM-F mixes three)
    count on K."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    pos = pts[np.asarray(labels).reshape(-1) == 1]
    if len(pos) == 0:
        raise ValueError("point prompts without a box need at least one positive point")
    half_sides_mm = HALF_SIDES_MM if half_sides_mm is None else half_sides_mm  # read at call time: experiments set it
    row_mm, col_mm = spacing if spacing is not None else DEFAULT_SPACING_MM
    h, w = image_size
    (x0, y0), (x1, y1) = pos.min(axis=0), pos.max(axis=0)
    boxes: list[tuple[float, ...]] = []
    for half in half_sides_mm:
        hx, hy = half / col_mm, half / row_mm
        boxes.append((max(0.0, x0 - hx), max(0.0, y0 - hy), min(w - 1.0, x1 + hx), min(h - 1.0, y1 + hy)))
    return np.asarray(boxes, np.float32)


def _candidates(embedding: "Embedding", prompts: Prompts, half_sides_mm: tuple[float, ...] | None) -> np.ndarray:
    """The candidate boxes of one request: the mm boxes, and/or (``$MEDSEG_POINT_BOXES``) the picture's boxes for
    exactly one positive point where the embedding keeps its picture and the caller gave no sizes (PerSAM gives
    its own)."""
    sides = prompts.candidate_half_sides_mm if prompts.candidate_half_sides_mm is not None else half_sides_mm
    mm = candidate_boxes(prompts.points, prompts.point_labels, embedding.original_size, prompts.pixel_spacing, sides)
    source = boxes_source()
    pos = np.asarray(prompts.points, np.float32).reshape(-1, 2)[np.asarray(prompts.point_labels).reshape(-1) == 1]
    if source == "mm" or len(pos) != 1 or getattr(embedding, "picture", None) is None or sides is not None:
        return mm
    picture = picture_boxes(embedding.picture, pos[0], prompts.pixel_spacing)
    return picture if source == "picture" else np.concatenate([mm, picture])


def grown_box(box: np.ndarray, mask: np.ndarray, touch_px: int = TOUCH_PX) -> np.ndarray | None:
    """``box`` with each side the (H, W) ``mask`` touches moved out by half the box's size, clipped to
    the image; None when the mask is empty or touches no side that can still move (it fits the box)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    half_w, half_h = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
    new = [x0, y0, x1, y1]
    if xs.min() <= x0 + touch_px and x0 > 0:
        new[0] = max(0.0, x0 - half_w)
    if ys.min() <= y0 + touch_px and y0 > 0:
        new[1] = max(0.0, y0 - half_h)
    if xs.max() >= x1 - touch_px and x1 < w - 1:
        new[2] = min(w - 1.0, x1 + half_w)
    if ys.max() >= y1 - touch_px and y1 < h - 1:
        new[3] = min(h - 1.0, y1 + half_h)
    return None if new == [x0, y0, x1, y1] else np.asarray(new, np.float32)


def decode_box(
    segmenter: "Segmenter", embedding: "Embedding", box: np.ndarray, grow_steps: int = GROW_STEPS
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One candidate: the base decoder on ``box``, grown up to ``grow_steps`` times while its mask
    touches the box (the structure goes on past it) -> (1, 1, h, w) logits, (1, 1) IoU, the last box."""
    (low, iou), box = _decode_boxes(segmenter, [embedding], [np.asarray(box, np.float32)], grow_steps, False)[0]
    return low, iou, box


def _decode_boxes(
    segmenter: "Segmenter", embeddings: list["Embedding"], boxes: list[np.ndarray], grow_steps: int, batch: bool
) -> list[tuple[tuple[torch.Tensor, torch.Tensor] | Exception, np.ndarray]]:
    """:func:`decode_box` for each (embedding, box): ((logits, IoU) or the error, the last box)."""
    from models.decode_many import decode_prompts_many

    def decode(idx: list[int]) -> list:
        return decode_prompts_many(segmenter, [embeddings[j] for j in idx],
                                   [Prompts(box=boxes[j], base_decoder=True) for j in idx], False, batch=batch)

    boxes = list(boxes)
    results = decode(list(range(len(boxes))))
    for _ in range(grow_steps):
        grown = []
        for j, r in enumerate(results):
            if isinstance(r, Exception):
                continue
            mask = (segmenter.geometry.logits_to_original(r[0][:, :1], embeddings[j].original_size) > 0)[0, 0]
            bigger = grown_box(boxes[j], mask.cpu().numpy())
            if bigger is not None:
                boxes[j] = bigger
                grown.append(j)
        if not grown:
            break
        for j, r in zip(grown, decode(grown)):
            results[j] = r
    return [(r if isinstance(r, Exception) else (r[0][:, :1].float(), r[1][:, :1].float()), np.asarray(b, np.float32))
            for r, b in zip(results, boxes)]


def decode_points(
    segmenter: "Segmenter",
    embedding: "Embedding",
    prompts: Prompts,
    multimask_output: bool,
    *,
    half_sides_mm: tuple[float, ...] | None = None,
    refine: str = REFINE,
    grow_steps: int = GROW_STEPS,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Points alone -> (1, K, h, w) low-res logits, (1, K) scores, (K, 4) the box of each mask.

    Each candidate box goes through the base decoder (``decode_prompts`` with ``base_decoder``, so
    any backend's); its predicted IoU is the candidate's score. ``multimask_output``: every candidate
    (K = the number of half-sides), the best-scored one is the answer; else K = 1, that one.
    ``refine`` "points" or "points+box" (and a click refiner on the model): each returned candidate is
    then refined with all the points (and its box) and its logits as the mask prompt; the score stays
    the base decoder's, which chose it. "none": the base decoder's masks. With the ``refined-iou``
    chooser (``$MEDSEG_POINT_CHOICE``) every candidate is refined, and the refiner's predicted IoU of
    each is its score and picks. ``half_sides_mm`` None: ``HALF_SIDES_MM``.
    """
    (answer,) = decode_points_many(segmenter, [embedding], [prompts], multimask_output, half_sides_mm=half_sides_mm,
                                   refine=refine, grow_steps=grow_steps, batch=False)
    if isinstance(answer, Exception):
        raise answer
    return answer


def decode_points_many(
    segmenter: "Segmenter",
    embeddings: list["Embedding"],
    prompts: list[Prompts],
    multimask_output: bool,
    *,
    half_sides_mm: tuple[float, ...] | None = None,
    refine: str = REFINE,
    grow_steps: int = GROW_STEPS,
    batch: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray] | Exception]:
    """:func:`decode_points` for each (embedding, prompts), or the error of a request that failed.

    ``batch``: the candidate boxes of every request go through one base decoder call, and their
    refinements through one refiner call (``models.decode_many``); else one call each, as before."""
    if refine not in REFINES:
        raise ValueError(f"refine must be one of {', '.join(REFINES)}, got {refine!r}")
    out: list = [None] * len(embeddings)
    jobs: list[tuple[int, np.ndarray]] = []  # (request, candidate box)
    for i, (e, p) in enumerate(zip(embeddings, prompts)):
        try:
            jobs += [(i, b) for b in _candidates(e, p, half_sides_mm)]
        except Exception as err:  # noqa: BLE001 - this request's error
            out[i] = err
    decoded = _decode_boxes(segmenter, [embeddings[i] for i, _ in jobs], [b for _, b in jobs], grow_steps, batch)
    per_request: dict[int, list] = {}
    for (i, _), d in zip(jobs, decoded):
        per_request.setdefault(i, []).append(d)
    refines: list[tuple[int, Prompts, torch.Tensor]] = []  # (request, corrective prompt, candidate logits)
    chosen: dict[int, tuple[list[int], torch.Tensor, np.ndarray, list]] = {}
    do_refine = refine != "none" and refiner_of(segmenter) is not None
    chooser = choice()
    refine_all = do_refine and chooser == "refined-iou"  # without a refiner (or refine "none"): the base IoU picks
    for i, candidates in per_request.items():
        failed = next((r for r, _ in candidates if isinstance(r, Exception)), None)
        if failed is not None:
            out[i] = failed
            continue
        logits = [r[0] for r, _ in candidates]
        score = torch.cat([r[1] for r, _ in candidates], dim=1)
        if chooser == "iou*stability":
            score = score * torch.cat([stability(low.float()).to(score.device) for low in logits], dim=1)
        boxes = np.stack([b for _, b in candidates])
        keep = list(range(len(boxes))) if multimask_output or refine_all else [int(torch.argmax(score[0]))]
        chosen[i] = (keep, score, boxes, [logits[k] for k in keep])
        if do_refine:
            for k in keep:
                refines.append((i, Prompts(points=prompts[i].points, point_labels=prompts[i].point_labels,
                                           box=boxes[k] if refine == "points+box" else None,
                                           mask_logits=logits[k][0].cpu().numpy()), logits[k]))
    if refines:
        from models.decode_many import decode_prompts_many

        refined = decode_prompts_many(segmenter, [embeddings[i] for i, _, _ in refines], [p for _, p, _ in refines],
                                      False, batch=batch)
        for i in chosen:
            mine = [r for (j, _, _), r in zip(refines, refined) if j == i]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                out[i] = failed
            elif refine_all:  # the refiner's IoU of every refined candidate is the score, and picks
                score = torch.cat([r[1][:, :1].float() for r in mine], dim=1)
                keep = list(range(len(mine))) if multimask_output else [int(torch.argmax(score[0]))]
                chosen[i] = (keep, score, chosen[i][2], [mine[k][0] for k in keep])
            else:
                chosen[i] = (*chosen[i][:3], [r[0] for r in mine])
    for i, (keep, score, boxes, lows) in chosen.items():
        if out[i] is None:
            out[i] = (torch.cat([low[:, :1].float() for low in lows], dim=1), score[:, keep], boxes[keep])
    return out


@torch.inference_mode()
def predict_points(
    segmenter: "Segmenter", embedding: "Embedding", prompts: Prompts, multimask_output: bool = False
) -> MaskResult:
    """:func:`decode_points` as a :class:`MaskResult` (``boxes`` set): what ``Segmenter.predict`` returns
    for points alone; callable directly for a box-trained model without the click model (the UI's lone
    click on ``litemedsam-base``, whose own decoder gives nothing for a point): candidates, unrefined."""
    prompts.validate(embedding.original_size)
    low_res, iou, boxes = decode_points(segmenter, embedding, prompts, multimask_output)
    return segmenter.to_result(embedding, low_res, iou, boxes)
