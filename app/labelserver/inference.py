"""MONAI Label infer requests -> medseg prompts -> a label map on the source grid.

Why here: the wire formats of 3D Slicer's MONAILabel module, OHIF's monai-label extension and
``MONAILabelClient`` meet medseg's ``Segmenter`` in one place. Voxel indices arrive as ``[i, j, k]``
(column, row, slice; what Slicer's RAS->IJK and OHIF's worldToIndex give), which on our ``[k, j, i]``
arrays is the click ``(x=i, y=j)`` on slice ``k`` - the same convention as ``medseg segment``.

Model entries (``GET /info/`` lists them):

* ``<model>`` - ``deepgrow``, dimension 2: segments the slice of the clicks/box, exactly what
  ``medseg segment`` computes for the same prompt.
* ``<model>_3d`` - ``deepgrow``, dimension 3: segments the prompted slice the same way, then carries it
  through the volume with ``app.propagation.propagate`` (``medseg propagate``).
* ``<model>_points`` - ``vista3d``: OHIF's point-prompt form (``points``, ``point_labels``,
  ``label_prompt``), run like the 3D entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from app.embedding_cache import EmbeddingCache, volume_key, window_key
from data.volume import Volume
from data.windowing import default_window, slice_to_rgb
from models.prompts import MAX_PROMPT_POINTS, Prompts, check_box_area

DEFAULT_LABEL = "structure"


class InferError(ValueError):
    """A request we cannot run (bad params, unknown model); the message names the field (HTTP 400)."""


# what int()/float() raise on a JSON value that is no finite number: null or a list (TypeError), NaN or a
# string (ValueError), Infinity (OverflowError; Python's json reads the Infinity literal)
NUMBER_ERRORS = (TypeError, ValueError, OverflowError)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    type: str  # "deepgrow" | "vista3d"
    dimension: int  # 2 | 3
    description: str
    labels: Mapping[str, int] = field(default_factory=lambda: {DEFAULT_LABEL: 1})

    def info(self) -> dict[str, Any]:
        return {"type": self.type, "labels": dict(self.labels), "dimension": self.dimension,
                "description": self.description, "config": {}}


def model_entries(model: str) -> dict[str, ModelEntry]:
    """The entries one medseg model is offered as."""
    return {
        model: ModelEntry(model, "deepgrow", 2, f"medseg {model}: one structure on the slice of the clicks or box"),
        f"{model}_3d": ModelEntry(f"{model}_3d", "deepgrow", 3,
                                  f"medseg {model}: the prompted slice, then propagated through the volume"),
        f"{model}_points": ModelEntry(f"{model}_points", "vista3d", 3,
                                      f"medseg {model}: point prompts (OHIF), propagated through the volume"),
    }


@dataclass(frozen=True)
class InferResult:
    labels: np.ndarray  # (K, H, W) uint8 on the source grid
    label_names: dict[str, int]
    latencies: dict[str, float]
    slice: int


def _voxels(value: Any, name: str, volume: Volume) -> list[tuple[int, int, int]]:
    if value in (None, ""):
        return []
    if isinstance(value, (list, tuple)) and len(value) > MAX_PROMPT_POINTS:  # refused before 10^6 are converted
        raise InferError(f"params.{name}: {len(value)} points; at most {MAX_PROMPT_POINTS} in one request")
    try:
        points = [tuple(int(round(float(c))) for c in p) for p in value]
    except NUMBER_ERRORS:
        raise InferError(f"params.{name}: expected a list of voxel indices [i, j, k], got {value!r}"[:300]) from None
    k_max, h, w = volume.num_slices, *volume.slice_shape
    for p in points:
        if len(p) != 3:
            raise InferError(f"params.{name}: each point must be [i, j, k], got {list(p)}")
        i, j, k = p
        if not (0 <= i < w and 0 <= j < h and 0 <= k < k_max):
            raise InferError(f"params.{name}: point {list(p)} is outside the image (i < {w}, j < {h}, k < {k_max})")
    return points


def _roi(value: Any, volume: Volume) -> tuple[float, float, float, float, int, int] | None:
    """``[i0, i1, j0, j1, k0, k1]`` (Slicer's ROI in IJK; corners in either order) -> box and slice span."""
    if value in (None, "", []):
        return None
    try:
        i0, i1, j0, j1, k0, k1 = (int(round(float(v))) for v in value)
    except NUMBER_ERRORS:
        raise InferError(f"params.roi: expected [i0, i1, j0, j1, k0, k1], got {value!r}"[:300]) from None
    i0, i1 = sorted((i0, i1))
    j0, j1 = sorted((j0, j1))
    k0, k1 = sorted((k0, k1))
    h, w = volume.slice_shape
    i0, i1, j0, j1 = max(i0, 0), min(i1, w - 1), max(j0, 0), min(j1, h - 1)
    k0, k1 = max(k0, 0), min(k1, volume.num_slices - 1)
    if i0 > i1 or j0 > j1 or k0 > k1:
        raise InferError(f"params.roi: {list(value)} does not overlap the image ({w} x {h} x {volume.num_slices})")
    return float(i0), float(j0), float(i1), float(j1), k0, k1


def request_prompts(entry: ModelEntry, params: Mapping[str, Any], volume: Volume) -> tuple[int, Prompts, int]:
    """(slice k, prompts on that slice, label value) from a request's params."""
    if entry.type == "vista3d" and params.get("points"):
        points = _voxels(params.get("points"), "points", volume)
        try:
            labels = [int(v) for v in (params.get("point_labels") or [1] * len(points))]
        except NUMBER_ERRORS:
            labels = []
        if len(labels) != len(points) or not all(v in (0, 1) for v in labels):
            raise InferError("params.point_labels: one 0 (background) or 1 (foreground) per point")
        fg = [p for p, v in zip(points, labels) if v == 1]
        bg = [p for p, v in zip(points, labels) if v == 0]
    else:
        fg = _voxels(params.get("foreground"), "foreground", volume)
        bg = _voxels(params.get("background"), "background", volume)
    roi = _roi(params.get("roi"), volume)
    k = params.get("slice")
    if k in (None, "", -1):
        if fg or bg:
            k = (fg or bg)[-1][2]  # the slice of the latest click, as Slicer and OHIF choose it
        elif roi is not None:
            k = (roi[4] + roi[5]) // 2
        else:
            raise InferError("params: give foreground/background clicks [[i, j, k], ...], points, or a roi box")
    try:
        k = int(k)
    except NUMBER_ERRORS:
        raise InferError(f"params.slice: expected a slice index, got {k!r}") from None
    if not 0 <= k < volume.num_slices:
        raise InferError(f"params.slice: {k} is out of range 0..{volume.num_slices - 1}")
    fg = [p for p in fg if p[2] == k]
    bg = [p for p in bg if p[2] == k]
    if not fg and roi is None:
        raise InferError(f"params: no foreground click and no roi on slice {k}")
    points = labels = None
    if fg or bg:
        points = np.asarray([[p[0], p[1]] for p in fg + bg], dtype=np.float32)
        labels = np.asarray([1] * len(fg) + [0] * len(bg), dtype=np.int64)
    box = None if roi is None else np.asarray(roi[:4], dtype=np.float32)
    check_box_area(box)
    prompts = Prompts(points=points, point_labels=labels, box=box, pixel_spacing=volume.pixel_spacing)
    prompts.validate(volume.slice_shape)
    value = 1
    if entry.type == "vista3d" and params.get("label_prompt"):
        try:
            value = int(list(params["label_prompt"])[0])
        except (*NUMBER_ERRORS, IndexError):
            raise InferError(f"params.label_prompt: expected [label index], got {params['label_prompt']!r}") from None
        if not 1 <= value <= 255:
            raise InferError(f"params.label_prompt: label index {value} must be in 1..255")
    return k, prompts, value


def _max_slices(params: Mapping[str, Any]) -> int | None:
    """``max_slices`` (an infer option a viewer may pass, e.g. OHIF's per-model config): walk at most N slices each way."""
    value = params.get("max_slices")
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except NUMBER_ERRORS:
        raise InferError(f"params.max_slices: expected a whole number >= 0, got {value!r}") from None
    if n < 0:
        raise InferError(f"params.max_slices: expected a whole number >= 0, got {n}")
    return n


def run_infer(segmenter, entry: ModelEntry, volume: Volume, params: Mapping[str, Any], cache: EmbeddingCache, *,
              backend: str) -> InferResult:
    """Run one request; the 2D path is step for step ``medseg segment`` (same window, embed, predict), the 3D one
    ``medseg propagate``'s default rule for ``backend`` (the one ``segmenter`` runs with)."""
    t0 = time.perf_counter()
    k, prompts, value = request_prompts(entry, params, volume)
    window = default_window(volume, None)
    t1 = time.perf_counter()
    labels = np.zeros(volume.array.shape[:3], dtype=np.uint8)
    if entry.dimension == 2:
        key = (volume_key(volume), k, segmenter.name, window_key(window))
        embedding = cache.get(key)
        if embedding is None:
            embedding = segmenter.embed(slice_to_rgb(volume, k, window))
            cache.put(key, embedding)
        result = segmenter.predict(embedding, prompts, multimask_output=False)
        labels[k][result.best_mask] = value
    else:
        from app.propagation import propagate
        from app.propagation_defaults import default_propagation

        settings = replace(default_propagation(backend), max_slices=_max_slices(params))
        result = propagate(segmenter, volume, k, prompts, window=window, cache=cache, settings=settings)
        labels[result.masks] = value
    t2 = time.perf_counter()
    name = str(params.get("label") or DEFAULT_LABEL)
    if entry.type == "vista3d":
        name = next((n for n, v in entry.labels.items() if v == value), name)
    return InferResult(labels=labels, label_names={name: value},
                       latencies={"pre": round(t1 - t0, 4), "infer": round(t2 - t1, 4), "invert": 0.0, "post": 0.0,
                                  "write": 0.0, "total": round(t2 - t0, 4), "transform": None},
                       slice=k)
