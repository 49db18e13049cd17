"""The click model's training and held-out data are the registry files that ``adapter.json`` records (issue 18:
"adapter.json records every training volume: package, version, path inside the package, sha256").

``make test`` builds ``weights/devdata/click_model`` with ``scripts/prepare_click_data.py --verify``; these tests
check what it built against the shipped ``adapter.json``, and that a file with other bytes is refused by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from tests.conftest import ROOT

DEVDATA = ROOT / "weights" / "devdata" / "click_model"
ADAPTER = ROOT / "weights" / "click_model" / "adapter.json"


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_click_data", ROOT / "scripts" / "prepare_click_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sources() -> list[dict]:
    path = DEVDATA / "sources.json"
    assert path.is_file(), f"{path} is missing: `make weights/devdata/click_model/sources.json`"
    return json.loads(path.read_text())


def test_the_prepared_data_is_what_adapter_json_records(prepare, sources):
    meta = json.loads(ADAPTER.read_text())
    assert prepare.unverified(sources, ADAPTER) is None
    # every registry volume of adapter.json was used, and the training array is the one the shipped model saw
    registry = [r for r in meta["training_volumes"] + meta["heldout_volumes"] if "package" in r]
    assert sorted((s["package"], s["path"]) for s in sources) == sorted((r["package"], r["path"]) for r in registry)
    train = DEVDATA / meta["training_data_file"]["path"].split()[0]
    assert hashlib.sha256(train.read_bytes()).hexdigest() == meta["training_data_file"]["sha256"]


def test_a_file_with_other_bytes_is_refused_by_name(prepare, sources):
    tampered = [dict(s) for s in sources]
    tampered[2]["sha256"] = "0" * 64
    message = prepare.unverified(tampered, ADAPTER)
    assert message is not None and "\n" not in message
    assert tampered[2]["path"] in message and tampered[2]["package"] in message and "adapter.json" in message
    unknown = [dict(sources[0], path="usr/share/mricron/templates/other.nii.gz")]
    assert "no such file" in prepare.unverified(unknown, ADAPTER)


def test_an_out_folder_of_other_files_is_refused_and_left_as_it_was(prepare, tmp_path, monkeypatch, capsys):
    """The script replaces ``--out`` whole once verified; a folder that holds the user's own files must not be
    emptied (found in review: ``--out ~/data`` would have lost everything in it)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    monkeypatch.setattr("sys.argv", ["prepare_click_data.py", "--mricron", str(tmp_path / "none"),
                                     "--nilearn-wheel", str(tmp_path / "none.whl"), "--out", str(mine)])
    assert prepare.main() == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(mine) in err and "sources.json" in err
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # a folder that is not the script's build folder, where it would build, is refused the same way
    (tmp_path / "new.partial").mkdir()
    (tmp_path / "new.partial" / "x").write_text("keep")
    monkeypatch.setattr("sys.argv", ["prepare_click_data.py", "--mricron", str(tmp_path / "none"),
                                     "--nilearn-wheel", str(tmp_path / "none.whl"), "--out", str(tmp_path / "new")])
    assert prepare.main() == 1
    assert (tmp_path / "new.partial" / "x").read_text() == "keep"
    # an earlier output (it has sources.json) and an empty folder are not refused: the check is not what fails them
    for folder in (tmp_path / "earlier", tmp_path / "empty"):
        folder.mkdir()
    (tmp_path / "earlier" / "sources.json").write_text("[]")
    assert not prepare.not_ours(tmp_path / "earlier") and not prepare.not_ours(tmp_path / "empty")
    assert not prepare.not_ours(tmp_path / "absent") and prepare.not_ours(mine)
