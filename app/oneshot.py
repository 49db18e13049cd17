"""The UI's one-shot mode: learn a structure from one annotated slice, find it on other slices or studies.

The reference is the active label's mask on the shown plane. It is fitted with
``adapters.persam_oneshot.fit_oneshot`` (PerSAM, PerSAM-F or our PerSAM-box) on the plane's cached
embedding and written, with the slice image and mask, to ``<session>/oneshot_reference.npz`` (one
file, written atomically). The reference lives on disk rather than in the session's memory because
it must outlive the study it came from: opening another study in the same session (which resets the
session's runtime) or a server restart keeps it, and it is applied to the new study's planes.

Applying it writes into the active label as one undoable edit. Rule: a target plane where the
active label already has pixels is **skipped** (never overwritten silently); the status names how
many were skipped. Other labels are never overwritten either (results fill unlabelled pixels only).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adapters.decoder_hooks import UnsupportedDecoderError, mask_decoder_of, two_way_transformer
from adapters.persam import PerSAMReference, ReferenceMaskError, half_extent, relative_box
from adapters.persam_box import PerSAMBoxModel
from adapters.persam_f import ITERATIONS, MaskWeights, PerSAMFModel
from adapters.persam_oneshot import OneShot, fit_oneshot
from app.interaction import ModelRunner, embeddings_of, plane_image
from app.render import Plane
from app.session import Edit, Session, SessionError, log_prompt
from data.writers import atomic_output
from models.segmenter import Embedding, Segmenter

# What the UI offers (label -> adapters method). PerSAM-box is ours: box-trained LiteMedSAM needs it
# for small structures (docs/oneshot.md).
METHODS = {"PerSAM": "persam", "PerSAM-F": "persam_f", "PerSAM-box": "persam_box"}
SCOPES = ("this slice", "slice range", "whole volume")
REFERENCE_FILE = "oneshot_reference.npz"
FORMAT = 1
BATCH = 4  # slices encoded per forward pass when a range misses the cache

Report = Callable[[float, str], None]


@dataclass(frozen=True)
class Reference:
    """A fitted one-shot reference and where it came from (what the UI shows)."""

    oneshot: OneShot
    image: np.ndarray  # (H, W, 3) uint8, the model's input of the reference plane
    mask: np.ndarray  # (H, W) bool
    study_name: str
    view: str
    index: int
    label_name: str
    created: float

    @property
    def method_label(self) -> str:
        return next(k for k, v in METHODS.items() if v == self.oneshot.method)

    def describe(self) -> str:
        return (
            f"Reference: {self.label_name} on {self.view} slice {self.index} of {self.study_name} "
            f"({int(self.mask.sum())} px), {self.method_label}, model {self.oneshot.model_name}."
        )


@dataclass(frozen=True)
class Applied:
    """What one application did: the edit (None if nothing changed) and the per-plane outcome."""

    edit: Edit | None
    written: tuple[int, ...]
    skipped: tuple[int, ...]
    empty: tuple[int, ...]


def reference_path(session: Session) -> Path:
    return session.directory / REFERENCE_FILE


# --- fitting ----------------------------------------------------------------------------------
def decoder_side(segmenter: Segmenter) -> Segmenter:
    """The segmenter whose PyTorch mask decoder one-shot hooks: for an ONNX-encoded model (the CPU default,
    ``runtime.backend_choice``) its torch variant, which decodes the ONNX embeddings (:func:`as_decoder_side`)."""
    return getattr(segmenter, "base", None) or segmenter


def as_decoder_side(segmenter: Segmenter, embedding: Embedding) -> Embedding:
    """``embedding`` labelled for :func:`decoder_side` (same features: the ONNX encoder's)."""
    return replace(embedding, model_name=segmenter.name) if embedding.model_name != segmenter.name else embedding


def supported(segmenter: Segmenter) -> None:
    """Refuse a model whose decoder PerSAM cannot guide (SessionError with the reason)."""
    try:
        two_way_transformer(mask_decoder_of(segmenter))
    except UnsupportedDecoderError as e:
        raise SessionError(f"one-shot is not available with {segmenter.name}: {e}") from e


def set_reference(
    runner: ModelRunner, session: Session, method_label: str, report: Report | None = None, *,
    iterations: int = ITERATIONS,
) -> Reference:
    """Fit the active label's mask on the shown plane as the reference and save it.

    iterations: PerSAM-F's training steps (the paper's 1000; tests use fewer).
    """
    if method_label not in METHODS:
        raise SessionError(f"unknown one-shot method {method_label!r}; choose one of {', '.join(METHODS)}")
    session.require_study()
    view, index = session.view.view, session.view.index[session.view.view]
    label = session.label(session.active)
    mask = np.asarray(session.region(view, index)) == session.active
    if not mask.any():
        raise SessionError(
            f"{label.name} is empty on this slice: annotate the structure here first (click, box or brush), "
            "then use it as the reference"
        )
    method = METHODS[method_label]
    image = plane_image(session, view, index)
    with runner.turn():
        segmenter = decoder_side(runner.segmenter(session.model))
        supported(segmenter)
        if report:
            report(0.1, "encoding the reference slice")
        embedding = as_decoder_side(segmenter, runner.embedding(session, view, index))
        if report:
            report(0.3, f"PerSAM-F: training the mask weights on the reference ({iterations} steps)"
                   if method == "persam_f" else f"{method_label}: learning the reference")
        try:
            oneshot = fit_oneshot(segmenter, image, mask, method=method, ref_embedding=embedding,
                                  iterations=iterations)
        except (ReferenceMaskError, UnsupportedDecoderError) as e:
            raise SessionError(f"cannot use this slice as the reference: {e}") from e
        except ValueError as e:  # PerSAM-F on a model without 3 multimask outputs
            raise SessionError(f"{method_label} is not available with {session.model}: {e}") from e
    ref = Reference(oneshot, image, mask, session.study_name, view, int(index), label.name, time.time())
    save_reference(session, ref)
    return ref


# --- persistence ------------------------------------------------------------------------------
def save_reference(session: Session, ref: Reference) -> Path:
    """One .npz (image, mask, fitted tensors, JSON facts), written atomically."""
    o = ref.oneshot
    base = o.base
    meta = {
        "format": FORMAT, "method": o.method, "model": o.model_name, "parity": bool(base.parity),
        "study_name": ref.study_name, "view": ref.view, "index": ref.index, "label_name": ref.label_name,
        "created": ref.created,
    }
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "image": ref.image,
        "mask": ref.mask,
        "target_feat": base.target_feat.detach().cpu().numpy(),
        "target_embedding": base.target_embedding.detach().cpu().numpy(),
        "selected": base.selected,
    }
    if base.intensity_range is not None:  # the location gate's grey range; older files lack it (no gate)
        arrays["intensity_range"] = np.asarray(base.intensity_range, dtype=np.float64)
    if o.persam_f is not None:  # the learned weights (3 floats) and the training point; not the 1000-step log
        arrays["mask_weights"] = o.persam_f.mask_weights.weights
        arrays["train_point_xy"] = o.persam_f.train_point_xy
    if o.persam_box is not None:
        arrays["box_size"] = np.asarray(o.persam_box.box_size, dtype=np.int64)
    path = reference_path(session)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def load_reference(session: Session, device: str | torch.device = "cpu") -> Reference | None:
    """The session's saved reference, or None if none was set."""
    path = reference_path(session)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            a = {k: z[k] for k in z.files if k != "meta"}
        base = PerSAMReference(
            torch.as_tensor(a["target_feat"], device=device), torch.as_tensor(a["target_embedding"], device=device),
            a["selected"].astype(bool), meta["model"], bool(meta["parity"]),
            tuple(float(v) for v in a["intensity_range"]) if "intensity_range" in a else None,
            None if bool(meta["parity"]) else half_extent(a["mask"]),
            None if bool(meta["parity"]) else relative_box(a["mask"]),
        )
        method = meta["method"]
        if method == "persam_f":
            empty = np.zeros(0, np.float32)
            weights = MaskWeights(a["mask_weights"].astype(np.float32), np.zeros((0, 2), np.float32), empty, empty)
            oneshot = OneShot(method, meta["model"], persam_f=PerSAMFModel(base, weights, a["train_point_xy"], empty))
        elif method == "persam_box":
            size = tuple(int(v) for v in a["box_size"])
            oneshot = OneShot(method, meta["model"], persam_box=PerSAMBoxModel(base, size))
        elif method == "persam":
            oneshot = OneShot(method, meta["model"], reference=base)
        else:
            raise ValueError(f"unknown method {method!r}")
        return Reference(oneshot, a["image"], a["mask"].astype(bool), meta["study_name"], meta["view"],
                         int(meta["index"]), meta["label_name"], float(meta["created"]))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise SessionError(f"{path}: the saved one-shot reference cannot be read ({e}); set the reference again") from e


