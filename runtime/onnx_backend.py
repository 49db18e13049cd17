"""ONNX Runtime backend: the same Segmenter interface, encoder and decoder run by onnxruntime.

Preprocessing and geometry stay the torch variant's (one place for each), so both backends see
identical inputs. CPU here; the CUDA provider is used where onnxruntime-gpu is installed.

The shipped click model (``models.click_model``) keeps the torch routing rule (``refiner_for``): a prompt it
takes (a point or a mask prompt) goes to the refiner, a box alone to the base decoder. Where the backend
was given the refiner's export (``onnx-int8-fast``: ``runtime.onnx_decoder_export``, both decoders), ONNX
Runtime runs it; otherwise the torch variant's refiner decodes on the ONNX encoder's embedding.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from models.click_refiner import refiner_for
from models.prompts import Prompts
from models.segmenter import Embedding, Segmenter
from runtime.threads import user_threads


def batch_workers(providers: list[str]) -> int:
    """How many images of a batch a CPU encoder runs at once (:meth:`OnnxSegmenter._encode_parallel`):
    ``OMP_NUM_THREADS`` (the user's or a test worker's share of the cores), else the cores this process may
    use; 1 (one after another, all threads on each) on a GPU provider."""
    if providers and providers[0] != "CPUExecutionProvider":
        return 1
    return user_threads() or len(os.sched_getaffinity(0))


def available_providers(device: str) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    return [p for p in wanted if p in have]


_stoppable = threading.local()


@contextlib.contextmanager
def stoppable_runs() -> Iterator[Callable[[], None]]:
    """ONNX Runtime runs made by this thread inside the block can be stopped from another thread.

    Yields ``stop``: the run in flight ends at its next node (ONNX Runtime checks ``RunOptions.terminate``
    between nodes) and raises, as does every later run in the block. Why: on a CPU a slice encode takes
    seconds, and a click that waited for a background encode (the neighbours' prefetch, the study's encode
    for propagation) waited that long (issue 19: 1.7 s of a 2.3 s click, docs/ui.md)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    _stoppable.options = options

    def stop() -> None:
        options.terminate = True

    try:
        yield stop
    finally:
        _stoppable.options = None


def _run_options():
    """This thread's stoppable RunOptions inside :func:`stoppable_runs`, else None (ONNX Runtime's default)."""
    return getattr(_stoppable, "options", None)


