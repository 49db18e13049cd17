"""Where to click next (``models.click_suggest``): the interior of the largest unsure region, its sign guessed
from the current mask, nothing where the model is sure."""

from __future__ import annotations

import numpy as np

from models.click_suggest import pick


def test_the_point_is_inside_the_largest_unsure_region_and_its_sign_follows_the_mask():
    unc = np.zeros((40, 60), np.float32)
    unc[5:9, 5:9] = 0.9  # small and very unsure: 16 px x 0.9
    unc[20:30, 30:50] = 0.5  # large and fairly unsure: 200 px x 0.5 wins
    mask = np.zeros((40, 60), bool)
    s = pick(unc, mask)
    assert 20 <= s.y < 30 and 30 <= s.x < 50
    # the interior: as far from the region's edge as a pixel of a 10 x 20 region can be (5 px)
    assert min(s.y - 19, 30 - s.y, s.x - 29, 50 - s.x) == 5
    assert s.positive and s.score == np.float32(0.5)
    mask[20:30, 30:50] = True
    assert not pick(unc, mask).positive  # inside the current mask: the guess is a negative click


def test_nothing_is_suggested_where_the_model_is_sure():
    unc = np.full((16, 16), 0.2, np.float32)  # at the threshold, not above it
    assert pick(unc, np.zeros((16, 16), bool)) is None
    assert pick(unc, np.zeros((16, 16), bool), threshold=0.1) is not None


def test_a_region_touching_the_border_still_gives_an_inside_point():
    unc = np.zeros((10, 10), np.float32)
    unc[:, :3] = 1.0  # a band along the left edge
    s = pick(unc, np.zeros((10, 10), bool))
    assert s.x < 3 and unc[s.y, s.x] == 1.0
