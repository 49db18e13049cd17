"""Device check of runtime/triton_convs.py on the real LiteMedSAM encoder (folded, bf16 weights):
accuracy of the fused stage-0 MBConv and PatchMerging 0 against the originals, their time against the
same block compiled as we run it now (decompose_convs + REALIZE_STENCIL_INPUTS), a small sweep of
launch parameters per kernel, and GB/s against the bytes the two kernels must move. One JSON line
per result (stdout and --out). A diagnostic, not a benchmark of record; under 3 minutes on an H100.

    python3 benchmarks/triton_convs_check.py --out $OUT/triton_convs.jsonl
    python3 benchmarks/triton_convs_check.py --blocks "" --encoder 128 --out $OUT/triton_convs.jsonl  # whole encoder
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import triton_convs  # noqa: E402
from runtime.conv_forms import decompose_convs, fuse_batchnorm  # noqa: E402
from runtime.fast import REALIZE_STENCIL_INPUTS  # noqa: E402
from models.registry import load_segmenter  # noqa: E402
from runtime.timing import median_ms  # noqa: E402
from runtime.triton_convs import FusedMBConv, FusedPatchMerging, depthwise_pointwise, pointwise  # noqa: E402

DEV = "cuda"  # --device cpu (with TRITON_INTERPRET=1, --size 16 --repeat 1) is a smoke test of this script
REPEAT = 10
_FAST = {"fast_gelu": True}  # every GELU in the tanh form (runtime.triton_convs._gelu)
POINTWISE_SWEEP = [  # run 3's fastest erf and tanh configs first, then neighbours of the tanh one
    {"BLOCK_M": 32, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3, **_FAST},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2, **_FAST},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},
    {"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, **_FAST},  # repeat: noise
]
_DW = {"TILE_H": 4, "TILE_W": 16, "BLOCK_C": 64, "BLOCK_N": 64, "UNROLL_TAPS": 0, "num_warps": 4, "num_stages": 2,
       "dw_rows": {"enabled": 0}}
_ROWS = {"enabled": 1, "TILE_W": 16, "ROWS": 64, "max_channels": 256, "num_warps": 8, "num_stages": 1, "PREFETCH": 1,
         "maxnreg": 0}
DW_SWEEP = [  # the direct kernel (stride 2 always takes it), then the row-walking one (stride 1 only; else direct)
    {**_DW, **_FAST},
    {**_DW, "BLOCK_C": 32, **_FAST},
    {**_DW, "TILE_H": 2, "TILE_W": 32, **_FAST},
    {**_DW, "TILE_H": 8, "TILE_W": 8, **_FAST},
    {**_DW, "num_stages": 3, **_FAST},
    {**_DW, **_FAST},  # repeat: noise
    {"dw_rows": _ROWS},
    {"dw_rows": _ROWS, **_FAST},
    {"dw_rows": {**_ROWS, "ROWS": 128}, **_FAST},
    {"dw_rows": {**_ROWS, "ROWS": 256}, **_FAST},
    {"dw_rows": {**_ROWS, "ROWS": 32}, **_FAST},
    {"dw_rows": {**_ROWS, "num_warps": 4}, **_FAST},
    {"dw_rows": _ROWS, **_FAST},  # repeat: noise
]


def emit(row: dict, out: str | None) -> None:
    row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def diffs(got: torch.Tensor, want: torch.Tensor) -> dict:
    err = (got.float() - want.float()).abs()
    return {"max_abs": err.max().item(), "max_rel": (err.max() / want.abs().max()).item(),
            "mean_abs": err.mean().item()}


def block_inputs(encoder: torch.nn.Module, b: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real activations (fp32, channels-last) into stage-0 MBConv 0 and PatchMerging 0, from [0, 1] images."""
    torch.manual_seed(0)
    img = torch.rand(b, 3, size, size, device=DEV).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        x0 = encoder.patch_embed(img)
        x1 = encoder.layers[0].blocks[1](encoder.layers[0].blocks[0](x0))
    return x0, x1


def moved_bytes(block: str, b: int, size: int, elem: int = 2) -> dict:
    """Bytes the two kernels must read and write (bf16), and the block's floor (input in, output out)."""
    m = b * size * size
    if block == "mbconv0":  # K1: x 64 -> h 256; K2: h 256 + residual 64 -> out 64
        k1, k2, floor = m * (64 + 256), m * (256 + 64 + 64), m * (64 + 64)
    else:  # K1: x 64 -> h 128 at 256^2; K2: h 128 -> out 128 at 128^2
        k1, k2, floor = m * (64 + 128), m * 128 + m // 4 * 128, m * 64 + m // 4 * 128
    return {"k1": k1 * elem, "k2": k2 * elem, "block": (k1 + k2) * elem, "floor": floor * elem}


