"""An output name that is one of the command's inputs: the writers rename their result over the target,
so ``medseg segment ct.nii.gz -o ct.nii.gz`` replaced the patient's image by a label map (exit 0). Every
command that writes now refuses it, before the model runs, in one line, and the input is left byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from tests.conftest import DATA

NIFTI = DATA / "mr_t1_colin27_slabA_image.nii.gz"
DICOM_FILE = DATA / "dicom" / "pydicom_CT_small.dcm"
SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(capsys, argv: list, keep: Path, named: Path) -> None:
    before = digest(keep)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "is an input" in err and named.name in err, err
    assert digest(keep) == before  # the study is still what the scanner wrote


@pytest.fixture()
def studies(tmp_path):
    shutil.copy(NIFTI, tmp_path / "t1.nii.gz")
    shutil.copy(DICOM_FILE, tmp_path / "ct.dcm")
    shutil.copytree(SERIES, tmp_path / "series")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(tmp_path / "scan.png")
    return tmp_path


def test_segment_refuses_to_write_over_its_input_file(studies, capsys):
    box = ["--box", 60, 60, 120, 120]
    refused(capsys, ["segment", studies / "t1.nii.gz", "--slice", 10, *box, "-o", studies / "t1.nii.gz"],
            studies / "t1.nii.gz", studies / "t1.nii.gz")
    refused(capsys, ["segment", studies / "ct.dcm", "--box", 20, 20, 80, 80, "-o", studies / "ct.dcm"],
            studies / "ct.dcm", studies / "ct.dcm")
    refused(capsys, ["segment", studies / "scan.png", "--box", 5, 5, 40, 40, "-o", studies / "scan.png"],
            studies / "scan.png", studies / "scan.png")


def test_segment_refuses_a_slice_of_the_series_and_other_names_of_the_input(studies, capsys):
    first = sorted((studies / "series").iterdir())[0]
    refused(capsys, ["segment", studies / "series", "--slice", 3, "--box", 60, 60, 120, 120, "-o", first],
            first, first)
    os.link(studies / "t1.nii.gz", studies / "hard.nii.gz")  # another name of the same file
    (studies / "sub").mkdir()
    os.symlink(studies / "t1.nii.gz", studies / "sub" / "link.nii.gz")
    for other in (studies / "hard.nii.gz", studies / "sub" / "link.nii.gz", studies / "sub" / ".." / "t1.nii.gz"):
        refused(capsys, ["segment", studies / "t1.nii.gz", "--slice", 10, "--box", 60, 60, 120, 120, "-o", other],
                studies / "t1.nii.gz", studies / "t1.nii.gz")


def test_propagate_refuses_its_input_before_propagating(studies, capsys):
    refused(capsys, ["propagate", studies / "t1.nii.gz", "--slice", 10, "--box", 60, 60, 120, 120, "--quiet",
                     "-o", studies / "t1.nii.gz"], studies / "t1.nii.gz", studies / "t1.nii.gz")


def test_oneshot_refuses_an_output_folder_where_a_target_would_be_replaced(studies, capsys):
    mask = studies / "mask.png"
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 22)).save(mask)
    refused(capsys, ["oneshot", "--ref", studies / "scan.png", "--ref-mask", mask, "--targets", studies / "scan.png",
                     "-o", studies], studies / "scan.png", studies / "scan.png")


def test_an_output_beside_the_input_is_written(studies, capsys, litemedsam):
    """The neighbour that must still work: the same folder, another name."""
    code = main(["segment", str(studies / "t1.nii.gz"), "--slice", "10", "--box", "60", "60", "120", "120",
                 "-o", str(studies / "t1_labels.nii.gz")])
    assert code == 0, capsys.readouterr()
    assert (studies / "t1_labels.nii.gz").is_file()


def test_a_seg_is_de_identified_unless_the_identifiers_are_kept_on_purpose_as_in_the_ui(tmp_path, capsys, litemedsam):
    """The UI de-identifies a DICOM-SEG unless *Keep patient identifiers* is ticked; `medseg segment -o x.dcm` kept
    PatientName/PatientID unless --deidentify was given (safe by default: PS3.15 unless kept on purpose). Now
    the CLI's default is the UI's; --keep-identifiers keeps them and says so; --deidentify (the old way to ask)
    still works, and the two together are refused."""
    import pydicom

    source = pydicom.dcmread(sorted(SERIES.iterdir())[0], stop_before_pixels=True)
    assert str(source.PatientName)  # the sample names a (synthetic) patient, so there is something to remove
    argv = ["segment", str(SERIES), "--slice", "5", "--box", "60", "60", "160", "160"]
    for name, flags in (("default.dcm", []), ("asked.dcm", ["--deidentify"])):
        assert main([*argv, *flags, "-o", str(tmp_path / name)]) == 0
        seg = pydicom.dcmread(tmp_path / name)
        assert str(seg.PatientIdentityRemoved) == "YES" and str(seg.PatientName) != str(source.PatientName), name
        assert name not in capsys.readouterr().err
    assert main([*argv, "--keep-identifiers", "-o", str(tmp_path / "kept.dcm")]) == 0
    # only this export's lines: an earlier test's unclosed socket may also reach this run as a ResourceWarning
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "kept.dcm" in x]
    assert "warning" in line and "PatientName" in line and "--keep-identifiers" in line, line
    assert str(pydicom.dcmread(tmp_path / "kept.dcm").PatientName) == str(source.PatientName)  # kept, as asked
    with pytest.raises(SystemExit) as e:
        main([*argv, "--keep-identifiers", "--deidentify", "-o", str(tmp_path / "both.dcm")])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err and not (tmp_path / "both.dcm").exists()


@pytest.mark.parametrize("where", ["inside a file", "procfs"])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_runs(where, studies, capsys, monkeypatch):
    """Before: the model ran (minutes for `propagate`), then the write failed naming a temporary file the user
    never chose: `[Errno 2] No such file or directory: '/proc/.a.nii.gz.2b6ub66h.nii.gz'`."""
    import app.commands.propagate as propagate_cmd
    import app.commands.segment as segment_cmd

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran before the output was checked")

    monkeypatch.setattr(segment_cmd, "segmenter_from_args", no_model)
    monkeypatch.setattr(propagate_cmd, "segmenter_from_args", no_model)
    out = studies / "t1.nii.gz" / "labels.nii.gz" if where == "inside a file" else Path("/proc/labels.nii.gz")
    for argv in (["segment", studies / "t1.nii.gz", "--slice", 10, "--box", 60, 60, 120, 120, "-o", out],
                 ["propagate", studies / "t1.nii.gz", "--slice", 10, "--box", 60, 60, 120, 120, "--quiet", "-o", out]):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--output {out}: cannot write" in err and ".labels.nii.gz." not in err, err


def test_oneshot_names_a_missing_target_before_learning_or_writing_anything(studies, capsys, monkeypatch, tmp_path):
    """A typo in the last of several targets was found only after the reference was learnt and every earlier
    target segmented and written (15 s for two 2D images here; minutes for volumes): now one line, exit 2,
    before the model loads, and no output folder."""
    import app.commands.oneshot as oneshot_command

    loads = []
    monkeypatch.setattr(oneshot_command, "load_segmenter", lambda *a, **k: loads.append(a) or pytest.fail("model loaded"))
    mask = studies / "mask.png"
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 22)).save(mask)
    out = tmp_path / "out"
    code = main([str(a) for a in ["oneshot", "--ref", studies / "scan.png", "--ref-mask", mask, "--targets",
                                  studies / "scan.png", studies / "scna.png", "-o", out]])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        f"medseg oneshot: error: --targets {studies / 'scna.png'}: no such file or folder"], err
    assert not loads and not out.exists()


def test_a_label_typed_in_a_latin1_terminal_is_named_before_propagating(studies, capsys, monkeypatch, tmp_path):
    """`--label $'Leber \\xfc'` (a Latin-1 terminal): Python keeps the byte as a lone surrogate, and the DICOM-SEG
    writer refused it after the whole propagation: "'utf-8' codec can't encode character '\\udcfc' in position 6:
    surrogates not allowed", the labels lost. Now one line naming --label and the byte, before the model."""
    import app.commands.propagate as propagate_command

    monkeypatch.setattr(propagate_command, "segmenter_from_args", lambda *a: pytest.fail("model loaded"))
    out = tmp_path / "seg.dcm"
    code = main([str(a) for a in ["propagate", studies / "series", "--slice", 5, "--box", 60, 40, 200, 200, "--quiet",
                                  "--label", "Leber \udcfc", "-o", out]])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "medseg propagate: error: --label: not UTF-8 text (byte 0xfc at character 7); set the terminal to UTF-8 or "
        "type the name in ASCII"], err
    assert not out.exists()


