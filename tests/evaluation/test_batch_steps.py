"""``medseg batch`` without starting Ray: the driver's rules (which worker gets which task, a lost worker's
tasks run again, a case's own error reaches the user), the files a run leaves and resumes from, and a
worker's records, with the stand-in model of ``test_eval_runner_steps.py`` on the shared manifest's slices.
The Ray run itself (2 real workers, one killed, the real model): ``test_batch.py``."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import sys
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray.exceptions import RayActorError, RayTaskError

from evaluation import distributed
from evaluation.clicks import parse_protocol
from evaluation.distributed import (FAULT_ENV, RUN_FILE, BatchError, BatchJob, CaseWorker, Sent, TaskQueue,
                                    case_path, case_stem, check_run_file, load_case, mask_path, plan_tasks,
                                    run_batch, save_case)
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.report import write_per_case_csv
from evaluation.runner import EvalSettings, evaluate, evaluate_case
from tests.conftest import DATA
from tests.evaluation.test_eval_runner_steps import BoxFiller

MANIFEST = DATA / "manifest.csv"
SETTINGS = EvalSettings(parse_protocol("box"), margin=3)  # one scored step a case: the metrics cost seconds


@pytest.fixture()
def specs():
    return list(_specs())


@functools.lru_cache(maxsize=1)
def _specs() -> tuple:
    """Four rows on three slices of the shared MR (two structures on the first), in manifest order."""
    cases, _ = read_manifest(MANIFEST)
    by_slice: dict = {}
    for c in cases:
        if c.image.name.startswith("mr_t1_colin27_slabA"):
            by_slice.setdefault(c.slice_index, []).append(c)
    chosen = [k for k, v in sorted(by_slice.items()) if len(v) >= 2][:3]
    assert len(chosen) == 3
    keep = by_slice[chosen[0]][:2] + by_slice[chosen[1]][:1] + by_slice[chosen[2]][:1]
    return tuple(c for c in cases if c in keep)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The report's plots are ``test_eval_report.py``'s; here an empty file each (matplotlib costs seconds)."""
    from evaluation import report

    def placeholder(summary, *args, **kw):
        Path(args[-1]).write_bytes(b"")
        return Path(args[-1])

    monkeypatch.setattr(report, "plot_dice_per_click", placeholder)
    monkeypatch.setattr(report, "plot_groups", placeholder)


class BatchFiller(BoxFiller):
    """The stand-in model with the batched encode a GPU worker uses."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def embed_batch(self, images):
        self.batches.append(len(images))
        return [self.embed(im) for im in images]


@functools.lru_cache(maxsize=1)
def _loader() -> CaseLoader:
    return CaseLoader(MANIFEST)


@pytest.fixture()
def loader():
    """One loader for the process: each study file is read once, not once per worker made."""
    return _loader()


@functools.lru_cache(maxsize=1)
def _reference() -> tuple[list[dict], dict[str, np.ndarray], list[dict]]:
    specs = _specs()
    run = evaluate(BoxFiller(), MANIFEST, SETTINGS, cases=list(specs), progress=False)
    rows = [{k: v for k, v in r.csv_row().items() if k != "seconds"} for r in run.rows]
    with tempfile.TemporaryDirectory() as tmp:
        written = csv_rows(write_per_case_csv(run.rows, Path(tmp) / "per_case.csv"))
    masks = {}
    for spec in specs:
        last: dict = {}
        evaluate_case(BoxFiller(), _loader().load(spec), SETTINGS, on_step=lambda step: last.update(mask=step.mask))
        masks[spec.case_id] = last["mask"]
    return rows, masks, written


@pytest.fixture()
def reference(specs):
    """Single-process ``medseg eval``'s rows for ``specs`` with the stand-in model (seconds left out), each
    case's final mask, and the per_case.csv rows ``medseg eval`` writes (as text)."""
    return _reference()


@pytest.fixture()
def stand_in(monkeypatch, loader):
    """CaseWorker's model loader gives a fresh BatchFiller (the ones made are kept to look at), and its
    CaseLoader is the module's warm one."""
    import runtime

    made: list[BatchFiller] = []

    def warm(manifest):
        assert Path(manifest) == MANIFEST
        return loader

    monkeypatch.setattr(distributed, "CaseLoader", warm)

    def load(model, checkpoint, device, backend):
        made.append(BatchFiller())
        made[-1].loaded_as = (model, checkpoint, device, backend)
        return made[-1]

    monkeypatch.setattr(runtime, "load_segmenter", load)
    return made


