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

    calls = []
    refiner = seg.base.model.click_refiner
    handle = refiner.register_forward_hook(lambda *a: calls.append(1))
    try:
        vm = controller.click(ctx, sid, *INSIDE)  # a first positive click
    finally:
        handle.remove()
    assert calls, "the click did not reach the click model"
    session = ctx.store.get(sid)
    assert session.labels.any() and "Traceback" not in (vm.status or "")


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
