"""ONNX exports and int8 encoders are built once, reused by later processes, and rebuilt when damaged or stale.

The real files come from the default CPU backend (``onnx-int8-fast``), built once per machine in the project's
weights folder (git-ignored) and copied into a temporary weights folder, where they are tampered with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from runtime import clear_caches, export_cache, load_segmenter
from runtime.export_cache import BUILDS, ensure, why_stale

KEY = {"weights_sha256": "ab" * 32, "exporter": "1", "torch": "t", "onnx": "o", "onnxruntime": "r"}


def _writer(calls: list, text: str = "model"):
    def build(tmp):
        calls.append(tmp)
        (tmp / "a.onnx").write_text(text)
        (tmp / "b.onnx").write_text(text + "!")
    return build


def test_a_built_file_is_reused_and_a_damaged_or_stale_one_rebuilt(tmp_path):
    calls: list = []
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    ensure(paths, _writer(calls), KEY)
    ensure(paths, _writer(calls), KEY)
    assert len(calls) == 1 and paths[0].read_text() == "model"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    paths[1].write_text("model?")  # damaged (same size, other bytes)
    assert "sha256" in why_stale(paths[1], KEY)
    ensure(paths, _writer(calls), KEY)
    assert len(calls) == 2 and paths[1].read_text() == "model!"

    newer = {**KEY, "onnxruntime": "r2"}  # another onnxruntime: the file was made under another key
    assert "another key" in why_stale(paths[0], newer)
    ensure(paths, _writer(calls), newer)
    assert len(calls) == 3 and why_stale(paths[0], newer) is None

    (tmp_path / "a.onnx.json").unlink()  # a file without its checksum is never trusted
    ensure(paths, _writer(calls), newer)
    assert len(calls) == 4


def test_a_derived_file_is_rebuilt_when_its_source_changes(tmp_path):
    source = tmp_path / "encoder.onnx"
    source.write_text("fp32")
    calls: list = []

    def build(tmp):
        calls.append(1)
        (tmp / "int8.onnx").write_text("q(" + source.read_text() + ")")

    ensure([tmp_path / "int8.onnx"], build, KEY, source=source)
    ensure([tmp_path / "int8.onnx"], build, KEY, source=source)
    source.write_text("fp32 v2")
    ensure([tmp_path / "int8.onnx"], build, KEY, source=source)
    assert len(calls) == 2 and (tmp_path / "int8.onnx").read_text() == "q(fp32 v2)"


def test_a_failed_build_leaves_nothing_under_the_final_name(tmp_path):
    def broken(tmp):
        (tmp / "a.onnx").write_text("half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        ensure([tmp_path / "a.onnx"], broken, KEY)
    assert not (tmp_path / "a.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["build.lock"]


# --- the real default backend ----------------------------------------------------------------------------
BACKEND = "onnx-int8-fast"


@pytest.fixture(scope="module")
def copied_weights(tmp_path_factory):
    """A weights folder holding the checkpoint (a link) and a copy of the project's built ONNX cache."""
    from models.registry import weights_dir

    saved = os.environ.get("MEDSEG_WEIGHTS")
    os.environ.pop("MEDSEG_WEIGHTS", None)
    clear_caches()
    seg = load_segmenter("litemedsam", backend=BACKEND)  # built here once per machine, then reused
    built = seg.encoder_path.parent
    folder = tmp_path_factory.mktemp("weights")
    os.symlink(weights_dir() / "lite_medsam.pth", folder / "lite_medsam.pth")
    with export_cache._build_lock(built):  # not while another test process builds into it (tests/runtime/test_onnx.py)
        shutil.copytree(built, folder / "onnx" / built.name)
    os.environ["MEDSEG_WEIGHTS"] = str(folder)
    clear_caches()
    yield folder / "onnx" / built.name
    clear_caches()
    if saved is None:
        os.environ.pop("MEDSEG_WEIGHTS", None)
    else:
        os.environ["MEDSEG_WEIGHTS"] = saved


def _files(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".onnx"}


def test_the_default_backends_files_are_reused_by_a_new_process(copied_weights):
    before, builds = _files(copied_weights), sum(BUILDS.values())
    assert {"encoder-fast.onnx", "decoder-fast.onnx", "refiner-fast.onnx"} <= set(before)
    seg = load_segmenter("litemedsam", backend=BACKEND)
    assert seg.encoder_path.parent == copied_weights and seg.encoder_path.name.startswith("encoder-fast-int8-")
    clear_caches()  # what a new process sees
    load_segmenter("litemedsam", backend=BACKEND)
    assert sum(BUILDS.values()) == builds and _files(copied_weights) == before
    meta = json.loads((copied_weights / (seg.encoder_path.name + ".json")).read_text())
    assert meta["key"] == export_cache.cache_key(meta["key"]["weights_sha256"])  # weights, exporter, torch, onnx, ORT
    assert meta["source_sha256"] == export_cache.file_sha256(copied_weights / "encoder-fast.onnx")
    # the click's decoders (runtime.onnx_decoder_export) are reused too; the refiner's file records the click model
    # it was exported from, so a changed weights/click_model rebuilds it (test_a_derived_file_is_rebuilt_...)
    assert seg.decoder_path.name == "decoder-fast.onnx" and seg.refiner_path.name == "refiner-fast.onnx"
    from models.click_model import CLICK_MODEL_DIR, WEIGHTS_FILE

    meta = json.loads((copied_weights / "refiner-fast.onnx.json").read_text())
    assert meta["source_sha256"] == export_cache.file_sha256(CLICK_MODEL_DIR / WEIGHTS_FILE)


