"""The SAM 2 family and TinySAM in ``medseg models``, and MedSAM2's preprocessing against its scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from tests.conftest import ROOT


def test_medseg_models_lists_the_sam2_family_and_tinysam_without_importing_sam2():
    code = (
        "import json, sys\n"
        "from app.commands.models import describe\n"
        "rows = describe()\n"
        "print(json.dumps({'rows': rows, 'sam2_imported': 'sam2' in sys.modules, 'hydra_imported': 'hydra' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "MEDSEG_WEIGHTS": "/nonexistent", "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["sam2_imported"] and not got["hydra_imported"]  # Hydra's global init happens only when a SAM 2 model is built
    files = {r["name"]: r["file"].rsplit("/", 1)[-1] for r in got["rows"]}
    for size in ("tiny", "small", "base_plus", "large"):
        assert files[f"sam2_hiera_{size}"] == f"sam2_hiera_{size}.pt"
        assert files[f"sam2.1_hiera_{size}"] == f"sam2.1_hiera_{size}.pt"
    assert files["medsam2"] == "MedSAM2_latest.pt"
    assert files["tinysam"] == "tinysam_42.3.pth"
    rows = {r["name"]: r for r in got["rows"]}
    assert all(rows[n]["weights"] == "missing" and rows[n]["source"] for n in ("medsam2", "tinysam", "sam2.1_hiera_tiny"))
    assert rows["medsam2"]["input_size"] == 512


def _medsam2_script(volume_hu: np.ndarray, lo: float, hi: float, size: int) -> torch.Tensor:
    """MedSAM2's own steps, copied from bowang-lab/MedSAM2 @ 332f30d (examples/infer_CT_LUNA25.py: preprocess,
    resize_grayscale_to_rgb_and_resize and the normalisation in infer_3d)."""
    image_data_pre = np.clip(volume_hu, lo, hi)
    image_data_pre = (image_data_pre - np.min(image_data_pre)) / (np.max(image_data_pre) - np.min(image_data_pre)) * 255.0
    d = image_data_pre.shape[0]
    resized_array = np.zeros((d, 3, size, size))
    for i in range(d):
        img_pil = Image.fromarray(image_data_pre[i].astype(np.uint8))
        resized_array[i] = np.array(img_pil.convert("RGB").resize((size, size))).transpose(2, 0, 1)
    img_resized = torch.from_numpy(resized_array / 255.0)
    img_mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    img_std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    img_resized -= img_mean
    img_resized /= img_std
    return img_resized.float()  # what _get_image_feature gives the encoder (.float())


def test_medsam2_frames_equal_medsam2s_own_preprocessing():
    from app.propagation_memory import medsam2_slice
    from data.volume import Volume
    from data.windowing import Window
    from models.sam2_hiera import medsam2_frame

    rng = np.random.default_rng(0)
    hu = rng.uniform(-1600, 1400, size=(2, 40, 56)).round()  # spans the lung window (-1500..0) at both ends, like a CT
    volume = Volume(array=hu.astype(np.float32), spacing=(1.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0),
                    direction=tuple(np.eye(3).ravel()), modality="CT")
    window = Window.from_level_width(-750, 1500)
    ours = torch.stack([medsam2_frame(medsam2_slice(volume, k, window), 64) for k in range(2)])
    theirs = _medsam2_script(hu.astype(np.float32), window.lo, window.hi, 64)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-6)
