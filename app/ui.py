"""Minimal Gradio page: open a bundled sample, pick a slice, click two corners of a box, segment.

The full clinician UI (issue 4) replaces this module; ``launch`` stays its entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from models.prompts import Prompts
from models.registry import PROJECT_ROOT, load_segmenter

SAMPLES = {
    "CT head (DICOM series)": PROJECT_ROOT / "samples" / "ct_head_0051_series",
    "MR T1 brain, Colin27 (NIfTI)": PROJECT_ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz",
}


def overlay(image: np.ndarray, mask: np.ndarray | None, box: list[float] | None) -> np.ndarray:
    out = image.astype(np.float32).copy()
    if mask is not None:
        out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 200, 0], dtype=np.float32)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        out[y0 : y1 + 1, [x0, x1]] = (0, 160, 255)
        out[[y0, y1], x0 : x1 + 1] = (0, 160, 255)
    return out.astype(np.uint8)


def build_app(model: str = "litemedsam", device: str = "cpu"):
    import gradio as gr

    def load(sample: str):
        volume = read_study(SAMPLES[sample])
        k = volume.num_slices // 2
        image = slice_to_rgb(volume, k, default_window(volume))
        state = {"sample": sample, "k": k, "corners": []}
        return image, gr.update(maximum=volume.num_slices - 1, value=k), state, f"{volume.modality}, {volume.array.shape}"

    def show(sample: str, k: int, state: dict):
        volume = read_study(SAMPLES[sample])
        state = {"sample": sample, "k": int(k), "corners": []}
        return slice_to_rgb(volume, int(k), default_window(volume)), state

    def click(state: dict, evt: gr.SelectData):
        volume = read_study(SAMPLES[state["sample"]])
        image = slice_to_rgb(volume, state["k"], default_window(volume))
        corners = (state["corners"] + [list(evt.index)])[-2:]
        state = {**state, "corners": corners}
        if len(corners) < 2:
            return overlay(image, None, None), state, "click the opposite corner of the box"
        (xa, ya), (xb, yb) = corners
        box = [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]
        segmenter = load_segmenter(model, device=device)
        result = segmenter.predict(segmenter.embed(image), Prompts(box=np.array(box, dtype=np.float32)))
        state["corners"] = []
        return overlay(image, result.best_mask, box), state, f"{int(result.best_mask.sum())} px, IoU {result.scores[0]:.2f}"

    with gr.Blocks(title="medseg") as demo:
        state = gr.State({})
        with gr.Row():
            sample = gr.Dropdown(list(SAMPLES), value=next(iter(SAMPLES)), label="Study")
            info = gr.Textbox(label="Study facts", interactive=False)
        k = gr.Slider(0, 1, step=1, label="Slice")
        view = gr.Image(label="Click two corners of a box", interactive=False, type="numpy")
        status = gr.Textbox(label="Result", interactive=False)
        demo.load(load, sample, [view, k, state, info])
        sample.change(load, sample, [view, k, state, info])
        k.release(show, [sample, k, state], [view, state])
        view.select(click, state, [view, state, status], concurrency_id="gpu", concurrency_limit=1)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, model: str = "litemedsam", device: str = "cpu") -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    load_segmenter(model, device=device)  # load once before serving; fail early on missing weights
    build_app(model, device).queue().launch(server_name=host, server_port=port, show_api=False)
