"""`medseg serve`'s default batching window follows the backend (issue 22, docs/benchmarks.md section H).

On the GPU default ``torch-fp16`` every encode and prompt replays as a CUDA graph, one request each, and on an
H100 the batcher made 20 sessions slower (click p95 50-94 ms against 23-37 ms one at a time): such a server
must serve one at a time unless told otherwise. A GPU backend with eager decoders still batches."""

from __future__ import annotations

import pytest

from app.cli import build_parser
from app.commands import serve


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """The keyword arguments `medseg serve` hands to the UI's launch (nothing is started)."""
    import app.ui

    seen: dict = {}
    monkeypatch.setattr(app.ui, "launch", lambda **kw: seen.update(kw))
    monkeypatch.delenv("MEDSEG_BACKEND", raising=False)
    # `medseg serve` claims its state folder before it launches: a temporary one, never the user's default (this
    # process holds the claim until it exits, and a test claiming ~/.local/state/medseg refused every other one)
    monkeypatch.setenv("MEDSEG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(serve, "limit_malloc_arenas", lambda n: False)  # no process-wide setting from a test
    return seen


def _serve(*argv: str) -> None:
    args = build_parser().parse_args(["serve", *argv])
    assert serve.run(args) == 0


def test_gpu_default_backend_serves_one_at_a_time(launched):
    _serve("--device", "cuda")
    assert launched["batch_window_ms"] == 0.0


def test_gpu_eager_backend_batches_and_a_flag_wins(launched):
    _serve("--device", "cuda", "--backend", "torch")
    assert launched["batch_window_ms"] == 4.0
    _serve("--device", "cuda", "--batch-window-ms", "6")
    assert launched["batch_window_ms"] == 6.0


def test_cpu_serves_one_at_a_time(launched):
    _serve()
    assert launched["batch_window_ms"] == 0.0