def job(**kw) -> BatchJob:
    return BatchJob(manifest=str(MANIFEST), model="litemedsam", settings=SETTINGS, **kw)


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


# --- the driver's rules -------------------------------------------------------------------------------
def test_every_worker_gets_a_first_task_before_any_gets_a_second_and_two_at_most():
    tasks = [[f"t{i}"] for i in range(7)]
    q = TaskQueue(tasks, n_workers=3, max_retries=2)
    first = q.take()
    assert [(s.slot, s.task, s.attempt) for s in first] == [
        (0, ["t0"], 0), (1, ["t1"], 0), (2, ["t2"], 0), (0, ["t3"], 0), (1, ["t4"], 0), (2, ["t5"], 0)]
    assert q.take() == []  # two queued on each: t6 waits
    q.done(first[4])  # worker 1 finished a task: the next one goes there
    assert [(s.slot, s.task) for s in q.take()] == [(1, ["t6"])]
    assert q.take() == [] and q.requeued == 0


def test_a_worker_that_finishes_gets_work_up_to_two_tasks_again():
    q = TaskQueue([[f"t{i}"] for i in range(6)], n_workers=1, max_retries=1)
    t0, t1 = q.take()
    q.done(t0)
    (t2,) = q.take()  # one running, one waiting: not three
    q.done(t1)
    q.done(t2)
    assert [s.task for s in q.take()] == [["t3"], ["t4"]]  # idle: two again


def test_a_task_goes_to_an_idle_worker_before_a_busy_one():
    q = TaskQueue([[f"t{i}"] for i in range(5)], n_workers=2, max_retries=1)
    t0, t1, t2, t3 = q.take()
    for sent in (t0, t1, t3):  # worker 0 still runs t2; worker 1 is idle
        q.done(sent)
    assert [(s.slot, s.task) for s in q.take()] == [(1, ["t4"])]


def test_fewer_tasks_than_workers():
    q = TaskQueue([["a"], ["b"]], n_workers=4, max_retries=3)
    assert [(s.slot, s.task) for s in q.take()] == [(0, ["a"]), (1, ["b"])]


def test_a_lost_task_runs_next_and_its_worker_is_replaced_once():
    q = TaskQueue([["a"], ["b"], ["c"], ["d"], ["e"]], n_workers=2, max_retries=3)
    a, b, c, d = q.take()
    assert q.lost(a) is True  # worker 0 is gone: replace it
    assert q.lost(c) is False  # its other queued task comes back lost too: already replaced
    assert q.requeued == 2
    again = q.take()  # the lost tasks first, on the new worker 0, before the rest of the queue
    assert [(s.slot, s.generation, s.task, s.attempt) for s in again] == [(0, 1, ["c"], 1), (0, 1, ["a"], 1)]
    q.done(b)
    assert [(s.slot, s.task, s.attempt) for s in q.take()] == [(1, ["e"], 0)]
    assert q.lost(again[0]) is True  # the new worker dies as well: replaced again
    assert q.lost(again[1]) is False  # and once only


def test_a_task_lost_too_often_stops_the_run_naming_its_cases(specs):
    q = TaskQueue([specs[:2]], n_workers=1, max_retries=2)
    for attempt in range(2):
        (sent,) = q.take()
        assert sent.attempt == attempt
        q.lost(sent)
    (sent,) = q.take()
    with pytest.raises(BatchError) as e:
        q.lost(sent)
    assert str(e.value) == (f"cases {specs[0].case_id}, {specs[1].case_id} lost their worker 3 times; see the Ray "
                            "logs (out of memory?) and run again to resume")
    with pytest.raises(BatchError, match="lost their worker 1 times"):
        q0 = TaskQueue([["x"]], n_workers=1, max_retries=0)
        q0.lost(Sent(0, 0, specs[:1], 0))


