"""What the PNG metadata walk (data.pictures._png_without_oversized_metadata, run on every PNG opened) costs next to
decoding the picture: session 26's review asked whether walking every PNG's chunks was worth a second look.
    PYTHONPATH=. .venv/bin/python docs/bench/s27/png_metadata_walk.py
"""
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data.pictures import _png_without_oversized_metadata

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "noise_4096.png"  # incompressible: a large file of many IDAT chunks
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4096, 4096), dtype=np.uint8)).save(path)
    t = time.perf_counter()
    for _ in range(10):
        assert _png_without_oversized_metadata(path) is None
    walk_ms = (time.perf_counter() - t) / 10 * 1000
    t = time.perf_counter()
    with Image.open(path) as im:
        im.load()
    decode_ms = (time.perf_counter() - t) * 1000
    print(f"{path.stat().st_size / 1e6:.1f} MB PNG: metadata walk {walk_ms:.2f} ms (mean of 10), decode {decode_ms:.0f} ms")
