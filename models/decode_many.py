"""Many prompt requests, each on its own image embedding, answered in as few decoder calls as possible.

Why (issue 22): a GPU server with 20 sessions gets 20 small decoder calls at once; run one by one from 20
threads they contend for the GIL and the GPU queue, while one call over the batch costs little more than one.
:func:`predict_many` is :meth:`Segmenter.predict` for a list of (embedding, prompts): requests that take the
same route with the same prompt shape (number of points, box, mask, multimask) go through one prompt encoder +
mask decoder call (``models.batched_decode``); prompts of different shapes are not padded with "not a point"
rows, which would change the tokens the decoder attends to (grouping keeps each mask that of its own prompt).

With ``batch=False`` every decoder call is the segmenter's own ``decode_prompts`` for one request, which is
exactly the unbatched path (``Segmenter.predict`` runs that). A request whose prompt is bad fails alone; a
batched call that fails is retried one request at a time, so one bad request never fails the others.
A backend that replaces the decoder (ONNX, CUDA graphs, a compiled decoder) is never batched around: its
requests take its own path one by one (the click refiner, plain torch modules, is still batched, unless the
backend runs the refiner too: ``onnx-int8-fast``, ``runtime.onnx_decoder_export``; the CUDA graphs of
``torch-fp16``, ``runtime.cuda_graphs``). :func:`batches` says whether any request of a segmenter can batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import torch

from models import click_locality, point_prompts
from models.batched_decode import decode_batched, refine_batched
from models.click_refiner import ATTRIBUTE, refiner_for
from models.prompts import MaskResult, Prompts

if TYPE_CHECKING:
    from models.segmenter import Embedding, Segmenter

Decoded = tuple[torch.Tensor, torch.Tensor]  # (1, K, h, w) low-res logits, (1, K) IoU


def _owner(segmenter: "Segmenter") -> "Segmenter":
    """The torch segmenter whose modules decode (an ONNX segmenter keeps its torch variant as ``base``)."""
    return getattr(segmenter, "base", segmenter)


def _refiner(segmenter: "Segmenter", prompts: Prompts, multimask_output: bool):
    """The click refiner that answers these prompts in ``decode_prompts``, or None (the base decoder)."""
    return refiner_for(getattr(_owner(segmenter), "model", None), prompts, multimask_output)


def batches(segmenter: "Segmenter") -> bool:
    """Whether :func:`predict_many` can ever answer two requests of this segmenter in one decoder call.

    False where every request takes the segmenter's own path one by one (``_group`` is None for each): a
    look-alike without :meth:`Segmenter.predict`, a variant with a ``predict`` of its own, or a backend that
    replaced the decoder (ONNX, CUDA graphs, a compiled decoder) and has no click refiner or runs the refiner
    itself (``decodes_refiner``). ``app.interaction.ModelRunner`` sends such a segmenter's prompts straight to
    it, not through the decode batcher. (Embeddings with extra feature maps never batch either; that is per
    request, not per segmenter.)"""
    from models.segmenter import Segmenter

    if not isinstance(segmenter, Segmenter) or type(segmenter).predict is not Segmenter.predict:
        return False
    if segmenter.plain_torch_decoder():
        return True
    has_refiner = getattr(getattr(_owner(segmenter), "model", None), ATTRIBUTE, None) is not None
    return has_refiner and not getattr(segmenter, "decodes_refiner", False)


def _group(segmenter: "Segmenter", embedding: "Embedding", prompts: Prompts, multimask_output: bool) -> Hashable:
    """Requests with equal keys can share one decoder call; None: this one runs alone."""
    refiner = _refiner(segmenter, prompts, multimask_output)
    if embedding.extras:
        return None  # extra feature maps (SAM-UNet, SAM 2) go through the model's own decode
    if refiner is None and not segmenter.plain_torch_decoder():
        return None
    if refiner is not None and getattr(segmenter, "decodes_refiner", False):
        return None  # a backend that runs the refiner itself (runtime.onnx_backend): its own path
    return (
        "refiner" if refiner is not None else "base",
        bool(multimask_output),
        None if prompts.points is None else len(prompts.points),
        prompts.box is not None,
        None if prompts.mask_logits is None else prompts.mask_logits.shape,
        embedding.model_name,
        tuple(embedding.features.shape),
        embedding.features.dtype,
    )


def _decode_group(
    segmenter: "Segmenter", embeddings: Sequence["Embedding"], prompts: Sequence[Prompts], multimask_output: bool
) -> list[Decoded]:
    """One prompt encoder + mask decoder call over requests of one group."""
    owner = _owner(segmenter)
    tensors = [owner.prompt_tensors(e, p) for e, p in zip(embeddings, prompts)]
    points = None
    if tensors[0][0] is not None:
        points = (torch.cat([t[0][0] for t in tensors]), torch.cat([t[0][1] for t in tensors]))
    boxes = torch.cat([t[1] for t in tensors]) if tensors[0][1] is not None else None
    masks = torch.cat([t[2] for t in tensors]) if tensors[0][2] is not None else None
    features = torch.cat([e.features for e in embeddings])
    refiner = _refiner(segmenter, prompts[0], multimask_output)
    if refiner is not None:  # what ClickRefiner.forward and Segmenter.decode_prompts do, per pair
        low, iou = refine_batched(refiner, features, points, boxes, masks)
        low = low.float()
        if multimask_output:
            low, iou = low.expand(-1, 3, -1, -1), iou.expand(-1, 3)
    else:
        model = owner.model
        low, iou = decode_batched(model.prompt_encoder, model.mask_decoder, features, points, boxes, masks,
                                  multimask_output)
    return [(low[b : b + 1], iou[b : b + 1]) for b in range(len(embeddings))]


def decode_prompts_many(
    segmenter: "Segmenter",
    embeddings: Sequence["Embedding"],
    prompts: Sequence[Prompts],
    multimask_output: bool,
    *,
    batch: bool = True,
) -> list[Decoded | Exception]:
    """``segmenter.decode_prompts`` for each (embedding, prompts); an exception in the slot of a request
    that failed. ``batch``: requests of one group share a decoder call."""
    out: list[Decoded | Exception | None] = [None] * len(embeddings)
    groups: dict[Hashable, list[int]] = {}
    alone: list[int] = []
    for i, (e, p) in enumerate(zip(embeddings, prompts)):
        key = _group(segmenter, e, p, multimask_output) if batch else None
        (alone if key is None else groups.setdefault(key, [])).append(i)
    for members in groups.values():
        if len(members) == 1:
            alone += members
            continue
        try:
            decoded = _decode_group(segmenter, [embeddings[i] for i in members], [prompts[i] for i in members],
                                    multimask_output)
        except Exception:  # noqa: BLE001 - find the request at fault: each alone
            alone += members
            continue
        for i, d in zip(members, decoded):
            out[i] = d
    for i in sorted(alone):
        try:
            out[i] = segmenter.decode_prompts(embeddings[i], prompts[i], multimask_output)
        except Exception as e:  # noqa: BLE001 - this request's error, not the others'
            out[i] = e
    return out  # type: ignore[return-value]


def predict_many(
    segmenter: "Segmenter",
    embeddings: Sequence["Embedding"],
    prompts: Sequence[Prompts],
    multimask_output: bool = False,
    *,
    batch: bool = True,
) -> list[MaskResult | Exception]:
    """:meth:`Segmenter.predict` for each (embedding, prompts): a MaskResult, or the exception that request
    raised (the others are answered)."""
    out: list[MaskResult | Exception | None] = [None] * len(embeddings)
    points_only, rest = [], []
    for i, (e, p) in enumerate(zip(embeddings, prompts)):
        try:
            if e.model_name != segmenter.name:
                raise RuntimeError(
                    f"this embedding was computed by {e.model_name!r}, not {segmenter.name!r}: call embed() again"
                )
            p.validate(e.original_size)
        except Exception as err:  # noqa: BLE001
            out[i] = err
            continue
        (points_only if point_prompts.takes(segmenter, p) else rest).append(i)
    decoded: dict[int, tuple | Exception] = {}
    if points_only:
        answers = point_prompts.decode_points_many(
            segmenter, [embeddings[i] for i in points_only], [prompts[i] for i in points_only], multimask_output,
            batch=batch)
        decoded.update(zip(points_only, answers))
    if rest:
        answers = decode_prompts_many(segmenter, [embeddings[i] for i in rest], [prompts[i] for i in rest],
                                      multimask_output, batch=batch)
        decoded.update(zip(rest, answers))
    for i, d in decoded.items():
        if isinstance(d, Exception):
            out[i] = d
            continue
        try:
            if i in rest and _localised(segmenter, prompts[i], multimask_output):
                d = (click_locality.localise_result(segmenter, embeddings[i], prompts[i], d[0]), *d[1:])
            out[i] = segmenter.to_result(embeddings[i], *d)
        except Exception as err:  # noqa: BLE001
            out[i] = err
    return out  # type: ignore[return-value]


def _localised(segmenter: "Segmenter", prompts: Prompts, multimask_output: bool) -> bool:
    """Whether this answer is a corrective click of the shipped click model, kept local (``models.click_locality``)."""
    refined = point_prompts.refiner_of(segmenter) is not None and _refiner(segmenter, prompts, multimask_output) is not None
    return click_locality.applies(prompts, refined)


def first(results: list[MaskResult | Exception]) -> MaskResult:
    """The one answer of a one-request call, raising its error."""
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]
