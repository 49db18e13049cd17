"""The UI's series picker: an upload (a zip or files of a study export) that holds several image series opens none of
them until the user picks one here; a series whose slices are unevenly spaced (or missing) opens at the mean spacing
only when the user picks that here. ``app.controller.open_upload`` keeps such an upload and lists the choices
(``PENDING_SERIES``); this module shows them under Upload and opens the one picked. The CLI's ``--series UID`` and
``--allow-uneven`` do the same. Layout and wiring live here so ``app/ui.py`` only calls :func:`layout` and :func:`wire`.
"""

from __future__ import annotations

from typing import Any, Callable

from app import controller
from app.controller import AppContext
from app.page_wiring import PageWiring
from app.session import SessionError


def pending_choices(ctx: AppContext, sid: str | None) -> list[tuple[str, str]]:
    """The series of the upload awaiting a pick in this session; [] when none."""
    if not sid:
        return []
    try:
        session = ctx.store.get(sid)
    except SessionError:
        return []
    with session.lock:
        pending = session.runtime.get(controller.PENDING_SERIES)
        return list(pending[3]) if pending else []


def label_of(choices: list[tuple[str, str]]) -> str:
    """The picker's title: a choice of series, or of opening unevenly spaced slices at their mean spacing."""
    if choices and all(value.startswith(controller.UNEVEN) for _, value in choices):
        return "The slices are unevenly spaced (or some are missing): open anyway?"
    return SERIES_LABEL


SERIES_LABEL = "Series in this upload (pick one to open)"
# The pick leaves once the viewer's queue is empty (viewer/src/page_buttons.ts, pickAfterQueue): sent at once, it
# opened the series before the clicks still queued, which were then refused as made on a study no longer open.
PICK_AFTER_QUEUE_JS = ("async (...args) => { await window.medsegViewer?.pickAfterQueue?.('Series'); "
                       "return args.slice(0, 2) }")


def layout():
    """The picker (inside the caller's layout context), hidden until an upload holds several series."""
    import gradio as gr

    return gr.Dropdown([], value=None, label=SERIES_LABEL, visible=False,
                       elem_id="upload-series")


def wire(picker, page: PageWiring, after_upload: list, extra_outputs: list, extra_values: Callable[[], list]) -> None:
    """Show the picker after an upload that holds several series or uneven slices (``after_upload``: the upload's
    event, and the PACS panel's Open), hide it once one is open; a pick opens that series like an upload, through
    ``guarded`` (one line on error)."""
    import gradio as gr

    ctx, sid, outputs = page.ctx, page.sid, page.outputs

    def shown(s) -> Any:
        choices = pending_choices(ctx, s)
        return gr.update(choices=choices, value=None, visible=bool(choices), label=label_of(choices))

    def on_pick(s, uid, progress=gr.Progress()):
        if not uid or not pending_choices(ctx, s):  # Gradio's dropdown may send one pick twice: the second is no news
            return [gr.skip()] * (len(outputs) + len(extra_outputs))
        return page.guarded(controller.open_pending_series, s, uid, lambda f, d: progress(f, desc=d)) + extra_values()

    for event in after_upload:
        event.then(shown, [sid], [picker])
    picker.input(on_pick, [sid, picker], outputs + extra_outputs, js=PICK_AFTER_QUEUE_JS).then(shown, [sid], [picker]).then(
        page.warm, [sid], [page.status], show_progress="minimal", **page.gpu)
