"""Cohort evaluation on Ray: the cases of a manifest spread over workers, one model per worker.

The per-case work is :func:`evaluation.runner.evaluate_case`, the function single-process
``medseg eval`` runs, so the rows are the same numbers by construction (only ``seconds`` differs).

* One :class:`CaseWorker` Ray actor per GPU (``num_gpus=1``) or per CPU worker loads the model once.
* A task is the cases of ``slices_per_task`` slices (rows that share a slice go together): the
  worker embeds those slices once (in one forward pass with ``embed_batch > 1``) and runs every
  case on them.
* The driver writes each finished case as ``DIR/cases/<case>.json`` plus ``DIR/masks/<case>.png``
  (atomic renames), so a run that stops can be resumed: cases with a results file are skipped.
  Workers need only read access to the manifest's images; nothing they write is shared.
* A worker that dies is restarted by Ray (``max_restarts``) and its task retried
  (``max_task_retries``); a task whose actor is gone for good goes back to the queue.
* At the end ``DIR/per_case.csv``, ``summary.json`` and ``report.md`` are written by
  :func:`evaluation.report.write_report`, exactly as ``medseg eval`` writes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from data.writers import atomic_output, write_png_mask
from evaluation.manifest import CaseLoader, CaseSpec, read_manifest
from evaluation.runner import EvalRun, EvalSettings, StepRow, _slice_key, evaluate_case
from models.segmenter import Embedding

# Test-only fault hook: a file path; the first worker to start a task creates it and exits hard.
FAULT_ENV = "MEDSEG_BATCH_FAULT_ONCE"
RUN_FILE = "run.json"
ROW_FIELDS = ("case_id", "structure", "clicks", "dice", "iou", "hd95", "nsd", "seconds")


class BatchError(ValueError):
    """A batch run that cannot go on; the message names the file or option and the fix."""


@dataclass(frozen=True)
class BatchJob:
    """What every worker needs to reproduce ``medseg eval`` on its share of the cases."""

    manifest: str
    model: str
    settings: EvalSettings
    checkpoint: str | None = None
    device: str = "cpu"
    embed_batch: int = 1  # distinct slices encoded in one forward pass (GPU throughput)
    gpus_per_worker: float = 1.0  # < 1 puts several model copies on one GPU (CPU-bound metrics, small models)
    backend: str = "torch"  # runtime.load_segmenter's backend (medseg batch resolves --backend auto)

    def fingerprint(self) -> dict:
        """What decides the numbers; a resumed run must match it."""
        return {
            "manifest": str(Path(self.manifest).resolve()),
            "model": self.model,
            "checkpoint": None if self.checkpoint is None else str(Path(self.checkpoint).resolve()),
            **self.settings.as_dict(),
            **({"backend": self.backend} if self.backend != "torch" else {}),  # older runs (torch) still resume
        }


@dataclass
class BatchResult:
    run: EvalRun
    output: Path
    computed: list[str] = field(default_factory=list)  # case ids run now
    skipped: list[str] = field(default_factory=list)  # case ids found finished in DIR
    retried_tasks: int = 0  # tasks the driver re-queued after their worker was lost


# a case's file name keeps this much of its id: with the checksum, the suffix and atomic_output's temporary's dots and
# random part it stays under a file name's 255 bytes (a 240-character id failed in the file system's words, session 24)
CASE_STEM_CHARS = 180


def case_stem(case_id: str) -> str:
    """A file name for a case id; ids with other characters, or longer than CASE_STEM_CHARS (cut there), get a
    checksum of the whole id so two never collide."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)
    if safe == case_id and len(safe) <= CASE_STEM_CHARS:
        return safe
    return f"{safe[:CASE_STEM_CHARS]}-{zlib.crc32(case_id.encode('utf-8')):08x}"


def case_path(output: Path, case_id: str) -> Path:
    return output / "cases" / f"{case_stem(case_id)}.json"


def mask_path(output: Path, case_id: str) -> Path:
    return output / "masks" / f"{case_stem(case_id)}.png"


