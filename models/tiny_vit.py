"""TinyViT image encoder (Wu et al., ECCV 2022), as used by MobileSAM and LiteMedSAM.

Written for this project, following the layer structure and state-dict names of MobileSAM's
``mobile_sam/modeling/tiny_vit_sam.py`` and LiteMedSAM's ``tiny_vit_sam.py`` (no timm).
The two differ only in the patch embedding, so one class serves both:

* MobileSAM: two 3x3 stride-2 Conv2d_BN (1024 input -> 256 grid) and a classifier head
  (``norm_head``/``head``) that SAM never uses but whose keys the checkpoint carries;
* LiteMedSAM: two 1x1 stride-1 Conv2d_BN (256 input -> 256 grid), no head.

Stages run at grid, grid/2, grid/4, grid/4 (the last PatchMerging has stride 1), then a SAM
neck maps 320 channels at 64 x 64 to the 256-channel image embedding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    patch_kernel: int = 1  # 1 (LiteMedSAM, stride 1) or 3 (MobileSAM, stride 2)
    num_classes: int = 0  # >0 adds the unused classifier head (MobileSAM checkpoints carry it)
    out_chans: int = 256

    def __post_init__(self) -> None:
        n = len(self.depths)
        if not (len(self.embed_dims) == len(self.num_heads) == len(self.window_sizes) == n):
            raise ValueError("embed_dims, depths, num_heads and window_sizes must have one entry per stage")
        if self.patch_kernel not in (1, 3):
            raise ValueError(f"patch_kernel must be 1 (stride 1) or 3 (stride 2), got {self.patch_kernel}")
        for d, h in zip(self.embed_dims, self.num_heads):
            if d % h:
                raise ValueError(f"embed dim {d} is not divisible by {h} heads")

    @property
    def grid(self) -> int:
        return self.img_size if self.patch_kernel == 1 else self.img_size // 4


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d; state-dict names ``c`` and ``bn``."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, kernel: int):
        super().__init__()
        stride, pad = (1, 0) if kernel == 1 else (2, 1)
        self.seq = nn.Sequential(
            Conv2dBN(cin, dim // 2, kernel, stride, pad), nn.GELU(), Conv2dBN(dim // 2, dim, kernel, stride, pad)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1, self.act1 = Conv2dBN(dim, hidden), nn.GELU()
        self.conv2, self.act2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU()
        self.conv3, self.act3 = Conv2dBN(hidden, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(y + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', C'); stride 1 into the last stage."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def _bias_index(window: int) -> tuple[torch.Tensor, int]:
    """LeViT-style attention-bias index: one learned bias per |dy|, |dx| offset in a window."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


class Attention(nn.Module):
    """Windowed multi-head attention with learned relative biases, via SDPA.

    ``impl`` picks how the product is computed (``runtime.fast.set_window_attention`` sets it on a
    tuned copy; the default is the reference): "sdpa" passes the bias as SDPA's mask, which on a GPU
    runs the memory-efficient kernel, poor at 49-token windows; "math" writes it out
    (``q k^T * scale + bias``, softmax in fp32, ``@ v``) so that ``torch.compile`` fuses bias and softmax
    into one kernel between two batched GEMMs; "flash" folds the bias into the dot product (see
    :meth:`_folded`) so that SDPA can take its flash kernel, which accepts no mask; "triton" runs
    ``window_kernel`` (CUDA; ``runtime.fast.set_window_attention`` sets ``runtime.triton_attention``'s),
    one kernel from the qkv output to proj's input. The kernel is handed in, so that ``models/`` imports
    nothing from ``runtime/``.
    """

    impl: str = "sdpa"
    window_kernel: Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor] | None = None

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        idx, n_off = _bias_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_off))
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.impl == "triton":
            if self.window_kernel is None:
                raise RuntimeError("impl 'triton' needs a window_kernel (runtime.fast.set_window_attention sets it)")
            bias = self.attention_biases[:, self.attention_bias_idxs]
            return self.proj(self.window_kernel(self.qkv(self.norm(x)), bias, self.num_heads, self.head_dim**-0.5))
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, n, n), the weights' dtype
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        elif self.impl == "math":
            scores = (q @ k.transpose(-2, -1)).float() * self.head_dim**-0.5 + bias.float()
            out = scores.softmax(-1).to(v.dtype) @ v
        else:
            out = self._folded(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    def _folded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention with the (heads, n, n) bias inside q.k, so no mask is passed: query i gains the
        one-hot e_i, key j gains column j of bias / scale; then scale * (q_i.k_j + bias[i, j] / scale)
        is the masked score. All widths are padded to a multiple of 8 (v with zeros, dropped after)."""
        b, heads, n, d = q.shape
        scale = d**-0.5
        width = d + n + (-(d + n)) % 8
        eye = torch.eye(n, dtype=q.dtype, device=q.device).expand(b, heads, n, n)
        cols = (bias.float().transpose(-2, -1) / scale).to(q.dtype).expand(b, heads, n, n)
        q_aug = F.pad(torch.cat([q, eye], -1), (0, width - d - n))
        k_aug = F.pad(torch.cat([k, cols], -1), (0, width - d - n))
        v_aug = F.pad(v, (0, width - d))
        return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=scale)[..., :d]


class TinyViTBlock(nn.Module):
    """Window attention (padded to whole windows), depthwise local conv, MLP; residuals."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = w = self.resolution
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self._window_attention(x)
        x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(x).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT encoder with a SAM neck: (B, 3, S, S) -> (B, 256, S_grid/4, S_grid/4)."""

    def __init__(self, config: TinyViTConfig = TinyViTConfig()):
        super().__init__()
        cfg = self.config = config
        dims, grid = cfg.embed_dims, cfg.grid
        self.patch_embed = PatchEmbed(3, dims[0], cfg.patch_kernel)
        resolutions = [grid, grid // 2, grid // 4, grid // 4]
        layers = []
        for i, depth in enumerate(cfg.depths):
            res = resolutions[i]
            last = i == len(cfg.depths) - 1
            out_dim = dims[min(i + 1, len(dims) - 1)]
            down = None if last else PatchMerging(res, dims[i], out_dim, stride=1 if i + 1 == len(dims) - 1 else 2)
            if i == 0:
                blocks = [MBConv(dims[0], cfg.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dims[i], res, cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio, cfg.local_conv_size)
                    for _ in range(depth)
                ]
            layers.append(Stage(blocks, down))
        self.layers = nn.ModuleList(layers)
        self.out_grid = resolutions[-1]
        if cfg.num_classes:
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], cfg.num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_grid, self.out_grid, c).permute(0, 3, 1, 2)
        return self.neck(x)
