"""`medseg oneshot` reads its reference and targets without --allow-uneven or --series (it takes neither flag): a
reader's refusal must not tell the user to pass them (session 25: it did, `... or pass --allow-uneven`)."""

from __future__ import annotations

import shutil

import pytest

import app.commands.oneshot as oneshot
from app.cli import main as cli_main
from tests.conftest import DATA

SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


@pytest.fixture()
def folders(tmp_path):
    """The real CT series less its sixth slice, and the whole series beside pydicom's MR_small (two series)."""
    gap, two = tmp_path / "gap", tmp_path / "two"
    gap.mkdir()
    shutil.copytree(SERIES, two)
    shutil.copy(DATA / "dicom" / "pydicom_MR_small.dcm", two)
    for f in sorted(SERIES.iterdir()):
        if f.name != "IM0006.dcm":
            shutil.copy(f, gap / f.name)
    return gap, two


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_reference_series_with_a_slice_missing_is_refused_without_a_flag_oneshot_lacks(folders, tmp_path, capsys):
    gap, two = folders
    rc = cli_main(["oneshot", "--ref", str(gap), "--ref-slice", "2", "--ref-mask", str(gap), "--targets", str(gap),
                   "-o", str(tmp_path / "out")])
    line = _one_error_line(capsys)
    assert rc == 2 and line == (f"medseg oneshot: error: {gap}: 1 slice(s) missing between IM0005.dcm (0.75 mm) and "
                                "IM0007.dcm (3.75 mm) (the other slices are 1.5 mm apart); add the missing file(s), "
                                "open the complete series"), line
    rc = cli_main(["oneshot", "--ref", str(two), "--ref-mask", str(two), "--targets", str(two),
                   "-o", str(tmp_path / "out")])
    line = _one_error_line(capsys)
    assert rc == 2 and line.startswith(f"medseg oneshot: error: {two}: holds 2 series; expected one: give the files "
                                       "of one series alone: "), line
    assert "--series" not in line and not (tmp_path / "out").exists()


def test_a_target_series_with_a_slice_missing_is_refused_without_a_flag_oneshot_lacks(folders, tmp_path, capsys,
                                                                                      monkeypatch):
    """The targets are read after the model learnt the reference: a fake model and fit stand in for them here."""
    gap, _ = folders
    monkeypatch.setattr(oneshot, "load_segmenter", lambda *a, **k: object())
    monkeypatch.setattr(oneshot, "fit_oneshot", lambda *a, **k: object())
    ref = DATA / "mr_t1_colin27_slabA_image.nii.gz"
    rc = cli_main(["oneshot", "--ref", str(ref), "--ref-slice", "3", "--ref-mask",
                   str(DATA / "mr_t1_colin27_slabA_brainmask.nii.gz"), "--targets", str(gap),
                   "-o", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and line.endswith("add the missing file(s), open the complete series"), line
