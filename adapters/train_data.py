"""Training data for adapters: manifest cases in memory, a split by slice or structure, MONAI augmentation.

Cases come from an evaluation manifest (``evaluation.manifest``: the same columns, windows and
2D views as ``medseg eval``), so what is trained is what is measured. The validation split is
made by *slice* (image file + slice index), never by row: two structures on one slice go to
the same side, and a slice never appears in both. The split by *structure* also keeps the
validation structures out of training, to measure what an adapter does on structures it never saw.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from evaluation.manifest import CaseLoader, CaseSpec, LoadedCase, ManifestError, read_manifest

MIN_GT_PIXELS = 10  # an augmented mask smaller than this falls back to the unaugmented case


def slice_key(spec: CaseSpec) -> tuple[str, int]:
    """What makes two rows the same slice: the image file and the slice index."""
    return (str(Path(spec.image).resolve()), -1 if spec.slice_index is None else spec.slice_index)


def load_cases(manifest: str | Path) -> list[LoadedCase]:
    """Every row of ``manifest`` loaded (image (H, W, 3) uint8, gt (H, W) bool); empty GTs refused."""
    specs, _ = read_manifest(manifest)
    loader = CaseLoader(manifest)
    cases = [loader.load(s) for s in specs]
    empty = [c.spec.case_id for c in cases if not c.gt.any()]
    if empty:
        raise ManifestError(f"{manifest}: empty ground truth in case(s) {', '.join(empty[:5])}; remove those rows")
    return cases


def split_by_slice(
    cases: list[LoadedCase], val_fraction: float, seed: int
) -> tuple[list[LoadedCase], list[LoadedCase]]:
    """-> (train, val): whole slices go to validation until ``val_fraction`` of the slices are there."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    keys = sorted({slice_key(c.spec) for c in cases})
    n_val = int(round(len(keys) * val_fraction))
    if val_fraction > 0 and len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    train = [c for c in cases if slice_key(c.spec) not in val_keys]
    val = [c for c in cases if slice_key(c.spec) in val_keys]
    return train, val


def split_by_structure(
    cases: list[LoadedCase], val_fraction: float, seed: int
) -> tuple[list[LoadedCase], list[LoadedCase]]:
    """-> (train, val) where validation structures are never trained on and no slice is on both sides.

    ``val_fraction`` of the structures (by name) and of the slices are drawn for validation;
    validation = the drawn structures on the drawn slices, training = the other structures on
    the other slices. Rows of a drawn structure on a training slice, or of a training structure
    on a validation slice, are used by neither side: what the validation scores measures is how
    the adapter does on structures it never saw, on slices it never saw.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    structures = sorted({c.spec.structure for c in cases})
    if val_fraction == 0 or len(structures) < 2:
        return list(cases), []
    rng = np.random.default_rng(seed)
    n_val = min(max(int(round(len(structures) * val_fraction)), 1), len(structures) - 1)
    val_structures = {structures[i] for i in rng.permutation(len(structures))[:n_val]}
    # the slices drawn from those that hold a validation structure, so validation is not empty
    holding = sorted({slice_key(c.spec) for c in cases if c.spec.structure in val_structures})
    n_slices = min(max(int(round(len(holding) * val_fraction)), 1), len(holding))
    val_keys = {holding[i] for i in rng.permutation(len(holding))[:n_slices]}
    train = [c for c in cases if c.spec.structure not in val_structures and slice_key(c.spec) not in val_keys]
    val = [c for c in cases if c.spec.structure in val_structures and slice_key(c.spec) in val_keys]
    return train, val


def check_disjoint(train: list[LoadedCase], val: list[LoadedCase]) -> None:
    """Refuse a validation set that shares a slice with the training set (ValueError naming it)."""
    shared = {slice_key(c.spec) for c in train} & {slice_key(c.spec) for c in val}
    if shared:
        image, k = sorted(shared)[0]
        raise ValueError(
            f"{len(shared)} slice(s) are in both the training and the validation manifest (e.g. {image} slice {k}); "
            "a slice must be on one side only"
        )


def data_summary(manifest: str | Path, train: list[LoadedCase], val: list[LoadedCase]) -> dict:
    """What the adapter was trained on, for its metadata (no pixels)."""

    def side(cases: list[LoadedCase]) -> dict:
        return {
            "cases": len(cases),
            "slices": len({slice_key(c.spec) for c in cases}),
            "structures": dict(Counter(c.spec.structure for c in cases)),
            "modalities": dict(Counter(c.spec.attributes.get("modality", "") for c in cases)),
            "case_ids": [c.spec.case_id for c in cases],
        }

    digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    return {"manifest": str(manifest), "manifest_sha256": digest, "train": side(train), "val": side(val)}


class Augment:
    """MONAI dictionary transforms on one slice: flip, small affine, intensity scale and shift.

    Works on (H, W, 3) uint8 + (H, W) bool and returns the same types, so the result goes
    through the model's own ``Segmenter.preprocess`` exactly as an inference slice does.
    """

    def __init__(self) -> None:
        from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

        keys = ("image", "label")
        self.transform = Compose(
            [
                RandFlipd(keys, prob=0.5, spatial_axis=1),
                RandAffined(
                    keys,
                    prob=0.5,
                    rotate_range=0.2,
                    scale_range=0.1,
                    translate_range=(8, 8),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandScaleIntensityd("image", factors=0.1, prob=0.3),
                RandShiftIntensityd("image", offsets=10.0, prob=0.3),
            ]
        )

    def __call__(self, image: np.ndarray, gt: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.transform.set_random_state(seed=seed % (2**32))
        out = self.transform(
            {"image": np.moveaxis(image, -1, 0).astype(np.float32), "label": gt[None].astype(np.float32)}
        )
        img = np.asarray(out["image"])
        lab = np.asarray(out["label"])[0] > 0.5
        if lab.sum() < MIN_GT_PIXELS:
            return image, gt
        return np.clip(np.rint(np.moveaxis(img, 0, -1)), 0, 255).astype(np.uint8), lab
