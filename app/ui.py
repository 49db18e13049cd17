"""The clinician's web UI: layout and wiring only (actions live in ``app.controller``).

Sessions: the browser keeps a random session id in its localStorage (``gr.BrowserState``), so a
reload, or reopening the page, restores that session from the server's store; two browsers
never share an id. All model work (encode, prompt) runs through one Gradio queue
(``concurrency_id="gpu"``, one at a time) and the runner's lock; display-only events run beside it.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' real annotations
# (gr.Request, gr.SelectData, gr.Progress) to inject them.

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app import controller
from app.controller import MODES, AppContext, ViewModel
from app.errors import USER_ERRORS
from app.interaction import ModelRunner, Prefetcher
from app.oneshot import METHODS as ONESHOT_METHODS, SCOPES as ONESHOT_SCOPES
from app.render import window_choices
from app.session import SessionError, SessionStore
from models.registry import load_segmenter

log = logging.getLogger(__name__)
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
STORAGE_KEY = "medseg-session"

# Keyboard: Up/Down (or PageUp/PageDown) step slices, Ctrl+Z / Ctrl+Y undo / redo, outside text fields.
KEYBOARD_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  const ids = {ArrowUp: 'next-slice', PageUp: 'next-slice', ArrowDown: 'prev-slice', PageDown: 'prev-slice'};
  let id = ids[e.key];
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'z') id = 'undo-btn';
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'y') id = 'redo-btn';
  const btn = id && document.getElementById(id);
  if (btn) { e.preventDefault(); btn.click(); }
});
</script>
"""


@dataclass(frozen=True)
class UIConfig:
    """Server settings, typed and fixed at launch."""

    sessions_root: Path
    model: str = "litemedsam"
    device: str = "cpu"
    prefetch_radius: int = 1
    session_ttl_s: float = 14 * 86400
    browser_secret: str | None = None  # encrypts the id in localStorage; fixed so restarts can restore


def default_state_dir() -> Path:
    """``$MEDSEG_STATE_DIR`` or ``~/.local/state/medseg`` (sessions survive reboots, unlike /tmp)."""
    return Path(os.environ.get("MEDSEG_STATE_DIR", Path.home() / ".local" / "state" / "medseg"))


def browser_secret(state_dir: Path) -> str:
    """A per-installation secret kept outside the served session folders (created once, mode 600)."""
    path = state_dir / "browser_secret"
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