def sweep(name: str, fn, configs: list[dict], nbytes: int, base: dict, out: str | None) -> dict | None:
    """Time ``fn(**config)`` per config; returns the fastest config."""
    best = None
    for cfg in configs:
        try:
            t0 = time.perf_counter()
            fn(**cfg)
            if DEV == "cuda":
                torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            ms = median_ms(lambda: fn(**cfg), device=DEV, warmup=min(2, REPEAT), repeat=REPEAT)
        except Exception as e:  # noqa: BLE001 - a config may not fit (shared memory, registers): report it
            emit({**base, "part": f"sweep {name}", "config": cfg, "error": repr(e)[:300]}, out)
            continue
        emit({**base, "part": f"sweep {name}", "config": cfg, "ms": ms, "gb_per_s": nbytes / ms / 1e6,
              "first_call_s": first_s}, out)
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return None if best is None else best[1]


def encoder_rows(enc32: torch.nn.Module, batch: int, size: int, attention: str, base: dict, out: str | None) -> None:
    """The whole folded bf16 encoder compiled as tuned() builds it (decompose_convs, REALIZE_STENCIL_INPUTS),
    with and without use_triton_convs: time at ``batch`` and the difference from the fp32 eager encoder."""
    from runtime.fast import set_window_attention
    from runtime.triton_convs import use_triton_convs

    torch.manual_seed(0)
    img = torch.rand(batch, 3, size, size, device=DEV).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = enc32(img)
    for triton_blocks in (False, True):
        enc = copy.deepcopy(enc32)
        if attention != "sdpa":
            set_window_attention(enc, attention)
        decompose_convs(enc)
        swapped = use_triton_convs(enc) if triton_blocks else 0
        enc = enc.to(torch.bfloat16)
        fn = torch.compile(enc, dynamic=False, options=dict(REALIZE_STENCIL_INPUTS))
        x16 = img.to(torch.bfloat16)
        with torch.inference_mode():
            t0 = time.perf_counter()
            got = fn(x16)
            compile_s = time.perf_counter() - t0
            ms = median_ms(lambda: fn(x16), device=DEV, warmup=min(3, REPEAT), repeat=REPEAT)
        emit({**base, "part": "encoder", "triton_convs": triton_blocks, "blocks_swapped": swapped, "batch": batch,
              "attention": attention, "ms": ms, "slices_per_s": 1000 * batch / ms, "compile_s": compile_s,
              **diffs(got, want)}, out)
        enc = fn = got = None
        torch.compiler.reset()


def accuracy_and_time(block: str, b: int, size: int, mods: dict, row: dict, out: str | None) -> None:
    """Rows (a) and (b) for one block and batch: differences from the fp32 original, times (bf16)."""
    x_mb, x_pm = block_inputs(mods["encoder"], b, size)
    x32 = x_mb if block == "mbconv0" else x_pm
    x_mb = x_pm = None
    x16 = x32.to(torch.bfloat16)
    with torch.inference_mode():
        want = mods["ref32"](x32)
        emit({**row, "part": "accuracy fp32", "what": "fused fp32 vs original fp32",
              **diffs(mods["fused32"](x32), want)}, out)
        for what in ("fused bf16", "fused bf16 tanh", "original bf16 eager", "original bf16 compiled",
                     "fused bf16 compiled"):
            got = mods[what](x16)
            emit({**row, "part": "accuracy bf16", "what": f"{what} vs original fp32", **diffs(got, want)}, out)
        want = x32 = got = None
        nb = moved_bytes(block, b, size)
        for what in ("original bf16 compiled", "fused bf16", "fused bf16 tanh", "fused bf16 compiled"):
            fn = mods[what]
            ms = median_ms(lambda: fn(x16), device=DEV, warmup=min(3, REPEAT), repeat=REPEAT)
            emit({**row, "part": "time", "what": what, "ms": ms, "gb_per_s_two_kernels": nb["block"] / ms / 1e6,
                  "bytes_two_kernels": nb["block"], "bytes_floor": nb["floor"], "floor_ms_at_3tb_s": nb["floor"] / 3e9,
                  "tuning": copy.deepcopy(triton_convs.TUNING)}, out)


