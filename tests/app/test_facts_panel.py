"""The study facts panel (a ``gr.Markdown`` beside the viewer) shows what the file says in plain text: the DICOM
Modality was put into the Markdown as it stood, so a file whose Modality is Markdown rendered as a picture fetched
from anyone's server when the study opened (a beacon saying who opened it, and when) or as a link (session 18's
adversarial pass)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from app import controller
from app.session import Session
from data.readers import read_study
from tests.conftest import SAMPLES

CT_SLICE = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))[0]
SID = "0" * 32


def _ct_slice_with_modality(folder: Path, value: bytes) -> Path:
    """The real CT slice with its Modality's bytes replaced (a CS of any length, as a hostile writer leaves it)."""
    ds = pydicom.dcmread(CT_SLICE)
    value += b" " * (len(value) % 2)
    ds._dict[Tag(0x00080060)] = RawDataElement(Tag(0x00080060), "CS", len(value), value, 0, False, True)
    path = folder / "IM0001.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("modality", [
    b"![x](http://127.0.0.1:9/beacon.png)",
    b"[Session expired: sign in](http://127.0.0.1:9/login)",
    b"<img src=x onerror=alert(1)>",
    b"CT **bold** `code`",
])
def test_a_modality_written_as_markup_is_shown_as_plain_text(tmp_path, modality):
    path = _ct_slice_with_modality(tmp_path, modality)
    volume = read_study(path)
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(path), path.name)
    facts = controller.facts(session)
    line = next(line for line in facts.splitlines() if line.startswith("modality"))
    # nothing the Markdown renderer takes as a picture, a link, a tag or emphasis: every such character escaped
    for unescaped in ("![", "](", "<img", "**bold", "`code"):
        assert unescaped not in line, line
    assert line.startswith("modality **") and line.count("**") == 2, line  # shown, cut to what a CS holds


def test_a_modality_longer_than_its_vr_is_cut_to_16_characters(tmp_path):
    """A CS holds 16 characters; a 20,000-character Modality filled the panel whole."""
    path = _ct_slice_with_modality(tmp_path, b"CT" + b"x" * 20_000)
    volume = read_study(path)
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(path), path.name)
    line = next(line for line in controller.facts(session).splitlines() if line.startswith("modality"))
    assert len(line) < 120, len(line)


def test_a_plain_modality_reads_as_before(tmp_path):
    volume = read_study(CT_SLICE)
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(volume, str(CT_SLICE), CT_SLICE.name)
    assert "modality **CT**, format dicom" in controller.facts(session)


def test_a_direction_control_in_a_file_name_or_message_is_written_out_not_obeyed(tmp_path):
    """A file name (or DICOM text) holding U+202E (right-to-left override) reversed the rest of the line that showed
    it: the study facts showed ``scan[U+202E]txt.dcm`` as "scanmcd.txt", and the status line and toasts likewise
    (session 24's viewer pass; label names refuse it since). Now the control is written out, ``\\u202e``, and the
    text keeps its order; right-to-left letters need no control and show as they are."""
    from app import messages

    path = tmp_path / "scan\u202etxt.dcm"
    path.write_bytes(CT_SLICE.read_bytes())
    session = Session(id=SID, directory=tmp_path, model="litemedsam")
    session.start_study(read_study(path), str(path), path.name)
    name_line = controller.facts(session).splitlines()[0]
    assert "\u202e" not in name_line and "\\\\u202etxt" in name_line, name_line  # Markdown: \\ renders as \
    from app.viewer import actions

    for told in (actions.state(session), actions.news(session)):  # the viewer's own lines show the name too
        assert told["name"] == "scan\\u202etxt.dcm", told["name"]
    for shown in (messages.for_markdown(f"{path}: not opened"), messages.for_toast(f"{path}: not opened")):
        assert "\u202e" not in shown and "u202etxt.dcm: not opened" in shown, shown
    assert messages.plain("סריקה \u2067ראש\u2069") == "סריקה \\u2067ראש\\u2069"  # isolates too; Hebrew kept
