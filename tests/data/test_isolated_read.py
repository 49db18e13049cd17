"""The isolated reader (``data.isolated_read``): same volumes as in process; a crash, a memory
bomb or a hang in the reader is one StudyError line, and the caller (the server) carries on.

The crashes are real signals: ``tests/data/planted_crash/sitecustomize.py`` is put on the reader
children's PYTHONPATH and makes ``read_study`` dereference a null pointer or abort() for files
named so; read in process, the same file would kill the test process.
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.isolated_read import ReadLimits, ReadServer
from data.readers import StudyError, StudyWarning, read_study

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "samples" / "ct_head_0051_series"
COLIN = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
PLANT = Path(__file__).resolve().parent / "planted_crash"


@pytest.fixture(scope="module")
def reader():
    """One fork server for the module, with the planted crash on its PYTHONPATH."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PLANT), str(ROOT), *filter(None, [saved])])
    server = ReadServer()
    try:
        server.read(CT, read_limits=ReadLimits(2**30, 120))  # start it while the variable is set
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    yield server
    server.stop()


def _planted(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(COLIN.read_bytes())  # a valid NIfTI: only the planted crash stops it
    return path


@pytest.mark.parametrize("study", [CT, COLIN], ids=["ct-dicom-series", "colin27-nifti"])
def test_isolated_read_gives_the_same_voxels_geometry_and_source_as_in_process(reader, study, tmp_path):
    alone = read_study(study)
    isolated = reader.read(study, scratch=tmp_path)
    assert isolated.array.dtype == alone.array.dtype and np.array_equal(isolated.array, alone.array)
    assert (isolated.spacing, isolated.origin, isolated.direction) == (alone.spacing, alone.origin, alone.direction)
    assert isolated.modality == alone.modality and isolated.source == alone.source
    assert list(tmp_path.iterdir()) == []  # the hand-over file is gone


@pytest.mark.parametrize("name, sig", [("plant-segv.nii.gz", "SIGSEGV"), ("plant-abort.nii.gz", "SIGABRT")])
def test_a_reader_that_crashes_is_one_error_and_the_next_read_works(reader, tmp_path, name, sig):
    path = _planted(tmp_path, name)
    worker = reader.pid()
    with pytest.raises(StudyError) as e:
        reader.read(path, scratch=tmp_path)
    message = str(e.value)
    assert message == f"{path}: the reader crashed on this file ({sig}); it was not opened"
    assert "\n" not in message
    assert reader.pid() == worker  # the fork server lived on; only its child died
    assert reader.read(COLIN).array.shape == (32, 217, 181)
    assert list(tmp_path.iterdir()) == [path]  # no hand-over folder left behind


def test_a_read_past_the_memory_limit_is_refused_and_within_it_opens(reader, tmp_path):
    path = tmp_path / "float64.nii"  # 64 MiB of legitimate voxels (within the voxel limit)
    voxels = np.linspace(-1000.0, 3000.0, 128 * 256 * 256).reshape(128, 256, 256)
    nib.save(nib.Nifti1Image(voxels, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    with pytest.raises(StudyError, match=r"float64\.nii: reading it needs more memory than the limit of 32 MiB"):
        reader.read(path, read_limits=ReadLimits(32 * 2**20, 120))
    volume = reader.read(path, read_limits=ReadLimits(1024 * 2**20, 120))
    assert volume.array.shape == (256, 256, 128) and volume.spacing == pytest.approx((0.8, 0.8, 2.0))


def test_a_read_that_hangs_is_stopped_at_the_time_limit(reader, tmp_path):
    path = _planted(tmp_path, "plant-hang.nii.gz")
    with pytest.raises(StudyError) as e:
        reader.read(path, read_limits=ReadLimits(2**30, 2))
    assert str(e.value) in (f"{path}: reading it took longer than 2 s (MEDSEG_READ_TIMEOUT_S); not opened",
                            f"{path}: reading it used more than 2 s of CPU (MEDSEG_READ_TIMEOUT_S); not opened")
    assert reader.read(COLIN).num_slices == 32


def test_refusals_and_warnings_come_back_as_in_process(reader, tmp_path):
    bad = tmp_path / "text.nii.gz"
    bad.write_text("not an image")
    with pytest.raises(StudyError) as isolated:
        reader.read(bad)
    with pytest.raises(StudyError) as alone:
        read_study(bad)
    assert str(isolated.value) == str(alone.value)

    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = reader.read(nan)
    assert np.isfinite(volume.array).all()
    assert [w.category for w in caught] == [StudyWarning] and "NaN" in str(caught[0].message)


def test_a_killed_fork_server_is_started_again(tmp_path):
    server = ReadServer()
    try:
        assert server.read(COLIN).num_slices == 32
        first = server.pid()
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
        assert server.read(COLIN).num_slices == 32 and server.pid() != first
    finally:
        server.stop()
