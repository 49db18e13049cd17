"""Launch-bound work as CUDA graphs: one per encode batch size and one per prompt shape, for ``tuned(..., cuda_graphs=True)``.

At batch 1 a LiteMedSAM encode is ~250 small kernels plus the preprocessing's copies and elementwise
kernels, and a decode ~100 more: on an H100 the launches, not the arithmetic, set the latency
(docs/benchmarks.md). Here each is recorded once and replayed as a single graph:

* :class:`GraphedEmbed`: the host half of the preprocessing (``upstream_host_inputs``: resize, min/max,
  pad, all on uint8) writes into static pinned buffers; the graph copies them to the device, runs the
  device half (``upstream_device_inputs``) and the encoder. One graph serves every slice shape, since
  the host half always hands over 256 x 256 and the size travels as data. Batch 1 by default; with
  ``GRAPH_BATCHES = POWERS_OF_TWO`` a volume's batches too, each padded up to the next size.
* :class:`GraphedDecoder`: the prompts (points, labels, box) are packed on the host into one pinned
  buffer; the graph copies it, runs a host-sync-free prompt encoder (:func:`encode_prompts_static`)
  and the mask decoder: the model's own, or the click refiner's (``models.click_refiner``) for the
  prompts ``refiner_for`` gives it, residual add included. One graph per (decoder, number of points,
  box, mask, multimask). The points are not
  padded to bucket sizes: extra "not a point" tokens (label -1) change the masks (measured on the
  parity slice: up to 3957 pixels and 34 logits; docs/benchmarks.md), so each count gets its graph.

Results are identical to the un-graphed path: the same host code, the same kernels
(tests/runtime/test_cuda_graphs.py). On the CPU the same static-shape code runs without a graph, so tests
there cover everything but the capture.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from segment_anything.modeling import PromptEncoder

from models.click_refiner import refiner_for
from models.segmenter import Embedding
from models.prompts import Prompts

Features = tuple[torch.Tensor, dict[str, torch.Tensor]]


def embed_points(prompt_encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``PromptEncoder._embed_points`` (without its own padding) through ``torch.where``.

    SAM's version writes through boolean masks (``emb[labels == -1] = ...``), which waits for the host
    and cannot be captured in a graph; this adds the same terms to the same elements, so the values are
    equal: -1 -> not_a_point, 0 -> pe + negative, 1 -> pe + positive, anything else -> pe.
    """
    pe = prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, prompt_encoder.input_image_size)
    lab = labels[..., None]
    out = torch.where(lab == -1, prompt_encoder.not_a_point_embed.weight, pe)
    out = torch.where(lab == 0, out + prompt_encoder.point_embeddings[0].weight, out)
    return torch.where(lab == 1, out + prompt_encoder.point_embeddings[1].weight, out)


def encode_prompts_static(
    prompt_encoder: PromptEncoder, points: torch.Tensor | None, box: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``PromptEncoder.forward`` for one prompt set with no host synchronisation.

    ``points``: (1, S, 3) rows of (x, y, label), already holding SAM's padding point when there is no
    box (:func:`pack_points`). Returns (sparse, dense) as ``prompt_encoder(...)`` does.
    """
    parts = []
    if points is not None:
        parts.append(embed_points(prompt_encoder, points[..., :2], points[..., 2]))
    if box is not None:
        parts.append(prompt_encoder._embed_boxes(box))
    ref = prompt_encoder.no_mask_embed.weight
    sparse = torch.cat(parts, dim=1) if parts else ref.new_empty((1, 0, prompt_encoder.embed_dim))
    if mask is not None:
        dense = prompt_encoder._embed_masks(mask)
    else:
        h, w = prompt_encoder.image_embedding_size
        dense = ref.reshape(1, -1, 1, 1).expand(1, -1, h, w)
    return sparse, dense


def point_slot_count(coords: np.ndarray | None, has_box: bool) -> int:
    """Rows of the static point buffer: the points, plus SAM's one padding point when there is no box."""
    return 0 if coords is None else len(coords) + (0 if has_box else 1)


def pack_points(coords: np.ndarray, labels: np.ndarray, out: np.ndarray) -> None:
    """Write (x, y, label) rows into ``out`` (slots, 3); a row left over is (0, 0, -1), SAM's padding point."""
    out[:] = 0.0
    out[:, 2] = -1.0
    n = len(coords)
    out[:n, :2] = np.asarray(coords, np.float32).reshape(n, 2)
    out[:n, 2] = np.asarray(labels, np.float32).reshape(n)


class _Graph:
    """One captured graph: its pinned host inputs, its static outputs and an event guarding the host buffers."""

    def __init__(self, host: dict[str, torch.Tensor], run: Callable[[dict[str, torch.Tensor]], tuple], device, pool=None):
        self.host = host
        self.device = device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.done: torch.cuda.Event | None = None
        if device.type == "cuda":
            dev = lambda: {k: v.to(device, non_blocking=True) for k, v in host.items()}  # noqa: E731
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: compilation, cuBLAS/cuDNN handles, autotuning
                for _ in range(3):
                    run(dev())
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a server captures a prompt shape's graph the first time it meets it, while other
            # sessions' threads encode and decode on the GPU. In the default "global" mode their CUDA calls
            # invalidate this capture (cudaErrorStreamCaptureInvalidated: session 8's 20-session run, once the
            # click model's prompts were graphed too); here only this thread's unsafe calls are refused.
            with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                self.outputs = run(dev())
            self.done = torch.cuda.Event()
            self.done.record()
        self.run = run

    def arrays(self) -> dict[str, np.ndarray]:
        """The host buffers to fill, once the previous replay has finished reading them."""
        if self.done is not None:
            self.done.synchronize()
        return {k: v.numpy() for k, v in self.host.items()}

    def replay(self) -> tuple:
        """The outputs of one run on the current host buffers (static tensors on CUDA: clone them)."""
        if self.graph is None:
            return self.run({k: v.to(self.device) for k, v in self.host.items()})
        self.graph.replay()
        return self.outputs

    def release(self) -> None:
        """Mark the host buffers as read once the work queued so far (the replay and its clones) is done."""
        if self.done is not None:
            self.done.record()


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, pin_memory=device.type == "cuda")


