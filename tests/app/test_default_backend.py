"""The UI and the CLI run the default CPU backend (the fastest that keeps fp32's Dice), say so, and clicks
still reach the click model through it (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from app import controller
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionStore
from runtime.backend_choice import ENV_VAR, choose

CT_NAME = "CT head (DICOM series, 12 slices)"
INSIDE = (256, 240)  # display pixels inside the brain of the CT's shown coronal slice


@pytest.fixture()
def default_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)  # tests/conftest.py pins torch for the rest of the suite
    return choose("litemedsam", "cpu", env={})


def test_ui_runs_the_default_backend_and_its_status_says_which(tmp_path, default_env):
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    seg = runner.segmenter("litemedsam")
    assert default_env.backend != "torch" and seg.name == f"litemedsam+{default_env.backend}"
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    ready = controller.warm(ctx, sid).status
    assert f"backend {default_env.backend}" in ready and "within 0.005" in ready

    controller.click(ctx, sid, *INSIDE)  # a lone first click: the base decoder's candidates, by design
    calls = []
    refiner = seg.refiner  # the click model's ONNX export (runtime.onnx_decoder_export), run by ONNX Runtime
    run = refiner.run
    refiner.run = lambda *a, **k: calls.append(1) or run(*a, **k)
    try:
        vm = controller.click(ctx, sid, INSIDE[0] + 20, INSIDE[1] + 10)  # a refining click
    finally:
        del refiner.run  # the class's method again
    assert calls, "the refining click did not reach the click model"
    session = ctx.store.get(sid)
    assert session.labels.any() and "⚠" not in (vm.status or "")


def test_ui_backend_override(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    runner = ModelRunner("cpu")
    assert runner.segmenter("litemedsam").name == "litemedsam"
    assert runner.backend_choice("litemedsam").source == "env"
    flagged = ModelRunner("cpu", backend="onnx-int8-fast")  # medseg serve --backend wins over the environment
    assert flagged.backend_choice("litemedsam").backend == "onnx-int8-fast"


def test_cli_segment_uses_the_default_backend(tmp_path, default_env):
    """`medseg segment` with no --backend: the default backend's segmenter, a mask on the CT written."""
    import SimpleITK as sitk

    import runtime
    from app.cli import main
    from tests.conftest import SAMPLES

    used = []
    real = runtime.load_segmenter

    def spy(name, checkpoint=None, device="cpu", backend="torch"):
        used.append(backend)
        return real(name, checkpoint, device, backend)

    out = tmp_path / "mask.nii.gz"
    try:
        runtime.load_segmenter = spy
        rc = main(["segment", str(SAMPLES / "ct_head_0051_series"), "--slice", "6", "--box", "80", "70", "170", "170",
                   "-o", str(out)])
    finally:
        runtime.load_segmenter = real
    assert rc == 0 and used == [default_env.backend]
    assert np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))) > 500


def test_one_shot_works_on_the_default_backend(tmp_path, default_env):
    """PerSAM hooks PyTorch's mask decoder: with the ONNX-encoded default it decodes the ONNX embeddings with the
    torch variant, instead of refusing ("no PyTorch mask decoder")."""
    from app.render import Plane
    from data.readers import read_study
    from tests.conftest import DATA

    # the head of the CT slab's labels on the bundled series' slices (as the one-shot UI tests use it)
    ref, series_in_slab, slab_label = 6, slice(12, 24), DATA / "ct_head_0051_slabA_label.nii.gz"

    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    controller.set_slice(ctx, sid, ref)
    session = ctx.store.get(sid)
    plane = Plane.of(session.volume, session.view.view)
    head = read_study(slab_label).array[series_in_slab] > 0
    controller.mask(ctx, sid, np.asarray(plane.extract(head, ref)), False)  # painted, not predicted
    vm = controller.set_oneshot_reference(ctx, sid, "PerSAM")
    assert "Reference: label 1" in vm.status
    controller.apply_oneshot(ctx, sid, "slice range", ref + 1, ref + 1)
    got = np.asarray(plane.extract(ctx.store.get(sid).labels, ref + 1)) == 1
    want = np.asarray(plane.extract(head, ref + 1))
    assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.55  # torch: 0.683 (tests/test_ui_oneshot.py)
