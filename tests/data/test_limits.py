"""Limits and paths: settings from the environment, upload caps, session expiry, what the server may
serve; and untrusted checkpoints (sha256 pins, pickles that would run code)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.session import SessionStore
from app.settings import MIB, Settings, SettingsError
from app.uploads import UploadError, import_upload
from data.readers import DEFAULT_MAX_VOXELS
from models.checkpoint import CheckpointError, read_state_dict
from tests.conftest import ROOT, SAMPLES


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert (s.max_upload_bytes, s.max_unzipped_bytes, s.max_upload_files) == (2048 * MIB, 2048 * MIB, 10_000)
    assert s.max_voxels == DEFAULT_MAX_VOXELS == 512 * 512 * 1024
    assert s.session_ttl_s == 14 * 86400 and s.allowed_roots == ()


def test_every_variable_is_read(tmp_path):
    env = {
        "MEDSEG_MAX_UPLOAD_MB": "1.5",
        "MEDSEG_MAX_UNZIPPED_MB": "3",
        "MEDSEG_MAX_UPLOAD_FILES": "7",
        "MEDSEG_MAX_VOXELS": "1000",
        "MEDSEG_SESSION_TTL_HOURS": "0.5",
        "MEDSEG_ALLOWED_ROOTS": f"{tmp_path}{os.pathsep}{SAMPLES}",
    }
    s = Settings.from_env(env)
    assert s.max_upload_bytes == int(1.5 * MIB) and s.max_unzipped_bytes == 3 * MIB
    assert (s.max_upload_files, s.max_voxels, s.session_ttl_s) == (7, 1000, 1800.0)
    assert s.allowed_roots == (tmp_path.resolve(), SAMPLES.resolve())


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("MEDSEG_MAX_UPLOAD_MB", "lots", "MEDSEG_MAX_UPLOAD_MB='lots': expected a number"),
        ("MEDSEG_MAX_UPLOAD_FILES", "2.5", "expected a whole number"),
        ("MEDSEG_MAX_VOXELS", "-1", "must be > 0"),
        ("MEDSEG_SESSION_TTL_HOURS", "0", "must be > 0"),
        ("MEDSEG_ALLOWED_ROOTS", "/no/such/folder", "/no/such/folder is not a folder"),
    ],
)
def test_bad_values_name_the_variable(name, value, fragment):
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(").replace("'", "'")):
        Settings.from_env({name: value})


def test_upload_total_size_and_file_count_are_capped(tmp_path):
    big = tmp_path / "big.nii.gz"
    big.write_bytes(bytes(2 * MIB))
    with pytest.raises(UploadError, match="at most 1 MiB"):
        import_upload([big], tmp_path / "up", settings=Settings(max_upload_bytes=MIB))
    files = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
    with pytest.raises(UploadError, match="12 files uploaded; at most 4"):
        import_upload(files, tmp_path / "up2", settings=Settings(max_upload_files=4))
    assert not (tmp_path / "up2" / "series").exists()  # refused before copying
    opened = import_upload(files, tmp_path / "up3", settings=Settings(max_upload_files=12))
    assert len(list(opened.iterdir())) == 12


def test_uploads_live_in_the_session_folder_and_expire_with_it(tmp_path):
    store = SessionStore(tmp_path / "sessions", ttl_s=Settings.from_env({"MEDSEG_SESSION_TTL_HOURS": "1"}).session_ttl_s)
    old, fresh = store.create(), store.create()
    study = import_upload([SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"], old.directory / "uploads" / "1")
    assert study.resolve().is_relative_to(old.directory.resolve())
    removed = store.cleanup(now=time.time() + 3601)
    assert set(removed) == {old.id, fresh.id}  # both untouched for more than an hour
    assert not old.directory.exists() and not study.exists()
    again = store.create()
    assert store.cleanup(now=time.time() + 1800) == [] and again.directory.is_dir()


def test_served_paths_are_the_configured_roots_and_never_the_session_folders(tmp_path, monkeypatch):
    """``medseg serve`` lets Gradio serve only MEDSEG_ALLOWED_ROOTS, blocks the session root (uploads
    there are user files: served inline, they were stored XSS, issue 23), and sets the upload cap."""
    import gradio as gr

    import app.ui as ui
    from app.settings import get_settings

    seen: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setattr(ui, "load_model", lambda *a, **k: None)  # no model load: only the launch settings matter
    monkeypatch.setenv("MEDSEG_ALLOWED_ROOTS", str(SAMPLES))
    monkeypatch.setenv("MEDSEG_MAX_UPLOAD_MB", "64")
    monkeypatch.setenv("MEDSEG_SESSION_TTL_HOURS", "2")
    get_settings.cache_clear()
    try:
        ui.launch(state_dir=tmp_path / "state", prevent_thread_lock=True)
    finally:
        get_settings.cache_clear()
    assert seen["allowed_paths"] == [str(SAMPLES.resolve())]
    assert seen["blocked_paths"] == [str((tmp_path / "state" / "sessions").resolve())]
    assert seen["max_file_size"] == 64 * MIB
    assert str(ROOT) not in seen["allowed_paths"] and "/" not in seen["allowed_paths"]


# --- untrusted checkpoints -----------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil, pickle_protocol=2)
    assert marker.exists() is False
    with pytest.raises(CheckpointError, match="convert-checkpoint .* --trust"):
        read_state_dict(evil)
    assert not marker.exists()


def test_a_file_under_the_pinned_name_with_other_bytes_is_refused(tmp_path):
    from models.registry import get_spec, load_segmenter

    fake = tmp_path / get_spec("litemedsam").weight_file
    torch.save({"w": torch.zeros(2)}, fake)
    with pytest.raises(CheckpointError, match="sha256 .* expected"):
        load_segmenter("litemedsam", fake)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_files_are_not_loaded(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(pickle.dumps({"w": np.zeros(2)}))
    with pytest.raises(CheckpointError):
        read_state_dict(path)


# --- data.limits: the bounds every reader and the isolated read enforce ----------------------------------
def test_the_voxel_limit_comes_from_the_argument_then_the_variable_then_the_default(monkeypatch):
    from data.limits import LimitError, voxel_limit

    monkeypatch.delenv("MEDSEG_MAX_VOXELS", raising=False)
    assert voxel_limit() == DEFAULT_MAX_VOXELS == 2**28
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "  ")
    assert voxel_limit() == 2**28
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", " 1000 ")
    assert voxel_limit() == 1000 and voxel_limit(5) == 5 and voxel_limit(0) == 0
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "1e6")
    with pytest.raises(LimitError) as e:
        voxel_limit()
    assert str(e.value) == "MEDSEG_MAX_VOXELS='1e6': expected a whole number of voxels"


def test_an_isolated_read_may_use_512_mib_plus_32_bytes_a_voxel_unless_told(monkeypatch):
    """docs: 8.5 GiB at the default 2**28 voxels, 640 MiB at the corpus's 2**22."""
    from data.limits import LimitError, read_memory_bytes

    monkeypatch.delenv("MEDSEG_READ_MEMORY_MB", raising=False)
    assert read_memory_bytes(2**28) == int(8.5 * 1024**3)
    assert read_memory_bytes(2**22) == 640 * 1024**2
    assert read_memory_bytes(2**22, 100.5) == int(100.5 * 1024**2)
    assert read_memory_bytes(2**22, 0.5) == 512 * 1024  # under 1 MiB is small, not invalid
    monkeypatch.setenv("MEDSEG_READ_MEMORY_MB", " 48 ")
    assert read_memory_bytes(2**28) == 48 * 1024**2
    assert read_memory_bytes(2**28, 64) == 64 * 1024**2  # the argument wins
    monkeypatch.setenv("MEDSEG_READ_MEMORY_MB", "")
    assert read_memory_bytes(2**22) == 640 * 1024**2
    for text, message in [("lots", "MEDSEG_READ_MEMORY_MB='lots': expected a number of MiB > 0"),
                          ("0", "MEDSEG_READ_MEMORY_MB=0.0: must be > 0"),
                          ("-5", "MEDSEG_READ_MEMORY_MB=-5.0: must be > 0"),
                          ("nan", "MEDSEG_READ_MEMORY_MB=nan: must be > 0")]:
        monkeypatch.setenv("MEDSEG_READ_MEMORY_MB", text)
        with pytest.raises(LimitError) as e:
            read_memory_bytes(2**22)
        assert str(e.value) == message


