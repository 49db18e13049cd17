"""Deterministic synthetic weights of the parity fixtures (rule: ``shared/parity/README.md`` section 1).

Each key seeds its own PCG64 generator with crc32(key), so the official outputs recorded with these
weights can be reproduced without the official checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def synth_array(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(key.encode("utf-8"))))
    if not dtype.startswith("float"):
        return np.zeros(shape, dtype=dtype)
    if key.endswith("running_var"):
        a = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
    elif key.endswith("running_mean"):
        a = 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2:
        a = rng.standard_normal(shape) / math.sqrt(float(np.prod(shape[1:])))
    elif len(shape) == 1 and key.endswith("weight"):
        a = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        a = 0.1 * rng.standard_normal(shape)
    return np.asarray(a, dtype=np.float64).astype(dtype)


def manifest(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())


@lru_cache(maxsize=None)
def _cached(fixture_dir: str) -> tuple[tuple[str, np.ndarray], ...]:
    man = manifest(Path(fixture_dir))
    return tuple((k, synth_array(k, tuple(s), d)) for k, s, d in man["state_dict"])


def synthetic_state_dict(fixture_dir: Path) -> dict[str, torch.Tensor]:
    """The fixture's official key list filled by the rule (cached per process; fresh tensors each call)."""
    return {k: torch.from_numpy(a.copy()) for k, a in _cached(str(fixture_dir))}


def check_against_manifest(fixture_dir: Path, state: dict[str, torch.Tensor]) -> None:
    """Raise AssertionError if the regenerated weights differ from the manifest's checksums."""
    man = manifest(fixture_dir)
    check = man["synthetic_weights_check"]
    h = hashlib.sha256()
    for key, _, _ in man["state_dict"]:
        t = state[key].contiguous().numpy()
        h.update(key.encode("utf-8"))
        h.update(t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
    assert h.hexdigest() == check["sha256_all"], f"synthetic weights of {fixture_dir.name} do not match the manifest"
