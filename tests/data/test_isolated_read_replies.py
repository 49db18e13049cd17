"""``data.isolated_read`` on the caller's side, without the fork server: what the user reads for each answer
the reader child can give (crash, timeout, CPU limit, no answer, a broken hand-over), the volume rebuilt
from a good answer, and the request a read sends (the caller's limits, folder and link rule).
The real fork server, its crashes and limits: ``test_isolated_read.py``."""

from __future__ import annotations

import os
import signal
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from data import isolated_read, limits
from data.isolated_read import ReadLimits, ReadServer, _volume
from data.readers import StudyError, StudyWarning
from data.untrusted import set_link_policy
from data.volume import SourceRef, Volume

LIM = ReadLimits(memory_bytes=2**28, timeout_s=2.5)
PATH = "uploads/scan.nii.gz"


def refused(reply: dict, out: Path = Path("/nonexistent")) -> str:
    with pytest.raises(StudyError) as e:
        _volume(PATH, reply, out, LIM)
    return str(e.value)


def test_each_way_a_read_can_end_is_one_line_naming_the_file():
    assert refused({"error": "scan.nii.gz: not a NIfTI file"}) == "scan.nii.gz: not a NIfTI file"
    assert refused({"timeout": 2.5}) == f"{PATH}: reading it took longer than 2.5 s (MEDSEG_READ_TIMEOUT_S); not opened"
    assert refused({"signal": int(signal.SIGXCPU)}) == (
        f"{PATH}: reading it used more than 2.5 s of CPU (MEDSEG_READ_TIMEOUT_S); not opened")
    assert refused({"signal": int(signal.SIGSEGV)}) == (
        f"{PATH}: the reader crashed on this file (SIGSEGV); it was not opened")
    assert refused({"signal": "6"}) == f"{PATH}: the reader crashed on this file (SIGABRT); it was not opened"
    assert refused({"signal": 250}) == f"{PATH}: the reader crashed on this file (signal 250); it was not opened"
    assert refused({"exit": 3}) == f"{PATH}: the reader stopped without an answer (exit 3); not opened"
    assert refused({}) == f"{PATH}: the reader stopped without an answer (exit None); not opened"


def test_an_error_wins_over_anything_else_in_the_answer():
    assert refused({"error": "the message", "timeout": 1, "signal": 11, "volume": {}}) == "the message"
    assert refused({"timeout": 1, "signal": 11}).endswith("took longer than 2.5 s (MEDSEG_READ_TIMEOUT_S); not opened")


def _handed_over(tmp_path: Path, volume: Volume, **meta) -> dict:
    np.save(tmp_path / "volume.npy", volume.array, allow_pickle=False)
    return {"volume": {"spacing": list(volume.spacing), "origin": list(volume.origin),
                       "direction": list(volume.direction), "modality": volume.modality,
                       "source": asdict(volume.source), **meta}}


def test_a_good_answer_is_the_volume_with_its_geometry_and_source(tmp_path):
    original = Volume(array=np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(0.5, 0.7, 2.0),
                      origin=(-10.0, 4.5, 3.0), direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                      modality="CT", source=SourceRef(path="a/b", format="dicom-series", study_instance_uid="1.2",
                                                      sop_instance_uids=("1.2.3", "1.2.4"), files=("x", "y"),
                                                      notes=("uneven",)))
    reply = _handed_over(tmp_path, original)
    reply["volume"]["source"]["from_a_newer_reader"] = "ignored"  # a key this side does not know is left out
    reply["volume"]["spacing"] = ["0.5", 0.7, 2]  # JSON numbers of any form
    volume = _volume(PATH, reply, tmp_path, LIM)
    assert volume.array.dtype == np.int16 and np.array_equal(volume.array, original.array)
    assert (volume.spacing, volume.origin, volume.direction, volume.modality) == (
        original.spacing, original.origin, original.direction, "CT")
    assert all(type(x) is float for x in (*volume.spacing, *volume.origin, *volume.direction))
    assert volume.source == original.source  # the per-slice lists as tuples, equal to what read_study gives


