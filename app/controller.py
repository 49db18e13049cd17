"""The UI's actions, free of Gradio: each takes a session id and returns a :class:`ViewModel`.

``app.ui`` only lays out components and maps a ViewModel onto them, so everything here is
testable with plain calls. Every action that changes the label map saves the session
atomically before it returns (``SessionStore.save``).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from app import interaction, model_catalog
from app.interaction import ModelRunner, Prefetcher
from app.messages import escape_markdown, news_stamp
from app.render import (
    VIEWS,
    Markers,
    Plane,
    acquisition_view,
    compose,
    display_size,
    display_to_plane,
    display_window,
    to_rgb,
)
from app.reading import read_untrusted
from app.session import PALETTE, UNRESTORED, Edit, Session, SessionError, SessionStore
from app.uploads import import_upload
from data.readers import SeveralSeriesError, StudyWarning, UnevenStudyError, read_study
from data.study_errors import UNEVEN_NOTE, without_cli_advice
from data.untrusted import one_line
from data.volume import THICKNESS_UNKNOWN, Volume
from data.writers import write_label_nifti, write_png_labels
from models.prompts import PromptError
from models.checkpoint import CheckpointError
from models.registry import PROJECT_ROOT

Progress = Callable[[float, str], None]
MODES = ("point +", "point −", "box")
GREETING = "greeting"  # session.runtime key: the news (opened, restored) that the next warm() prefixes to "Ready"


def sample_studies() -> dict[str, Path]:
    """The bundled samples the study picker offers (name -> path)."""
    root = PROJECT_ROOT / "samples"
    return {
        "CT head (DICOM series, 12 slices)": root / "ct_head_0051_series",
        "MR T1 brain, Colin27 (NIfTI, 32 slices)": root / "colin27" / "mr_t1_colin27_slabA_image.nii.gz",
    }


def model_choices() -> list[tuple[str, str]]:
    """(label, name) for every registered variant and every adapter in the weights folder."""
    return model_catalog.choices()


def dicom_seg_available() -> bool:
    """DICOM-SEG export comes from ``data.export`` (the standards work); absent, only NIfTI is offered."""
    return importlib.util.find_spec("data.export") is not None


@dataclass
class AppContext:
    """Everything the actions share: the session store, the model door and the prefetcher."""

    store: SessionStore
    runner: ModelRunner
    prefetcher: Prefetcher


@dataclass
class ViewModel:
    """What the page shows after an action."""

    session_id: str
    status: str | None = ""  # None: leave the page's message as it is
    status_at: int | None = None  # when the status's news happened (messages.news_stamp); None: now
    views: list[str] = field(default_factory=lambda: ["axial"])
    view: str = "axial"
    slice_max: int = 0
    slice_index: int = 0
    labels: list[tuple[str, int]] = field(default_factory=list)
    active: int = 1
    colour: str = "#e6194b"
    label_name: str = ""
    measurements: list[list] = field(default_factory=list)
    alternatives: list[str] = field(default_factory=list)
    chosen: str | None = None
    facts: str = "No study open."
    model: str = "litemedsam"
    window: str = "default"
    level: float = 40.0
    width: float = 400.0
    opacity: float = 0.45
    mode: str = MODES[0]
    undo_depth: int = 0
    redo_depth: int = 0
    exported: int | None = None  # the label revision an export wrote: the page's Download holds that map
    renderer: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    _image: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def image(self) -> np.ndarray | None:
        """The plane as RGB with labels and prompt marks, drawn on first use. The browser's viewer draws its own, so the
        page never asks: drawing it on every sync cost ~18 ms under the session lock (load 10) for nothing. Read it
        while the session is quiet (tests, scripts): it draws the session as it is then."""
        if self._image is None and self.renderer is not None:
            self._image = self.renderer()
        return self._image


# --- session lifecycle ------------------------------------------------------------------------
def start(
    ctx: AppContext, stored_id: str | None, session_hash: str | None = None, open_sample_name: str | None = None
) -> ViewModel:
    """Page load: restore the browser's session if the server has it, else start a new one.

    ``open_sample_name`` (``medseg serve --open-sample``, what ``make run`` does): a session without a
    study opens that bundled sample, so the first page shows an image; a restored study is never replaced."""
    session, restored = ctx.store.open(stored_id)
    if session_hash:
        ctx.store.bind(session_hash, session.id)
    if not restored:
        ctx.store.cleanup()
    if restored and session.volume is not None:
        return _greet(session, "Session restored.")
    lost = session.runtime.pop(UNRESTORED, None)
    note = (f"⚠ Your saved session could not be restored ({lost}); its files are kept on the server, not deleted. "
            if lost else "")
    if open_sample_name:
        vm = open_sample(ctx, session.id, open_sample_name)
        if note and GREETING in session.runtime:  # warm()'s "Ready" repeats the note
            news, at = session.runtime[GREETING]
            session.runtime[GREETING] = (note + news, at)
        vm.status = note + (vm.status or "")
        return vm
    return view_model(session, note + "Open a sample or upload a study.")


def _session(ctx: AppContext, sid: str) -> Session:
    return ctx.store.get(sid)


def _greet(session: Session, news: str) -> ViewModel:
    """Show ``news`` (a study opened, a session restored), which :func:`warm` repeats with "Ready"
    once the slice is encoded: that message is as old as the news, so a click made meanwhile is not hidden by it."""
    at = news_stamp()
    session.runtime[GREETING] = (news, at)
    vm = view_model(session, news)
    vm.status_at = at
    return vm


def _with_session(fn):
    """Run an action under the session's lock (two tabs of one browser share a session). Its message takes its place
    in the news order there, as the viewer's answers do: stamped later, when the page was built, a Clear label's
    message looked newer than the undo the viewer sent right after it, and replaced it."""

    def wrapper(ctx: AppContext, sid: str, *args, **kwargs) -> ViewModel:
        session = _session(ctx, sid)
        with session.lock:
            vm = fn(ctx, session, *args, **kwargs)
            if vm.status is not None and vm.status_at is None:
                vm.status_at = news_stamp()
            return vm

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_with_session
def refresh(ctx: AppContext, session: Session, status: str | None) -> ViewModel:
    """The page as the server holds it (after an error, controls snap back to the truth)."""
    return view_model(session, status)


# --- opening studies --------------------------------------------------------------------------
@_with_session
def open_sample(ctx: AppContext, session: Session, name: str, progress: Progress | None = None) -> ViewModel:
    samples = sample_studies()
    if name not in samples:
        raise SessionError(f"unknown sample {name!r}; choose one of: {', '.join(samples)}")
    return _open(ctx, session, samples[name], name, progress, trusted=True)


@_with_session
def open_upload(ctx: AppContext, session: Session, files: list[str], progress: Progress | None = None) -> ViewModel:
    """Copy an upload into a folder of its own (unique per request), check the quotas and open it.

    A refused upload, or one that does not open, is deleted at once; once it opens, the folders of
    earlier uploads (no longer reachable: the session holds one study) are deleted.
    """
    from app.settings import get_settings

    settings = get_settings()
    if progress:
        progress(0.05, "copying the upload")
    uploads = session.directory / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    kept = [p for p in uploads.iterdir() if p.is_dir()]
    if len(kept) + 1 > settings.max_studies:
        raise SessionError(f"this session holds {len(kept)} studies; at most {settings.max_studies} "
                           "(MEDSEG_MAX_STUDIES): reload the page to start again")
    room = min(settings.session_disk_bytes - ctx.store.disk_bytes(session.id),
               settings.total_disk_bytes - ctx.store.disk_bytes())
    upload_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=uploads))
    name = Path(files[0]).name if len(files) == 1 else f"{len(files)} files"
    try:
        path = import_upload(files, upload_dir, settings=settings, room_bytes=room)
        try:
            view = _open(ctx, session, path, name, progress)
        except SeveralSeriesError as e:  # the user picks one (app/series_picker.py); the open study stays as it is
            return _offer(session, (upload_dir, path, name, series_choices(e.series)), kept, several_status(name, e))
        except UnevenStudyError as e:  # opened only if the user asks for the mean spacing (the CLI's --allow-uneven)
            return offer_uneven(session, (upload_dir, path, name), e, kept)
    except BaseException:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise
    session.runtime.pop(PENDING_SERIES, None)
    _drop_uploads(session, kept)
    return view


PENDING_SERIES = "pending_series"  # session.runtime key: (upload folder, path, name, [(label, value)]) awaiting a pick
UNEVEN = "uneven:"  # a pick's value: open at the mean slice spacing (the series' UID follows, or nothing)


def _offer(session: Session, pending: tuple, kept: list[Path], status: str) -> ViewModel:
    """Keep an upload that opens only after the user's choice under Upload; the open study stays as it is."""
    session.runtime[PENDING_SERIES] = pending
    _drop_uploads(session, kept)
    return view_model(session, status)


