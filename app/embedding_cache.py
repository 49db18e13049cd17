"""A small bounded cache of slice embeddings keyed by (volume, slice, model, window).

Encoding is the slow step (~2 s per LiteMedSAM slice on a CPU); prompting is ~60 ms. The cache
lets propagation, re-propagation after a correction and the UI's slice browsing encode each
slice once. It is per session (pass it in; never a module global) and least-recently-used.
Missing slices are encoded in batches with ``Segmenter.embed_batch``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Hashable, Sequence

import numpy as np

from data.parallel import map_slices
from data.volume import Volume
from data.windowing import Window, slice_to_rgb
from models.segmenter import Embedding, Segmenter

CacheKey = tuple[str, int, str, Hashable]
EMBEDDING_BYTES = 4 << 20  # one LiteMedSAM / SAM slice embedding (256 x 64 x 64 float32)
# On a GPU a batch of several slices shorter than ``batch_size`` (a volume's last one) is padded up to it with
# copies of its last slice, so a volume's encode runs one batch shape. cuDNN prepares its kernels once per new
# shape: a 300-slice CT's last batch of 12 cost the first propagation of a process 1.4 s (H100: first run 3.06 s,
# padded 1.82 s, a 320-slice volume with no short batch 1.82 s; 3D Dice unchanged; docs/benchmarks.md).
PAD_SHORT_GPU_BATCHES = True


def volume_key(volume: Volume) -> str:
    """A content key of a volume: its voxels and geometry (two studies never share one by accident).

    SHA-256 over the voxel buffer itself (no copy): x86 and ARM hash it in hardware, 2.5x faster than the
    earlier blake2b over a copy (a 300 x 512 x 512 CT: 0.18 s against 0.48 s here), and a propagation
    hashed its volume twice (1.1 s of a 4.2 s walk on the H200, docs/benchmarks.md)."""
    h = hashlib.sha256()
    h.update(str((volume.array.shape, str(volume.array.dtype), volume.spacing, volume.origin, volume.direction)).encode())
    h.update(memoryview(np.ascontiguousarray(volume.array)).cast("B"))
    return h.hexdigest()[:32]


def padded(segmenter: Segmenter, chunk: list[int], batch_size: int) -> list[int]:
    """``chunk`` padded to ``batch_size`` with its last slice where :data:`PAD_SHORT_GPU_BATCHES` applies (the
    encoder has no batch-wide statistics, so each slice's embedding is its own; the copies are dropped)."""
    device = getattr(segmenter, "device", None)
    if not PAD_SHORT_GPU_BATCHES or getattr(device, "type", None) != "cuda" or not 1 < len(chunk) < batch_size:
        return chunk
    return chunk + [chunk[-1]] * (batch_size - len(chunk))


def window_key(window: Window | None) -> Hashable:
    return None if window is None else (round(float(window.lo), 6), round(float(window.hi), 6))


def embedding_nbytes(embedding: Embedding) -> int:
    """Bytes an embedding keeps alive: the storages behind its features and extras (a view counts whole), and
    its grey picture."""
    storages = {}
    for t in (embedding.features, *embedding.extras.values()):
        if not hasattr(t, "untyped_storage"):
            continue  # not a tensor (a stand-in): it holds no tensor memory
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    picture = getattr(embedding, "picture", None)
    return sum(storages.values()) + (picture.nbytes if isinstance(picture, np.ndarray) else 0)


class EmbeddingCache:
    """LRU cache of :class:`Embedding` objects, bounded by count and, with ``max_bytes``, by the bytes
    its embeddings really hold (:func:`embedding_nbytes`: a model with larger embeddings or extra
    feature maps keeps fewer). The newest embedding is always kept."""

    def __init__(self, max_items: int = 48, max_bytes: int | None = None):
        if max_items < 1:
            raise ValueError(f"EmbeddingCache max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, Embedding] = OrderedDict()
        self._sizes: dict[CacheKey, int] = {}
        self.nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: CacheKey) -> Embedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: CacheKey, embedding: Embedding) -> None:
        size = embedding_nbytes(embedding)
        with self._lock:
            self.nbytes += size - self._sizes.get(key, 0)
            self._items[key], self._sizes[key] = embedding, size
            self._items.move_to_end(key)
            while len(self._items) > 1 and (
                len(self._items) > self.max_items or (self.max_bytes is not None and self.nbytes > self.max_bytes)
            ):
                old, _ = self._items.popitem(last=False)
                self.nbytes -= self._sizes.pop(old)

    def items(self) -> list[tuple[CacheKey, Embedding]]:
        """A snapshot of (key, embedding), oldest first (to move them into a larger cache)."""
        with self._lock:
            return list(self._items.items())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()
            self.nbytes = 0

    def embeddings(
        self,
        segmenter: Segmenter,
        volume: Volume,
        slices: Sequence[int],
        window: Window | None,
        *,
        vkey: str | None = None,
        batch_size: int = 4,
        on_encoded: Callable[[int], None] | None = None,
    ) -> dict[int, Embedding]:
        """Embeddings of ``slices``, encoding the missing ones ``batch_size`` at a time.

        ``vkey``: a precomputed :func:`volume_key` (hashing a large volume once per call is enough).
        ``on_encoded(n)`` is told how many slices each batch encoded (for progress bars).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        vkey = vkey or volume_key(volume)
        wkey = window_key(window)
        out: dict[int, Embedding] = {}
        missing = []
        for k in dict.fromkeys(slices):
            hit = self.get((vkey, int(k), segmenter.name, wkey))
            if hit is None:
                missing.append(int(k))
            else:
                self.hits += 1
                out[int(k)] = hit
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            encoded = segmenter.embed_batch(map_slices(lambda k: slice_to_rgb(volume, k, window), padded(segmenter, chunk, batch_size)))
            for k, emb in zip(chunk, encoded):
                # own the memory: a slice of the batch tensor would keep the whole batch alive
                emb = replace(emb, features=emb.features.clone(), extras={k: v.clone() for k, v in emb.extras.items()})
                self.misses += 1
                self.put((vkey, k, segmenter.name, wkey), emb)
                out[k] = emb
            if on_encoded is not None:
                on_encoded(len(chunk))
        return out
