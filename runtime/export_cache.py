"""Files derived from a checkpoint (ONNX exports, int8 encoders), built once and checked before each reuse.

Why: an export takes tens of seconds and a quantisation seconds; they must happen once per weights file,
never per request or per process. A cached file that is half-written, edited on disk, or was made by
another exporter or another onnxruntime must never be run: it is rebuilt instead.

Each artefact ``X.onnx`` has a sidecar ``X.onnx.json``: its sha256, the cache key it was built under
(the weights' sha256, :data:`EXPORTER_VERSION`, the torch, onnx and onnxruntime versions) and the sha256
of the file it was derived from (``None`` for the exports made from the checkpoint itself). A file is
reused only if all three match; otherwise it is built again, under a lock (``build.lock`` in its folder)
so two processes starting cold build it once, written under a temporary name and renamed.

:data:`BUILDS` counts the builds of this process by file name (tests read it; so can a log).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from models.checkpoint import sha256_of as file_sha256

log = logging.getLogger(__name__)

# Bump when runtime/onnx_export.py, onnx_fast_export.py, onnx_decoder_export.py or onnx_quant.py change what they
# write.
EXPORTER_VERSION = "22.1"
SIDECAR_SUFFIX = ".json"
BUILDS: collections.Counter[str] = collections.Counter()


def cache_key(weights_sha256: str) -> dict[str, str]:
    """What a cached file depends on besides its own recipe (which its file name carries)."""
    import onnx
    import onnxruntime
    import torch

    return {
        "weights_sha256": weights_sha256,
        "exporter": EXPORTER_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def why_stale(path: Path, key: dict[str, str], source: Path | None = None) -> str | None:
    """None when ``path`` may be reused; else why not (missing, no sidecar, other key, damaged, other source)."""
    if not path.is_file():
        return "missing"
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable checksum file"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return f"built under another key ({meta.get('key') if isinstance(meta, dict) else meta!r})"
    if source is not None and meta.get("source_sha256") != file_sha256(source):
        return f"made from another {source.name}"
    if meta.get("sha256") != file_sha256(path):
        return "sha256 differs from the recorded one (damaged or edited)"
    return None


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(
    paths: list[Path], build: Callable[[Path], None], key: dict[str, str], source: Path | None = None
) -> list[Path]:
    """``paths`` (files of one folder), reused when each checks out, else all rebuilt by ``build(tmp)``.

    ``build`` writes files of the same names into the temporary folder it is given; they are then moved
    into place (file first, sidecar second: a crash between the two leaves a file that fails its check).
    """
    folder = paths[0].parent
    if all(why_stale(p, key, source) is None for p in paths):
        return paths
    with _build_lock(folder):
        reasons = {p.name: why_stale(p, key, source) for p in paths}  # another process may have built them
        if all(r is None for r in reasons.values()):
            return paths
        stale = {n: r for n, r in reasons.items() if r not in (None, "missing")}
        if stale:
            log.warning("rebuilding cached %s: %s", ", ".join(stale), "; ".join(stale.values()))
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
        try:
            build(tmp)
            source_sha = None if source is None else file_sha256(source)
            for p in paths:
                built = tmp / p.name
                meta = {"sha256": file_sha256(built), "key": key, "source_sha256": source_sha}
                os.replace(built, p)
                side = tmp / (p.name + SIDECAR_SUFFIX)
                side.write_text(json.dumps(meta, indent=1), encoding="utf-8")
                os.replace(side, _sidecar(p))
                BUILDS[p.name] += 1
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return paths