def offer_uneven(session: Session, where: tuple[Path, Path, str], error: BaseException,
                 kept: list[Path] | None = None) -> ViewModel:
    """Offer a study refused for its uneven slices at the mean spacing under Upload (``where``: its folder, path and
    name), the reader's refusal in the UI's words; an upload and a PACS series alike."""
    return _offer(session, (*where, [uneven_choice(None)]), kept or [], uneven_status(error, where[1]))


def uneven_choice(uid: str | None) -> tuple[str, str]:
    return ("Open at the mean slice spacing (slice positions approximate)", UNEVEN + (uid or ""))


def uneven_status(error: BaseException, path: Path) -> str:
    """The reader's refusal as a browser user can act on it (the CLI's flag is named in the reader's message)."""
    text = _without_folder(str(error), path)  # "...; add the missing file(s), ..., or pass --allow-uneven"
    return f"Not opened: {text.replace('pass --allow-uneven', 'open it at the mean slice spacing under Upload')}."


def several_status(name: str, error: SeveralSeriesError) -> str:
    """What an upload of several series says (the list offered is cut at ``SERIES_OFFERED``)."""
    from data.readers import SERIES_OFFERED

    if len(error.series) < SERIES_OFFERED:
        return f"{name} holds {len(error.series)} series: pick the one to open in the list under Upload."
    return (f"{name} holds more than {SERIES_OFFERED - 1} series: the first {SERIES_OFFERED} are in the list under "
            "Upload; pick one, or upload the one you want alone.")


def series_choices(series: list[tuple[str, str, str, int]]) -> list[tuple[str, str]]:
    """The picker's (label, SeriesInstanceUID) of the series the isolated reader listed in its refusal
    (``data.readers.SeveralSeriesError``): the server never parses an upload's headers itself."""
    return [(one_line(f"{modality} {description or 'series'} ({n} images) · …{uid[-8:]}"), uid)
            for uid, modality, description, n in series]