# --- files a run leaves -----------------------------------------------------------------------------
def test_case_file_names_are_safe_and_never_collide(tmp_path):
    assert case_stem("liver_007.v2-a") == "liver_007.v2-a" and case_stem("Liver_7-CT") == "Liver_7-CT"
    odd = ["ab/c", "ab c", "ab:c", "../x", "Ünïcode"]
    stems = [case_stem(c) for c in odd]
    assert len(set(stems)) == len(odd)
    for case_id, stem in zip(odd, stems):  # each with its id's checksum, so "ab/c" and "ab c" stay apart
        assert stem.endswith(f"-{zlib.crc32(case_id.encode('utf-8')):08x}") and "/" not in stem and " " not in stem
    assert case_stem("ab/c").startswith("ab_c-") and case_stem("a//b").startswith("a_b-")
    assert case_path(tmp_path, "ab/c") == tmp_path / "cases" / f"{case_stem('ab/c')}.json"
    assert mask_path(tmp_path, "ab/c") == tmp_path / "masks" / f"{case_stem('ab/c')}.png"


def test_a_case_id_of_250_characters_saves_its_mask_and_results(specs, tmp_path):
    """`medseg batch` named a case's files `<case_id>.png/.json` in full: an id of 240 characters or more stopped the
    case with `[Errno 36] File name too long` (the temporary beside them is longer still) (session 24's pass). Such
    an id is cut, with its checksum, so two that share their first 180 characters stay apart."""
    mask = np.ones((4, 4), bool)
    for case_id in ("c" * 250, "c" * 249 + "d", "c" * 1000):
        spec = replace(specs[0], case_id=case_id)
        save_case(tmp_path, _record(spec, mask))
        assert load_case(tmp_path, spec) is not None and len(case_path(tmp_path, case_id).name) < 200
    assert len(list((tmp_path / "masks").iterdir())) == 3 and case_stem("c" * 180) == "c" * 180


def _record(spec, mask: np.ndarray) -> dict:
    return {"case_id": spec.case_id, "line": spec.line,
            "rows": [{"case_id": spec.case_id, "structure": spec.structure, "clicks": 0, "dice": 0.5, "iou": 0.25,
                      "hd95": 3.0, "nsd": 0.75, "seconds": 0.01}],
            "attributes": dict(spec.attributes), "mask_shape": list(mask.shape),
            "mask_bits": np.packbits(mask.ravel()).tobytes(), "worker_pid": 42}


def test_a_saved_case_reads_back_with_its_mask(specs, tmp_path):
    spec = specs[0]
    mask = np.random.default_rng(1).random((13, 11)) > 0.5  # not a multiple of 8 pixels
    save_case(tmp_path, _record(spec, mask))
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path(tmp_path, spec.case_id))) > 0, mask)
    data = json.loads(case_path(tmp_path, spec.case_id).read_text(encoding="utf-8"))
    assert data["mask"] == f"masks/{case_stem(spec.case_id)}.png" and data["worker_pid"] == 42
    assert "mask_bits" not in data and "mask_shape" not in data
    (row,) = load_case(tmp_path, spec)
    assert (row.case_id, row.structure, row.clicks, row.dice, row.iou, row.hd95, row.nsd, row.seconds) == (
        spec.case_id, spec.structure, 0, 0.5, 0.25, 3.0, 0.75, 0.01)
    assert row.attributes == spec.attributes and row.attributes is not spec.attributes
    assert [p.name for p in tmp_path.rglob("*.tmp*")] == []  # nothing half-written left


def test_a_case_that_must_run_again(specs, tmp_path):
    spec, other = specs[0], specs[1]
    assert load_case(tmp_path, spec) is None  # never run
    save_case(tmp_path, _record(spec, np.ones((4, 4), bool)))
    mask_path(tmp_path, spec.case_id).unlink()
    assert load_case(tmp_path, spec) is None  # its mask is gone
    save_case(tmp_path, _record(spec, np.ones((4, 4), bool)))
    data = json.loads(case_path(tmp_path, spec.case_id).read_text())
    case_path(tmp_path, other.case_id).write_text(json.dumps({**data, "case_id": "someone else"}))
    assert load_case(tmp_path, other) is None  # a file of another case under its name
    case_path(tmp_path, spec.case_id).write_text(json.dumps({k: v for k, v in data.items() if k != "mask"}))
    assert load_case(tmp_path, spec) is None  # no mask named
    case_path(tmp_path, spec.case_id).write_text('{"case_id": ')
    assert load_case(tmp_path, spec) is None  # cut short by a crash


