"""``medseg batch`` on a local Ray (2 CPU workers): same per_case.csv as ``medseg eval`` although
one worker is killed mid-run, and a second run resumes. One 2-worker run for the module, on the Ray it shares
with ``tests/app/test_serve_ray.py`` (``ray_cluster``, ``tests/conftest.py``: Ray and model start-up cost seconds each).

The cohort: 4 real cases of the shared Colin27 MR, 2 structures on each of 2 slices, so tasks
group rows that share a slice and both workers get one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from evaluation.distributed import FAULT_ENV, BatchJob, case_path, mask_path, plan_tasks, run_batch
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.metrics import case_metrics
from evaluation.runner import PER_CASE_COLUMNS, EvalSettings
from evaluation.clicks import parse_protocol
from tests.conftest import DATA

PROTOCOL = "box+clicks:2"
CASES = [  # manifest order
    "mr_t1_colin27_slabA_thalamus_L_k004",
    "mr_t1_colin27_slabA_thalamus_L_k011",
    "mr_t1_colin27_slabA_thalamus_R_k004",
    "mr_t1_colin27_slabA_thalamus_R_k011",
]
DICE_TOL = 1e-5  # Dice recomputed from the saved PNG vs the CSV (6 significant digits)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Part of the shared manifest, its file paths made absolute."""
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["case_id"] in CASES]
    assert [r["case_id"] for r in rows] == CASES
    for r in rows:
        r["image"], r["label"] = str(DATA / r["image"]), str(DATA / r["label"])
    path = tmp_path_factory.mktemp("cohort") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def read_rows(per_case: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of per_case.csv without the timing column (it differs run to run)."""
    with open(per_case, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), [{k: v for k, v in r.items() if k != "seconds"} for r in reader]


@pytest.fixture(scope="module")
def eval_rows(cohort, litemedsam, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("eval")
    assert main(["eval", str(cohort), "--protocol", PROTOCOL, "--no-progress", "-o", str(out)]) == 0
    header, rows = read_rows(out / "per_case.csv")
    assert header == list(PER_CASE_COLUMNS)
    assert len(rows) == len(CASES) * 3
    return rows


@pytest.fixture(scope="module")
def batch_dir(ray_cluster, cohort, tmp_path_factory) -> Path:
    """One run on 2 workers in which the first worker to start a task dies hard (the test-only fault hook)."""
    base = tmp_path_factory.mktemp("batch")
    args = ["batch", str(cohort), "--protocol", PROTOCOL, "--ray", "local", "--workers", "2", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAULT_ENV, str(base / "crashed"))
        assert main([*args, "--output", str(base / "run")]) == 0
    return base / "run"


def test_two_workers_give_the_per_case_csv_of_eval(batch_dir, eval_rows):
    header, rows = read_rows(batch_dir / "per_case.csv")
    assert header == list(PER_CASE_COLUMNS)
    assert rows == eval_rows  # same numbers, same (manifest, click) order
    pids = {json.loads(case_path(batch_dir, c).read_text())["worker_pid"] for c in CASES}
    assert len(pids) == 2, "both workers should have taken a slice"
    for name in ("summary.json", "report.md"):
        assert (batch_dir / name).is_file()


def test_saved_masks_are_the_final_masks(batch_dir, cohort, eval_rows):
    """Each PNG, read back, scores the Dice that per_case.csv reports for the last click."""
    specs, _ = read_manifest(cohort)
    loader = CaseLoader(cohort)
    final = {r["case_id"]: float(r["dice"]) for r in eval_rows if r["clicks"] == "2"}
    for spec in specs:
        case = loader.load(spec)
        mask = np.asarray(Image.open(mask_path(batch_dir, spec.case_id))) > 0
        assert mask.shape == case.gt.shape
        dice = case_metrics(mask, case.gt, case.spacing).dice
        assert abs(dice - final[spec.case_id]) <= DICE_TOL, spec.case_id


def test_a_killed_worker_is_restarted_and_nothing_is_lost(batch_dir, eval_rows):
    marker = batch_dir.parent / "crashed"
    assert marker.is_file(), "the fault hook did not fire: nothing was killed"
    dead_pid = int(marker.read_text())
    pids = [json.loads(case_path(batch_dir, c).read_text())["worker_pid"] for c in CASES]
    assert dead_pid not in pids  # its task was redone by the restarted actor
    assert read_rows(batch_dir / "per_case.csv")[1] == eval_rows


def test_resume_runs_only_the_unfinished_cases(ray_cluster, batch_dir, cohort, eval_rows, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(batch_dir, out)
    lost = CASES[2]
    case_path(out, lost).unlink()
    (out / "per_case.csv").unlink()
    kept = {c: case_path(out, c).read_bytes() for c in CASES if c != lost}
    job = BatchJob(manifest=str(cohort), model="litemedsam", settings=EvalSettings(parse_protocol(PROTOCOL)))
    result = run_batch(job, out, workers=2, progress=False)
    assert result.computed == [lost]
    assert sorted(result.skipped) == sorted(kept)
    assert {c: case_path(out, c).read_bytes() for c in kept} == kept  # finished files untouched
    assert read_rows(out / "per_case.csv")[1] == eval_rows


def test_resume_with_other_settings_is_refused(batch_dir, cohort, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(batch_dir, out)
    code = main(["batch", str(cohort), "--protocol", "box", "--no-progress", "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "protocol" in err and "--output" in err


def test_rows_that_share_a_slice_run_in_one_task(cohort):
    specs, _ = read_manifest(cohort)
    tasks = plan_tasks(specs)
    by_slice = [sorted(CASES[0::2]), sorted(CASES[1::2])]  # k004: L and R; k011: L and R
    assert sorted(sorted(s.case_id for s in t) for t in tasks) == by_slice
    assert [len(t) for t in plan_tasks(specs, slices_per_task=2)] == [4]


def test_an_unreachable_cluster_is_one_line_error(cohort, tmp_path, capsys):
    code = main(["batch", str(cohort), "--ray", "127.0.0.1:1", "--no-progress", "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach a Ray cluster" in err and "--ray local" in err


class _Cluster:
    """A stand-in for the ``ray`` module: only ``cluster_resources`` is read by default_workers."""

    def __init__(self, **resources: float):
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


@pytest.mark.parametrize(
    "resources, device, share, expected",
    [
        ({"GPU": 1.0, "CPU": 16.0}, "cuda", 1.0, 1),  # one model per GPU by default
        ({"GPU": 1.0, "CPU": 16.0}, "cuda", 0.25, 4),  # four copies share the GPU
        ({"GPU": 2.0, "CPU": 32.0}, "cuda", 1 / 3, 6),  # float shares do not lose a worker to rounding
        ({"CPU": 2.0}, "cpu", 0.25, 2),  # the share only applies to GPUs
    ],
)
def test_default_workers_follow_the_gpu_share(resources, device, share, expected):
    from evaluation.distributed import default_workers

    assert default_workers(_Cluster(**resources), device, share) == expected


@pytest.mark.parametrize("share", ["0", "1.5", "-0.5"])
def test_a_gpu_share_outside_0_1_is_a_one_line_error(cohort, tmp_path, capsys, share):
    code = main(["batch", str(cohort), "--device", "cuda", "--gpus-per-worker", share, "-o", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--gpus-per-worker" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "resources, device, workers, expected",
    [
        ({"GPU": 1.0, "CPU": 16.0}, "cuda", 4, 4),  # four GPU workers share 16 CPUs: 4 threads each
        ({"GPU": 1.0, "CPU": 2.0}, "cuda", 4, 1),  # never below one CPU
        ({"CPU": 16.0}, "cpu", 16, 1),  # CPU workers: one CPU each
    ],
)
def test_gpu_workers_share_the_cpus(resources, device, workers, expected):
    from evaluation.distributed import cpus_per_worker

    assert cpus_per_worker(_Cluster(**resources), device, workers) == expected


def test_a_cluster_without_the_device_asked_for_is_refused_whole():
    from evaluation.distributed import BatchError, default_workers

    for resources in ({"CPU": 8.0}, {"GPU": 0.0, "CPU": 8.0}):  # no GPU key at all, or none free
        with pytest.raises(BatchError, match=r"^the Ray cluster has no GPU; use --device cpu or join a cluster "
                                             r"with GPUs$"):
            default_workers(_Cluster(**resources), "cuda:0")
    with pytest.raises(BatchError, match=r"^the Ray cluster has no CPU; use --device cpu or join a cluster with GPUs$"):
        default_workers(_Cluster(CPU=0.0), "cpu")
    assert default_workers(_Cluster(), "cpu") == 1  # a cluster that reports no CPU count: one worker
    assert default_workers(_Cluster(GPU=2.0, CPU=8.0), "cuda") == 2  # one model per GPU unless told otherwise


def test_gpu_workers_get_whole_cpus():
    from evaluation.distributed import cpus_per_worker

    assert cpus_per_worker(_Cluster(GPU=1.0, CPU=10.0), "cuda", 4) == 2  # 10 CPUs, 4 workers: 2 each, not 2.5
    assert cpus_per_worker(_Cluster(GPU=1.0, CPU=16.0), "cuda", 1) == 16  # one worker takes them all
    assert cpus_per_worker(_Cluster(GPU=1.0), "cuda", 1) == 1  # no CPU count reported: one


def test_slices_per_task_below_one_is_refused(cohort):
    from evaluation.distributed import BatchError

    specs, _ = read_manifest(cohort)
    with pytest.raises(BatchError, match=r"^slices per task must be >= 1, got 0$"):
        plan_tasks(specs, slices_per_task=0)


def test_the_ray_address_check_reads_scheme_slash_and_port():
    """``ray://host:port/`` reaches a listening port; a closed one is refused in one line naming the address and
    the way out; forms without a numeric port (``auto``, a name Ray resolves) are left to Ray."""
    import socket

    from evaluation.distributed import BatchError, check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"ray://127.0.0.1:{port}/")
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(BatchError, match=rf"^--ray ray://127\.0\.0\.1:{port}/: cannot reach a Ray cluster there "
                                         r"\(.+\); start one with `ray start --head` and pass its address, or use "
                                         r"--ray local$"):
        check_reachable(f"ray://127.0.0.1:{port}/")
    for left_to_ray in ("auto", "ray-head", "ray-head:client"):
        assert check_reachable(left_to_ray) is None