def describe(session: Session) -> str:
    """One line for the UI: the current reference, or how to make one."""
    try:
        ref = load_reference(session)
    except SessionError as e:
        return f"⚠ {e}"
    if ref is None:
        return "No reference yet: annotate a structure on one slice, then press Use as one-shot reference."
    return ref.describe()


# --- applying ---------------------------------------------------------------------------------
def target_planes(session: Session, scope: str, first: float | None, last: float | None) -> list[int]:
    """The plane indices of the shown view that ``scope`` covers (SessionError names a bad range)."""
    volume = session.require_study()
    view = session.view.view
    n = Plane.of(volume, view).count(session.labels.shape)
    if scope == "this slice":
        return [session.view.index[view]]
    if scope == "whole volume":
        return list(range(n))
    if scope == "slice range":
        if first is None or last is None:
            raise SessionError("give the first and last slice of the range")
        lo, hi = sorted((int(first), int(last)))
        if lo < 0 or hi > n - 1:
            raise SessionError(f"slice range {lo}..{hi} is outside this view's slices 0..{n - 1}")
        return list(range(lo, hi + 1))
    raise SessionError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")


def _embeddings(runner: ModelRunner, session: Session, view: str, indices: list[int]):
    """Embeddings of the planes, from the session's cache or encoded ``BATCH`` at a time (caller holds a turn).

    Yields (index, embedding), cached planes first, so a long volume keeps at most a batch alive beyond the cache.
    """
    segmenter = runner.segmenter(session.model)
    cache = embeddings_of(session)
    pending: list[int] = []

    def flush():
        encoded = segmenter.embed_batch([plane_image(session, view, i) for i in pending])
        for i, emb in zip(pending, encoded):
            # own the memory: a slice of the batch tensor would keep the whole batch alive
            emb = replace(emb, features=emb.features.clone(), extras={k: v.clone() for k, v in emb.extras.items()})
            cache.put((session.model, view, i), emb)
            yield i, emb
        pending.clear()

    for i in indices:
        hit = cache.get((session.model, view, i))
        if hit is not None:
            yield i, hit
            continue
        pending.append(i)
        if len(pending) == BATCH:
            yield from flush()
    if pending:
        yield from flush()


