"""SAM ViT-B end to end at batch 1, PIL's resize on the CPU ("before") against the resize on the GPU ("after").

Issue 22: the network is ~4 ms but ``embed()`` was ~20 ms, because ``ResizeLongestSide.apply_image`` resized
256 -> 1024 with PIL on the CPU. ``models.pil_resize`` does Pillow's arithmetic with torch on the segmenter's
device. Both variants of the same segmenter are timed in one process, interleaved, on the same slice:

    python3 benchmarks/bench_sam_resize.py --device cuda --out $OUT/sam_resize.jsonl

Rows (one JSON line each): ``impl`` (config + resize), ``encoder_ms`` (``embed()`` at batch 1: resize,
normalise, pad, encoder, features out), ``preprocess_ms`` (``preprocess()`` alone, synchronised),
``network_ms`` (the encoder alone on an input already on the device). A ``check`` line gives the largest
difference between the two preprocessed inputs (expected 0: bit-identical) and the mask pixels that differ
for a box prompt. Random weights (speed does not depend on them); the image is the middle slice of the bundled
CT series (256 x 256; ``.bench/slices.npz``'s ``ct_slice`` where the bundle exists).
``--configs`` picks fp32, bf16 and ``graphs`` (bf16 weights + compile with CUDA graphs, the fastest row of
docs/benchmarks.md; ~1 min of compile).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.prompts import Prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402
from runtime.fast import tuned  # noqa: E402
from runtime.timing import median_ms  # noqa: E402


def configs(seg, names: list[str]) -> dict:
    out = {}
    for name in names:
        if name == "fp32":
            out[name] = seg
        elif name == "bf16":
            out[name] = tuned(seg, precision="bf16")
        elif name == "graphs":
            out[name] = tuned(seg, precision="bf16", compile="reduce-overhead", compile_decoder=True, cast_weights=True)
        else:
            raise SystemExit(f"--configs: unknown {name!r}; expected fp32, bf16, graphs")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", default="fp32,bf16,graphs")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved before/after rounds; each reported")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    bundle = ROOT / ".bench" / "slices.npz"  # benchmarks/prepare_device_bundle.py: the GPU machine has no SimpleITK
    if bundle.is_file():
        image = np.load(bundle)["ct_slice"]
    else:
        from data.readers import read_study
        from data.windowing import default_window, slice_to_rgb

        volume = read_study(ROOT / "samples" / "ct_head_0051_series")
        image = slice_to_rgb(volume, volume.num_slices // 2, default_window(volume))
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "sam_vit_b.pth"
        torch.save(sam_model_registry["vit_b"]().state_dict(), ckpt)
        seg = load_segmenter("sam_vit_b", checkpoint=ckpt, device=args.device)
    emit({"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
          "image": list(image.shape), "torch": torch.__version__})
    for name, fast in configs(seg, args.configs.split(",")).items():
        variants = {}
        for resize, flag in (("PIL on the CPU", False), ("torch on the device", True)):
            v = copy.copy(fast)
            v.torch_resize = flag
            variants[resize] = v
        with torch.inference_mode():
            a, b = (v.preprocess(image).to(args.device) for v in variants.values())
            h, w = image.shape[:2]
            box = Prompts(box=np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], dtype=np.float32))
            ea, eb = (v.embed(image) for v in variants.values())
            ma, mb = (v.predict(e, box).masks for v, e in zip(variants.values(), (ea, eb)))
            emit({"check": f"sam_vit_b {name}: PIL vs device resize", "input_max_abs_diff": float((a - b).abs().max()),
                  "mask_pixels_differ": int((ma != mb).sum()), "mask_pixels": int(ma.size)})
            x = b
            network = median_ms(lambda: fast.encode(x), device=args.device, warmup=args.warmup, repeat=args.repeat)
        for r in range(args.rounds):
            for resize, v in variants.items():
                encoder = median_ms(lambda: v.embed(image), device=args.device, warmup=args.warmup, repeat=args.repeat)
                pre = median_ms(lambda: v.preprocess(image), device=args.device, warmup=args.warmup, repeat=args.repeat)
                emb = v.embed(image)
                decoder = median_ms(lambda: v.predict(emb, box), device=args.device, warmup=args.warmup, repeat=args.repeat)
                # issue 22's "end to end": the image in, the box's mask out (embed + predict, one call after the other)
                e2e = median_ms(lambda: v.predict(v.embed(image), box), device=args.device, warmup=args.warmup,
                                repeat=args.repeat)
                emit({"impl": f"ours sam_vit_b {name}, resize: {resize}", "round": r, "encoder_ms": round(encoder, 3),
                      "preprocess_ms": round(pre, 3), "network_ms": round(network, 3), "decoder_ms": round(decoder, 3),
                      "end_to_end_ms": round(e2e, 3)})
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