# Batch sizes captured as graphs; a batch is padded up to the next one (larger ones run un-graphed).
# The default is batch 1 (a click's encode), measured; POWERS_OF_TWO (padding under 2x, seven captures in one
# memory pool) is for a volume's batched encode and waits for its GPU measurement before it becomes the
# default (benchmarks/bench_propagation.py --graph-batches 1 2 4 8 16 32 64, docs/benchmarks.md).
POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)
GRAPH_BATCHES: tuple[int, ...] = (1,)


def graph_batch(n: int, sizes: tuple[int, ...] | None = None) -> int | None:
    """The captured batch size (of ``sizes``, default :data:`GRAPH_BATCHES`) that holds ``n`` slices, None when none does."""
    return next((b for b in (GRAPH_BATCHES if sizes is None else sizes) if b >= n), None)


class GraphedEmbed:
    """``embed_features`` of a LiteMedSAM-style segmenter as one graph per batch size of ``batches``.

    A volume's batched encode (propagation, the encode batcher) launches ~250 kernels a batch in eager mode;
    replayed as a graph they cost one launch. A batch of n slices runs in the graph of the next captured size,
    its spare rows holding an earlier slice (each row is encoded on its own: the encoder has no batch-wide
    statistics, BatchNorm being folded), and only the first n rows are returned. Larger batches go to
    ``fallback``. Needs ``upstream_host_inputs`` / ``upstream_device_inputs`` (LiteMedSAM's upstream
    pipeline) and an ``encode`` that is safe to capture (no host synchronisation, no CUDA-graph compile mode).
    """

    def __init__(
        self,
        segmenter,
        encode: Callable[[torch.Tensor], Features],
        fallback: Callable[[list], Features],
        batches: tuple[int, ...] | None = None,
    ):
        self.segmenter = segmenter
        self.encode = encode
        self.fallback = fallback
        self.batches = tuple(sorted(GRAPH_BATCHES if batches is None else batches))
        self._graphs: dict[int, _Graph] = {}
        self._pool = None  # one memory pool for every size: replays never overlap (the lock)
        self._lock = threading.Lock()

    def _run(self, dev: dict[str, torch.Tensor]) -> Features:
        return self.encode(self.segmenter.upstream_device_inputs(**dev))

    def _graph(self, size: int, host: dict[str, np.ndarray]) -> _Graph:
        """The graph for ``size`` slices, captured on first use with every row holding a real slice."""
        g = self._graphs.get(size)
        if g is None:
            device = self.segmenter.device
            buffers = {}
            for k, v in host.items():
                buffers[k] = _host_buffer((size, *v.shape[1:]), torch.from_numpy(v).dtype, device)
                buffers[k].numpy()[...] = v[:1]  # the spare rows: a valid slice, never 0 / 0
                buffers[k].numpy()[: len(v)] = v
            if device.type == "cuda" and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            g = self._graphs[size] = _Graph(buffers, self._run, device, pool=self._pool)
        return g

    def __call__(self, rgb: list[np.ndarray]) -> Features:
        n = len(rgb)
        size = graph_batch(n, self.batches)
        if size is None:
            return self.fallback(rgb)
        host = self.segmenter.upstream_host_inputs(rgb)
        with self._lock, torch.inference_mode():
            g = self._graph(size, host)
            for k, arr in g.arrays().items():
                arr[:n] = host[k]
            features, extras = g.replay()
            if g.graph is not None or size != n:
                features, extras = features[:n].clone(), {k: v[:n].clone() for k, v in extras.items()}
            g.release()
        return features, extras


