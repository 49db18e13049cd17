"""The three injectable layers: a SAM-Med2D adapter, SAM-Adapter's high-frequency prompts, LoRA.

Each one starts as the identity (its last projection is zero), so an injected model gives the
base model's outputs until it is trained: fine-tuning starts from what the base does well.

* :class:`ChannelSpatialAdapter`: SAM-Med2D's ``Adapter_Layer`` (channel attention, then a
  spatial conv down/up branch with a skip, then LayerNorm; OpenGVLab/SAM-Med2D
  ``segment_anything/modeling/image_encoder.py``), reused as is from
  :class:`models.sam_med2d.AdapterLayer`, between a down- and an up-projection so that its
  3x3/4x4 convolutions run on ``bottleneck`` channels, not on all of them (the official layer
  has ~14.7 M parameters per ViT-B block; here a few ten thousand).
* :class:`HighFrequencyPrompt`: SAM-Adapter's prompt generator (tianrun-chen/SAM-Adapter-PyTorch
  ``models/mmseg/models/sam/image_encoder.py::PromptGenerator``): a high-pass FFT of the input
  image through a patch conv, plus a Linear of the tokens, summed, then per block a
  ``lightweight_mlp`` (Linear, GELU) and a shared Linear back to the block width, added to the
  block's input. One instance serves a group of blocks of one width and resolution (a ViT has
  one group, a TinyViT one per stage). The FFT is :func:`models.sam_adapter.highpass_fft`.
* :class:`LoRALinear`: ``W x + (B A dropout(x)) * alpha / r`` with A Kaiming-uniform and B zero
  (microsoft/LoRA ``loralib/layers.py``), here on the attention's qkv projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.sam_adapter import highpass_fft
from models.sam_med2d import AdapterLayer


class ChannelSpatialAdapter(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): down-project, SAM-Med2D's adapter layer, up-project (zero-init)."""

    def __init__(self, dim: int, bottleneck: int, mlp_ratio: float = 0.25):
        super().__init__()
        if not 0 < bottleneck <= dim:
            raise ValueError(f"adapter bottleneck must be in 1..{dim} channels, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck)
        self.layer = AdapterLayer(bottleneck, mlp_ratio)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:  # the layer's stride-2 conv / transposed conv pair needs even sides
            raise ValueError(f"the SAM-Med2D adapter needs an even token grid, got {h} x {w}")
        return self.up(self.layer(self.down(x)))


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update; ``base`` keeps the original layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + update * self.scaling


class HighFrequencyPrompt(nn.Module):
    """Prompts for ``depth`` blocks of width ``dim`` on a ``grid`` x ``grid`` token grid.

    ``stride`` = input size / grid: the patch conv on the high-pass image lands on that grid.
    """

    def __init__(self, dim: int, depth: int, grid: int, stride: int, scale_factor: int = 32, freq_nums: float = 0.25):
        super().__init__()
        if dim < scale_factor:
            raise ValueError(f"block width {dim} is below the prompt scale factor {scale_factor}")
        small = dim // scale_factor
        self.grid, self.freq_nums = grid, freq_nums
        self.prompt_generator = nn.Conv2d(3, small, kernel_size=stride, stride=stride)
        self.embedding_generator = nn.Linear(dim, small)
        self.lightweight_mlp = nn.ModuleList(nn.Sequential(nn.Linear(small, small), nn.GELU()) for _ in range(depth))
        self.shared_mlp = nn.Linear(small, dim)
        nn.init.zeros_(self.shared_mlp.weight)
        nn.init.zeros_(self.shared_mlp.bias)

    def mixed_feature(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) encoder input, (B, grid*grid, C) tokens -> (B, grid*grid, C/scale)."""
        hand = self.prompt_generator(highpass_fft(image.float(), self.freq_nums).to(tokens.dtype))
        if hand.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"high-pass features are {tuple(hand.shape[-2:])}, expected a {self.grid} grid")
        return hand.flatten(2).transpose(1, 2) + self.embedding_generator(tokens)

    def prompt(self, mixed: torch.Tensor, index: int) -> torch.Tensor:
        """The prompt of the group's ``index``-th block, (B, grid*grid, C)."""
        return self.shared_mlp(self.lightweight_mlp[index](mixed))
