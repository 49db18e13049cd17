"""Checkpoint handling of the zoo: every error names the file and the fix; ``medseg models`` and
``medseg convert-checkpoint``. Uses MobileSAM (the smallest official key list, 439 entries) with the
synthetic weights of its parity fixture, and the real LiteMedSAM file as "another model's file".
"""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from models.checkpoint import CheckpointError
from models.registry import get_spec, list_specs, load_segmenter
from tests.conftest import PARITY, ROOT
from tests.synthetic_weights import synthetic_state_dict

SAM2 = tuple(f"{v}_hiera_{s}" for v in ("sam2", "sam2.1") for s in ("tiny", "small", "base_plus", "large"))
ZOO = ("litemedsam", "mobilesam", "sam_adapter", "sam_med2d", "sam_unet", "sam_vit_b", "sam_vit_h", "sam_vit_l",
       "tinysam", "medsam2", *SAM2)


@pytest.fixture(scope="session")
def mobilesam_state() -> dict[str, torch.Tensor]:
    return synthetic_state_dict(PARITY / "mobilesam")


@pytest.fixture(scope="session")
def pickled_with_optimizer(tmp_path_factory, mobilesam_state):
    """A file shaped like the official SAM-Med2D / SAM-UNet ones: weights plus a pickled optimizer."""
    path = tmp_path_factory.mktemp("ckpt") / "trained.pth"
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    torch.save({"model": mobilesam_state, "optimizer": optimizer}, path)
    return path