def build_app(config: UIConfig):
    """Lay out the page and wire each control to its action. Nothing runs until launch."""
    import gradio as gr

    runner = ModelRunner(config.device)  # one lock for user and background model work
    ctx = AppContext(
        store=SessionStore(config.sessions_root, ttl_s=config.session_ttl_s),
        runner=runner,
        prefetcher=Prefetcher(runner, radius=config.prefetch_radius),
    )
    samples = list(controller.sample_studies())

    with gr.Blocks(title="medseg", delete_cache=(3600, 86400)) as demo:
        sid = gr.State(None)
        stored = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=config.browser_secret)
        gr.Markdown("### medseg: promptable segmentation of CT, MR and photographs")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                with gr.Accordion("Study", open=True):
                    sample = gr.Dropdown(samples, value=samples[0], label="Bundled sample", elem_id="sample")
                    open_btn = gr.Button("Open sample", variant="primary", elem_id="open-sample")
                    upload = gr.File(
                        label="Or upload: NIfTI, DICOM files, a zip of a series, PNG/JPEG",
                        file_count="multiple",
                        type="filepath",
                        elem_id="upload",
                    )
                    facts = gr.Markdown("No study open.", elem_id="facts")
                model = gr.Dropdown(controller.model_choices(), value=config.model, label="Model", elem_id="model")
                with gr.Accordion("Display", open=True):
                    view = gr.Radio(["axial"], value="axial", label="View", elem_id="view")
                    window = gr.Dropdown(window_choices(), value="default", label="Window", elem_id="window")
                    with gr.Row():
                        level = gr.Number(40, label="Level", elem_id="level")
                        width = gr.Number(400, label="Width", elem_id="width", minimum=1)
                    opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Label opacity", elem_id="opacity")
            with gr.Column(scale=3, min_width=420):
                with gr.Row(equal_height=True):
                    prev_btn = gr.Button("◀ prev", size="sm", min_width=60, scale=0, elem_id="prev-slice")
                    slider = gr.Slider(0, 1, value=0, step=1, label="Slice (↑/↓ keys)", elem_id="slice", scale=4)
                    next_btn = gr.Button("next ▶", size="sm", min_width=60, scale=0, elem_id="next-slice")
                image = gr.Image(
                    type="numpy", format="png", interactive=False, show_label=False, elem_id="slice-view",
                    buttons=["fullscreen"],
                )
                status = gr.Markdown("", elem_id="status")
                table = gr.Dataframe(
                    headers=["#", "label", "pixels on the slice", "area on the slice (mm²)", "volume in the study (mL)"],
                    interactive=False, elem_id="measurements", label="Labels",
                )
            with gr.Column(scale=1, min_width=280):
                mode = gr.Radio(list(MODES), value=MODES[0], label="Click mode", elem_id="mode")
                alternatives = gr.Radio([], label="Alternatives of the first click", elem_id="alternatives")
                with gr.Row():
                    undo_btn = gr.Button("Undo", size="sm", min_width=60, elem_id="undo-btn")
                    redo_btn = gr.Button("Redo", size="sm", min_width=60, elem_id="redo-btn")
                with gr.Row():
                    new_btn = gr.Button("New object", size="sm", min_width=60, elem_id="new-object")
                    propagate_btn = gr.Button("Propagate 3D", size="sm", min_width=60, elem_id="propagate")
                review_btns = _review_buttons()
                with gr.Accordion("Labels", open=True):
                    label = gr.Dropdown([], label="Active label", elem_id="label")
                    with gr.Row():
                        label_name = gr.Textbox(label="Name", elem_id="label-name", scale=2)
                        colour = gr.ColorPicker(label="Colour", elem_id="label-colour", scale=1)
                    with gr.Row():
                        add_btn = gr.Button("Add label", size="sm", min_width=60, elem_id="add-label")
                        clear_btn = gr.Button(
                            "Clear label", size="sm", min_width=60, variant="stop", elem_id="clear-label"
                        )
                with gr.Accordion("Brush or mask", open=False):
                    editor = gr.ImageEditor(
                        type="numpy", label="Paint on the slice", elem_id="brush", layers=False, transforms=(),
                        brush=gr.Brush(colors=["#ffff00"], default_size=8, color_mode="fixed"),
                    )
                    copy_btn = gr.Button("Copy the slice to the canvas", size="sm")
                    mask_file = gr.File(label="Or upload a mask (PNG, slice or display size)", type="filepath")
                    use_model = gr.Checkbox(True, label="Use as a model prompt (off: paint the label as drawn)")
                    brush_btn = gr.Button("Apply mask", size="sm", elem_id="apply-brush")
                with gr.Accordion("One-shot (PerSAM)", open=False, elem_id="oneshot"):
                    gr.Markdown("Annotate a structure on one slice, use it as the reference, then find it on "
                                "other slices or in another study opened later. Slices where the active label "
                                "already has pixels are skipped. With LiteMedSAM, PerSAM suits large structures "
                                "(brain, head); PerSAM-box small ones (docs/oneshot.md).")
                    oneshot_method = gr.Radio(list(ONESHOT_METHODS), value="PerSAM", label="Method",
                                              elem_id="oneshot-method")
                    oneshot_set = gr.Button("Use as one-shot reference", size="sm", elem_id="oneshot-set")
                    oneshot_info = gr.Markdown("", elem_id="oneshot-reference")
                    oneshot_scope = gr.Radio(list(ONESHOT_SCOPES), value=ONESHOT_SCOPES[0], label="Apply to",
                                             elem_id="oneshot-scope")
                    with gr.Row(visible=False) as oneshot_range:
                        oneshot_first = gr.Number(None, precision=0, label="From slice", elem_id="oneshot-first")
                        oneshot_last = gr.Number(None, precision=0, label="To slice", elem_id="oneshot-last")
                    oneshot_apply = gr.Button("Apply one-shot", size="sm", elem_id="oneshot-apply")
                with gr.Accordion("Export", open=True):
                    formats = ["NIfTI (.nii.gz)"] + (["DICOM-SEG (.dcm)"] if controller.dicom_seg_available() else [])
                    export_fmt = gr.Radio(formats, value=formats[0], label="Format", elem_id="export-format")
                    export_btn = gr.Button("Export labels", elem_id="export-btn")
                    download = gr.File(label="Download", interactive=False, elem_id="download")

        outputs = [sid, image, view, slider, label, label_name, colour, table, alternatives, facts, status,
                   model, window, level, width, opacity, mode]
        at_status = outputs.index(status)

        def only_status(message: str) -> list[Any]:
            """Outputs that change nothing but the status line."""
            return [message if i == at_status else gr.skip() for i in range(len(outputs))]

        def present(vm: ViewModel) -> list[Any]:
            return [
                vm.session_id,
                vm.image,
                gr.update(choices=vm.views, value=vm.view),
                gr.update(maximum=max(vm.slice_max, 1), value=vm.slice_index, interactive=vm.slice_max > 0),
                gr.update(choices=vm.labels, value=vm.active if vm.labels else None),
                vm.label_name,
                vm.colour,
                vm.measurements or None,
                gr.update(choices=vm.alternatives, value=vm.chosen, visible=bool(vm.alternatives)),
                vm.facts,
                gr.skip() if vm.status is None else vm.status,
                vm.model,
                vm.window,
                vm.level,
                vm.width,
                vm.opacity,
                vm.mode,
            ]

        def guarded(action: Callable[..., ViewModel], *args) -> list[Any]:
            """Run an action; a user error becomes a warning toast and a status line, never a traceback."""
            try:
                return present(action(ctx, *args))
            except (SessionError, *USER_ERRORS) as e:
                message = f"⚠ {e.args[0] if isinstance(e, KeyError) and e.args else e}"
                gr.Warning(message[2:])
            except Exception as e:  # unexpected: log it for us, show one line to the user
                log.exception("UI action %s failed", getattr(action, "__name__", action))
                gr.Warning(f"internal error: {type(e).__name__}; the session is saved, try again")
                message = f"⚠ internal error ({type(e).__name__})"
            try:  # show the server's state again (e.g. the model picker snaps back)
                return present(controller.refresh(ctx, args[0], message))
            except Exception:
                return only_status(message)

        def warm(s):
            """Encode the shown plane ahead of the first click; only the status line shows it."""
            return guarded(controller.warm, s)[at_status]

        # --- session start / restore -------------------------------------------------------
        def on_load(stored_id: str | None, request: gr.Request):
            result = guarded(controller.start, stored_id, getattr(request, "session_hash", None))
            at_model = outputs.index(model)  # list the models again: an adapter trained since start shows up
            shown = {"value": result[at_model]} if isinstance(result[at_model], str) else {}
            result[at_model] = gr.update(choices=controller.model_choices(), **shown)
            return result + [result[0]]

        def on_unload(request: gr.Request) -> None:
            ctx.store.release(getattr(request, "session_hash", "") or "")

        load_event = demo.load(on_load, [stored], outputs + [stored])
        load_event.then(warm, [sid], [status], show_progress="minimal", **GPU)
        demo.unload(on_unload)

        # --- study ---------------------------------------------------------------------------
        def on_open(s, name, progress=gr.Progress()):
            return guarded(controller.open_sample, s, name, lambda f, d: progress(f, desc=d))

        def on_upload(s, files, progress=gr.Progress()):
            if not files:
                return [gr.skip()] * len(outputs)
            return guarded(controller.open_upload, s, list(files), lambda f, d: progress(f, desc=d))


        open_btn.click(on_open, [sid, sample], outputs).then(warm, [sid], [status], show_progress="minimal", **GPU)
        upload.upload(on_upload, [sid, upload], outputs).then(warm, [sid], [status], show_progress="minimal", **GPU)
        model.input(lambda s, m: guarded(controller.set_model, s, m), [sid, model], outputs, **GPU).then(
            warm, [sid], [status], show_progress="minimal", **GPU
        )

        # --- looking -------------------------------------------------------------------------
        def display(s, w, lv, wd, op, md):
            return guarded(controller.set_display, s, w, lv, wd, op, md)

        display_inputs = [sid, window, level, width, opacity, mode]
        for control in (window, opacity, mode):
            control.input(display, display_inputs, outputs, trigger_mode="always_last")
        for control in (level, width):
            control.submit(lambda s, w, lv, wd, op, md: display(s, "custom", lv, wd, op, md), display_inputs, outputs)
        view.input(lambda s, v: guarded(controller.set_view, s, v), [sid, view], outputs).then(
            warm, [sid], [status], show_progress="minimal", **GPU)
        slider.input(lambda s, k: guarded(controller.set_slice, s, k), [sid, slider], outputs,
                     trigger_mode="always_last", show_progress="hidden").then(warm, [sid], [status], show_progress="hidden", **GPU)
        prev_btn.click(lambda s: guarded(controller.step, s, -1), [sid], outputs, show_progress="hidden").then(
            warm, [sid], [status], show_progress="hidden", **GPU)
        next_btn.click(lambda s: guarded(controller.step, s, 1), [sid], outputs, show_progress="hidden").then(
            warm, [sid], [status], show_progress="hidden", **GPU)

        # --- prompting -----------------------------------------------------------------------
        def on_select(s, evt: gr.SelectData):
            x, y = evt.index[:2]
            return guarded(controller.click, s, float(x), float(y))

        image.select(on_select, [sid], outputs, show_progress="hidden", **GPU)

        def on_choose(s, choice):
            if not choice:
                return [gr.skip()] * len(outputs)
            return guarded(controller.choose, s, int(str(choice).split()[0]) - 1)

        _wire_propagation(ctx, propagate_btn, review_btns, sid, outputs, guarded)
        alternatives.input(on_choose, [sid, alternatives], outputs)
        new_btn.click(lambda s: guarded(controller.new_object, s), [sid], outputs)
        undo_btn.click(lambda s: guarded(controller.undo, s), [sid], outputs)
        redo_btn.click(lambda s: guarded(controller.redo, s), [sid], outputs)

        def copy_to_canvas(current):
            if current is None:
                gr.Warning("open a study first")
                return gr.skip()
            return {"background": current, "layers": [], "composite": current}

        copy_btn.click(copy_to_canvas, [image], [editor])

        def on_brush(s, value, file, model_prompt):
            return guarded(_mask_action, s, value, file, bool(model_prompt))

        brush_btn.click(on_brush, [sid, editor, mask_file, use_model], outputs, **GPU)

        # --- one-shot ------------------------------------------------------------------------
        def oneshot_info_of(s):
            try:
                return controller.oneshot_reference(ctx, s)
            except (SessionError, *USER_ERRORS) as e:
                return f"⚠ {e}"

        def on_oneshot_set(s, method, progress=gr.Progress()):
            return guarded(controller.set_oneshot_reference, s, method, lambda f, d: progress(f, desc=d))

        def on_oneshot_apply(s, scope, first, last, progress=gr.Progress()):
            return guarded(controller.apply_oneshot, s, scope, first, last, lambda f, d: progress(f, desc=d))

        oneshot_set.click(on_oneshot_set, [sid, oneshot_method], outputs, **GPU).then(
            oneshot_info_of, [sid], [oneshot_info])
        oneshot_apply.click(on_oneshot_apply, [sid, oneshot_scope, oneshot_first, oneshot_last], outputs, **GPU)
        load_event.then(oneshot_info_of, [sid], [oneshot_info])

        def on_oneshot_scope(scope, k, first, last):
            """Show the range inputs for a range, starting from the shown slice."""
            return gr.update(visible=scope == "slice range"), k if first is None else first, k if last is None else last

        oneshot_scope.change(on_oneshot_scope, [oneshot_scope, slider, oneshot_first, oneshot_last],
                             [oneshot_range, oneshot_first, oneshot_last])

        # --- labels --------------------------------------------------------------------------
        label.input(lambda s, v: guarded(controller.select_label, s, v), [sid, label], outputs)
        add_btn.click(lambda s, n: guarded(controller.add_label, s, n), [sid, label_name], outputs)
        clear_btn.click(lambda s: guarded(controller.clear, s), [sid], outputs)
        label_name.submit(lambda s, n, c: guarded(controller.edit_label, s, n, c), [sid, label_name, colour], outputs)
        colour.input(lambda s, n, c: guarded(controller.edit_label, s, n, c), [sid, label_name, colour], outputs,
                     trigger_mode="always_last")

        # --- export --------------------------------------------------------------------------
        def on_export(s, fmt):
            try:
                path, vm = controller.export(ctx, s, "dicom-seg" if str(fmt).startswith("DICOM") else "nifti")
                from data.deidentify import patient_data_note

                if note := (patient_data_note(path) if Path(path).suffix == ".dcm" else None):
                    vm.status = f"{vm.status} ⚠ Note: {note}."
                return [str(path)] + present(vm)
            except (SessionError, *USER_ERRORS) as e:
                gr.Warning(str(e))
                return [gr.skip()] + only_status(f"⚠ {e}")

        export_btn.click(on_export, [sid, export_fmt], [download] + outputs)

    return demo


