"""Benchmark: the walk's cost (decoders only, every slice's embedding cached) under two propagation rules.

    .venv/bin/python benchmarks/bench_walk_rules.py [--device cpu] [--rounds 3]

On the bundled 12-slice CT series, from slice 6 with the head's box: the box rule (the default) against
``prompt="auto", guard=0.7`` (the click model's mask prompt with the box answer as a guard, which decodes every
slice twice), in interleaved rounds in one process (docs/evaluation.md, 3D propagation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.embedding_cache import EmbeddingCache  # noqa: E402
from app.propagation import PropagationSettings, box_around, propagate  # noqa: E402
from data.readers import read_study  # noqa: E402
from data.windowing import default_window  # noqa: E402
from models.prompts import Prompts  # noqa: E402
from runtime import load_segmenter  # noqa: E402

RULES = {"box (default)": PropagationSettings(), "auto + guard 0.7": PropagationSettings(prompt="auto", guard=0.7)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    seg = load_segmenter("litemedsam", device=args.device, backend=args.backend)
    ct = read_study(ROOT / "samples" / "ct_head_0051_series")
    window = default_window(ct)
    k0 = ct.num_slices // 2
    box = box_around(ct.array[k0] > -300, 5)
    cache = EmbeddingCache(64)
    cache.embeddings(seg, ct, list(range(ct.num_slices)), window)
    walks: dict[str, list[float]] = {k: [] for k in RULES}
    for _ in range(args.rounds):
        for name, settings in RULES.items():
            t0 = time.perf_counter()
            propagate(seg, ct, k0, Prompts(box=box), window=window, cache=cache, settings=settings)
            if args.device != "cpu":
                torch.cuda.synchronize()
            walks[name].append(round(time.perf_counter() - t0, 3))
    print(json.dumps({"backend": seg.name, "device": args.device, "slices": ct.num_slices, "walk_s": walks,
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