def sweep_block(block: str, b: int, size: int, mods: dict, row: dict, out: str | None) -> dict:
    """Each kernel alone over its sweep, then the block with the fastest config of each (bf16).
    Returns the TUNING that block ran with."""
    x_mb, x_pm = block_inputs(mods["encoder"], b, size)
    xh = (x_mb if block == "mbconv0" else x_pm).to(torch.bfloat16).permute(0, 2, 3, 1).contiguous()
    x_mb = x_pm = None
    m = mods["fused bf16"]
    nb = moved_bytes(block, b, size)
    with torch.inference_mode():
        best1 = sweep("pointwise", lambda **c: pointwise(xh, m.w1t, m.b1, **c), POINTWISE_SWEEP, nb["k1"], row, out)
        h = pointwise(xh, m.w1t, m.b1)
        res, gelu = (xh, True) if block == "mbconv0" else (None, False)
        configs = [{**c, "BLOCK_N": max(c["BLOCK_N"], m.w3t.shape[1])} if "BLOCK_N" in c else c for c in DW_SWEEP]
        best2 = sweep("depthwise_pointwise",
                      lambda **c: depthwise_pointwise(h, m.wdw, m.bdw, m.w3t, m.b3, res, m.stride, gelu, **c),
                      configs, nb["k2"], row, out)
        h = None
        saved = copy.deepcopy(triton_convs.TUNING)
        best1, best2 = dict(best1 or {}), dict(best2 or {})
        fast = bool(best1.pop("fast_gelu", False)) | bool(best2.pop("fast_gelu", False))
        if "dw_rows" in best2:
            triton_convs.TUNING["dw_rows"] = {**triton_convs.TUNING["dw_rows"], **best2.pop("dw_rows")}
        for k, v in (("pointwise", best1), ("depthwise_pointwise", best2)):
            triton_convs.TUNING[k] = {**triton_convs.TUNING[k], **v}
        x = xh.permute(0, 3, 1, 2)  # the block's channels-last NCHW input
        m.fast_gelu = fast
        ms = median_ms(lambda: m(x), device=DEV, warmup=min(3, REPEAT), repeat=REPEAT)
        m.fast_gelu = False
        emit({**row, "part": "time", "what": "fused bf16, fastest swept configs", "fast_gelu": fast, "ms": ms,
              "gb_per_s_two_kernels": nb["block"] / ms / 1e6, "tuning": copy.deepcopy(triton_convs.TUNING)}, out)
        fastest = copy.deepcopy(triton_convs.TUNING)
        triton_convs.TUNING.update(saved)
    return fastest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="128,16", help="the first one gets the launch-parameter sweep")
    ap.add_argument("--blocks", default="mbconv0,patch_merging0")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--best-out", default=None, help="write the fastest swept TUNING here (JSON): pointwise and "
                    "dw_rows from mbconv0, depthwise_pointwise from patch_merging0; bench_vs_official.py --triton-tuning")
    ap.add_argument("--out", default=None)
    ap.add_argument("--size", type=int, default=256, help="stage-0 grid (LiteMedSAM: 256)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--encoder", type=int, default=0, metavar="BATCH",
                    help="also time the whole compiled encoder at this batch, with and without the Triton blocks")
    ap.add_argument("--attention", default="sdpa", help="window attention of the --encoder runs (runtime.fast)")
    args = ap.parse_args()
    global DEV, REPEAT
    DEV, REPEAT = args.device, args.repeat
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t_start = time.perf_counter()
    seg = load_segmenter("litemedsam", device="cpu")
    enc32 = copy.deepcopy(seg.model.image_encoder).eval()
    fuse_batchnorm(enc32)
    enc32 = enc32.to(DEV).to(memory_format=torch.channels_last)
    enc16 = copy.deepcopy(enc32).to(torch.bfloat16)
    import triton

    base = {"device": torch.cuda.get_device_name() if DEV == "cuda" else DEV, "torch": torch.__version__,
            "triton": triton.__version__}
    batches = [int(b) for b in args.batches.split(",")]
    best: dict = {}
    for block in filter(None, args.blocks.split(",")):
        pick = (lambda e: e.layers[0].blocks[0]) if block == "mbconv0" else (lambda e: e.layers[0].downsample)
        make = FusedMBConv if block == "mbconv0" else FusedPatchMerging
        ref32, ref16 = pick(enc32), pick(enc16)
        compiled = copy.deepcopy(ref16)
        decompose_convs(compiled)
        mods = {"encoder": enc32, "ref32": ref32, "fused32": make(ref32), "fused bf16": make(ref16),
                "original bf16 eager": ref16,
                "original bf16 compiled": torch.compile(compiled, dynamic=False, options=dict(REALIZE_STENCIL_INPUTS))}
        mods["fused bf16 compiled"] = torch.compile(mods["fused bf16"], dynamic=False)
        mods["fused bf16 tanh"] = make(ref16)
        mods["fused bf16 tanh"].fast_gelu = True  # every GELU of the block in the tanh form
        for i, b in enumerate(batches):
            row = {**base, "block": block, "batch": b}
            accuracy_and_time(block, b, args.size, mods, row, args.out)
            if i == 0 and not args.no_sweep:
                fastest = sweep_block(block, b, args.size, mods, row, args.out)
                keys = ("pointwise", "dw_rows") if block == "mbconv0" else ("depthwise_pointwise",)
                best.update({k: fastest[k] for k in keys})
            if DEV == "cuda":
                torch.cuda.empty_cache()
    if args.best_out and best:
        Path(args.best_out).write_text(json.dumps(best))
    if args.encoder:
        encoder_rows(enc32, args.encoder, args.size, args.attention, base, args.out)
    emit({**base, "part": "done", "total_s": time.perf_counter() - t_start}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
