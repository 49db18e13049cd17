"""DICOMweb in and out against a real Orthanc: a series URL as INPUT, a DICOM-SEG stored with STOW-RS,
and one clear error (exit 2, nothing half-written) when the PACS is down, wrong, missing a series or slow."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.cli import main
from data.dicom_seg import read_dicom_seg
from data.dicomweb import DicomWebError, client, fetch_series, parse_series_url, search_series, search_studies
from data.readers import read_study
from tests.conftest import SAMPLES
from tests.orthanc import free_port, orthanc_available, running_orthanc

SERIES = SAMPLES / "ct_head_0051_series"
BOX = ["--slice", "3", "--box", "50", "10", "210", "220"]

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc + orthanc-dicomweb not installed; `make test` installs them")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        server.upload(sorted(SERIES.glob("*.dcm")))
        yield server


@pytest.fixture(scope="module")
def ct():
    return read_study(SERIES)


def series_url(pacs, ct) -> str:
    return f"{pacs.dicomweb}/studies/{ct.source.study_instance_uid}/series/{ct.source.series_instance_uid}"


@pytest.fixture()
def settings_env(monkeypatch):
    """Set MEDSEG_* variables for one test (the settings are read once per process otherwise)."""
    from app.settings import get_settings

    def set_env(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


def leftovers(tmp: Path) -> list[str]:
    """What medseg left in a temp folder (torch's own caches aside)."""
    return [p.name for p in tmp.iterdir() if p.name.startswith("medseg")]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parse_series_url():
    url = parse_series_url("https://pacs.example/dicom-web/studies/1.2.3/series/4.5.6/")
    assert (url.base, url.study_uid, url.series_uid) == ("https://pacs.example/dicom-web", "1.2.3", "4.5.6")
    assert parse_series_url("samples/ct_head_0051_series") is None
    assert parse_series_url("http://pacs/dicom-web/studies/1.2.3") is None  # a study is not one series


def test_qido_lists_the_study_and_its_series(pacs, ct):
    studies = search_studies(pacs.dicomweb)
    assert [s.study_uid for s in studies] == [ct.source.study_instance_uid]
    series = search_series(pacs.dicomweb, ct.source.study_instance_uid)
    assert [(s.series_uid, s.modality, s.instances) for s in series] == [(ct.source.series_instance_uid, "CT", "12")]


def test_series_in_seg_out_read_back_from_orthanc(pacs, ct, litemedsam, tmp_path, capsys):
    """The sample series by URL -> `medseg segment` -> DICOM-SEG on the PACS -> the same voxels as from the folder."""
    local = tmp_path / "local.nii.gz"
    assert run_cli(capsys, "segment", SERIES, *BOX, "--output", local)[0] == 0
    code, out, err = run_cli(capsys, "segment", series_url(pacs, ct), *BOX, "--output", f"dicomweb:{pacs.dicomweb}")
    assert code == 0, err
    assert out.startswith(pacs.dicomweb) and "DICOM-SEG" in out
    # read the SEG back from Orthanc over WADO-RS, as a viewer would
    c = client(pacs.dicomweb)
    segs = [s for s in c.search_for_series(ct.source.study_instance_uid) if s["00080060"]["Value"] == ["SEG"]]
    assert len(segs) == 1
    seg_uid = segs[0]["0020000E"]["Value"][0]
    (seg_ds,) = c.retrieve_series(ct.source.study_instance_uid, seg_uid)
    seg_file = tmp_path / "back.dcm"
    seg_ds.save_as(seg_file, enforce_file_format=True)
    back = read_dicom_seg(seg_file, ct)
    expected = read_study(local).array
    assert int(expected.sum()) > 1000
    np.testing.assert_array_equal(back.labels.array, expected)
    # it references the source series and frame of reference
    ds = pydicom.dcmread(seg_file)
    assert ds.StudyInstanceUID == ct.source.study_instance_uid
    assert ds.FrameOfReferenceUID == ct.source.frame_of_reference_uid
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct.source.series_instance_uid
    # stored with its source's patient, so the PACS files it with its images (not as a second, nameless patient)
    _assert_filed_with_its_images(pacs, seg_uid)
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} <= set(ct.source.sop_instance_uids)
    assert ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in set(ct.source.sop_instance_uids)


