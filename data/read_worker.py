"""``python -m data.read_worker SOCKET``: a warm fork server that reads untrusted studies in children.

Why a process of its own: the checks in ``data.readers`` bound what they know (nesting, sizes, bytes
present), but a decoder they do not bound (GDCM, ITK, OpenJPEG, libjpeg, zlib) can still crash or
run away on a crafted body. Here a crash ends one child, and the server gets one error line.

Why a warm fork server rather than a fresh ``python`` per read: importing the readers (NumPy,
pydicom, SimpleITK, nibabel, Pillow) takes 1.3-2.3 s on the shared 2-core machine, a fork of this
small, single-threaded process a few milliseconds. The server itself is never forked (it is large
and threaded: a fork would copy its locks mid-use and count torch's mappings in RLIMIT_AS).

Per request (one connection on the Unix socket, one JSON line):

* a supervisor child is forked; it forks the reader, which sets RLIMIT_AS (its address space now
  plus ``memory_bytes``), RLIMIT_CPU, RLIMIT_FSIZE (what the result may write), no core file, then
  calls ``data.readers.read_study`` and writes the voxels to ``out/volume.npy`` and the geometry
  as JSON on a pipe;
* the supervisor waits at most ``timeout_s`` (then SIGKILL) and answers the connection with one
  JSON line: ``{"volume": {...}}``, ``{"error": "one line"}``, or ``{"signal": N}`` / ``{"exit": N}``.

The answer is JSON and the voxels a ``.npy`` read with ``allow_pickle=False``: nothing the reader
child sends can run code in the server, even if a decoder bug let a file take the child over.
The server ends when its stdin closes (the parent is gone).
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

MAX_REQUEST_BYTES = 64 * 1024
# how an allocation refused under RLIMIT_AS shows in the readers' messages: Python's MemoryError,
# ITK's "Failed to allocate memory for image", C++'s std::bad_alloc, errno ENOMEM
OUT_OF_MEMORY = re.compile(r"MemoryError|allocate memory|bad_alloc|Cannot allocate", re.IGNORECASE)
MAX_REPLY_BYTES = 4 * 1024**2  # geometry + per-slice UIDs and file names of a large series


def address_space_bytes() -> int | None:
    """This process's virtual size now (Linux), the base RLIMIT_AS is added to."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def read_line(conn: socket.socket, limit: int) -> bytes:
    """One ``\\n``-terminated line (at most ``limit`` bytes) from ``conn``."""
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


def _limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):  # already lower (a hard limit we inherited): keep that
        pass


def cpu_limit_s(timeout_s: float) -> tuple[int, int]:
    """RLIMIT_CPU for a read of ``timeout_s``: SIGXCPU at the timeout rounded up (at least 1 s, the
    kernel's unit), SIGKILL 5 s later; the supervisor's wall-clock kill usually comes first."""
    soft = max(1, int(timeout_s + 0.999))
    return soft, soft + 5


