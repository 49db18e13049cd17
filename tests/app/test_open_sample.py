"""`make run` opens the UI on a bundled sample (`medseg serve --open-sample`): a new session starts with the
sample shown; a restored session keeps its own study; a wrong sample name stops the server in one line."""

from __future__ import annotations

import pytest

from app import controller
from app.cli import main
from app.controller import AppContext, sample_studies
from app.interaction import ModelRunner, Prefetcher
from app.session import SessionStore

CT, MR = list(sample_studies())


@pytest.fixture()
def ctx(tmp_path):
    runner = ModelRunner("cpu")
    return AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))


def test_a_new_session_opens_the_sample_and_a_restored_one_keeps_its_study(ctx):
    vm = controller.start(ctx, None, None, CT)
    assert vm.image is not None and vm.status.startswith(f"Opened {CT}")
    assert ctx.store.get(vm.session_id).volume.num_slices == 12
    controller.open_sample(ctx, vm.session_id, MR)  # the user moves on to the MR
    again = controller.start(ctx, vm.session_id, None, CT)  # reload: the MR stays
    assert again.session_id == vm.session_id and again.status == "Session restored."
    assert ctx.store.get(vm.session_id).volume.num_slices == 32
    plain = controller.start(ctx, None)  # without --open-sample: nothing is opened
    assert plain.image is None and "Open a sample" in plain.status


def test_serve_refuses_an_unknown_sample_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_STATE_DIR", str(tmp_path / "state"))
    assert main(["serve", "--open-sample", "liver CT"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--open-sample 'liver CT'" in err and CT in err
    # a refused argument claims no state folder: this test claimed the user's default one for the rest of its
    # process, and the next `medseg serve` there was refused as "another medseg serve" (CI, session 20)
    assert not (tmp_path / "state").exists()


def test_the_plane_is_drawn_only_when_asked(ctx, monkeypatch):
    """The browser's viewer draws its own planes, so a page's sync never draws one on the server (it cost ~18 ms
    under the session lock per sync); a caller that asks for ``vm.image`` gets the plane drawn then, once."""
    drawn = []
    original = controller.render
    monkeypatch.setattr(controller, "render", lambda s: drawn.append(1) or original(s))
    vm = controller.start(ctx, None, None, CT)
    again = controller.view_model(ctx.store.get(vm.session_id), None)
    assert drawn == []
    image = again.image
    assert drawn == [1] and again.image is image
    assert image.ndim == 3 and image.shape[2] == 3
    assert (image == original(ctx.store.get(vm.session_id))).all()