def plan_tasks(cases: list[CaseSpec], slices_per_task: int = 1) -> list[list[CaseSpec]]:
    """Cases grouped so rows sharing a slice run together; ``slices_per_task`` slices per task."""
    if slices_per_task < 1:
        raise BatchError(f"slices per task must be >= 1, got {slices_per_task}")
    by_slice: dict[tuple, list[CaseSpec]] = {}
    for spec in sorted(cases, key=_slice_key):
        by_slice.setdefault(_slice_key(spec), []).append(spec)
    groups = list(by_slice.values())
    return [sum(groups[i : i + slices_per_task], []) for i in range(0, len(groups), slices_per_task)]


def _image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class CaseWorker:
    """One model on one device; ``run`` evaluates a task's cases and returns their records.

    Wrapped with ``ray.remote`` by :func:`run_batch`; usable in-process too (tests, debugging).
    """

    def __init__(self, job: BatchJob, fault_marker: str | None = None):
        from runtime import load_segmenter

        self.job = job
        self.fault_marker = fault_marker
        self.segmenter = load_segmenter(job.model, job.checkpoint, job.device, job.backend)
        self.loader = CaseLoader(job.manifest)

    def _maybe_fail(self) -> None:
        if not self.fault_marker:
            return
        try:
            fd = os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(17)  # a hard crash, as an out-of-memory kill or a lost node would look

    def _embeddings(self, images: list[np.ndarray]) -> dict[str, tuple[Embedding, float]]:
        """Each distinct slice embedded once -> {key: (embedding, seconds)}."""
        distinct: dict[str, np.ndarray] = {}
        for im in images:
            distinct.setdefault(_image_key(im), im)
        keys = list(distinct)
        out: dict[str, tuple[Embedding, float]] = {}
        step = max(1, self.job.embed_batch)
        for i in range(0, len(keys), step):
            chunk = keys[i : i + step]
            t0 = time.perf_counter()
            if len(chunk) == 1:  # the same call as single-process eval's EmbeddingCache
                embs = [self.segmenter.embed(distinct[chunk[0]])]
            else:
                embs = self.segmenter.embed_batch([distinct[k] for k in chunk])
            sec = (time.perf_counter() - t0) / len(chunk)
            out.update({k: (e, sec) for k, e in zip(chunk, embs)})
        return out

    def run(self, specs: list[CaseSpec]) -> list[dict]:
        self._maybe_fail()
        cases = [self.loader.load(s) for s in specs]
        keys = [_image_key(c.image) for c in cases]
        embeddings = self._embeddings([c.image for c in cases])
        charged: set[str] = set()
        records = []
        for case, key in zip(cases, keys):
            emb, sec = embeddings[key]
            sec = 0.0 if key in charged else sec  # the encode counts once, on its first case
            charged.add(key)
            final: dict[str, np.ndarray] = {}
            rows = evaluate_case(
                self.segmenter, case, self.job.settings, embedding=emb, embed_seconds=sec,
                on_step=lambda step: final.update(mask=step.mask),
            )
            mask = np.asarray(final["mask"], dtype=bool)
            records.append(
                {
                    "case_id": case.spec.case_id,
                    "line": case.spec.line,
                    "rows": [r.csv_row() for r in rows],
                    "attributes": dict(case.spec.attributes),
                    "mask_shape": list(mask.shape),
                    "mask_bits": np.packbits(mask.ravel()).tobytes(),
                    "worker_pid": os.getpid(),
                }
            )
        return records


# --- the driver -----------------------------------------------------------------------------------
def save_case(output: Path, record: dict) -> None:
    """Mask first, then the results file (its presence means 'finished'), both atomically."""
    shape = tuple(record["mask_shape"])
    bits = np.frombuffer(record["mask_bits"], dtype=np.uint8)
    mask = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
    mpath = write_png_mask(mask, mask_path(output, record["case_id"]))
    data = {k: v for k, v in record.items() if k not in ("mask_bits", "mask_shape")}
    data["mask"] = str(mpath.relative_to(output))
    with atomic_output(case_path(output, record["case_id"])) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")


