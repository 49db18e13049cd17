"""The clinician's web UI: layout and wiring only (actions live in ``app.controller`` and ``app.viewer``).

The image panel is a WebGL viewer (NiiVue, ``viewer/`` built into ``app/viewer/static``): the page
holds the study and its labels, pages, zooms and windows them itself, and sends prompts to the
viewer's JSON routes (``app.viewer.api``). The Gradio side shows what the viewer cannot: the study
picker, labels table, measurements, alternatives, propagate, one-shot and export. The two meet in
a hidden ``#viewer-state`` element (what the viewer must show) and a hidden ``#viewer-sync``
button (the viewer asks the page to refresh after its edits).

Sessions: the browser keeps a random session id in its localStorage (``gr.BrowserState``), so a
reload, or reopening the page, restores that session from the server's store; two browsers
never share an id. All model work (encode, prompt) runs through one Gradio queue
(``concurrency_id="gpu"``, one at a time) and the runner's lock; display-only events run beside it.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' real annotations
# (gr.Request, gr.SelectData, gr.Progress) to inject them.

import html
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app import controller
from app.controller import MODES, AppContext, ViewModel
from app.errors import USER_ERRORS, public_message
from app.interaction import ModelRunner, Prefetcher
from app.oneshot import METHODS as ONESHOT_METHODS, SCOPES as ONESHOT_SCOPES
from app.render import window_choices
from app.session import SessionError, SessionStore
from app.viewer import actions as viewer_actions
from app.viewer.api import ViewerTokens, head_html, routes as viewer_routes
from models.registry import load_segmenter

log = logging.getLogger(__name__)
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
STORAGE_KEY = "medseg-session"

# The page's own style: the hidden state and sync elements the viewer talks through, a compact page.
PAGE_CSS = """
.mv-hidden { display: none !important; }
#status { min-height: 1.5em; }
.gradio-container { max-width: 100% !important; padding-top: 4px !important; }
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
    tokens = ViewerTokens()
    samples = list(controller.sample_studies())

    with gr.Blocks(title="medseg", delete_cache=(3600, 86400)) as demo:
        sid = gr.State(None)
        stored = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=config.browser_secret)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=250):
                gr.Markdown("**medseg**: promptable segmentation of CT, MR and photographs")
                with gr.Group():
                    sample = gr.Dropdown(samples, value=samples[0], label="Bundled sample", elem_id="sample")
                    with gr.Row():
                        open_btn = gr.Button("Open sample", variant="primary", size="sm", elem_id="open-sample")
                        upload = gr.UploadButton(
                            "Upload…", file_count="multiple", type="filepath", size="sm", elem_id="upload",
                        )
                facts = gr.Markdown("No study open.", elem_id="facts")
                model = gr.Dropdown(controller.model_choices(), value=config.model, label="Model", elem_id="model")
                with gr.Group():
                    window = gr.Dropdown(window_choices(), value="default", label="Window (or right-drag the image)",
                                         elem_id="window")
                    with gr.Row():
                        level = gr.Number(40, label="Level", elem_id="level", min_width=60)
                        width = gr.Number(400, label="Width", elem_id="width", min_width=60)
                with gr.Group():
                    formats = ["NIfTI (.nii.gz)"] + (["DICOM-SEG (.dcm)"] if controller.dicom_seg_available() else [])
                    export_fmt = gr.Radio(formats, value=formats[0], label="Export format", elem_id="export-format")
                    export_btn = gr.Button("Export labels", size="sm", elem_id="export-btn")
                    download = gr.DownloadButton("Download", visible=False, size="sm", elem_id="download")
            with gr.Column(scale=4, min_width=520):
                gr.HTML('<div id="medseg-viewer">The viewer is loading (if it never appears, run <code>make</code> '
                        'to build it).</div>', elem_id="viewer-panel", padding=False)
                viewer_state = gr.HTML("", elem_id="viewer-state", elem_classes=["mv-hidden"])
                viewer_sync = gr.Button("sync", elem_id="viewer-sync", elem_classes=["mv-hidden"])
                status = gr.Markdown("", elem_id="status", elem_classes=["mv-hidden"])  # shown by the viewer
            with gr.Column(scale=1, min_width=260):
                table = gr.Dataframe(
                    headers=["#", "label", "px on slice", "mm² on slice", "mL in study"],
                    interactive=False, elem_id="measurements", label="Labels", max_height=180,
                )
                with gr.Group():
                    label = gr.Dropdown([], label="Active label", elem_id="label")
                    with gr.Row():
                        label_name = gr.Textbox(label="Name", elem_id="label-name", scale=2, min_width=80)
                        colour = gr.ColorPicker(label="Colour", elem_id="label-colour", scale=1, min_width=60)
                    with gr.Row():
                        add_btn = gr.Button("Add label", size="sm", min_width=60, elem_id="add-label")
                        clear_btn = gr.Button(
                            "Clear label", size="sm", min_width=60, variant="stop", elem_id="clear-label"
                        )
                alternatives = gr.Radio([], label="Alternatives of the first click", elem_id="alternatives")
                propagate_btn = gr.Button("Propagate 3D (from the shown slice)", size="sm", elem_id="propagate")
                with gr.Accordion("Mask file", open=False):
                    mask_file = gr.File(label="A mask PNG (slice or display size)", type="filepath", height=80)
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

        outputs = [sid, viewer_state, label, label_name, colour, table, alternatives, facts, status,
                   model, window, level, width]
        at_status = outputs.index(status)

        def only_status(message: str) -> list[Any]:
            """Outputs that change nothing but the status line."""
            return [message if i == at_status else gr.skip() for i in range(len(outputs))]

        def present(vm: ViewModel) -> list[Any]:
            shown_window = {"level": vm.level, "width": vm.width}
            state_html = ""
            try:
                session = ctx.store.get(vm.session_id)
                with session.lock:
                    state = viewer_actions.state(session, tokens.token(session.id))
                    if session.volume is not None:
                        shown_window = viewer_actions.window_of(session) or shown_window
                state_html = f'<div data-state="{html.escape(json.dumps(state), quote=True)}"></div>'
            except SessionError:
                pass
            return [
                vm.session_id,
                state_html,
                gr.update(choices=vm.labels, value=vm.active if vm.labels else None),
                vm.label_name,
                vm.colour,
                vm.measurements or None,
                gr.update(choices=vm.alternatives, value=vm.chosen, visible=bool(vm.alternatives)),
                vm.facts,
                gr.skip() if vm.status is None else vm.status,
                vm.model,
                vm.window,
                round(float(shown_window["level"]), 2),
                round(float(shown_window["width"]), 2),
            ]

        def guarded(action: Callable[..., ViewModel], *args) -> list[Any]:
            """Run an action; a user error becomes one status line (no server paths), never a traceback."""
            try:
                return present(action(ctx, *args))
            except (SessionError, *USER_ERRORS) as e:
                message = f"⚠ {public_message(e)}"
            except Exception as e:  # unexpected: log it for us, show one line to the user
                log.exception("UI action %s failed", getattr(action, "__name__", action))
                message = f"⚠ internal error ({type(e).__name__}); the session is saved, try again"
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
            return guarded(controller.open_sample, s, name, lambda f, d: progress(f, desc=d)) + [_no_download()]

        def on_upload(s, files, progress=gr.Progress()):
            if not files:
                return [gr.skip()] * (len(outputs) + 1)
            files = [files] if isinstance(files, str) else list(files)
            return guarded(controller.open_upload, s, files, lambda f, d: progress(f, desc=d)) + [_no_download()]

        open_btn.click(on_open, [sid, sample], outputs + [download]).then(
            warm, [sid], [status], show_progress="minimal", **GPU)
        upload.upload(on_upload, [sid, upload], outputs + [download]).then(
            warm, [sid], [status], show_progress="minimal", **GPU)
        model.input(lambda s, m: guarded(controller.set_model, s, m), [sid, model], outputs, **GPU).then(
            warm, [sid], [status], show_progress="minimal", **GPU
        )

        # --- looking (the viewer pages, zooms and windows itself; these set the window by name or number) --
        def display(s, w, lv, wd):
            session = ctx.store.get(s) if s else None
            vs = session.view if session is not None else None
            opacity, mode = (vs.opacity, vs.mode) if vs is not None else (0.45, MODES[0])
            return guarded(controller.set_display, s, w, lv, wd, opacity, mode)

        window.input(display, [sid, window, level, width], outputs, trigger_mode="always_last")
        for control in (level, width):
            control.submit(lambda s, lv, wd: display(s, "custom", lv, wd), [sid, level, width], outputs)
        viewer_sync.click(lambda s: guarded(controller.refresh, s, None), [sid], outputs,
                          trigger_mode="always_last", show_progress="hidden")

        # --- prompting (clicks, boxes and the brush live in the viewer) ------------------------
        def on_choose(s, choice):
            if not choice:
                return [gr.skip()] * len(outputs)
            return guarded(controller.choose, s, int(str(choice).split()[0]) - 1)

        def on_propagate(s, progress=gr.Progress()):
            return guarded(controller.propagate, s, lambda f, d: progress(f, desc=d))

        propagate_btn.click(on_propagate, [sid], outputs, **GPU)
        alternatives.input(on_choose, [sid, alternatives], outputs)

        def on_mask(s, file, model_prompt):
            return guarded(_mask_action, s, None, file, bool(model_prompt))

        brush_btn.click(on_mask, [sid, mask_file, use_model], outputs, **GPU)

        # --- one-shot ------------------------------------------------------------------------
        def oneshot_info_of(s):
            try:
                return controller.oneshot_reference(ctx, s)
            except (SessionError, *USER_ERRORS) as e:
                return f"⚠ {public_message(e)}"

        def on_oneshot_set(s, method, progress=gr.Progress()):
            return guarded(controller.set_oneshot_reference, s, method, lambda f, d: progress(f, desc=d))

        def on_oneshot_apply(s, scope, first, last, progress=gr.Progress()):
            return guarded(controller.apply_oneshot, s, scope, first, last, lambda f, d: progress(f, desc=d))

        oneshot_set.click(on_oneshot_set, [sid, oneshot_method], outputs, **GPU).then(
            oneshot_info_of, [sid], [oneshot_info])
        oneshot_apply.click(on_oneshot_apply, [sid, oneshot_scope, oneshot_first, oneshot_last], outputs, **GPU)
        load_event.then(oneshot_info_of, [sid], [oneshot_info])

        def on_oneshot_scope(s, scope, first, last):
            """Show the range inputs for a range, starting from the shown slice."""
            try:
                vs = ctx.store.get(s).view
                k = vs.index.get(vs.view, 0)
            except SessionError:
                k = 0
            return gr.update(visible=scope == "slice range"), k if first is None else first, k if last is None else last

        oneshot_scope.change(on_oneshot_scope, [sid, oneshot_scope, oneshot_first, oneshot_last],
                             [oneshot_range, oneshot_first, oneshot_last])

        # --- labels --------------------------------------------------------------------------
        label.input(lambda s, v: guarded(controller.select_label, s, v), [sid, label], outputs)
        add_btn.click(lambda s, n: guarded(controller.add_label, s, n), [sid, label_name], outputs)
        clear_btn.click(lambda s: guarded(controller.clear, s), [sid], outputs)
        label_name.submit(lambda s, n, c: guarded(controller.edit_label, s, n, c), [sid, label_name, colour], outputs)
        for event in (colour.input, colour.change):  # a typed hex colour fires change only
            event(lambda s, n, c: _colour_changed(ctx, guarded, s, n, c, len(outputs)), [sid, label_name, colour],
                  outputs, trigger_mode="always_last", show_progress="hidden")

        # --- export --------------------------------------------------------------------------
        def on_export(s, fmt):
            try:
                path, vm = controller.export(ctx, s, "dicom-seg" if str(fmt).startswith("DICOM") else "nifti")
                from data.deidentify import patient_data_note

                if note := (patient_data_note(path) if Path(path).suffix == ".dcm" else None):
                    vm.status = f"{vm.status} ⚠ Note: {note}."
                return [gr.update(value=str(path), visible=True, label=f"Download {Path(path).name}")] + present(vm)
            except (SessionError, *USER_ERRORS) as e:
                return [gr.skip()] + only_status(f"⚠ {public_message(e)}")

        export_btn.click(on_export, [sid, export_fmt], [download] + outputs)

    demo.viewer_routes = viewer_routes(ctx, tokens)
    return demo


