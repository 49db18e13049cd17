"""Convolutions in the forms that the GPU paths compile well, and the Conv+BN folding they start from.

Shared by :mod:`runtime.fast` (eager and ``torch.compile`` paths) and :mod:`runtime.triton_convs`
(hand-written kernels), so that neither imports the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode ``Conv2d`` + ``BatchNorm2d`` pair (TinyViT's ``Conv2dBN``) into one conv.

    Mutates ``module``: call it on a copy. Returns the number of folded pairs.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential) and set(child._modules) == {"c", "bn"}:
            setattr(module, name, fuse_conv_bn_eval(child.c.eval(), child.bn.eval()))
            n += 1
        else:
            n += fuse_batchnorm(child)
    return n


class PointwiseConv(nn.Module):
    """A 1x1, stride-1, ungrouped ``Conv2d`` as a matmul over the channels of a channels-last tensor.

    The same arithmetic as the convolution (a sum over input channels); under ``torch.compile`` it
    becomes one cuBLAS GEMM with the bias and the following activation fused into a Triton
    epilogue, where cuDNN spent most of LiteMedSAM's batched encoder time converting layouts
    (docs/benchmarks.md, profile).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class ShiftedDepthwiseConv(nn.Module):
    """A depthwise (groups = channels) ``Conv2d`` as a sum of k*k shifted, per-channel-scaled copies.

    Memory-bound by nature, so it belongs in one fused elementwise kernel: ``torch.compile`` makes
    it one Triton kernel together with the folded BatchNorm bias and the GELU after it, instead of
    a cuDNN grouped convolution plus layout transforms.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[:, 0], requires_grad=False)  # (C, k, k)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.stride, self.padding = conv.stride[0], conv.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.weight.shape[-1], self.stride, self.padding
        h_out = (x.shape[-2] + 2 * p - k) // s + 1
        w_out = (x.shape[-1] + 2 * p - k) // s + 1
        xp = F.pad(x, (p, p, p, p))
        out = None
        for dy in range(k):
            for dx in range(k):
                tap = xp[:, :, dy : dy + s * (h_out - 1) + 1 : s, dx : dx + s * (w_out - 1) + 1 : s]
                term = tap * self.weight[:, dy, dx].view(1, -1, 1, 1).to(x.dtype)
                out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(x.dtype)
        return out


def decompose_convs(module: nn.Module) -> int:
    """Replace 1x1 and depthwise ``Conv2d`` layers by :class:`PointwiseConv` / :class:`ShiftedDepthwiseConv`.

    For compiled GPU encoders only (eager, the shifted sum is k*k kernels). Mutates ``module``:
    call it on a copy. Returns the number of replaced layers.
    """
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.padding_mode == "zeros" and child.dilation == (1, 1):
            square = child.kernel_size[0] == child.kernel_size[1] and child.stride[0] == child.stride[1]
            if child.kernel_size == (1, 1) and child.stride == (1, 1) and child.groups == 1:
                setattr(module, name, PointwiseConv(child))
                n += 1
            elif square and child.groups == child.in_channels == child.out_channels and child.padding[0] == child.padding[1]:
                setattr(module, name, ShiftedDepthwiseConv(child))
                n += 1
        else:
            n += decompose_convs(child)
    return n