def _review_buttons() -> dict[str, Any]:
    """Step through a finished propagation: accept / cut the range here / previous / next (``app.review``)."""
    with gr.Row():
        buttons = {"start": gr.Button("Review", size="sm", min_width=50, elem_id="review")}
        for action, text in (("prev", "◀"), ("accept", "Accept"), ("cut", "Cut here"), ("next", "▶")):
            buttons[action] = gr.Button(text, size="sm", min_width=40, elem_id=f"review-{action}")
    return buttons


def _wire_propagation(ctx: AppContext, button: Any, review_btns: dict[str, Any], sid: Any, outputs: list, guarded: Callable) -> None:
    """Propagate starts a background job and returns at once (the study stays visible and usable); a timer
    polls its per-slice progress and shows the result when it lands. Review buttons call ``controller.review``."""
    timer = gr.Timer(1.0, active=False)

    def on_propagate(s):
        return guarded(controller.propagate, s) + [gr.Timer(active=True)]

    def on_tick(s):
        job = controller.propagation_job(ctx, s)
        return guarded(controller.propagation_status, s) + [gr.Timer(active=bool(job and job.running))]

    button.click(on_propagate, [sid], outputs + [timer])
    timer.tick(on_tick, [sid], outputs + [timer], show_progress="hidden")
    for action, btn in review_btns.items():
        btn.click(lambda s, a=action: guarded(controller.review, s, a), [sid], outputs, show_progress="hidden")