def _no_download():
    """A newly opened study hides the previous study's export."""
    import gradio as gr

    return gr.update(value=None, visible=False)


def _colour_changed(ctx: AppContext, guarded, sid, name, colour, n_outputs: int) -> list[Any]:
    """Save a picked or typed colour unless it is the active label's colour already (the page echoes it)."""
    import gradio as gr

    try:
        session = ctx.store.get(sid)
        with session.lock:
            if session.volume is None or controller.parse_colour(colour) == session.label(session.active).colour:
                return [gr.skip()] * n_outputs
    except (SessionError, *USER_ERRORS):
        pass
    return guarded(controller.edit_label, sid, name, colour)


def _mask_action(ctx: AppContext, sid: str, editor_value: Any, mask_file: str | None, use_model: bool) -> ViewModel:
    """The brush canvas's painted pixels, or an uploaded mask image, as the mask of the current plane."""
    if mask_file:
        from PIL import Image

        with Image.open(mask_file) as im:
            drawn = np.asarray(im.convert("L")) > 0
    else:
        layers = (editor_value or {}).get("layers") or []
        if not layers:
            raise SessionError("nothing painted: choose a mask file, or paint with the viewer's brush")
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
    import gradio as gr

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
        head=head_html(),
        theme=gr.themes.Default(spacing_size="sm", text_size="sm", radius_size="sm"),
        css=PAGE_CSS,
        app_kwargs={"routes": demo.viewer_routes},
        prevent_thread_lock=prevent_thread_lock,
        quiet=True,
    )
    return demo
