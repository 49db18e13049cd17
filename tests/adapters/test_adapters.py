"""Adapters: injection into both encoders, fine-tuning on real slices, saving, reloading, the CLI."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from adapters.inject import AdapterConfig, count_parameters, inject, is_adapter_key
from adapters.io import apply_adapter, list_adapters, load_adapted, read_metadata, save_adapter
from adapters.train import TrainSettings, cosine_lr, finetune, probe_loss, selection_score, validate
from adapters.train_data import check_disjoint, load_cases, slice_key, split_by_structure
from app.cli import main
from evaluation.clicks import Protocol
from evaluation.runner import EvalSettings, evaluate_case
from models.checkpoint import CheckpointError, sha256_of
from models.prompts import Prompts
from models.registry import get_spec
from tests.conftest import DATA

CHECKPOINT = get_spec("litemedsam").default_checkpoint
TRAIN_CASES = ("mr_t1_colin27_slabA_caudate_L_k011", "mr_t1_colin27_slabA_putamen_L_k013")
BOX = np.array([65, 59, 91, 90], np.float32)  # caudate L on slice 11, +5 px


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def litemedsam(litemedsam_base):
    """These tests are about the adapter mechanism on the box-trained base: LiteMedSAM without the
    shipped click model (docs/clicks.md), under the name adapters record ("litemedsam")."""
    import copy

    seg = copy.copy(litemedsam_base)
    seg.name = "litemedsam"
    return seg


@pytest.fixture(scope="module")
def base_features(litemedsam):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, litemedsam.model.image_encoder(x)


# kind, most trainable parameters as a share of the whole model (LiteMedSAM: 9.8 M)
@pytest.mark.parametrize("kind, max_share", [("sam_med2d", 0.10), ("sam_adapter", 0.005), ("lora", 0.005)])
def test_inject_into_litemedsam_freezes_base_and_leaves_shared_model_alone(litemedsam, base_features, kind, max_share):
    shared = litemedsam.model
    state_before = {k: v.clone() for k, v in shared.state_dict().items()}
    flags_before = {k: p.requires_grad for k, p in shared.named_parameters()}
    modules_before, hooks_before = len(list(shared.modules())), _hooks(shared)
    config = AdapterConfig(kind=kind)

    adapted = inject(shared, config)

    trainable, total = count_parameters(adapted)
    assert 0 < trainable <= max_share * total
    for name, p in adapted.named_parameters():
        assert p.requires_grad == is_adapter_key(name, config), name
    assert not any(k.startswith("image_encoder.layers.0.") and is_adapter_key(k, config) for k in adapted.state_dict())
    # the shared model: same tensors, same flags, no new module or hook
    assert {k: p.requires_grad for k, p in shared.named_parameters()} == flags_before
    assert len(list(shared.modules())) == modules_before and _hooks(shared) == hooks_before
    for k, v in shared.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    # an untrained adapter is the identity: the base model's features exactly
    x, ref = base_features
    with torch.no_grad():
        torch.testing.assert_close(adapted.image_encoder(x), ref, rtol=0, atol=0)


class _TinySam(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=32,
            qkv_bias=True, use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
        )
        self.mask_decoder = nn.Linear(4, 4)


@pytest.mark.parametrize("kind", ["sam_med2d", "sam_adapter", "lora"])
def test_same_mechanism_injects_into_segment_anything_vit(kind):
    """A tiny random SAM ViT (no real ViT weights here): identity at start, then the adapter acts."""
    torch.manual_seed(0)
    model = _TinySam().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.image_encoder(x)
    config = AdapterConfig(kind=kind, train_decoder=True)
    adapted = inject(model, config)
    with torch.no_grad():
        torch.testing.assert_close(adapted.image_encoder(x), ref, rtol=0, atol=0)
        for name, p in adapted.named_parameters():
            assert p.requires_grad == is_adapter_key(name, config), name
            if p.requires_grad and name.startswith("image_encoder."):
                p.add_(0.05 * torch.randn_like(p))
        assert (adapted.image_encoder(x) - ref).abs().max() > 1e-3
        torch.testing.assert_close(model.image_encoder(x), ref, rtol=0, atol=0)  # the original is untouched
    assert any(k.startswith("mask_decoder.") for k in adapted.state_dict() if is_adapter_key(k, config))


def test_adapter_config_refuses_bad_values():
    with pytest.raises(ValueError, match="kind"):
        AdapterConfig(kind="prefix")
    with pytest.raises(ValueError, match="unknown adapter setting"):
        AdapterConfig.from_dict({"kind": "lora", "rank": 3})


def _manifest(path, case_ids) -> str:
    with open(DATA / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["case_id"] in case_ids]
    for r in rows:
        r["image"], r["label"] = str(DATA / r["image"]), str(DATA / r["label"])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, litemedsam):
    """A SAM-Med2D adapter trained 1 step (its time budget ends it), then resumed for a 2nd, on two real MR slices (CPU)."""
    folder = tmp_path_factory.mktemp("adapter")
    manifest = _manifest(folder / "train.csv", TRAIN_CASES)
    out = folder / "run"
    config = AdapterConfig(kind="sam_med2d")
    common = dict(batch_size=2, lr=1.5e-3, clicks=1, box_prob=1.0, augment=False, val_fraction=0.0, seed=0)
    budget = TrainSettings(max_steps=5, max_minutes=1e-4, **common)  # 6 ms: spent by the first step
    first = finetune(litemedsam, CHECKPOINT, manifest, out, config, budget, progress=False)
    result = finetune(
        litemedsam, CHECKPOINT, manifest, out, config, TrainSettings(max_steps=2, **common), resume=True, progress=False
    )
    return {"manifest": manifest, "out": out, "first": first, "result": result, "cases": load_cases(manifest)}


@pytest.fixture(scope="module")
def reloaded(trained, litemedsam):
    """The saved adapter loaded back onto the shared base, and its mask for a box on the first slice."""
    seg = apply_adapter(litemedsam, trained["out"], CHECKPOINT)
    result = seg.predict(seg.embed(trained["cases"][0].image), Prompts(box=BOX))
    return seg, result


def test_finetune_lowers_the_loss_and_resumes(trained, litemedsam):
    """The fixed-box loss on a training slice falls (measured 0.59 -> 0.15 after the 2 steps)."""
    cases = trained["cases"][:1]
    before = probe_loss(litemedsam, cases)
    after = probe_loss(trained["result"].segmenter, cases)
    assert after < before - 0.05, (before, after)
    assert trained["first"].steps == 1 and trained["first"].stopped_early  # the time budget stopped it
    assert trained["result"].steps == 2
    assert [r["step"] for r in trained["result"].history if "train_loss" in r] == [1, 2]
    assert all(r["lr"] > 0 for r in trained["result"].history if "train_loss" in r)
    assert torch.load(trained["out"] / "checkpoint.pt", weights_only=True)["step"] == 2
    assert (trained["out"] / "curves.png").is_file() and (trained["out"] / "history.csv").is_file()


def test_saved_adapter_is_small_and_reloads_to_identical_outputs(trained, reloaded, litemedsam):
    out = trained["out"]
    assert (out / "adapter.safetensors").stat().st_size < 0.1 * CHECKPOINT.stat().st_size
    meta = read_metadata(out)
    assert meta["base_model"] == "litemedsam" and meta["base_sha256"] == sha256_of(CHECKPOINT)
    assert meta["adapter"]["kind"] == "sam_med2d" and meta["data"]["train"]["case_ids"] == list(TRAIN_CASES)
    seg, b = reloaded
    trained_seg = trained["result"].segmenter
    a = trained_seg.predict(trained_seg.embed(trained["cases"][0].image), Prompts(box=BOX))
    np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, rtol=0, atol=1e-5)
    assert np.array_equal(a.masks, b.masks)
    assert seg.name != litemedsam.name  # embeddings of the base cannot be decoded by the adapter


def test_adapter_refuses_other_base_weights(trained, litemedsam, tmp_path):
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the LiteMedSAM weights")
    with pytest.raises(CheckpointError, match="sha256"):
        apply_adapter(litemedsam, trained["out"], other)
    with pytest.raises(CheckpointError, match="trained on model 'litemedsam'"):
        load_adapted(trained["out"], model="mobilesam")
    with pytest.raises(CheckpointError, match="no adapter.json"):
        read_metadata(tmp_path)


def test_list_adapters_skips_broken_folders(trained, litemedsam, tmp_path):
    good = tmp_path / "adapters" / "caudate_v1"
    save_adapter(
        inject(litemedsam.model, AdapterConfig(kind="lora")), AdapterConfig(kind="lora"), good,
        base_model="litemedsam", base_sha256=sha256_of(CHECKPOINT), validation={"box_dice": 0.8},
    )
    (tmp_path / "adapters" / "broken").mkdir()
    (tmp_path / "adapters" / "broken" / "adapter.json").write_text("{")
    found = list_adapters(tmp_path)
    assert [a.name for a in found] == ["caudate_v1"]
    assert found[0].kind == "lora" and found[0].base_model == "litemedsam" and found[0].validation["box_dice"] == 0.8
    assert json.loads((good / "adapter.json").read_text())["adapter"]["lora_rank"] == 4


def test_cli_segment_with_adapter_matches_the_api(trained, reloaded, tmp_path, capsys):
    case = trained["cases"][0]
    png = tmp_path / "slice.png"
    Image.fromarray(case.image[:, :, 0]).save(png)
    out = tmp_path / "m.png"
    code = main(["segment", str(png), "--box", "65", "59", "91", "90", "--adapter", str(trained["out"]), "--output", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    expected = reloaded[1].best_mask
    assert np.array_equal(np.asarray(Image.open(out)) > 0, expected)
    code = main(["segment", str(png), "--box", "65", "59", "91", "90", "--model", "mobilesam",
                 "--adapter", str(trained["out"]), "--output", str(out)])
    assert code == 2 and "trained on model 'litemedsam'" in capsys.readouterr().err


def test_validation_scores_what_medseg_eval_measures(litemedsam):
    """validate() computes Dice only, on medseg eval's protocol: same box and click Dice as evaluate_case."""
    case = [c for c in load_cases(DATA / "manifest.csv") if c.spec.case_id == "mr_t1_colin27_slabA_thalamus_L_k011"][0]
    rows = evaluate_case(litemedsam, case, EvalSettings(protocol=Protocol("box+clicks", 1)))
    scores = validate(litemedsam, [case], 1, base_box_dice=rows[0].dice + 0.1)
    assert scores["box_dice"] == pytest.approx(rows[0].dice, abs=1e-6)
    assert scores["box_clicks1_dice"] == pytest.approx(rows[-1].dice, abs=1e-6)
    # 0.1 of box Dice below the base costs 3 x 0.1 on top of the mean
    assert scores["score"] == pytest.approx((rows[0].dice + rows[-1].dice) / 2 - 0.3, abs=1e-6)


