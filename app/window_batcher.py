"""Requests of many sessions gathered for a short window and run as one batch, every session served in turn.

Why (issue 22): on a GPU server, 20 sessions' model calls one at a time leave the GPU idle between small
kernels, while a batch of 16 costs little more than one. The batcher collects the requests that arrive within
``window_s`` of the first (up to ``max_batch``) and takes them **round-robin over sessions** (one request of
each session per pass, the sessions served last going to the back of the line), so a session with many
queued requests (an encode prefetch) never delays another session's request by more than one batch. One batch
holds requests of one ``group`` only (the model, or the prompt's route): the longest-waiting session's.

Subclasses say what a request is and how a batch runs on the model ``load(name)`` returns (:meth:`run_batch`);
``app.encode_batcher`` batches slice encodes, ``app.decode_batcher`` prompt + mask decoder calls.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Protocol, TypeVar

if TYPE_CHECKING:
    from models.segmenter import Segmenter


class Request(Protocol):
    """What the batcher needs of a request: whose it is, what it may be batched with, where its answer goes."""

    session: str
    future: Future

    @property
    def group(self) -> Hashable: ...


R = TypeVar("R", bound=Request)


class WindowBatcher(Generic[R]):
    """``submit_request(request)`` queues a request; one worker thread takes batches (:meth:`take`) and runs
    them on the models ``load`` gives by name."""

    thread_name = "medseg-batcher"
    default_max_batch = 16

    def __init__(
        self,
        load: Callable[[str], Segmenter],
        window_s: float = 0.004,
        max_batch: int | None = None,
        autostart: bool = True,
    ):
        max_batch = self.default_max_batch if max_batch is None else max_batch
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"window_s must be >= 0 and max_batch >= 1, got {window_s} and {max_batch}")
        self.load = load
        self.window_s = window_s
        self.max_batch = max_batch
        self._queues: collections.OrderedDict[str, collections.deque[R]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._autostart = autostart  # False: the caller drives take()/run() (tests)
        self.history: collections.deque[list[str]] = collections.deque(maxlen=1000)  # sessions of recent batches

    def submit_request(self, request: R) -> Future:
        with self._cond:
            self._queues.setdefault(request.session, collections.deque()).append(request)
            if self._autostart and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return request.future

    def _pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def take(self) -> list[R]:
        """The next batch: wait for a request, then up to ``window_s`` for more, then round-robin by session."""
        with self._cond:
            while not self._pending():
                self._cond.wait()
            deadline = time.monotonic() + self.window_s
            while self._pending() < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            group = next(iter(self._queues.values()))[0].group  # the longest-waiting session's
            batch: list[R] = []
            served: list[str] = []
            while len(batch) < self.max_batch:
                before = len(batch)
                for session, queue in list(self._queues.items()):
                    if len(batch) == self.max_batch:
                        break
                    if queue and queue[0].group == group:
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

    def run_batch(self, batch: list[R]) -> list[Any]:
        """One result per request, in order; an exception instance in a slot fails that request alone."""
        raise NotImplementedError

    def run(self, batch: list[R]) -> None:
        """Run ``batch`` and resolve its futures; an error of the whole batch goes to every caller."""
        try:
            results = self.run_batch(batch)
        except BaseException as e:  # noqa: BLE001 - every caller gets the error; the worker lives on
            for r in batch:
                r.future.set_exception(e)
            return
        for r, result in zip(batch, results):
            if isinstance(result, BaseException):
                r.future.set_exception(result)
            else:
                r.future.set_result(result)

    def _work(self) -> None:
        while True:
            self.run(self.take())
