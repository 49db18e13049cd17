"""SAM 2.1 Hiera-T: encoder latency and per-slice memory propagation, ours against the official code, one run.

Both sides run the same network with the same weights (random: speed does not depend on them):

* official: ``sam2.build_sam.build_sam2_video_predictor`` (Hydra compose), ``SAM2ImagePredictor.set_image`` for
  the encoder, and ``SAM2VideoPredictor.init_state(<frame folder>)`` + ``add_new_points_or_box`` +
  ``propagate_in_video`` for the walk (frames written as lossless PNG bytes under ``.jpg`` names);
* ours: ``models.sam2_hiera.Sam2Segmenter.embed`` and ``app.propagation.propagate`` (the engine behind
  ``medseg propagate``) on the in-memory volume.

Rows: ``fp32``; ``bf16`` (``torch.autocast(device, bfloat16)`` around each call, as the official README
does); ``compiled`` (the official ``vos_optimized=True`` predictor, ``SAM2VideoPredictorVOS``, which
torch.compiles the image encoder, memory encoder, memory attention and SAM heads; ours builds the same
class and feeds it our frame stack), bf16 as the official VOS path expects. Each line: impl, precision,
encoder_ms (batch 1, preprocessing included, median), frame_ms (from the box prompt to the last slice, divided
by the slices segmented; ours includes windowing and resizing each slice, the official frame loading happens in
``init_state`` before its timer), frames, and for ours ``max_logit_diff`` against the official walk of
the same row.

On the GPU machine (carry ``.bench``; the wheels are built here, once, with
``SAM2_BUILD_CUDA=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .bench/sam2_wheels sam2==1.1.0
hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10 portalocker``)::

    bash benchmarks/device_install.sh .devwheels/a       # SimpleITK, MONAI, pydicom (benchmarks/prepare_device_env.py)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .bench/sam2_wheels/*.whl
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/bench_sam2.py --device cuda --out $OUT/sam2.jsonl

(the device image already holds pyyaml, tqdm, pillow and portalocker, which omegaconf, sam2 and iopath need).

``--smoke`` runs every path once on the CPU at a 256 input with 3 frames (a check before spending GPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.timing import median_ms  # noqa: E402

SAMPLE = ROOT / "samples" / "ct_head_0051_series"


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def official_predictor(device: str, size: int, vos: bool):
    from sam2.build_sam import build_sam2_video_predictor

    from tests.models.sam2_official import size_overrides

    return build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device=device,
                                      hydra_overrides_extra=size_overrides(size), vos_optimized=vos)


def our_segmenter(state: dict, device: str, size: int, vos: bool):
    from dataclasses import replace

    from hydra.utils import instantiate

    from models.sam2_hiera import SAM2_VARIANTS, Sam2Segmenter, sam2_config

    variant = replace(SAM2_VARIANTS["sam2.1_hiera_tiny"], image_size=size)
    cfg = sam2_config(variant)
    if vos:  # as build_sam2_video_predictor(vos_optimized=True)
        cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictorVOS"
        cfg.model.compile_image_encoder = True
    model = instantiate(cfg.model, _recursive_=True)
    model.load_state_dict(state, strict=True)
    return Sam2Segmenter(model.eval(), variant=variant, device=device)


def official_walk(pred, frames: list[np.ndarray], box: np.ndarray, device: str, precision: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(Path(d) / f"{i:05d}.jpg", format="PNG")
        with torch.inference_mode(), autocast(device, precision):
            state = pred.init_state(d)
            k0 = len(frames) // 2
            sync()
            t0 = time.perf_counter()  # from the prompt on (frame loading is init_state's, outside the timer)
            pred.add_new_points_or_box(state, frame_idx=k0, obj_id=1, box=box)
            out = {}
            for k, _, logits in pred.propagate_in_video(state, start_frame_idx=k0):
                out[k] = logits[0, 0].float().cpu().numpy()
            for k, _, logits in pred.propagate_in_video(state, start_frame_idx=k0, reverse=True):
                out[k] = logits[0, 0].float().cpu().numpy()
            sync()
    return (time.perf_counter() - t0) * 1000.0, out


def our_walk(seg, volume, window, box: np.ndarray, device: str, precision: str) -> tuple[float, np.ndarray]:
    from app.propagation import PropagationSettings, propagate
    from models.prompts import Prompts

    k0 = volume.num_slices // 2
    with autocast(device, precision):
        sync()
        t0 = time.perf_counter()
        result = propagate(seg, volume, k0, Prompts(box=box), window=window, settings=PropagationSettings(min_area_px=1))
        sync()
    return (time.perf_counter() - t0) * 1000.0, result


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--frames", type=int, default=12, help="slices of the sample CT series walked (both ways from the middle)")
    p.add_argument("--rows", default="fp32,bf16,compiled")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    size, frames_n, repeat = (256, 3, 1) if args.smoke else (1024, args.frames, args.repeat)
    rows = ["fp32", "bf16"] if args.smoke else [r for r in args.rows.split(",") if r]
    torch.manual_seed(0)

    from data.readers import read_study
    from data.volume import Volume
    from data.windowing import default_window, slice_to_rgb

    ct = read_study(SAMPLE)
    mid = ct.num_slices // 2
    lo = max(0, mid - frames_n // 2)
    volume = Volume(array=ct.array[lo : lo + frames_n], spacing=ct.spacing, origin=ct.origin, direction=ct.direction,
                    modality=ct.modality)
    window = default_window(volume)
    frames = [slice_to_rgb(volume, k, window) for k in range(volume.num_slices)]
    h, w = volume.slice_shape
    box = np.array([0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h], dtype=np.float32)
    out = open(args.out, "w") if args.out else None
    for row in rows:
        vos = row == "compiled"
        precision = "bf16" if row != "fp32" else "fp32"
        official = official_predictor(args.device, size, vos)
        state = {k: v.detach().cpu() for k, v in official.state_dict().items()}
        ours = our_segmenter(state, args.device, size, vos)
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        image_pred = SAM2ImagePredictor(official)
        image_pred._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        image = frames[len(frames) // 2]
        with torch.inference_mode():
            with autocast(args.device, precision):
                off_enc = median_ms(lambda: image_pred.set_image(image), device=args.device, warmup=0 if args.smoke else 3, repeat=repeat)
                our_enc = median_ms(lambda: ours.embed(image), device=args.device, warmup=0 if args.smoke else 3, repeat=repeat)
        if not args.smoke:  # one untimed walk each: compile and cuDNN autotuning happen here
            official_walk(official, frames, box, args.device, precision)
            our_walk(ours, volume, window, box, args.device, precision)
        off_ms, off_logits = official_walk(official, frames, box, args.device, precision)
        our_ms, result = our_walk(ours, volume, window, box, args.device, precision)
        walked = len(off_logits)  # every slice segmented, the prompted one included (both timers hold its encode)
        agree = [int(np.sum((off_logits[k] > 0) != result.masks[k])) for k in sorted(off_logits)]
        for impl, enc, ms in (("official", off_enc, off_ms), ("ours", our_enc, our_ms)):
            line = {"impl": impl, "row": row, "precision": precision, "device": args.device, "input": size,
                    "encoder_ms": round(enc, 2), "frame_ms": round(ms / max(walked, 1), 2), "frames": walked}
            if impl == "ours":
                line["mask_pixels_differing_per_slice"] = agree
            print(json.dumps(line), flush=True)
            if out:
                out.write(json.dumps(line) + "\n")
        del official, ours, image_pred
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
