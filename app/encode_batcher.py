"""Encode requests of many sessions run as one batch on the GPU: a short window, every session served in turn.

Why (issue 22): behind :class:`app.interaction.ModelRunner`'s one lock, 20 sessions' slice encodes run one at
a time, although a GPU encodes a batch of 16 in little more than the time of one. The batcher collects the
requests that arrive within ``window_s`` of the first (up to ``max_batch``), takes them **round-robin over
sessions** (one request of each session per pass, the sessions served last going to the back of the line),
runs one ``embed_batch`` per model, and hands each caller its own :class:`Embedding`. A session with many
queued planes (its prefetch) therefore never delays another session's request by more than one batch.

Decoder calls are not batched here: a mask decoder call is one image's embedding with its own prompt shape
(~1 ms on a GPU); with the batcher the runner no longer holds one lock around them, so they run side by side.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from models.segmenter import Embedding, Segmenter


@dataclass
class _Request:
    session: str
    model: str
    image: np.ndarray
    future: Future = field(default_factory=Future)


class EncodeBatcher:
    """``embed(session, model, image)`` blocks until the request's batch has run (one worker thread)."""

    def __init__(
        self, load: Callable[[str], Segmenter], window_s: float = 0.004, max_batch: int = 16, autostart: bool = True
    ):
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"window_s must be >= 0 and max_batch >= 1, got {window_s} and {max_batch}")
        self.load = load
        self.window_s = window_s
        self.max_batch = max_batch
        self._queues: collections.OrderedDict[str, collections.deque[_Request]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._autostart = autostart  # False: the caller drives take()/run() (tests)
        self.history: collections.deque[list[str]] = collections.deque(maxlen=1000)  # sessions of recent batches

    def embed(self, session: str, model: str, image: np.ndarray) -> Embedding:
        return self.submit(session, model, image).result()

    def submit(self, session: str, model: str, image: np.ndarray) -> Future:
        """Queue one slice of ``session`` for ``model``; the future gets its Embedding (or the batch's error)."""
        request = _Request(session, model, image)
        with self._cond:
            self._queues.setdefault(session, collections.deque()).append(request)
            if self._autostart and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._work, name="medseg-encode-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return request.future

    def _pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def take(self) -> list[_Request]:
        """The next batch: wait for a request, then up to ``window_s`` for more, then round-robin by session."""
        with self._cond:
            while not self._pending():
                self._cond.wait()
            deadline = time.monotonic() + self.window_s
            while self._pending() < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            model = next(iter(self._queues.values()))[0].model  # the longest-waiting session's model
            batch: list[_Request] = []
            served: list[str] = []
            while len(batch) < self.max_batch:
                before = len(batch)
                for session, queue in list(self._queues.items()):
                    if len(batch) == self.max_batch:
                        break
                    if queue and queue[0].model == model:
                        batch.append(queue.popleft())
                        served.append(session)
                if len(batch) == before:
                    break
            for session in dict.fromkeys(served):  # served sessions queue up behind the others
                if self._queues[session]:
                    self._queues.move_to_end(session)
                else:
                    del self._queues[session]
            self.history.append([r.session for r in batch])
            return batch

    def run(self, batch: list[_Request]) -> None:
        """Encode ``batch`` in one forward pass and resolve its futures."""
        try:
            embeddings = self.load(batch[0].model).embed_batch([r.image for r in batch])
        except BaseException as e:  # noqa: BLE001 - every caller gets the error; the worker lives on
            for r in batch:
                r.future.set_exception(e)
            return
        for r, embedding in zip(batch, embeddings):
            r.future.set_result(embedding)

    def _work(self) -> None:
        while True:
            self.run(self.take())
