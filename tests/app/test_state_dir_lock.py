"""Two `medseg serve` on one state folder (the default one, say a second server on another port to try another
model): the browser's cookie is not bound to a port, so both servers opened the same session from the same
folder, each kept its own copy in memory and each saved over the other's labels.npz; on the next restart the
edits made through one of them were gone. Now the second server refuses to start, in one line, naming the folder."""

from __future__ import annotations

import subprocess
import sys

from scripts.page_client import ServerProcess, free_port
from tests.conftest import ROOT


def test_a_second_server_on_the_same_state_folder_refuses_to_start(tmp_path, exclusive_server, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's code, not the venv's `medseg` install's
    state = tmp_path / "state"
    first = ServerProcess(state, prefetch=0, log_path=tmp_path / "first.log").start()
    try:
        try:
            second = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--state-dir", str(state), "--port",
                                     str(free_port()), "--prefetch", "0"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("the second server started and served on the first one's state folder") from None
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2, second.stderr
        assert len(lines) == 1 and str(state) in lines[0] and "another medseg serve" in lines[0], lines
        assert first.proc.poll() is None  # the first one serves on
    finally:
        first.stop()
    restarted = ServerProcess(state, prefetch=0, log_path=tmp_path / "again.log").start()  # the folder is free again
    restarted.stop()
