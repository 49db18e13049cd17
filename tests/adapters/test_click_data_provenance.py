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
