"""3D propagation with a SAM 2 model: the slices are video frames carried by SAM 2's memory.

End to end on the CPU through ``medseg propagate`` (SAM 2.1 Hiera-T at 256 with synthetic weights,
a 4-slice CT-like NIfTI), then the engine's anchor rule (a corrected slice is a new conditioning
frame, kept as drawn; the gap is filled from memory). Synthetic weights give speckled masks, not
anatomy: these tests check the plumbing (frames, prompts, memory walk both ways, geometry, output),
the parity with the official code is tests/models/test_sam2_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.models.sam2_official import synthetic_slice
from tests.models.sam2_testing import TEST_MODEL, registered_test_model, save_synthetic_checkpoint

pytest.importorskip("sam2")
pytestmark = pytest.mark.slow  # SAM 2 encoder passes on the CPU (256 input: 2.6 s each measured at load 8 on 2 cores)

BOX = ["80", "35", "120", "68"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    with registered_test_model():
        yield save_synthetic_checkpoint(tmp_path_factory.mktemp("sam2w"))


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    """4 slices of 120 x 160, HU spanning the abdomen window, with anisotropic spacing and an oblique-free
    but non-trivial origin/direction (flipped x) that must survive to the output."""
    grey = np.stack([synthetic_slice(shift=2.0 * k)[:, :, 0] for k in range(4)]).astype(np.float64)
    image = sitk.GetImageFromArray((grey * (400.0 / 255.0) - 160.0).astype(np.int16))
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((-55.0, 12.5, 300.0))
    image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_medseg_propagate_carries_a_box_through_the_volume_with_sam2_memory(ct_path, checkpoint, tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "labels.nii.gz"
    rc = main(["propagate", str(ct_path), "--slice", "1", "--box", *BOX, "--model", TEST_MODEL,
               "--checkpoint", str(checkpoint), "--output", str(out), "--window", "abdomen"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "propagate in video" not in captured.err  # no tqdm bar of the official loop
    labels = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(ct_path))
    assert labels.GetSize() == source.GetSize()
    assert np.allclose(labels.GetSpacing(), source.GetSpacing())
    assert np.allclose(labels.GetOrigin(), source.GetOrigin())
    assert np.allclose(labels.GetDirection(), source.GetDirection())
    arr = sitk.GetArrayFromImage(labels)
    per_slice = (arr == 1).reshape(4, -1).sum(axis=1)
    assert per_slice[1] > 0  # the prompted slice
    assert per_slice[0] > 0 and per_slice[2] > 0  # reached from memory, both ways
    assert "up:" in captured.out and "down:" in captured.out


def test_box_and_clicks_start_and_a_corrected_slice_is_a_conditioning_frame_kept_as_drawn(ct_path, checkpoint):
    from app.propagation import propagate
    from data.readers import read_study
    from data.windowing import default_window
    from models.prompts import Prompts
    from models.registry import load_segmenter

    segmenter = load_segmenter(TEST_MODEL, checkpoint=checkpoint)
    volume = read_study(ct_path)
    drawn = np.zeros(volume.slice_shape, dtype=bool)
    drawn[40:70, 85:125] = True
    seen: list[int] = []
    clicks = Prompts(box=np.array([80.0, 35.0, 120.0, 68.0]), points=np.array([[99.0, 50.0], [30.0, 90.0]]),
                     point_labels=np.array([1, 0]))  # a box and clicks together (the points reach the tracker too)
    result = propagate(segmenter, volume, 0, clicks,
                       anchors={3: drawn}, window=default_window(volume), directions=("up", "down"),
                       on_slice=lambda k, m: seen.append(k))
    assert result.anchors == [0, 3]
    assert result.masks[0].any()  # the clicked slice
    assert np.array_equal(result.masks[3], drawn)  # the correction is kept exactly
    assert result.stopped.get("gap 0..3") == "filled"
    assert result.masks[1].any() and result.masks[2].any()  # the gap is filled from memory
    assert sorted(set(seen)) == [0, 1, 2, 3]
    assert all(np.isfinite(result.scores[k]) for k in (1, 2))  # SAM 2's object-presence probability