class OnnxSegmenter(Segmenter):
    """Runs ``encoder.onnx`` / ``decoder.onnx`` written by :mod:`runtime.onnx_export`
    (or the int8 and fast exports of ``runtime.onnx_quant``, ``runtime.onnx_fast_export``, ``runtime.onnx_decoder_export``)."""

    def __init__(
        self,
        base: Segmenter,
        encoder_path: str | Path,
        decoder_path: str | Path,
        device: str = "cpu",
        label: str = "onnx",
        refiner_path: str | Path | None = None,
        decoder_threads: int | None = None,
    ):
        """``decoder_threads``: ONNX Runtime's intra-op threads for the decoders (base and refiner); None: as the
        encoder's (``OMP_NUM_THREADS``, else ONNX Runtime's default: one a core)."""
        import onnxruntime as ort

        # No super().__init__: there is no torch model to place; preprocessing is the base's.
        self.base = base
        self.name = f"{base.name}+{label}"
        self.geometry = base.geometry
        self.low_res_size = base.low_res_size
        self.has_iou_head = base.has_iou_head
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = user_threads()  # OMP_NUM_THREADS: the user's (or a parallel test worker's) share of the cores
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = available_providers(device)
        self.providers = providers
        self.encoder_path, self.decoder_path = Path(encoder_path), Path(decoder_path)
        self.encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
        if decoder_threads is not None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = decoder_threads
            # threads that wait for work sleep instead of spinning: the 2 cores are shared (runtime/threads.py)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.decoder = ort.InferenceSession(str(decoder_path), options, providers=providers)
        # the click model's refiner (runtime.onnx_decoder_export), or None: the torch refiner answers its prompts
        self.refiner_path = None if refiner_path is None else Path(refiner_path)
        self.refiner = None
        if refiner_path is not None:
            self.refiner = ort.InferenceSession(str(refiner_path), options, providers=providers)
        # an encoder exported for one image (runtime/onnx_fast_export.py) is run once per image of a batch
        self._one_per_call = self.encoder.get_inputs()[0].shape[0] == 1
        self._batch_lock = threading.Lock()
        self._batch_session = None  # built on the first batch (see _encode_parallel)
        self._batch_pool: ThreadPoolExecutor | None = None

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        return self.base.preprocess(image)

    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch.cpu().numpy().astype(np.float32)
        if self._one_per_call and len(images) != 1:
            if batch_workers(self.providers) > 1:
                return torch.from_numpy(self._encode_parallel(images)), {}
            runs = [self.encoder.run(None, {"image": images[i : i + 1]}, _run_options())[0] for i in range(len(images))]
            features = np.concatenate(runs)
        else:
            (features,) = self.encoder.run(None, {"image": images}, _run_options())
        return torch.from_numpy(features), {}

    def _encode_parallel(self, images: np.ndarray) -> np.ndarray:
        """The images of a batch encoded side by side, one ONNX Runtime thread each, instead of one after
        another on all cores. Why: ORT's intra-op threads lose time at their joins and in the kernels that
        hardly use a second core (Transpose, the int8 quantization passes); two single-thread runs at once
        do not (issue 21, docs/benchmarks.md, 3D propagation). Each image's numbers are those of the main
        session (ORT's kernels give the same bits at 1 and 2 threads). A stop (:func:`stoppable_runs`) of
        the calling thread reaches every run. Cost: a second session and two runs' activations, ~0.5 GB more peak
        memory (onnx-int8-conv, batch of 4: 2.1 vs 1.6 GB RSS; without ORT's memory arena no less, and slower)."""
        with self._batch_lock:
            if self._batch_session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3
                options.intra_op_num_threads = 1
                self._batch_session = ort.InferenceSession(str(self.encoder_path), options, providers=self.providers)
                self._batch_pool = ThreadPoolExecutor(batch_workers(self.providers), thread_name_prefix="onnx-encode")
        session, options = self._batch_session, _run_options()
        runs = self._batch_pool.map(lambda i: session.run(None, {"image": images[i : i + 1]}, options)[0],
                                    range(len(images)))
        return np.concatenate(list(runs))

    @property
    def decodes_refiner(self) -> bool:
        """Whether this backend runs the click refiner itself (``models.decode_many`` then leaves it alone)."""
        return self.refiner is not None

    def decode_prompts(
        self, embedding: Embedding, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if refiner_for(self.base.model, prompts, multimask_output) is not None:
            if self.refiner is None or (prompts.points is None and prompts.box is None):
                # torch refiner on the ONNX embedding; also a mask alone, which gets no sparse token in torch
                # where the export always has one (its padding point)
                return self.base.decode_prompts(embedding, prompts, multimask_output)
            low, iou = (torch.from_numpy(a) for a in self.refiner.run(None, self._feeds(embedding, prompts)))
            if multimask_output:  # as Segmenter.decode_prompts: one refined mask, thrice
                low, iou = low.expand(-1, 3, -1, -1), iou.expand(-1, 3)
            return low, iou
        low_res, iou = self.decoder.run(None, self._feeds(embedding, prompts))
        pick = slice(1, None) if multimask_output else slice(0, 1)
        return torch.from_numpy(low_res[:, pick]), torch.from_numpy(iou[:, pick])

    def _feeds(self, embedding: Embedding, prompts: Prompts) -> dict[str, np.ndarray]:
        """The decoder's inputs (``runtime.onnx_export.DecoderOnnx``) for ``prompts`` on ``embedding``."""
        size = embedding.original_size
        coords, labels = [], []
        if prompts.points is not None:
            coords.append(self.geometry.apply_coords(prompts.points, size))
            labels.append(prompts.point_labels.astype(np.float32))
        if prompts.box is not None:
            coords.append(self.geometry.apply_box(prompts.box, size).reshape(2, 2))
            labels.append(np.array([2.0, 3.0], dtype=np.float32))
        else:
            coords.append(np.zeros((1, 2), dtype=np.float32))  # SAM's padding point when there is no box
            labels.append(np.array([-1.0], dtype=np.float32))
        low = self.low_res_size
        if prompts.mask_logits is not None:
            mask_input, has_mask = prompts.mask_logits.reshape(1, 1, low, low), np.ones(1, np.float32)
        else:
            mask_input, has_mask = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        return {
            "image_embeddings": embedding.features.cpu().numpy(),
            "point_coords": np.concatenate(coords)[None].astype(np.float32),
            "point_labels": np.concatenate(labels)[None].astype(np.float32),
            "mask_input": mask_input.astype(np.float32),
            "has_mask_input": has_mask,
        }
