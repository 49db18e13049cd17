"""The shipped click model (models/click_model.py, weights/click_model/): on by default for litemedsam,
box masks bit-identical to the base model, loading checked by sha256, provenance recorded, and
clicks that help on real slices of the shared set (structures and subjects it was never trained on)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from app.commands.common import model_name
from evaluation.clicks import box_from_mask, parse_protocol, simulate
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.runner import case_rng
from models.checkpoint import CheckpointError
from models.click_model import CLICK_MODEL_DIR, META_FILE, WEIGHTS_FILE, _load_state, attach_click_model, read_meta
from models.prompts import Prompts
from models.registry import LITEMEDSAM_SHA256, get_spec, load_segmenter
from tests.conftest import DATA, ROOT

MANIFEST = DATA / "manifest.csv"
pytestmark = pytest.mark.skipif(not get_spec("litemedsam").available() or not MANIFEST.is_file(),
                                reason="needs weights/lite_medsam.pth and shared/data")
# three structures of the shared set never trained on (the click model saw only the INIA19 macaque)
GAIN_CASES = ("mr_t1_colin27_slabA_brain_k011", "ct_head_0051_slabA_head_k009", "mr_t1_colin27_slabA_caudate_L_k011")
BOX_CASES = ("mr_t1_colin27_slabA_thalamus_L_k004", "ct_head_0051_slabA_skull_bone_k017", "synthetic_shepp_logan_interior_k000")


@pytest.fixture(scope="module")
def cases():
    specs, _ = read_manifest(MANIFEST)
    loader = CaseLoader(MANIFEST)
    return {s.case_id: loader.load(s) for s in specs if s.case_id in GAIN_CASES + BOX_CASES}


@pytest.fixture(scope="module")
def models():
    return load_segmenter("litemedsam"), load_segmenter("litemedsam-base")


@pytest.fixture(scope="module")
def embed(cases):
    """``embed(segmenter, case_id)``: each model's own embedding of each slice, encoded once for the module
    (two of the gain cases, Colin27 brain and caudate L on slice 11, are one slice: keyed by the image's bytes)."""
    done = {}

    def embedding(seg, cid):
        image = cases[cid].image
        key = (seg.name, image.shape, hashlib.sha256(np.ascontiguousarray(image)).hexdigest())
        if key not in done:
            done[key] = seg.embed(image)
        return done[key]

    return embedding


def test_litemedsam_carries_the_click_model_and_the_switch_gives_the_base(models):
    click, base = models
    assert click.name == "litemedsam" and base.name == "litemedsam-base"
    assert getattr(click.model, "click_refiner", None) is not None
    assert getattr(base.model, "click_refiner", None) is None
    assert click.model.click_refiner.scope == "prompts"
    for name in ("image_encoder", "prompt_encoder", "mask_decoder"):  # the same base weights under both names
        a, b = getattr(click.model, name).state_dict(), getattr(base.model, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

    class Args:
        model, no_click_model = "litemedsam", True
    assert model_name(Args) == "litemedsam-base"
    Args.no_click_model = False
    assert model_name(Args) == "litemedsam"


def test_box_prompts_are_bit_identical_to_the_base_model(models, cases, embed):
    click, base = models
    for cid in BOX_CASES:
        case = cases[cid]
        e1, e2 = embed(click, cid), embed(base, cid)
        assert torch.equal(e1.features, e2.features)
        for margin, jitter in ((5, 0), (0, 3), (10, 3)):
            box = box_from_mask(case.gt, margin, jitter=jitter, rng=np.random.default_rng(1))
            r1, r2 = click.predict(e1, Prompts(box=box)), base.predict(e2, Prompts(box=box))
            assert np.array_equal(r1.masks, r2.masks), cid
            assert np.array_equal(r1.low_res_logits, r2.low_res_logits), cid
            assert np.array_equal(r1.scores, r2.scores), cid


def test_clicks_masks_and_lone_points_go_to_the_refiner(models, cases, embed):
    click, base = models
    case = cases["ct_head_0051_slabA_head_k009"]
    e1, e2 = embed(click, case.spec.case_id), embed(base, case.spec.case_id)
    box = box_from_mask(case.gt, 5)
    first = base.predict(e2, Prompts(box=box))
    neighbour = Prompts(box=box, mask_logits=first.best_logits)  # what 3D propagation passes on
    point = Prompts(points=np.array([[128.0, 100.0]]), point_labels=np.array([1]))
    for prompts, multimask in ((neighbour, False), (point, True), (point.with_click(120, 60, True), False)):
        a, b = click.predict(e1, prompts, multimask_output=multimask), base.predict(e2, prompts, multimask_output=multimask)
        assert not np.array_equal(a.low_res_logits, b.low_res_logits)
        assert a.masks.shape[0] == (3 if multimask else 1)  # PerSAM-F mixes three candidates


def test_damaged_or_foreign_weights_are_refused(tmp_path):
    copy = tmp_path / "click_model"
    shutil.copytree(CLICK_MODEL_DIR, copy)
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    _load_state.cache_clear()
    model = load_segmenter("litemedsam-base").model
    with pytest.raises(CheckpointError, match="sha256"):
        attach_click_model(torch.nn.Module(), LITEMEDSAM_SHA256, copy)
    # other base weights: no refiner (it was trained on this base's embeddings)
    holder = torch.nn.Module()
    holder.prompt_encoder, holder.mask_decoder = model.prompt_encoder, model.mask_decoder
    assert attach_click_model(holder, "0" * 64) is False
    assert not hasattr(holder, "click_refiner")
    assert attach_click_model(holder, LITEMEDSAM_SHA256) is True


def test_adapter_json_records_every_training_volume_and_the_weights_digest():
    meta = read_meta()
    assert meta["base_sha256"] == LITEMEDSAM_SHA256
    import hashlib

    assert hashlib.sha256((CLICK_MODEL_DIR / WEIGHTS_FILE).read_bytes()).hexdigest() == meta["weights_sha256"]
    assert (CLICK_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 25 * 2**20
    train = meta["training_volumes"]
    assert train, "no training volume recorded"
    for vol in train:
        assert vol["package"] and vol["version"] and vol["path"]
        assert re.fullmatch(r"[0-9a-f]{64}", vol["sha256"])
    # the evaluation subjects were never trained on: no Colin27 (ch2*, aal), CT or MNI152 file
    names = " ".join(v["path"] for v in train).lower()
    for held in ("ch2", "aal", "cranium", "mni_icbm152", "shared"):
        assert held not in names
    assert {v["subject"] for v in meta["heldout_volumes"]} >= {"Colin27", "MNI152 2009a template", "shared/data"}
    assert "seed" in meta["training"] and "command" in meta["training"]
    assert json.loads((CLICK_MODEL_DIR / META_FILE).read_text()) == meta


def test_clicks_raise_dice_on_structures_never_trained_on(models, cases, embed):
    click, base = models
    protocol = parse_protocol("box+clicks:2")
    curves = {}
    for seg in (click, base):
        rows = []
        for cid in GAIN_CASES:
            case = cases[cid]
            emb = embed(seg, cid)
            steps = simulate(lambda p, mm: seg.predict(emb, p, multimask_output=mm), case.gt, protocol,
                             margin=5, rng=case_rng(0, cid))
            rows.append([2 * (s.mask & case.gt).sum() / (s.mask.sum() + case.gt.sum()) for s in steps])
        curves[seg.name] = np.mean(rows, axis=0)
    c, b = curves["litemedsam"], curves["litemedsam-base"]
    assert c[0] == pytest.approx(b[0], abs=1e-9)  # the same box step
    assert c[1] >= c[0] + 0.08 and c[2] >= c[1]  # each click helps (GPU: 0.739 -> 0.863 -> 0.906)
    assert c[2] >= b[2] + 0.1


def test_training_script_seeds_cases_like_the_evaluation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tcm", ROOT / "scripts" / "train_click_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for cid in GAIN_CASES:
        assert mod.case_rng(0, cid).integers(1 << 30) == case_rng(0, cid).integers(1 << 30)
    assert zlib.crc32(b"x")  # the seed is the crc32 of the case id in both


def test_batched_training_decoder_matches_sams_decoder(models, embed):
    from models.batched_decode import decode_batched

    _, base = models
    feats = torch.cat([embed(base, c).features for c in GAIN_CASES[:2]])
    boxes = torch.tensor([[30.0, 20.0, 200.0, 220.0], [60.0, 40.0, 180.0, 200.0]])
    with torch.no_grad():
        low, iou = decode_batched(base.model.prompt_encoder, base.model.mask_decoder, feats, None, boxes, None)
        for b in range(2):
            sparse, dense = base.model.prompt_encoder(points=None, boxes=boxes[b : b + 1], masks=None)
            one, one_iou = base.model.mask_decoder(image_embeddings=feats[b : b + 1], image_pe=base.model.prompt_encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
            assert torch.allclose(low[b : b + 1], one, atol=1e-4) and torch.allclose(iou[b : b + 1], one_iou, atol=1e-5)