def test_a_run_folder_records_its_settings_and_refuses_others(tmp_path):
    first = job()
    check_run_file(tmp_path, first)
    recorded = json.loads((tmp_path / RUN_FILE).read_text(encoding="utf-8"))
    assert recorded == {"manifest": str(MANIFEST.resolve()), "model": "litemedsam", "checkpoint": None,
                        **SETTINGS.as_dict()}
    check_run_file(tmp_path, first)  # the same settings resume
    check_run_file(tmp_path, job(device="cuda", embed_batch=4, gpus_per_worker=0.5))  # speed, not numbers
    other = BatchJob(manifest=str(MANIFEST), model="medsam", backend="onnx",
                     settings=EvalSettings(parse_protocol("box+clicks:1"), margin=3))
    with pytest.raises(BatchError) as e:
        check_run_file(tmp_path, other)
    assert str(e.value) == (f"{tmp_path} holds a run with other settings (backend, model, protocol: None -> 'onnx', "
                            "'litemedsam' -> 'medsam', 'box' -> 'box+clicks:1'); choose another --output, or delete "
                            "the folder to start over")
    assert json.loads((tmp_path / RUN_FILE).read_text()) == recorded  # not overwritten


def test_a_checkpoint_is_recorded_by_its_full_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert job(checkpoint="w/model.pth").fingerprint()["checkpoint"] == str(tmp_path / "w" / "model.pth")
    assert job(backend="onnx").fingerprint()["backend"] == "onnx"


# --- a worker ------------------------------------------------------------------------------------------
def test_a_worker_gives_the_rows_and_masks_of_eval(specs, stand_in, reference, loader):
    worker = CaseWorker(job(device="cpu", backend="torch", checkpoint="c.pth"))
    assert stand_in[0].loaded_as == ("litemedsam", "c.pth", "cpu", "torch")
    records = worker.run(specs)
    assert [r["case_id"] for r in records] == [s.case_id for s in specs]
    assert [r["line"] for r in records] == [s.line for s in specs]
    rows = [{k: v for k, v in row.items() if k != "seconds"} for r in records for row in r["rows"]]
    assert rows == reference[0]
    for spec, r in zip(specs, records):
        case = loader.load(spec)
        shape = tuple(r["mask_shape"])
        assert shape == case.gt.shape and r["attributes"] == spec.attributes and r["worker_pid"] == os.getpid()
        mask = np.unpackbits(np.frombuffer(r["mask_bits"], np.uint8), count=int(np.prod(shape))).reshape(shape)
        np.testing.assert_array_equal(mask.astype(bool), reference[1][spec.case_id])
    assert len(stand_in[0].embeds) == 3  # one encode per slice, not per row
    json.dumps({**records[0], "mask_bits": None})  # the rest of a record is plain JSON


@pytest.mark.parametrize("embed_batch, encode_s", [(1, 2.0), (3, 2.0 / 3)])
def test_a_slices_encode_time_counts_once_on_its_first_case(specs, stand_in, monkeypatch, embed_batch, encode_s):
    ticks = iter(range(0, 1000, 2))
    monkeypatch.setattr(distributed.time, "perf_counter", lambda: float(next(ticks)))
    records = CaseWorker(job(embed_batch=embed_batch)).run(specs)
    # by this clock every step takes 2 s, and so does each encode call: one slice alone, or three slices at once
    # (2/3 s each); a slice's encode counts on its first row only
    first = [s.slice_index not in {p.slice_index for p in specs[:i]} for i, s in enumerate(specs)]
    assert first.count(False) == 1
    assert [r["rows"][0]["seconds"] for r in records] == pytest.approx([2.0 + encode_s * f for f in first])


