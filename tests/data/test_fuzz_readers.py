"""A bounded fuzzing run of the readers: real files with bytes overwritten and tails cut off.

Whatever the bytes, ``read_study`` either returns a Volume or raises StudyError (which the CLI
and the UI turn into one line for the user), never another exception. Fixed seed, few examples,
so the run is reproducible and short; mutations concentrate on the headers, where parsers branch.
"""

from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from data.readers import StudyError, StudyWarning, read_study
from tests.conftest import SAMPLES


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(48, 40).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


SEEDS = {
    ".dcm": (SAMPLES / "ct_head_0051_series" / "IM0003.dcm").read_bytes(),
    ".nii": gzip.decompress((SAMPLES / "colin27" / "mr_t1_colin27_slabA_label.nii.gz").read_bytes()),
    ".png": _png(),
}
HEADER = {".dcm": 1400, ".nii": 352, ".png": 64}  # bytes before the pixel data (approximately)

edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)


@seed(20261126)
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(SEEDS)), changes=edits, keep=st.floats(0.05, 1.0), in_header=st.booleans())
def test_mutated_files_read_or_raise_study_error(tmp_path, suffix, changes, keep, in_header):
    data = bytearray(SEEDS[suffix])
    span = HEADER[suffix] if in_header else len(data)
    for where, value in changes:
        data[int(where * (span - 1))] = value
    data = data[: max(1, int(len(data) * keep))] if keep < 1.0 else data
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(bytes(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StudyWarning)
            volume = read_study(path)
    except StudyError:
        return
    assert volume.array.ndim in (3, 4) and volume.array.size > 0
    assert all(np.isfinite(volume.spacing)) and all(s > 0 for s in volume.spacing)


@pytest.mark.parametrize("suffix", sorted(SEEDS))
def test_the_unmutated_seeds_read(tmp_path, suffix):
    """The fuzz seeds are valid files: without this the fuzz run could pass by raising on everything."""
    path = tmp_path / f"seed{suffix}"
    path.write_bytes(SEEDS[suffix])
    assert read_study(path).array.size > 0
