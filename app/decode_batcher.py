"""Decoder requests of many sessions (prompt encoder + mask decoder) run as few calls on the GPU
(``app.window_batcher``: a short window, every session served in turn).

Why (issue 22): with encodes batched, 20 sessions' clicks still made 20 decoder calls from 20 threads,
which took turns on the GIL: on an H200, 20 sessions served 31.9 clicks/s with a p95 click of 453 ms
(docs/benchmarks.md). Here each click is one request (its embedding, its prompts); one worker thread
answers a batch with one ``Segmenter.predict_many`` (``models.decode_many``: one decoder call per prompt
shape, each mask that of its own prompt, a bad request failing alone). Only prompts of a model whose decoder
can batch come here (``app.interaction.ModelRunner.batches_decodes``): CUDA-graph and ONNX decoders' would run
one by one anyway.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from app.window_batcher import WindowBatcher
from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding


@dataclass
class _Request:
    session: str
    model: str
    embedding: Embedding
    prompts: Prompts
    multimask: bool
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple[str, bool]:
        return self.model, self.multimask


class DecodeBatcher(WindowBatcher[_Request]):
    """``predict(session, model, embedding, prompts, multimask)`` blocks until its batch has run."""

    thread_name = "medseg-decode-batcher"
    default_max_batch = 32

    def predict(
        self, session: str, model: str, embedding: Embedding, prompts: Prompts, multimask: bool = False
    ) -> MaskResult:
        return self.submit(session, model, embedding, prompts, multimask).result()

    def submit(
        self, session: str, model: str, embedding: Embedding, prompts: Prompts, multimask: bool = False
    ) -> Future:
        """Queue one prompt of ``session``; the future gets its MaskResult or its own error."""
        return self.submit_request(_Request(session, model, embedding, prompts, bool(multimask)))

    def run_batch(self, batch: list[_Request]) -> list[MaskResult | Exception]:
        return self.load(batch[0].model).predict_many(
            [r.embedding for r in batch], [r.prompts for r in batch], multimask_output=batch[0].multimask
        )