def test_selection_score_and_schedule():
    base = selection_score(0.80, 0.60, 0.80)
    assert base == pytest.approx(0.70)
    assert selection_score(0.80, 0.70, 0.80) > base  # clicks help, box kept: better
    assert selection_score(0.75, 0.75, 0.80) < base  # 5 box points lost for 15 click points: worse
    assert selection_score(0.85, 0.60, 0.80) == pytest.approx(0.725)  # a box gain is not penalised
    # the cosine follows the time budget when it is further along than the steps
    assert cosine_lr(1e-3, 50, 1000, 10, time_fraction=0.0) > 0.99e-3
    assert cosine_lr(1e-3, 50, 1000, 10, time_fraction=0.5) == pytest.approx(0.5e-3)
    assert cosine_lr(1e-3, 50, 1000, 10, time_fraction=1.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(1e-3, 5, 1000, 10, time_fraction=1.0) == pytest.approx(0.6e-3)  # the warm-up comes first


def test_split_by_structure_never_trains_on_a_validation_structure_or_slice():
    mr = [c for c in load_cases(DATA / "manifest.csv") if c.spec.attributes.get("modality") == "MR-T1"]
    train, val = split_by_structure(mr, 0.3, seed=0)
    assert train and val
    assert not {c.spec.structure for c in train} & {c.spec.structure for c in val}
    assert not {slice_key(c.spec) for c in train} & {slice_key(c.spec) for c in val}
    check_disjoint(train, val)  # would raise on a shared slice
    assert split_by_structure(mr, 0.3, seed=0) == (train, val)  # reproducible


def test_cli_finetune_refuses_a_bad_time_budget(tmp_path, capsys):
    code = main(["finetune", str(DATA / "manifest.csv"), "--adapter", "lora", "--epochs", "1", "--max-minutes", "0",
                 "--output", str(tmp_path / "run")])
    assert code == 2 and "--max-minutes must be above 0" in capsys.readouterr().err


def test_click_prompt_training_leaves_the_box_path_alone(litemedsam):
    """--train-click-prompts trains the click and mask-prompt embeddings only: a box alone gives the
    same logits whatever they learn, while a click (or a fed-back mask) does see them."""
    config = AdapterConfig(kind="lora", train_click_prompts=True)
    adapted = inject(litemedsam.model, config)
    trained = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in adapted.named_parameters() if is_adapter_key(n, config)}
    assert {n for n in trained if n.startswith("prompt_encoder.")} == {
        "prompt_encoder.point_embeddings.0.weight", "prompt_encoder.point_embeddings.1.weight",
        "prompt_encoder.not_a_point_embed.weight",
        *(n for n, _ in adapted.named_parameters() if n.startswith("prompt_encoder.mask_downscaling.")),
    }
    assert not any(n.startswith("mask_decoder.") for n in trained)

    seg = _segmenter_with(litemedsam, adapted)
    image = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    emb = seg.embed(image)
    box = Prompts(box=np.array([30, 30, 90, 90], dtype=np.float32))
    click = box.with_click(60, 60, positive=True)
    before_box, before_click = seg.predict(emb, box).low_res_logits, seg.predict(emb, click).low_res_logits
    with torch.no_grad():  # what training could do to them
        for n, p in adapted.named_parameters():
            if n in trained and n.startswith("prompt_encoder."):
                p.add_(1.0)
    assert np.array_equal(seg.predict(emb, box).low_res_logits, before_box)
    assert not np.allclose(seg.predict(emb, click).low_res_logits, before_click)


