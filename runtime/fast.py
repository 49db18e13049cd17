"""GPU fast paths that keep the numbers: fused attention for SAM's ViT, bf16, channels-last, compile.

* :func:`use_sdpa_attention` turns every ``segment_anything`` ViT ``Attention`` into one that calls
  ``scaled_dot_product_attention`` with the decomposed relative-position bias passed as an
  additive mask. Same parameters and state-dict keys (the class is swapped in place, nothing is
  forked), fp32 outputs within the parity tolerances (tests/runtime/test_fast_paths.py). TinyViT
  (LiteMedSAM, MobileSAM) already uses SDPA with its attention biases.
* :func:`tuned` returns a copy of a segmenter that encodes under bf16 autocast, with the encoder
  in channels-last memory format and optionally ``torch.compile``d. The copy shares the weights
  of the original; decoding stays fp32 (it is small and sets the mask edges). With
  ``cuda_graphs=True`` a batch-1 embed (or each batch size of ``runtime.cuda_graphs.GRAPH_BATCHES``) and each prompt shape's decode replay as single CUDA graphs
  (``runtime/cuda_graphs.py``), the lowest end-to-end latency (docs/benchmarks.md, run 4).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder as sam_vit
from torch import nn

from models.segmenter import Segmenter
from runtime.conv_forms import decompose_convs, fuse_batchnorm


class SDPAAttention(sam_vit.Attention):
    """segment_anything's ViT attention computed by SDPA.

    fp32: the decomposed relative-position bias is passed as an additive attention mask (exact
    within float32 rounding). bf16/fp16 on a GPU: the bias is folded into the dot product, so that
    a flash kernel runs without materialising the (N x N) bias: with one-hot key positions,
    ``q_aug . k_aug = q . k + (rel_h[q, kh] + rel_w[q, kw]) / scale``, where
    ``q_aug = [q, rel_h / scale, rel_w / scale]`` and ``k_aug = [k, onehot(kh), onehot(kw)]``
    (v is zero-padded to the same width and the padding dropped after).
    """

    fold_bias: bool | None = None  # None: fold on CUDA in half precision; True/False forces it (tests)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, C)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rh = sam_vit.get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
            rw = sam_vit.get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
            r_q = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
            fold = self.fold_bias
            if fold is None:
                fold = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            if fold:
                out = _folded_rel_pos_attention(q, k, v, rel_h, rel_w, self.scale)
            else:
                bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def _folded_rel_pos_attention(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """Attention with the decomposed rel-pos bias inside the dot product (see SDPAAttention)."""
    b, n_heads, n, c = q.shape
    h, w = rel_h.shape[2], rel_w.shape[3]
    eye_h = torch.eye(h, dtype=q.dtype, device=q.device)
    eye_w = torch.eye(w, dtype=q.dtype, device=q.device)
    key_h = eye_h[:, None, :].expand(h, w, h).reshape(n, h)  # key (kh, kw) -> onehot(kh)
    key_w = eye_w[None, :, :].expand(h, w, w).reshape(n, w)  # key (kh, kw) -> onehot(kw)
    width = c + h + w
    pad = (-width) % 8
    q_aug = torch.cat([q, rel_h.reshape(b, n_heads, n, h) / scale, rel_w.reshape(b, n_heads, n, w) / scale], -1)
    k_aug = torch.cat([k, key_h.expand(b, n_heads, n, h), key_w.expand(b, n_heads, n, w)], -1)
    q_aug = F.pad(q_aug, (0, pad))
    k_aug = F.pad(k_aug, (0, pad))
    v_aug = F.pad(v, (0, width + pad - c))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=scale)[..., :c]


def use_sdpa_attention(model: nn.Module) -> int:
    """Swap the class of every exact ``segment_anything`` ViT Attention module; returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is sam_vit.Attention:
            module.__class__ = SDPAAttention
            n += 1
    return n


WINDOW_ATTENTION = ("sdpa", "math", "flash", "triton")