def test_an_isolated_read_may_take_120_s_unless_told(monkeypatch):
    from data.limits import LimitError, read_timeout_s

    monkeypatch.delenv("MEDSEG_READ_TIMEOUT_S", raising=False)
    assert read_timeout_s() == 120.0 and isinstance(read_timeout_s(3), float) and read_timeout_s(0.5) == 0.5
    monkeypatch.setenv("MEDSEG_READ_TIMEOUT_S", " 7.5 ")
    assert read_timeout_s() == 7.5 and read_timeout_s(2) == 2.0
    monkeypatch.setenv("MEDSEG_READ_TIMEOUT_S", "")
    assert read_timeout_s() == 120.0
    for text, message in [("soon", "MEDSEG_READ_TIMEOUT_S='soon': expected a number of seconds > 0"),
                          ("0", "MEDSEG_READ_TIMEOUT_S=0.0: must be > 0"), ("nan", "MEDSEG_READ_TIMEOUT_S=nan: must be > 0")]:
        monkeypatch.setenv("MEDSEG_READ_TIMEOUT_S", text)
        with pytest.raises(LimitError) as e:
            read_timeout_s()
        assert str(e.value) == message
    monkeypatch.delenv("MEDSEG_READ_TIMEOUT_S")
    with pytest.raises(LimitError, match=r"^MEDSEG_READ_TIMEOUT_S=-1: must be > 0$"):
        read_timeout_s(-1)