def _segmenter_with(base, model):
    """The base segmenter's pipeline around another model (same name, so its embeddings decode)."""
    import copy

    seg = copy.copy(base)
    seg.model = model
    return seg


def _click_after_box(seg, emb, box: np.ndarray, x: int, y: int):
    """A box, then one positive click with the box's logits fed back (``box+clicks``'s second step)."""
    first = seg.predict(emb, Prompts(box=box))
    return first, seg.predict(emb, Prompts(box=box, mask_logits=first.best_logits).with_click(x, y, positive=True))


def test_click_refiner_starts_as_a_no_op_and_never_touches_the_box_path(litemedsam, trained):
    """An untrained refiner returns the fed-back logits unchanged (a click starts out doing nothing);
    whatever it learns, a box alone still goes through the frozen base decoder."""
    config = AdapterConfig(kind="lora", click_refiner=True)
    adapted = inject(litemedsam.model, config)
    refiner = {n for n, p in adapted.named_parameters() if n.startswith("click_refiner.")}
    assert refiner and all(is_adapter_key(n, config) for n in refiner)
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if n.startswith(("mask_decoder.", "prompt_encoder.")))
    seg = _segmenter_with(litemedsam, adapted)
    image = trained["cases"][0].image  # caudate L, slice 11
    emb, base_emb = seg.embed(image), litemedsam.embed(image)
    box, click = _click_after_box(seg, emb, BOX, 78, 75)
    assert np.array_equal(box.low_res_logits, litemedsam.predict(base_emb, Prompts(box=BOX)).low_res_logits)
    assert np.array_equal(click.low_res_logits, box.low_res_logits)
    with torch.no_grad():  # what training could do to it
        for n, p in adapted.named_parameters():
            if n in refiner:
                p.add_(0.05 * torch.randn_like(p))
    box2, click2 = _click_after_box(seg, emb, BOX, 78, 75)
    assert np.array_equal(box2.low_res_logits, box.low_res_logits)
    assert not np.allclose(click2.low_res_logits, box.low_res_logits)
    point = Prompts(points=np.array([[78, 75]], np.float32), point_labels=np.array([1]))
    assert np.array_equal(  # a first click (no fed-back mask) is not a correction: the base decoder answers
        seg.predict(emb, point, multimask_output=True).low_res_logits,
        litemedsam.predict(base_emb, point, multimask_output=True).low_res_logits,
    )