def test_info_reads_a_series_url_with_its_geometry(pacs, ct, capsys):
    code, out, _ = run_cli(capsys, "info", series_url(pacs, ct), "--json")
    assert code == 0
    import json

    facts = json.loads(out)
    assert facts["shape_kji"] == [12, 256, 256] and facts["series_instance_uid"] == ct.source.series_instance_uid
    assert facts["spacing_mm_ijk"] == [round(s, 6) for s in ct.spacing]


def test_fetch_reports_progress_and_keeps_geometry(pacs, ct, tmp_path):
    seen = []
    folder = fetch_series(parse_series_url(series_url(pacs, ct)), tmp_path / "s", max_voxels=2**28, max_bytes=2**30,
                          progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and len(seen) == 12
    v = read_study(folder)
    np.testing.assert_array_equal(v.array, ct.array)
    assert (v.spacing, v.origin, v.direction) == (ct.spacing, ct.origin, ct.direction)


def test_a_fetched_series_is_the_files_the_pacs_was_given(pacs, ct, tmp_path):
    """Reading every answer under a cap (data/dicomweb_body.py) changes nothing for an honest PACS: each
    fetched file is byte for byte the one uploaded to Orthanc, at the default limits."""
    from app.settings import Settings

    d = Settings()
    folder = fetch_series(parse_series_url(series_url(pacs, ct)), tmp_path / "s", max_voxels=d.max_voxels,
                          max_bytes=d.max_upload_bytes, max_instances=d.max_upload_files)
    given = {pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in SERIES.glob("*.dcm")}
    fetched = {pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in folder.iterdir()}
    assert fetched == given and len(given) == 12


def test_voxel_limit_refuses_before_pixels(pacs, ct, private_tmp, settings_env, capsys):
    settings_env(MEDSEG_MAX_VOXELS=256 * 256 * 11)
    code, _, err = run_cli(capsys, "info", series_url(pacs, ct))
    assert code == 2 and "more than the limit" in err and "nothing was downloaded" in err
    assert leftovers(private_tmp) == []


@pytest.mark.parametrize("case", ["orthanc down", "wrong prefix", "404 series"])
def test_bad_source_is_one_clear_error_and_nothing_written(pacs, ct, private_tmp, tmp_path, capsys, case):
    url = series_url(pacs, ct)
    if case == "orthanc down":
        url = url.replace(f":{pacs.port}/", f":{free_port()}/")
        expected = "cannot connect"
    elif case == "wrong prefix":
        url = url.replace("/dicom-web/", "/dicomweb/")
        expected = "not found (HTTP 404)"
    else:
        url = url.rsplit("/", 1)[0] + "/1.2.3.4.5.404"
        expected = "not found (HTTP 404)"
    out = tmp_path / "never.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", url, *BOX, "--output", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not out.exists() and leftovers(private_tmp) == []


def test_stow_to_a_down_pacs_fails_cleanly(pacs, ct, private_tmp):
    from app.commands.common import save_labels

    before = pacs.instance_count()
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[3, 100:120, 100:120] = 1
    base = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError, match="cannot connect while storing"):
        save_labels(labels, ct, f"dicomweb:{base}", label_names={1: "structure"}, model_name="litemedsam")
    assert pacs.instance_count() == before and leftovers(private_tmp) == []
    # and the same labels to the running PACS: one more instance, a SEG
    where = save_labels(labels, ct, f"dicomweb:{pacs.dicomweb}", label_names={1: "structure"}, model_name="litemedsam")
    assert where.startswith(pacs.dicomweb) and pacs.instance_count() == before + 1


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(3)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"[]")
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_slow_pacs_times_out_with_one_clear_error(private_tmp, settings_env, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings_env(MEDSEG_DICOMWEB_TIMEOUT_S=1)
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web/studies/1.2/series/3.4"
        code, _, err = run_cli(capsys, "info", url)
        assert code == 2 and "no answer within 1 s" in err and len(err.strip().splitlines()) == 1
        assert leftovers(private_tmp) == []
        with pytest.raises(DicomWebError, match="no answer within 1 s"):
            search_studies(url.split("/studies")[0], timeout=1)
    finally:
        server.shutdown()
        server.server_close()


def _assert_filed_with_its_images(pacs, seg_series_uid: str) -> None:
    """The SEG series sits in the same Orthanc study (so under the same patient) as the CT series it segments.
    A de-identified SEG (the UI's Export to PACS until session 21) got a study of its own under a nameless patient
    with the same StudyInstanceUID: two patients in the PACS for one scan."""
    found = [s for s in pacs.rest("/series?expand") if s["MainDicomTags"].get("SeriesInstanceUID") == seg_series_uid]
    assert len(found) == 1
    study = pacs.rest(f"/studies/{found[0]['ParentStudy']}")
    modalities = {pacs.rest(f"/series/{s}")["MainDicomTags"].get("Modality") for s in study["Series"]}
    assert "CT" in modalities, (study["PatientMainDicomTags"], modalities)
    source = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0], stop_before_pixels=True)
    assert study["PatientMainDicomTags"].get("PatientID") == source.PatientID


