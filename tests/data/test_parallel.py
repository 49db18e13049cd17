"""``data.parallel``: per-slice host work gives the same answers in the same order as a plain loop, an
error in one slice reaches the caller, and every caller shares one bounded pool (a server with many
sessions must not multiply threads)."""

from __future__ import annotations

import json
import os
import select
import signal
import threading

import pytest

from data import parallel
from data.parallel import PARALLEL_MIN_ITEMS, WORKERS, host_pool, map_slices

needs_threads = pytest.mark.skipif(WORKERS < 2, reason="one CPU: map_slices stays serial by design")


def _where(x: int) -> tuple[int, str]:
    return x * x, threading.current_thread().name


@pytest.mark.parametrize("n", [0, 1, PARALLEL_MIN_ITEMS - 1, PARALLEL_MIN_ITEMS, 37])
def test_same_results_in_item_order_as_a_loop(n):
    items = list(range(n, 0, -1))  # descending, so a sorted answer would show
    assert [r for r, _ in map_slices(_where, items)] == [x * x for x in items]


def test_few_items_stay_in_the_callers_thread():
    here = threading.current_thread().name
    assert {t for _, t in map_slices(_where, list(range(PARALLEL_MIN_ITEMS - 1)))} == {here}


@needs_threads
def test_enough_items_run_in_the_shared_host_threads():
    names = {t for _, t in map_slices(_where, list(range(PARALLEL_MIN_ITEMS)))}
    assert names and all(t.startswith("medseg-host") for t in names)


def test_one_cpu_stays_serial(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 1)
    here = threading.current_thread().name
    assert {t for _, t in map_slices(_where, list(range(50)))} == {here}


@pytest.mark.parametrize("n", [3, 40])
def test_an_error_in_one_slice_reaches_the_caller(n):
    def fn(x: int) -> int:
        if x == n - 2:
            raise ValueError(f"slice {x} is broken")
        return x

    with pytest.raises(ValueError, match=f"slice {n - 2} is broken"):
        map_slices(fn, list(range(n)))


def test_one_pool_for_every_caller_and_thread_bounded():
    pools: list = []
    threads = [threading.Thread(target=lambda: pools.append(host_pool())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p is host_pool() for p in pools)
    assert host_pool()._max_workers == WORKERS <= 8  # the bound a server relies on


def test_the_pool_is_made_once_even_when_callers_race(monkeypatch):
    """Many sessions asking at once on a fresh process still get one pool, not one each."""
    monkeypatch.setattr(parallel, "_pool", None)
    made: list = []
    real = parallel.ThreadPoolExecutor

    def counting(*args, **kwargs):
        pool = real(*args, **kwargs)
        made.append(pool)
        return pool

    monkeypatch.setattr(parallel, "ThreadPoolExecutor", counting)
    start = threading.Barrier(8)

    def ask():
        start.wait()
        host_pool()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(made) == 1 and made[0]._thread_name_prefix == "medseg-host"
    finally:
        for pool in made:
            pool.shutdown(wait=False)


@needs_threads
def test_a_forked_child_gets_threads_of_its_own():
    """A process forked after the pool exists (a fork server, a read worker) inherits the pool object but
    none of its threads: without a pool of its own, its first parallel map waits forever."""
    map_slices(_where, list(range(PARALLEL_MIN_ITEMS)))  # the pool exists here, with its threads
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer with what its map returned, then leave at once
        try:
            os.close(r)
            os.write(w, json.dumps([x for x, _ in map_slices(_where, list(range(PARALLEL_MIN_ITEMS)))]).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        answered = select.select([r], [], [], 30)[0]  # a bound on a hang, not a timing
        if not answered:
            os.kill(pid, signal.SIGKILL)
        assert answered, "the forked child's map_slices never returned"
        assert json.loads(os.read(r, 65536)) == [x * x for x in range(PARALLEL_MIN_ITEMS)]
    finally:
        os.close(r)
        os.waitpid(pid, 0)
