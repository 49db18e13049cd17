"""The clinician's web UI: layout and wiring only (actions live in ``app.controller`` and ``app.viewer``).

The image panel is a WebGL viewer (NiiVue, ``viewer/`` built into ``app/viewer/static``): the page
holds the study and its labels, pages, zooms and windows them itself, and sends prompts to the
viewer's JSON routes (``app.viewer.api``). The Gradio side shows what the viewer cannot: the study
picker, labels table, measurements, alternatives, propagate, one-shot and export. The two meet in
a hidden ``#viewer-state`` element (what the viewer must show) and a hidden ``#viewer-sync``
button (the viewer asks the page to refresh after its edits).

Sessions: the server gives the browser an HttpOnly, SameSite=Strict cookie holding a random token
(``app.web_session``); the session id is derived from it on the server, so a reload, or reopening
the page, restores that session from the server's store, page scripts never see the credential
(the viewer's routes read the same cookie), and two browsers never share a session. Every message
shown is escaped text (``app.messages``). All model work (encode, prompt) runs through one Gradio
queue (``concurrency_id="gpu"``, one at a time) and the runner's lock; display-only events run beside it.
A GPU server with a batching window (``--batch-window-ms``) lets up to :data:`BATCHED_CONCURRENCY` model
events in at once, for the batcher.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' real annotations
# (gr.Request, gr.SelectData, gr.Progress) to inject them.

import html
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app import controller, header_deadline, messages, pacs, series_picker, trace, web_session
from app.controller import MODES, AppContext, ViewModel
from app.page_wiring import PageWiring
from app.errors import USER_ERRORS
from app.interaction import ModelRunner, Prefetcher
from app.oneshot import METHODS as ONESHOT_METHODS, SCOPES as ONESHOT_SCOPES
from app.propagation_defaults import DEFAULT_FILL
from app.render import window_choices
from app.session import SessionError, SessionStore, claim_root, default_state_dir, remove_save_temporaries
from app.startup_check import patient_launch_check
from app.model_catalog import backend_for, load_model
from app.viewer import actions as viewer_actions
from app.viewer.api import API_URL as VIEWER_API_URL, LeaveGuard, head_html, routes as viewer_routes
from runtime.threads import configure_serving

FILL_CHOICES = [("Shape", "shape"), ("Model", "model"), ("Model guided by the shape", "guided")]
"""The UI's "Fill between corrected slices" (label, ``PropagationSettings.fill``); ``DEFAULT_FILL`` is picked at first."""

log = logging.getLogger(__name__)
EXPORT_PNG = "PNG (.png)"  # a picture's labels, with its EXIF Orientation
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
BATCHED_CONCURRENCY = 32  # model events in flight when the runner batches encodes (app.encode_batcher)
NO_COOKIE = ("this page needs its session cookie: allow cookies for this site, then reload "
             "(the cookie holds only a random token)")

SIDEBAR_MIN_PX, VIEWER_MIN_PX, TOOLS_MIN_PX = 250, 520, 260  # the columns' least widths (Gradio's min_width)

# The page's own style: the hidden state and sync elements the viewer talks through, a compact page.
PAGE_CSS = """
.mv-hidden { display: none !important; }
/* Gradio wraps a form component (the hidden #viewer-shown Textbox) in a .form box: hide a box holding only hidden
   ones, or its border and the column's gap add 10 px and push Export below a 900 px window */
.form:not(:has(> :not(.mv-hidden))) { display: none !important; }
#status { min-height: 1.5em; }
.gradio-container { max-width: 100% !important; padding-top: 4px !important; }
/* under 1024 px Gradio's page is 768 px wide, too narrow for the sidebar and the viewer side by side
   (SIDEBAR_MIN_PX + Gradio's 12 px gap + VIEWER_MIN_PX), and the three columns stack: the viewer's first, so the study
   just opened is in view rather than 700 px down, below the sidebar's controls (Gradio drops @container rules).
   The browser's scroll anchoring is off there: the status line growing a line scrolled the image 20 px up */
/* the export formats in one row of the sidebar (a second row pushed Export below a 900 px window) */
#export-format .wrap { gap: 2px !important; }
#export-format label { padding-left: 4px !important; padding-right: 4px !important; margin: 0 !important; }
@media (max-width: 1023px) { #viewer-column { order: -1; } #main-row { overflow-anchor: none; } }
"""


