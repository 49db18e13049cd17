"""A stand-in for ``python -m data.read_worker SOCKET`` that misbehaves on purpose (test_read_server.py).

Started by ``ReadServer._start`` in place of the interpreter (the tests point ``sys.executable`` at a
shim that runs this file with the same arguments), so the parent's side runs for real against a
worker that dies, babbles, never says ready, has no socket, or answers garbled, late or in pieces.
It speaks the real protocol: ``ready`` on stdout, one JSON line per connection, ends when stdin
closes (all but the stubborn one). ``$MEDSEG_FAKE_WORKER`` picks the behaviour; each start appends its
pid to ``$MEDSEG_FAKE_LOG``.
Only the standard library: it starts in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

MODE = os.environ.get("MEDSEG_FAKE_WORKER", "answer")


def log(**entry) -> None:
    with open(os.environ["MEDSEG_FAKE_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")


def until_stdin_closes() -> None:
    while os.read(0, 4096):
        pass


def answer(conn: socket.socket) -> None:
    """One connection, as the mode says; closed however it ends (as a supervisor's is when it dies)."""
    try:
        _answer(conn)
    finally:
        conn.close()


def _answer(conn: socket.socket) -> None:
    if MODE == "hangup-unread":  # a supervisor that died at once: the request is never read
        return
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    request = json.loads(data.split(b"\n", 1)[0])
    log(request=request)
    if MODE == "hangup":  # read the request, then went away without a word
        pass
    elif MODE == "garbled":
        conn.sendall(b"Segmentation fault (core dumped)\n")
    elif MODE == "deaf":  # holds the connection and never answers
        time.sleep(30)
    else:  # the reply prepared by the test, with its voxels, sent in three pieces
        shutil.copy(os.environ["MEDSEG_FAKE_NPY"], Path(request["out"]) / "volume.npy")
        reply = Path(os.environ["MEDSEG_FAKE_REPLY"]).read_bytes()
        third = len(reply) // 3 + 1
        for start in range(0, len(reply), third):
            conn.sendall(reply[start:start + third])
            time.sleep(0.02)


def main() -> None:
    log(argv=sys.argv[1:])
    if MODE == "exit":
        sys.exit(3)
    if MODE == "babble":
        print("Traceback (most recent call last):", flush=True)
        sys.exit(1)
    if MODE == "mute":  # dies without a word while a child it left holds its stdout open
        if os.fork() == 0:
            os.setsid()
            log(holder=True)
            time.sleep(30)
            os._exit(0)
        sys.exit(3)
    if MODE == "stubborn":  # never says ready, nor ends when its parent closes stdin (stuck in an import)
        time.sleep(30)
        return
    time.sleep(float(os.environ.get("MEDSEG_FAKE_DELAY", "0")))
    if MODE != "no-socket":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sys.argv[-1])
        listener.listen(8)
    print("ready", flush=True)
    if MODE == "no-socket":
        until_stdin_closes()
        return
    while True:
        ready = select.select([listener, 0], [], [])[0]
        if 0 in ready and not os.read(0, 4096):
            listener.close()
            os.unlink(sys.argv[-1])
            return
        if listener in ready:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