def test_ui_pacs_panel_lists_opens_and_exports(pacs, ct, litemedsam, tmp_path):
    """`medseg serve --dicomweb`: the PACS panel's actions (QIDO list, WADO open, STOW export) on the real Orthanc."""
    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.pacs import export_to_pacs, open_series, series_choices
    from app.session import SessionStore
    from app.ui import UIConfig, build_app

    demo = build_app(UIConfig(sessions_root=tmp_path / "ui", dicomweb=pacs.dicomweb))  # the panel lays out and wires
    # its Open asks for a new session token before the retrieve leaves (a cookie planted after the page opened must
    # not receive the study; session 24): the page's js for that event, checked in Chromium in session 24's note
    (open_btn,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pacs-open"]
    (opening,) = [d for d in demo.config["dependencies"] if (open_btn._id, "click") in map(tuple, d["targets"])]
    assert "medseg-rotate" in (opening["js"] or "") and "slice(0, 2)" in opening["js"]
    choices = series_choices(pacs.dicomweb)
    url = series_url(pacs, ct)
    assert url in [u for _, u in choices]
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    sid = controller.start(ctx, None).session_id
    vm = open_series(ctx, sid, url)
    assert "Opened PACS series" in vm.status
    before = pacs.instance_count()
    seg_series_before = {s["0020000E"]["Value"][0] for s in client(pacs.dicomweb).search_for_series(
        ct.source.study_instance_uid) if s["00080060"]["Value"] == ["SEG"]}
    with pytest.raises(Exception, match="nothing is segmented"):
        export_to_pacs(ctx, sid, pacs.dicomweb)  # nothing drawn yet: refused, nothing stored
    assert pacs.instance_count() == before
    vm = controller.click(ctx, sid, 128, 120)
    assert vm.measurements
    vm = export_to_pacs(ctx, sid, pacs.dicomweb)
    assert "Stored the DICOM-SEG on the PACS" in vm.status and pacs.instance_count() == before + 1
    (seg_uid,) = {s["0020000E"]["Value"][0] for s in client(pacs.dicomweb).search_for_series(
        ct.source.study_instance_uid) if s["00080060"]["Value"] == ["SEG"]} - seg_series_before
    _assert_filed_with_its_images(pacs, seg_uid)


def test_serve_beyond_loopback_needs_a_token(monkeypatch, capsys):
    monkeypatch.delenv("MEDSEG_TOKEN", raising=False)
    code, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0")
    assert code == 2 and "MEDSEG_TOKEN" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("MEDSEG_TOKEN", "short")
    code, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0")
    assert code == 2 and "at least 16" in err
