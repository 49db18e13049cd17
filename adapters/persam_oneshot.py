"""One-shot segmentation for the CLI and the UI: learn from one annotated slice, segment others.

``fit_oneshot`` embeds the reference once and returns an immutable :class:`OneShot` (keep it in the
user's session); ``OneShot.segment`` / ``segment_images`` apply it to other slices or studies. The
shared model is never modified (PerSAM's decoder hooks live only inside each call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from adapters.decoder_hooks import mask_decoder_of, two_way_transformer
from adapters.persam import PerSAMReference, PerSAMResult, persam_reference, persam_segment
from adapters.persam_box import PerSAMBoxModel, fit_persam_box, persam_box_segment
from adapters.persam_f import ITERATIONS, PerSAMFModel, fit_persam_f, persam_f_segment
from models.segmenter import Embedding, Segmenter

# persam / persam_f: the paper's methods; persam_box: our box-prompt variant for box-trained models.
METHODS = ("persam", "persam_f", "persam_box")


@dataclass(frozen=True)
class OneShot:
    """A learnt reference. method: one of METHODS; the matching one of the model fields is set."""

    method: str
    model_name: str
    reference: PerSAMReference | None = None
    persam_f: PerSAMFModel | None = None
    persam_box: PerSAMBoxModel | None = None

    def segment(self, segmenter: Segmenter, embedding: Embedding) -> PerSAMResult:
        """Segment the learnt structure on one embedded slice."""
        if segmenter.name != self.model_name:
            raise RuntimeError(
                f"this one-shot reference was learnt with {self.model_name!r}; segmenting with {segmenter.name!r} "
                "needs a new reference"
            )
        if self.method == "persam_f":
            return persam_f_segment(segmenter, self.persam_f, embedding)
        if self.method == "persam_box":
            return persam_box_segment(segmenter, self.persam_box, embedding)
        return persam_segment(segmenter, self.reference, embedding)


def fit_oneshot(
    segmenter: Segmenter,
    ref_image: np.ndarray,
    ref_mask: np.ndarray,
    *,
    method: str = "persam",
    parity: bool = False,
    iterations: int = ITERATIONS,
    ref_embedding: Embedding | None = None,
) -> OneShot:
    """Learn a structure from one slice.

    ref_image: (H, W) or (H, W, 3) uint8 (windowed slice). ref_mask: (H, W) bool, the structure.
    ref_embedding: pass it if the slice is already embedded (the UI caches embeddings).
    """
    if method not in METHODS:
        raise ValueError(f"one-shot method must be one of {', '.join(METHODS)}, got {method!r}")
    two_way_transformer(mask_decoder_of(segmenter))  # refuse unsupported models before any work
    embedding = ref_embedding if ref_embedding is not None else segmenter.embed(ref_image)
    if method == "persam_f":
        model = fit_persam_f(segmenter, embedding, ref_mask, parity=parity, iterations=iterations)
        return OneShot(method, segmenter.name, persam_f=model)
    if method == "persam_box":
        return OneShot(method, segmenter.name, persam_box=fit_persam_box(segmenter, embedding, ref_mask, parity=parity))
    return OneShot(method, segmenter.name, reference=persam_reference(segmenter, embedding, ref_mask, parity=parity))


def segment_images(
    segmenter: Segmenter,
    oneshot: OneShot,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[PerSAMResult]:
    """Segment several (H, W[, 3]) uint8 slices (e.g. every slice of a volume), embedding in batches."""
    results: list[PerSAMResult] = []
    for start in range(0, len(images), batch_size):
        for emb in segmenter.embed_batch(list(images[start : start + batch_size])):
            results.append(oneshot.segment(segmenter, emb))
            if progress is not None:
                progress(len(results), len(images))
    return results
