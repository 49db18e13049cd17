"""SAM 2 in the zoo equals the OFFICIAL ``sam2`` code (PyPI sam2==1.1.0) on synthetic weights.

Goldens are produced at test time by ``tests/models/sam2_official.py``, which runs the package's own
builders and predictors (``SAM2ImagePredictor``; ``SAM2VideoPredictor`` on a frame folder). Ours
loads the same weights from an official-form checkpoint through ``load_segmenter`` and runs the 2D
``Segmenter`` path and the in-memory memory tracker. Both at a 256 input (the tiny config with the
size overrides MedSAM2 uses for 512) to keep the CPU time small. Tolerances: shared/parity/README.md §4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.prompts import Prompts
from models.registry import load_segmenter
from tests.models import sam2_official as official
from tests.models.sam2_testing import registered_test_model, save_synthetic_checkpoint

pytest.importorskip("sam2")
pytestmark = pytest.mark.slow  # SAM 2 encoder passes on the CPU (256 input: 2.6 s each measured at load 8 on 2 cores)


@pytest.fixture(scope="module")
def sam2_model_name():
    with registered_test_model() as name:
        yield name


@pytest.fixture(scope="module")
def ours(tmp_path_factory, sam2_model_name):
    checkpoint = save_synthetic_checkpoint(tmp_path_factory.mktemp("sam2"))
    return load_segmenter(sam2_model_name, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def image_run(ours):
    golden = official.image_goldens(official.official_model(False, official.TEST_SIZE), official.synthetic_slice(),
                                    official.PROMPT_SETS)
    captured = {}

    def record(module, inputs, output) -> None:
        captured.setdefault("input", inputs[0].clone())

    hook = ours.model.image_encoder.register_forward_hook(record)
    try:
        embedding = ours.embed(official.synthetic_slice())
    finally:
        hook.remove()
    return golden, embedding, captured["input"]


def test_preprocessing_and_image_encoder_equal_the_official(image_run):
    golden, embedding, model_input = image_run
    np.testing.assert_allclose(model_input.numpy(), golden["input_tensor"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(embedding.features.numpy(), golden["image_embed"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embedding.extras["high_res_0"].numpy(), golden["high_res_0"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embedding.extras["high_res_1"].numpy(), golden["high_res_1"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [*official.PROMPT_SETS, "mask"])
def test_prompt_and_mask_decoder_equal_the_official(image_run, ours, name):
    golden, embedding, _ = image_run
    p = official.PROMPT_SETS["points2" if name == "mask" else name]
    prompts = Prompts(points=p.get("points"), point_labels=p.get("labels"), box=p.get("box"),
                      mask_logits=golden.get(f"{name}__mask_input"))
    result = ours.predict(embedding, prompts, multimask_output=p["multimask"])
    np.testing.assert_allclose(result.low_res_logits, golden[f"{name}__low_res_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.scores, golden[f"{name}__iou"], rtol=0, atol=1e-5)
    logits = golden[f"{name}__upscaled_logits"]
    differ = result.masks != (logits > 0)
    assert differ.sum() <= 1e-4 * differ.size and np.all(np.abs(logits[differ]) < 1e-3)
    assert 0.001 < result.masks.mean() < 0.999, "degenerate synthetic output: the comparison would prove nothing"


def test_one_propagation_step_with_memory_equals_the_official(ours):
    from models.sam2_memory import FrameStack, MemoryTracker

    frames = [official.synthetic_slice(shift=3.0 * i) for i in range(2)]  # a prompted frame and one from memory
    golden = official.video_goldens(official.official_model(True, official.TEST_SIZE), frames, official.VIDEO_BOX)
    stack = FrameStack(len(frames), lambda k: ours.frame_tensor(frames[k]))
    for k in range(len(frames)):  # the frame the video model sees, without a JPEG folder
        np.testing.assert_allclose(stack[k].numpy(), golden["images"][k], rtol=0, atol=1e-6)
    tracker = MemoryTracker(ours.model, stack, *frames[0].shape[:2])
    np.testing.assert_allclose(tracker.add_prompt(0, box=official.VIDEO_BOX), golden["prompt_logits"], rtol=1e-4, atol=1e-4)
    seen = []
    for k, logits in tracker.propagate(reverse=False):
        seen.append(k)
        np.testing.assert_allclose(logits, golden[f"frame{k}__logits"], rtol=1e-4, atol=1e-4)
        out = tracker._output(k)
        np.testing.assert_allclose(out["object_score_logits"].float().numpy(), golden[f"frame{k}__object_score_logits"],
                                   rtol=1e-4, atol=1e-4)
        # the memory written for later frames (stored in bfloat16 by the official predictor: bf16 tolerance)
        np.testing.assert_allclose(out["maskmem_features"].float().numpy(), golden[f"frame{k}__maskmem_features"],
                                   rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(out["obj_ptr"].float().numpy(), golden[f"frame{k}__obj_ptr"], rtol=1e-4, atol=1e-4)
        assert 0.001 < (logits > 0).mean() < 0.999
    assert seen == [0, 1]
    assert golden["frame1__object_score_logits"].item() > 0  # frame 1 (memory only) holds the object


def test_sam2_checkpoint_of_another_model_is_refused_in_one_line(tmp_path, capsys, sam2_model_name):
    """A SAM (v1) checkpoint given to a SAM 2 model: exit 2, one line naming the file and the mismatch."""
    from app.cli import main
    from PIL import Image

    wrong = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, wrong)
    image = tmp_path / "slice.png"
    Image.fromarray(official.synthetic_slice()).save(image)
    rc = main(["segment", str(image), "--box", "80", "35", "120", "68", "--model", sam2_model_name,
               "--checkpoint", str(wrong), "--output", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(wrong) in err and "missing" in err and "unexpected" in err


def test_missing_sam2_weights_name_the_file_to_bring(tmp_path, capsys, monkeypatch):
    from app.cli import main
    from PIL import Image

    monkeypatch.setenv("MEDSEG_WEIGHTS", str(tmp_path / "weights"))
    image = tmp_path / "slice.png"
    Image.fromarray(official.synthetic_slice()).save(image)
    rc = main(["segment", str(image), "--box", "80", "35", "120", "68", "--model", "medsam2",
               "--output", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "MedSAM2_latest.pt" in err and "huggingface.co/wanglab/MedSAM2" in err
