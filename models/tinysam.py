"""TinySAM (Shu et al., 2023, github.com/xinghaochen/TinySAM): a distilled SAM with MobileSAM's shape.

``tinysam.build_sam.build_sam_vit_t`` builds exactly MobileSAM's network: the same TinyViT-5M
definition (``tiny_vit_sam.py`` is byte-for-byte MobileSAM's) and the same 439 state-dict keys and
shapes (``tests/models/tinysam_state_dict.json``, recorded from the official code), so it loads into
:func:`models.mobilesam.build_mobilesam` unchanged. Preprocessing is SAM's.

One behavioural difference, in TinySAM's ``MaskDecoder.forward``: there is no ``multimask_output``
flag, the decoder always returns the three multimask outputs (tokens 1..3, never the single-mask
token 0), and TinySAM's demos keep ``masks[scores.argmax()]``. :class:`TinySamSegmenter` does the
same: three masks when asked for several, else the one with the highest predicted IoU.

The quantised Q-TinySAM (``tinysam_w8a8.pth``) and TinySAM's hierarchical "segment everything"
generator are not supported (medseg has no automatic everything mode for any variant).
"""

from __future__ import annotations

import torch

from models.mobilesam import build_mobilesam
from models.sam import SamSegmenter
from models.segmenter import Embedding


def build_tinysam():
    """The TinySAM network (MobileSAM's shape and state-dict names)."""
    return build_mobilesam()


class TinySamSegmenter(SamSegmenter):
    """SAM's pipeline with TinySAM's decoder output rule (always the three multimask outputs)."""

    def decode(self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool):
        low_res, iou = super().decode(embedding, sparse, dense, True)
        if multimask_output:
            return low_res, iou
        best = iou.argmax(dim=1)
        rows = torch.arange(low_res.shape[0], device=low_res.device)
        return low_res[rows, best][:, None], iou[rows, best][:, None]
