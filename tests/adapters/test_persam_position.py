"""One-shot's position gate (docs/clicks.md, "One-shot: the point near where the reference was"): the positive
point may only lie near where the reference structure was, at the same place relative to the target image."""

from __future__ import annotations

import numpy as np

import adapters.persam as P


def reference(parity: bool = False, box=(0.25, 0.5, 0.75, 1.0)) -> P.PerSAMReference:
    return P.PerSAMReference(None, None, np.zeros((2, 2), bool), "litemedsam", parity, None, None, box)


def test_relative_box_is_the_tight_box_as_fractions_of_the_image():
    m = np.zeros((100, 200), bool)
    m[50:100, 50:150] = True
    assert P.relative_box(m) == (0.25, 0.5, 0.75, 1.0)
    assert P.relative_box(np.zeros((4, 4), bool)) is None


def test_the_region_is_the_box_scaled_about_its_centre_on_the_target_size(monkeypatch):
    monkeypatch.setattr(P, "POSITION_METHODS", frozenset({"persam_f"}))
    region = P.position_region((40, 80), reference(), "persam_f")  # a target of another size: same relative place
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    scale = P.POSITION_FACTOR
    assert rows[0] == int(np.floor((0.75 - 0.25 * scale) * 40)) and rows[-1] == 39  # clipped at the bottom edge
    assert cols[0] == int(np.floor((0.5 - 0.25 * scale) * 80)) and cols[-1] == int(np.ceil((0.5 + 0.25 * scale) * 80)) - 1
    assert region.sum() == len(rows) * len(cols)  # a rectangle


def test_no_gate_for_other_methods_parity_or_a_reference_without_a_box(monkeypatch):
    monkeypatch.setattr(P, "POSITION_METHODS", frozenset({"persam_f"}))
    assert P.position_region((40, 80), reference(), "persam") is None
    assert P.position_region((40, 80), reference(parity=True), "persam_f") is None
    assert P.position_region((40, 80), reference(box=None), "persam_f") is None
