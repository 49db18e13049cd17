"""How the networks run fast: onnxruntime and int8 on the CPU, compiled, bf16, Triton and CUDA-graph paths on
the GPU, and the timing helpers that measure them.

``models/`` says what each network is; this package only imports from it, never the other way round. Its one
entry point for the app is :func:`load_segmenter`: the torch variant from ``models.registry``, run by the
backend asked for. The GPU paths (``runtime.fast.tuned``) wrap an already loaded segmenter.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from models.checkpoint import sha256_of
from models.registry import _load_cached as _load_torch
from models.registry import checkpoint_path, resolve_device, weights_dir
from models.segmenter import Segmenter

BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-all", "onnx-int8-fast")


def load_segmenter(
    name: str = "litemedsam", checkpoint: str | Path | None = None, device: str = "cpu", backend: str = "torch"
) -> Segmenter:
    """A variant with its weights (strict, weights-only), run by ``backend``. Raises CheckpointError/KeyError.

    ``"torch"`` is ``models.registry.load_segmenter``. ``"onnx"`` runs the same variant with onnxruntime; its
    ONNX files are exported once from the checkpoint into ``weights/onnx/`` (locally, no download).
    ``"onnx-int8"`` is the same with the encoder's linear layers in int8 (``runtime/onnx_quant.py``; the
    decoder stays fp32); ``"onnx-int8-all"`` quantizes all of them (``onnx_quant.BACKEND_RECIPES``);
    ``"onnx-int8-fast"`` quantizes the same layers of an encoder export rewritten for ONNX Runtime on the CPU
    (``runtime/onnx_fast_export.py``: fewer nodes, same fp32 arithmetic).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = str(checkpoint_path(name, checkpoint).resolve())
    device = resolve_device(device)
    if backend == "torch":
        return _load_torch(name, path, device)
    return _load_onnx(name, path, device, backend)


@functools.lru_cache(maxsize=8)
def _load_onnx(name: str, path: str, device: str, backend: str) -> Segmenter:
    from runtime.onnx_backend import OnnxSegmenter

    base = _load_torch(name, path, "cpu")
    encoder, decoder = _onnx_files(base, path)
    if backend != "onnx":
        from runtime.onnx_quant import BACKEND_RECIPES, FAST_EXPORT_BACKENDS, int8_encoder

        if backend in FAST_EXPORT_BACKENDS:
            from runtime.onnx_fast_export import fast_encoder

            encoder = fast_encoder(base, encoder)
        encoder = int8_encoder(base, encoder, BACKEND_RECIPES[backend])
    return OnnxSegmenter(base, encoder, decoder, device=device, label=backend)


def _onnx_files(base: Segmenter, checkpoint: str) -> tuple[Path, Path]:
    """ONNX export of a loaded variant, cached by the checkpoint's sha256 (atomic: export, then rename)."""
    from runtime.onnx_export import export_onnx

    folder = weights_dir() / "onnx" / f"{base.name}-{sha256_of(checkpoint)[:16]}"
    if not (folder / "decoder.onnx").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            export_onnx(base, tmp)
            if not folder.exists():
                tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "encoder.onnx", folder / "decoder.onnx"


def clear_caches() -> None:
    """Forget loaded segmenters (tests use it to see what a new process would do)."""
    _load_onnx.cache_clear()
    _load_torch.cache_clear()
