"""SAM's prompt encoder + mask decoder for B images with one prompt set each (image b pairs with prompt b).

Why: segment_anything's ``MaskDecoder.predict_masks`` repeats the image embedding once per prompt, which
assumes one image. Training the click model (``adapters.click_train``) and serving many sessions at once
(``models.decode_many``, ``app.decode_batcher``) decode many images in one call; this runs the same
modules and the same arithmetic as ``MaskDecoder.forward`` per pair, without the repeat.
"""

from __future__ import annotations

import torch


def decode_batched(
    prompt_encoder, mask_decoder, features: torch.Tensor, points, boxes, masks, multimask_output: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) features and B prompt sets -> (B, K, 4h, 4w) low-res logits and (B, K) predicted IoU;
    K = 1, or 3 with ``multimask_output`` (the slices ``MaskDecoder.forward`` takes)."""
    sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
    d = mask_decoder
    tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = features + dense
    pos = prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = d.transformer(src, pos, tokens)
    iou_out, mask_out = hs[:, 0, :], hs[:, 1 : 1 + d.num_mask_tokens, :]
    up = d.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([d.output_hypernetworks_mlps[i](mask_out[:, i, :]) for i in range(d.num_mask_tokens)], dim=1)
    bb, cc, hh, ww = up.shape
    logits = (hyper @ up.view(bb, cc, hh * ww)).view(bb, -1, hh, ww)
    iou = d.iou_prediction_head(iou_out)
    pick = slice(1, None) if multimask_output else slice(0, 1)
    return logits[:, pick], iou[:, pick]


def refine_batched(refiner, features, points, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`models.click_refiner.ClickRefiner`'s forward for B images: previous logits + the correction."""
    correction, iou = decode_batched(refiner.prompt_encoder, refiner.mask_decoder, features, points, boxes, masks)
    return (correction if masks is None else masks + correction), iou
