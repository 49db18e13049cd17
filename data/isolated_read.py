"""Read an untrusted study in a child process with memory and time limits (issue 23).

``read_study_isolated`` has ``data.readers.read_study``'s contract (a :class:`Volume` or one
:class:`StudyError` line) but the file is parsed and decoded in a child of a warm fork server
(``data.read_worker``), under RLIMIT_AS / RLIMIT_CPU and a wall-clock timeout. Whatever native
code does with the file (a segfault in GDCM, an abort in ITK, a runaway allocation, a hang), the
caller gets one error naming the file and the calling process (the web server) carries on.

Used by the server for uploads and PACS series; the bundled samples (our own files) are read in
process. The fork server starts on first use (1-2 s of imports, once) and ends with its parent.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from data import limits
from data.limits import LimitError
from data.readers import SeveralSeriesError, StudyError, StudyWarning, UnevenStudyError, voxel_limit
from data.untrusted import link_policy
from data.volume import SourceRef, Volume

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300.0  # imports on a loaded 2-core machine can take tens of seconds
_TUPLE_FIELDS = {f.name for f in fields(SourceRef) if f.type.startswith("tuple[str")}
_INT_TUPLE_FIELDS = {f.name for f in fields(SourceRef) if f.type.startswith("tuple[int")}


@dataclass(frozen=True)
class ReadLimits:
    """What one isolated read may use: address space on top of the warm process, and seconds."""

    memory_bytes: int
    timeout_s: float

    @classmethod
    def resolve(cls, max_voxels: int, memory_mb: float | None = None, timeout_s: float | None = None) -> "ReadLimits":
        """The given values, else ``$MEDSEG_READ_MEMORY_MB`` / ``$MEDSEG_READ_TIMEOUT_S``, else defaults."""
        try:
            return cls(limits.read_memory_bytes(max_voxels, memory_mb), limits.read_timeout_s(timeout_s))
        except LimitError as e:
            raise StudyError(str(e)) from None


class ReadServer:
    """The parent's handle on one ``data.read_worker`` process (started lazily, restarted if it died)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None

    def _socket(self) -> str:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._dir is not None
            return str(self._dir / "s")

    def _start(self) -> None:
        self._stop_locked()
        self._dir = Path(tempfile.mkdtemp(prefix="medseg-read-"))  # 0700: only we may connect
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("MALLOC_ARENA_MAX", "2")  # fewer 64 MiB arena reservations counted by RLIMIT_AS
        env["OMP_NUM_THREADS"] = env.get("MEDSEG_READ_THREADS", "1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "data.read_worker", str(self._dir / "s")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(self._dir), start_new_session=True,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        import select

        while time.monotonic() < deadline:
            if select.select([self._proc.stdout], [], [], 1.0)[0]:
                if self._proc.stdout.readline().strip() == b"ready":
                    return
                break
            if self._proc.poll() is not None:
                break
        self._stop_locked()
        raise StudyError("the isolated reader did not start; the study was not opened")

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()  # the worker ends on EOF
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def pid(self) -> int | None:
        """The fork server's process id (tests), or None before first use."""
        return None if self._proc is None else self._proc.pid

    def _ask(self, request: dict) -> dict:
        for attempt in range(2):  # a worker that died (killed, OOM) is started again once
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self._socket())
            except OSError:
                conn.close()
                with self._lock:
                    self._stop_locked()
                if attempt:
                    raise StudyError("the isolated reader is not available; the study was not opened") from None
                continue
            try:
                conn.settimeout(float(request["timeout_s"]) + 60.0)
                conn.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                data = b""
            finally:
                conn.close()
            try:
                return json.loads(data) if data else {"exit": "none"}
            except ValueError:
                return {"exit": "garbled"}
        raise AssertionError("unreachable")

    def read(
        self, path: str | Path, *, scratch: str | Path | None = None, series_uid: str | None = None,
        max_voxels: int | None = None, allow_uneven: bool = False, read_limits: ReadLimits | None = None,
    ) -> Volume:
        """``read_study(path, ...)`` in a limited child; the voxels come back through ``scratch``."""
        limit = voxel_limit(max_voxels)
        lim = read_limits or ReadLimits.resolve(limit)
        out = Path(tempfile.mkdtemp(prefix=".read-", dir=scratch))
        try:
            reply = self._ask({
                "path": str(path), "cwd": os.getcwd(), "links": link_policy(), "series_uid": series_uid, "max_voxels": limit, "allow_uneven": allow_uneven,
                "out": str(out), "memory_bytes": lim.memory_bytes, "timeout_s": lim.timeout_s,
                "max_result_bytes": limit * limits.MAX_BYTES_PER_VOXEL * limits.MAX_SAMPLES_PER_PIXEL + (1 << 20),
            })
            return _volume(path, reply, out, lim)
        finally:
            shutil.rmtree(out, ignore_errors=True)


