"""Fixtures the propagation tests share: the 12-slice CT series of the shared data and its head mask."""

from __future__ import annotations

import numpy as np
import pytest

from data.readers import read_study
from tests.conftest import DATA

CT_SERIES = DATA / "dicom" / "ct_head_0051_series_k050-061"


@pytest.fixture(scope="module")
def ct():
    return read_study(CT_SERIES)


@pytest.fixture(scope="module")
def head():
    """Head (label 1 or 2) on the series grid: k 12..23 of the slab labels."""
    return np.isin(read_study(DATA / "ct_head_0051_slabA_label.nii.gz").array[12:24], (1, 2))