def test_click_refiner_training_makes_clicks_help_and_reloads_identically(tmp_path, litemedsam, trained):
    """A few CPU steps on one real slice: box+3 clicks goes from far below the box (the box-trained
    base, clicks fed back) to above it; the saved refiner reloads to the same click logits."""
    cases = trained["cases"][:1]
    manifest = _manifest(tmp_path / "train.csv", TRAIN_CASES[:1])
    before = validate(litemedsam, cases, 3)
    settings = TrainSettings(max_steps=4, batch_size=1, lr=2e-3, clicks=3, box_prob=1.0, augment=False,
                             val_fraction=0.0, warmup_steps=1, seed=0)
    result = finetune(litemedsam, CHECKPOINT, manifest, tmp_path / "run", AdapterConfig(kind="lora", click_refiner=True),
                      settings, progress=False)
    after = validate(result.segmenter, cases, 3)
    assert before["box_clicks3_dice"] < before["box_dice"] - 0.2, before
    assert after["box_clicks3_dice"] > after["box_dice"], after
    assert after["box_clicks3_dice"] > before["box_clicks3_dice"] + 0.3, (before, after)
    reloaded = apply_adapter(litemedsam, tmp_path / "run", CHECKPOINT)
    image = cases[0].image
    _, ours = _click_after_box(result.segmenter, result.segmenter.embed(image), BOX, 78, 75)
    _, back = _click_after_box(reloaded, reloaded.embed(image), BOX, 78, 75)
    np.testing.assert_allclose(back.low_res_logits, ours.low_res_logits, atol=1e-5)


