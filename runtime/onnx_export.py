"""Export-only ONNX wrappers for a SAM-family segmenter: an image encoder and a prompt decoder.

The decoder wrapper follows the facts of segment_anything's ``utils/onnx.py::SamOnnxModel``
(points and box corners as one point list with labels -1 pad, 0 negative, 1 positive, 2/3 box
corners; a mask input gated by ``has_mask_input``), written without boolean indexing so that
the number of points stays a dynamic axis. It returns the low-res logits and IoU of all four
mask tokens; the backend picks the single or the three multimask outputs as SAM does, and maps
logits back to the original image in NumPy/torch with the model's own geometry.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from models.segmenter import Segmenter

OPSET = 17


class EncoderOnnx(nn.Module):
    """(B, 3, S, S) preprocessed input -> (B, 256, h, w) image embedding."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.image_encoder = segmenter.model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


def embed_points(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``PromptEncoder._embed_points`` without boolean indexing (the number of points stays a dynamic axis):
    (1, N, 2) coords in the model's input frame, (1, N) float labels -> (1, N, C). Box corners are points
    labelled 2 and 3, SAM's padding point is labelled -1 (segment_anything ``utils/onnx.py``)."""
    pe = prompt_encoder
    coords = coords + 0.5
    coords = coords / torch.tensor([pe.input_image_size[1], pe.input_image_size[0]], dtype=coords.dtype)
    emb = pe.pe_layer._pe_encoding(coords)
    labels = labels.unsqueeze(-1)
    emb = emb * (labels != -1)
    emb = emb + pe.not_a_point_embed.weight * (labels == -1)
    for i in range(pe.num_point_embeddings):
        emb = emb + pe.point_embeddings[i].weight * (labels == i)
    return emb


class DecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder of segment_anything, for one image and N prompt points.

    Inputs: image_embeddings (1, 256, h, w); point_coords (1, N, 2) in the model's input frame;
    point_labels (1, N) float; mask_input (1, 1, 4h, 4w) logits; has_mask_input (1,) 0 or 1.
    Outputs: low_res_logits (1, 4, 4h, 4w), iou_predictions (1, 4).
    """

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        sam = segmenter.model
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)
        pe = self.prompt_encoder
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(
            1, -1, 1, 1
        )
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, iou


@contextmanager
def _exporting(segmenter: Segmenter, path: str | Path) -> Iterator[Path]:
    """The model on the CPU, no grad, the tracer's notes silenced (parity is tested instead) while ``path`` is
    written; the model goes back to its device after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = segmenter.model.to("cpu")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield path
    finally:
        model.to(segmenter.device)


def export_encoder(segmenter: Segmenter, path: str | Path) -> Path:
    """Write the image encoder (preprocessed image -> embedding) as ONNX to ``path``."""
    size = segmenter.geometry.target
    with _exporting(segmenter, path) as path:
        torch.onnx.export(
            EncoderOnnx(segmenter).eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["image"],
            output_names=["image_embeddings"],
            dynamic_axes={"image": {0: "batch"}, "image_embeddings": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def export_decoder(segmenter: Segmenter, path: str | Path) -> Path:
    """Write the prompt encoder + mask decoder (embedding, points, mask -> logits, IoU) as ONNX to ``path``."""
    size, low = segmenter.geometry.target, segmenter.low_res_size
    with _exporting(segmenter, path) as path:
        emb = EncoderOnnx(segmenter).eval()(torch.zeros(1, 3, size, size))  # the embedding's shape, per variant
        args = (emb, torch.zeros(1, 3, 2), torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 1, low, low), torch.zeros(1))
        torch.onnx.export(
            DecoderOnnx(segmenter).eval(),
            args,
            str(path),
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            output_names=["low_res_logits", "iou_predictions"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path
