"""How the networks run fast: onnxruntime and int8 on the CPU, compiled, bf16, Triton and CUDA-graph paths on
the GPU, and the timing helpers that measure them.

``models/`` says what each network is; this package only imports from it, never the other way round. Its one
entry point for the app is :func:`load_segmenter`: the torch variant from ``models.registry``, run by the
backend asked for. The GPU paths (``runtime.fast.tuned``) wrap an already loaded segmenter.
"""

from __future__ import annotations

import functools
from pathlib import Path

from models.checkpoint import sha256_of
from models.registry import _load_cached as _load_torch
from models.registry import checkpoint_path, resolve_device, weights_dir
from models.segmenter import Segmenter

BACKENDS = ("torch", "torch-fp16", "onnx", "onnx-int8", "onnx-int8-all", "onnx-int8-fast", "onnx-int8-conv")
GPU_ONLY_BACKENDS = frozenset({"torch-fp16"})
# Backends whose batch-1 encodes and every prompt's decode replay as CUDA graphs (``_load_fp16``): a request is
# one replay of ~1-2 ms, so a GPU server serves them one at a time (``app.commands.serve``'s default window).
CUDA_GRAPH_BACKENDS = frozenset({"torch-fp16"})


def load_segmenter(
    name: str = "litemedsam", checkpoint: str | Path | None = None, device: str = "cpu", backend: str = "torch"
) -> Segmenter:
    """A variant with its weights (strict, weights-only), run by ``backend``. Raises CheckpointError/KeyError.

    ``"torch"`` is ``models.registry.load_segmenter``. ``"onnx"`` runs the same variant with onnxruntime; its
    ONNX files are exported once from the checkpoint into ``weights/onnx/`` (locally, no download).
    ``"onnx-int8"`` is the same with the encoder's linear layers in int8 (``runtime/onnx_quant.py``; the
    decoder stays fp32); ``"onnx-int8-all"`` quantizes all of them (``onnx_quant.BACKEND_RECIPES``);
    ``"torch-fp16"`` (CUDA only) runs the torch encoder in fp16 (:func:`_load_fp16`). ``"onnx-int8-fast"`` quantizes the same layers of an encoder export rewritten for ONNX Runtime on the CPU
    (``runtime/onnx_fast_export.py``: fewer nodes, same fp32 arithmetic), and decodes with ONNX Runtime too:
    the base decoder and the click model's refiner in fp32 (``runtime/onnx_decoder_export.py``, the torch
    modules' masks; one thread each, ``runtime.threads.decoder_threads``). ``"onnx-int8-conv"`` is
    ``onnx-int8-fast`` with the neck's 3x3 conv in calibrated int8 as well (issue 21). ``"auto"``: ``$MEDSEG_BACKEND`` or
    the fastest backend that keeps fp32's Dice on this device (``runtime.backend_choice``).
    """
    device = resolve_device(device)
    if backend == "auto":
        from runtime.backend_choice import choose

        backend = choose(name, device).backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}, got {backend!r}")
    path = str(checkpoint_path(name, checkpoint).resolve())
    if backend == "torch":
        return _load_torch(name, path, device)
    if backend == "torch-fp16":
        if not device.startswith("cuda"):
            raise ValueError(f"backend torch-fp16 needs a CUDA GPU, got device {device!r}")
        return _load_fp16(name, path, device)
    return _load_onnx(name, path, device, backend)


@functools.lru_cache(maxsize=4)
def _load_fp16(name: str, path: str, device: str) -> Segmenter:
    """The encoder in fp16 (autocast, Conv+BN folded, channels-last), eager: no compile wait for a server or
    a one-off command. On the H200 it keeps fp32's masks (shared set: mean -0.00001, worst case -0.007) at
    2.5x fp32's throughput, where bf16 moves them by -0.0125 (docs/benchmarks.md, section E).

    The base decoder (a box alone; the click model's prompts stay eager) and batch-1 encodes replay as CUDA
    graphs (``runtime.cuda_graphs``, outputs equal the un-graphed path): a 300-slice propagation walk took
    3.2 ms a slice with graphs against 7.8 ms without (docs/benchmarks.md, 3D propagation)."""
    from runtime.fast import tuned

    return tuned(_load_torch(name, path, device), precision="fp16", cuda_graphs=True)


@functools.lru_cache(maxsize=8)
def _load_onnx(name: str, path: str, device: str, backend: str) -> Segmenter:
    from runtime.onnx_backend import OnnxSegmenter
    from runtime.onnx_quant import FAST_DECODER_BACKENDS
    from runtime.threads import decoder_threads

    base = _load_torch(name, path, "cpu")
    encoder = encoder_file(base, path, backend)
    if backend not in FAST_DECODER_BACKENDS:
        return OnnxSegmenter(base, encoder, plain_decoder_file(base, path), device=device, label=backend)
    decoder, refiner = fast_decoder_files(base, path)
    threads = decoder_threads() if device == "cpu" else None
    return OnnxSegmenter(base, encoder, decoder, device=device, label=backend, refiner_path=refiner,
                         decoder_threads=threads)


