"""Crash: a process editing a session is killed with SIGKILL mid-stream, twice; a fresh store
restores every edit that was acknowledged (saved) before the kill, and the session keeps working.

The server process here is the SessionStore the UI uses (``app.session``), driven by a child
Python process that applies plane edits the way the controller does (apply, then save, then
acknowledge to the client): starting Gradio and the model would add a minute and test nothing
more about persistence.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from app.session import SessionStore
from tests.conftest import ROOT, SAMPLES

CHILD = textwrap.dedent(
    """
    import sys
    from app.session import Edit, SessionStore
    from data.readers import read_study

    root, sid, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SessionStore(root)
    if sid == "new":
        session = store.create()
        session.start_study(read_study(sys.argv[4]), sys.argv[4], "ct")
        store.save(session)
    else:
        session = store.get(sid)
    print("SID", session.id, flush=True)
    n = start
    while True:
        k, j = n % 12, 10 + n // 12
        before = session.labels.copy()
        after = before.copy()
        after[k, j, 20:30] = n % 250 + 1
        session.apply(Edit(f"edit {n}", None, None, before, after), "paint")
        if n % 7 == 0:
            session.add_label(f"organ {n}")
        store.save(session)
        print("ACK", n, flush=True)
        n += 1
    """
)


def _run_until_killed(root, sid: str, start: int, acks_wanted: int) -> tuple[str, int]:
    """Start the child, let it acknowledge ``acks_wanted`` edits, SIGKILL it; (session id, last ack)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), sid, str(start), str(SAMPLES / "ct_head_0051_series")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        sid_line = proc.stdout.readline().split()
        assert sid_line[:1] == ["SID"], sid_line
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            raw = proc.stdout.readline()
            if not raw:
                break  # the child died: the assertions below say how
            line = raw.split()
            if line[:1] == ["ACK"]:
                last = int(line[1])
                if last - start + 1 >= acks_wanted:
                    break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child is already on its next edit
        proc.wait(10)
        # acknowledgements already in the pipe were sent before the kill: they count too
        for line in proc.stdout.read().splitlines():
            if line.startswith("ACK"):
                last = int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the child stopped on its own (an error) before the kill"
    assert last is not None and last - start + 1 >= acks_wanted
    return sid_line[1], last


def _assert_restored(root, sid: str, upto: int) -> None:
    session = SessionStore(root).get(sid)  # a fresh process's view: nothing in memory
    for n in range(upto + 1):
        k, j = n % 12, 10 + n // 12
        assert (session.labels[k, j, 20:30] == n % 250 + 1).all(), f"acknowledged edit {n} lost"
    assert {f"organ {n}" for n in range(0, upto + 1, 7)} <= {d.name for d in session.label_defs}


def test_every_acknowledged_edit_survives_kill_9_and_restart(tmp_path):
    root = tmp_path / "sessions"
    sid, last = _run_until_killed(root, "new", 0, acks_wanted=40)
    _assert_restored(root, sid, last)
    # the restarted server carries on with the same session, and is killed again
    sid2, last2 = _run_until_killed(root, sid, last + 1, acks_wanted=40)
    assert sid2 == sid and last2 > last
    _assert_restored(root, sid, last2)
    final = SessionStore(root).get(sid).labels
    assert int(np.count_nonzero(final)) >= 10 * (last2 + 1)