@pytest.mark.parametrize("text, kind", [("5", "int"), ('"base_model base_sha256 adapter"', "str"), ("null", "NoneType")])
def test_an_adapter_json_that_is_no_object_is_one_checkpoint_error(tmp_path, text, kind):
    """`--adapter DIR` from a colleague whose adapter.json is `5` or a string raised TypeError/AttributeError
    (a traceback from `medseg segment --adapter`; list_adapters skips only CheckpointError)."""
    (tmp_path / "adapter.json").write_text(text)
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"adapter.json holds a JSON {kind}; expected an object"):
        read_metadata(tmp_path)


def _lora(litemedsam, seed: int):
    """A LoRA adapter on LiteMedSAM with random (seeded) tensors, so two saves differ."""
    config = AdapterConfig(kind="lora")
    model = inject(litemedsam.model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_key(name, config):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, config


def test_a_resave_interrupted_between_its_two_writes_never_loads_a_mismatched_pair(litemedsam, tmp_path, monkeypatch):
    """Re-saving an adapter replaced adapter.safetensors, then adapter.json: a crash between the two left the new
    weights beside the old metadata, which loaded as if valid (other settings or validation scores than the
    weights had). Now the next load gets the old pair or refuses with one line naming the file."""
    import adapters.io as adapter_io

    folder = tmp_path / "caudate"
    digest = sha256_of(CHECKPOINT)
    old_model, config = _lora(litemedsam, 0)
    save_adapter(old_model, config, folder, base_model="litemedsam", base_sha256=digest, validation={"box_dice": 0.5})
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)
    seg = apply_adapter(litemedsam, folder, CHECKPOINT)
    old_logits = seg.predict(seg.embed(image), Prompts(box=BOX)).low_res_logits

    new_model, _ = _lora(litemedsam, 1)
    real_replace, calls = os.replace, []

    def crash_on_the_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash between the two writes")
        real_replace(src, dst)

    monkeypatch.setattr(adapter_io.os, "replace", crash_on_the_second)
    with pytest.raises(OSError, match="simulated crash"):
        save_adapter(new_model, config, folder, base_model="litemedsam", base_sha256=digest,
                     validation={"box_dice": 0.9})
    monkeypatch.setattr(adapter_io.os, "replace", real_replace)
    try:
        seg = apply_adapter(litemedsam, folder, CHECKPOINT)
    except CheckpointError as e:  # refused: one line naming the weights file
        assert "\n" not in str(e) and "adapter.safetensors" in str(e) and "adapter.json" in str(e), str(e)
    else:  # or the old pair, whole
        logits = seg.predict(seg.embed(image), Prompts(box=BOX)).low_res_logits
        np.testing.assert_allclose(logits, old_logits, atol=1e-6)
        assert read_metadata(folder)["validation"] == {"box_dice": 0.5}
    save_adapter(new_model, config, folder, base_model="litemedsam", base_sha256=digest, validation={"box_dice": 0.9})
    seg = apply_adapter(litemedsam, folder, CHECKPOINT)  # saved again whole: loads
    assert not np.allclose(seg.predict(seg.embed(image), Prompts(box=BOX)).low_res_logits, old_logits, atol=1e-3)