# Inductor inlines a cheap producer into every consumer load. Before a decomposed depthwise conv that
# means the GELU in front of it (MBConv's act1, PatchMerging's act) is recomputed for each of the 9 taps:
# its padded node (~20 ops, read by 9 slices) stays under the default threshold of 30 ops for
# realizing a reused node. At 16 it is written once and read 9 times (CPU output code of the LiteMedSAM
# encoder: erf calls 45 -> 13, same outputs; docs/benchmarks.md, run 5). Pass as
# ``tuned(..., inductor_options=REALIZE_STENCIL_INPUTS)``.
# Measured on the H100 (run 6): 735 -> 976 slices/s; the default of ``tuned(..., compile=True)``.
REALIZE_STENCIL_INPUTS = {"realize_opcount_threshold": 16}
# The same, plus inductor's coordinate-descent tuning of the launch parameters of the kernels it
# generates (the LayerNorm reductions and pointwise passes around our Triton and cuBLAS calls). H100,
# run 16, bf16 + Triton kernels + tanh GELU: 1516 -> 1631 slices/s at batch 512, for a compile of
# ~150 s per batch shape instead of ~45 s.
TUNED_KERNELS = {**REALIZE_STENCIL_INPUTS, "coordinate_descent_tuning": True}
SMALL_WINDOW_TOKENS = 64  # 7 x 7 windows (TinyViT stages 1 and 3); stage 2's 14 x 14 keeps SDPA


def set_window_attention(module: nn.Module, impl: str, max_tokens: int = SMALL_WINDOW_TOKENS) -> int:
    """Set ``impl`` (:data:`WINDOW_ATTENTION`) on every TinyViT attention whose window has at most
    ``max_tokens`` tokens; returns how many. Mutates ``module``: call it on a copy.

    For "math" and "flash" only short windows change by default: at 49 tokens SDPA's memory-efficient
    kernel is mostly padding, while the explicit scores of a 196-token window would be 16x larger in
    memory than at 49. "triton" (``runtime/triton_attention.py``) serves every window size.
    """
    from models.tiny_vit import Attention

    if impl not in WINDOW_ATTENTION:
        raise ValueError(f"attention must be one of {WINDOW_ATTENTION}, got {impl!r}")
    kernel = None
    if impl == "triton":
        from runtime.triton_attention import window_attention as kernel
    n = 0
    for m in module.modules():
        if isinstance(m, Attention) and m.attention_bias_idxs.shape[0] <= max_tokens:
            m.impl, m.window_kernel = impl, kernel
            n += 1
    return n


GELU_FORMS = ("erf", "tanh")
# fp16 keeps 10 mantissa bits where bf16 keeps 7: on the shared set eager bf16 alone moves the box Dice by
# -0.012 (one case -0.32), docs/benchmarks.md
PRECISIONS = ("fp32", "bf16", "fp16")


def use_tanh_gelu(module: nn.Module) -> int:
    """Every GELU of a TinyViT encoder copy in the tanh form, ``nn.GELU(approximate="tanh")``; returns how
    many were changed. Mutates ``module``: call it on a copy.

    Why: where GELU follows a GEMM it can go into the GEMM's epilogue (cuBLASLt's GELU is the tanh
    form; ``runtime/linear_gelu.py``), and in the Triton conv kernels the erf form costs more
    instructions than the rest of their work per value. The two forms differ by < 5e-4, under bf16's
    rounding (``tuned(gelu="tanh")`` allows it with bf16 only). Each MLP's ``fc1`` + GELU becomes one
    :class:`~runtime.linear_gelu.LinearGELU`; the fused conv blocks of ``runtime/triton_convs.py`` get
    ``fast_gelu``; every other ``nn.GELU`` gets ``approximate="tanh"``.
    """
    from runtime.linear_gelu import LinearGELU
    from models.tiny_vit import Mlp

    n = 0
    for m in list(module.modules()):
        if isinstance(m, Mlp) and isinstance(m.act, nn.GELU) and m.fc1.bias is not None:
            m.fc1, m.act = LinearGELU(m.fc1), nn.Identity()
            n += 1
    for m in module.modules():  # what the MLPs kept
        if isinstance(m, nn.GELU) and m.approximate != "tanh":
            m.approximate = "tanh"
            n += 1
        elif getattr(m, "fast_gelu", None) is False:  # runtime.triton_convs' fused blocks
            m.fast_gelu = True
            n += 1
    return n


