"""A linear layer and the GELU after it as one GEMM: cuBLASLt with bias and GELU in its epilogue.

Why: compiled at batch 128, each TinyViT MLP's ``fc1`` is a cuBLAS GEMM and its GELU one more pass
over the hidden tensor (2.1 GB written and read again per stage-1 block): ~8 ms of run 10's ~114 ms
a batch (docs/benchmarks.md). ``torch._addmm_activation(..., use_gelu=True)`` asks cuBLASLt for the
GEMM with the bias and the GELU applied as the result is written.

cuBLASLt's GELU is the tanh form, ``nn.GELU(approximate="tanh")``, and so is torch's CUDA fallback
where cuBLASLt does not apply (torch's tests compare it with that form); on the CPU the op computes
the same form itself. So :class:`LinearGELU` replaces an exact GELU only where
``runtime.fast.tuned(gelu="tanh")`` asks for it. The call is a ``torch.library`` custom op so that
``torch.compile`` keeps it whole (inductor would otherwise split it into a GEMM and a GELU pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("medseg::linear_gelu", mutates_args=(),
                         schema="(Tensor x, Tensor weight, Tensor bias) -> Tensor")
def linear_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU_tanh(x @ weight^T + bias) over the last dim of ``x``; all three of one dtype."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if x.is_cuda:
        y = torch._addmm_activation(bias, x2, weight.t(), use_gelu=True)
    else:  # the CPU kernel of _addmm_activation applies the erf GELU: keep one form on every device
        y = F.gelu(torch.addmm(bias, x2, weight.t()), approximate="tanh")
    return y.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class LinearGELU(nn.Module):
    """``GELU_tanh(fc(x))`` in one GEMM; shares ``fc``'s parameters.

    Under autocast the GEMM runs in the autocast dtype (like ``nn.Linear``); a LayerNorm in front
    returns float32 there, which would otherwise make this an fp32 GEMM.
    """

    def __init__(self, fc: nn.Linear):
        super().__init__()
        if fc.bias is None:
            raise ValueError("LinearGELU needs a linear layer with a bias (cuBLASLt's GELU epilogue adds it)")
        self.weight, self.bias = fc.weight, fc.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.weight.dtype
        with torch.autocast(kind, enabled=False):
            return linear_gelu_op(x.to(dt), self.weight.to(dt), self.bias.to(dt))