def _volume(path: str | Path, reply: dict, out: Path, lim: ReadLimits) -> Volume:
    """The reader's answer as a Volume, or the one-line StudyError it stands for."""
    if "error" in reply:
        if isinstance(reply.get("series"), list):
            try:
                series = [(str(u), str(m), str(d), int(n)) for u, m, d, n in reply["series"]]
            except (TypeError, ValueError):
                raise StudyError(str(reply["error"])) from None
            raise SeveralSeriesError(str(reply["error"]), series)
        raise (UnevenStudyError if reply.get("uneven") is True else StudyError)(str(reply["error"]))
    if "timeout" in reply:
        raise StudyError(f"{path}: reading it took longer than {lim.timeout_s:g} s (MEDSEG_READ_TIMEOUT_S); not opened")
    if "signal" in reply:
        number = int(reply["signal"])
        if number == signal.SIGXCPU:
            raise StudyError(f"{path}: reading it used more than {lim.timeout_s:g} s of CPU (MEDSEG_READ_TIMEOUT_S); "
                             "not opened")
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        raise StudyError(f"{path}: the reader crashed on this file ({name}); it was not opened")
    if "volume" not in reply:
        raise StudyError(f"{path}: the reader stopped without an answer (exit {reply.get('exit')}); not opened")
    meta = reply["volume"]
    try:
        array = np.load(out / "volume.npy", allow_pickle=False)
        source = {k: v for k, v in dict(meta["source"]).items() if k in SourceRef.__dataclass_fields__}
        source = {k: tuple(str(x) for x in v) if k in _TUPLE_FIELDS else v for k, v in source.items()}
        source = {k: tuple(int(x) for x in v) if k in _INT_TUPLE_FIELDS else v for k, v in source.items()}
        volume = Volume(
            array=array,
            spacing=tuple(float(x) for x in meta["spacing"]),
            origin=tuple(float(x) for x in meta["origin"]),
            direction=tuple(float(x) for x in meta["direction"]),
            modality=str(meta["modality"]),
            source=SourceRef(**source),
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise StudyError(f"{path}: the reader's answer could not be used ({type(e).__name__}); not opened") from None
    for category, message in meta.get("warnings", []):
        warnings.warn(str(message), StudyWarning if category == "StudyWarning" else UserWarning, stacklevel=3)
    return volume


_server = ReadServer()
atexit.register(_server.stop)


def read_study_isolated(
    path: str | Path, *, scratch: str | Path | None = None, series_uid: str | None = None,
    max_voxels: int | None = None, allow_uneven: bool = False, read_limits: ReadLimits | None = None,
) -> Volume:
    """``data.readers.read_study`` in a child process with memory and time limits (module doc).

    ``scratch``: a folder on the caller's side for the hand-over ``.npy`` (the session's folder in
    the server), deleted before this returns; default the system's temporary folder.
    """
    return _server.read(path, scratch=scratch, series_uid=series_uid, max_voxels=max_voxels,
                        allow_uneven=allow_uneven, read_limits=read_limits)


def default_server() -> ReadServer:
    """The process's fork server (tests use its pid)."""
    return _server