def apply_reference(
    runner: ModelRunner,
    session: Session,
    scope: str,
    first: float | None = None,
    last: float | None = None,
    report: Report | None = None,
) -> Applied:
    """Segment the reference's structure on the target planes into the active label, as one edit."""
    session.require_study()
    view = session.view.view
    planes = target_planes(session, scope, first, last)
    ref = load_reference(session, runner.device)
    if ref is None:
        raise SessionError("no one-shot reference yet: annotate a structure on one slice and press "
                           "'Use as one-shot reference' first")
    if ref.oneshot.model_name != session.model:
        raise SessionError(f"the reference was learnt with {ref.oneshot.model_name}; switch the model back to it, "
                           f"or set the reference again with {session.model}")
    label = session.active
    plane = Plane.of(session.require_study(), view)
    todo = [k for k in planes if not (np.asarray(plane.extract(session.labels, k)) == label).any()]
    skipped = tuple(sorted(set(planes) - set(todo)))
    after = session.labels.copy()
    written, empty = [], []
    with runner.turn():
        segmenter = decoder_side(runner.segmenter(session.model))
        supported(segmenter)
        for done, (k, emb) in enumerate(_embeddings(runner, session, view, todo), start=1):
            image = plane_image(session, view, k)  # the model's input: the location gate reads its grey values
            mask = ref.oneshot.segment(segmenter, as_decoder_side(segmenter, emb), image).mask
            target = plane.extract(after, k)
            fill = np.asarray(mask, bool) & (target == 0)  # other labels are never overwritten
            if fill.any():
                target[fill] = label
                written.append(k)
            else:
                empty.append(k)
            if report:
                report(done / max(len(todo), 1), f"one-shot: slice {k} ({done}/{len(todo)})")
    written.sort()
    empty.sort()
    edit = None
    if written:
        name = session.label(label).name
        if len(planes) == 1:
            k = planes[0]
            edit = Edit(f"one-shot {name} on slice {k}", view, k, np.array(plane.extract(session.labels, k)),
                        np.array(plane.extract(after, k)), session.prompt, None)
        else:
            edit = Edit(f"one-shot {name} on {len(written)} slices", None, None, session.labels.copy(), after,
                        session.prompt, None)
        session.apply(edit)
        log_prompt(session.history.setdefault(label, []), {
            "kind": "oneshot", "method": ref.oneshot.method, "view": view, "slices": written,
            "reference": {"study": ref.study_name, "view": ref.view, "index": ref.index},
            "time": round(time.time(), 3),
        })
    return Applied(edit, tuple(written), skipped, tuple(empty))


def summary(applied: Applied, label_name: str) -> str:
    """The status line after an application."""

    def span(ks: tuple[int, ...]) -> str:
        return f"slice {ks[0]}" if len(ks) == 1 else f"{len(ks)} slices ({ks[0]}..{ks[-1]})"

    parts = []
    if applied.written:
        parts.append(f"One-shot wrote {label_name} on {span(applied.written)}; undo reverts it")
    else:
        parts.append(f"One-shot changed nothing in {label_name}")
    if applied.skipped:
        parts.append(f"skipped {span(applied.skipped)} where {label_name} already has pixels (clear them to redo)")
    if applied.empty:
        parts.append(f"found nothing new on {span(applied.empty)}")
    note = " One-shot always finds something: check each slice, the ends above all." if len(applied.written) > 1 else ""
    return "; ".join(parts) + "." + note
