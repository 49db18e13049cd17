"""One way to put an adapter into both encoders: find the transformer blocks, wrap or hook them.

Blocks: segment_anything's ``ImageEncoderViT`` blocks (tokens (B, H, W, C), one group) and our
TinyViT's ``TinyViTBlock`` s (tokens (B, H*W, C), one group per stage). TinyViT's stage 0 is
MBConv (convolutions, no tokens) and is skipped: the adapters sit in stages 1-3, as SAM-Med2D
puts them in transformer blocks only.

* ``sam_med2d``: each block's ``mlp`` becomes :class:`AdaptedMlp` = mlp(x) + adapter(norm(x)),
  SAM-Med2D's ``x + mlp(norm2(x)) + Adapter(norm2(x))`` (TinyViT's Mlp carries its own norm);
* ``lora``: each block's ``attn.qkv`` becomes a :class:`~adapters.layers.LoRALinear`;
* ``sam_adapter``: a :class:`~adapters.layers.HighFrequencyPrompt` per group under
  ``image_encoder.hf_prompt``, and a forward pre-hook on each block adds its prompt to the
  block's input. The encoder's input image reaches the hooks through a ``ContextVar`` set by a
  pre-hook on the encoder, so concurrent threads never see each other's image.

:func:`inject` works on a deep copy with every base weight frozen: the shared read-only model
of the server is never touched. Adapter tensors are those whose names match
:func:`is_adapter_key`; they are what :mod:`adapters.io` saves.
"""

from __future__ import annotations

import copy
import math
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Block
from torch import nn

from models.click_refiner import ATTRIBUTE as REFINER, ClickRefiner
from adapters.layers import ChannelSpatialAdapter, HighFrequencyPrompt, LoRALinear
from models.tiny_vit import TinyViT, TinyViTBlock

KINDS = ("sam_med2d", "sam_adapter", "lora")
MAX_WIDTH_SETTING = 1024  # lora_rank, scale_factor: past any block width of the encoders here (ViT-B's is 768)
# Name segments that only adapter tensors have (see is_adapter_key).
_ADAPTER_MARKS = (".adapter.", ".lora_A", ".lora_B", "image_encoder.hf_prompt.")

# What --train-decoder trains (and saves) besides the adapter.
_DECODER_PARTS = ("prompt_encoder", "mask_decoder")
# What --train-click-prompts trains: the prompt encoder's tensors that only clicks and the fed-back
# mask use. A box alone (corners = point_embeddings 2, 3; dense = no_mask_embed) never reads them, so
# the box path stays exactly the adapter-only model's.
_CLICK_PROMPT_PARTS = (
    "prompt_encoder.point_embeddings.0.",  # negative click
    "prompt_encoder.point_embeddings.1.",  # positive click
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",  # the previous low-res logits fed back on each click
)

# The encoder input of the forward pass running in this context (sam_adapter prompts need it).
_ENCODER_INPUT: ContextVar[dict | None] = ContextVar("medseg_adapter_encoder_input", default=None)


