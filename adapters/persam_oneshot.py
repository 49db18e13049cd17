"""One-shot segmentation for the CLI and the UI: learn from one annotated slice, segment others.

``fit_oneshot`` embeds the reference once and returns an immutable :class:`OneShot` (keep it in the
user's session); ``OneShot.segment`` / ``segment_images`` apply it to other slices or studies. The
shared model is never modified (PerSAM's decoder hooks live only inside each call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from adapters.body_mask import body_mask, both
from adapters.decoder_hooks import mask_decoder_of, two_way_transformer
from adapters.persam import (
    PerSAMReference,
    PerSAMResult,
    location_allowed,
    persam_reference,
    position_region,
    persam_segment,
    reference_intensity_range,
)
from adapters.persam_box import PerSAMBoxModel, fit_persam_box, persam_box_segment
from adapters.persam_f import ITERATIONS, PerSAMFModel, fit_persam_f, persam_f_segment
from models.segmenter import Embedding, Segmenter

# persam / persam_f: the paper's methods; persam_box: our box-prompt variant for box-trained models.
METHODS = ("persam", "persam_f", "persam_box")
# Keep the positive point on pixels that look like the reference structure (adapters.persam.location_allowed).
# Off: it moved PerSAM-F's point out of the air but lowered its held-out mean Dice (docs/oneshot.md, session 11).
LOCATION_GATE = False
# Keep the positive point inside the body of its slice (adapters.body_mask): the structure is never in the air.
# Clean references only (parity references never are restricted). Off in session 14 (PerSAM-F's held-out mean fell,
# 0.427 -> 0.409: its points in the air gave frame-filling masks that scored); on since session 17, with the point
# route's candidates the size of the reference (adapters.persam.SIZED_METHODS): PerSAM-F held out 0.435 -> 0.480,
# shared brain 0.567 -> 0.744, head 0.559 -> 0.581, by the rule fixed before the run (docs/clicks.md, session 17).
BODY_MASK = True


@dataclass(frozen=True)
class OneShot:
    """A learnt reference. method: one of METHODS; the matching one of the model fields is set."""

    method: str
    model_name: str
    reference: PerSAMReference | None = None
    persam_f: PerSAMFModel | None = None
    persam_box: PerSAMBoxModel | None = None

    @property
    def base(self) -> PerSAMReference:
        """The PerSAM reference inside whichever model the method keeps."""
        if self.persam_f is not None:
            return self.persam_f.reference
        return self.persam_box.reference if self.persam_box is not None else self.reference

    def segment(
        self, segmenter: Segmenter, embedding: Embedding, image: np.ndarray | None = None, *,
        location_gate: bool | None = None, body: bool | None = None, position: bool | None = None,
    ) -> PerSAMResult:
        """Segment the learnt structure on one embedded slice.

        image: that slice as the model got it ((H, W[, 3]) uint8); with it the positive point stays inside the
        slice's body (``body``, default ``BODY_MASK``) and, with ``location_gate`` (default ``LOCATION_GATE``), on
        pixels that look like the reference structure. ``position`` (default: the method is in
        ``adapters.persam.POSITION_METHODS``): the positive point stays near where the reference structure was.
        """
        if segmenter.name != self.model_name:
            raise RuntimeError(
                f"this one-shot reference was learnt with {self.model_name!r}; segmenting with {segmenter.name!r} "
                "needs a new reference"
            )
        gate = LOCATION_GATE if location_gate is None else location_gate
        allowed = location_allowed(image, self.base.intensity_range) if gate else None
        allowed = both(allowed, body_region(image, self.base.parity, body))
        allowed = both(allowed, position_region(embedding.original_size, self.base, self.method, position))
        if self.method == "persam_f":
            return persam_f_segment(segmenter, self.persam_f, embedding, allowed=allowed)
        if self.method == "persam_box":
            return persam_box_segment(segmenter, self.persam_box, embedding, allowed=allowed)
        return persam_segment(segmenter, self.reference, embedding, allowed=allowed)


def body_region(image: np.ndarray | None, parity: bool, body: bool | None) -> np.ndarray | None:
    """The slice's body where the positive point may lie (None: anywhere; parity references never restricted)."""
    on = BODY_MASK if body is None else body
    return body_mask(image) if on and image is not None and not parity else None


def fit_oneshot(
    segmenter: Segmenter,
    ref_image: np.ndarray,
    ref_mask: np.ndarray,
    *,
    method: str = "persam",
    parity: bool = False,
    iterations: int = ITERATIONS,
    ref_embedding: Embedding | None = None,
    location_gate: bool | None = None,
    body: bool | None = None,
    sized: bool = True,
) -> OneShot:
    """Learn a structure from one slice.

    ref_image: (H, W) or (H, W, 3) uint8 (windowed slice). ref_mask: (H, W) bool, the structure.
    ref_embedding: pass it if the slice is already embedded (the UI caches embeddings).
    location_gate (default ``LOCATION_GATE``): PerSAM-F's training point on the reference is gated too.
    body (default ``BODY_MASK``): PerSAM-F's training point stays inside the reference slice's body too.
    sized: the reference keeps its size for the point route's candidates (``adapters.persam.candidate_half_sides``,
    for the methods in ``SIZED_METHODS``); False = the route's fixed sizes.
    """
    if method not in METHODS:
        raise ValueError(f"one-shot method must be one of {', '.join(METHODS)}, got {method!r}")
    two_way_transformer(mask_decoder_of(segmenter))  # refuse unsupported models before any work
    embedding = ref_embedding if ref_embedding is not None else segmenter.embed(ref_image)
    mask = np.asarray(ref_mask, dtype=bool)
    rng = None if parity or not mask.any() or mask.shape != np.asarray(ref_image).shape[:2] else (
        reference_intensity_range(ref_image, mask)
    )  # an unusable mask is refused below, with the reason
    if method == "persam_f":
        gate = LOCATION_GATE if location_gate is None else location_gate
        allowed = None if rng is None or not gate else location_allowed(ref_image, rng)
        allowed = both(allowed, body_region(ref_image, parity, body))
        model = fit_persam_f(
            segmenter, embedding, ref_mask, parity=parity, iterations=iterations, intensity_range=rng, allowed=allowed,
            sized=sized,
        )
        return OneShot(method, segmenter.name, persam_f=model)
    if method == "persam_box":
        box = fit_persam_box(segmenter, embedding, ref_mask, parity=parity, intensity_range=rng)
        return OneShot(method, segmenter.name, persam_box=box)
    reference = persam_reference(segmenter, embedding, ref_mask, parity=parity, intensity_range=rng, sized=sized)
    return OneShot(method, segmenter.name, reference=reference)


def segment_images(
    segmenter: Segmenter,
    oneshot: OneShot,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    location_gate: bool | None = None,
    body: bool | None = None,
    position: bool | None = None,
) -> list[PerSAMResult]:
    """Segment several (H, W[, 3]) uint8 slices (e.g. every slice of a volume), embedding in batches."""
    results: list[PerSAMResult] = []
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        for image, emb in zip(batch, segmenter.embed_batch(batch)):
            results.append(oneshot.segment(segmenter, emb, image, location_gate=location_gate, body=body,
                                           position=position))
            if progress is not None:
                progress(len(results), len(images))
    return results
