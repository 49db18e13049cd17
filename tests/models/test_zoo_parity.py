"""Parity of the model zoo with the OFFICIAL code, on the synthetic-weight goldens of ``shared/parity``.

For each fixture the synthetic weights are regenerated once per session (checked against the
manifest's SHA-256), saved in the official file form, and loaded through ``load_segmenter``. For
the prompted models the image is saved as PNG and segmented by ``medseg segment ... --box`` in
process; the embedding that run computes (and the intermediate outputs, via forward hooks) is
reused for every other comparison, so each encoder runs once (SAM-Adapter goes through the CLI
too: it ignores the box). Tolerances: ``shared/parity/README.md`` §4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from tests.conftest import PARITY
from models.checkpoint import read_state_dict
from models.prompts import Prompts
from models.registry import load_segmenter
from models.segmenter import Embedding, Segmenter
from tests.synthetic_weights import check_against_manifest, manifest, synth_array

PROMPT_SETS = ("point1", "points2", "box", "box_point", "mask", "mask_sigmoid")
CLI_MODELS = ("sam_vit_b", "mobilesam", "sam_med2d", "sam_unet")
# The official checkpoint form of each model: SAM-Med2D and SAM-UNet save {'model': sd, ...}.
WRAPPED_FIRST = ("sam_med2d", "sam_unet")

# Intermediate outputs recorded in the goldens: golden name -> (module path, what to take).
HOOKS: dict[str, dict[str, tuple[str, str]]] = {
    "sam_med2d": {
        "enc_block0_adapter_in": ("image_encoder.blocks.0.Adapter", "input"),
        "enc_block0_adapter_out": ("image_encoder.blocks.0.Adapter", "output"),
    },
    "mobilesam": {"enc_layer3_out": ("image_encoder.layers.3", "output")},
    "sam_unet": {
        **{f"enc_resnet_f{i + 1}": ("resnet", f"output{i}") for i in range(4)},
        **{f"enc_adapters_in{i}_out": (f"adapters_in.{i}", "output") for i in range(4)},
        **{f"enc_adapters_bridge{i}_out": (f"adapters_bridge.{i}", "output") for i in range(3)},
        "enc_embedding_encoder_out": ("embedding_encoder", "output"),
    },
    "sam_adapter": {
        "enc_handcrafted_feature": ("image_encoder.prompt_generator.prompt_generator", "output"),
        "enc_embedding_feature": ("image_encoder.prompt_generator.embedding_generator", "output"),
    },
}


@dataclass
class ZooRun:
    """One fixture's model, loaded from its saved synthetic weights, and its single encoder run."""

    name: str
    golden: dict[str, np.ndarray]
    segmenter: Segmenter
    embedding: Embedding
    # Keys the other official file form (plain vs {'model': ...}) lacks or holds different tensors for.
    other_form_differs: list[str] | None = None
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    cli_rc: int | None = None
    cli_mask: np.ndarray | None = None


def _save_both_forms(name: str, state: dict[str, torch.Tensor], folder: Path) -> tuple[Path, Path]:
    plain, wrapped = folder / f"{name}_plain.pth", folder / f"{name}_wrapped.pth"
    torch.save(state, plain)
    torch.save({"model": state, "epoch": 1}, wrapped)
    return (wrapped, plain) if name in WRAPPED_FIRST else (plain, wrapped)