def test_segment_refuses_a_seg_of_a_study_that_is_not_dicom_before_the_model(studies, capsys, monkeypatch):
    """`-o labels.dcm` for a NIfTI or PNG study: the model loaded and segmented (11 s here), then the writer said a
    DICOM-SEG needs a DICOM study. Now the same line before the model; nothing written."""
    import app.commands.segment as segment_command

    monkeypatch.setattr(segment_command, "segmenter_from_args", lambda *a: pytest.fail("model loaded"))
    for study, extra, fmt in ((studies / "t1.nii.gz", ["--slice", 10], "nifti"), (studies / "scan.png", [], "png")):
        out = studies / "labels.dcm"
        code = main([str(a) for a in ["segment", study, *extra, "--box", 10, 10, 40, 40, "-o", out]])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().splitlines() == [
            f"medseg segment: error: --output {out}: DICOM-SEG needs a DICOM study, this one is {fmt}; "
            "use a .nii.gz output name"], err
        assert not out.exists()


def test_the_result_line_names_a_file_with_a_newline_in_one_line(tmp_path, capsys, litemedsam):
    """Error lines escaped control characters in file names, the result line on stdout did not: an output named
    with a newline (a pasted name) split it in two, and a terminal escape in a name reached the terminal."""
    image = tmp_path / "scan.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(image)
    out = tmp_path / "mask\n\x1b[31mred.png"
    assert main(["segment", str(image), "--box", "10", "10", "40", "40", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "mask\\n\\x1b[31mred.png: " in lines[0] and "\x1b" not in lines[0], lines
    assert out.is_file()  # the file keeps the name it was given
