"""What a session keeps in memory once its page has gone (the soak's bound, issue 23).

A closed tab must not keep its study's embeddings (up to 1 GiB for propagation) nor keep a
background encoder filling them; the labels and files stay.
"""

from __future__ import annotations

import time

from app.interaction import ModelRunner
from app.propagation_job import encode_study
from app.session import SessionStore
from data.readers import read_study
from tests.conftest import SAMPLES


def test_a_closed_page_drops_the_study_embeddings_and_stops_their_encoder(tmp_path):
    store = SessionStore(tmp_path)
    session = store.create()
    session.start_study(read_study(SAMPLES / "ct_head_0051_series"), "ct", "ct")
    session.labels[5, 100:110, 100:110] = 1
    store.bind("tab", session.id)
    thread = encode_study(ModelRunner("cpu"), session, batch_size=2)
    cache = session.runtime["propagation_cache"]
    deadline = time.monotonic() + 600
    while len(cache) == 0 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first batch is in
    assert len(cache) >= 1

    store.release("tab")  # the page unloads
    thread.join(600)
    assert not thread.is_alive()
    assert len(cache) < session.volume.num_slices, "the encoder went on after the page had gone"
    assert "propagation_cache" not in session.runtime and "study_encoder" not in session.runtime
    assert "embeddings" not in session.runtime
    assert store.get(session.id).labels[5, 105, 105] == 1  # the work stays