def _mask_action(ctx: AppContext, sid: str, editor_value: Any, mask_file: str | None, use_model: bool) -> ViewModel:
    """The brush canvas's painted pixels, or an uploaded mask image, as the mask of the current plane."""
    if mask_file:
        from PIL import Image

        with Image.open(mask_file) as im:
            drawn = np.asarray(im.convert("L")) > 0
    else:
        layers = (editor_value or {}).get("layers") or []
        if not layers:
            raise SessionError("nothing painted: copy the slice to the canvas and paint over the structure")
        layer = np.asarray(layers[0])
        drawn = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer.any(axis=-1)
    return controller.mask(ctx, sid, drawn, use_model)


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    model: str = "litemedsam",
    device: str = "cpu",
    *,
    state_dir: str | Path | None = None,
    prefetch_radius: int = 1,
    prevent_thread_lock: bool = False,
):
    """Start the server (loopback by default). Files are served only from the session folders."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from app.settings import get_settings

    limits = get_settings()
    state = Path(state_dir) if state_dir else default_state_dir()
    sessions = state / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    load_segmenter(model, device=device)  # load once before serving; fail early on missing weights
    config = UIConfig(
        sessions_root=sessions, model=model, device=device, prefetch_radius=prefetch_radius,
        browser_secret=browser_secret(state), session_ttl_s=limits.session_ttl_s,
    )
    demo = build_app(config)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(sessions), *(str(r) for r in limits.allowed_roots)],
        max_file_size=limits.max_upload_bytes,
        footer_links=[],
        run_history=False,  # never keep patients' images in the browser's run history
        head=KEYBOARD_JS,
        prevent_thread_lock=prevent_thread_lock,
        quiet=True,
    )
    return demo
