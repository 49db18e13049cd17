"""The server's torch threads: one when torch only decodes (an ONNX encoder on the CPU), the user's
OMP_NUM_THREADS always wins, and a bad value is one clear error naming the variable."""

from __future__ import annotations

import pytest
import torch

from runtime import threads


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_an_onnx_encoder_on_the_cpu_leaves_torch_one_thread(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert threads.configure_serving("cpu", "onnx-int8-fast") == 1
    assert torch.get_num_threads() == 1


def test_a_torch_encoder_or_a_gpu_keeps_torchs_threads(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert threads.configure_serving("cpu", "torch") == 2
    assert threads.configure_serving("cuda", "torch-fp16") == 2


def test_the_users_omp_num_threads_wins(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(1)
    assert threads.configure_serving("cpu", "onnx-int8-fast") == 2


@pytest.mark.parametrize("bad", ["two", "0", "-1"])
def test_a_bad_omp_num_threads_is_one_clear_error(monkeypatch, bad):
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS must be a positive whole number, got '{bad}'"):
        threads.user_threads()


def test_the_onnx_decoders_get_one_thread_unless_the_user_says(monkeypatch):
    """onnx-int8-fast's decoders (ONNX Runtime) run on one thread like torch's did; OMP_NUM_THREADS wins."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.decoder_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.decoder_threads() == 2
