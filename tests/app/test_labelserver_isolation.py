"""``medseg labelserver`` reads a viewer's upload in the isolated reader too: a file whose reader
dies by a real SIGSEGV is one StudyError (the server answers 4xx), and the next upload opens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.labelserver.datastore import Sessions
from data.isolated_read import default_server
from data.readers import StudyError

ROOT = Path(__file__).resolve().parents[2]
COLIN = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
PLANT = ROOT / "tests" / "data" / "planted_crash"


@pytest.fixture()
def planted_reader(monkeypatch):
    """The process's fork server, restarted with the planted crash on its PYTHONPATH (and after)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLANT), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    default_server().stop()
    yield
    default_server().stop()  # the next user starts a clean one


def test_a_labelserver_upload_that_crashes_the_reader_is_one_error_and_the_next_opens(tmp_path, planted_reader):
    sessions = Sessions(tmp_path / "sessions")
    (tmp_path / "sessions").mkdir(exist_ok=True)
    crash = tmp_path / "upload1"
    crash.write_bytes(COLIN.read_bytes())
    with pytest.raises(StudyError, match=r"plant-segv\.nii\.gz: the reader crashed on this file \(SIGSEGV\)"):
        sessions.add([("plant-segv.nii.gz", crash)])
    good = tmp_path / "upload2"
    good.write_bytes(COLIN.read_bytes())
    session = sessions.add([("colin.nii.gz", good)])
    assert session.volume.array.shape == (32, 217, 181)