@_with_session
def open_pending_series(ctx: AppContext, session: Session, uid: str, progress: Progress | None = None) -> ViewModel:
    """Open what the user picked under Upload (a series of an upload that holds several, or a study's uneven slice
    spacing at its mean: ``UNEVEN``); the other uploads' folders go."""
    pending = session.runtime.get(PENDING_SERIES)
    if pending is None or uid not in {u for _, u in pending[3]}:
        raise SessionError("that series is no longer offered: upload the study again")
    upload_dir, path, name, _ = pending
    uneven = uid.startswith(UNEVEN)
    series = (uid.removeprefix(UNEVEN) if uneven else uid) or None
    try:
        view = _open(ctx, session, path, name if series is None else f"{name}, series …{series[-8:]}", progress,
                     series_uid=series, allow_uneven=uneven)
    except UnevenStudyError as e:  # the series picked is unevenly spaced: offered again, at the mean spacing
        session.runtime[PENDING_SERIES] = (upload_dir, path, name, [uneven_choice(series)])
        return view_model(session, uneven_status(e, path))
    session.runtime.pop(PENDING_SERIES, None)
    uploads = session.directory / "uploads"
    others = [p for p in uploads.iterdir() if p.is_dir() and p != upload_dir] if uploads.is_dir() else []  # PACS only
    _drop_uploads(session, others)
    return view


def _drop_uploads(session: Session, folders: list[Path]) -> None:
    """Delete earlier uploads' folders, except the open study's and an upload whose series the user is to pick."""
    pending = session.runtime.get(PENDING_SERIES)
    for old in folders:
        if Path(str(session.study_path)).is_relative_to(old) or (pending and pending[0] == old):
            continue
        shutil.rmtree(old, ignore_errors=True)


