"""MobileSAM (Zhang et al., 2023): SAM's prompt encoder and mask decoder on a TinyViT-5M encoder.

Follows ``mobile_sam/build_sam.py::build_sam_vit_t`` of ChaoningZhang/MobileSAM: TinyViT at 1024
with two 3x3 stride-2 patch-embedding convs (grid 256 -> 64 x 64 embedding) and the unused
1000-class head whose keys the official ``mobile_sam.pt`` carries. Preprocessing is SAM's.
"""

from __future__ import annotations

from segment_anything.modeling import Sam

from models.litemedsam import sam_prompt_parts
from models.sam import PIXEL_MEAN, PIXEL_STD, SAM_INPUT_SIZE
from models.tiny_vit import TinyViT, TinyViTConfig

MOBILESAM_CONFIG = TinyViTConfig(img_size=SAM_INPUT_SIZE, patch_kernel=3, num_classes=1000)


def build_mobilesam() -> Sam:
    """The MobileSAM network with the official state-dict names (439 entries)."""
    encoder = TinyViT(MOBILESAM_CONFIG)
    encoder.img_size = MOBILESAM_CONFIG.img_size  # Sam.preprocess pads to image_encoder.img_size
    prompt_encoder, mask_decoder = sam_prompt_parts(SAM_INPUT_SIZE, encoder.out_grid)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
