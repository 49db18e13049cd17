"""The UI's Propagate after a box, through the controller, against the CLI's walk from the same box (session 19).

Writes the middle three slices (5..7) of the bundled CT as a NIfTI, opens it as an upload, draws the box on its middle
slice, propagates with the backend's default rule and prints, per slice, the label's pixels and its enclosed hole
pixels (``scipy.ndimage.binary_fill_holes``), then the same for ``propagate(..., Prompts(box))``. Before the walk was
seeded with the box's logits, torch's slice 0 had 2859 pixels and 138 hole pixels in the UI, 2986 and none by the CLI.

    PYTHONPATH=$PWD .venv/bin/python experiments/ui_walk_seed.py --backend torch
    PYTHONPATH=$PWD .venv/bin/python experiments/ui_walk_seed.py --backend onnx-int8-conv
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from app import controller
from app.controller import AppContext
from app.interaction import ModelRunner, Prefetcher, model_window
from app.propagation import propagate
from app.propagation_defaults import default_propagation
from app.session import SessionStore
from app.viewer import actions
from app.viewer.geometry import from_plane
from data.readers import read_study
from models.prompts import Prompts

ROOT = Path(__file__).resolve().parent.parent
BOX = (90.0, 74.0, 166.0, 166.0)  # plane pixels x0 y0 x1 y1 around the ventricles


def pixels_and_holes(masks: np.ndarray) -> list[tuple[int, int]]:
    return [(int(m.sum()), int((ndimage.binary_fill_holes(m) & ~m).sum())) for m in masks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    ct = read_study(ROOT / "samples" / "ct_head_0051_series")
    three = work / "three.nii.gz"
    sitk.WriteImage(replace(ct, array=ct.array[5:8]).to_sitk(), str(three))

    runner = ModelRunner("cpu", backend=args.backend)
    ctx = AppContext(SessionStore(work / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    controller.open_upload(ctx, sid, [str(three)])
    session = ctx.store.get(sid)
    view, k = session.view.view, session.view.index[session.view.view]
    corner_a = from_plane(session.volume, view, k, *BOX[:2])
    corner_b = from_plane(session.volume, view, k, *BOX[2:])
    actions.act(ctx, session, {"kind": "box", "view": view, "mm": list(corner_a), "mm2": list(corner_b),
                               "new_object": True})
    box = np.asarray(session.prompt.box, np.float32)
    controller.propagate(ctx, sid, background=False)
    print("UI ", pixels_and_holes(session.labels == session.active))
    print("   ", controller.propagation_status(ctx, sid).status)
    cli = propagate(runner.segmenter(session.model), session.volume, k, Prompts(box=box), window=model_window(session),
                    settings=default_propagation(runner.backend_choice(session.model).backend))
    print("CLI", pixels_and_holes(cli.masks))


if __name__ == "__main__":
    main()
