"""Issue 23's targets on the hostile-input corpus (``tests/hostile``), 170+ files built in tmp:

* 0 tracebacks, 0 signals, 0 hangs;
* every refusal one line on stderr with exit code 2, naming the reason;
* 0 corrupt inputs accepted: every accepted case reads back exactly the voxels (and spacing,
  geometry rule) it was written from;
* peak RSS of every case at most 1.5x that of the largest legitimate study the limits allow.

Each case runs as ``medseg info`` in its own forked process (``tests/hostile/runner.py``), so a
crash in native code ends only that case and ``os.wait4`` gives its own peak RSS. The run uses
``MEDSEG_MAX_VOXELS = REFERENCE_VOXELS`` (2**22): the limit-sized legitimate studies are then small
enough to build on CI, and every bound that scales with the limit scales with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from data.readers import StudyError, StudyWarning, read_study
from tests.conftest import ROOT
from tests.hostile import dicom_bytes as db
from tests.hostile.check import run, verdict
from tests.hostile.corpus import REFERENCE_VOXELS, build_corpus

RSS_FACTOR = 1.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    cases = build_corpus(folder / "cases")
    return cases, run(cases, folder)


def test_the_corpus_holds_at_least_120_hostile_cases(corpus):
    cases, _ = corpus
    hostile = [c for c in cases if c.expect == "refuse"]
    assert len(hostile) >= 120, len(hostile)
    assert len({c.kind for c in cases}) >= 9


def test_no_traceback_signal_or_hang(corpus):
    cases, results = corpus
    bad = {c.name: verdict(c, results[c.name]) for c in cases
           if results[c.name]["hang"] or results[c.name]["signal"] is not None or "Traceback" in results[c.name]["stderr"]}
    assert not bad, bad


def test_every_refusal_is_one_line_with_exit_2_and_the_reason(corpus):
    cases, results = corpus
    bad = {c.name: (verdict(c, results[c.name]), results[c.name]["stderr"][-300:])
           for c in cases if c.expect == "refuse" and verdict(c, results[c.name])}
    assert not bad, bad


def test_accepted_cases_exit_0_and_warn_only_where_expected(corpus):
    cases, results = corpus
    bad = {c.name: (verdict(c, results[c.name]), results[c.name]["stderr"][-300:])
           for c in cases if c.expect == "accept" and verdict(c, results[c.name])}
    assert not bad, bad


def test_accepted_cases_hold_exactly_the_content_they_were_written_with(corpus, monkeypatch):
    """0 corrupt inputs accepted: voxels equal to the source array, spacing and geometry rule as written."""
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", str(REFERENCE_VOXELS))
    from data import untrusted

    monkeypatch.setattr(untrusted, "_link_policy", "follow")  # the corpus is `medseg info`'s: links followed
    cases, _ = corpus
    checked = 0
    for case in cases:
        if case.expect != "accept" or case.expected is None:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vol = read_study(case.path, allow_uneven="--allow-uneven" in case.args)
        shown = [str(w.message) for w in caught if issubclass(w.category, StudyWarning)]
        assert (case.fragment in " ".join(shown)) if case.fragment else not shown, (case.name, shown)
        assert vol.array.shape == case.expected.shape, (case.name, vol.array.shape, case.expected.shape)
        assert np.array_equal(vol.array, case.expected), case.name
        if case.spacing is not None:
            np.testing.assert_allclose(vol.spacing, case.spacing, atol=1e-4, err_msg=case.name)
        assert case.geometry in vol.source.geometry, (case.name, vol.source.geometry)
        checked += 1
    assert checked >= 35


def test_info_says_which_nifti_transform_was_used(corpus):
    cases, results = corpus
    out = results["qform_sform_disagree"]["stdout"]
    assert "sform (sform_code 2); the qform (qform_code 1) disagrees and was not used" in out
    assert "qform (qform_code 1)" in results["qform_only"]["stdout"]


def test_peak_rss_stays_within_1_5x_the_largest_legitimate_study(corpus):
    """Peak RSS of each case (its own forked process) against the limit-sized legitimate studies;
    also the increments over a warm process that reads nothing, which the imports do not dilute."""
    cases, results = corpus
    base = results["__baseline__"]["maxrss_kb"]
    refs = [c for c in cases if c.reference]
    assert len(refs) == 3 and all(results[c.name]["exit"] == 0 for c in refs)
    ref_peak = max(results[c.name]["maxrss_kb"] for c in refs)
    over = {c.name: results[c.name]["maxrss_kb"] for c in cases
            if results[c.name]["maxrss_kb"] > RSS_FACTOR * ref_peak
            or results[c.name]["maxrss_kb"] - base > RSS_FACTOR * (ref_peak - base)}
    assert not over, (base, ref_peak, over)


def test_the_100k_nested_items_series_is_exit_2_in_a_real_medseg_process(tmp_path):
    """The issue's crash: ~100,000 nested items in one slice of a series ended `medseg info` with
    signal 11 inside GDCM. A fresh process, as a user runs it."""
    folder = tmp_path / "series"
    stack = db.pixels(16, 16, frames=3)
    for k in range(3):
        data = db.write(db.image_dataset(stack[k], instance=k + 1, ipp=(0, 0, 1.5 * k)), folder / f"IM{k}.dcm").read_bytes()
        if k == 1:
            (folder / f"IM{k}.dcm").write_bytes(data + db.nested_undefined(100_000, tag=(0xFFFA, 0xFFFA)))
    proc = subprocess.run([sys.executable, "-m", "app.cli", "info", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "IM1.dcm: not a readable DICOM file (sequences nested more than 32 deep" in lines[0], lines


def test_header_only_16000_square_nifti_is_refused_at_the_default_limit(tmp_path, monkeypatch):
    """The issue's 352-byte header that 'opened' as 16000 x 16000 (7-9 GB): within the default
    voxel limit (2**28), so it is the byte count that refuses it."""
    monkeypatch.delenv("MEDSEG_MAX_VOXELS", raising=False)
    header = nib.Nifti1Header()
    header.set_data_shape((16000, 16000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    (tmp_path / "h.nii").write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(StudyError, match="truncated: 352 of the 512000352 bytes"):
        read_study(tmp_path / "h.nii")