def _open(ctx: AppContext, session: Session, path: Path, name: str, progress: Progress | None,
          *, trusted: bool = False, series_uid: str | None = None, allow_uneven: bool = False) -> ViewModel:
    """Read and show a study. Anything but our own bundled samples (``trusted``) is read in a
    child process with memory and time limits (``data.isolated_read``): a file that crashes a
    native decoder is one error for this user, never a dead server."""
    if progress:  # the name is the user's: one line, control and line-separator characters escaped
        progress(0.2, f"reading {one_line(name)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StudyWarning)
        volume = read_study(path, series_uid=series_uid, allow_uneven=allow_uneven) if trusted else \
            read_untrusted(path, session.directory, series_uid=series_uid, allow_uneven=allow_uneven)
    session.start_study(volume, str(path), name, series_uid, allow_uneven=allow_uneven)
    ctx.store.save(session)
    if progress:
        progress(0.9, "rendering")
    notes = "".join(f" Note: {_in_ui_words(_without_folder(str(w.message), path))}." for w in caught
                    if issubclass(w.category, StudyWarning))
    return _greet(session, f"Opened {name}.{notes} Click on the structure, or drag a box.")


UNEVEN_NOTE_IN_UI = "you picked the mean slice spacing under Upload: "


def _in_ui_words(note: str) -> str:
    """A reader's note as the UI's user knows what they did: without the CLI's flags, the choice of the mean slice
    spacing named as the pick under Upload it was. Why: it began `--allow-uneven: 1 uneven step(s) ...`, a flag a
    browser user never typed (session 25's leftover)."""
    return without_cli_advice(note).replace(UNEVEN_NOTE, UNEVEN_NOTE_IN_UI)


def _without_folder(note: str, path: Path) -> str:
    """A reader's note less its leading server path (the user knows what they opened; paths are never shown)."""
    return note.split(": ", 1)[1] if note.startswith(str(path)) and ": " in note else note


def warm(ctx: AppContext, sid: str) -> ViewModel:
    """Encode the shown plane now (so the first click is fast) and queue its neighbours.

    The session's lock is held only to read what is shown, not while encoding: the viewer's
    requests (the study, the labels) must not wait for the encoder. "Ready" is news only after
    a study opened or the session was restored (a model picked is the viewer's action, which shows
    its own "Ready"): the page runs this after every upload too, and a failed upload's message must stay, not be replaced by "Ready". The
    news itself leads the "Ready" message, so a page that polls the status and missed the first
    message (it lasts as long as one encode) still reads it.
    """
    session = _session(ctx, sid)
    with session.lock:
        if session.volume is None:
            return view_model(session, None)  # keep the page's message
        view, index = session.view.view, session.view.index[session.view.view]
    with ctx.runner.turn():
        ctx.runner.embedding(session, view, index)
    with session.lock:
        ctx.prefetcher.request(session, view, index)
        _encode_study_once(ctx, session)
        greeting = session.runtime.pop(GREETING, None)
        if greeting is None:
            return view_model(session, None)  # keep the page's message
        news, at = greeting
        backend = ctx.runner.backend_choice(session.model).status()
        vm = view_model(session, f"{news} Ready: the slice is encoded ({backend}).".strip())
        vm.status_at = at  # the news is the open's (or the model's): older than a click made while it encoded
        return vm


def _encode_study_once(ctx: AppContext, session: Session) -> None:
    """Start encoding the study's stored slices in the background (for propagation), once per study and model."""
    from app.propagation_job import encode_study

    volume = session.volume
    if volume is None or volume.is_2d or not ctx.prefetcher.radius:
        return
    key = (id(volume), session.model)
    if session.runtime.get("study_encoded") != key:
        session.runtime["study_encoded"] = key
        encode_study(ctx.runner, session)


# --- looking ----------------------------------------------------------------------------------
@_with_session
def set_view(ctx: AppContext, session: Session, view: str) -> ViewModel:
    volume = session.require_study()
    Plane.of(volume, view)
    session.view.view = view
    session.prompt = None
    ctx.store.save(session)
    return view_model(session, "")


def _finite(value, what: str) -> float:
    """``value`` as a finite float, else ValueError naming ``what`` (a Gradio API client may send anything)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {str(value)[:40]!r}")
    return number


@_with_session
def set_slice(ctx: AppContext, session: Session, index: int) -> ViewModel:
    volume = session.require_study()
    n = Plane.of(volume, session.view.view).count(session.labels.shape)
    session.view.index[session.view.view] = int(np.clip(int(_finite(index, "the slice")), 0, n - 1))
    ctx.store.save(session)
    return view_model(session, "")


@_with_session
def step(ctx: AppContext, session: Session, delta: int) -> ViewModel:
    volume = session.require_study()
    n = Plane.of(volume, session.view.view).count(session.labels.shape)
    v = session.view.view
    session.view.index[v] = int(np.clip(session.view.index[v] + int(_finite(delta, "the step")), 0, n - 1))
    ctx.store.save(session)
    return view_model(session, "")


@_with_session
def set_display(
    ctx: AppContext, session: Session, window: str, level: float, width: float, opacity: float, mode: str
) -> ViewModel:
    """Window, free level/width, overlay opacity and click mode (display only; the model is unaffected).

    Checked before anything is kept: a NaN level, an infinite width, a NaN opacity or a window name not in the
    list (a scripted client or the number box) were saved with the session, and from then on its viewer's
    /state answered "Out of range float values are not JSON compliant" (or "unknown window") on every poll."""
    from app.render import window_choices

    if window not in window_choices():
        raise ValueError(f"unknown window {str(window)[:40]!r}; expected one of {', '.join(window_choices())}")
    for name, value in (("level", level), ("width", width), ("opacity", opacity)):
        if value is not None:
            _finite(value, f"window {name}" if name != "opacity" else name)
    status = ""
    if session.volume is not None and session.volume.is_rgb:  # its boxes are empty: Enter there sends None
        status = _colour_window_status(session, window)
        window, level, width = "default", None, None
    if window == "custom" and width is None:  # the Width box emptied, then Enter
        raise ValueError("window width must be positive: the Width box is empty")
    if window == "custom" and float(width) <= 0:
        raise ValueError(f"window width must be positive, got {float(width):g}")
    if mode not in MODES:
        raise ValueError(f"unknown click mode {mode!r}; expected one of {', '.join(MODES)}")
    vs = session.view
    vs.window, vs.opacity, vs.mode = window, float(np.clip(opacity, 0.0, 1.0)), mode
    if level is not None:
        vs.level = float(level)
    if width is not None:
        vs.width = float(width)
    if session.prompt is not None and session.prompt.corner is not None and mode != "box":
        session.prompt = None
    ctx.store.save(session)
    return view_model(session, status)


def _colour_window_status(session: Session, window: str) -> str:
    """What a window chosen for a colour picture does: nothing (it is shown, and segmented, in its own colours). A
    preset or a Level/Width + Enter on an RGB photograph was taken without a word and changed nothing on the screen,
    with a CT's 40/400 in the boxes, so the user tried again or thought the viewer broken."""
    if window == "default":
        return ""
    return (f"Window: {session.study_name} is a colour picture, shown in its own colours; "
            "a window (preset or Level/Width) applies to grey images only.")


# --- prompting --------------------------------------------------------------------------------
@_with_session
def click(ctx: AppContext, session: Session, x_display: float, y_display: float) -> ViewModel:
    """A click on the shown image, in display pixels (x, y), acted on by the current mode."""
    volume = session.require_study()
    view, index = session.view.view, session.view.index[session.view.view]
    plane = Plane.of(volume, view)
    plane_hw = plane.extract(session.labels, index).shape
    x, y = display_to_plane((x_display, y_display), plane_hw, display_size(plane_hw, plane.spacing(volume)))
    mode = session.view.mode
    if mode == "box":
        edit = interaction.box_click(ctx.runner, session, x, y)
        if edit is None:
            return view_model(session, "Box: now click the opposite corner.")
    else:
        edit = interaction.click(ctx.runner, session, x, y, positive=mode == "point +")
    mark_anchor(session, edit)
    ctx.store.save(session)
    ctx.prefetcher.request(session, view, index)
    return view_model(session, _done(session, edit.description))


@_with_session
def mask(ctx: AppContext, session: Session, mask_display: np.ndarray, use_model: bool) -> ViewModel:
    """A mask drawn on (or uploaded at) display size or plane size -> prompt or paint."""
    return _apply_mask(ctx, session, mask_display, use_model)


@_with_session
def mask_file(ctx: AppContext, session: Session, path: Path, use_model: bool) -> ViewModel:
    """An uploaded mask image (PNG/JPEG) as the mask of the shown plane: its size is checked from its header before a
    pixel is decoded. Why: it is read in the server's process, and a 480 KB PNG of 13000 x 13000 black pixels was
    decoded whole (2.3 GB, 7 s of CPU) before its size was refused."""
    from data.pictures import open_image, read_mask_image, refuse_lossy_mask

    plane_hw, shown = _mask_sizes(session)
    with open_image(path, check_data=False) as im:  # the header only: the data is checked when it is read
        (w, h), image_format = im.size, im.format
    refuse_lossy_mask(path, image_format)  # before any decoding (a cut JPEG's grey rows were painted, in a thread)
    if not {(h, w), (w, h)} & {plane_hw, shown}:  # either way round: an EXIF Orientation turns it when decoded
        raise PromptError(_mask_size_error(f"the mask {path.name}", (h, w), plane_hw, shown))
    return _apply_mask(ctx, session, read_mask_image(path), use_model)


def _mask_sizes(session: Session) -> tuple[tuple[int, int], tuple[int, int]]:
    """(H, W) of the shown plane and of its display: the two sizes a mask may have."""
    volume = session.require_study()
    plane = Plane.of(volume, session.view.view)
    plane_hw = plane.extract(session.labels, session.view.index[session.view.view]).shape
    return plane_hw, display_size(plane_hw, plane.spacing(volume))


def _mask_size_error(what: str, hw: tuple[int, int], plane_hw: tuple[int, int], shown: tuple[int, int]) -> str:
    return (f"{what} is {hw[1]}x{hw[0]} pixels; expected the plane ({plane_hw[1]}x{plane_hw[0]}) "
            f"or the display ({shown[1]}x{shown[0]})")


def _apply_mask(ctx: AppContext, session: Session, mask_display: np.ndarray, use_model: bool) -> ViewModel:
    plane_hw, shown = _mask_sizes(session)
    m = np.asarray(mask_display).astype(bool)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.shape != plane_hw:
        import cv2

        if m.shape != shown:
            raise PromptError(_mask_size_error("the mask", m.shape, plane_hw, shown))
        m = cv2.resize(m.astype(np.uint8), (plane_hw[1], plane_hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    edit = interaction.mask_prompt(ctx.runner, session, m, use_model=use_model)
    mark_anchor(session, edit)
    ctx.store.save(session)
    return view_model(session, _done(session, edit.description))


@_with_session
def new_object(ctx: AppContext, session: Session) -> ViewModel:
    session.prompt = None
    return view_model(session, "Next click starts a new object.")


def history_line(session: Session, kind: str, edit: Edit | None) -> str:
    """The line for an undo or redo (``kind``), saying on which slice it acted: the edit taken back may be on a slice
    not shown (paged away since, or made in another tab of the session), where the screen shows no change, and
    "Undid positive click." alone made a hurried user press it again, undoing the edit before it too."""
    if edit is None:
        return f"Nothing to {kind}."
    volume = session.volume
    where = f"slice {edit.index}"
    on = (f" on {edit.view} {where}" if edit.view is not None and volume is not None and not volume.is_2d
          and where not in edit.description else "")
    return f"{'Undid' if kind == 'undo' else 'Redid'} {edit.description}{on}."


@_with_session
def undo(ctx: AppContext, session: Session) -> ViewModel:
    edit = session.undo()
    ctx.store.save(session)
    return view_model(session, history_line(session, "undo", edit))


@_with_session
def redo(ctx: AppContext, session: Session) -> ViewModel:
    edit = session.redo()
    ctx.store.save(session)
    return view_model(session, history_line(session, "redo", edit))


@_with_session
def clear(ctx: AppContext, session: Session) -> ViewModel:
    name = session.label(session.active).name
    edit = session.clear_label(session.active)
    ctx.store.save(session)
    return view_model(session, f"Cleared {name} (undo brings it back)." if edit else f"{name} was already empty.")


@_with_session
def propagate(ctx: AppContext, session: Session, progress: Progress | None = None, *, background: bool = True,
              fill: str | None = None) -> ViewModel:
    """Carry the active label from the shown slice through the study, keeping its anchors (``app.propagation_job``).

    ``fill``: the slices between two anchors ("shape", "model", "guided"; None: the backend's default).
    It runs in the background (the study stays usable; :func:`propagation_status` polls it) and lands
    as one undoable edit. Propagation walks the stored slices (k), so it runs from the acquisition view.
    """
    from app.propagation_job import job_of, start_propagation

    volume = session.require_study()
    acquired = acquisition_view(volume)
    if volume.is_2d:
        raise SessionError("propagation needs a 3D study; this one has a single slice")
    if session.view.view != acquired:
        raise SessionError(f"propagate from the {acquired} view (the stored slices): switch the view, then propagate")
    k = session.view.index[acquired]
    running = job_of(session)
    if running is not None and running.running:  # one walk at a time
        if running.study == session.study_key and running.label == session.active and running.start == int(k):
            # a hurried double press: its own walk's progress, not a refusal. The refusal (⚠) stayed on the viewer's
            # status line over that walk's progress and its result ("Propagated to ...") until the user acted again
            return view_model(session, f"{running.status()} (Propagate pressed again: this walk goes on.)")
        # another start: said with the walk's progress and result (as an error, it hid both the same way)
        running.not_started = (f"Your Propagate of {session.label(session.active).name} from slice {k} was not "
                               "started (one walk at a time): press it again once this one has landed.")
        return view_model(session, running.status(session.study_key))
    job = start_propagation(ctx.runner, session, k, on_done=ctx.store.save, background=background, fill=fill)
    session.runtime.pop("review", None)  # only once it started: a refused Propagate leaves the review as it was
    return view_model(session, job.status())


@_with_session
def propagation_status(ctx: AppContext, session: Session) -> ViewModel:
    """The running (or last) propagation's progress, per slice; the page polls this while one runs."""
    from app.propagation_job import job_of

    job = job_of(session)
    return view_model(session, job.status(session.study_key) if job is not None else None)


def propagation_job(ctx: AppContext, sid: str):
    """The session's running or last propagation job (None before the first), without the session lock."""
    from app.propagation_job import job_of

    return job_of(_session(ctx, sid))


def mark_anchor(session: Session, edit: Edit | None = None) -> None:
    """A prompt or correction on a stored slice makes it an anchor of the active label; ``edit`` (the correction)
    takes that anchor away on Undo and brings it back on Redo (``session.note_anchor``)."""
    from app.propagation_job import add_anchor, anchors_of
    from app.session import note_anchor

    volume = session.volume
    if volume is not None and not volume.is_2d and session.view.view == acquisition_view(volume):
        k = session.view.index[session.view.view]
        if edit is not None and k not in anchors_of(session, session.active):
            note_anchor(edit, session.active, k)
        add_anchor(session, session.active, k)


# --- review of a propagation --------------------------------------------------------------------
@_with_session
def review(ctx: AppContext, session: Session, action: str) -> ViewModel:
    """start | next | prev | accept | cut (``app.review``); 'fix' is any correction on the shown slice."""
    from app import review as rv

    if action == "start":
        r = rv.start_review(session)
    elif action in ("next", "prev"):
        r = rv.step_review(session, 1 if action == "next" else -1)
    elif action == "accept":
        r = rv.accept(session)
    elif action == "cut":
        rv.cut_here(session)
        ctx.store.save(session)
        r = rv.review_of(session)
    else:
        raise ValueError(f"unknown review action {action!r}")
    return view_model(session, f"Review: slice {r.current} ({r.position + 1}/{len(r.slices)}). Accept, fix it with "
                               "a click, box or brush (it becomes an anchor), or cut the range here.")


# --- one-shot (PerSAM) ----------------------------------------------------------------------------
@_with_session
def set_oneshot_reference(ctx: AppContext, session: Session, method: str, progress: Progress | None = None) -> ViewModel:
    """The active label on the shown slice becomes the one-shot reference (``app.oneshot``), saved in the session."""
    from app import oneshot

    ref = oneshot.set_reference(ctx.runner, session, method, progress)
    return view_model(session, f"{ref.describe()} Apply it to this slice, a range or the whole volume, "
                               "here or in another study.")


@_with_session
def apply_oneshot(
    ctx: AppContext, session: Session, scope: str, first: float | None = None, last: float | None = None,
    progress: Progress | None = None,
) -> ViewModel:
    """Segment the reference's structure on the target slices into the active label (one undoable edit)."""
    from app import oneshot

    applied = oneshot.apply_reference(ctx.runner, session, scope, first, last, progress)
    if applied.edit is not None:
        ctx.store.save(session)
    return view_model(session, oneshot.summary(applied, session.label(session.active).name))


def oneshot_reference(ctx: AppContext, sid: str) -> str:
    """The one-line description of the session's one-shot reference (markdown)."""
    from app import oneshot

    session = _session(ctx, sid)
    with session.lock:
        return oneshot.describe(session)


# --- labels -----------------------------------------------------------------------------------
@_with_session
def add_label(ctx: AppContext, session: Session, name: str) -> ViewModel:
    session.require_study()
    d = session.add_label(name)
    ctx.store.save(session)
    return view_model(session, f"Added {d.name}; it is now the active label.")


@_with_session
def select_label(ctx: AppContext, session: Session, value: int) -> ViewModel:
    value = int(_finite(value, "the label"))
    session.label(value)
    if session.active != int(value):
        session.active = int(value)
        session.prompt = None
    ctx.store.save(session)
    return view_model(session, "")


@_with_session
def edit_label(ctx: AppContext, session: Session, name: str, colour: str, value: int | str | None = None) -> ViewModel:
    """Rename or recolour label ``value`` (the label the page's form showed when the user typed; None: the active
    one), and say so: with no message, an error shown before (a name too long) stayed on the status line after the
    shortened name was taken, as if it had been refused too.

    Why ``value``: Name + Enter is Gradio's own event, outside the viewer's queue; typed right after a label pick in
    the legend, it reached the server after the pick and renamed the label picked, with the colour of the label the
    form showed (label 1 renamed "kidney" in label 2's green). A label that no longer exists is refused in one line."""
    target = session.active if value is None or value == "" else int(_finite(value, "the label"))
    if all(d.value != target for d in session.label_defs):
        raise SessionError(f"label {target} no longer exists; nothing renamed (pick a label and type its name again)")
    session.edit_label(target, name=name, colour=parse_colour(colour))
    ctx.store.save(session)
    d = session.label(target)
    return view_model(session, f"Label {d.value}: {d.name}, colour #{'%02x%02x%02x' % d.colour}.")


def parse_colour(text: str | None) -> tuple[int, int, int] | None:
    """'#rrggbb' or 'rgb(r, g, b)'/'rgba(...)' (what colour pickers send) -> (r, g, b); None if empty.

    Three channels of 0..255 or a ValueError: rgb(300, 0, 0) was kept as (300, 0, 0), which the viewer wrote as
    "#12c0000" and the DICOM-SEG export then refused; rgb(1e400, 0, 0) raised OverflowError ("internal error")."""
    if not text:
        return None
    t = text.strip().lower()
    rgb: tuple[int, ...] = ()
    try:
        if t.startswith("#") and len(t) in (7, 9):
            rgb = int(t[1:3], 16), int(t[3:5], 16), int(t[5:7], 16)
        elif t.startswith("rgb"):
            parts = t[t.index("(") + 1 : t.index(")")].split(",")
            if len(parts) in (3, 4):
                rgb = tuple(int(round(float(p))) for p in parts[:3])
    except (ValueError, OverflowError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour {text[:40]!r} is not '#rrggbb' or rgb(r, g, b) with r, g, b in 0..255")
    return rgb  # type: ignore[return-value]


# --- model ------------------------------------------------------------------------------------
def _load_model(ctx: AppContext, name: str) -> None:
    """Refuse a model that cannot prompt here (SessionError, one line), else load it (cached per process) before
    the session switches to it: a refused or broken model leaves the session, its model and its labels as they were."""
    model_catalog.check_selectable(name)
    try:
        ctx.runner.segmenter(name)
    except (CheckpointError, ValueError) as e:  # an adapter for other base weights, a broken file
        raise SessionError(f"cannot use {name}: {e}") from e


@_with_session
def pick_model(ctx: AppContext, session: Session, name: str) -> ViewModel:
    """A model picked in the Model box's list that the viewer did not take (a page without the viewer's script,
    so no queue to wait for): applied by the viewer's own action (:func:`switch_model`). It was dropped without a
    word, the box snapping back to the model in use."""
    return view_model(session, switch_model(ctx, session, name))


def switch_model(ctx: AppContext, session: Session, name: str) -> str:
    """The viewer's model choice (``app.viewer.actions``, kind ``model``; the caller holds the session's lock);
    returns its status line. It comes through the viewer's queue, after the prompts made before it: Gradio's own
    event ran at once, so clicks still queued refined nothing and began a second object on the new model.
    ``name`` is a model name or the Model box's label for one. The model in use picked again changes nothing (the
    object being refined stays); another model starts a new object, and the labels and undo history stay."""
    name = model_catalog.name_of(name)
    if name == session.model:
        return f"Model: {name} (already in use)."
    _load_model(ctx, name)
    session.model, session.prompt = name, None
    ctx.store.save(session)
    return f"Model: {name}. The next prompt starts a new object."


# --- export -----------------------------------------------------------------------------------
_EXPORT_SUFFIX = {"nifti": "_labels.nii.gz", "dicom-seg": "_seg.dcm", "png": "_labels.png"}
PICTURE_FORMATS = ("png", "jpeg")  # ``SourceRef.format`` of a picture (``data.pictures``)


def export_name(study_name: str, fmt: str, keep_identifiers: bool) -> str:
    """The download's file name, for both formats: ``deidentified_labels.nii.gz`` / ``deidentified_seg.dcm``
    unless identifiers are kept on purpose, then ``<study>_labels.nii.gz`` / ``<study>_seg.dcm``.

    Why: an upload's name is often the patient's (OsiriX and Horos export ``Name - Study``); a
    de-identified file named after the patient is not de-identified once mailed or uploaded.
    """
    if fmt not in _EXPORT_SUFFIX:
        raise ValueError(f"unknown export format {fmt!r}; expected nifti, dicom-seg or png")
    if not keep_identifiers:
        return f"deidentified{_EXPORT_SUFFIX[fmt]}"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(study_name).stem.split(".")[0])
    # at most 100 UTF-8 bytes: an upload's name may take the 255 a file name holds, and the name with its suffix (and
    # the writer's temporary name beside it) failed with "File name too long"
    while len(stem.encode()) > 100:
        stem = stem[:-1]
    return f"{stem or 'study'}{_EXPORT_SUFFIX[fmt]}"


def export(ctx: AppContext, sid: str, fmt: str, keep_identifiers: bool = False) -> tuple[Path, ViewModel]:
    """Write the label map into the session's exports/ folder; returns the file to download.

    A DICOM-SEG is de-identified (``data.deidentify``, DICOM PS3.15 Basic Profile with the Retain
    UIDs option) unless ``keep_identifiers`` asks for the source's patient and study identity; the
    file name of either format says nothing of the upload's unless so asked (``export_name``).
    """
    session = _session(ctx, sid)
    with session.lock:
        volume = session.require_study()
        out_dir = session.directory / "exports"
        name = export_name(session.study_name, fmt, keep_identifiers)
        if fmt == "nifti":
            path = write_label_nifti(session.labels, volume, out_dir / name)
        elif fmt == "png":  # a picture's labels as the picture stores its pixels, with its EXIF Orientation
            if volume.source is None or volume.source.format not in PICTURE_FORMATS or not volume.is_2d:
                raise SessionError("PNG export is for a picture (PNG or JPEG) study; this one is not: export NIfTI or "
                                   "DICOM-SEG")
            # grey, the pixels the label values (16-bit past 255), named by its medseg:labels chunk (session 27)
            path = write_png_labels(session.labels[0], out_dir / name,
                                    exif_orientation=volume.source.exif_orientation,
                                    label_names={d.value: d.name for d in session.label_defs},
                                    colours={d.value: d.colour for d in session.label_defs})
        elif fmt == "dicom-seg":
            if not dicom_seg_available():
                raise SessionError("DICOM-SEG export is not available in this build; export NIfTI")
            from data.deidentify import deidentify_basic
            from data.export import export_labels

            path = export_labels(
                session.labels,
                volume,
                out_dir / name,
                label_names={d.value: d.name for d in session.label_defs},
                colours={d.value: d.colour for d in session.label_defs},
                model_name=session.model,
                deidentify=None if keep_identifiers else deidentify_basic,
            )
        else:
            raise ValueError(f"unknown export format {fmt!r}; expected nifti, dicom-seg or png")
        done = f"Exported {Path(path).name}."
        if fmt == "png" and session.labels.max(initial=0) > 255:
            done += (" Label values past 255: a 16-bit grey PNG (8 bits hold values up to 255), which viewers show near "
                     "black; its label names and colours are in its medseg:labels text.")
        if fmt == "nifti" and volume.source is not None and volume.source.format in PICTURE_FORMATS \
                and volume.source.exif_orientation != 1:
            done += (f" ⚠ This photo is turned by its EXIF Orientation {volume.source.exif_orientation}, which a NIfTI "
                     "cannot carry: export PNG to use the labels with the photo (medseg oneshot --ref-mask, eval).")
        if not session.labels.any():  # said as for real work before: the work may be on another study, or undone
            done += " ⚠ No label has any voxel in this study: the file is empty."
        done += _running_note(session)
        vm = view_model(session, done)
        vm.exported = session.revision  # under the lock: an edit waiting for it comes after, and is not in the file
        return Path(path), vm


def _running_note(session: Session) -> str:
    """What an export taken while a propagation of this study runs must say: the file is the map before the walk
    (the walk lands later, under the lock the export holds), so the user knows to export again when it is done."""
    from app.propagation_job import job_of

    job = job_of(session)
    if job is None or not job.running or job.study != session.study_key:
        return ""
    return (f" ⚠ A propagation of {session.label(job.label).name} is running ({job.done}/{job.total} slices): "
            "this file holds the labels before it; export again when it is done.")


# --- the view ---------------------------------------------------------------------------------
def _done(session: Session, what: str) -> str:
    """'Positive click (2 points + box): overlay updated.'"""
    p = session.prompt
    parts = []
    if p is not None and p.points:
        parts.append(f"{len(p.points)} point{'s' if len(p.points) != 1 else ''}")
    if p is not None and p.box is not None:
        parts.append("box")
    extra = f" ({' + '.join(parts)})" if parts and what != "box" else ""
    return f"{what[:1].upper()}{what[1:]}{extra}: overlay updated."


def render(session: Session) -> np.ndarray:
    """The shown image of the session's current plane with labels and prompt marks."""
    volume = session.require_study()
    vs = session.view
    plane = Plane.of(volume, vs.view)
    index = vs.index[vs.view]
    key = (vs.window, vs.level, vs.width) if vs.window == "custom" else (vs.window,)
    windows = session.runtime.setdefault("display_windows", {})
    if key not in windows:
        windows[key] = display_window(volume, vs.window, vs.level, vs.width)
    image = to_rgb(np.ascontiguousarray(plane.extract(volume.array, index)), windows[key])
    labels = np.asarray(plane.extract(session.labels, index))
    markers = None
    p = session.prompt
    if p is not None and p.same_target(vs.view, index, p.label):
        markers = Markers(
            points=np.asarray(p.points, float).reshape(-1, 2) if p.points else None,
            point_labels=np.asarray(p.point_labels) if p.points else None,
            box=np.asarray(p.box) if p.box is not None else None,
            corner=p.corner,
        )
    return compose(image, labels, session.colours(), shown_hw=display_size(labels.shape, plane.spacing(volume)),
                   opacity=vs.opacity, markers=markers)


def _shown_modality(modality: str) -> str:
    """The file's Modality as plain Markdown text, cut to the 16 characters its VR (CS) holds. Why: it went into the
    facts panel as it stood, so a DICOM whose Modality was ``![x](https://host/p.png)`` made the browser fetch that
    picture when the study opened (a beacon of who opened it, and when), or showed a link the file chose."""
    text = one_line(str(modality))
    return escape_markdown(text if len(text) <= 16 else text[:16] + "…")


def _size_fact(v: Volume) -> str:
    """The facts' line on voxel size: only what the file measures (a cine's frames are not a distance)."""
    sx, sy, sz = v.spacing
    if v.slice_spacing_is_physical:
        return f"spacing {sx:.3g} × {sy:.3g} × {sz:.3g} mm, orientation {v.orientation_code()}"
    if v.size_is_physical and THICKNESS_UNKNOWN in v.source.geometry:
        return (f"pixel size {sx:.3g} × {sy:.3g} mm; slice thickness unknown (not in the file: no volume in mL), "
                f"orientation {v.orientation_code()}")
    if v.size_is_physical:
        return (f"pixel size {sx:.3g} × {sy:.3g} mm; {v.num_slices} frames not placed (their distance unknown: "
                "no volume in mL), no patient orientation")
    return "pixel size unknown (measured in pixels, no mm), no patient orientation"


def facts(session: Session) -> str:
    """``medseg info``-style facts of the open study (markdown)."""
    v = session.volume
    if v is None:
        return "No study open."
    k, j, i = v.array.shape[:3]
    lines = [
        f"**{escape_markdown(session.study_name)}**",
        f"modality **{_shown_modality(v.modality)}**, format {v.source.format or '?'}",
        f"size {i} × {j} × {k} (i × j × k){', RGB' if v.is_rgb else ''}, {v.array.dtype}",
        _size_fact(v),
    ]
    if v.source.series_instance_uid:
        lines.append(f"series {escape_markdown(str(v.source.series_instance_uid))}")
    return "  \n".join(lines)


def label_box(session: Session) -> tuple[list[tuple[str, int]], int, str, str]:
    """The Active label box (its choices and value) and the active label's name and colour fields."""
    active = session.label(session.active) if session.label_defs else None
    return ([(f"{d.value} · {d.name}", d.value) for d in session.label_defs], session.active,
            active.name if active else "", "#%02x%02x%02x" % (active.colour if active else PALETTE[0]))


def alternatives_box(session: Session) -> tuple[list[str], str | None]:
    """The *Alternatives of the first click* list (its rows and the one applied): the first click's on the slice and
    label shown, else empty."""
    p, vs = session.prompt, session.view
    if session.volume is None or p is None or not p.alternatives or not p.same_target(
            vs.view, vs.index[vs.view], session.active):
        return [], None
    rows = [f"{i + 1} (IoU {score:.2f}{', box' if box is not None else ''})"
            for i, (_, _, score, box) in enumerate(p.alternatives)]
    return rows, rows[p.chosen]


def view_model(session: Session, status: str | None) -> ViewModel:
    vs = session.view
    vm = ViewModel(
        session_id=session.id,
        status=status,
        model=session.model,
        window=vs.window,
        level=vs.level,
        width=vs.width,
        opacity=vs.opacity,
        mode=vs.mode,
        facts=facts(session),
        undo_depth=len(session.undo_stack),
        redo_depth=len(session.redo_stack),
    )
    if session.volume is None or session.labels is None:
        return vm
    volume = session.volume
    vm.views = ["axial"] if volume.is_2d else list(VIEWS)
    vm.view = vs.view
    plane = Plane.of(volume, vs.view)
    vm.slice_max = plane.count(session.labels.shape) - 1
    vm.slice_index = vs.index[vs.view]
    vm.labels, vm.active, vm.label_name, vm.colour = label_box(session)
    vm.measurements = interaction.measurements(session)
    vm.alternatives, vm.chosen = alternatives_box(session)
    vm.renderer = lambda: render(session)
    return vm
