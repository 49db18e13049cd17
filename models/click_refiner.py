"""A residual decoder for corrective clicks: new logits = previous logits + a learned correction.

Why: LiteMedSAM was trained with boxes only. Three GPU runs (docs/adapters.md) showed that
training the shared mask decoder on clicks teaches it clicks but costs box Dice on structures it
never saw, and that leaving it frozen keeps the box but clicks then make masks worse. The refiner
separates the two jobs:

* a prompt with a box and no click (and any multimask query) goes through the model's own,
  frozen prompt encoder and mask decoder: box results are exactly those of the encoder adapter;
* a corrective click, which always comes with the previous low-resolution logits fed back as
  the mask prompt (``medseg eval``'s ``box+clicks``, ``clicks`` after the first click, and the
  UI), goes through a trainable copy of the prompt encoder and mask decoder whose output is
  *added* to those previous logits.

The shipped click model (``models/click_model.py``, ``weights/click_model/``) widens the scope
(``scope="prompts"``): every prompt with a point or a mask goes to the refiner, so a lone first
click, points without a box, and the neighbouring slice's mask fed as the mask prompt (3D
propagation) are all refined; a box alone still never reaches it. Without a mask prompt there is
nothing to add the correction to, so the refiner's output is the correction itself.

The copy's mask hypernetworks end in a zero-initialised layer, so an untrained refiner returns the
previous logits unchanged: a click starts out doing nothing, and training teaches it the
correction. (SAM-Med2D trains its decoder on the click iterations the same way, from the
previous mask; the residual form is ours, so that "no worse than without the click" is where
training starts rather than something it must learn.)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from models.prompts import Prompts

ATTRIBUTE = "click_refiner"  # where inject() puts it on the model; the state-dict prefix too
SCOPES = ("corrective", "prompts")  # corrective clicks only (adapters), or every point/mask prompt (the click model)


class ClickRefiner(nn.Module):
    """Trainable copies of a SAM-style prompt encoder and mask decoder that predict a logit correction."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, scope: str = "corrective"):
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"click refiner scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.prompt_encoder = copy.deepcopy(prompt_encoder)
        self.mask_decoder = copy.deepcopy(mask_decoder)
        hypernetworks = getattr(self.mask_decoder, "output_hypernetworks_mlps", None)
        if hypernetworks is None:
            raise TypeError(f"{type(mask_decoder).__name__} has no output_hypernetworks_mlps: a click refiner needs a SAM mask decoder")
        with torch.no_grad():
            for mlp in hypernetworks:
                last = mlp.layers[-1]
                last.weight.zero_()
                last.bias.zero_()
        self.requires_grad_(True)

    def applies(self, multimask_output: bool, has_points: bool, has_mask: bool) -> bool:
        """Whether this refiner takes the prompt.

        ``corrective``: points with the previous logits, one mask asked for. ``prompts``: any
        prompt with a point or a mask (a box alone never comes here).
        """
        if self.scope == "prompts":
            return has_points or has_mask
        return has_points and has_mask and not multimask_output

    def forward(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor],
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B, 1, h, w) refined low-res logits (``masks`` + correction) and (B, 1) predicted IoU.

        ``masks`` None (a first click, points alone): the correction alone."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        correction, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        if masks is None:
            return correction.float(), iou
        return masks.float() + correction.float(), iou


def refiner_for(model: nn.Module | None, prompts: Prompts, multimask_output: bool) -> ClickRefiner | None:
    """The click refiner on ``model`` that answers ``prompts``, or None: the model's own decoder does.

    The one routing rule behind ``Segmenter.decode_prompts``, the batched decoder (``models.decode_many``) and
    the backends that replace the decoder (ONNX, CUDA graphs): a box alone, or a prompt marked
    ``base_decoder``, never reaches a refiner, so box masks stay the base model's bit for bit."""
    refiner = getattr(model, ATTRIBUTE, None)
    if refiner is not None and not prompts.base_decoder and refiner.applies(
        multimask_output, prompts.points is not None, prompts.mask_logits is not None
    ):
        return refiner
    return None