@dataclass(frozen=True)
class UIConfig:
    """Server settings, typed and fixed at launch."""

    sessions_root: Path
    model: str = "litemedsam"
    device: str = "cpu"
    backend: str | None = None  # None/"auto": $MEDSEG_BACKEND or the rule (runtime.backend_choice)
    batch_window_ms: float = 0.0  # > 0: sessions' encodes batched (app.encode_batcher), for a GPU server
    prefetch_radius: int = 1
    session_ttl_s: float = 14 * 86400
    dicomweb: str | None = None  # a PACS's DICOMweb base URL: the PACS panel (app/pacs.py)
    open_sample: str | None = None  # a bundled sample each new session opens (`make run`)


def model_events(config: UIConfig) -> dict[str, Any]:
    """Gradio queue settings of the model events: one at a time, or many when the runner batches encodes."""
    return {**GPU, "concurrency_limit": BATCHED_CONCURRENCY} if config.batch_window_ms > 0 else dict(GPU)


def build_app(config: UIConfig):
    """Lay out the page and wire each control to its action. Nothing runs until launch."""
    import gradio as gr

    GPU = model_events(config)  # noqa: N806 - the events' queue settings, as the module's default is named
    # one lock for user and background model work, or encodes batched across sessions (batch_window_ms > 0)
    runner = ModelRunner(config.device, backend=config.backend, batch_window_ms=config.batch_window_ms)
    ctx = AppContext(
        store=SessionStore(config.sessions_root, ttl_s=config.session_ttl_s),
        runner=runner,
        prefetcher=Prefetcher(runner, radius=config.prefetch_radius),
    )
    samples = list(controller.sample_studies())
    from gradio.utils import get_upload_folder

    shelf = web_session.ExportShelf(get_upload_folder())

    with gr.Blocks(title="medseg", delete_cache=(3600, 86400)) as demo:
        demo.medseg_ctx, demo.medseg_shelf = ctx, shelf  # for launch(): the middleware's view of sessions
        sid = gr.State(None)
        with gr.Row(equal_height=False, elem_id="main-row"):
            with gr.Column(scale=1, min_width=SIDEBAR_MIN_PX):
                gr.Markdown("**medseg**: promptable segmentation of CT, MR and photographs")
                with gr.Group():
                    sample = gr.Dropdown(samples, value=samples[0], label="Bundled sample", elem_id="sample")
                    with gr.Row():
                        open_btn = gr.Button("Open sample", variant="primary", size="sm", elem_id="open-sample")
                        upload = gr.UploadButton(
                            "Upload…", file_count="multiple", type="filepath", size="sm", elem_id="upload",
                        )
                    upload_series = series_picker.layout()
                facts = gr.Markdown("No study open.", elem_id="facts")
                pacs_panel = pacs.layout(config.dicomweb)
                # interactive: no Gradio event reads it (the viewer sends the pick), so Gradio would disable it
                model = gr.Dropdown(controller.model_choices(), value=config.model, label="Model", elem_id="model",
                                    interactive=True)
                with gr.Group():
                    window = gr.Dropdown(window_choices(), value="default", label="Window (or right-drag the image)",
                                         elem_id="window")
                    with gr.Row():
                        level = gr.Number(40, label="Level", elem_id="level", min_width=60)
                        width = gr.Number(400, label="Width", elem_id="width", min_width=60)
                with gr.Group():
                    # short names, so the three fit one row of the sidebar (the extension is the value, in the
                    # file's name): a second row made a 900 px window scroll
                    formats = ([("NIfTI", "NIfTI (.nii.gz)")]
                               + ([("DICOM-SEG", "DICOM-SEG (.dcm)")] if controller.dicom_seg_available() else [])
                               + [("PNG", EXPORT_PNG)])
                    export_fmt = gr.Radio(formats, value=formats[0][1], label="Export format",
                                          elem_id="export-format")
                    keep_ids = gr.Checkbox(False, elem_id="keep-identifiers",
                                           label="Keep patient identifiers (SEG headers, file names; off: de-identified)")
                    export_btn = gr.Button("Export labels", size="sm", elem_id="export-btn")
                    download = gr.DownloadButton("Download", visible=False, size="sm", elem_id="download")
            with gr.Column(scale=4, min_width=VIEWER_MIN_PX, elem_id="viewer-column"):
                gr.HTML('<div id="medseg-viewer">The viewer is loading (if it never appears, run <code>make</code> '
                        'to build it).</div>', elem_id="viewer-panel", padding=False)
                viewer_state = gr.HTML("", elem_id="viewer-state", elem_classes=["mv-hidden"])
                viewer_sync = gr.Button("sync", elem_id="viewer-sync", elem_classes=["mv-hidden"])
                # the plane the viewer shows, written by the viewer as it pages: sent with the buttons that act on it
                viewer_shown = gr.Textbox("", elem_id="viewer-shown", elem_classes=["mv-hidden"], max_lines=1)
                status = gr.Markdown("", elem_id="status", elem_classes=["mv-hidden"])  # shown by the viewer
            with gr.Column(scale=1, min_width=TOOLS_MIN_PX):
                table = gr.Dataframe(
                    headers=["#", "label", "px on slice", "mm² on slice", "mL in study"],
                    interactive=False, elem_id="measurements", label="Labels", max_height=180,
                )
                with gr.Group():
                    # allow_custom_value: Gradio checks a value sent against the choices the box last got before any
                    # handler runs, and a page built before a study switch (its label 2, the new study's choices [1])
                    # fired the colour picker's change: "Value: 2 is not in the list of choices: [1]", a red error and
                    # a traceback (session 22). The handlers judge the label sent (_colour_changed, select_label).
                    label = gr.Dropdown([], label="Active label", elem_id="label", allow_custom_value=True)
                    with gr.Row():
                        label_name = gr.Textbox(label="Name", elem_id="label-name", scale=2, min_width=80, max_lines=1)
                        colour = gr.ColorPicker(label="Colour", elem_id="label-colour", scale=1, min_width=60)
                    with gr.Row():
                        add_btn = gr.Button("Add label", size="sm", min_width=60, elem_id="add-label")
                        clear_btn = gr.Button(
                            "Clear label", size="sm", min_width=60, variant="stop", elem_id="clear-label"
                        )
                # interactive: no Gradio event reads it (the viewer sends the pick), so Gradio would disable it
                alternatives = gr.Radio([], label="Alternatives of the first click", elem_id="alternatives",
                                        interactive=True)
                propagate_btn = gr.Button("Propagate 3D (from the shown slice)", size="sm", elem_id="propagate")
                fill_choice = gr.Radio(FILL_CHOICES, value=DEFAULT_FILL, label="Fill between corrected slices",
                                       elem_id="fill-between", info="shape: interpolated (measured best, "
                                       "docs/evaluation.md); model: segmented from both ends; guided: the model "
                                       "prompted with the shape")
                review_btns = _review_buttons()
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
        typed = [outputs.index(c) for c in (level, width, label_name, colour)]  # typed into, sent with Enter
        at_name = outputs.index(label_name)
        label_form = [outputs.index(c) for c in (label, label_name, colour)]  # one label's form: kept or shown whole
        given: dict[str | None, dict[int, Any]] = {}  # page (Gradio session hash) -> typed fields' last values sent
        # page -> (study, label revision) its Download holds: every page carries it, not only the export's own
        exports: dict[str | None, tuple[str | None, int]] = {}

        def page_key() -> str | None:
            from gradio.context import LocalContext

            return getattr(LocalContext.request.get(None), "session_hash", None)

        def background(refresh: Callable[[], list[Any]], name: str | None = None) -> list[Any]:
            """Run a refresh the user did not ask for (the viewer's sync after its edits, the propagation
            timer); it leaves a typed field alone unless the server's value changed since the page was last
            given one: the user may be typing there. Issue 19: a sync that landed between typing width 0
            and Enter put 400 back, so Enter sent 400 and no error was shown.

            ``name``, the page's Name box as sent: while it holds text the page was not given, the user is typing
            a name for the label the form shows, and the whole label form (label, name, colour) stays as it is; the
            sync after a legend pick replaced the typed name with the picked label's (its value had changed)."""
            before = dict(given.get(page_key(), {}))
            result = refresh()
            typing = name is not None and at_name in before and not _same_value(name, before[at_name])
            for i in typed:
                if i in before and _same_value(result[i], before[i]):
                    result[i] = gr.skip()
            for i in label_form if typing else ():
                result[i] = gr.skip()
                if i in before:  # the page still has what it was given before, not this refresh's value
                    given.setdefault(page_key(), {})[i] = before[i]
            return result

        def only_status(message: str) -> list[Any]:
            """Outputs that change nothing but the status line (``message`` already escaped)."""
            return [message if i == at_status else gr.skip() for i in range(len(outputs))]

        def present(vm: ViewModel) -> list[Any]:
            shown_window = {"level": vm.level, "width": vm.width}
            state_html = ""
            try:
                session = ctx.store.get(vm.session_id)
                with session.lock:  # one moment for the viewer's state, the label box and its order (seq)
                    state = viewer_actions.state(session)
                    seq = viewer_actions.PAGES.next()  # the order pages were built in (PageOrder)
                    if session.volume is not None:  # a colour picture has no window: the boxes are empty
                        shown_window = viewer_actions.window_of(session) or (
                            {"level": None, "width": None} if session.volume.is_rgb else shown_window)
                    if session.labels is not None:
                        vm.labels, vm.active, vm.label_name, vm.colour = controller.label_box(session)
                        # the list with the state it belongs to: a sync whose view model was made before N (its
                        # list the first structure's) and its state after (no object) took a pick in that list to
                        # the second structure, for no first click came with it (the flaky alternative e2e test)
                        vm.alternatives, vm.chosen = controller.alternatives_box(session)
                # the page says which label revision its Download's file holds: the viewer marks it older than the
                # labels once they are newer (a hurried user went on editing, then downloaded). Every page of this
                # study says it, not only the export's: a sync asked before the export and answered just after it
                # replaced the export's page before the viewer's poll read it, and the mark never came (CI)
                if vm.exported is not None:
                    exports[page_key()] = (session.study_key, vm.exported)
                held = exports.get(page_key())
                exported = (f' data-exported="{messages.BOOT}.{held[1]}"'
                            if held is not None and held[0] == session.study_key else "")
                state_html = (f'<div data-state="{html.escape(json.dumps(state), quote=True)}" '
                              f'data-seq="{messages.BOOT}.{seq}"{exported}></div>')
            except SessionError:
                pass
            status = gr.skip() if vm.status is None else messages.stamped(
                messages.for_markdown(vm.status, hide=[vm.session_id]), vm.status_at or messages.news_stamp())
            result = [
                vm.session_id,
                state_html,
                gr.update(choices=vm.labels, value=vm.active if vm.labels else None),
                vm.label_name,
                vm.colour,
                vm.measurements or None,
                gr.update(choices=vm.alternatives, value=vm.chosen, visible=bool(vm.alternatives)),
                vm.facts,
                status,
                vm.model,
                vm.window,
                None if shown_window["level"] is None else round(float(shown_window["level"]), 2),
                None if shown_window["width"] is None else round(float(shown_window["width"]), 2),
            ]
            given[page_key()] = {i: result[i] for i in typed}
            return result

        def guarded(action: Callable[..., ViewModel], *args) -> list[Any]:
            """Run an action; a user error becomes one warning toast and one status line in the viewer
            (escaped, no server paths, no session id), never a traceback or a red Error."""
            s = args[0] if args else None
            try:
                check_cookie(s)
                return present(action(ctx, *args))
            except (SessionError, *USER_ERRORS) as e:
                text = messages.plain(messages.error_text(e), hide=[str(s or "")])
            except Exception as e:  # unexpected: log it for us, show one line to the user
                log.exception("UI action %s failed", getattr(action, "__name__", action))
                text = f"internal error ({type(e).__name__}); the session is saved, try again"
            gr.Warning(messages.for_toast(text))
            message = messages.for_markdown(f"⚠ {text}")
            try:  # show the server's state again (e.g. the model picker snaps back), but for what the user typed:
                check_cookie(s)  # a refused name of 125 characters went back to 'label 1', to be typed again whole
                vm = controller.refresh(ctx, s, None)
                return [message if i == at_status else gr.skip() if i in typed else v
                        for i, v in enumerate(present(vm))]
            except Exception:
                return only_status(message)

        def check_cookie(s: str | None) -> None:
            """The event must carry the cookie of the session this page holds (the page's state is
            keyed by Gradio's session hash, which the client picks: the cookie is the credential)."""
            from gradio.context import LocalContext

            request = LocalContext.request.get(None)
            if request is None:  # called outside an event (tests call the actions directly)
                return
            if s is None or web_session.sid_of_request(request) != s:
                raise SessionError(NO_COOKIE if web_session.sid_of_request(request) is None
                                   else "this page's session has changed: reload the page")

        def warm(s):
            """Encode the shown plane ahead of the first click; only the status line shows it."""
            if s is None:
                return gr.skip()
            key = page_key()
            sent = given.get(key)
            message = guarded(controller.warm, s)[at_status]
            if sent is None:  # only the status line goes to the page: the typed fields it was given stay
                given.pop(key, None)
            else:
                given[key] = sent
            return message

        # --- session start / restore -------------------------------------------------------
        def on_load(request: gr.Request):
            token_sid = web_session.sid_of_request(request)
            if token_sid is None:
                return only_status(messages.for_markdown(f"⚠ {NO_COOKIE}"))
            try:
                vm = controller.start(ctx, token_sid, getattr(request, "session_hash", None), config.open_sample)
            except (SessionError, *USER_ERRORS) as e:
                return only_status(messages.for_markdown(f"⚠ {messages.plain(messages.error_text(e))}"))
            result = present(vm)
            at_model = outputs.index(model)  # list the models again: an adapter trained since start shows up
            shown = {"value": result[at_model]} if isinstance(result[at_model], str) else {}
            result[at_model] = gr.update(choices=controller.model_choices(), **shown)
            return result

        def on_unload(request: gr.Request) -> None:
            ctx.store.release(getattr(request, "session_hash", "") or "")
            given.pop(getattr(request, "session_hash", None), None)
            exports.pop(getattr(request, "session_hash", None), None)

        wiring = PageWiring(ctx, sid, outputs, status, guarded, warm, GPU)
        pacs_opened = pacs.wire(pacs_panel, wiring)

        load_event = demo.load(on_load, None, outputs)
        load_event.then(warm, [sid], [status], show_progress="minimal", **GPU)
        demo.unload(on_unload)

        # --- study ---------------------------------------------------------------------------
        def on_open(s, name, progress=gr.Progress()):
            return guarded(controller.open_sample, s, name, lambda f, d: progress(f, desc=d)) + [_no_download()]

        def on_upload(s, files, progress=gr.Progress()):
            if not files:
                return [gr.skip()] * (len(outputs) + 1)
            files = [files] if isinstance(files, str) else list(files)
            return guarded(_open_upload, s, files, lambda f, d: progress(f, desc=d)) + [_no_download()]

        open_btn.click(on_open, [sid, sample], outputs + [download]).then(
            warm, [sid], [status], show_progress="minimal", **GPU)
        uploaded = upload.upload(on_upload, [sid, upload], outputs + [download])
        uploaded.then(warm, [sid], [status], show_progress="minimal", **GPU)
        series_picker.wire(upload_series, wiring, [uploaded, *([pacs_opened] if pacs_opened else [])], [download],
                           lambda: [_no_download()])

        # --- looking (the viewer pages, zooms and windows itself; these set the window by name or number) --
        def display(s, w, lv, wd):
            try:
                vs = ctx.store.get(s).view if s else None
            except SessionError:
                vs = None
            opacity, mode = (vs.opacity, vs.mode) if vs is not None else (0.45, MODES[0])
            return guarded(controller.set_display, s, w, lv, wd, opacity, mode)

        window.input(display, [sid, window, level, width], outputs, trigger_mode="always_last")
        for control in (level, width):
            control.submit(lambda s, lv, wd: display(s, "custom", lv, wd), [sid, level, width], outputs)
        def sync(s, name=None):
            with trace.span("sync"):
                return background(lambda: guarded(controller.refresh, s, None), name)

        viewer_sync.click(sync, [sid, label_name], outputs,
                          trigger_mode="always_last", show_progress="hidden")
        # A model is picked through the viewer's queue (its 'model' action, after the prompts queued before it:
        # app.viewer.actions.choose_model); the box's own event only shows the model in use again. It switched the
        # model at once, so clicks still queued began a second object on the new model; and Gradio fires it on every
        # blur of the box too, which started a new object with the same model.
        model.input(sync, [sid], outputs, trigger_mode="always_last", show_progress="hidden")

        def on_model_pick(s, picked: gr.SelectData):
            """A pick in the list that reached Gradio (the viewer takes every pick it sees, so only a page without
            its script): it snapped back without a word; it is now the viewer's action (controller.pick_model)."""
            return guarded(controller.pick_model, s, str(picked.value))

        model.select(on_model_pick, [sid], outputs, show_progress="hidden")

        # --- prompting (clicks, boxes and the brush live in the viewer) ------------------------
        _wire_propagation(ctx, propagate_btn, fill_choice, review_btns, sid, viewer_shown, outputs, guarded, background,
                          load_event)
        # An alternative is picked through the viewer's queue too (its 'alternative' action, after the prompts queued
        # before it, for the first click the list was shown for); the radio's own event only shows the page again.
        alternatives.input(sync, [sid], outputs, trigger_mode="always_last", show_progress="hidden")

        def on_mask(s, shown, file, model_prompt):
            return guarded(on_shown(_mask_action), s, shown, None, file, bool(model_prompt))

        brush_btn.click(on_mask, [sid, viewer_shown, mask_file, use_model], outputs, **GPU)

        # --- one-shot ------------------------------------------------------------------------
        def oneshot_info_of(s):
            if s is None:
                return ""
            try:
                check_cookie(s)
                return messages.for_markdown(controller.oneshot_reference(ctx, s), hide=[s])
            except (SessionError, *USER_ERRORS) as e:
                return messages.for_markdown(f"⚠ {messages.error_text(e)}", hide=[s])

        def on_oneshot_set(s, shown, method, progress=gr.Progress()):
            return guarded(on_shown(controller.set_oneshot_reference), s, shown, method, lambda f, d: progress(f, desc=d))

        def on_oneshot_apply(s, shown, scope, first, last, progress=gr.Progress()):
            return guarded(on_shown(controller.apply_oneshot), s, shown, scope, first, last,
                           lambda f, d: progress(f, desc=d))

        oneshot_set.click(on_oneshot_set, [sid, viewer_shown, oneshot_method], outputs, **GPU).then(
            oneshot_info_of, [sid], [oneshot_info])
        oneshot_apply.click(on_oneshot_apply, [sid, viewer_shown, oneshot_scope, oneshot_first, oneshot_last], outputs,
                            **GPU)
        load_event.then(oneshot_info_of, [sid], [oneshot_info])

        def on_oneshot_scope(s, scope, first, last):
            """Show the range inputs for a range, starting from the shown slice."""
            try:
                vs = ctx.store.get(s).view
                k = vs.index.get(vs.view, 0)
            except (SessionError, *USER_ERRORS):
                k = 0
            return gr.update(visible=scope == "slice range"), k if first is None else first, k if last is None else last

        oneshot_scope.change(on_oneshot_scope, [sid, oneshot_scope, oneshot_first, oneshot_last],
                             [oneshot_range, oneshot_first, oneshot_last])

        # --- labels --------------------------------------------------------------------------
        label.input(lambda s, v: guarded(controller.select_label, s, v), [sid, label], outputs)
        add_btn.click(lambda s, n: guarded(controller.add_label, s, n), [sid, label_name], outputs)
        clear_btn.click(lambda s: guarded(controller.clear, s), [sid], outputs)
        # the label the form shows goes with Name + Enter: the rename is for it, not for a label picked since
        label_name.submit(lambda s, v, n, c: guarded(controller.edit_label, s, n, c, v),
                          [sid, label, label_name, colour], outputs)
        for event in (colour.input, colour.change):  # a typed hex colour fires change only
            event(lambda s, v, n, c: _colour_changed(ctx, guarded, s, v, n, c, len(outputs)),
                  [sid, label, label_name, colour], outputs, trigger_mode="always_last", show_progress="hidden")

        # --- export --------------------------------------------------------------------------
        def on_export(s, fmt, keep):
            try:
                check_cookie(s)
                kind = "dicom-seg" if str(fmt).startswith("DICOM") else "png" if fmt == EXPORT_PNG else "nifti"
                path, vm = controller.export(ctx, s, kind, keep_identifiers=bool(keep))
                from data.deidentify import patient_data_note

                if note := (patient_data_note(path) if Path(path).suffix == ".dcm" else None):
                    vm.status = f"{vm.status} ⚠ Note: {note}."
                # served from Gradio's cache under a random folder, to this session's cookie only, as an attachment
                served = shelf.publish(path, s)
                return [gr.update(value=served, visible=True, label=f"Download {Path(path).name}")] + present(vm)
            except (SessionError, *USER_ERRORS) as e:
                text = messages.plain(messages.error_text(e), hide=[str(s or "")])
                gr.Warning(messages.for_toast(text))
                return [gr.skip()] + only_status(messages.for_markdown(f"⚠ {text}"))

        export_btn.click(on_export, [sid, export_fmt, keep_ids], [download] + outputs)

    demo.viewer_routes = viewer_routes(ctx)
    return demo


