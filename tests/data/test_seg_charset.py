"""DICOM-SEG export of sources whose names are not plain ASCII, as clinics write them: Japanese (ISO 2022 IR 87
with its empty first value), Chinese (GB18030), Latin-1 with and without a SpecificCharacterSet. The SEG carries the
same patient name and passes dciodvfy (session 15's adversarial pass: the Japanese one could not be exported at all,
the undeclared Latin-1 one gave a SEG that dciodvfy refuses; the others held and are kept as guards)."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest

from data.export import export_labels
from data.readers import read_study
from tests.conftest import SAMPLES

CT_FILES = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
DCIODVFY = shutil.which("dciodvfy")

UTF8_UNDECLARED = "utf-8, undeclared"
CASES = {  # SpecificCharacterSet, PatientName; None: no character set, the name's bytes Latin-1 (old exports)
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    "chinese": ("GB18030", "王^小东"),
    "latin1_undeclared": (None, "Müller^Jürgen"),
    "latin1": ("ISO_IR 100", "Müller^Jürgen"),
    "ascii": (None, "Doe^Jane"),
    # UTF-8 bytes without a SpecificCharacterSet (tools that write UTF-8 and declare nothing): read as Latin-1, the
    # SEG carried "å±±ç\x94°^å¤ªé\x83\x8e" for 山田^太郎 and "MÃ¼ller^JÃ¼rgen" (session 18)
    "utf8_undeclared_japanese": (UTF8_UNDECLARED, "山田^太郎"),
    "utf8_undeclared_german": (UTF8_UNDECLARED, "Müller^Jürgen"),
}


def _series(folder, charset, name: str):
    folder.mkdir()
    for f in CT_FILES:
        ds = pydicom.dcmread(f)
        if charset in (None, UTF8_UNDECLARED):
            ds.pop("SpecificCharacterSet", None)
            raw = name.encode("latin-1" if charset is None else "utf-8")
            ds["PatientName"] = pydicom.dataelem.RawDataElement(
                pydicom.tag.Tag(0x00100010), "PN", len(raw), raw, 0, False, True)
        else:
            ds.SpecificCharacterSet = charset
            ds.PatientName = name  # encoded in that character set when written
        ds.save_as(folder / f.name)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_seg_of_a_source_named_in_any_character_set_is_written_and_valid(tmp_path, case):
    charset, name = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = read_study(_series(tmp_path / case, charset, name))
        if charset != UTF8_UNDECLARED:  # (pydicom reads undeclared bytes as Latin-1)
            assert str(pydicom.dcmread(volume.source.files[0]).PatientName) == name  # the source reads as meant
        labels = np.zeros(volume.array.shape[:3], np.uint8)
        labels[3:6, 100:120, 100:120] = 1
        export_labels(labels, volume, tmp_path / "seg.dcm", label_names={1: "lesion"})
        seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert str(seg.PatientName) == name
    if case == "ascii":
        assert seg.get("SpecificCharacterSet") in (None, "", "ISO_IR 6")
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(tmp_path / "seg.dcm")], capture_output=True)
        errors = [line for line in (out.stdout + out.stderr).decode("utf-8", "replace").splitlines()
                  if line.startswith("Error")]
        assert not errors, errors
