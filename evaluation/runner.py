"""Run a segmenter over a manifest with a click protocol -> one :class:`StepRow` per case and click.

No CLI code here: ``app/commands/eval.py``, a batch runner or a training loop call
:func:`evaluate` (a whole manifest) or :func:`evaluate_case` (one loaded case) directly.
Each slice is embedded once and the embedding reused across the protocol's steps and across
rows that share the same slice image (e.g. two structures on one slice).
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation.clicks import Protocol, ProtocolError, Step, simulate
from evaluation.manifest import CaseLoader, CaseSpec, LoadedCase, read_manifest
from evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, EmptyPolicy, case_metrics
from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding, Segmenter

PER_CASE_COLUMNS = ("case_id", "structure", "clicks", "dice", "iou", "hd95", "nsd", "seconds")


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the numbers, recorded in summary.json."""

    protocol: Protocol
    margin: int = 5  # px added to each side of the ground-truth box
    jitter: int = 0  # px: each box side moves by a uniform integer in [-jitter, jitter]
    seed: int = 0
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    policy: EmptyPolicy = EmptyPolicy()
    feed_logits: bool = True  # feed the previous low-res logits back on each click

    def as_dict(self) -> dict:
        return {
            "protocol": str(self.protocol),
            "margin_px": self.margin,
            "jitter_px": self.jitter,
            "seed": self.seed,
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "empty_policy": {"both_empty": self.policy.both_empty, "one_empty_hd": self.policy.one_empty_hd},
            "feed_logits": self.feed_logits,
        }


@dataclass(frozen=True)
class StepRow:
    """One line of per_case.csv, plus the case's attributes (for grouping).

    seconds: model time of this step; the first step of a case also holds the image encoding
    when it was computed for this case (0 extra when the slice's embedding was reused).
    """

    case_id: str
    structure: str
    clicks: int
    dice: float
    iou: float
    hd95: float
    nsd: float
    seconds: float
    attributes: dict[str, str] = field(default_factory=dict)

    def csv_row(self) -> dict[str, object]:
        return {c: getattr(self, c) for c in PER_CASE_COLUMNS}

    def flat(self) -> dict[str, object]:
        return {**self.attributes, **self.csv_row()}


@dataclass
class EvalRun:
    """The result of :func:`evaluate`: rows in (case, click) order and what produced them."""

    rows: list[StepRow]
    settings: EvalSettings
    model: str
    manifest: str
    attributes: list[str]
    n_cases: int


def _slice_key(spec: CaseSpec) -> tuple:
    """What decides the pixels a model sees for a row (image file, slice, view, window)."""
    return (str(spec.image), -1 if spec.slice_index is None else spec.slice_index, spec.transform, spec.window or ())


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator per (seed, case): a case gets the same prompts in any subset or order."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


class EmbeddingCache:
    """The last few embeddings keyed by the slice's pixels (not by name: two rows may share a slice)."""

    def __init__(self, segmenter: Segmenter, size: int = 4):
        self.segmenter = segmenter
        self.size = size
        self._items: dict[str, Embedding] = {}

    def get(self, image: np.ndarray) -> tuple[Embedding, float]:
        """-> (embedding, seconds spent encoding now; 0 when reused)."""
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()
        if key in self._items:
            return self._items[key], 0.0
        t0 = time.perf_counter()
        emb = self.segmenter.embed(image)
        sec = time.perf_counter() - t0
        self._items[key] = emb
        while len(self._items) > self.size:
            self._items.pop(next(iter(self._items)))
        return emb, sec


def evaluate_case(
    segmenter: Segmenter,
    case: LoadedCase,
    settings: EvalSettings,
    *,
    embedding: Embedding | None = None,
    embed_seconds: float = 0.0,
    on_step: Callable[[Step], None] | None = None,
) -> list[StepRow]:
    """All steps of ``settings.protocol`` on one case; embeds the slice unless ``embedding`` is given.

    ``on_step`` sees each simulated step (its prompts and mask), e.g. to save the final masks.
    """
    if embedding is None:
        t0 = time.perf_counter()
        embedding = segmenter.embed(case.image)
        embed_seconds = time.perf_counter() - t0

    def predict(prompts: Prompts, multimask: bool) -> MaskResult:
        return segmenter.predict(embedding, prompts, multimask_output=multimask)

    spec = case.spec
    rows: list[StepRow] = []
    try:
        steps = simulate(
            predict,
            case.gt,
            settings.protocol,
            margin=settings.margin,
            jitter=settings.jitter,
            rng=case_rng(settings.seed, spec.case_id),
            feed_logits=settings.feed_logits,
            spacing=case.spacing,
        )
        for i, step in enumerate(steps):
            if on_step is not None:
                on_step(step)
            m = case_metrics(step.mask, case.gt, case.spacing, nsd_tolerance_mm=settings.nsd_tolerance_mm, policy=settings.policy)
            rows.append(
                StepRow(
                    case_id=spec.case_id,
                    structure=spec.structure,
                    clicks=step.clicks,
                    dice=m.dice,
                    iou=m.iou,
                    hd95=m.hd95,
                    nsd=m.nsd,
                    seconds=step.seconds + (embed_seconds if i == 0 else 0.0),
                    attributes=dict(spec.attributes),
                )
            )
    except ProtocolError as e:
        raise ProtocolError(f"case {spec.case_id!r} (manifest line {spec.line}): {e}") from e
    return rows


def evaluate(
    segmenter: Segmenter,
    manifest: str | Path,
    settings: EvalSettings,
    *,
    cases: list[CaseSpec] | None = None,
    progress: bool = True,
    on_case: Callable[[list[StepRow]], None] | None = None,
    cache: EmbeddingCache | None = None,
) -> EvalRun:
    """Every case of ``manifest`` (or the given subset ``cases``) under ``settings``.

    ``progress`` shows a tqdm bar on stderr; ``on_case`` gets each case's rows as they come
    (for streaming to disk or a dashboard). Pass one ``cache`` to several calls to compare
    protocols on the same slices without encoding them again.
    """
    all_cases, attributes = read_manifest(manifest)
    cases = all_cases if cases is None else cases
    loader = CaseLoader(manifest)
    cache = cache if cache is not None else EmbeddingCache(segmenter)
    # Visit rows that share a slice one after the other so each slice is encoded once;
    # the rows come back in manifest order.
    order = sorted(range(len(cases)), key=lambda i: _slice_key(cases[i]))
    by_case: dict[int, list[StepRow]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc=f"eval {settings.protocol}", unit="case")
    try:
        for i in order:
            case = loader.load(cases[i])
            emb, sec = cache.get(case.image)
            case_rows = evaluate_case(segmenter, case, settings, embedding=emb, embed_seconds=sec)
            by_case[i] = case_rows
            if on_case is not None:
                on_case(case_rows)
            if bar is not None:
                bar.set_postfix(dice=f"{case_rows[-1].dice:.3f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return EvalRun(
        rows=[r for i in range(len(cases)) for r in by_case[i]],
        settings=settings,
        model=getattr(segmenter, "name", type(segmenter).__name__),
        manifest=str(manifest),
        attributes=attributes,
        n_cases=len(cases),
    )