def test_blank_slices_of_different_sizes_are_encoded_apart(stand_in):
    worker = CaseWorker(job())
    tall, wide = np.zeros((6, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)  # the same bytes
    embeddings = worker._embeddings([tall, wide, tall.copy()])
    assert len(embeddings) == 2 and stand_in[0].embeds == [(6, 4, 3), (4, 6, 3)]


@pytest.mark.parametrize("embed_batch, batches, singles", [(1, [], 3), (2, [2], 1), (3, [3], 0), (8, [3], 0)])
def test_a_gpu_worker_encodes_its_slices_in_batches(specs, stand_in, reference, embed_batch, batches, singles):
    records = CaseWorker(job(embed_batch=embed_batch)).run(specs)
    model = stand_in[0]
    assert model.batches == batches and len(model.embeds) == sum(batches) + singles
    rows = [{k: v for k, v in row.items() if k != "seconds"} for r in records for row in r["rows"]]
    assert rows == reference[0]


def test_the_fault_hook_kills_the_first_worker_only(tmp_path, stand_in):
    marker = tmp_path / "crashed"
    worker = CaseWorker(job(), str(marker))
    pid = os.fork()
    if pid == 0:
        try:
            worker._maybe_fail()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17 and marker.read_text() == str(pid)
    worker._maybe_fail()  # the marker exists: this worker goes on
    CaseWorker(job())._maybe_fail()  # no hook set: nothing happens
    assert marker.read_text() == str(pid)


# --- the driver on a stand-in Ray ----------------------------------------------------------------
class FakeRay:
    """The parts of the ``ray`` module ``_drive`` uses, in this process: an actor is its object here, a task
    runs when it is waited for, and the calls numbered in ``lose`` (0 = the first to run) find their worker
    dead, as do all later calls to that worker."""

    def __init__(self, lose: set[int] = frozenset()):
        self.lose, self.calls, self.actors, self.killed, self.options = set(lose), 0, [], [], None
        self.kill_fails = False

    def remote(self, cls):
        fake = self

        class Remote:
            def options(self, **kw):
                fake.options = kw
                return self

            def remote(self, *args):
                actor = _Actor(cls(*args))
                fake.actors.append(actor)
                return actor

        return Remote()

    def wait(self, refs, num_returns=1):
        assert num_returns == 1
        return refs[:1], refs[1:]

    def get(self, ref):
        actor, task = ref.actor, ref.task
        n, self.calls = self.calls, self.calls + 1
        if n in self.lose:
            actor.dead = True
        if actor.dead:
            raise RayActorError()
        try:
            return actor.obj.run(task)
        except BaseException as e:  # as Ray hands a task's own error back
            raise RayTaskError("run", "traceback", e) from None

    def kill(self, actor):
        self.killed.append(actor)
        if self.kill_fails:
            raise ValueError("the actor is gone already")


class _Actor:
    def __init__(self, obj):
        self.obj, self.dead = obj, False
        self.run = self

    def remote(self, task):
        return _Ref(self, task)


class _Ref:
    def __init__(self, actor, task):
        self.actor, self.task = actor, task


@contextlib.contextmanager
def stand_in_ray(monkeypatch, fake: FakeRay, cpus: float = 2.0, gpus: float = 0.0):
    """run_batch's Ray session replaced by ``fake``; reports ``cpus`` and ``gpus``."""
    fake.cluster_resources = lambda: {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    sessions = []

    @contextlib.contextmanager
    def session(address, num_cpus=None):
        sessions.append((address, num_cpus))
        yield fake

    monkeypatch.setattr(distributed, "ray_session", session)
    yield sessions


def test_a_batch_gives_the_per_case_csv_of_eval(specs, reference, stand_in, monkeypatch, tmp_path):
    fake = FakeRay()
    with stand_in_ray(monkeypatch, fake) as sessions:
        result = run_batch(job(), tmp_path / "runs" / "run", cases=specs, progress=False)  # a new folder in a new one
    assert csv_rows(tmp_path / "runs" / "run" / "per_case.csv") == reference[2]
    assert result.computed == [s.case_id for s in specs] and result.skipped == [] and result.retried_tasks == 0
    assert [r.case_id for r in result.run.rows] == [s.case_id for s in specs]
    assert (result.run.n_cases, result.run.model, result.run.manifest) == (4, "litemedsam", str(MANIFEST))
    assert sessions == [("local", None)]  # a local Ray sized by the machine when no --workers
    assert len(fake.actors) == 2 and len(fake.killed) == 2  # one per CPU, all stopped at the end
    assert fake.options == {"num_cpus": 1, "num_gpus": 0, "max_restarts": 3, "max_task_retries": 3}
    for name in ("summary.json", "report.md", RUN_FILE):
        assert (tmp_path / "runs" / "run" / name).is_file()


def test_workers_tasks_and_gpus_as_asked(specs, stand_in, monkeypatch, tmp_path):
    fake = FakeRay()
    with stand_in_ray(monkeypatch, fake, cpus=16.0, gpus=1.0) as sessions:
        run_batch(job(device="cuda", gpus_per_worker=0.5, embed_batch=2), tmp_path / "run", cases=specs,
                  workers=3, max_retries=5, progress=False)
    assert sessions == [("local", None)]  # GPU workers: Ray sizes the CPUs itself
    assert len(fake.actors) == 2  # 3 asked, but embed_batch 2 makes 2 tasks of 2 slices
    assert fake.options == {"num_cpus": 8, "num_gpus": 0.5, "max_restarts": 5, "max_task_retries": 5}
    fake = FakeRay()
    with stand_in_ray(monkeypatch, fake, cpus=4.0) as sessions:
        run_batch(job(), tmp_path / "run2", cases=specs, workers=1, slices_per_task=3, progress=False)
    assert sessions == [("local", 1)] and len(fake.actors) == 1
    assert [len(s.embeds) for s in stand_in[-1:]] == [3]
    fake = FakeRay()
    with stand_in_ray(monkeypatch, fake, cpus=16.0, gpus=1.0):  # no --workers: as many as the GPU share allows
        run_batch(job(device="cuda", gpus_per_worker=0.5), tmp_path / "run3", cases=specs, progress=False)
    assert len(fake.actors) == 2 and fake.options["num_gpus"] == 0.5 and fake.options["num_cpus"] == 8


def test_a_lost_worker_is_replaced_and_nothing_is_lost(specs, reference, stand_in, monkeypatch, tmp_path, capsys):
    fake = FakeRay(lose={0})  # worker 0 dies on its first task: its second queued task is lost with it
    with stand_in_ray(monkeypatch, fake):
        result = run_batch(job(), tmp_path / "run", cases=specs, progress=True)
    assert csv_rows(tmp_path / "run" / "per_case.csv") == reference[2]
    assert result.retried_tasks == 2
    assert len(fake.actors) == 3 and fake.killed[0] is fake.actors[0]  # replaced once, the dead one stopped
    assert set(map(id, fake.killed)) == set(map(id, fake.actors))
    err = capsys.readouterr().err
    assert "batch box" in err and "4/4" in err


def test_stopping_a_worker_that_is_gone_already_is_no_error(specs, reference, stand_in, monkeypatch, tmp_path):
    fake = FakeRay(lose={0})
    fake.kill_fails = True
    with stand_in_ray(monkeypatch, fake):
        result = run_batch(job(), tmp_path / "run", cases=specs, progress=False)
    assert result.retried_tasks == 2 and len(fake.killed) == 3  # the lost one, then the two at the end
    assert csv_rows(tmp_path / "run" / "per_case.csv") == reference[2]


def test_a_worker_that_exits_is_a_task_error_not_an_exit_of_the_driver(specs, stand_in, monkeypatch, tmp_path):
    monkeypatch.setattr(CaseWorker, "run", lambda self, specs: (_ for _ in ()).throw(SystemExit(3)))
    with stand_in_ray(monkeypatch, FakeRay()), pytest.raises(RayTaskError):
        run_batch(job(), tmp_path / "run", cases=specs, progress=False)


def test_a_worker_lost_again_and_again_stops_the_run(specs, stand_in, monkeypatch, tmp_path):
    fake = FakeRay(lose=set(range(100)))
    with stand_in_ray(monkeypatch, fake), pytest.raises(BatchError, match=r"lost their worker 2 times; see the Ray"):
        run_batch(job(), tmp_path / "run", cases=specs[:2], max_retries=1, progress=False)
    assert set(map(id, fake.killed)) == set(map(id, fake.actors))  # no worker left running


def test_a_cases_own_error_reaches_the_user_as_itself(specs, stand_in, monkeypatch, tmp_path):
    class Broken(ValueError):
        pass

    def boom(self, specs):
        raise Broken("labels.nii.gz: label 77 is empty on slice 4")

    monkeypatch.setattr(CaseWorker, "run", boom)
    with stand_in_ray(monkeypatch, FakeRay()), pytest.raises(Broken, match="label 77 is empty"):
        run_batch(job(), tmp_path / "run", cases=specs, progress=False)


def test_a_resumed_run_computes_only_what_is_missing(specs, reference, stand_in, monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    with stand_in_ray(monkeypatch, FakeRay()):
        run_batch(job(), out, cases=specs, progress=False)
    case_path(out, specs[3].case_id).unlink()
    kept = {s.case_id: case_path(out, s.case_id).read_bytes() for s in specs if s is not specs[3]}
    fake = FakeRay()
    capsys.readouterr()
    with stand_in_ray(monkeypatch, fake):
        result = run_batch(job(), out, cases=specs, progress=True)
    bar = capsys.readouterr().err
    assert "batch box:  75%" in bar and "3/4" in bar and "4/4" in bar and "case/s" in bar  # counting on from 3
    assert result.computed == [specs[3].case_id] and result.skipped == list(kept)
    assert len(fake.actors) == 1  # one task left: one worker, not one per CPU
    assert {c: case_path(out, c).read_bytes() for c in kept} == kept
    assert csv_rows(out / "per_case.csv") == reference[2]


def test_a_finished_run_writes_its_report_without_ray(specs, reference, stand_in, monkeypatch, tmp_path):
    out = tmp_path / "run"
    with stand_in_ray(monkeypatch, FakeRay()):
        run_batch(job(), out, cases=specs, progress=False)
    (out / "per_case.csv").unlink()

    def no_ray(*a, **kw):
        raise AssertionError("Ray started for a finished run")

    monkeypatch.setattr(distributed, "ray_session", no_ray)
    result = run_batch(job(), out, cases=specs, group_by=["modality"], progress=False)
    assert result.computed == [] and result.retried_tasks == 0 and result.output == out
    assert (out / "groups_modality.png").is_file()  # the grouping asked for
    assert csv_rows(out / "per_case.csv") == reference[2]
    assert "groups_modality.png" in (out / "report.md").read_text()


def test_a_case_missing_after_the_run_is_named(specs, stand_in, monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "save_case", lambda output, record: None)  # a driver that lost its results
    with stand_in_ray(monkeypatch, FakeRay()), pytest.raises(BatchError) as e:
        run_batch(job(), tmp_path / "run", cases=specs, progress=False)
    missing = case_path(tmp_path / "run", specs[0].case_id)
    assert str(e.value) == f"{missing}: missing after the run; run again to resume"


def test_the_whole_manifest_by_default_and_the_cluster_checked_first(monkeypatch, tmp_path):
    checked = []
    monkeypatch.setattr(distributed, "check_reachable", lambda address: checked.append(address))
    monkeypatch.setattr(distributed, "ray_session", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        run_batch(job(), tmp_path / "run", ray_address="10.0.0.1:6379")
    assert checked == ["10.0.0.1:6379"]
    assert (tmp_path / "run" / RUN_FILE).is_file()  # the folder and its settings come before Ray
    with pytest.raises(RuntimeError, match="stop"):
        run_batch(job(), tmp_path / "run")
    assert checked == ["10.0.0.1:6379"]  # a local Ray needs no check
    assert len(plan_tasks(read_manifest(MANIFEST)[0])) > 1


def test_fault_hook_reaches_every_worker(specs, stand_in, monkeypatch, tmp_path):
    monkeypatch.setenv(FAULT_ENV, str(tmp_path / "never-fires"))
    monkeypatch.setattr(CaseWorker, "_maybe_fail", lambda self: seen.append(self.fault_marker))
    seen: list = []
    with stand_in_ray(monkeypatch, FakeRay()):
        run_batch(job(), tmp_path / "run", cases=specs, progress=False)
    assert seen and set(seen) == {str(tmp_path / "never-fires")}


if "mutmut" in sys.modules:  # the mutation run's fork server: read and score once, every mutant's child inherits it
    _reference()
