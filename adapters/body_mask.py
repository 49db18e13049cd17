"""Where the body is on a windowed slice, from that slice alone: the one-shot methods' location prior is kept in it.

Why: PerSAM's cosine-similarity map on LiteMedSAM separates the target only weakly (Colin27 cerebellum, target
k 30: mean similarity 0.25 on the cerebellum, 0.22 on the rest of the head and 0.22 in the air; the maximum
0.36), so its arg-max often falls in the air outside the head (session 10: PerSAM-F on 5 of 11 cerebellum and 15
of 29 Colin27 brain targets), mostly in the bottom-left corner of the frame, in grid rows whose TinyViT
attention windows are zero-padded (docs/clicks.md, "One-shot: the body mask"). Whatever the model's features,
the structure a user annotated is never outside the body, so the positive point may not be either.

Rule (fixed before it was measured, no parameter): a pixel is foreground when its grey value is above the
slice's darkest value (the window's floor, where the air lands after windowing); the body is the foreground with
its holes filled (``scipy.ndimage.binary_fill_holes``: dark CSF, bone or gas inside the body stays in it). No
"largest connected component" step: on a brain-extracted image (MNI152 2009a, axial k 26) the largest component
is the cerebellum alone and the temporal lobes, part of the brain, would be cut off. A slice with no pixel above
its floor has no body (None: no restriction); a slice without air keeps almost every pixel, so the rule removes
nothing there. Noisy air above the floor is kept as body: then the rule restricts less, never wrongly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_mask(image: np.ndarray) -> np.ndarray | None:
    """(H, W) or (H, W, 3) windowed slice (the model's input; grey repeated in RGB) -> (H, W) bool body, or None.

    None when every pixel has the same grey value (nothing to tell apart): the caller then does not restrict.
    """
    a = np.asarray(image, dtype=np.float32)
    grey = a.mean(axis=2) if a.ndim == 3 else a
    foreground = grey > grey.min()
    if not foreground.any():
        return None
    return ndimage.binary_fill_holes(foreground)


def both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Intersection of two (H, W) bool 'allowed' masks where None means 'anywhere'."""
    if a is None:
        return b
    if b is None:
        return a
    return np.asarray(a, dtype=bool) & np.asarray(b, dtype=bool)
