"""SAM 2 / SAM 2.1 (Hiera tiny, small, base+, large) and MedSAM2 through the official ``sam2`` package.

Why the official package (PyPI ``sam2==1.1.0``, installed with ``SAM2_BUILD_CUDA=0 --no-deps``) and
not a port: its network (Hiera + memory attention + memory encoder + SAM heads, ~7.6k lines) is the
reference the parity tests compare against, the package is small (0.9 MB of Python, pure PyTorch, runs
on the CPU) and its only extra dependencies are hydra-core, omegaconf and iopath (pure Python).

Import-time side effect: ``import sam2`` initialises Hydra's process-global config search path
(``sam2/__init__.py``). We therefore import it lazily, only when a SAM 2 variant is built, and build the
network from the package's YAML configs with ``OmegaConf.load`` + ``hydra.utils.instantiate`` (no
``compose``, nothing of ours reads Hydra's global state). The optional CUDA extension (hole filling in
video masks) is not built: the official code then skips that step with a warning; we set
``fill_hole_area=0``, which computes the same thing without the warning.

2D prompts follow ``SAM2ImagePredictor`` (``SAM2Transforms``: ToTensor, torchvision Resize to S x S,
ImageNet mean/std; prompts scaled by S / W, S / H; logits bilinear straight to H x W). MedSAM2
(SAM 2.1 tiny at 512, bowang-lab/MedSAM2) takes slices as its own scripts prepare them: window,
uint8, PIL resize to 512 x 512, /255, ImageNet mean/std (``resize_grayscale_to_rgb_and_resize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.geometry import Stretch
from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding, Segmenter

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Sam2Variant:
    """One registered SAM 2 network: the package config it is built from and the file it loads."""

    name: str
    config: str  # path inside the sam2 package
    weight_file: str
    description: str
    image_size: int = 1024
    preprocessing: str = "image_predictor"  # or "medsam2" (PIL resize as MedSAM2's scripts)
    source: str = ""


_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2"
SAM2_VARIANTS: dict[str, Sam2Variant] = {}
for _version, _folder, _date in (("sam2", "sam2", "072824"), ("sam2.1", "sam2.1", "092824")):
    for _short, _long, _label in (("t", "tiny", "Hiera-T"), ("s", "small", "Hiera-S"),
                                  ("b+", "base_plus", "Hiera-B+"), ("l", "large", "Hiera-L")):
        _file = f"{_version}_hiera_{_long}.pt"
        SAM2_VARIANTS[f"{_version}_hiera_{_long}"] = Sam2Variant(
            name=f"{_version}_hiera_{_long}",
            config=f"configs/{_folder}/{_version}_hiera_{_short}.yaml",
            weight_file=_file,
            description=f"{'SAM 2.1' if _version == 'sam2.1' else 'SAM 2'} {_label} (Meta): 2D prompts and memory-based 3D",
            source=f"{_SAM2_URL}/{_date}/{_file}",
        )
SAM2_VARIANTS["medsam2"] = Sam2Variant(
    name="medsam2",
    config="configs/sam2.1/sam2.1_hiera_t.yaml",
    weight_file="MedSAM2_latest.pt",
    description="MedSAM2 (SAM 2.1 Hiera-T at 512, fine-tuned on medical volumes): memory-based 3D",
    image_size=512,
    preprocessing="medsam2",
    source="https://huggingface.co/wanglab/MedSAM2 (MedSAM2_latest.pt; other MedSAM2_*.pt files via --checkpoint)",
)


def sam2_config(variant: Sam2Variant, image_size: int | None = None):
    """The package's OmegaConf model config with the overrides of ``build_sam2_video_predictor``.

    The network is a ``SAM2VideoPredictor`` (a ``SAM2Base``): its SAM heads serve 2D prompts as
    ``build_sam2`` builds them (the video-only overrides touch memory paths only).
    ``image_size`` overrides the input size (MedSAM2: 512; small CPU tests).
    """
    from importlib.resources import files

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("sam2") / variant.config))
    size = image_size or variant.image_size
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {
        **extra,
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    cfg.model.binarize_mask_from_pts_for_mem_enc = True
    cfg.model.fill_hole_area = 0  # needs the CUDA extension, which is not built (see module docstring)
    if size != 1024:  # as MedSAM2's sam2.1_hiera_t512.yaml: image size and the RoPE grid of memory attention
        cfg.model.image_size = size
        grid = [size // 16, size // 16]
        cfg.model.memory_attention.layer.self_attention.feat_sizes = grid
        cfg.model.memory_attention.layer.cross_attention.feat_sizes = grid
    OmegaConf.resolve(cfg)
    return cfg


def build_sam2_network(variant: Sam2Variant | str, image_size: int | None = None) -> nn.Module:
    """An untrained SAM 2 network of ``variant`` with the official state-dict names (eval mode, CPU)."""
    from hydra.utils import instantiate

    if isinstance(variant, str):
        variant = SAM2_VARIANTS[variant]
    model = instantiate(sam2_config(variant, image_size).model, _recursive_=True)
    return model.eval()


def medsam2_frame(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32 as MedSAM2's scripts: PIL resize (its default filter),
    /255 and ImageNet mean/std in float64, then float32 (what ``.float()`` gives the encoder)."""
    from PIL import Image

    resized = np.array(Image.fromarray(rgb).convert("RGB").resize((size, size))).transpose(2, 0, 1) / 255.0
    x = torch.from_numpy(resized)
    x = (x - torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return x.float()


def video_frame(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32 exactly as ``sam2.utils.misc.load_video_frames`` (PIL resize
    with its default filter, /255 in float64, stored float32, then mean/std in float32)."""
    from PIL import Image

    resized = np.array(Image.fromarray(rgb).convert("RGB").resize((size, size))) / 255.0
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    return (x - torch.tensor(IMG_MEAN)[:, None, None]) / torch.tensor(IMG_STD)[:, None, None]


def image_predictor_input(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32 as ``SAM2Transforms``: ToTensor, Resize((S, S)) (bilinear,
    antialiased), Normalize. The same torchvision calls, unscripted (``torch.jit.script`` warns it is
    deprecated on every construction; the parity test checks the tensor equals the official one)."""
    from torchvision.transforms import functional as TF

    x = TF.to_tensor(rgb)
    x = TF.resize(x, [size, size], antialias=True)
    return TF.normalize(x, list(IMG_MEAN), list(IMG_STD))


class Sam2Segmenter(Segmenter):
    """SAM 2 behind the :class:`Segmenter` interface (2D prompts) and the video model for 3D.

    ``Embedding.features`` is the image embedding (with ``no_mem_embed`` added, as the image
    predictor does); ``extras`` holds the two high-resolution feature maps its decoder also takes.
    ``memory_tracking`` tells ``app.propagation`` to carry masks with SAM 2's memory bank.
    """

    memory_tracking = True

    def __init__(self, model: nn.Module, *, variant: Sam2Variant, device: str | torch.device = "cpu"):
        self.name = variant.name
        self.variant = variant
        size = int(model.image_size)
        self.low_res_size = size // 4
        super().__init__(model, geometry=Stretch(size), device=device)
        self._feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def frame_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """One slice as the video model takes it (3, S, S) (``app.propagation_memory`` feeds these)."""
        if self.variant.preprocessing == "medsam2":
            return medsam2_frame(rgb, self.image_size)
        return video_frame(rgb, self.image_size)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        if self.variant.preprocessing == "medsam2":
            return medsam2_frame(image, self.image_size)[None]
        return image_predictor_input(image, self.image_size)[None]

    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``SAM2ImagePredictor.set_image_batch``: backbone, + no_mem_embed, tokens -> maps."""
        model = self.model
        backbone_out = model.forward_image(batch)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        b = batch.shape[0]
        feats = [
            feat.permute(1, 2, 0).reshape(b, -1, *size)
            for feat, size in zip(vision_feats[::-1], self._feat_sizes[::-1])
        ][::-1]
        return feats[-1], {"high_res_0": feats[0], "high_res_1": feats[1]}

    def encode_prompts(self, embedding: Embedding, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """``SAM2ImagePredictor._predict``: a box is two points labelled 2 and 3 ahead of the clicks."""
        coords, labels, box, mask = self.prompt_arrays(embedding, prompts)
        points = None
        if coords is not None:
            points = (torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None],
                      torch.as_tensor(labels, dtype=torch.int32, device=self.device)[None])
        if box is not None:
            box_coords = torch.as_tensor(box, dtype=torch.float32, device=self.device).reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=self.device).repeat(box_coords.size(0), 1)
            if points is not None:
                points = (torch.cat([box_coords, points[0]], dim=1), torch.cat([box_labels, points[1]], dim=1))
            else:
                points = (box_coords, box_labels)
        masks = None if mask is None else torch.as_tensor(mask, dtype=torch.float32, device=self.device)[None]
        return self.model.sam_prompt_encoder(points=points, boxes=None, masks=masks)

    def decode(self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool):
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=[embedding.extras["high_res_0"], embedding.extras["high_res_1"]],
        )
        return low_res, iou

    @torch.inference_mode()
    def predict(self, embedding: Embedding, prompts: Prompts, *, multimask_output: bool = False) -> MaskResult:
        """As the base class, but masks come from the unclamped logits and the returned low-res
        logits are clamped to +-32, as ``SAM2ImagePredictor._predict``."""
        if embedding.model_name != self.name:
            raise RuntimeError(
                f"this embedding was computed by {embedding.model_name!r}, not {self.name!r}: call embed() again"
            )
        prompts.validate(embedding.original_size)
        low_res, iou = self.decode_prompts(embedding, prompts, multimask_output)
        masks = (F.interpolate(low_res, embedding.original_size, mode="bilinear", align_corners=False) > 0.0)[0]
        return MaskResult(
            masks=masks.cpu().numpy(),
            scores=iou[0].float().cpu().numpy(),
            low_res_logits=torch.clamp(low_res, -32.0, 32.0)[0].float().cpu().numpy(),
        )
