"""``MEDSEG_ISOLATE_READS=1``: the CLI reads in the isolated reader, so a file whose reader dies by a
real SIGSEGV is one line on stderr and exit 2 (not a signal), and the CLI's link rule still holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli import main
from data import untrusted
from data.isolated_read import default_server

ROOT = Path(__file__).resolve().parents[2]
COLIN = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"
PLANT = ROOT / "tests" / "data" / "planted_crash"


@pytest.fixture()
def isolated_cli(monkeypatch):
    monkeypatch.setenv("MEDSEG_ISOLATE_READS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLANT), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(untrusted, "_link_policy", "inside")  # main() sets the CLI's; restored after
    default_server().stop()  # started again with the planted crash on its path
    yield
    default_server().stop()


def test_a_reader_crash_is_one_line_and_exit_2_and_links_are_followed(tmp_path, capsys, isolated_cli):
    crash = tmp_path / "plant-segv.nii.gz"
    crash.write_bytes(COLIN.read_bytes())
    assert main(["info", str(crash)]) == 2
    err = capsys.readouterr().err
    assert err == f"medseg info: error: {crash}: the reader crashed on this file (SIGSEGV); it was not opened\n"

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "t1.nii.gz").write_bytes(COLIN.read_bytes())
    (tmp_path / "sub-01").mkdir()
    os.symlink("../store/t1.nii.gz", tmp_path / "sub-01" / "T1w.nii.gz")  # leaves its folder: the CLI follows
    assert main(["info", str(tmp_path / "sub-01" / "T1w.nii.gz")]) == 0
    assert "shape_kji: [32, 217, 181]" in capsys.readouterr().out
