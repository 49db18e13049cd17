"""A SAM mask decoder (the base one, or the click model's refiner) exported for ONNX Runtime on the CPU.

Why: on the CPU a click's time is its decoder passes (issue 19: the click model's refiner in torch took
~280 ms of a ~300 ms click on 2 cores, a lone click six passes). ``runtime.onnx_export.DecoderOnnx``
traces segment_anything's modules as they are: channels-first image tensors transposed to tokens and back,
the dense positional encoding recomputed each call, the upscaling as two ConvTranspose nodes and each
LayerNorm2d as eight elementwise nodes. This export keeps the same parameters and the same order of
arithmetic inside every layer, in one layout:

* the image side in token layout (h*w, C) from the prompt embeddings to the logits: the dense positional
  encoding is a stored constant in that layout, the mask prompt's downscaling runs on 2x2 patches as
  MatMuls, and the transformer's output goes straight to the upscaling without a transpose;
* each ``ConvTranspose2d(kernel 2, stride 2)`` of the upscaling as one MatMul per pixel (its four output
  pixels are four column blocks), each ``LayerNorm2d`` as one ``LayerNormalization`` over channels, and
  the 4x4 sub-pixels reordered into the (4h, 4w) logits once, at the end, for the few mask tokens wanted;
* the refiner's residual (previous logits + correction, ``models.click_refiner``) inside the graph.

Masks match the torch modules' within float32 rounding (sums in another order): tested on the shared
CT/MR slices with the real weights (tests/runtime/test_onnx_decoder.py, docs/benchmarks.md section J).
Inputs and outputs are those of ``DecoderOnnx`` (one image, N prompt points); the refiner's file answers
one mask (the refiner's), the base decoder's all four mask tokens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.onnx_export import OPSET, embed_points

INPUT_NAMES = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
OUTPUT_NAMES = ["low_res_logits", "iou_predictions"]


def _patch_matrix(conv: nn.Module) -> torch.Tensor:
    """A Conv2d(kernel k, stride k) weight (out, in, k, k) as a (k*k*in, out) matrix over patches (ky, kx, in)."""
    w = conv.weight.detach()
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()


def _subpixel_matrix(deconv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A ConvTranspose2d(kernel 2, stride 2) as (in, 4*out) weights and (4*out,) bias, columns (ky, kx, out)."""
    w = deconv.weight.detach()  # (in, out, 2, 2)
    if tuple(w.shape[2:]) != (2, 2) or tuple(deconv.stride) != (2, 2):
        raise ValueError(f"the fast decoder export needs 2x2 stride-2 upscaling, got {tuple(w.shape)}")
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous(), deconv.bias.detach().repeat(4)


