"""Symbolic links: ``medseg`` follows them to the user's own regular files (datalad / git-annex
datasets are links into ``.git/annex/objects``), refuses targets that are not regular files with
one line and exit 2, and a server (the default policy, and the isolated reader) keeps refusing
links that leave their folder. docs/reliability.md, "Links".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from data import untrusted
from data.isolated_read import ReadServer
from data.readers import StudyError, read_study

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "samples" / "ct_head_0051_series"
COLIN = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


@pytest.fixture(autouse=True)
def _restore_policy(monkeypatch):
    """``app.cli.main`` sets the process's link policy; each test starts (and ends) with the default."""
    monkeypatch.setattr(untrusted, "_link_policy", "inside")


def _annex(dataset: Path, source: Path, key: str) -> Path:
    """Store ``source`` as git-annex does: .git/annex/objects/xx/yy/KEY/KEY, read-only."""
    obj = dataset / ".git" / "annex" / "objects" / key[:2] / key[2:4] / key / key
    obj.parent.mkdir(parents=True)
    shutil.copyfile(source, obj)
    obj.chmod(0o444)
    return obj


def _link(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)  # relative, as datalad writes them
    return link


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A datalad-shaped dataset: a NIfTI and a 12-file DICOM series, every file a link into the annex."""
    ds = tmp_path / "ds"
    _link(ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz", _annex(ds, COLIN, "MD5E-s1--colin.nii.gz"))
    for i, f in enumerate(sorted(CT.glob("*.dcm"))):
        _link(ds / "sub-01" / "ct" / f.name, _annex(ds, f, f"MD5E-s{i}--{f.name}"))
    _link(ds / "sub-02" / "anat" / "sub-02_T1w.nii.gz", ds / ".git" / "annex" / "objects" / "Zz" / "Yy" / "K" / "K")
    return ds


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medseg info: error: "), err
    return err.strip()


def test_the_cli_opens_a_datalad_dataset_whose_files_are_links_into_the_annex(dataset, capsys):
    nifti = dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert main(["info", str(nifti)]) == 0
    assert "shape_kji: [32, 217, 181]" in capsys.readouterr().out
    assert main(["info", str(dataset / "sub-01" / "ct")]) == 0
    out = capsys.readouterr().out
    assert "shape_kji: [12, 256, 256]" in out, out
    # what it opened is the annexed content, voxel for voxel and with its geometry
    for linked, real in ((nifti, COLIN), (dataset / "sub-01" / "ct", CT)):
        a, b = read_study(linked), read_study(real)
        assert np.array_equal(a.array, b.array) and (a.spacing, a.origin, a.direction) == (b.spacing, b.origin, b.direction)


def test_a_link_whose_annexed_content_is_not_fetched_is_one_line_naming_datalad_get(dataset, capsys):
    err = _one_line_error(capsys, ["info", str(dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz")])
    assert "sub-02_T1w.nii.gz: a broken link" in err and "`datalad get`" in err


def test_the_cli_still_refuses_links_to_a_device_or_a_fifo(tmp_path, capsys):
    os.symlink("/dev/zero", tmp_path / "zero.nii")
    os.mkfifo(tmp_path / "elsewhere.fifo")
    os.symlink(tmp_path / "elsewhere.fifo", tmp_path / "scan.nii.gz")
    assert _one_line_error(capsys, ["info", str(tmp_path / "zero.nii")]).endswith("zero.nii: a device, not a regular file")
    assert _one_line_error(capsys, ["info", str(tmp_path / "scan.nii.gz")]).endswith("scan.nii.gz: a pipe, not a regular file")
    series = tmp_path / "series"
    shutil.copytree(CT, series)
    os.symlink("/dev/zero", series / "IM9999.dcm")  # one bad member refuses the folder, naming it
    assert "IM9999.dcm: a device, not a regular file" in _one_line_error(capsys, ["info", str(series)])


def test_a_server_keeps_refusing_links_that_leave_their_folder(dataset):
    nifti = dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert untrusted.link_policy() == "inside"  # the library's default, which `medseg serve` keeps
    with pytest.raises(StudyError, match="a link to a file outside its folder"):
        read_study(nifti)
    server = ReadServer()
    try:  # the isolated reader the server uses applies the server's rule
        with pytest.raises(StudyError, match="a link to a file outside its folder"):
            server.read(nifti)
        untrusted.set_link_policy("follow")  # and the CLI's, for a CLI (MEDSEG_ISOLATE_READS=1)
        assert server.read(nifti).array.shape == (32, 217, 181)
    finally:
        server.stop()