def _open_upload(ctx: AppContext, sid: str, files: list[str], progress=None) -> ViewModel:
    """Open an upload; when it is refused, Gradio's cached copy of it is deleted too (the session's
    copy already is), so a refused file is nowhere to be served or to fill the disk."""
    try:
        return controller.open_upload(ctx, sid, files, progress)
    except BaseException:
        _discard_uploaded(files)
        raise


def _discard_uploaded(files: list[str]) -> None:
    from gradio.utils import get_upload_folder

    cache = Path(get_upload_folder()).resolve()
    for f in files:
        path = Path(f).resolve()
        if path.is_file() and path.is_relative_to(cache) and path.parent != cache:
            try:
                path.unlink()
                path.parent.rmdir()  # Gradio's per-upload folder, when now empty
            except OSError:
                pass


def _review_buttons() -> dict[str, Any]:
    """Step through a finished propagation: accept / cut the range here / previous / next (``app.review``)."""
    import gradio as gr

    with gr.Row(elem_id="review-row"):
        buttons = {"start": gr.Button("Review", size="sm", min_width=50, elem_id="review")}
        for action, text in (("prev", "◀"), ("accept", "Accept"), ("cut", "Cut here"), ("next", "▶")):
            buttons[action] = gr.Button(text, size="sm", min_width=40, elem_id=f"review-{action}")
    return buttons