def _load_error(name: str, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_segmenter(name, checkpoint=path)
    return str(info.value)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.pth"
    message = _load_error("mobilesam", path)
    assert str(path) in message and "does not exist" in message


def test_missing_default_weights_name_the_expected_file_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_segmenter("sam_med2d")
    message = str(info.value)
    assert str(tmp_path / "sam-med2d_b.safetensors") in message
    assert "medseg convert-checkpoint" in message  # the official file needs converting first


def test_another_models_file_is_refused_with_the_differences(tmp_path):
    # The real LiteMedSAM checkpoint: a TinyViT too, but 1x1 patch embedding and no classifier head.
    path = ROOT / "weights" / "lite_medsam.pth"
    message = _load_error("mobilesam", path)
    assert str(path.resolve()) in message and "does not fit model 'mobilesam'" in message
    assert "missing: image_encoder.norm_head.weight" in message
    assert "wrong shape: image_encoder.patch_embed.seq.0.c.weight (32, 3, 1, 1) vs (32, 3, 3, 3)" in message
    assert "checkpoint of another model" in message


@pytest.mark.parametrize(
    "edit,expected",
    [
        ("extra", "unexpected: image_encoder.extra_adapter.weight"),
        ("drop", "missing: mask_decoder.iou_token.weight"),
    ],
)
def test_extra_or_missing_keys_are_named(tmp_path, mobilesam_state, edit, expected):
    state = dict(mobilesam_state)
    if edit == "extra":
        state["image_encoder.extra_adapter.weight"] = torch.zeros(3)
    else:
        del state["mask_decoder.iou_token.weight"]
    path = tmp_path / f"{edit}.pth"
    torch.save(state, path)
    message = _load_error("mobilesam", path)
    assert expected in message and str(path) in message


def test_pickle_without_trust_says_exactly_what_to_run(pickled_with_optimizer, capsys):
    path = pickled_with_optimizer
    message = _load_error("mobilesam", path)
    assert f"medseg convert-checkpoint {path} {path.with_suffix('.safetensors')} --trust" in message
    # The same through the CLI: one line on stderr, exit code 2.
    out = path.with_suffix(".safetensors")
    rc = main(["convert-checkpoint", str(path), str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("medseg convert-checkpoint: error:")
    assert f"medseg convert-checkpoint {path} {out} --trust" in err


def test_convert_with_trust_writes_weights_only_file_that_loads(
    pickled_with_optimizer, mobilesam_state, tmp_path, capsys
):
    out = tmp_path / "mobile_sam.safetensors"
    assert main(["convert-checkpoint", str(pickled_with_optimizer), str(out), "--trust"]) == 0
    assert "439 tensors" in capsys.readouterr().out
    segmenter = load_segmenter("mobilesam", checkpoint=out)
    own = segmenter.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mobilesam_state.items())


def test_convert_needs_no_trust_for_a_weights_only_file(mobilesam_state, tmp_path, capsys):
    src, out = tmp_path / "plain.pth", tmp_path / "plain.safetensors"
    torch.save({"model": mobilesam_state}, src)
    assert main(["convert-checkpoint", str(src), str(out)]) == 0
    from safetensors.torch import load_file

    converted = load_file(str(out))
    assert converted.keys() == mobilesam_state.keys()
    assert all(torch.equal(converted[k], v) for k, v in mobilesam_state.items())


def test_convert_refuses_other_output_suffix(pickled_with_optimizer, tmp_path, capsys):
    assert main(["convert-checkpoint", str(pickled_with_optimizer), str(tmp_path / "x.pth"), "--trust"]) == 2
    assert ".safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["plain", "wrapped"])
def test_both_checkpoint_forms_load_through_load_segmenter(tmp_path, mobilesam_state, form):
    path = tmp_path / f"{form}.pt"
    torch.save(mobilesam_state if form == "plain" else {"model": mobilesam_state}, path)
    own = load_segmenter("mobilesam", checkpoint=path).model.state_dict()
    assert own.keys() == mobilesam_state.keys()
    assert all(torch.equal(own[k], v) for k, v in mobilesam_state.items())


def test_registry_lists_every_variant_with_size_and_prompts():
    specs = {s.name: s for s in list_specs()}
    assert tuple(sorted(specs)) == tuple(sorted(ZOO + ("litemedsam-base",)))
    # litemedsam-base is litemedsam without the shipped click model: the same weights file
    assert specs["litemedsam-base"].weight_file == specs["litemedsam"].weight_file
    specs.pop("litemedsam-base")
    assert {n: specs[n].input_size for n in ZOO} == {
        "litemedsam": 256, "mobilesam": 1024, "sam_adapter": 1024, "sam_med2d": 256,
        "sam_unet": 256, "sam_vit_b": 1024, "sam_vit_h": 1024, "sam_vit_l": 1024,
        "tinysam": 1024, "medsam2": 512, **{n: 1024 for n in SAM2},
    }  # fmt: skip
    assert specs["sam_adapter"].prompt_types == ("auto",)
    assert len({s.weight_file for s in specs.values()}) == len(ZOO)  # no two variants share a file name


def test_models_command_shows_present_and_missing_weights(tmp_path, monkeypatch, mobilesam_state, capsys):
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path))
    torch.save(mobilesam_state, tmp_path / get_spec("mobilesam").weight_file)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert tuple(sorted(rows)) == tuple(sorted(ZOO + ("litemedsam-base",)))
    assert rows["mobilesam"]["weights"] == "present"
    assert rows["sam_vit_b"]["weights"] == "missing"
    assert rows["sam_vit_b"]["file"] == str(tmp_path / "sam_vit_b_01ec64.pth")
    assert rows["sam_adapter"]["prompt_types"] == ["auto"] and rows["sam_med2d"]["input_size"] == 256
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert f"present: {tmp_path / 'mobile_sam.pt'}" in text
    assert f"missing: expects {tmp_path / 'sam_vit_h_4b8939.pth'}" in text


def test_unknown_sam_variant_is_a_value_error():
    from models.sam import build_sam

    with pytest.raises(ValueError, match="vit_b"):
        build_sam("vit_x")


@pytest.mark.parametrize(
    "variant,depth,dim,global_blocks",
    [("vit_b", 12, 768, (2, 5, 8, 11)), ("vit_l", 24, 1024, (5, 11, 17, 23)), ("vit_h", 32, 1280, (7, 15, 23, 31))],
)
def test_sam_registry_builds_each_size(variant, depth, dim, global_blocks):
    """ViT-L/H share ViT-B's path; built on the meta device (shapes only, no memory, no init time)."""
    from models.sam import build_sam

    with torch.device("meta"):
        sam = build_sam(variant)
    blocks = sam.image_encoder.blocks
    assert len(blocks) == depth and tuple(sam.image_encoder.pos_embed.shape) == (1, 64, 64, dim)
    assert tuple(i for i, b in enumerate(blocks) if b.window_size == 0) == global_blocks
    assert get_spec(f"sam_{variant}").input_size == 1024


@pytest.mark.parametrize("name", [n for n in ZOO if n != "litemedsam"])
def test_without_checkpoint_the_error_names_the_expected_file(tmp_path, monkeypatch, name):
    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_segmenter(name)
    assert str(tmp_path / get_spec(name).weight_file) in str(info.value)