def load_case(output: Path, spec: CaseSpec) -> list[StepRow] | None:
    """The finished rows of ``spec`` in DIR, or None when it has to run (missing or unreadable)."""
    path = case_path(output, spec.case_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("case_id") != spec.case_id or not (output / data.get("mask", "\0")).is_file():
        return None
    return [StepRow(**{k: row[k] for k in ROW_FIELDS}, attributes=dict(spec.attributes)) for row in data["rows"]]


def check_run_file(output: Path, job: BatchJob) -> None:
    """DIR/run.json records the settings; resuming with other settings would mix two runs."""
    path = output / RUN_FILE
    want = job.fingerprint()
    if path.is_file():
        have = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            raise BatchError(
                f"{output} holds a run with other settings ({', '.join(diff)}: "
                f"{', '.join(f'{have.get(k)!r} -> {want.get(k)!r}' for k in diff)}); "
                "choose another --output, or delete the folder to start over"
            )
        return
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(want, indent=1), encoding="utf-8")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BatchError(
            f"--ray {address}: cannot reach a Ray cluster there ({e}); start one with `ray start --head` "
            "and pass its address, or use --ray local"
        ) from None


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[object]:
    """``local`` starts a Ray on this machine (stopped after); an address joins a cluster.

    An already initialised Ray (a test's, a notebook's) is used as is and left running.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def default_workers(ray_mod, device: str, gpus_per_worker: float = 1.0) -> int:
    """``GPUs / gpus_per_worker`` workers for ``cuda`` (one per GPU by default), one per CPU otherwise."""
    res = ray_mod.cluster_resources()
    gpu = device.startswith("cuda")
    n = int(res.get("GPU", 0) / gpus_per_worker + 1e-9) if gpu else int(res.get("CPU", 1))
    if n < 1:
        raise BatchError(f"the Ray cluster has no {'GPU' if device.startswith('cuda') else 'CPU'}; "
                         "use --device cpu or join a cluster with GPUs")
    return n


def cpus_per_worker(ray_mod, device: str, n_workers: int) -> int:
    """GPU workers share the node's CPUs (Ray sets each actor's OMP/torch threads to its CPUs, and the
    per-case metrics run on the CPU); a CPU worker is one CPU."""
    if not device.startswith("cuda"):
        return 1
    return max(1, int(ray_mod.cluster_resources().get("CPU", 1)) // max(1, n_workers))


def run_batch(
    job: BatchJob,
    output: str | Path,
    *,
    ray_address: str = "local",
    workers: int | None = None,
    cases: list[CaseSpec] | None = None,
    group_by: tuple[str, ...] | list[str] = (),
    slices_per_task: int | None = None,
    max_retries: int = 3,
    progress: bool = True,
) -> BatchResult:
    """Evaluate ``job`` over the manifest (or ``cases``) on Ray; write DIR like ``medseg eval`` plus masks."""
    from evaluation.report import write_report

    output = Path(output)
    if ray_address != "local":
        check_reachable(ray_address)
    all_cases, attributes = read_manifest(job.manifest)
    cases = all_cases if cases is None else cases
    output.mkdir(parents=True, exist_ok=True)
    check_run_file(output, job)
    finished = {c.case_id: rows for c in cases if (rows := load_case(output, c)) is not None}
    todo = [c for c in cases if c.case_id not in finished]
    tasks = plan_tasks(todo, slices_per_task or max(1, job.embed_batch))
    retried = 0
    if tasks:
        with ray_session(ray_address, None if job.device.startswith("cuda") else workers) as ray:
            n = min(workers or default_workers(ray, job.device, job.gpus_per_worker), len(tasks))
            cpus = cpus_per_worker(ray, job.device, n)
            retried = _drive(ray, job, tasks, n, output, max_retries, progress, len(cases), len(finished), cpus)
    rows: list[StepRow] = []
    for spec in cases:
        case_rows = load_case(output, spec)
        if case_rows is None:
            raise BatchError(f"{case_path(output, spec.case_id)}: missing after the run; run again to resume")
        rows.extend(case_rows)
    run = EvalRun(rows=rows, settings=job.settings, model=job.model, manifest=str(job.manifest),
                  attributes=attributes, n_cases=len(cases))
    write_report(run, output, list(group_by))
    return BatchResult(run=run, output=output, computed=[c.case_id for c in todo],
                       skipped=list(finished), retried_tasks=retried)


@dataclass(frozen=True)
class Sent:
    """A task handed to the worker in ``slot`` (its ``generation``-th actor), on its ``attempt``-th try."""

    slot: int
    generation: int
    task: list[CaseSpec]
    attempt: int


class TaskQueue:
    """The driver's rules without Ray: which worker gets which task next, and what becomes of a task
    whose worker was lost.

    Every worker gets a first task before any gets a second, and holds two at most (the next one waits
    while the current one runs). A lost task goes back to the front of the queue, up to ``max_retries``
    times; its worker is replaced once, even when both its queued tasks come back lost.
    """

    def __init__(self, tasks: list[list[CaseSpec]], n_workers: int, max_retries: int):
        self.queue: deque[tuple[list[CaseSpec], int]] = deque((t, 0) for t in tasks)
        self.n_workers = n_workers
        self.max_retries = max_retries
        self.in_flight = [0] * n_workers
        self.generation = [0] * n_workers
        self.requeued = 0

    def take(self) -> list[Sent]:
        """The tasks to send now, round-robin."""
        sent = []
        for depth in (1, 2):
            for slot in range(self.n_workers):
                if self.queue and self.in_flight[slot] < depth:
                    task, attempt = self.queue.popleft()
                    self.in_flight[slot] += 1
                    sent.append(Sent(slot, self.generation[slot], task, attempt))
        return sent

    def done(self, sent: Sent) -> None:
        self.in_flight[sent.slot] -= 1

    def lost(self, sent: Sent) -> bool:
        """Re-queue a task whose worker is gone; True when that worker is to be replaced now."""
        self.in_flight[sent.slot] -= 1
        if sent.attempt >= self.max_retries:
            raise BatchError(
                f"cases {', '.join(s.case_id for s in sent.task)} lost their worker {sent.attempt + 1} times; "
                "see the Ray logs (out of memory?) and run again to resume"
            )
        self.queue.appendleft((sent.task, sent.attempt + 1))
        self.requeued += 1
        if sent.generation != self.generation[sent.slot]:
            return False  # its worker was already replaced (its other queued task came back first)
        self.generation[sent.slot] += 1
        return True


def _drive(ray, job: BatchJob, tasks: list[list[CaseSpec]], n_workers: int, output: Path,
           max_retries: int, progress: bool, total: int, done: int, cpus: int = 1) -> int:
    """Keep every actor busy (:class:`TaskQueue`), save results as they come, replace lost actors."""
    from ray.exceptions import RayActorError, RayTaskError

    gpu = job.device.startswith("cuda")
    remote_cls = ray.remote(CaseWorker).options(
        num_cpus=cpus, num_gpus=job.gpus_per_worker if gpu else 0, max_restarts=max_retries, max_task_retries=max_retries
    )
    fault = os.environ.get(FAULT_ENV) or None
    actors = [remote_cls.remote(job, fault) for _ in range(n_workers)]
    queue = TaskQueue(tasks, n_workers, max_retries)
    pending: dict[object, Sent] = {}

    def top_up() -> None:
        for sent in queue.take():
            pending[actors[sent.slot].run.remote(sent.task)] = sent

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, desc=f"batch {job.settings.protocol}", unit="case")
    try:
        top_up()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            sent = pending.pop(ready[0])
            try:
                records = ray.get(ready[0])
            except RayTaskError as e:  # the case itself failed (bad manifest row, empty label): the user's error
                raise (e.cause if isinstance(e.cause, Exception) else e) from None
            except RayActorError:  # the worker is gone after its restarts: a fresh one takes the task
                records = None
            if records is None:  # (outside the except: a BatchError from lost() carries no Ray traceback)
                if queue.lost(sent):
                    with contextlib.suppress(Exception):
                        ray.kill(actors[sent.slot])
                    actors[sent.slot] = remote_cls.remote(job, fault)
                top_up()
                continue
            queue.done(sent)
            for record in records:
                save_case(output, record)
            if bar is not None:
                bar.update(len(records))
            top_up()
    finally:
        if bar is not None:
            bar.close()
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
    return queue.requeued
