"""Benchmark: where a volume's batched encode spends its time on the GPU (issue 21's 2 s).

    python3 benchmarks/encode_breakdown.py --backend torch-fp16 --batches 32 64 --json

Times, on the 300 x 512 x 512 CT of ``bench_propagation.py``, each step of
``EmbeddingCache.embeddings`` alone, then together:

* ``host_s``: windowing to RGB (``slice_to_rgb``, in the host threads) and the host half of LiteMedSAM's
  preprocessing (resize, min/max, pad: ``upstream_host_inputs``) for every slice, no GPU;
* ``network_s``: the segmenter's ``encode`` on inputs already on the GPU, every slice in batches;
* ``embed_s``: ``embed_batch`` on RGB slices already windowed (preprocessing + copy + encoder);
* ``cache_s``: ``EmbeddingCache.embeddings`` end to end (what propagation runs);
* ``gpu_busy_s``: the sum of CUDA kernel times in ``cache_s`` (torch.profiler), so the rest is waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app.embedding_cache import EmbeddingCache  # noqa: E402
from bench_propagation import big_ct, set_graph_batches  # noqa: E402
from data.parallel import map_slices  # noqa: E402
from data.windowing import default_window, slice_to_rgb  # noqa: E402
from runtime import load_segmenter  # noqa: E402
from runtime.timing import median_ms  # noqa: E402


def timed(fn, device: str, repeats: int = 3) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up (``runtime.timing``, CUDA synchronised)."""
    return median_ms(fn, device=device, warmup=1, repeat=repeats) / 1000.0


def chunks(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="torch-fp16")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script only")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    p.add_argument("--graph-batches", type=int, nargs="+", default=None, help="as in bench_propagation.py")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--profile", action="store_true", help="torch.profiler's top kernels of one cache fill, to stderr")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    set_graph_batches(args.graph_batches)
    seg = load_segmenter("litemedsam", device=args.device, backend=args.backend)
    volume = big_ct(args.slices, args.size)
    window = default_window(volume)
    n = volume.num_slices
    rgb = map_slices(lambda k: slice_to_rgb(volume, k, window), list(range(n)))
    out: dict = {"backend": args.backend, "slices": n, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                 "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "graph_batches": args.graph_batches, "rows": []}
    for b in args.batches:
        parts = chunks(n, b)
        inputs = [seg.preprocess_batch([rgb[i] for i in r]) for r in parts]
        row = {"batch": b}
        row["host_window_s"] = timed(lambda: map_slices(lambda k: slice_to_rgb(volume, k, window), list(range(n))), args.device)
        if hasattr(seg, "upstream_host_inputs"):
            row["host_resize_s"] = timed(lambda: [seg.upstream_host_inputs([rgb[i] for i in r]) for r in parts], args.device)
        with torch.inference_mode():
            row["network_s"] = timed(lambda: [seg.encode(x) for x in inputs], args.device)
            row["embed_s"] = timed(lambda: [seg.embed_batch([rgb[i] for i in r]) for r in parts], args.device)
        row["cache_s"] = timed(lambda: EmbeddingCache(n + 1).embeddings(seg, volume, list(range(n)), window, batch_size=b), args.device)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                EmbeddingCache(n + 1).embeddings(seg, volume, list(range(n)), window, batch_size=b)
                if args.device == "cuda":
                    torch.cuda.synchronize()
            events = prof.key_averages()
            row["gpu_busy_s"] = sum(e.self_device_time_total for e in events) / 1e6
            print(f"--- batch {b}", file=sys.stderr)
            print(events.table(sort_by="self_device_time_total", row_limit=15), file=sys.stderr)
            print(events.table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
        out["rows"].append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(out["rows"][-1]), file=sys.stderr)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
