"""Shared test fixtures: paths to the real data and weights, one loaded LiteMedSAM per session."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

# pytest-xdist: each worker is a process. Two workers on two cores, each with torch's and ONNX Runtime's
# default of one thread per core, oversubscribe the cores and the threads spin-wait on each other
# (runtime/threads.py has the figures). Each worker, and every CLI or server it starts, gets its share (at least
# one thread: `make test` runs 3 workers on CI's 2 cores, see STEP_ASIDE_NICENESS).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import torch  # noqa: E402 - after OMP_NUM_THREADS, which torch reads when it starts its thread pool

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEDSEG_SHARED", ROOT.parent / "shared"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
DATA = SHARED / "data"
PARITY = SHARED / "parity"
SAMPLES = ROOT / "samples"

# Gradio copies every image and file a UI test returns into GRADIO_TEMP_DIR (default /tmp/gradio),
# which outlives the run: a full suite left ~100 MB there each time, and a CI machine's disk filled up.
# Each test process gets its own folder (servers started by a test inherit it), removed at exit.
_GRADIO_TMP = tempfile.mkdtemp(prefix="medseg-tests-gradio-")
os.environ["GRADIO_TEMP_DIR"] = _GRADIO_TMP


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks, written here independently of evaluation.metrics (which it checks);
    two empty masks give 0."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * np.logical_and(a, b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_GRADIO_TMP, ignore_errors=True)


# The suite's expectations (goldens, masks, timings of UI flows) were written for fp32 torch; the CPU default
# is otherwise the fastest accurate backend (runtime.backend_choice, an int8 ONNX encoder). Tests of that
# default clear this in their own environment (tests/runtime/test_backend_choice.py, tests/app/).
os.environ.setdefault("MEDSEG_BACKEND", "torch")

# One torch thread per xdist worker (`make test` runs 2 workers on 2 cores), 2 otherwise. The parity
# fixtures' README measured 1 vs 2 threads: differences far inside the recommended tolerances.
_default_threads = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("MEDSEG_TEST_THREADS", _default_threads)))


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM (upstream pipeline) on the CPU, loaded once."""
    from models.registry import load_segmenter

    return load_segmenter("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def litemedsam_base():
    """LiteMedSAM without the shipped click model (``litemedsam-base``): what the official code computes,
    for parity with its goldens and with backends that run the base decoder (ONNX)."""
    from models.registry import load_segmenter

    return load_segmenter("litemedsam-base", device="cpu")


class MemoisedEmbeddings:
    """Counts of :func:`memoised_embeddings`: encodes run (``misses``) and served again (``hits``)."""

    def __init__(self) -> None:
        self.hits, self.misses = 0, 0


@contextlib.contextmanager
def memoised_embeddings(segmenter, per_image: bool = False, memo: dict | None = None) -> Iterator[MemoisedEmbeddings]:
    """Within the block, ``segmenter`` (this instance: the shared one the CLI and the app load too) encodes
    each distinct batch of images once: a batch whose images are byte for byte those of an earlier batch gets
    the earlier embeddings back. The encoder is deterministic for equal input in one process, so only the time
    changes; an image that differs by one byte (another window, slice or order) misses and is encoded.
    For tests whose CLI run and reference computation encode the same slice; never where encodes are counted
    through the segmenter or its weights change.

    ``per_image``: each image is looked up on its own and only the missing ones are encoded (one batch); for a
    server whose sessions each encode the same sample's slices in batches of their own (the encoder has no
    batch-wide statistics: ``app.embedding_cache.padded``). Counts are then per image.

    ``memo``: a dict kept by the caller, to share the encodes between blocks (tests of a module that each enter
    the block, so that it is not active in the module's other tests)."""
    import hashlib

    memo = {} if memo is None else memo
    counts = MemoisedEmbeddings()
    encode = segmenter.embed_batch

    def key_of(im) -> tuple:
        return np.shape(im), str(np.asarray(im).dtype), hashlib.sha256(np.ascontiguousarray(im)).hexdigest()

    def embed_batch(images):
        key = tuple(key_of(im) for im in images)
        if key in memo:
            counts.hits += 1
        else:
            counts.misses += 1
            memo[key] = encode(images)
        return list(memo[key])

    def embed_each(images):
        keys = [(key_of(im),) for im in images]
        missing = {k: im for k, im in zip(keys, images) if k not in memo}
        counts.hits += len(keys) - len(missing)
        counts.misses += len(missing)
        if missing:
            for k, embedding in zip(missing, encode(list(missing.values()))):
                memo[k] = [embedding]
        return [memo[k][0] for k in keys]

    segmenter.embed_batch = embed_each if per_image else embed_batch
    try:
        yield counts
    finally:
        del segmenter.embed_batch


@contextlib.contextmanager
def real_server_turn() -> Iterator[None]:
    """Tests that drive a real server with the real model take turns across xdist workers.

    Two of them at once on CI's 2 cores (each server encoding slices for several tabs) starved a
    browser click past a 240 s timeout; one at a time, each runs in under a minute. The lock is this run's
    (xdist's run id; the process's without xdist): another checkout's run on the same machine held a
    machine-wide lock for minutes at a time (three set-ups of 192 to 264 s in one run)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    with open(Path(tempfile.gettempdir()) / f"medseg-tests-real-server-{run}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture()
def exclusive_server():
    """Use in a test that starts a real server (see :func:`real_server_turn`)."""
    with real_server_turn():
        yield


# Files whose tests drive a real server and take turns on it (real_server_turn). Scheduled as one unit,
# they run one after the other in one xdist worker while the other worker runs everything else; as
# separate files, a worker sat in a fixture waiting for the other's servers (2-4 minutes a full run).
REAL_SERVER_FILES = (
    "tests/e2e/",
    "tests/app/test_crash_recovery.py",
    "tests/app/test_load.py",
    "tests/app/test_hostile_server.py",
    "tests/app/test_isolated_upload_server.py",
    "tests/app/test_labelserver.py",
    "tests/app/test_state_dir_lock.py",
    "tests/app/test_serve_host.py",
)


# `make test` runs 3 workers on CI's 2 cores: the worker running the real-server unit mostly waits (on its browser, its
# `medseg serve` children, Orthanc), and two workers left a quarter of the cores idle (docs/testing.md, session 23).
# A third worker fills that idle time, and so that the real servers' browser and server waits (240 s timeouts) do not
# lengthen under the extra load, every worker that runs anything else lowers its own CPU priority (and that of the
# processes it starts from then on) before its first such test: the real-server unit, handed out first (SLOW_FIRST),
# keeps the run's priority and the others take what it leaves. A process cannot raise its priority back, so the
# real-server worker steps aside only once it is done with them. On a machine shared with other jobs the lowered
# workers also yield to those jobs, so the run is slower there than on CI; nothing in them is timed.
STEP_ASIDE_NICENESS = 5
_stepped_aside = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """An xdist worker lowers its priority before its first test outside the real-server unit (see above)."""
    global _stepped_aside
    if (not _stepped_aside and os.environ.get("PYTEST_XDIST_WORKER")
            and not item.nodeid.startswith(REAL_SERVER_FILES)):
        os.nice(STEP_ASIDE_NICENESS)
        _stepped_aside = True


# Files that share a session fixture's expensive work (tests/app/conftest.py: ct_series_embeddings, the CT
# series' 12 encodes; ray_cluster below) run in one worker, so the work is done once a run rather than once per worker.
RAY_FILES = ("tests/app/test_serve_ray.py", "tests/evaluation/test_batch.py")
SHARED_SETUP_UNITS = {
    "propagation on the CT series": ("tests/app/test_propagation.py", "tests/app/test_propagation_anchors.py",
                                     "tests/app/test_propagation_fill.py"),
    "one local Ray": RAY_FILES,
}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs, started by the first of ``RAY_FILES`` to need it and left running for the next (one
    xdist unit: they run one after the other), stopped after the last test of those files (the teardown hook below).
    One start instead of one a file: ``ray.init`` + ``shutdown`` took ~9 s of wall clock and ~2.5 s of CPU here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """``ray_cluster``'s end: after the fixtures' own teardown (a Serve app stops on this Ray), once the next test is
    not in ``RAY_FILES`` (the Ray's daemons and idle workers would otherwise hold memory and CPU for the rest of the
    worker's run). A later test of those files (``-p no:xdist`` runs them apart) starts it again."""
    result = yield
    if item.nodeid.startswith(RAY_FILES) and (nextitem is None or not nextitem.nodeid.startswith(RAY_FILES)):
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    return result


# Units that take long for their few tests, handed out first, in this order (the real servers, the most tests, were
# first already); the rest follow in xdist's order (most tests first). In that order these came among the last, and
# xdist gives a worker its next unit while it still runs the last two tests of its current one, queued behind them:
# a long few-test file near the end (test_timing, 1 test, ~25 s idle until it encoded once; test_default_backend,
# 4 tests, ~50 s) could keep one worker busy while the other had nothing left. Seconds: each file alone, one thread,
# on the shared machine at load ~8 (suite21, 2026-12-06; roughly 3-4x an idle run's).
SLOW_FIRST = (
    "real servers",
    "tests/models/test_zoo_parity.py",  # 179 s
    "tests/app/test_default_backend.py",  # 181 s (the first use of the ONNX default builds its export)
    "one local Ray",  # test_batch.py + test_serve_ray.py: ~190 s in session 24's loaded run (Ray, its workers' models)
    "tests/evaluation/test_eval_runner.py",  # 88 s
    "tests/runtime/test_cuda_graphs.py",  # 68 s (its CPU tests)
    "tests/adapters/test_persam_location_gate.py",  # 60 s
    "tests/data/test_hostile_corpus.py",  # 55-62 s
    "tests/models/test_litemedsam_parity.py",  # 53 s
    "tests/app/test_ui_oneshot.py",  # 44 s
    "tests/models/test_litemedsam_host_inputs.py",  # 41 s
    "tests/app/test_decode_bypass.py",  # 28 s
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":  # make test's mode; others keep xdist's own scheduling
        return None
    from xdist.scheduler import LoadFileScheduling

    class RealServersTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(REAL_SERVER_FILES):
                return "real servers"
            for unit, files in SHARED_SETUP_UNITS.items():
                if nodeid.split("::", 1)[0] in files:
                    return unit
            return super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            slow = next((unit for unit in SLOW_FIRST if unit in self.workqueue), None)
            if slow is not None:
                self.workqueue.move_to_end(slow, last=False)  # xdist pops the front
            super()._assign_work_unit(node)

    return RealServersTogether(config, log)


@pytest.fixture(autouse=True)
def _link_policy_restored():
    """Each test starts with the library's link policy ("inside"): ``app.cli.main`` sets the CLI's ("follow") for the
    whole process, so a CLI test run earlier on the same xdist worker changed what a reader test saw (a make test
    run where `test_links_inside_the_series_folder_are_followed_and_links_out_refuse_it` failed after one)."""
    from data import untrusted

    saved = untrusted.link_policy()
    untrusted.set_link_policy("inside")
    yield
    untrusted.set_link_policy(saved)