def _export_folder(base: Segmenter, checkpoint: str) -> tuple[Path, dict[str, str]]:
    """Where a loaded variant's derived files live, ``weights/onnx/<variant>-<checkpoint sha256[:16]>/``, and
    the cache key they are built under (``runtime.export_cache``)."""
    from runtime import export_cache

    weights_sha = sha256_of(checkpoint)
    return weights_dir() / "onnx" / f"{base.name}-{weights_sha[:16]}", export_cache.cache_key(weights_sha)


def encoder_file(base: Segmenter, checkpoint: str, backend: str = "onnx") -> Path:
    """The ONNX encoder ``backend`` runs for a loaded variant, built once into
    ``weights/onnx/<variant>-<checkpoint sha256[:16]>/`` and checked before each reuse (``runtime.export_cache``:
    a damaged or stale file is rebuilt). Only the files the backend needs are built: the int8 encoders of
    ``FAST_EXPORT_BACKENDS`` (the CPU default among them) come from ``encoder-fast.onnx``, so a fresh install never
    exports the plain ``encoder.onnx`` for them (it cost 40 MB and ~10 CPU-s for nothing)."""
    from runtime import export_cache
    from runtime.onnx_quant import FAST_EXPORT_BACKENDS

    folder, key = _export_folder(base, checkpoint)
    if backend in FAST_EXPORT_BACKENDS:
        from runtime.onnx_fast_export import export_fast_encoder

        (encoder,) = export_cache.ensure(
            [folder / "encoder-fast.onnx"], lambda tmp: export_fast_encoder(base, tmp / "encoder-fast.onnx"), key
        )
    else:
        from runtime.onnx_export import export_encoder

        (encoder,) = export_cache.ensure(
            [folder / "encoder.onnx"], lambda tmp: export_encoder(base, tmp / "encoder.onnx"), key
        )
    if backend == "onnx":
        return encoder
    from runtime.onnx_quant import BACKEND_RECIPES, build_int8_encoder, int8_dot_saturates, int8_file_name

    recipe, u8_weights = BACKEND_RECIPES[backend], int8_dot_saturates()
    int8 = folder / int8_file_name(encoder, recipe, u8_weights)
    export_cache.ensure(
        [int8], lambda tmp: build_int8_encoder(base, encoder, tmp / int8.name, recipe, u8_weights), key, source=encoder
    )
    return int8


def plain_decoder_file(base: Segmenter, checkpoint: str) -> Path:
    """``decoder.onnx``, the plain export of the prompt encoder and mask decoder (the ``onnx`` backend's, checked by
    the parity tests), built once beside the encoders like them."""
    from runtime import export_cache
    from runtime.onnx_export import export_decoder

    folder, key = _export_folder(base, checkpoint)
    (decoder,) = export_cache.ensure(
        [folder / "decoder.onnx"], lambda tmp: export_decoder(base, tmp / "decoder.onnx"), key
    )
    return decoder


def fast_decoder_files(base: Segmenter, checkpoint: str) -> tuple[Path, Path | None]:
    """The (base decoder, click refiner) ONNX files of ``runtime.onnx_decoder_export`` for a loaded variant, built
    once beside its other exports and checked before each reuse like them (``runtime.export_cache``). The
    refiner's file is also checked against the click model's weights it was exported from (rebuilt when
    ``weights/click_model`` changes); None where the variant carries no click model loaded from its files
    (``models.click_model.attach_click_model``): the torch refiner then answers."""
    from models.point_prompts import refiner_of
    from runtime import export_cache
    from runtime.onnx_decoder_export import export_fast_decoder

    folder, key = _export_folder(base, checkpoint)
    model = base.model
    (decoder,) = export_cache.ensure(
        [folder / "decoder-fast.onnx"],
        lambda tmp: export_fast_decoder(model.prompt_encoder, model.mask_decoder, tmp / "decoder-fast.onnx"),
        key,
    )
    refiner = refiner_of(base)
    if refiner is None or getattr(refiner, "weights_file", None) is None:  # no click model, or not from a file
        return decoder, None
    (refiner_path,) = export_cache.ensure(
        [folder / "refiner-fast.onnx"],
        lambda tmp: export_fast_decoder(refiner.prompt_encoder, refiner.mask_decoder, tmp / "refiner-fast.onnx",
                                        residual=True),
        key,
        source=refiner.weights_file,
    )
    return decoder, refiner_path


def clear_caches() -> None:
    """Forget loaded segmenters (tests use it to see what a new process would do)."""
    _load_onnx.cache_clear()
    _load_torch.cache_clear()
