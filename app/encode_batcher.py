"""Encode requests of many sessions run as one batch on the GPU (``app.window_batcher``: a short window,
every session served in turn).

Why (issue 22): behind :class:`app.interaction.ModelRunner`'s one lock, 20 sessions' slice encodes run one at
a time, although a GPU encodes a batch of 16 in little more than the time of one. Each batch is one
``embed_batch`` of one model; each caller gets its own :class:`Embedding`. Decoder calls are batched by
``app.decode_batcher``.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.window_batcher import WindowBatcher
from models.segmenter import Embedding


@dataclass
class _Request:
    session: str
    model: str
    image: np.ndarray
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> str:
        return self.model


class EncodeBatcher(WindowBatcher[_Request]):
    """``embed(session, model, image)`` blocks until the request's batch has run (one worker thread)."""

    thread_name = "medseg-encode-batcher"

    def embed(self, session: str, model: str, image: np.ndarray) -> Embedding:
        return self.submit(session, model, image).result()

    def submit(self, session: str, model: str, image: np.ndarray) -> Future:
        """Queue one slice of ``session`` for ``model``; the future gets its Embedding (or the batch's error)."""
        return self.submit_request(_Request(session, model, image))

    def run_batch(self, batch: list[_Request]) -> list[Embedding]:
        """Encode ``batch`` in one forward pass."""
        return self.load(batch[0].model).embed_batch([r.image for r in batch])