# The review's steps: ◀ ▶ and Accept (which goes on to the next slice) act on each press. Gradio's default
# (trigger_mode "once") took no press while the button's event ran, so ▶ pressed 3 times quickly went 1 or 2
# slices on. All review events share one queue, one at a time, so the presses act in the order made.
REVIEW_STEPS = ("prev", "next", "accept")
REVIEW_QUEUE = {"concurrency_id": "review", "concurrency_limit": 1}


def review_event(action: str) -> dict[str, Any]:
    """Gradio event settings of a review button: every press of a step counts, all in one ordered queue."""
    return {**REVIEW_QUEUE, "trigger_mode": "multiple" if action in REVIEW_STEPS else "once"}


def on_shown(action: Callable[..., ViewModel]) -> Callable[..., ViewModel]:
    """``action(ctx, sid, *args)`` run on the plane the viewer shows: ``(ctx, sid, shown, *args)``, where
    ``shown`` is the page's ``#viewer-shown`` (``viewer_actions.follow_shown``), under the session's lock."""

    def run(ctx: AppContext, sid: str, shown: str | None, *args) -> ViewModel:
        session = ctx.store.get(sid)
        with session.lock:  # re-entrant: the action takes it again
            viewer_actions.follow_shown(session, shown)
            return action(ctx, sid, *args)

    run.__name__ = getattr(action, "__name__", "action")
    return run


