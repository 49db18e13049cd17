"""PerSAM's two decoder changes, installed on an unchanged ``segment_anything`` mask decoder.

PerSAM (Zhang et al., ICLR 2024; ``per_segment_anything/modeling/transformer.py`` of
ZrrSkywalker/Personalize-SAM) edits SAM's ``TwoWayTransformer`` in two places:

* **target-guided attention**: in ``cross_attn_token_to_image`` of every ``TwoWayAttentionBlock``
  (not in ``final_attn_token_to_image``) the attention map is re-weighted by the location prior:
  ``a = softmax(q k^T / sqrt(c)); a = softmax(a + attn_sim)``;
* **target-semantic prompting**: the target embedding is added to the token queries before each
  block and to the query of the final token-to-image attention.

Why hooks and not a fork or a subclass: every SAM-family variant of the registry (LiteMedSAM, SAM
ViT-B/L/H, MobileSAM ...) builds its decoder from ``segment_anything``'s classes, so forward
(pre-)hooks on *those* modules personalise all of them at once, keep the state-dict names, and
leave one copy of the decoder code. A second softmax cannot be injected from outside
``Attention.forward``, so the attention hook is a forward hook that recomputes the module's output
with its own projections (``q_proj/k_proj/v_proj/out_proj``); the cost is one extra 7 x 4096
attention per block.

Why a context manager and thread gating: the model is shared read-only by every UI session. The
hooks exist only inside ``with persam_guidance(...)`` (removed in ``finally``, so an exception
cannot leave them behind), and they act only in the thread that installed them, so a plain
``predict`` that another session runs at the same moment on the same model is not personalised.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn


class UnsupportedDecoderError(ValueError):
    """The model's mask decoder is not a segment_anything-style two-way transformer decoder."""


def mask_decoder_of(segmenter: object) -> nn.Module:
    """The torch mask decoder of a promptable ``Segmenter``.

    UnsupportedDecoderError for backends without one (ONNX) and for prompt-free models (SAM-Adapter),
    which PerSAM's point and box prompts cannot steer.
    """
    model = getattr(segmenter, "model", None)
    name = getattr(segmenter, "name", type(segmenter).__name__)
    decoder = getattr(model, "mask_decoder", None)
    if isinstance(decoder, nn.Module) and getattr(model, "prompt_encoder", None) is None:
        raise UnsupportedDecoderError(f"{name!r} segments without prompts: one-shot needs a promptable model")
    if not isinstance(decoder, nn.Module):
        raise UnsupportedDecoderError(
            f"{name!r} has no PyTorch mask decoder to personalise "
            "(PerSAM needs the PyTorch backend, not ONNX)"
        )
    return decoder


def two_way_transformer(mask_decoder: nn.Module) -> nn.Module:
    """The ``TwoWayTransformer`` inside a mask decoder; UnsupportedDecoderError naming what is missing.

    Found by type among the decoder's submodules, so decoders that nest it (SAM-UNet keeps it in
    ``mask_decoder.sam_mask_decoder.transformer``) are served as well as SAM's own ``MaskDecoder``.
    """
    found = [m for m in mask_decoder.modules() if isinstance(m, TwoWayTransformer)]
    if len(found) != 1:
        raise UnsupportedDecoderError(
            f"{type(mask_decoder).__name__} holds {len(found)} segment_anything TwoWayTransformer modules, not 1: "
            "PerSAM needs a SAM-style mask decoder"
        )
    return found[0]


def guided_attention(
    attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_sim: torch.Tensor
) -> torch.Tensor:
    """segment_anything ``Attention.forward`` with PerSAM's second softmax over ``attn + attn_sim``.

    q: (B, Nq, C) tokens; k, v: (B, Nk, C) image tokens; attn_sim: broadcastable to (B, heads, Nq, Nk).
    """
    qh = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    kh = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    vh = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    a = qh @ kh.permute(0, 1, 3, 2)
    a = a / math.sqrt(qh.shape[-1])
    a = torch.softmax(a, dim=-1)
    a = torch.softmax(a + attn_sim, dim=-1)
    return attn.out_proj(attn._recombine_heads(a @ vh))


def _get(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    return kwargs[name] if name in kwargs else args[index]


def _set(args: tuple, kwargs: dict, name: str, index: int, value: Any) -> tuple[tuple, dict]:
    if name in kwargs:
        return args, {**kwargs, name: value}
    args = list(args)
    args[index] = value
    return tuple(args), kwargs


@contextmanager
def persam_guidance(
    mask_decoder: nn.Module,
    *,
    attn_sim: torch.Tensor | None = None,
    target_embedding: torch.Tensor | None = None,
    leak_into_query_pe: bool = False,
) -> Iterator[None]:
    """Personalise ``mask_decoder`` for the calls made inside the block (this thread only).

    attn_sim: (1, 1, 1, h*w) float, sigmoid of the standardised location prior on the feature grid.
    target_embedding: (1, 1, C) float, the masked-mean reference feature.
    leak_into_query_pe: reproduce the official in-place ``queries += target_embedding`` before block
      0, which also changes the tokens used as ``query_pe`` in every block and in the final
      attention (so the final query carries the target embedding twice). False = what the paper
      describes: the embedding is added to the queries only.
    """
    transformer = two_way_transformer(mask_decoder)
    owner = threading.get_ident()
    handles = []

    def mine() -> bool:
        return threading.get_ident() == owner

    def add_to(name: str, index: int, value: torch.Tensor):
        def hook(module, args, kwargs):
            if not mine():
                return None
            x = _get(args, kwargs, name, index)
            return _set(args, kwargs, name, index, x + value.to(x.dtype))

        return hook

    def guided(module, args, kwargs, output):
        if not mine():
            return None
        q, k, v = (_get(args, kwargs, n, i) for i, n in enumerate(("q", "k", "v")))
        return guided_attention(module, q, k, v, attn_sim.to(q.dtype))

    try:
        if attn_sim is not None:
            for layer in transformer.layers:
                handles.append(layer.cross_attn_token_to_image.register_forward_hook(guided, with_kwargs=True))
        if target_embedding is not None:
            te = target_embedding
            if leak_into_query_pe:
                # queries IS point_embedding before block 0: the in-place add changes both.
                handles.append(
                    transformer.register_forward_pre_hook(add_to("point_embedding", 2, te), with_kwargs=True)
                )
                first = 1
            else:
                first = 0
            for layer in list(transformer.layers)[first:]:
                handles.append(layer.register_forward_pre_hook(add_to("queries", 0, te), with_kwargs=True))
            handles.append(
                transformer.final_attn_token_to_image.register_forward_pre_hook(add_to("q", 0, te), with_kwargs=True)
            )
        yield
    finally:
        for h in handles:
            h.remove()
