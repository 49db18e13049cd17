"""A folder or zip holding a DICOM series and a NIfTI opens the series and names the NIfTI left out, on the CLI's
warning line and the UI's status line (session 15's adversarial pass: it said only "Opened study.zip.")."""

from __future__ import annotations

import shutil

from data.readers import read_study
from tests.conftest import SAMPLES

NIFTI_GZ = SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


def test_a_nifti_beside_a_dicom_series_is_named_as_left_out(tmp_path):
    """A zip of a series and its NIfTI conversion opened the series and said only "Opened study.zip."."""
    import warnings

    import numpy as np

    from app.controller import AppContext, open_upload
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore

    series = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
    folder = tmp_path / "study"
    (folder / "DICOM").mkdir(parents=True)
    for f in series:
        shutil.copy(f, folder / "DICOM" / f.name)
    shutil.copy(NIFTI_GZ, folder / "t1.nii.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_study(folder)
    assert volume.source.format == "dicom-series" and volume.array.shape[0] == len(series)
    notes = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(notes) == 1 and "left out 1 NIfTI file(s) beside it (t1.nii.gz): open one alone" in notes[0], notes
    shutil.make_archive(str(tmp_path / "study"), "zip", folder)
    runner = ModelRunner("cpu")
    ctx = AppContext(store=SessionStore(tmp_path / "sessions"), runner=runner, prefetcher=Prefetcher(runner))
    view = open_upload(ctx, ctx.store.create().id, [str(tmp_path / "study.zip")])
    assert "Opened study.zip." in view.status and "left out 1 NIfTI file(s) beside it (t1.nii.gz)" in view.status
    assert np.asarray(view.image).size and str(tmp_path) not in view.status, view.status
