"""A corrective click changes the mask where it was clicked, not far from it (models/click_locality.py):
the rule on synthetic masks, and on the shipped click model with a real slice of the shared set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import click_locality
from models.click_locality import keep_region, localise


def _disk(shape, rc, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - rc[0]) ** 2 + (xx - rc[1]) ** 2 <= r * r


def test_only_the_change_that_reaches_the_click_is_kept():
    prev = _disk((64, 64), (20, 20), 8) | _disk((64, 64), (45, 45), 8)
    new = prev | _disk((64, 64), (20, 30), 5)  # a positive click at (20, 31) adds a bump there ...
    new &= ~_disk((64, 64), (45, 45), 8)  # ... and the refiner also drops the far object
    keep = keep_region(prev, new, (20, 31), True, change="any", touch_px=2, fallback="previous")
    assert keep[20, 31] and keep[20, 34]
    assert not keep[45, 45]  # the far object is not the click's business
    out = np.where(keep, new, prev)
    assert out[45, 45] and out[20, 33]


def test_a_change_that_misses_the_click_falls_back_as_configured():
    prev = _disk((64, 64), (30, 30), 6)
    new = prev | _disk((64, 64), (30, 50), 3)  # grown somewhere else than the click at (10, 10)
    assert not keep_region(prev, new, (10, 10), True, fallback="previous").any()
    assert keep_region(prev, new, (10, 10), True, fallback="new")[30, 50]
    signed = keep_region(prev, new & ~_disk((64, 64), (30, 30), 2), (30, 30), True, change="signed", fallback="previous")
    assert not signed.any()  # a positive click never removes


def test_logits_kept_are_the_ones_fed_back():
    prev = torch.full((1, 1, 8, 8), -5.0)
    prev[..., 2:4, 2:4] = 5.0
    new = torch.full((1, 1, 8, 8), -3.0)
    new[..., 2:5, 2:5] = 4.0  # grows at the click (4, 4)
    new[..., 7, 7] = 4.0  # and far away
    out = localise(prev, new, (4, 4), True, (8, 8), change="any", touch_px=0, fallback="previous")
    assert out[0, 0, 4, 4] == 4.0 and out[0, 0, 7, 7] == -5.0 and out[0, 0, 0, 0] == -5.0
    assert out.shape == new.shape


def test_the_switch_is_read_at_each_call(monkeypatch):
    monkeypatch.delenv(click_locality.ENV_VAR, raising=False)
    assert click_locality.enabled()
    for off in ("0", "off", "False"):
        monkeypatch.setenv(click_locality.ENV_VAR, off)
        assert not click_locality.enabled()