@pytest.mark.parametrize("setting, told", [
    ({"kind": "lora", "lora_rank": 10**9}, "lora_rank must be a whole number from 1 to 1024, got 1000000000"),
    ({"kind": "lora", "lora_rank": True}, "lora_rank must be a whole number from 1 to 1024, got True"),
    ({"kind": "lora", "lora_rank": 2.5}, "lora_rank must be a whole number from 1 to 1024, got 2.5"),
    ({"kind": "lora", "lora_alpha": "8"}, "lora_alpha must be a finite number, got '8'"),
    ({"kind": "sam_adapter", "scale_factor": 0}, "scale_factor must be a whole number from 1 to 1024, got 0"),
    ({"kind": "sam_adapter", "freq_nums": 5}, "freq_nums must be in (0, 1), got 5"),
    ({"kind": "sam_med2d", "mlp_ratio": 1e9}, "mlp_ratio must be in (0, 4], got 1000000000.0"),
    ({"kind": "sam_med2d", "train_decoder": "yes"}, "train_decoder must be true or false, got 'yes'"),
])
def test_adapter_settings_no_model_can_hold_are_one_line_before_anything_is_built(tmp_path, setting, told, capsys):
    """Session 30: `medseg segment --adapter DIR` with an adapter.json (a colleague's, or damaged) holding lora_rank
    10^9 or mlp_ratio 1e9 tried to allocate 0.5 TB / 4 TB and ended in a traceback (RuntimeError: can't allocate
    memory); scale_factor 0 in ZeroDivisionError; lora_rank true or 2.5 in TypeError. Each setting is now checked for
    its type and range when the settings are read, before the base model is touched, in one line."""
    sha = sha256_of(CHECKPOINT)
    meta = {"format": 1, "base_model": "litemedsam", "base_sha256": sha, "adapter": setting, "weights_sha256": "00"}
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    (tmp_path / "adapter.safetensors").write_bytes(b"x")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "img.png")
    code = main(["segment", str(tmp_path / "img.png"), "--box", "1", "1", "20", "20", "--adapter", str(tmp_path),
                 "--backend", "torch", "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"{tmp_path / 'adapter.json'}: bad adapter settings: {told}" in err, err