def reader_child(request: dict, reply_fd: int) -> int:
    """In the reader child: limit ourselves, read, write the result. Returns the exit code."""
    import warnings

    import numpy as np

    from data.readers import SeveralSeriesError, StudyError, UnevenStudyError, read_study
    from data.untrusted import one_line, set_link_policy

    path = request["path"]
    set_link_policy(request.get("links", "inside"))  # the caller's: a server's strict rule, or the CLI's
    os.chdir(request["cwd"])  # relative paths, and so messages, as in the caller
    memory = int(request["memory_bytes"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails (EFBIG), no signal
    _limit(resource.RLIMIT_CORE, 0)
    base = address_space_bytes()
    if base is not None:
        _limit(resource.RLIMIT_AS, base + memory)
    soft, hard = cpu_limit_s(float(request["timeout_s"]))
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        _limit(resource.RLIMIT_CPU, soft)
    _limit(resource.RLIMIT_FSIZE, int(request["max_result_bytes"]))

    def answer(obj: dict) -> int:
        data = json.dumps(obj).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(reply_fd, view):]
        return 0

    too_big = f"{path}: reading it needs more memory than the limit of {memory / 1024**2:.0f} MiB (MEDSEG_READ_MEMORY_MB)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            volume = read_study(path, series_uid=request.get("series_uid"), max_voxels=int(request["max_voxels"]),
                                allow_uneven=bool(request.get("allow_uneven")))
        except StudyError as e:
            if isinstance(e.__cause__, MemoryError) or OUT_OF_MEMORY.search(str(e)):
                return answer({"error": one_line(too_big)})  # the limit, not the file, is what to name
            return answer({"error": str(e), **({"series": e.series} if isinstance(e, SeveralSeriesError) else {}),
                           **({"uneven": True} if isinstance(e, UnevenStudyError) else {})})
        except MemoryError:
            return answer({"error": one_line(too_big)})
        except BaseException as e:  # noqa: BLE001 - whatever it was, one line for this file
            return answer({"error": one_line(f"{path}: could not be read ({type(e).__name__})")})
    try:
        np.save(Path(request["out"]) / "volume.npy", np.ascontiguousarray(volume.array), allow_pickle=False)
    except MemoryError:
        return answer({"error": one_line(too_big)})
    except OSError as e:  # numpy's short write under RLIMIT_FSIZE has no strerror, only its message
        return answer({"error": one_line(f"{path}: the decoded study could not be handed over ({e.strerror or e})")})
    meta = {
        "spacing": list(volume.spacing), "origin": list(volume.origin), "direction": list(volume.direction),
        "modality": volume.modality, "source": asdict(volume.source),
        "warnings": [[w.category.__name__, one_line(str(w.message))] for w in caught],
    }
    return answer({"volume": meta})


def supervise(conn: socket.socket) -> None:
    """In the supervisor child: run one request in a reader child, answer with what became of it."""
    request = json.loads(read_line(conn, MAX_REQUEST_BYTES))
    timeout = float(request["timeout_s"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader
        code = 1
        try:
            os.close(r)
            conn.close()
            code = reader_child(request, w)
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    data, timed_out = b"", False
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REPLY_BYTES:
            os.kill(pid, signal.SIGKILL)
            data = b""
            break
    _, status = os.waitpid(pid, 0)
    if timed_out:
        reply = {"timeout": timeout}
    elif os.WIFSIGNALED(status):
        reply = {"signal": os.WTERMSIG(status)}
    elif data:
        try:
            reply = json.loads(data)
        except ValueError:
            reply = {"exit": -1}
    else:
        reply = {"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1}
    conn.sendall(json.dumps(reply).encode() + b"\n")


def warm_up() -> None:
    """Import the readers and read the bundled samples once, so that every child starts with the
    lazy parts loaded (ITK's IO factories, GDCM's dictionaries, pydicom's and nibabel's submodules)
    instead of loading them and throwing them away on each read."""
    import warnings

    from data.readers import StudyError, read_study

    samples = Path(__file__).resolve().parent.parent / "samples"
    for path in (samples / "ct_head_0051_series", samples / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"):
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    read_study(path)
                except StudyError:
                    pass


def serve(socket_path: str) -> None:
    """Accept requests until stdin closes; each in a forked supervisor (auto-reaped)."""
    warm_up()

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # nobody reads our stdout from now on: a library's print must not fill the pipe
    while True:
        ready = select.select([listener, sys.stdin], [], [])[0]
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            listener.close()  # the parent has gone (even by SIGKILL): leave no socket behind
            for leftover in (socket_path, os.path.dirname(socket_path)):
                try:
                    os.unlink(leftover) if leftover == socket_path else os.rmdir(leftover)
                except OSError:
                    pass
            return
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its reader
                conn.settimeout(30)
                supervise(conn)
                code = 0
            except BaseException:  # noqa: BLE001 - the parent sees a closed connection without an answer
                pass
            finally:
                os._exit(code)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
