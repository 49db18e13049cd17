"""Crash: ``medseg serve`` is killed with SIGKILL in the middle of a session and restarted on the same
state folder; the page comes back with its session cookie and every acknowledged edit is there.

The server is the real one (a child process on loopback, the real LiteMedSAM weights), driven
through the page protocol a browser uses (``scripts/page_client.Page``). An edit is acknowledged
when the server's answer to the event arrives, which the controller sends only after the atomic
save. The kill lands while the next edit (a box on a new label) is being processed: whether that
edit made it to disk or not, everything else must be exactly as acknowledged, and it may only have
added its own label on its own slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.session import SESSION_ID
from data.readers import read_study
from scripts.page_client import Page, ServerProcess
from tests.conftest import ROOT

CT = "CT head (DICOM series, 12 slices)"


def _labels(page: Page, dest) -> np.ndarray:
    return read_study(page.export(dest)).array


def _box_and_click(page: Page, x0: float, y0: float, x1: float, y1: float) -> None:
    """A box (two clicks) refined by a positive click in its middle: two acknowledged edits."""
    page.set_mode("box")
    page.click(x0, y0)
    page.click(x1, y1)
    page.set_mode("point +")
    page.click((x0 + x1) / 2, (y0 + y1) / 2)
    page.new_object()


@pytest.mark.slow
def test_acknowledged_edits_survive_kill_9_of_the_real_server(tmp_path, exclusive_server):
    assert (ROOT / "weights" / "lite_medsam.pth").is_file(), "run `make setup` for the LiteMedSAM weights"
    server = ServerProcess(tmp_path / "state", prefetch=0, log_path=tmp_path / "serve.log").start()
    try:
        page = Page(server.url)
        page.load()
        page.open_sample(CT)  # the page chains the shown slice's encode
        first_slice = int(page.last["slice"])
        _box_and_click(page, 150, 150, 300, 300)
        _box_and_click(page, 200, 260, 330, 380)
        page.add_label("organ 2")
        page.set_slice(first_slice + 2)
        _box_and_click(page, 180, 180, 320, 330)
        page.add_label("in flight")
        in_flight_label = int(page.last["label"])
        page.set_slice(first_slice - 2)
        page.set_mode("box")
        page.click(160, 160)  # the first corner: no label change yet
        acked = _labels(page, tmp_path / "acked.nii.gz")
        assert {1, 2} <= set(np.unique(acked).tolist()), "the acknowledged edits segmented nothing"

        # the browser reloads the page: a new cookie token for the same session (session 24), the old one retired
        first_token = page.token
        page.http.get(server.url + "/").raise_for_status()
        assert page.token != first_token

        # the second corner segments on the new label; kill the server while it works on it
        in_flight = page.start_click(340, 340)
        server.kill9()
        in_flight.close()
        # what a kill mid-save leaves beside the files it replaces (data.writers.atomic_output's temporaries):
        # never read, and removed at the restart (they were left for good)
        folder = next(d for d in (tmp_path / "state" / "sessions").iterdir() if SESSION_ID.match(d.name))
        (folder / "studies").mkdir(exist_ok=True)
        temporaries = [folder / ".labels.npz.k3j2h1x0.npz", folder / ".state.json.a1b2c3d4.json",
                       folder / ".prompt.npz.0123456789abcdef.tmp", folder / "studies" / ".ct.npz.q1w2e3r4.npz"]
        for temporary in temporaries:
            temporary.write_bytes(b"PK")

        server.start()
        assert not [t.name for t in temporaries if t.exists()]
        assert page.token  # the server set the session cookie
        again = Page(server.url, token=page.token)  # the cookie the browser kept
        restored_state = again.load()
        assert again.token == page.token
        assert restored_state["status"].startswith("Session restored")
        retired = Page(server.url, token=first_token).load()  # the token before the reload opens nothing (kill -9 too)
        assert not retired["status"].startswith("Session restored"), retired["status"]
        names = {name.split(" · ", 1)[1] for name, _ in restored_state["label_choices"]}
        assert {"label 1", "organ 2", "in flight"} <= names
        restored = _labels(again, tmp_path / "restored.nii.gz")
        # every acknowledged edit, exactly; the in-flight one only added its own label on its slice
        without_in_flight = np.where(restored == in_flight_label, 0, restored)
        np.testing.assert_array_equal(without_in_flight, acked)
        added = restored == in_flight_label
        assert not (added & (acked != 0)).any()
        assert added.any() == bool(added[first_slice - 2].any()) and added.sum() == added[first_slice - 2].sum()

        # the restored session keeps working: a new edit is acknowledged and exported
        again.set_slice(first_slice)
        _box_and_click(again, 260, 120, 400, 250)
        after = _labels(again, tmp_path / "after.nii.gz")
        assert np.count_nonzero(after) > np.count_nonzero(restored)
    finally:
        server.stop()