def test_the_default_backend_never_builds_the_plain_exports(copied_weights, monkeypatch):
    """``encoder.onnx`` and ``decoder.onnx`` are the plain ``onnx`` backend's; the int8 backends run the fast encoder
    and decoders. Building them on a fresh install cost ~10 CPU-s and 40 MB that nothing ran (found in session 29's
    suite profile): with them gone and their exporters broken, the default backend still loads from its own files."""
    import runtime.onnx_export as onnx_export

    for name in ("encoder.onnx", "decoder.onnx"):
        for path in (copied_weights / name, copied_weights / (name + ".json")):
            path.unlink(missing_ok=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the plain ONNX export was built for a backend that never runs it")

    for exporter in ("export_encoder", "export_decoder"):
        monkeypatch.setattr(onnx_export, exporter, refuse)
    clear_caches()
    seg = load_segmenter("litemedsam", backend=BACKEND)  # onnx-int8-conv takes the same two branches
    clear_caches()
    assert seg.decoder_path.name == "decoder-fast.onnx" and seg.encoder_path.name.startswith("encoder-fast-int8-")
    assert not (copied_weights / "encoder.onnx").exists() and not (copied_weights / "decoder.onnx").exists()


def test_a_tampered_int8_encoder_is_rebuilt_not_run(copied_weights):
    clear_caches()
    seg = load_segmenter("litemedsam", backend=BACKEND)
    path, good = seg.encoder_path, export_cache.file_sha256(seg.encoder_path)
    with open(path, "r+b") as f:  # zero 64 bytes in the middle of the weights
        f.seek(path.stat().st_size // 2)
        f.write(b"\x00" * 64)
    key = export_cache.cache_key(seg_weights_sha(path))
    assert "sha256" in why_stale(path, key, copied_weights / "encoder-fast.onnx")
    before = BUILDS[path.name]
    clear_caches()
    again = load_segmenter("litemedsam", backend=BACKEND)
    assert BUILDS[path.name] == before + 1 and again.encoder_path == path
    assert export_cache.file_sha256(path) == good  # the same quantisation, rebuilt


def seg_weights_sha(path) -> str:
    return json.loads((path.parent / (path.name + ".json")).read_text())["key"]["weights_sha256"]


def test_clicks_keep_the_click_model_on_the_onnx_encoder(copied_weights, litemedsam_base):
    """With the ONNX default, a click is refined by the click model (its ONNX export, runtime.onnx_decoder_export)
    on the ONNX embedding, a box alone goes through the exported base decoder (as in torch); both within float32
    rounding of the torch modules."""
    from models.prompts import Prompts
    from tests.conftest import PARITY

    clear_caches()
    seg = load_segmenter("litemedsam", backend=BACKEND)
    g = np.load(PARITY / "litemedsam_real" / "golden.npz")
    emb = seg.embed(g["image"])
    boxed = seg.predict(emb, Prompts(box=g["box__box"]))
    # a corrective click after the box: the point with the box's logits fed back (a lone point takes the
    # point route of models.point_prompts instead, box candidates first)
    click = Prompts(points=g["points2__point_coords"][:1], point_labels=g["points2__point_labels"][:1],
                    mask_logits=boxed.best_logits)
    refined = seg.predict(emb, click)
    assert seg.refiner is not None and seg.refiner_path.parent == copied_weights  # ONNX Runtime runs the refiner
    by_refiner, iou = seg.base.model.click_refiner(emb.features, *_prompt_tensors(seg, emb, click))
    np.testing.assert_allclose(refined.low_res_logits, by_refiner[0].numpy(), rtol=1e-4, atol=2e-4)
    assert (refined.masks != seg.base.to_result(emb, by_refiner, iou).masks).mean() <= 1e-4
    plain = seg.predict(emb, Prompts(points=click.points, point_labels=click.point_labels,
                                     mask_logits=boxed.best_logits, base_decoder=True))
    assert (refined.masks != plain.masks).mean() > 0.001  # the refiner really answered, not the base decoder
    box = Prompts(box=g["box__box"])
    onnx_box = seg.predict(emb, box)
    same = dataclasses.replace(emb, model_name=litemedsam_base.name)
    torch_box = litemedsam_base.predict(same, box)  # the torch base decoder on the same embedding
    np.testing.assert_allclose(onnx_box.low_res_logits, torch_box.low_res_logits, rtol=1e-4, atol=2e-4)


def _prompt_tensors(seg, emb, prompts):
    points, boxes, masks = seg.base.prompt_tensors(emb, prompts)
    return points, boxes, masks
