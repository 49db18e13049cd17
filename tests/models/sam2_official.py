"""Goldens of the OFFICIAL ``sam2`` code (PyPI sam2==1.1.0) on deterministic synthetic weights.

The network is built exactly as the package builds it (``build_sam2`` / ``build_sam2_video_predictor``:
Hydra ``compose`` of the package config plus their overrides), filled with the synthetic-weight rule
of ``shared/parity/README.md`` §1 (each state-dict key seeds its own generator), and run through the
package's own predictors: ``SAM2ImagePredictor`` (2D prompts) and ``SAM2VideoPredictor`` on a folder of
frames (``init_state(video_path)``: the frames are written losslessly as PNG bytes under ``.jpg`` names,
which PIL reads by content; the same trick the PerSAM goldens use).

The parity tests call these functions at test time (the official package is a dependency, so the
goldens are regenerated on every run rather than stored). ``python -m tests.models.sam2_official OUT.npz``
writes them to a file for inspection.
"""

from __future__ import annotations

import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.synthetic_weights import synth_array

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def size_overrides(image_size: int) -> list[str]:
    """Hydra overrides that turn the tiny config into one at ``image_size`` (MedSAM2's
    ``sam2.1_hiera_t512.yaml`` differs from the package's tiny config in exactly these three values)."""
    if image_size == 1024:
        return []
    g = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{g},{g}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{g},{g}]",
    ]


@lru_cache(maxsize=None)
def _synth(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return synth_array(key, shape, dtype)


def synthetic_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The synthetic weights for every state-dict key of ``model`` (fresh tensors; arrays cached per process)."""
    return {
        k: torch.from_numpy(_synth(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")).copy())
        for k, v in model.state_dict().items()
    }


def official_model(video: bool, image_size: int = 1024, config: str = CONFIG) -> torch.nn.Module:
    """The official network with synthetic weights, built by the package's own builders (CPU)."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    build = build_sam2_video_predictor if video else build_sam2
    model = build(config, None, device="cpu", hydra_overrides_extra=size_overrides(image_size))
    model.load_state_dict(synthetic_state(model), strict=True)
    return model.eval()


def synthetic_slice(h: int = 120, w: int = 160, shift: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8: a body ellipse with one bright blob (moved by ``shift`` px), R/G/B slightly apart."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    body = ((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2 < 1
    blob = np.exp(-(((xx - 0.62 * w - shift) / 12) ** 2 + ((yy - 0.42 * h) / 10) ** 2))
    grey = 12 + 90 * body + 140 * blob
    r = np.clip(grey, 0, 255)
    return np.stack([r, 0.92 * r + 6, 0.85 * r + 14], axis=2).round().astype(np.uint8)


def image_goldens(model, image: np.ndarray, prompt_sets: dict[str, dict]) -> dict[str, np.ndarray]:
    """``SAM2ImagePredictor.set_image`` + ``predict`` for each prompt set -> arrays by name."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(model)
    s = model.image_size  # the predictor hard-codes the feature sizes of a 1024 input; set them for other sizes
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    captured: dict[str, torch.Tensor] = {}

    def record(module, inputs, output) -> None:  # returns None: the output is left as it is
        captured.setdefault("input", inputs[0].clone())

    hook = model.image_encoder.register_forward_hook(record)
    pred.set_image(image)
    hook.remove()
    out = {
        "input_tensor": captured["input"].numpy(),
        "image_embed": pred._features["image_embed"].numpy(),
        "high_res_0": pred._features["high_res_feats"][0].numpy(),
        "high_res_1": pred._features["high_res_feats"][1].numpy(),
    }
    for name, p in prompt_sets.items():
        masks, iou, low = pred.predict(
            point_coords=p.get("points"), point_labels=p.get("labels"), box=p.get("box"),
            mask_input=p.get("mask_input"), multimask_output=p["multimask"], return_logits=True,
        )
        out[f"{name}__upscaled_logits"] = masks
        out[f"{name}__iou"] = iou
        out[f"{name}__low_res_logits"] = low
    if "point1" in prompt_sets and "points2" in prompt_sets:  # SAM's "mask" set: point1's best logits + points2
        best = out["point1__low_res_logits"][np.argmax(out["point1__iou"])][None]
        p = prompt_sets["points2"]
        masks, iou, low = pred.predict(point_coords=p["points"], point_labels=p["labels"], mask_input=best,
                                       multimask_output=False, return_logits=True)
        out.update({"mask__mask_input": best, "mask__upscaled_logits": masks, "mask__iou": iou, "mask__low_res_logits": low})
    return out


def video_goldens(model, frames: list[np.ndarray], box: np.ndarray, frame: int = 0) -> dict[str, np.ndarray]:
    """``SAM2VideoPredictor`` on a frame folder: a box on ``frame``, propagate forward -> logits per frame."""
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(Path(d) / f"{i:05d}.jpg", format="PNG")  # lossless; PIL reads by content
        state = model.init_state(d)
    _, _, first = model.add_new_points_or_box(state, frame_idx=frame, obj_id=1, box=box)
    out = {"prompt_logits": first[0, 0].numpy().copy(), "images": state["images"].numpy()}
    for k, _, logits in model.propagate_in_video(state):
        out[f"frame{k}__logits"] = logits[0, 0].numpy().copy()
        o = state["output_dict_per_obj"][0]
        cur = o["cond_frame_outputs"].get(k) or o["non_cond_frame_outputs"][k]
        out[f"frame{k}__object_score_logits"] = cur["object_score_logits"].float().numpy()
        out[f"frame{k}__maskmem_features"] = cur["maskmem_features"].float().numpy()
        out[f"frame{k}__obj_ptr"] = cur["obj_ptr"].float().numpy()
    return out


PROMPT_SETS = {
    "point1": {"points": np.array([[99.0, 50.0]]), "labels": np.array([1]), "multimask": True},
    "points2": {"points": np.array([[99.0, 50.0], [30.0, 90.0]]), "labels": np.array([1, 0]), "multimask": False},
    "box": {"box": np.array([80.0, 35.0, 120.0, 68.0]), "multimask": False},
    "box_point": {"box": np.array([80.0, 35.0, 120.0, 68.0]), "points": np.array([[99.0, 50.0]]),
                  "labels": np.array([1]), "multimask": False},
}
VIDEO_BOX = np.array([80.0, 35.0, 120.0, 68.0], dtype=np.float32)
TEST_SIZE = 256  # a small input for the CPU (a 1024 Hiera-T encoder pass takes 30-50 s on this shared 2-core box)


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    out = {f"image__{k}": v for k, v in image_goldens(official_model(False, TEST_SIZE), synthetic_slice(), PROMPT_SETS).items()}
    frames = [synthetic_slice(shift=3.0 * i) for i in range(2)]
    out.update({f"video__{k}": v for k, v in video_goldens(official_model(True, TEST_SIZE), frames, VIDEO_BOX).items()})
    np.savez_compressed(argv[0] if argv else "sam2_goldens.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
