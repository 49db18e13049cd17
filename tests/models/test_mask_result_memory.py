"""A prediction's arrays own their memory: the app keeps low-res logits in every undo step.

LiteMedSAM's decoder returns its logits as a slice of a larger output (the multimask slice of four
masks), and ``tensor[0].numpy()`` kept that whole 1 MiB storage alive behind each 256 KiB map:
the soak's undo history held about four times what it counted (docs/reliability.md, run 3).
"""

from __future__ import annotations

import numpy as np

from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from models.prompts import Prompts
from tests.conftest import SAMPLES


def test_litemedsam_predictions_keep_no_view_of_the_decoders_output(litemedsam):
    volume = read_study(SAMPLES / "ct_head_0051_series")
    embedding = litemedsam.embed(slice_to_rgb(volume, 6, default_window(volume)))
    for multimask in (False, True):
        result = litemedsam.predict(embedding, Prompts(box=np.array([80, 80, 160, 160])), multimask_output=multimask)
        for name in ("masks", "scores", "low_res_logits"):
            array = getattr(result, name)
            assert array.base is None, f"{name} (multimask {multimask}) is a view of {type(array.base).__name__}"
        assert result.low_res_logits.shape[-2:] == (256, 256) and result.low_res_logits.nbytes == 4 * 256 * 256 * len(result.scores)