def _wire_propagation(ctx: AppContext, button: Any, fill: Any, review_btns: dict[str, Any], sid: Any, shown: Any,
                      outputs: list, guarded: Callable, background: Callable, load_event: Any) -> None:
    """Propagate starts a background job and returns at once (the study stays visible and usable); a timer
    polls its per-slice progress and shows the result when it lands (a ``background`` refresh: what the
    user is typing stays). A page (re)loaded while one runs starts polling too: a reload mid-propagation left
    the page without its progress and without its result. Review buttons call ``controller.review``.
    ``fill``: the "Fill between corrected slices" choice, read when Propagate is pressed."""
    import gradio as gr

    timer = gr.Timer(1.0, active=False)

    def propagate_with(c: AppContext, s: str, how: str | None) -> ViewModel:
        return controller.propagate(c, s, fill=how)

    def on_propagate(s, plane, how):
        return guarded(on_shown(propagate_with), s, plane, how) + [gr.Timer(active=True)]

    def on_tick(s):
        job = controller.propagation_job(ctx, s)
        # read before the line is made: read after, a walk that landed in between (its status waits for the session's
        # lock, which the landing holds) stopped the polling on its last progress line, "Propagating: 12/12 slices",
        # and the result never showed (seen after a reload mid-walk)
        running = bool(job and job.running)
        shown = background(lambda: guarded(controller.propagation_status, s))
        return shown + [gr.Timer(active=running)]

    def on_load(s):
        try:
            job = controller.propagation_job(ctx, s) if s else None
        except (SessionError, *USER_ERRORS):
            job = None
        return gr.Timer(active=bool(job and job.running))

    button.click(on_propagate, [sid, shown, fill], outputs + [timer])
    load_event.then(on_load, [sid], [timer], show_progress="hidden")
    timer.tick(on_tick, [sid], outputs + [timer], show_progress="hidden")
    for action, btn in review_btns.items():
        btn.click(lambda s, a=action: guarded(controller.review, s, a), [sid], outputs, show_progress="hidden",
                  **review_event(action))


