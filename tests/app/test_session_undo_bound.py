"""The undo memory bound across a session's studies, and the byte counting it rests on (``app.session``'s
``_trim_undo``, ``undo_nbytes``, ``_owner``): issue 26's mutation run left these unread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app import session as session_module
from app.session import Edit, PromptState, Session, _owner, undo_nbytes
from data.readers import read_study
from tests.conftest import SAMPLES

PLANE = (256, 256)


@pytest.fixture(scope="module")
def volume():
    return read_study(SAMPLES / "ct_head_0051_series")


def _noise_edit(index: int, seed: int) -> Edit:
    """A plane edit whose packed 'after' cannot be compressed (~128 KiB)."""
    after = np.random.default_rng(seed).integers(0, 65535, PLANE, dtype=np.uint16)
    return Edit("noise", "coronal", index, np.zeros(PLANE, np.uint16), after)


def test_a_view_counts_as_its_array_and_a_tensor_slice_as_its_whole_storage():
    base = np.zeros((4, 8, 8), np.float32)
    assert _owner(base[1][2:5]) == (id(base), base.nbytes)
    tensor = torch.zeros(4, 256, 256)
    logits = tensor[1].numpy()  # what a decoder's output slice looks like
    storage = tensor.untyped_storage()
    assert _owner(logits) == (storage.data_ptr(), 4 * 256 * 256 * 4)
    assert _owner(logits[:10]) == (storage.data_ptr(), 4 * 256 * 256 * 4)


def test_each_shared_array_is_counted_once_at_the_newest_step_that_holds_it():
    shared = np.ones((1, 256, 256), np.float32)  # logits a refining click shares with the step before
    p = PromptState("coronal", 0, 1, logits=shared, base=np.zeros(PLANE, np.uint16))
    first = Edit("a", "coronal", 0, np.zeros(PLANE, np.uint16), np.ones(PLANE, np.uint16), None, p)
    second = Edit("b", "coronal", 0, np.ones(PLANE, np.uint16), np.ones(PLANE, np.uint16), p, None)
    packed = [e.before.nbytes + e.after.nbytes for e in (first, second)]
    shared_bytes = shared.nbytes + p.base.nbytes
    assert undo_nbytes([first, second]) == [packed[0], packed[1] + shared_bytes]
    assert undo_nbytes([first]) == [packed[0] + shared_bytes] and undo_nbytes([]) == []


@pytest.fixture
def two_steps_on_a(volume, tmp_path, monkeypatch) -> Session:
    """A session whose undo memory holds 3.5 noise edits, with two edits applied on study A."""
    step = sum(undo_nbytes([_noise_edit(0, 0)]))
    monkeypatch.setattr(session_module, "MAX_UNDO_BYTES", int(3.5 * step))
    s = Session(id="0" * 32, directory=tmp_path)
    s.start_study(volume, "a", "A")
    s.apply(_noise_edit(0, 1))
    s.apply(_noise_edit(1, 2))
    return s


def test_the_studies_left_longest_ago_give_their_history_up_first(volume, two_steps_on_a):
    s = two_steps_on_a
    s.undo()  # study A keeps one undo and one redo step
    s.start_study(volume, "c", "C")
    s.apply(_noise_edit(0, 3))
    s.start_study(volume, "b", "B")  # A (2 steps, left first), C (1 step), B open
    a, c = (s.stashed[session_module.study_key(k)] for k in ("a", "c"))
    assert (len(a["undo"]), len(a["redo"]), len(c["undo"])) == (1, 1, 1)
    s.apply(_noise_edit(0, 4))  # B 1 + C 1 + A 2 = 4 steps > 3.5: A, left longest ago, gives way
    assert (a["undo"], a["redo"]) == ([], []) and len(c["undo"]) == 1 and len(s.undo_stack) == 1
    s.apply(_noise_edit(1, 5))  # B 2 + C 1 = 3 steps: all fit
    assert len(c["undo"]) == 1 and len(s.undo_stack) == 2
    s.apply(_noise_edit(2, 6))  # B 3 + C 1 > 3.5: C gives way, B keeps its 3
    assert c["undo"] == [] and len(s.undo_stack) == 3
    s.apply(_noise_edit(3, 7))  # B alone: 4 > 3.5, its oldest goes
    assert len(s.undo_stack) == 3


def test_a_kept_study_within_the_bound_keeps_its_history(volume, two_steps_on_a):
    s = two_steps_on_a
    s.start_study(volume, "b", "B")
    s.apply(_noise_edit(0, 3))  # 1 + 2 = 3 steps: A keeps both
    assert len(s.stashed[session_module.study_key("a")]["undo"]) == 2
    s.start_study(volume, "a", "A")  # back to A: its two steps undo
    assert len(s.undo_stack) == 2 and s.undo() is not None and s.undo() is not None and s.undo() is None