class FastDecoderOnnx(nn.Module):
    """segment_anything's prompt encoder + mask decoder in token layout (see the module's docstring).

    Inputs: image_embeddings (1, C, h, w); point_coords (1, N, 2) in the model's input frame; point_labels
    (1, N) float (-1 pad, 0 negative, 1 positive, 2/3 box corners); mask_input (1, 1, 4h, 4w) logits;
    has_mask_input (1,) 0 or 1. Outputs: low_res_logits (1, K, 4h, 4w) and iou_predictions (1, K), K = 4
    (every mask token) or, with ``residual`` (the click refiner), K = 1: mask_input * has_mask_input +
    the first token's mask.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, *, residual: bool = False):
        super().__init__()
        self.prompt_encoder, self.mask_decoder, self.residual = prompt_encoder, mask_decoder, residual
        h, w = prompt_encoder.image_embedding_size
        self.grid = (h, w)
        with torch.no_grad():
            pe = prompt_encoder.get_dense_pe()  # (1, C, h, w), computed once as torch computes it each call
        self.register_buffer("key_pe", pe.flatten(2).permute(0, 2, 1).contiguous())  # (1, h*w, C)
        down = prompt_encoder.mask_downscaling  # conv 2x2/2, LayerNorm2d, act, conv 2x2/2, LayerNorm2d, act, conv 1x1
        self.down_w = [_patch_matrix(down[0]), _patch_matrix(down[3]), _patch_matrix(down[6])]
        up = mask_decoder.output_upscaling  # deconv 2x2/2, LayerNorm2d, act, deconv 2x2/2, act
        self.up0_w, self.up0_b = _subpixel_matrix(up[0])
        self.up1_w, self.up1_b = _subpixel_matrix(up[3])
        self.tokens = 1 if residual else mask_decoder.num_mask_tokens

    @staticmethod
    def _ln(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """segment_anything's LayerNorm2d (channels first) on channels-last data."""
        return F.layer_norm(x, tuple(norm.weight.shape), norm.weight, norm.bias, norm.eps)

    def _dense(self, mask_input: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """The dense prompt embedding (1, h*w, C): the mask's downscaling, or ``no_mask_embed`` without a mask."""
        pe = self.prompt_encoder
        down = pe.mask_downscaling
        h, w = self.grid
        x = mask_input.reshape(h, 2, 2, w, 2, 2)  # rows (y, ky1, ky0), cols (x, kx1, kx0)
        # the first conv's patches (ky0, kx0), its output grid in order (y, ky1, x, kx1) for the second conv
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(4 * h * w, 4) @ self.down_w[0] + down[0].bias
        x = down[2](self._ln(x, down[1]))
        c = x.shape[-1]
        x = x.reshape(h, 2, w, 2, c).permute(0, 2, 1, 3, 4).reshape(h * w, 4 * c) @ self.down_w[1] + down[3].bias
        x = down[5](self._ln(x, down[4]))
        x = (x @ self.down_w[2] + down[6].bias)[None]  # (1, h*w, C)
        return has_mask * x + (1 - has_mask) * pe.no_mask_embed.weight

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = self.mask_decoder, self.mask_decoder.transformer
        h, w = self.grid
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)
        tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat((tokens, sparse), dim=1)
        keys = image_embeddings.flatten(2).permute(0, 2, 1) + self._dense(mask_input, has_mask_input)
        # TwoWayTransformer.forward after its flatten/permute, unchanged
        queries = tokens
        for layer in t.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=self.key_pe)
        attn_out = t.final_attn_token_to_image(q=queries + tokens, k=keys + self.key_pe, v=keys)
        queries = t.norm_final_attn(queries + attn_out)
        # output_upscaling on the pixels: (h*w, C) -> (h*w*4, C/4) -> (h*w*16, C/8), rows (y, x, ky0, kx0, ky1, kx1)
        up = d.output_upscaling
        x = keys[0] @ self.up0_w + self.up0_b
        x = up[2](self._ln(x.reshape(h * w * 4, -1), up[1]))
        x = up[4](x @ self.up1_w + self.up1_b).reshape(h * w * 16, -1)
        hyper = torch.stack([d.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(self.tokens)], dim=1)
        logits = x @ hyper[0].transpose(0, 1)  # (h*w*16, K)
        logits = logits.reshape(h, w, 2, 2, 2, 2, self.tokens).permute(6, 0, 2, 4, 1, 3, 5)
        logits = logits.reshape(1, self.tokens, 4 * h, 4 * w)
        iou = d.iou_prediction_head(queries[:, 0, :])[:, : self.tokens]
        if self.residual:
            logits = logits + has_mask_input * mask_input
        return logits, iou


def export_fast_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module, path: str | Path, *,
                        residual: bool = False) -> Path:
    """Write :class:`FastDecoderOnnx` for these modules to ``path`` (N points a dynamic axis); returns it."""
    path = Path(path)
    module = FastDecoderOnnx(prompt_encoder, mask_decoder, residual=residual).cpu().eval()
    h, w = module.grid
    c = module.key_pe.shape[-1]
    args = (
        torch.zeros(1, c, h, w),
        torch.zeros(1, 3, 2),
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.zeros(1, 1, 4 * h, 4 * w),
        torch.zeros(1),
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants; parity is tested instead
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path