class GraphedDecoder:
    """``decode_prompts`` for one prompt set as one graph per (decoder, number of points, box, mask, multimask).

    The decoder is the one ``Segmenter.decode_prompts`` would use: the click refiner on the model for the
    prompts it answers (the shipped click model takes every point or mask prompt; its correction is added to
    the fed-back logits inside the graph), the model's own for the rest (a box alone). Eager, the click model's
    ~150 small kernels each cost a Python dispatch, which 20 sessions' threads contend for (docs/benchmarks.md,
    H). Falls back to ``fallback`` (the plain ``decode_prompts``) for an embedding with extras. At most
    ``max_graphs`` graphs are kept (least recently used dropped first).
    """

    def __init__(
        self,
        segmenter,
        fallback: Callable[[Embedding, Prompts, bool], tuple[torch.Tensor, torch.Tensor]],
        *,
        decoder: Callable | None = None,
        max_graphs: int = 16,
    ):
        self.segmenter = segmenter
        self.fallback = fallback
        self.decoder = decoder if decoder is not None else segmenter.model.mask_decoder  # a compiled module has no truth value
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._features: torch.Tensor | None = None  # the one static embedding buffer all graphs read
        self._image_pe: dict[int, torch.Tensor] = {}  # per prompt encoder (the model's, a refiner's)
        self._lock = threading.Lock()

    def _dense_pe(self, prompt_encoder) -> torch.Tensor:
        pe = self._image_pe.get(id(prompt_encoder))
        if pe is None:
            pe = self._image_pe[id(prompt_encoder)] = prompt_encoder.get_dense_pe()
        return pe

    def _run(self, dev: dict[str, torch.Tensor], multimask: bool, refiner=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The base decoder's logits and IoU, or with ``refiner`` those of ``ClickRefiner.forward``."""
        prompt_encoder = self.segmenter.model.prompt_encoder if refiner is None else refiner.prompt_encoder
        sparse, dense = encode_prompts_static(prompt_encoder, dev.get("points"), dev.get("box"), dev.get("mask"))
        decoder = self.decoder if refiner is None else refiner.mask_decoder
        low_res, iou = decoder(
            image_embeddings=self._features,
            image_pe=self._dense_pe(prompt_encoder),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask and refiner is None,
        )
        if refiner is None:
            return low_res, iou
        mask = dev.get("mask")  # ClickRefiner.forward's residual: the fed-back logits + the correction
        return (low_res.float() if mask is None else mask.float() + low_res.float()), iou

    def _new_graph(self, slots: int, has_box: bool, mask_shape, multimask: bool, refiner=None) -> _Graph:
        device = self.segmenter.device
        host = {}
        if slots:
            host["points"] = _host_buffer((1, slots, 3), torch.float32, device)
            host["points"][..., 2] = -1.0  # warm-up and capture run on valid "not a point" rows
        if has_box:
            host["box"] = _host_buffer((1, 1, 4), torch.float32, device)
        if mask_shape is not None:
            host["mask"] = _host_buffer((1, *mask_shape), torch.float32, device)
        return _Graph(host, lambda dev: self._run(dev, multimask, refiner), device)

    def __call__(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if embedding.extras:
            return self.fallback(embedding, prompts, multimask_output)
        refiner = refiner_for(self.segmenter.model, prompts, multimask_output)
        coords, labels, box, mask = self.segmenter.prompt_arrays(embedding, prompts)
        slots = point_slot_count(coords, box is not None)
        mask_shape = None if mask is None else tuple(np.shape(mask))
        multimask = bool(multimask_output)
        key = (id(refiner), slots, box is not None, mask_shape, multimask, tuple(embedding.features.shape))
        with self._lock, torch.inference_mode():
            if self._features is None or self._features.shape != embedding.features.shape:
                self._graphs.clear()  # graphs read the old buffer
                self._features = torch.empty_like(embedding.features, memory_format=torch.contiguous_format)
            self._dense_pe(self.segmenter.model.prompt_encoder if refiner is None else refiner.prompt_encoder)
            g = self._graphs.pop(key, None)
            if g is None:
                self._features.copy_(embedding.features)
                g = self._new_graph(slots, box is not None, mask_shape, multimask, refiner)
                while len(self._graphs) >= self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs[key] = g
            arrays = g.arrays()
            if slots:
                pack_points(coords, labels, arrays["points"][0])
            if box is not None:
                arrays["box"][...] = np.asarray(box, np.float32).reshape(1, 1, 4)
            if mask is not None:
                arrays["mask"][...] = mask
            self._features.copy_(embedding.features)
            low_res, iou = g.replay()
            if g.graph is not None:
                low_res, iou = low_res.clone(), iou.clone()
            g.release()
        if refiner is not None and multimask:  # as Segmenter.decode_prompts: one refined mask, thrice
            low_res, iou = low_res.expand(-1, 3, -1, -1), iou.expand(-1, 3)
        return low_res, iou