def tuned(
    segmenter: Segmenter,
    *,
    precision: str = "bf16",
    channels_last: bool = True,
    compile: bool | str = False,
    fuse: bool = True,
    compile_decoder: bool = False,
    cast_weights: bool = False,
    decompose: bool | None = None,
    cuda_graphs: bool = False,
    attention: str = "sdpa",
    inductor_options: dict | None = None,
    triton_convs: bool = False,
    gelu: str = "erf",
) -> Segmenter:
    """A copy of ``segmenter`` for speed: encoder in ``precision`` ('fp32', 'bf16' or 'fp16'), Conv+BN
    folded, channels-last input, optionally ``torch.compile``d; decoder optionally compiled with
    CUDA graphs (``mode="reduce-overhead"``). ``compile`` may name a ``torch.compile`` mode
    (e.g. "max-autotune"). ``cast_weights`` stores the folded encoder copy in bf16 instead of
    casting per op under autocast. ``decompose`` (default: when compiling) rewrites 1x1 and depthwise
    convolutions as GEMMs and fused shifted sums (:func:`decompose_convs`). With a CUDA-graph mode
    ("reduce-overhead", "max-autotune") the features are copied out of the graph's static buffer.

    ``cuda_graphs`` (``runtime.cuda_graphs``): an embed (host-to-device copy, preprocessing and
    encoder) replays as one CUDA graph per batch size of ``runtime.cuda_graphs.GRAPH_BATCHES`` (batch 1 by
    default; other batches are padded up to the next size or run un-graphed), where the segmenter has LiteMedSAM's split preprocessing, and
    ``decode_prompts`` (prompt encoder + mask decoder) as one graph per prompt shape; outputs equal
    the un-graphed path. Not combinable with a CUDA-graph compile mode. On the CPU the same code runs
    without graphs.

    ``attention`` ("sdpa", "math", "flash"; :func:`set_window_attention`) picks how TinyViT's 7 x 7
    window attention is computed in the folded encoder copy, for batched throughput under compile
    (docs/benchmarks.md, run 5). fp32 results equal the default within rounding (tests/runtime/test_fast_paths.py).
    ``attention="triton"`` runs every window (7 x 7 and 14 x 14) through the Triton kernel of
    ``runtime/triton_attention.py``, and ``triton_convs`` swaps TinyViT's MBConv and PatchMerging blocks
    for the fused Triton kernels of ``runtime/triton_convs.py`` (CUDA; the depthwise output never goes to
    memory). ``inductor_options`` go to the encoder's ``torch.compile(options=...)``; with ``compile=True``
    they default to :data:`REALIZE_STENCIL_INPUTS` (pass ``{}`` for inductor's defaults); torch.compile
    takes them only without a named ``compile`` mode. ``gelu="tanh"`` (bf16 only; :func:`use_tanh_gelu`)
    computes the encoder's GELUs in the tanh form, each MLP's fc1 + GELU as one cuBLASLt GEMM.

    In that folded copy a SAM ViT's attention is :class:`SDPAAttention` (fp32: the same output within
    rounding; bf16/fp16 on a GPU: the flash kernel with the relative positions folded in). Without it the
    product's SAM ViT-B ran segment_anything's attention, materialising each (N x N) bias: network 7.7 ms at
    batch 1 on an H100 against 4.2 ms with it (docs/benchmarks.md, G).

    The copy shares the (read-only) weights of the original, except a folded copy of the encoder
    when ``fuse`` applies (variants whose ``encode`` is the plain ``image_encoder`` call). Outputs
    are float32, so everything after the encoder is unchanged.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if attention not in WINDOW_ATTENTION:
        raise ValueError(f"attention must be one of {WINDOW_ATTENTION}, got {attention!r}")
    if gelu not in GELU_FORMS:
        raise ValueError(f"gelu must be one of {GELU_FORMS}, got {gelu!r}")
    if gelu == "tanh" and precision == "fp32":
        raise ValueError("gelu='tanh' is for precision 'bf16' or 'fp16' (fp32 keeps the exact GELU of the parity tests)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    plain_encoder = type(segmenter).encode is Segmenter.encode
    if (attention != "sdpa" or triton_convs or gelu != "erf") and not (fuse and plain_encoder):
        raise ValueError("attention other than 'sdpa', triton_convs and gelu='tanh' need fuse=True and a segmenter "
                         "whose encode is the plain image encoder")
    if fuse and plain_encoder:
        encoder = copy.deepcopy(segmenter.model.image_encoder)
        fuse_batchnorm(encoder)
        use_sdpa_attention(encoder)  # SAM ViTs: fused attention (folded bias on a GPU in half precision); else none
        max_tokens = 1 << 30 if attention == "triton" else SMALL_WINDOW_TOKENS
        if attention != "sdpa" and not set_window_attention(encoder, attention, max_tokens):
            raise ValueError(f"attention={attention!r}: {type(encoder).__name__} has no TinyViT window attention to change")
        if triton_convs:
            from runtime.triton_convs import use_triton_convs

            use_triton_convs(encoder)
        if gelu == "tanh":
            use_tanh_gelu(encoder)
        if bool(compile) if decompose is None else decompose:
            decompose_convs(encoder)
        if channels_last:
            encoder = encoder.to(memory_format=torch.channels_last)
        if cast_weights and dtype is not None:
            encoder = encoder.to(dtype)
            base_encode = lambda batch: (encoder(batch.to(dtype)), {})  # noqa: E731
        else:
            base_encode = lambda batch: (encoder(batch), {})  # noqa: E731
    else:
        base_encode = segmenter.encode
    mode = compile if isinstance(compile, str) else None
    if inductor_options is None and compile is True:
        inductor_options = REALIZE_STENCIL_INPUTS
    if inductor_options and (mode is not None or not compile):
        raise ValueError("inductor_options need compile=True (torch.compile takes options or a mode, not both)")
    if cuda_graphs and mode in ("reduce-overhead", "max-autotune"):
        raise ValueError(f"cuda_graphs=True captures its own graphs: use compile=True, not mode {mode!r}")
    if compile and inductor_options:
        run = torch.compile(base_encode, dynamic=False, options=dict(inductor_options))
    else:
        run = torch.compile(base_encode, dynamic=False, mode=mode) if compile else base_encode
    graphs = mode in ("reduce-overhead", "max-autotune")  # outputs live in a buffer the next replay overwrites

    def encode(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(batch.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features, extras = run(batch)
        if graphs:
            return features.float().clone(), {k: v.float().clone() for k, v in extras.items()}
        return features.float().contiguous(), {k: v.float() for k, v in extras.items()}

    fast = copy.copy(segmenter)
    fast.encode = encode  # type: ignore[method-assign]
    fast.precision = precision
    if cuda_graphs:
        return _with_cuda_graphs(fast, segmenter, encode, compile_decoder)
    if compile_decoder and type(segmenter).decode is Segmenter.decode:
        decoder = torch.compile(segmenter.model.mask_decoder, mode="reduce-overhead", dynamic=False)
        image_pe = segmenter.model.prompt_encoder.get_dense_pe()

        def decode(embedding, sparse, dense, multimask_output):
            return decoder(
                image_embeddings=embedding.features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )

        fast.decode = decode  # type: ignore[method-assign]
    return fast


def _with_cuda_graphs(fast: Segmenter, original: Segmenter, encode, compile_decoder: bool) -> Segmenter:
    """Install the graphed embed and decode of ``runtime.cuda_graphs`` on ``fast`` where they apply."""
    from runtime.cuda_graphs import GraphedDecoder, GraphedEmbed

    if hasattr(original, "upstream_host_inputs") and getattr(original, "pipeline", None) == "upstream":
        fast.embed_features = GraphedEmbed(fast, encode, fast.embed_features)  # type: ignore[method-assign]
    cls = type(original)
    if cls.decode is Segmenter.decode and cls.decode_prompts is Segmenter.decode_prompts:
        # compile_decoder: fused kernels inside the graph (default mode; one compile per prompt shape)
        decoder = torch.compile(original.model.mask_decoder, dynamic=False) if compile_decoder else None
        fast.decode_prompts = GraphedDecoder(fast, fast.decode_prompts, decoder=decoder)  # type: ignore[method-assign]
        # it replays the click refiner's graphs too: models.decode_many then leaves the refiner's prompts to it
        # rather than batching them eagerly around the graphs (the batched server lost to one at a time on an
        # H100, docs/benchmarks.md H), and app.interaction.ModelRunner sends this model's prompts straight to it
        fast.decodes_refiner = True
    return fast
