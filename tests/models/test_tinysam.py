"""TinySAM in the zoo: MobileSAM's TinyViT network under TinySAM's key list and decoder rule.

The key list is the official model's (``tinysam_state_dict.json``, recorded by ``tinysam_keys.py`` from
xinghaochen/TinySAM). TinySAM's network code is MobileSAM's except the decoder, which always returns
the three multimask outputs; so with the synthetic weights of the MobileSAM fixture (same keys, same
rule) the official MobileSAM multimask outputs in ``shared/parity/mobilesam`` are TinySAM's outputs too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.prompts import Prompts
from models.registry import load_segmenter
from models.tinysam import build_tinysam
from tests.conftest import PARITY
from tests.synthetic_weights import synth_array

KEYS = json.loads((Path(__file__).with_name("tinysam_state_dict.json")).read_text())


def test_our_network_has_the_official_tinysam_keys_shapes_and_dtypes():
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in build_tinysam().state_dict().items()]
    assert ours == KEYS["state_dict"]


@pytest.fixture(scope="module")
def tinysam(tmp_path_factory):
    state = {k: torch.from_numpy(synth_array(k, tuple(s), d)) for k, s, d in KEYS["state_dict"]}
    path = tmp_path_factory.mktemp("tinysam") / "tinysam_42.3.pth"
    torch.save(state, path)  # the official file form: a plain state dict
    return load_segmenter("tinysam", checkpoint=path)


def test_tinysam_returns_the_three_multimask_outputs_and_keeps_the_best(tinysam):
    golden = np.load(PARITY / "mobilesam" / "golden.npz")
    embedding = tinysam.embed(golden["image"])
    np.testing.assert_allclose(embedding.features.numpy(), golden["image_embedding"], rtol=1e-4, atol=1e-4)
    prompts = Prompts(points=golden["points2__point_coords"], point_labels=golden["points2__point_labels"])
    three = tinysam.predict(embedding, prompts, multimask_output=True)
    assert three.low_res_logits.shape[0] == 3
    one = tinysam.predict(embedding, prompts, multimask_output=False)  # TinySAM never uses the single-mask token
    best = int(np.argmax(three.scores))
    np.testing.assert_array_equal(one.low_res_logits[0], three.low_res_logits[best])
    assert one.scores[0] == three.scores[best]
    # the official point1 set is multimask: TinySAM's decoder gives exactly these three
    p1 = tinysam.predict(embedding, Prompts(points=golden["point1__point_coords"], point_labels=golden["point1__point_labels"]),
                         multimask_output=True)
    np.testing.assert_allclose(p1.low_res_logits, golden["point1__low_res_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p1.scores, golden["point1__iou_predictions"], rtol=0, atol=1e-5)
    # points2 is single-mask in SAM: TinySAM answers differently (a multimask output, not token 0)
    assert not np.allclose(one.low_res_logits, golden["points2__low_res_logits"], atol=1e-3)
