"""Adapters in the UI's model list: an adapter folder under the weights folder becomes a model a
session can switch to, with the real LiteMedSAM on the bundled CT; a broken one is refused with a
message, and the session keeps its model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.inject import AdapterConfig, inject
from adapters.io import META_FILE, save_adapter
from app import controller
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionError, SessionStore
from models.checkpoint import sha256_of
from models.registry import get_spec
from tests.app.test_ui_interaction import BOX, CT_NAME, INSIDE

CHECKPOINT = get_spec("litemedsam").default_checkpoint
NAME = "litemedsam+clicks_v1"


@pytest.fixture(scope="module")
def weights(tmp_path_factory, litemedsam):
    """A weights folder with the real LiteMedSAM and two adapters: a LoRA + click refiner whose refiner
    weights were moved (what training does), and one recorded for other base weights."""
    root = tmp_path_factory.mktemp("weights")
    (root / CHECKPOINT.name).symlink_to(CHECKPOINT)
    config = AdapterConfig(kind="lora", click_refiner=True)
    model = inject(litemedsam.model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("click_refiner."):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    sha = sha256_of(CHECKPOINT)
    save_adapter(model, config, root / "adapters" / "clicks_v1", base_model="litemedsam", base_sha256=sha,
                 validation={"box_dice": 0.585, "box_clicks5_dice": 0.658})
    other = save_adapter(model, config, root / "adapters" / "other_base", base_model="litemedsam", base_sha256="0" * 64)
    assert (other / META_FILE).is_file()
    return root


@pytest.fixture()
def ctx(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(weights))
    runner = ModelRunner("cpu")
    return AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))


def _box_then_click(ctx, model: str) -> tuple[np.ndarray, np.ndarray]:
    """The CT's coronal slice 6 labels after a box, then after one positive click inside it."""
    sid = controller.start(ctx, None).session_id
    controller.open_sample(ctx, sid, CT_NAME)
    if model != "litemedsam":
        controller.switch_model(ctx, ctx.store.get(sid), model)  # the viewer's ``model`` action
        assert ctx.store.get(sid).model == model
    controller.set_display(ctx, sid, "default", 40, 400, 0.45, "box")
    controller.click(ctx, sid, *BOX[0])
    controller.click(ctx, sid, *BOX[1])
    after_box = ctx.store.get(sid).region("coronal", 6).copy()
    controller.set_display(ctx, sid, "default", 40, 400, 0.45, "point +")
    controller.click(ctx, sid, *INSIDE)
    return after_box, ctx.store.get(sid).region("coronal", 6).copy()


def test_adapters_are_offered_and_one_segments_through_its_refiner(ctx):
    choices = dict((name, label) for label, name in controller.model_choices())
    assert "litemedsam" in choices
    assert NAME in choices and "lora adapter 'clicks_v1'" in choices[NAME] and "box_dice 0.585" in choices[NAME]
    base_box, base_click = _box_then_click(ctx, "litemedsam")
    box, click = _box_then_click(ctx, NAME)
    assert base_box.any() and np.array_equal(box, base_box)  # a box never reaches the refiner; LoRA starts as identity
    assert not np.array_equal(click, base_click)  # the click went through the adapter's refiner


def test_an_adapter_for_other_base_weights_is_refused_and_the_model_stays(ctx):
    sid = controller.start(ctx, None).session_id
    with pytest.raises(SessionError, match="sha256"):
        controller.switch_model(ctx, ctx.store.get(sid), "litemedsam+other_base")
    with pytest.raises(SessionError, match="unknown model"):
        controller.switch_model(ctx, ctx.store.get(sid), "litemedsam+missing")
    assert ctx.store.get(sid).model == "litemedsam"
