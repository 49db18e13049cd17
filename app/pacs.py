"""The UI's PACS panel (``medseg serve --dicomweb BASE_URL``): browse a PACS's series (QIDO-RS), open
one (WADO-RS, into the session's folder, limits checked first), and "Export to PACS" (STOW-RS of the
DICOM-SEG the Export button would write). Layout and wiring are here so ``app/ui.py`` only calls
:func:`layout` and :func:`wire`; the actions use ``app.controller`` like every other panel.
"""

from __future__ import annotations

import time
from typing import Any

from app import controller
from app.controller import AppContext, ViewModel
from app.page_wiring import PageWiring
from app.session import SessionError
from data.readers import UnevenStudyError


def series_choices(base: str) -> list[tuple[str, str]]:
    """(label, series URL) for every image series on the PACS, grouped by study."""
    from app.settings import get_settings
    from data.dicomweb import SeriesURL, list_all_series, search_studies

    timeout = get_settings().dicomweb_timeout_s
    studies = {s.study_uid: s for s in search_studies(base, timeout=timeout)}
    out = []
    for s in list_all_series(base, timeout=timeout):
        st = studies.get(s.study_uid)
        who = f"{st.patient_name or st.patient_id or 'anonymous'}, {st.date or 'no date'}" if st else "study"
        label = f"{who} · {s.modality} #{s.number or '?'} {s.description or ''} ({s.instances or '?'} images)"
        out.append((label.strip(), str(SeriesURL(base, s.study_uid, s.series_uid))))
    return out


@controller._with_session
def open_series(ctx: AppContext, session, url: str, progress: controller.Progress | None = None) -> ViewModel:
    """Retrieve a series into the session's folder (so it survives a reload) and open it."""
    from app.settings import get_settings
    from data.dicomweb import fetch_series, parse_series_url

    target = parse_series_url(url or "")
    if target is None:
        raise SessionError("choose a series from the PACS list first")
    limits = get_settings()

    def step(done: int, total: int) -> None:
        if progress:
            progress(0.05 + 0.6 * done / max(total, 1), f"retrieving image {done} of {total}")

    folder = fetch_series(target, session.directory / "pacs" / time.strftime("%Y%m%d-%H%M%S"),
                          max_voxels=limits.max_voxels, max_bytes=limits.max_upload_bytes,
                          max_instances=limits.max_upload_files, timeout=limits.dicomweb_timeout_s, progress=step)
    name = f"PACS series {target.series_uid[-12:]}"
    try:
        return controller._open(ctx, session, folder, name, progress)
    except UnevenStudyError as e:  # offered at the mean spacing under Upload, as an upload is; it said "pass
        return controller.offer_uneven(session, (folder, folder, name), e)  # --allow-uneven" (session 24's pass)


def export_to_pacs(ctx: AppContext, sid: str, base: str) -> ViewModel:
    """Write the session's labels as a DICOM-SEG and store it on the PACS (STOW-RS), with its source's patient
    and study identity: the PACS files it with its images by them (a de-identified copy became a second,
    nameless patient in Orthanc; ``data.deidentify.deidentifier``, ``to_pacs``). The download keeps its
    *Keep patient identifiers* box."""
    from app.settings import get_settings
    from data.dicomweb import store

    path, vm = controller.export(ctx, sid, "dicom-seg", keep_identifiers=True)
    (uid,) = store(base, [path], timeout=get_settings().dicomweb_timeout_s)
    vm.status = f"Stored the DICOM-SEG on the PACS with its study's patient (SOP Instance UID {uid})."
    return vm


def layout(base: str | None) -> dict[str, Any] | None:
    """The panel's controls (inside the caller's layout context); None when no PACS is configured."""
    if not base:
        return None
    import gradio as gr

    with gr.Accordion("PACS", open=True, elem_id="pacs"):
        series = gr.Dropdown([], label="Series on the PACS", elem_id="pacs-series")
        with gr.Row():
            refresh = gr.Button("List", size="sm", min_width=60, elem_id="pacs-list")
            open_btn = gr.Button("Open from PACS", size="sm", min_width=60, elem_id="pacs-open")
        export = gr.Button("Export to PACS", size="sm", elem_id="pacs-export")
    return {"base": base, "series": series, "refresh": refresh, "open": open_btn, "export": export}


def wire(panel: dict[str, Any] | None, page: PageWiring) -> Any:
    """Connect the panel's buttons; errors come back through ``guarded`` as one line, as elsewhere. Returns the Open
    event (None without a panel): the Upload picker follows it, for a series offered at its mean slice spacing."""
    if panel is None:
        return None
    import gradio as gr

    from app.errors import USER_ERRORS
    from app.web_session import rotate_first_js

    base = panel["base"]

    def on_list():
        try:
            choices = series_choices(base)
        except USER_ERRORS as e:
            gr.Warning(str(e))
            return gr.update(), f"⚠ {e}"
        return gr.update(choices=choices, value=choices[0][1] if choices else None), \
            f"{len(choices)} series on the PACS." if choices else "The PACS holds no image series."

    def on_open(s, url, progress=gr.Progress()):
        return page.guarded(open_series, s, url, lambda f, d: progress(f, desc=d))

    def on_export(s):
        return page.guarded(export_to_pacs, s, base)

    panel["refresh"].click(on_list, [], [panel["series"], page.status])
    # a new session token first: a cookie planted after the page opened must not receive the retrieved study
    opened = panel["open"].click(on_open, [page.sid, panel["series"]], page.outputs, js=rotate_first_js(2))
    opened.then(page.warm, [page.sid], [page.status], show_progress="minimal", **page.gpu)
    panel["export"].click(on_export, [page.sid], page.outputs)
    return opened