@dataclass(frozen=True)
class AdapterConfig:
    """What is injected; stored in the adapter's metadata and rebuilt from it on load."""

    kind: str = "sam_med2d"
    bottleneck_ratio: float = 0.25  # sam_med2d: bottleneck channels / block width
    mlp_ratio: float = 0.25  # sam_med2d: channel-attention hidden / bottleneck (official 0.25)
    lora_rank: int = 4
    lora_alpha: float = 8.0
    scale_factor: int = 32  # sam_adapter: block width / prompt width (official 32)
    freq_nums: float = 0.25  # sam_adapter: share of the spectrum removed by the high-pass (official 0.25)
    train_decoder: bool = False  # the prompt encoder and mask decoder are trained (and saved) too
    train_click_prompts: bool = False  # only the click and mask-prompt embeddings of the prompt encoder
    click_refiner: bool = False  # a residual decoder for corrective clicks (models.click_refiner)

    def __post_init__(self) -> None:
        """Types and ranges checked before anything is built. Why: the settings come from an adapter.json (a
        colleague's, or damaged): lora_rank 10^9 or mlp_ratio 1e9 asked for terabytes and ended in a traceback,
        scale_factor 0 in ZeroDivisionError, lora_rank true or 2.5 in TypeError (session 30)."""
        if self.kind not in KINDS:
            raise ValueError(f"adapter kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("lora_rank", "scale_factor"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= MAX_WIDTH_SETTING:
                raise ValueError(f"{name} must be a whole number from 1 to {MAX_WIDTH_SETTING}, got {value!r}")
        for name in ("bottleneck_ratio", "mlp_ratio", "lora_alpha", "freq_nums"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("train_decoder", "train_click_prompts", "click_refiner"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 < self.bottleneck_ratio <= 1:
            raise ValueError(f"bottleneck_ratio must be in (0, 1], got {self.bottleneck_ratio}")
        if not 0 < self.mlp_ratio <= 4:
            raise ValueError(f"mlp_ratio must be in (0, 4], got {self.mlp_ratio}")
        if not 0 < self.freq_nums < 1:
            raise ValueError(f"freq_nums must be in (0, 1), got {self.freq_nums}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "adapter metadata") -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown adapter setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class BlockSite:
    """One transformer block: its width, token grid side, token layout and group (stage)."""

    block: nn.Module
    dim: int
    grid: int
    layout: str  # "bhwc" (ViT) or "bnc" (TinyViT)
    group: int
    index: int  # position within its group


def find_sites(encoder: nn.Module) -> tuple[list[BlockSite], int]:
    """The encoder's transformer blocks and its input size. TypeError for an unknown encoder."""
    if isinstance(encoder, ImageEncoderViT):
        stride = encoder.patch_embed.proj.stride[0]
        grid = encoder.img_size // stride
        sites = [
            BlockSite(b, b.norm1.normalized_shape[0], grid, "bhwc", 0, i)
            for i, b in enumerate(encoder.blocks)
            if isinstance(b, Block)
        ]
        return sites, encoder.img_size
    if isinstance(encoder, TinyViT):
        sites = []
        for g, stage in enumerate(encoder.layers):
            blocks = [b for b in stage.blocks if isinstance(b, TinyViTBlock)]  # stage 0 (MBConv) has none
            sites += [BlockSite(b, b.attn.qkv.in_features, b.resolution, "bnc", g, i) for i, b in enumerate(blocks)]
        return sites, encoder.config.img_size
    raise TypeError(
        f"adapters can be injected into segment_anything's ImageEncoderViT or TinyViT, not {type(encoder).__name__}"
    )


class AdaptedMlp(nn.Module):
    """``base(x) + adapter(norm(x))``; ``base`` is the block's original MLP (frozen)."""

    def __init__(self, base: nn.Module, adapter: nn.Module, layout: str, grid: int):
        super().__init__()
        self.base, self.adapter, self.layout, self.grid = base, adapter, layout, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.layout == "bhwc":  # the ViT block already normalised x (norm2)
            return out + self.adapter(x)
        b, n, c = x.shape
        y = self.base.norm(x).view(b, self.grid, self.grid, c)
        return out + self.adapter(y).reshape(b, n, c)


def _remember_input(module: nn.Module, args: tuple) -> None:
    state: dict = {"image": args[0]}
    state["token"] = _ENCODER_INPUT.set(state)


def _forget_input(module: nn.Module, args: tuple, output: object) -> None:
    state = _ENCODER_INPUT.get()
    if state is not None:
        _ENCODER_INPUT.reset(state["token"])


def _add_prompt(generator: HighFrequencyPrompt, group: int, index: int, layout: str, module: nn.Module, args: tuple):
    state = _ENCODER_INPUT.get()
    if state is None:
        raise RuntimeError("a sam_adapter block was called outside its image encoder; call the encoder")
    x = args[0]
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    key = ("mixed", group)
    if key not in state:  # the group's first block: mix the high-pass image with its input tokens
        state[key] = generator.mixed_feature(state["image"], tokens)
    prompt = generator.prompt(state[key], index).to(x.dtype)
    return (x + prompt.reshape(x.shape), *args[1:])


def inject(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """A deep copy of a SAM-shaped ``model`` with adapters in its image encoder; base weights frozen."""
    adapted = copy.deepcopy(model)
    adapted.requires_grad_(False)
    encoder = adapted.image_encoder
    sites, input_size = find_sites(encoder)
    if not sites:
        raise TypeError(f"{type(encoder).__name__} has no transformer block to put an adapter in")
    if config.kind == "sam_med2d":
        for s in sites:
            adapter = ChannelSpatialAdapter(s.dim, max(1, int(s.dim * config.bottleneck_ratio)), config.mlp_ratio)
            s.block.mlp = AdaptedMlp(s.block.mlp, adapter, s.layout, s.grid)
    elif config.kind == "lora":
        for s in sites:
            s.block.attn.qkv = LoRALinear(s.block.attn.qkv, config.lora_rank, config.lora_alpha)
    else:
        groups: dict[int, list[BlockSite]] = {}
        for s in sites:
            groups.setdefault(s.group, []).append(s)
        generators = nn.ModuleDict()
        for g, members in groups.items():
            first = members[0]
            gen = HighFrequencyPrompt(
                first.dim, len(members), first.grid, input_size // first.grid, config.scale_factor, config.freq_nums
            )
            generators[str(g)] = gen
            for s in members:
                s.block.register_forward_pre_hook(partial(_add_prompt, gen, g, s.index, s.layout))
        encoder.hf_prompt = generators
        encoder.register_forward_pre_hook(_remember_input)
        encoder.register_forward_hook(_forget_input, always_call=True)
    if config.train_decoder:  # SAM-Med2D trains the prompt encoder and the mask decoder together
        for part in _DECODER_PARTS:
            if hasattr(adapted, part):
                getattr(adapted, part).requires_grad_(True)
    if config.train_click_prompts:
        for name, param in adapted.named_parameters():
            if name.startswith(_CLICK_PROMPT_PARTS):
                param.requires_grad_(True)
    if config.click_refiner:  # copies of the frozen base decoder, so trained weights never leak into the box path
        setattr(adapted, REFINER, ClickRefiner(adapted.prompt_encoder, adapted.mask_decoder))
    return adapted


def is_adapter_key(name: str, config: AdapterConfig) -> bool:
    """Whether a state-dict entry belongs to the adapter (what is trained and saved)."""
    if config.train_decoder and name.startswith(tuple(f"{p}." for p in _DECODER_PARTS)):
        return True
    if config.train_click_prompts and name.startswith(_CLICK_PROMPT_PARTS):
        return True
    if config.click_refiner and name.startswith(f"{REFINER}."):
        return True
    return any(mark in name for mark in _ADAPTER_MARKS)


def adapter_state(model: nn.Module, config: AdapterConfig) -> dict[str, torch.Tensor]:
    """The adapter's tensors, float32 on the CPU, ready for safetensors."""
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if is_adapter_key(k, config)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """-> (trainable, total) parameter counts."""
    return sum(p.numel() for p in trainable_parameters(model)), sum(p.numel() for p in model.parameters())


def adapted_segmenter(base, model: nn.Module, name: str):
    """A copy of the :class:`~models.segmenter.Segmenter` ``base`` that runs ``model`` under ``name``.

    The name differs from the base's so an embedding of one is never decoded by the other.
    """
    seg = copy.copy(base)
    seg.model = model.eval().to(base.device)
    seg.name = name
    return seg
