"""``ReadServer``, the caller's handle on the fork server: starting it, asking it, restarting and stopping it.

Two kinds of worker. The real ``python -m data.read_worker`` (about a second to start here) for what the
user relies on: a read comes back equal to ``read_study``, the same worker serves the next read, a killed
worker or one whose socket vanished is started again, a stopped one leaves no process and no folder, and
it runs apart (own session, private folder, the environment it is given). And ``fake_read_worker.py``,
which speaks the same protocol but misbehaves on purpose (tens of milliseconds to start): a worker that
dies, babbles or never says ready is one line, as is an answer that is garbled or missing, and a long
answer that arrives in pieces comes back whole. The crashes, limits and hangs of real readers:
``test_isolated_read.py``; the answers on the caller's side alone: ``test_isolated_read_replies.py``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data import isolated_read
from data.isolated_read import PACKAGE_ROOT, ReadLimits, ReadServer
from data.readers import StudyError, read_study
from data.volume import SourceRef, Volume

FAKE = Path(__file__).resolve().parent / "fake_read_worker.py"
NOT_STARTED = "the isolated reader did not start; the study was not opened"


@pytest.fixture()
def small_nifti(tmp_path) -> Path:
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.diag([0.5, 0.7, 2.0, 1.0])), path)
    return path


def environment(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def gone(pid: int) -> bool:
    """Neither running nor a zombie waiting for us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_until_dead(pid: int) -> None:
    """SIGKILL takes effect a moment later: the read after it is not meant to race the kernel."""
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def same_as_in_process(volume: Volume, path: Path) -> None:
    alone = read_study(path)
    assert volume.array.dtype == alone.array.dtype and np.array_equal(volume.array, alone.array)
    assert (volume.spacing, volume.origin, volume.direction, volume.source) == (
        alone.spacing, alone.origin, alone.direction, alone.source)


def test_one_worker_serves_reads_runs_apart_and_stopping_leaves_nothing(small_nifti, monkeypatch):
    extra = str(small_nifti.parent / "site")  # the caller's own PYTHONPATH is kept, after the package
    monkeypatch.setenv("PYTHONPATH", extra)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MEDSEG_READ_THREADS", raising=False)
    server = ReadServer()
    assert server.pid() is None  # started on first use, not before
    try:
        same_as_in_process(server.read(small_nifti), small_nifti)
        pid = server.pid()
        assert isinstance(pid, int) and not gone(pid)
        env = environment(pid)
        assert env["PYTHONPATH"] == os.pathsep.join([str(PACKAGE_ROOT), extra])
        assert (env["MALLOC_ARENA_MAX"], env["OMP_NUM_THREADS"]) == ("2", "1")
        folder = Path(os.readlink(f"/proc/{pid}/cwd"))  # it runs in its private folder, with the socket
        assert folder.name.startswith("medseg-read-") and stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_ISSOCK((folder / "s").stat().st_mode)
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C at the terminal does not reach it
        assert os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")  # it ends when we close it (or die)
        same_as_in_process(server.read(small_nifti), small_nifti)
        assert server.pid() == pid  # the next read uses the same worker
    finally:
        server.stop()
    assert server.pid() is None and gone(pid) and not folder.exists()

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the caller's settings win; the read threads from their variable
    monkeypatch.setenv("MEDSEG_READ_THREADS", "3")
    try:
        assert server.read(small_nifti).array.shape == (6, 5, 4)  # a stopped server starts again on use
        again = server.pid()
        assert again != pid and (environment(again)["MALLOC_ARENA_MAX"], environment(again)["OMP_NUM_THREADS"]) == (
            "4", "3")
    finally:
        server.stop()
    assert gone(again)


def test_a_killed_worker_or_one_whose_socket_vanished_is_started_again(small_nifti):
    server = ReadServer()
    try:
        server.read(small_nifti)
        first = server.pid()
        folder = Path(os.readlink(f"/proc/{first}/cwd"))
        os.kill(first, signal.SIGKILL)  # out of memory, or an operator, between two reads
        wait_until_dead(first)
        same_as_in_process(server.read(small_nifti), small_nifti)
        second = server.pid()
        assert second != first and gone(first)
        assert not folder.exists()  # the dead worker's folder and socket are cleared away

        folder = Path(os.readlink(f"/proc/{second}/cwd"))
        (folder / "s").unlink()  # a cleaner of /tmp took the socket of a live worker
        same_as_in_process(server.read(small_nifti), small_nifti)
        assert server.pid() not in (first, second) and gone(second) and not folder.exists()
    finally:
        server.stop()