def _differing_keys(other: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """Keys present in only one of the state dicts, or whose tensors differ."""
    changed = [k for k in other.keys() & own.keys() if not torch.equal(other[k], own[k].cpu())]
    return sorted(changed + list(other.keys() ^ own.keys()))


def _hook(module: torch.nn.Module, what: str, key: str, store: dict):
    def record(_mod, args, output):
        if what == "input":
            store[key] = args[0].detach().clone()
        elif what.startswith("output") and what != "output":
            store[key] = output[int(what[len("output") :])].detach().clone()
        else:
            store[key] = output.detach().clone()

    return module.register_forward_hook(record)


def _run(name: str, folder: Path) -> ZooRun:
    fixture = PARITY / name
    # Not synthetic_state_dict(): its per-process cache would hold ~2.4 GB of zoo weights all session.
    state = {k: torch.from_numpy(synth_array(k, tuple(s), d)) for k, s, d in manifest(fixture)["state_dict"]}
    check_against_manifest(fixture, state)
    checkpoint, other_form = _save_both_forms(name, state, folder)
    del state
    golden = dict(np.load(fixture / "golden.npz"))
    segmenter = load_segmenter(name, checkpoint=str(checkpoint))
    captured: dict[str, torch.Tensor] = {}
    handles = [
        _hook(segmenter.model.get_submodule(path), what, key, captured)
        for key, (path, what) in HOOKS.get(name, {}).items()
    ]
    embeddings: list[Embedding] = []
    encode = segmenter.embed

    def recording_embed(image):
        embeddings.append(encode(image))
        return embeddings[-1]

    run = ZooRun(name, golden, segmenter, None, captured=captured)  # type: ignore[arg-type]
    try:
        png, out = folder / f"{name}_image.png", folder / f"{name}_mask.png"
        Image.fromarray(golden["image"]).save(png)
        segmenter.embed = recording_embed  # the CLI loads this same cached instance
        box = [str(v) for v in golden.get("box__box", np.array([215, 82, 305, 160])).tolist()]
        argv = ["segment", str(png), "--model", name, "--checkpoint", str(checkpoint), "--box", *box, "-o", str(out)]
        run.cli_rc = main(argv)
        run.cli_mask = np.asarray(Image.open(out)) > 0 if out.exists() else None
        run.other_form_differs = _differing_keys(read_state_dict(other_form), segmenter.model.state_dict())
    finally:
        segmenter.__dict__.pop("embed", None)
        for h in handles:
            h.remove()
        # All five models' files together are ~4.5 GB: keep only one model's on disk at a time.
        checkpoint.unlink(missing_ok=True)
        other_form.unlink(missing_ok=True)
    assert len(embeddings) == 1, f"{name}: expected one encoder run, got {len(embeddings)}"
    run.embedding = embeddings[0]
    return run


@pytest.fixture(scope="session")
def zoo_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo_weights")


@pytest.fixture(scope="session")
def zoo_runs(zoo_folder):
    """name -> ZooRun, computed on first use (each model built and encoded once per session)."""
    runs: dict[str, ZooRun] = {}

    def get(name: str) -> ZooRun:
        if name not in runs:
            runs[name] = _run(name, zoo_folder)
        return runs[name]

    return get


def _prompts(g: dict[str, np.ndarray], p: str) -> tuple[Prompts, bool]:
    mask = g.get(f"{p}__mask_input")
    prompts = Prompts(
        points=g.get(f"{p}__point_coords"),
        point_labels=g.get(f"{p}__point_labels"),
        box=g.get(f"{p}__box"),
        mask_logits=None if mask is None else mask.reshape(1, *mask.shape[-2:]),
    )
    return prompts, bool(g.get(f"{p}__multimask_output", False))


def assert_masks_match(mask: np.ndarray, golden: np.ndarray, logits: np.ndarray, what: str) -> None:
    """README rule: a pixel may differ only where |own upscaled logit| < 1e-3, and at most 0.01 %."""
    differ = mask != golden
    assert differ.sum() <= 1e-4 * differ.size, f"{what}: {int(differ.sum())} of {differ.size} pixels differ"
    assert np.all(np.abs(logits[differ]) < 1e-3), f"{what}: pixels with confident logits differ"


PROMPTED = ("sam_vit_b", "mobilesam", "sam_med2d", "sam_unet")
CASES = [
    (m, p) for m in PROMPTED for p in PROMPT_SETS if f"{p}__low_res_logits" in np.load(PARITY / m / "golden.npz").files
]


@pytest.mark.parametrize("name", PROMPTED + ("sam_adapter",))
def test_preprocessing_and_embedding_match_official(zoo_runs, name):
    run = zoo_runs(name)
    g = run.golden
    x = run.segmenter.preprocess(g["image"])
    np.testing.assert_allclose(x.cpu().numpy(), g["input_tensor"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(run.embedding.features.cpu().numpy(), g["image_embedding"], rtol=1e-4, atol=1e-4)
    assert run.embedding.original_size == tuple(g["image"].shape[:2])
    if "input_size" in g:
        assert run.embedding.input_size == tuple(g["input_size"])


@pytest.mark.parametrize("name", ["sam_med2d", "mobilesam", "sam_unet", "sam_adapter"])
def test_encoder_intermediates_match_official(zoo_runs, name):
    run = zoo_runs(name)
    for key in HOOKS[name]:
        golden = run.golden[key]
        ours = run.captured[key].float().cpu().numpy()
        tol = 2e-3 if golden.dtype == np.float16 else 1e-4
        np.testing.assert_allclose(ours, golden.astype(np.float32), rtol=tol, atol=tol, err_msg=f"{name} {key}")
    if name == "sam_unet":
        msf = run.embedding.extras["multi_scale_feature"].cpu().numpy()
        np.testing.assert_allclose(msf, run.golden["multi_scale_feature"], rtol=1e-4, atol=1e-4)


def test_sam_unet_model_image_is_pil_bilinear(zoo_runs):
    """The resized uint8 image SAM-UNet sees (before normalisation) equals the official one."""
    from models.sam import resize_longest_side

    run = zoo_runs("sam_unet")
    resized = resize_longest_side(run.golden["image"], 256)[0].numpy()
    np.testing.assert_array_equal(resized.astype(np.uint8), run.golden["model_image"])


@pytest.mark.parametrize("name,pset", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_prompt_set_matches_official(zoo_runs, name, pset):
    run = zoo_runs(name)
    g, seg = run.golden, run.segmenter
    prompts, multimask = _prompts(g, pset)
    with torch.inference_mode():
        sparse, _ = seg.encode_prompts(run.embedding, prompts)
    np.testing.assert_allclose(sparse.cpu().numpy(), g[f"{pset}__sparse_embeddings"], rtol=1e-5, atol=1e-5)
    result = seg.predict(run.embedding, prompts, multimask_output=multimask)
    np.testing.assert_allclose(result.low_res_logits, g[f"{pset}__low_res_logits"], rtol=1e-4, atol=1e-4)
    if f"{pset}__iou_predictions" in g:
        np.testing.assert_allclose(result.scores, g[f"{pset}__iou_predictions"], rtol=0, atol=1e-5)
    else:  # SAM-UNet has no IoU head
        assert np.isnan(result.scores).all()
    with torch.inference_mode():
        low_res = torch.from_numpy(result.low_res_logits)[None]
        logits = seg.geometry.logits_to_original(low_res, run.embedding.original_size)
    golden_masks = g[f"{pset}__masks"]
    assert result.masks.shape == golden_masks.shape
    for k in range(len(golden_masks)):
        assert_masks_match(result.masks[k], golden_masks[k], logits[0, k].numpy(), f"{name} {pset} mask {k}")


def test_sam_adapter_automatic_mask_matches_official(zoo_runs):
    run = zoo_runs("sam_adapter")
    g, seg = run.golden, run.segmenter
    result = seg.predict(run.embedding)  # no prompt: automatic mode
    np.testing.assert_allclose(result.low_res_logits[None], g["low_res_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.scores, g["iou_predictions"][0], rtol=0, atol=1e-5)
    with torch.inference_mode():
        logits = seg.logits_at_input_size(torch.from_numpy(result.low_res_logits)[None])[0, 0].numpy()
    assert_masks_match(logits > 0, g["masks_1024"], logits, "sam_adapter masks_1024")
    assert result.masks.shape == (1, *g["image"].shape[:2])
    # A prompt changes nothing: the model takes none by design.
    again = seg.predict(run.embedding, Prompts(box=[10, 10, 50, 50]))
    np.testing.assert_array_equal(again.low_res_logits, result.low_res_logits)


@pytest.mark.parametrize("name", CLI_MODELS)
def test_cli_segment_box_gives_official_mask(zoo_runs, name):
    """``medseg segment IMAGE.png --model NAME --checkpoint FILE --box ...`` reproduces ``box__masks``."""
    run = zoo_runs(name)
    assert run.cli_rc == 0
    golden = run.golden["box__masks"][0]
    assert run.cli_mask is not None and run.cli_mask.shape == golden.shape
    differ = run.cli_mask != golden
    assert differ.sum() <= 1e-4 * differ.size, f"{name}: {int(differ.sum())} pixels differ from the official box mask"


def test_cli_segment_runs_sam_adapter_automatically(zoo_runs):
    """SAM-Adapter through ``medseg segment``: the mask is the automatic one, whatever the box."""
    run = zoo_runs("sam_adapter")
    assert run.cli_rc == 0
    np.testing.assert_array_equal(run.cli_mask, run.segmenter.predict(run.embedding).masks[0])


@pytest.mark.parametrize("name", PROMPTED + ("sam_adapter",))
def test_other_checkpoint_form_reads_identically(zoo_runs, name):
    """The plain and the {'model': ...} files hold the same weights as the loaded model."""
    run = zoo_runs(name)
    assert run.other_form_differs is not None, f"{name}: the other checkpoint form was not read"
    differing = run.other_form_differs
    assert not differing, f"{name}: {len(differing)} tensors missing or different in the other form, e.g. {differing[:3]}"
