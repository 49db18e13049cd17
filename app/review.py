"""Review a propagation slice by slice: accept it, fix it, or cut the range here.

Why a module of its own: the UI only wires three buttons to these functions (the image panel
is being rebuilt elsewhere); the logic, and its tests, live here. The review walks the slices
that the last propagation of the active label reached, outward from where it started.

- accept: the slice becomes an anchor (re-propagation keeps it) and the review moves on;
- fix: stay here; the next correction on this slice makes it an anchor (any edit in the
  acquisition view does), then Propagate again recomputes the slices around it;
- cut: remove the label from this slice outward (away from the start), one undoable edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.propagation_job import add_anchor, job_of
from app.render import acquisition_view
from app.session import Edit, Session, SessionError


@dataclass
class Review:
    """Where the review stands: the slices to look at (in order) and the current position."""

    label: int
    start: int
    slices: list[int]
    position: int = 0

    @property
    def current(self) -> int:
        return self.slices[self.position]


def review_of(session: Session) -> Review | None:
    return session.runtime.get("review")


def start_review(session: Session) -> Review:
    """Review the last finished propagation of the active label, nearest slices to its start first."""
    job = job_of(session)
    if job is not None and job.running:  # checked first: a running job has no result yet
        raise SessionError("the propagation is still running: review it when it is done")
    if job is None or job.result is None or job.study != session.study_key:
        raise SessionError("nothing to review: propagate the active label first")
    if job.label != session.active:
        name = next((d.name for d in session.label_defs if d.value == job.label), f"label {job.label}")
        raise SessionError(f"the last propagation was of {name}: make it the active label to review it")
    slices = _reached(session, job.label, job.start)
    if not slices:
        raise SessionError("the propagation reached no slice besides the start one")
    review = Review(label=job.label, start=job.start, slices=slices)
    session.runtime["review"] = review
    _show(session, review)
    return review


def _reached(session: Session, label: int, start: int) -> list[int]:
    """The slices holding ``label`` now, besides ``start``, nearest to it first: what a review steps through."""
    held = np.flatnonzero((session.labels == label).reshape(len(session.labels), -1).any(axis=1))
    return sorted((int(k) for k in held if int(k) != start), key=lambda k: (abs(k - start), k))


def _follow(session: Session, review: Review) -> None:
    """Re-read the review's slices from the labels as they are now, staying on the shown slice where it is still one.

    Why: Undo of a Cut here (or any edit since) changes which slices hold the label; a list fixed at the start
    kept the cut slices out of reach of ◀ ▶ after the Undo brought them back."""
    current = review.current
    review.slices = _reached(session, review.label, review.start) or [review.start]
    review.position = review.slices.index(current) if current in review.slices else \
        min(review.position, len(review.slices) - 1)


def _show(session: Session, review: Review) -> None:
    view = acquisition_view(session.require_study())
    session.view.view = view
    session.view.index[view] = review.current
    session.prompt = None


def _require(session: Session) -> Review:
    review = review_of(session)
    if review is None:
        raise SessionError("no review in progress: press Review after a propagation")
    return review


def step_review(session: Session, delta: int) -> Review:
    review = _require(session)
    _follow(session, review)
    review.position = int(np.clip(review.position + delta, 0, len(review.slices) - 1))
    _show(session, review)
    return review


def accept(session: Session) -> Review:
    """Keep the shown slice as it is (an anchor) and go to the next one."""
    review = _require(session)
    if not (session.labels[review.current] == review.label).any():  # an empty anchor is ignored by the walk
        raise SessionError(f"slice {review.current} holds nothing of {session.label(review.label).name} now, so "
                           "Propagate again would fill it: to end the structure here press Cut here; or draw it")
    add_anchor(session, review.label, review.current)
    _follow(session, review)
    if review.position < len(review.slices) - 1:
        review.position += 1
    _show(session, review)
    return review


def cut_here(session: Session) -> Edit:
    """Remove the label from the shown slice outward (away from the start) as one undoable edit."""
    review = _require(session)
    k = review.current
    if k == review.start:  # no outward from the start: it cut the start slice and all below it (the user's own)
        raise SessionError(f"slice {k} is where the propagation started: Cut here removes the slices beyond it; "
                           "to remove this one, erase it or Clear label")
    before = session.labels.copy()
    after = before.copy()
    outward = slice(k, None) if k > review.start else slice(0, k + 1)
    region = after[outward]
    region[region == review.label] = 0
    edit = Edit(f"cut {session.label(review.label).name} from slice {k} outward", None, None, before, after,
                session.prompt, None)
    session.apply(edit)
    _follow(session, review)
    _show(session, review)
    return edit
