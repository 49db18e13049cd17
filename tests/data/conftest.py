"""Fixtures shared by the data tests."""

from __future__ import annotations

import tempfile

import pytest


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """A temp folder of the test's own, to see that a failed transfer leaves nothing in it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp
