"""A second ONNX export of the TinyViT encoder, written for ONNX Runtime on the CPU (``onnx-int8-fast``).

Same arithmetic as :func:`runtime.onnx_export.export_encoder` (fp32 output within 1e-6
relative), fewer passes over memory. ORT runs each node with a full read and write of its tensors,
and its copies (Split, Slice, Transpose) hardly use the second core, so on 2 cores removing nodes
is what pays (docs/benchmarks.md, CPU section, ``onnx-int8-fast``):

* qkv as three linear layers (q, k, v), each laid out for its attention product: no Split of the
  3C-wide qkv output; with dynamic int8 the three quantize the same input with the same per-tensor
  range, so the numbers are those of one fused qkv;
* the 1/sqrt(head_dim) scale folded into q's weights and bias (no Mul on q and k);
* the neck in token layout: its 1x1 conv as a MatMul and both LayerNorm2d as one
  ``LayerNormalization`` each (instead of ten elementwise nodes);
* a static batch of 1, so no shape arithmetic is left in the graph; the backend loops over a batch;
* the two crops after each window attention (rows, then columns) as one Slice.

The fp32 export (``encoder.onnx``) is untouched; this one is ``encoder-fast.onnx`` next to it.
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.onnx_export import OPSET
from models.segmenter import Segmenter
from models.tiny_vit import Attention, TinyViT


def _split_attention_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """TinyViT attention with q, k, v from three linear layers; q carries the 1/sqrt(d) scale."""
    b, n, _ = x.shape
    y = self.norm(x)
    heads, d = self.num_heads, self.head_dim
    q = self.qkv.q(y).view(b, n, heads, d).permute(0, 2, 1, 3)
    k = self.qkv.k(y).view(b, n, heads, d).permute(0, 2, 3, 1)  # already transposed for q @ k
    v = self.qkv.v(y).view(b, n, heads, d).permute(0, 2, 1, 3)
    bias = self.attention_biases[:, self.attention_bias_idxs]
    out = (q @ k + bias).softmax(-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def _split_qkv(attn: Attention) -> None:
    """Replace ``attn.qkv`` by q, k, v linear layers (exported as ``.../attn/q/MatMul`` etc.)."""
    heads, d = attn.num_heads, attn.head_dim
    weight = attn.qkv.weight.detach().view(heads, 3, d, -1)  # per head: [q | k | v] rows
    bias = attn.qkv.bias.detach().view(heads, 3, d)
    parts = {}
    for j, name in enumerate("qkv"):
        scale = d**-0.5 if name == "q" else 1.0
        lin = nn.Linear(weight.shape[-1], heads * d)
        lin.weight.data = (weight[:, j].reshape(heads * d, -1) * scale).clone()
        lin.bias.data = (bias[:, j].reshape(-1) * scale).clone()
        parts[name] = lin
    attn.qkv = nn.ModuleDict(parts)
    attn.forward = types.MethodType(_split_attention_forward, attn)


def _token_layout_forward(self: TinyViT, x: torch.Tensor) -> torch.Tensor:
    """TinyViT.forward with the neck's 1x1 conv and LayerNorm2d applied to (B, N, C) tokens."""
    x = self.patch_embed(x)
    for layer in self.layers:
        x = layer(x)
    b = x.shape[0]
    conv1, norm1, conv3, norm2 = self.neck
    y = F.layer_norm(F.linear(x, conv1.weight.flatten(1)), (conv1.out_channels,), norm1.weight, norm1.bias, norm1.eps)
    y = conv3(y.view(b, self.out_grid, self.out_grid, -1).permute(0, 3, 1, 2))
    y = F.layer_norm(y.permute(0, 2, 3, 1), (conv3.out_channels,), norm2.weight, norm2.bias, norm2.eps)
    return y.permute(0, 3, 1, 2)


class _FastEncoder(nn.Module):
    def __init__(self, encoder: TinyViT):
        super().__init__()
        self.image_encoder = encoder  # the attribute name keeps node names like the fp32 export's

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


def fast_encoder_module(segmenter: Segmenter) -> nn.Module:
    """A CPU copy of the segmenter's TinyViT encoder, rewritten as above (the original is not touched)."""
    encoder = segmenter.model.image_encoder
    if not isinstance(encoder, TinyViT):
        raise ValueError(f"the fast ONNX encoder is written for TinyViT encoders, not {type(encoder).__name__}")
    encoder = copy.deepcopy(encoder).cpu().eval()
    for module in encoder.modules():
        if isinstance(module, Attention):
            _split_qkv(module)
    encoder.forward = types.MethodType(_token_layout_forward, encoder)
    return _FastEncoder(encoder).eval()


def _constants_to_initializers(model) -> None:
    """Weight tensors the static export left in Constant nodes become initializers (the quantizer's
    node choice looks for initializer weights)."""
    from onnx import numpy_helper

    kept = []
    for node in model.graph.node:
        value = node.attribute[0] if node.op_type == "Constant" else None
        if value is not None and value.name == "value" and numpy_helper.to_array(value.t).size > 64:
            tensor = value.t
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _merge_slices(model) -> int:
    """Two chained single-axis Slices with constant arguments (``x[:, :h, :w]``) become one Slice."""
    from onnx import numpy_helper

    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dropped, merged = set(), 0
    for first in graph.node:
        if first.op_type != "Slice" or len(users.get(first.output[0], [])) != 1:
            continue
        second = users[first.output[0]][0]
        if second.op_type != "Slice" or len(first.input) < 5 or len(second.input) < 5:
            continue
        a = [values.get(n) for n in first.input[1:5]]  # starts, ends, axes, steps
        b = [values.get(n) for n in second.input[1:5]]
        if any(v is None or v.size != 1 for v in a + b) or a[2][0] == b[2][0]:
            continue
        names = []
        for j, (u, v) in enumerate(zip(a, b)):
            tensor = numpy_helper.from_array(np.concatenate([u, v]).astype(np.int64), f"{second.name}/merged_{j}")
            graph.initializer.append(tensor)
            names.append(tensor.name)
        second.input[0] = first.input[0]
        second.input[1:5] = names
        dropped.add(id(first))
        merged += 1
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return merged


def _drop_unused(model) -> None:
    """Remove the Constant nodes and initializers nothing reads any more (the merged Slices' arguments)."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    tensors = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(tensors)


def export_fast_encoder(segmenter: Segmenter, path: str | Path) -> Path:
    """Write the rewritten encoder (static batch 1, input ``image``, output ``image_embeddings``)."""
    import onnx

    path = Path(path)
    size = segmenter.geometry.target
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants; parity is tested instead
        torch.onnx.export(
            fast_encoder_module(segmenter),
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["image"],
            output_names=["image_embeddings"],
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    _constants_to_initializers(model)
    _merge_slices(model)
    _drop_unused(model)
    onnx.save(model, str(path))
    return path