def test_the_readers_warnings_reach_the_caller_with_their_kind(tmp_path):
    reply = _handed_over(tmp_path, Volume(array=np.zeros((1, 2, 2), np.uint8)),
                         warnings=[["StudyWarning", "3 NaN voxels set to 0"], ["UserWarning", "odd header"],
                                   ["DeprecationWarning", "numpy said so"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _volume(PATH, reply, tmp_path, LIM)
    assert [(w.category, str(w.message)) for w in caught] == [
        (StudyWarning, "3 NaN voxels set to 0"), (UserWarning, "odd header"), (UserWarning, "numpy said so")]


UNPICKLED: list = []


def _ran(what: str) -> None:
    UNPICKLED.append(what)


class _Payload:
    """What a reader child taken over by a crafted file could hand over: unpickling it runs code."""

    def __reduce__(self):
        return (_ran, ("code ran in the caller",))


def test_a_pickle_in_the_hand_over_is_refused_not_run(tmp_path):
    reply = _handed_over(tmp_path, Volume(array=np.zeros((1, 2, 2), np.uint8)))
    np.save(tmp_path / "volume.npy", np.array([_Payload()], dtype=object), allow_pickle=True)
    assert refused(reply, tmp_path) == f"{PATH}: the reader's answer could not be used (ValueError); not opened"
    assert UNPICKLED == []


@pytest.mark.parametrize("broken, kind", [
    ("no file", "FileNotFoundError"), ("pickled", "ValueError"), ("no spacing", "KeyError"),
    ("spacing not numbers", "ValueError"), ("source not a mapping", "TypeError"), ("unknown argument", "TypeError"),
])
def test_an_answer_that_cannot_be_used_is_one_line(tmp_path, broken, kind):
    reply = _handed_over(tmp_path, Volume(array=np.zeros((1, 2, 2), np.uint8)))
    if broken == "no file":
        (tmp_path / "volume.npy").unlink()
    elif broken == "pickled":
        np.save(tmp_path / "volume.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif broken == "no spacing":
        del reply["volume"]["spacing"]
    elif broken == "spacing not numbers":
        reply["volume"]["spacing"] = ["x", "y", "z"]
    elif broken == "source not a mapping":
        reply["volume"]["source"] = 5
    else:
        reply["volume"]["source"] = {"path": "a", "sop_instance_uids": 7}  # not iterable into a tuple
    assert refused(reply, tmp_path) == f"{PATH}: the reader's answer could not be used ({kind}); not opened"


def test_read_limits_come_from_the_arguments_the_environment_or_the_defaults(monkeypatch):
    monkeypatch.delenv("MEDSEG_READ_MEMORY_MB", raising=False)
    monkeypatch.delenv("MEDSEG_READ_TIMEOUT_S", raising=False)
    assert ReadLimits.resolve(1000, 64, 9) == ReadLimits(64 * 2**20, 9.0)
    assert ReadLimits.resolve(1000) == ReadLimits(limits.read_memory_bytes(1000), limits.read_timeout_s())
    monkeypatch.setenv("MEDSEG_READ_TIMEOUT_S", "soon")
    with pytest.raises(StudyError) as e:
        ReadLimits.resolve(1000)
    assert str(e.value) == "MEDSEG_READ_TIMEOUT_S='soon': expected a number of seconds > 0"
    assert e.value.__cause__ is None and e.value.__suppress_context__


class _Recorder(ReadServer):
    """A ReadServer whose child answers what the test says, after writing the voxels where it was told."""

    def __init__(self, answer):
        super().__init__()
        self.answer, self.requests = answer, []

    def _ask(self, request: dict) -> dict:
        self.requests.append(request)
        return self.answer(request)


def test_a_read_sends_the_callers_limits_folder_and_link_rule_and_leaves_nothing(tmp_path, monkeypatch):
    original = Volume(array=np.ones((2, 2, 2), np.float32), modality="MR")

    def answer(request):
        return _handed_over(Path(request["out"]), original)

    server = _Recorder(answer)
    monkeypatch.chdir(tmp_path)
    set_link_policy("inside")
    try:
        volume = server.read("scan.nii.gz", scratch=tmp_path, series_uid="1.2.3", max_voxels=5000, allow_uneven=True,
                             read_limits=ReadLimits(123456, 7.5))
        set_link_policy("follow")
        server.read(Path("x.nii"), scratch=tmp_path, max_voxels=10)
    finally:
        set_link_policy("inside")
    assert np.array_equal(volume.array, original.array) and volume.modality == "MR"
    first, second = server.requests
    out = first.pop("out")
    assert Path(out).parent == tmp_path and Path(out).name.startswith(".read-")
    assert first == {"path": "scan.nii.gz", "cwd": str(tmp_path), "links": "inside", "series_uid": "1.2.3",
                     "max_voxels": 5000, "allow_uneven": True, "memory_bytes": 123456, "timeout_s": 7.5,
                     "max_result_bytes": 5000 * limits.MAX_BYTES_PER_VOXEL * limits.MAX_SAMPLES_PER_PIXEL + 2**20}
    assert second["path"] == "x.nii" and second["links"] == "follow" and second["series_uid"] is None
    assert second["allow_uneven"] is False
    assert (second["memory_bytes"], second["timeout_s"]) == (limits.read_memory_bytes(10), limits.read_timeout_s())
    assert list(tmp_path.iterdir()) == []  # both hand-over folders are gone


def test_a_refused_read_leaves_nothing_either(tmp_path):
    server = _Recorder(lambda request: (Path(request["out"], "volume.npy").write_bytes(b"partial"),
                                        {"signal": int(signal.SIGKILL)})[1])
    with pytest.raises(StudyError) as e:
        server.read("big.nii", scratch=tmp_path, read_limits=LIM)
    assert str(e.value) == "big.nii: the reader crashed on this file (SIGKILL); it was not opened"
    server.answer = lambda request: {"timeout": 7.5}
    with pytest.raises(StudyError) as e:
        server.read("slow.nii", scratch=tmp_path, read_limits=ReadLimits(2**28, 7.5))
    assert str(e.value) == "slow.nii: reading it took longer than 7.5 s (MEDSEG_READ_TIMEOUT_S); not opened"
    assert list(tmp_path.iterdir()) == []


def test_the_default_hand_over_folder_is_the_system_one(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    server = _Recorder(lambda request: (seen.append(request["out"]), {"exit": 0})[1])
    with pytest.raises(StudyError):
        server.read("a.nii", read_limits=LIM)
    assert Path(seen[0]).parent == tmp_path and list(tmp_path.iterdir()) == []


def test_the_process_has_one_server_used_by_read_study_isolated(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(isolated_read.default_server(), "read", lambda path, **kw: calls.append((path, kw)) or "v")
    assert isolated_read.read_study_isolated("p", scratch=tmp_path, series_uid="9", max_voxels=3, allow_uneven=True,
                                             read_limits=LIM) == "v"
    assert calls == [("p", {"scratch": tmp_path, "series_uid": "9", "max_voxels": 3, "allow_uneven": True,
                            "read_limits": LIM})]
    assert isolated_read.read_study_isolated("q") == "v"
    assert calls[1] == ("q", {"scratch": None, "series_uid": None, "max_voxels": None, "allow_uneven": False,
                              "read_limits": None})
    assert isolated_read.default_server() is isolated_read.default_server()