def _same_value(new: Any, old: Any) -> bool:
    """Whether a field's new value is the one the page was given (numbers as the boxes round them)."""
    if isinstance(new, dict) or new is None or old is None:  # an update or a skip: not a plain value
        return False
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        return round(float(new), 2) == round(float(old), 2)
    return new == old


def _no_download():
    """A newly opened study hides the previous study's export."""
    import gradio as gr

    return gr.update(value=None, visible=False)


def _colour_changed(ctx: AppContext, guarded, sid, shown, name, colour, n_outputs: int) -> list[Any]:
    """Save a picked or typed colour unless it is the active label's colour already (the page echoes it), or the
    page showed another label (``shown``, the Active label box) than the server's active one when it fired.

    Why the label: the picker's change fires on every refresh of the page, and its handler runs later; a refresh
    that showed label 1 just before Add label made label 2 active sent label 1's name and colour as an edit of
    label 2 ("label name: 'label 1' is already label 1's" on the status line, unasked; with another name, label 2
    renamed and recoloured)."""
    import gradio as gr

    try:
        session = ctx.store.get(sid)
        with session.lock:
            picked = controller.parse_colour(colour)
            if (session.volume is None or str(shown) != str(session.active)
                    or picked == session.label(session.active).colour
                    # another label's own name and colour: that label's form echoed, half replaced by a page (the
                    # Active label box) that came after it; as an edit it renamed the active label to a name taken
                    # ("label name: 'label 1' is already label 1's", the locked-label e2e test in CI)
                    or any(d.value != session.active and d.name == name and d.colour == picked
                           for d in session.label_defs)):
                return [gr.skip()] * n_outputs
    except (SessionError, *USER_ERRORS):
        pass
    return guarded(controller.edit_label, sid, name, colour)


