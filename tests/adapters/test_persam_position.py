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


def test_no_gate_for_other_methods_parity_or_a_reference_without_a_box_unless_asked(monkeypatch):
    monkeypatch.setattr(P, "POSITION_METHODS", frozenset({"persam_f"}))
    assert P.position_region((40, 80), reference(), "persam") is None
    assert P.position_region((40, 80), reference(parity=True), "persam_f") is None
    assert P.position_region((40, 80), reference(box=None), "persam_f") is None
    assert P.position_region((40, 80), reference(), "persam", on=True) is not None  # a call may turn it on
    assert P.position_region((40, 80), reference(), "persam_f", on=False) is None  # or off
    assert P.position_region((40, 80), reference(parity=True), "persam_f", on=True) is None  # parity: never


def test_every_method_is_gated_by_default():
    assert P.POSITION_METHODS == {"persam", "persam_f", "persam_box"}


def test_on_real_mr_the_gate_keeps_the_point_off_the_mirror_structure(litemedsam):
    """Colin27 (the shared slab), PerSAM-box learnt on putamen R at slice 1, applied to slice 19: without the gate
    the location map's maximum is on the other side of the brain, off the putamen R (the left putamen looks the
    same); with it the point is inside the putamen R and the mask overlaps it more."""
    from adapters.persam_oneshot import fit_oneshot
    from tests.adapters.test_persam_litemedsam import IMAGE, mr_slice, window
    from tests.conftest import DATA, dice

    labels = DATA / "mr_t1_colin27_slabA_label.nii.gz"
    ref, target = 1, 19
    gt = mr_slice(labels, target) == 74
    oneshot = fit_oneshot(litemedsam, window(mr_slice(IMAGE, ref)), mr_slice(labels, ref) == 74, method="persam_box")
    image = window(mr_slice(IMAGE, target))
    embedding = litemedsam.embed(image)
    off = oneshot.segment(litemedsam, embedding, image, position=False)
    on = oneshot.segment(litemedsam, embedding, image)  # the default: persam_box is in POSITION_METHODS
    assert not gt[off.positive_xy[1], off.positive_xy[0]] and off.positive_xy[0] < image.shape[1] / 2
    assert gt[on.positive_xy[1], on.positive_xy[0]]
    assert dice(on.mask, gt) > dice(off.mask, gt) + 0.1
