"""``data.read_worker.serve`` (the fork server's accept loop) and ``warm_up``, run in this process.

``serve`` runs in the test's main thread on a socket in a folder of the test's own, with its stdin a socket
pair end the test holds (the parent's pipe: closing it is the parent going away) and its stdout a pipe the
test reads ``ready`` from; a client thread then connects as ``ReadServer`` does. Each connection is served
in a supervisor forked from this process, which forks the real reader child, so the answers are real.
Guards keep a broken loop from taking the test process with it: a forked copy that leaves ``serve`` is
recorded and ended, ``os._exit`` in this process is an error, and SIGALRM ends a loop that never returns.
The whole worker as its own process: ``test_read_server.py`` and ``test_isolated_read.py``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data import read_worker, readers
from data.readers import StudyError, StudyWarning, read_study
from tests.data.test_read_worker import children

# no step here takes a second on an idle machine; a loop that hangs is ended at this bound, which must not fire for a
# niced xdist worker on CI's loaded cores (20 s until session 25; the whole serve, warm-up and reads, is one bound)
BOUND_S = 60.0


class Client:
    """The parent's side of a running server: its socket path and its end of the server's stdin."""

    def __init__(self, socket_path: str, stdin: socket.socket) -> None:
        self.socket_path, self.stdin = socket_path, stdin

    def connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(BOUND_S / 2)
        conn.connect(self.socket_path)
        return conn

    def ask(self, line: bytes) -> bytes:
        """One connection: the request line, then everything until the server closes it."""
        with self.connect() as conn:
            conn.sendall(line)
            data = b""
            while chunk := conn.recv(1 << 20):
                data += chunk
            return data


def run_serve(tmp_path: Path, monkeypatch, client) -> dict:
    """``serve`` in this thread, ``client(Client)`` in another; what the client saw, and what serve left."""
    me, real_exit = os.getpid(), os._exit
    folder = tmp_path / "w"  # serve removes its socket's folder when the parent goes
    folder.mkdir()
    escaped = tmp_path / "escaped"

    def exit_(code):
        if os.getpid() == me:
            raise AssertionError(f"the server itself called os._exit({code!r})")
        real_exit(code)

    def leave(how: str):  # a forked copy of the server must never return into its caller's code
        with open(escaped, "a") as f:
            f.write(how + "\n")
        real_exit(0)

    def alarm(*_):
        raise TimeoutError(f"serve did not return within {BOUND_S} s")

    parent_end, server_stdin = socket.socketpair()
    out_r, out_w = os.pipe()
    stdout = open(out_w, "w")
    monkeypatch.setattr(os, "_exit", exit_)
    monkeypatch.setattr(sys, "stdin", server_stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    warmed: list[bool] = []
    monkeypatch.setattr(read_worker, "warm_up", lambda: warmed.append(True))
    seen: dict = {}

    def drive():
        try:
            if select.select([out_r], [], [], BOUND_S)[0] and (line := os.read(out_r, 100)):
                seen["ready"] = line
                seen["warm at ready"] = bool(warmed)
                mode = os.stat(folder / "s").st_mode
                seen["socket mode"] = stat.S_IMODE(mode) if stat.S_ISSOCK(mode) else None
                seen["client"] = client(Client(str(folder / "s"), parent_end))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            seen["client error"] = e
        finally:
            parent_end.shutdown(socket.SHUT_WR)  # the parent goes away

    saved_stdout_fd, chld = os.dup(1), signal.getsignal(signal.SIGCHLD)
    old_alarm = signal.signal(signal.SIGALRM, alarm)
    had = set(children())
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    signal.setitimer(signal.ITIMER_REAL, BOUND_S)
    try:
        read_worker.serve(str(folder / "s"))
    except BaseException as e:  # noqa: BLE001 - reported by the test
        if os.getpid() != me:
            leave(f"raised {type(e).__name__}")
        seen["serve error"] = repr(e)  # not e: its traceback would keep serve's listener open
    else:
        if os.getpid() != me:
            leave("returned")
    finally:
        if os.getpid() == me:
            children_end(had)  # reaped as they end while serve's SIG_IGN is in force
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
            signal.signal(signal.SIGCHLD, chld)
            os.dup2(saved_stdout_fd, 1)
            os.close(saved_stdout_fd)
            stdout.close()  # a client still waiting for "ready" sees the end
    thread.join(BOUND_S)
    os.close(out_r)
    parent_end.close()
    server_stdin.close()
    seen["left behind"] = sorted(p.name for p in folder.parent.iterdir() if p.name in ("w", "escaped"))
    seen["escaped"] = escaped.read_text() if escaped.exists() else ""
    return seen


def children_end(before: set[int]) -> None:
    """Wait (bounded) for the last supervisors to finish their exit: the children serve made, not those this process
    had before it (a worker's earlier tests may leave some running, e.g. a read server, which are not waited for)."""
    deadline = time.monotonic() + 30  # bounded patience (5 s until session 25): ending is quick, but a niced worker waits
    while set(children()) - before and time.monotonic() < deadline:
        time.sleep(0.01)


def request(path: Path, out: Path) -> bytes:
    out.mkdir()
    return json.dumps({"path": str(path), "cwd": str(path.parent), "links": "inside", "series_uid": None,
                       "max_voxels": 2**20, "allow_uneven": False, "out": str(out), "memory_bytes": 2**30,
                       "timeout_s": 60, "max_result_bytes": 2**24}).encode() + b"\n"


def zombie_children() -> list[int]:
    """Children of this process that ended and were never reaped."""
    return [p for p in children() if Path(f"/proc/{p}/stat").exists()
            and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"]


def test_the_server_answers_each_connection_until_its_parent_goes_and_leaves_nothing(tmp_path, monkeypatch):
    nifti = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([0.5, 0.7, 2.0, 1.0])), nifti)
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image")

    def client(c: Client) -> dict:
        got = {"volume": json.loads(c.ask(request(nifti, tmp_path / "o1")))}
        got["stdout is stderr"] = os.path.samestat(os.fstat(1), os.fstat(2))  # serve has passed its dup2 by now
        idle = c.connect()  # a client that connects and sends nothing yet does not hold up the others
        got["refusal"] = json.loads(c.ask(request(text, tmp_path / "o2")))
        c.stdin.sendall(b"\n")  # a stray write from the parent is not its end
        got["garbage"] = c.ask(b"this is not a request\n")
        got["after"] = json.loads(c.ask(request(nifti, tmp_path / "o3")))
        idle.shutdown(socket.SHUT_RDWR)  # (not only close: the supervisors forked from this process hold copies)
        idle.close()
        return got

    seen = run_serve(tmp_path, monkeypatch, client)
    assert "client error" not in seen and "serve error" not in seen, seen
    assert seen["ready"] == b"ready\n" and seen["warm at ready"]  # warmed up, then one line the parent waits for
    assert seen["socket mode"] == 0o600  # only this user may connect
    got = seen["client"]
    alone = read_study(nifti)
    for answer, out in ((got["volume"], "o1"), (got["after"], "o3")):
        meta = answer["volume"]
        assert np.array_equal(np.load(tmp_path / out / "volume.npy", allow_pickle=False), alone.array)
        assert (tuple(meta["spacing"]), tuple(meta["origin"]), tuple(meta["direction"])) == (
            alone.spacing, alone.origin, alone.direction)
    with pytest.raises(StudyError) as refused:
        read_study(text)
    assert got["refusal"] == {"error": str(refused.value)}
    assert got["garbage"] == b""  # no answer to a request it cannot parse, and it carries on
    assert got["stdout is stderr"]  # a library's print in the server cannot fill a pipe nobody reads
    assert seen["escaped"] == ""  # every supervisor ended inside serve
    assert seen["left behind"] == []  # neither the socket nor its folder
    assert zombie_children() == []  # the supervisors were reaped


def test_the_warm_up_reads_both_bundled_samples_and_nothing_it_meets_escapes(monkeypatch):
    read: list[tuple[Path, tuple]] = []

    def spy(path, **kw):
        volume = read_study(path, **kw)
        read.append((Path(path), volume.array.shape))
        warnings.warn("a note from the reader", StudyWarning)
        return volume

    monkeypatch.setattr(readers, "read_study", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_worker.warm_up()
    package = Path(read_worker.__file__).resolve().parent.parent
    assert [p.relative_to(package).as_posix() for p, _ in read] == [
        "samples/ct_head_0051_series", "samples/colin27/mr_t1_colin27_slabA_image.nii.gz"]
    assert all(len(shape) == 3 and min(shape) > 0 for _, shape in read)  # each sample really opens
    assert caught == []  # nothing on the server's stderr

    def refuses(path, **kw):
        read.append((Path(path), ()))
        raise StudyError(f"{path}: refused")

    read.clear()
    monkeypatch.setattr(readers, "read_study", refuses)
    read_worker.warm_up()  # a sample that cannot be read does not keep the server from starting
    assert len(read) == 2