def _mask_action(ctx: AppContext, sid: str, editor_value: Any, mask_file: str | None, use_model: bool) -> ViewModel:
    """The brush canvas's painted pixels, or an uploaded mask image, as the mask of the current plane."""
    if mask_file:  # PNG only (a JPEG is refused; PIL would run PostScript); alpha respected; size checked first
        return controller.mask_file(ctx, sid, Path(mask_file), use_model)
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
    dicomweb: str | None = None,
    auth: Callable[[str, str], bool] | None = None,
    backend: str | None = None,
    batch_window_ms: float = 0.0,
    open_sample: str | None = None,
):
    """Start the server (loopback by default). ``backend``: as ``--backend`` (None: $MEDSEG_BACKEND or the rule);
    ``batch_window_ms``: as ``--batch-window-ms``; ``open_sample``: as ``--open-sample``.

    Session folders are never served (Gradio's ``blocked_paths``); Gradio serves its own cache
    (the upload widget's files as downloads unless an image) and ``MEDSEG_ALLOWED_ROOTS``; exports
    only to their session's cookie (``app.web_session``); the viewer's routes act on the cookie's
    session only (``app.viewer.api``).
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    from app.settings import get_settings

    limits = get_settings()
    state = Path(state_dir) if state_dir else default_state_dir()
    claim_root(state)  # one server per state folder, checked before the model loads
    sessions = state / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    remove_save_temporaries(sessions)  # what a kill -9 mid-save left (ours alone now: claim_root)
    load_model(model, device, backend)  # load (export once) before serving; fail early on missing weights
    configure_serving(device, backend_for(model, device, backend).backend)  # torch decodes only: 1 CPU thread
    config = UIConfig(
        sessions_root=sessions, model=model, device=device, backend=backend, batch_window_ms=batch_window_ms,
        prefetch_radius=prefetch_radius,
        session_ttl_s=limits.session_ttl_s, dicomweb=dicomweb, open_sample=open_sample,
    )
    demo = build_app(config)
    print(f"medseg serve: {model}: {demo.medseg_ctx.runner.serving(model)}", file=sys.stderr)
    demo.queue(default_concurrency_limit=4)
    from app import memory_report

    memory_report.start(demo.medseg_ctx.store)  # only with MEDSEG_MEMORY_LOG_S (the soak)
    from starlette.middleware import Middleware

    from app.body_limit import BodyLimit, gradio_body_bytes, serve_limit_for, serve_refusal

    tokens = web_session.TokenTable(sessions / web_session.TOKENS_DIR, limits.session_ttl_s,
                                    demo.medseg_ctx.store.exists)
    cookie = Middleware(web_session.SessionCookieMiddleware, session_exists=demo.medseg_ctx.store.exists,
                        shelf=demo.medseg_shelf, tokens=tokens, max_age_s=limits.session_ttl_s,
                        loopback_names_only=auth is None, renewed_prefix=VIEWER_API_URL + "/",
                        body_timeout_s=limits.body_timeout_s,
                        hash_body_bytes=gradio_body_bytes(limits.max_upload_files))
    # inside the cookie middleware: a request it refuses (no session, a rebound name) is never read at all
    bodies = Middleware(BodyLimit, limit_for=serve_limit_for(limits.max_upload_bytes, limits.max_upload_files),
                        refuse=serve_refusal)
    header_deadline.install(limits.header_timeout_s)  # slow request lines and headers get 408 (app/header_deadline.py)
    with patient_launch_check():  # Gradio's own check gives up on a busy machine (app/startup_check.py)
        demo.launch(
            server_name=host,
            server_port=port,
            allowed_paths=[str(r) for r in limits.allowed_roots],
            blocked_paths=[str(sessions.resolve())],
            max_file_size=limits.max_upload_bytes,
            footer_links=[],
            run_history=False,  # never keep patients' images in the browser's run history
            head=head_html(),
            theme=gr.themes.Default(spacing_size="sm", text_size="sm", radius_size="sm"),
            css=PAGE_CSS,
            app_kwargs={"routes": demo.viewer_routes, "middleware": [cookie, bodies, Middleware(LeaveGuard)]},
            prevent_thread_lock=prevent_thread_lock,
            auth=auth,  # a login page when bound beyond loopback (app.access)
            quiet=True,
            enable_monitoring=False,  # Gradio's /monitoring logged its dashboard's key for any caller; unused here
        )
    return demo
