"""Pipeline parity on real data: every slice of shared/data/manifest.csv with the +5 px box gives the
Dice of the official upstream LiteMedSAM inference (baseline_litemedsam.csv, `upstream` rows)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from data.windowing import Window
from models.prompts import Prompts
from tests.conftest import DATA


def _rows(path, **match) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if all(r[k] == v for k, v in match.items())]


def _slice(path: str, k: int, transform: str) -> np.ndarray:
    vol = np.asanyarray(nib.load(DATA / path).dataobj)[:, :, k]
    return np.rot90(vol) if transform == "rot90" else vol.T


def _cases() -> list[tuple[dict, dict]]:
    baseline = {r["case_id"]: r for r in _rows(DATA / "baseline_litemedsam.csv", variant="upstream", margin_px="5")}
    return [(row, baseline[row["case_id"]]) for row in _rows(DATA / "manifest.csv")]


def test_every_manifest_slice_has_an_upstream_baseline():
    assert len(_cases()) == 42


def test_box_dice_matches_official_upstream_per_case(litemedsam):
    """All 42 slices in one batch per image file; each Dice within 0.005 of the official one."""
    cases = _cases()
    images, truths = [], []
    for row, _ in cases:
        k, t = int(row["slice_index"]), row["transform"]
        window = Window(float(row["norm_lo"]), float(row["norm_hi"]))
        grey = window.apply(_slice(row["image"], k, t))
        images.append(np.repeat(grey[:, :, None], 3, axis=2))
        values = [int(v) for v in row["label_values"].split("|")]
        truths.append(np.isin(_slice(row["label"], k, t), values))
    embeddings = [e for i in range(0, len(images), 8) for e in litemedsam.embed_batch(images[i : i + 8])]
    ours, theirs = [], []
    for (row, base), emb, truth in zip(cases, embeddings, truths):
        box = np.array([float(v) for v in base["box_xyxy"].split(",")])
        mask = litemedsam.predict(emb, Prompts(box=box)).best_mask
        dice = 2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1)
        ours.append(dice)
        theirs.append(float(base["dice"]))
    diff = np.abs(np.array(ours) - np.array(theirs))
    worst = int(np.argmax(diff))
    assert diff.max() <= 0.005, f"{cases[worst][0]['case_id']}: Dice {ours[worst]:.4f} vs official {theirs[worst]:.4f}"
    assert np.mean(ours) == pytest.approx(np.mean(theirs), abs=0.002)
