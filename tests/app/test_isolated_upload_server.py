"""A real ``medseg serve``: uploads whose reader crashes for real (SIGSEGV, SIGABRT) or passes the
memory limit each get one escaped message; the server stays up, the other session keeps working,
and a good upload opens afterwards (issue 23: "one file must not take the server down").

The crashes are planted in ``data.readers.read_study`` by ``tests/data/planted_crash/sitecustomize.py``
on the server's PYTHONPATH. The server reads uploads in a limited child (``data.isolated_read``);
read in the server's own process, the first file would kill it and this test would fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.page_client import OUTPUTS, Page, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
COLIN = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
PLANT = ROOT / "tests" / "data" / "planted_crash"
CT = "CT head (DICOM series, 12 slices)"


def _shown(messages: list[dict]) -> tuple[list[str], str | None, bool]:
    """(toasts, status line, succeeded) of one event, as the page would show them."""
    toasts = [m.get("log", "") for m in messages if m.get("msg") == "log"]
    done = [m for m in messages if m.get("msg") == "process_completed"]
    ok = bool(done and done[-1].get("success"))
    data = done[-1]["output"]["data"] if ok else []
    at = OUTPUTS.index("status")  # the page's outputs, as scripts/page_client.py names them
    status = data[at] if len(data) > at and isinstance(data[at], str) else None
    return toasts, status, ok


@pytest.mark.slow
def test_uploads_that_crash_the_reader_or_pass_its_memory_limit_leave_the_server_up(tmp_path, monkeypatch,
                                                                                     exclusive_server):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLANT), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MEDSEG_READ_MEMORY_MB", "48")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name in ("plant-segv.nii.gz", "plant-abort.nii.gz"):
        (hostile / name).write_bytes(COLIN.read_bytes())
    voxels = np.linspace(-1000.0, 3000.0, 128 * 256 * 256).reshape(128, 256, 256)  # 64 MiB of float64
    nib.save(nib.Nifti1Image(voxels, np.diag([0.8, 0.8, 2.0, 1.0])), hostile / "float64.nii")
    expected = {"plant-segv.nii.gz": "the reader crashed on this file (SIGSEGV); it was not opened",
                "plant-abort.nii.gz": "the reader crashed on this file (SIGABRT); it was not opened",
                "float64.nii": "reading it needs more memory than the limit of 48 MiB (MEDSEG_READ_MEMORY_MB)"}

    state = tmp_path / "state"
    server = ServerProcess(state, prefetch=0, log_path=tmp_path / "serve.log").start()
    other, user = Page(server.url), Page(server.url)
    try:
        other.load()
        other.open_sample(CT)  # a bundled sample: read in the server's process
        user.load()
        for name, reason in expected.items():
            toasts, status, ok = _shown(user.upload_files([hostile / name]))
            assert ok, f"{name}: the event failed (a red Error on the page)"
            assert server.proc.poll() is None, f"the server died on {name}"
            assert len(toasts) == 1 and toasts[0] == f"{name}: {reason}", toasts
            assert status and status.startswith("⚠") and reason.split(" (")[0] in status, status
            for text in (toasts[0], status):
                assert "<" not in text and str(state) not in text and str(tmp_path) not in text
        assert all(not any(p.iterdir()) for p in state.glob("sessions/*/uploads"))  # refused: deleted

        user.upload([COLIN])  # a good upload opens in the same session (through the same child)
        assert user.last["status"].startswith(("Opened", "Ready")), user.last["status"]  # "Ready": then encoded
        assert int(user.last["slice_max"]) == 31
        other.set_slice(5)  # the other session was never disturbed
        assert int(other.last["slice"]) == 5 and server.proc.poll() is None
    finally:
        other.close()
        user.close()
        server.stop()
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