@pytest.fixture()
def fake(tmp_path, monkeypatch, private_tmp):
    """``ReadServer`` starting ``fake_read_worker.py``; returns the pids each start logged."""
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    shim.chmod(0o755)
    log = tmp_path / "fake.log"
    monkeypatch.setattr(sys, "executable", str(shim))
    monkeypatch.setenv("MEDSEG_FAKE_LOG", str(log))

    def entries() -> list[dict]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    yield entries
    for entry in entries():  # nothing a fake left may outlive its test
        try:
            os.kill(entry["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def bounded(call, seconds: float = 20.0):
    """``call()`` in a thread: what it returned or raised, or a failure if it is still waiting."""
    outcome: list = []

    def run():
        try:
            outcome.append(("value", call()))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(("raised", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("mode", ["exit", "babble", "mute"])
def test_a_worker_that_dies_before_it_is_ready_is_one_line_and_leaves_nothing(fake, monkeypatch, mode, private_tmp):
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", mode)  # exits; prints a traceback; exits while its child holds stdout
    server = ReadServer()
    kind, error = bounded(lambda: server.read("scan.nii.gz"))
    assert kind == "raised" and type(error) is StudyError and str(error) == NOT_STARTED
    started = [e for e in fake() if "argv" in e]
    assert len(started) == 1 and started[0]["argv"][:2] == ["-m", "data.read_worker"]
    assert server.pid() is None and gone(started[0]["pid"])
    assert list(private_tmp.iterdir()) == []  # neither its folder nor the hand-over folder is left


def test_a_worker_stuck_before_ready_is_given_up_at_the_start_timeout_and_killed(fake, monkeypatch, private_tmp):
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", "stubborn")  # neither says ready nor ends when stdin closes
    monkeypatch.setattr(isolated_read, "START_TIMEOUT_S", 0.3)
    server = ReadServer()
    kind, error = bounded(lambda: server.read("scan.nii.gz"))  # 1 s of polling, 5 s for it to end, then a kill
    assert kind == "raised" and str(error) == NOT_STARTED
    assert gone(fake()[0]["pid"]) and list(private_tmp.iterdir()) == []


def _prepared_answer(tmp_path: Path, monkeypatch, slices: int) -> Volume:
    """The fake's answer: a volume of ``slices`` slices with one UID and file each (about 150 bytes a slice)."""
    volume = Volume(array=np.arange(slices * 6, dtype=np.int16).reshape(slices, 2, 3), spacing=(0.5, 0.7, 2.0),
                    origin=(1.0, 2.0, -3.0), modality="CT",
                    source=SourceRef(path="series", format="dicom-series", series_instance_uid="1.2.3",
                                     sop_instance_uids=tuple(f"1.2.826.0.1.3680043.2.1125.{k:08d}"
                                                             for k in range(slices)),
                                     files=tuple(f"series/slice-{k:08d}-of-a-long-series.dcm" for k in range(slices))))
    np.save(tmp_path / "voxels.npy", volume.array, allow_pickle=False)
    meta = {"spacing": list(volume.spacing), "origin": list(volume.origin), "direction": list(volume.direction),
            "modality": volume.modality, "source": asdict(volume.source), "warnings": []}
    (tmp_path / "reply.json").write_text(json.dumps({"volume": meta}) + "\n")
    monkeypatch.setenv("MEDSEG_FAKE_NPY", str(tmp_path / "voxels.npy"))
    monkeypatch.setenv("MEDSEG_FAKE_REPLY", str(tmp_path / "reply.json"))
    return volume


def test_a_long_answer_in_pieces_comes_back_whole(fake, tmp_path, monkeypatch):
    expected = _prepared_answer(tmp_path, monkeypatch, 6000)  # about 0.9 MB, more than a socket holds
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", "answer")
    server = ReadServer()
    try:
        volume = server.read("series", scratch=tmp_path, read_limits=ReadLimits(2**28, 30))
        assert np.array_equal(volume.array, expected.array) and volume.source == expected.source
        assert (volume.spacing, volume.origin, volume.modality) == (expected.spacing, expected.origin, "CT")
        [request] = [e["request"] for e in fake() if "request" in e]
        assert request["path"] == "series" and request["timeout_s"] == 30  # the request arrived whole too
    finally:
        server.stop()


def test_a_worker_slow_to_start_is_waited_for(fake, tmp_path, monkeypatch):
    expected = _prepared_answer(tmp_path, monkeypatch, 2)
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", "answer")
    monkeypatch.setenv("MEDSEG_FAKE_DELAY", "1.3")  # imports on a loaded machine: more than one poll
    monkeypatch.setattr(isolated_read, "START_TIMEOUT_S", 10.0)  # (a worker whose ready is missed fails in 10 s)
    server = ReadServer()
    try:
        kind, volume = bounded(lambda: server.read("series"))
        assert kind == "value" and np.array_equal(volume.array, expected.array)
    finally:
        server.stop()


@pytest.mark.parametrize("mode, shown", [("garbled", "garbled"), ("hangup", "none"), ("hangup-unread", "none")])
def test_an_answer_garbled_or_missing_is_one_line_naming_the_file(fake, monkeypatch, mode, shown, private_tmp):
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", mode)
    server = ReadServer()
    try:
        kind, error = bounded(lambda: server.read("uploads/scan.nii.gz"))
        assert kind == "raised" and type(error) is StudyError
        assert str(error) == f"uploads/scan.nii.gz: the reader stopped without an answer (exit {shown}); not opened"
        assert len([e for e in fake() if "argv" in e]) == 1  # a bad answer is not a reason to restart
    finally:
        server.stop()
    assert list(private_tmp.iterdir()) == []


def test_a_worker_that_never_answers_does_not_hold_the_caller_forever(fake, monkeypatch):
    # the caller waits 60 s past the read's own time limit; a limit of -59.7 s makes that 0.3 s here
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", "deaf")
    server = ReadServer()
    try:
        kind, error = bounded(lambda: server.read("scan.nii.gz", read_limits=ReadLimits(2**28, -59.7)))
        assert kind == "raised"
        assert str(error) == "scan.nii.gz: the reader stopped without an answer (exit none); not opened"
    finally:
        server.stop()


def test_a_worker_without_a_socket_is_tried_twice_then_one_line(fake, monkeypatch, private_tmp):
    monkeypatch.setenv("MEDSEG_FAKE_WORKER", "no-socket")
    server = ReadServer()
    kind, error = bounded(lambda: server.read("scan.nii.gz"))
    assert kind == "raised" and type(error) is StudyError
    assert str(error) == "the isolated reader is not available; the study was not opened"
    started = [e["pid"] for e in fake() if "argv" in e]
    assert len(started) == 2 and all(gone(pid) for pid in started)
    assert server.pid() is None and list(private_tmp.iterdir()) == []
