"""``data.dicomweb`` against a PACS that answers what the test tells it to (an in-process HTTP server, real
requests through dicomweb-client): what a user reads when the PACS refuses, lies about a series' size or
rejects a stored SEG, the token it is sent, and the study and series lists as a user sees them.
The happy paths against a real Orthanc are in ``test_dicomweb.py``."""

from __future__ import annotations

import http.server
import io
import json
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest

from data.dicomweb import (DicomWebError, SeriesURL, check_base_url, fetch_series, find_series, is_url,
                           list_all_series, parse_series_url, search_series, search_studies, series_size, store)
from tests.conftest import SAMPLES

SERIES = SAMPLES / "ct_head_0051_series"
STUDY, SER = "1.2.3", "4.5.6"
BOUNDARY = "medsegtestboundary"


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        pacs: FakePacs = self.server.pacs  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        pacs.requests.append((self.command, urlsplit(self.path).path, dict(self.headers)))
        status, ctype, body = pacs.route(self.command, urlsplit(self.path).path)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args):
        pass


class FakePacs:
    """A DICOMweb server on a loopback port; ``answers[(method, path)] = (status, content type, body)``."""

    def __init__(self):
        self.answers: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.pacs = self  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        return self.answers.get((method, path.removeprefix("/dicom-web")), (404, "text/plain", b"no such thing"))

    def json(self, path: str, value, status: int = 200, method: str = "GET") -> None:
        self.answers[(method, path)] = (status, "application/dicom+json", json.dumps(value).encode())

    def instance(self, path: str, dicom: bytes) -> None:
        body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dicom
                + f"\r\n--{BOUNDARY}--\r\n".encode())
        self.answers[("GET", path)] = (200, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', body)

    def paths(self, method: str = "GET") -> list[str]:
        return [p.removeprefix("/dicom-web") for m, p, _ in self.requests if m == method]


@pytest.fixture()
def pacs():
    fake = FakePacs()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def tag(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


def image_meta(sop: str, rows=4, cols=5, **extra) -> dict:
    return {"00080018": tag("UI", sop), "00280010": tag("US", rows), "00280011": tag("US", cols), **extra}


# --- addresses ---------------------------------------------------------------------------------------
def test_series_urls_as_users_paste_them():
    url = parse_series_url("  HTTPS://pacs.example:8042/dicom-web//studies/1.2.840/SERIES/1.2.841/\n")
    assert url == SeriesURL("HTTPS://pacs.example:8042/dicom-web", "1.2.840", "1.2.841")
    assert str(url) == "HTTPS://pacs.example:8042/dicom-web/studies/1.2.840/series/1.2.841"
    assert parse_series_url("http://pacs/studies/1.2/series/3.4") == SeriesURL("http://pacs", "1.2", "3.4")
    for not_a_series in ("ftp://pacs/studies/1.2/series/3.4", "http://pacs/studies/1.2/series/3.4/instances/5",
                         "http://pacs/studies/1.2/series/", "http://pacs/studies/1.2/series/abc",
                         "x http://pacs/studies/1.2/series/3.4", "http://pacs/studies/1.2/series/3.4?x=1"):
        assert parse_series_url(not_a_series) is None, not_a_series


def test_what_counts_as_a_url():
    assert is_url("http://pacs/x") and is_url("HTTPS://pacs/x")
    assert not is_url("samples/ct") and not is_url("dicomweb:http://pacs") and not is_url("httpx://pacs")


def test_a_base_url_is_checked_and_trimmed():
    assert check_base_url("  HTTP://pacs:8042/dicom-web/ ") == "HTTP://pacs:8042/dicom-web"
    for bad, named in (("pacs:8042/dicom-web", "pacs:8042/dicom-web"), ("", "(empty)"), ("http:///x", "http:///x"),
                       ("ftp://pacs", "ftp://pacs")):
        with pytest.raises(DicomWebError) as e:
            check_base_url(bad)
        assert str(e.value) == f"{named}: expected a DICOMweb base URL such as http://pacs:8042/dicom-web"


# --- what a refusing PACS looks like ---------------------------------------------------------------
@pytest.mark.parametrize("status, expected", [
    (401, "{base}: access refused (HTTP 401) while searching studies (QIDO-RS); set MEDSEG_DICOMWEB_TOKEN"),
    (403, "{base}: access refused (HTTP 403) while searching studies (QIDO-RS); set MEDSEG_DICOMWEB_TOKEN"),
    (404, "{base}: not found (HTTP 404) while searching studies (QIDO-RS); check the UIDs and the DICOMweb prefix"),
    (500, "{base}: the PACS answered HTTP 500 while searching studies (QIDO-RS)"),
    (503, "{base}: the PACS answered HTTP 503 while searching studies (QIDO-RS)"),
])
def test_each_http_refusal_is_one_line_naming_the_pacs(pacs, status, expected):
    pacs.json("/studies", [], status=status)
    with pytest.raises(DicomWebError) as e:
        search_studies(pacs.base)
    assert str(e.value) == expected.format(base=pacs.base)
    assert len(pacs.requests) == 1  # no retries: a user waits for one answer, not five


def test_a_pacs_that_answers_garbage_is_one_line(pacs):
    pacs.answers[("GET", "/studies")] = (200, "application/dicom+json", b"<html>login page</html>\nsecond line")
    with pytest.raises(DicomWebError) as e:
        search_studies(pacs.base)
    msg = str(e.value)
    assert msg.startswith(f"{pacs.base}: searching studies (QIDO-RS) failed (JSONDecodeError: ")
    assert msg.endswith(")") and "\n" not in msg


def test_a_pacs_nobody_runs_says_so(pacs):
    base = pacs.base
    pacs.server.shutdown()
    pacs.server.server_close()
    with pytest.raises(DicomWebError) as e:
        search_series(base, STUDY, timeout=2.5)
    assert str(e.value) == (f"{base}/studies/{STUDY}: cannot connect while searching series (QIDO-RS); is the PACS "
                            "running and the URL right?")


def test_the_token_is_sent_as_a_bearer_header(pacs, monkeypatch):
    pacs.json("/studies", [])
    monkeypatch.setenv("MEDSEG_DICOMWEB_TOKEN", "  s3cret-token \n")
    search_studies(pacs.base)
    monkeypatch.setenv("MEDSEG_DICOMWEB_TOKEN", "   ")
    search_studies(pacs.base)
    monkeypatch.delenv("MEDSEG_DICOMWEB_TOKEN")
    search_studies(pacs.base)
    sent = [headers.get("Authorization") for _, _, headers in pacs.requests]
    assert sent == ["Bearer s3cret-token", None, None]


# --- QIDO-RS: the lists a user picks from -----------------------------------------------------------
def test_the_study_list_shows_names_ids_dates_and_modalities(pacs):
    pacs.json("/studies", [
        {"0020000D": tag("UI", "1.1"), "00100010": tag("PN", {"Alphabetic": "Doe^Jane"}),
         "00100020": tag("LO", "P-7"), "00080020": tag("DA", "20260102"), "00081030": tag("LO", "Head CT"),
         "00080061": tag("CS", "CT", "SEG")},
        {"0020000D": tag("UI", "1.2"), "00100010": tag("PN", {"Ideographic": "山田"}), "00100020": {"vr": "LO"},
         "00080061": tag("CS")},
    ])
    studies = search_studies(pacs.base, limit=7)
    assert [(s.study_uid, s.patient_name, s.patient_id, s.date, s.description, s.modalities) for s in studies] == [
        ("1.1", "Doe^Jane", "P-7", "20260102", "Head CT", "CT"),
        ("1.2", "", "", "", "", ""),  # a name without an alphabetic form, empty or missing fields: blank
    ]
    assert pacs.paths() == ["/studies"]


def test_the_series_list_of_a_study(pacs):
    pacs.json(f"/studies/{STUDY}/series", [
        {"0020000E": tag("UI", "9.1"), "00080060": tag("CS", "MR"), "0008103E": tag("LO", "T1"),
         "00200011": tag("IS", 3), "00201209": tag("IS", 176)},
    ])
    (s,) = search_series(pacs.base, STUDY)
    assert (s.study_uid, s.series_uid, s.modality, s.description, s.number, s.instances) == (
        STUDY, "9.1", "MR", "T1", "3", "176")


def test_the_pacs_panel_lists_image_series_only(pacs):
    def series(uid, modality):
        return {"0020000D": tag("UI", "1.1"), "0020000E": tag("UI", uid), "00080060": tag("CS", modality),
                "0008103E": tag("LO", f"{modality} series"), "00200011": tag("IS", 1), "00201209": tag("IS", 2)}

    pacs.json("/series", [series("2.1", "CT"), series("2.2", "SEG"), series("2.3", "SR"), series("2.4", "PR"),
                          series("2.5", "RTSTRUCT"), series("2.6", "MR")])
    found = list_all_series(pacs.base)
    assert [(s.study_uid, s.series_uid, s.modality, s.description, s.number, s.instances) for s in found] == [
        ("1.1", "2.1", "CT", "CT series", "1", "2"), ("1.1", "2.6", "MR", "MR series", "1", "2")]


def test_a_series_known_by_its_uid_alone(pacs):
    pacs.json("/series", [{"0020000D": tag("UI", STUDY), "0020000E": tag("UI", SER)}])
    assert find_series(pacs.base + "/", SER) == SeriesURL(pacs.base, STUDY, SER)
    pacs.json("/series", [])
    with pytest.raises(DicomWebError) as e:
        find_series(pacs.base, "7.7")
    assert str(e.value) == f"{pacs.base}: no series 7.7 on this PACS"


# --- WADO-RS: sizes from metadata, then the files -------------------------------------------------
def test_series_size_counts_frames_samples_and_bytes():
    size = series_size([
        image_meta("1", rows=512, cols=512),  # CT: 16 bits allocated by default
        image_meta("2", rows=10, cols=20, **{"00280008": tag("IS", "3"), "00280002": tag("US", 3),
                                             "00280100": tag("US", 8)}),  # 3 RGB frames, 8 bits
        image_meta("3", rows=8, cols=8, **{"00280100": tag("US", 1)}),  # 1-bit: counted as one byte a pixel
        {"00080018": tag("UI", "4")},  # no rows or columns: nothing
    ])
    assert size.instances == 4
    assert size.voxels == 512 * 512 + 10 * 20 * 3 + 64
    assert size.bytes == 512 * 512 * 2 + 10 * 20 * 3 * 3 + 64


def test_series_size_takes_odd_frame_counts():
    size = series_size([image_meta("1", rows=2, cols=2, **{"00280008": tag("IS", "2.0"), "00280002": tag("US"),
                                                          "00280100": tag("US")})])
    assert (size.voxels, size.bytes) == (8, 16)  # '2.0' frames; empty samples and bits: 1 and 16


def _ct_bytes() -> list[bytes]:
    return [p.read_bytes() for p in sorted(SERIES.glob("*.dcm"))[:3]]


def _serve_series(pacs, files: list[bytes], meta: list[dict] | None = None) -> SeriesURL:
    sops = [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in files]
    pacs.json(f"/studies/{STUDY}/series/{SER}/metadata", meta if meta is not None else
              [image_meta(s, rows=256, cols=256) for s in sops])
    for sop, data in zip(sops, files):
        pacs.instance(f"/studies/{STUDY}/series/{SER}/instances/{sop}", data)
    return SeriesURL(pacs.base, STUDY, SER)


def test_a_series_is_fetched_in_metadata_order_with_progress(pacs, private_tmp):
    files = _ct_bytes()
    url = _serve_series(pacs, files)
    seen = []
    folder = fetch_series(url, max_voxels=3 * 256 * 256, max_bytes=3 * 256 * 256 * 2,
                          progress=lambda done, total: seen.append((done, total)))
    assert folder.parent == private_tmp and folder.name.startswith("medseg-dicomweb-")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.dcm", "00001.dcm", "00002.dcm"]
    for n, data in enumerate(files):
        assert pydicom.dcmread(folder / f"{n:05d}.dcm").SOPInstanceUID == pydicom.dcmread(
            io.BytesIO(data)).SOPInstanceUID
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert pacs.paths()[0].endswith("/metadata")


def test_a_fetch_into_a_new_named_folder(pacs, tmp_path):
    url = _serve_series(pacs, _ct_bytes()[:1])
    folder = fetch_series(url, tmp_path / "a" / "b", max_voxels=256 * 256, max_bytes=256 * 256 * 2)
    assert folder == tmp_path / "a" / "b" and [p.name for p in folder.iterdir()] == ["00000.dcm"]


@pytest.mark.parametrize("limit", ["voxels", "bytes"])
def test_a_series_over_a_limit_is_refused_before_any_pixel(pacs, private_tmp, limit):
    url = _serve_series(pacs, _ct_bytes())
    voxels, nbytes = 3 * 256 * 256, 3 * 256 * 256 * 2
    with pytest.raises(DicomWebError) as e:
        if limit == "voxels":
            fetch_series(url, max_voxels=voxels - 1, max_bytes=nbytes)
        else:
            fetch_series(url, max_voxels=voxels, max_bytes=nbytes - 2**20 // 4)
    if limit == "voxels":
        assert str(e.value) == (f"{url}: {voxels} voxels in 3 images is more than the limit of {voxels - 1} "
                                "(raise MEDSEG_MAX_VOXELS); nothing was downloaded")
    else:
        assert str(e.value) == (f"{url}: 0 MiB of pixels is more than the limit of 0 MiB "
                                "(raise MEDSEG_MAX_UPLOAD_MB); nothing was downloaded")
    assert pacs.paths() == [f"/studies/{STUDY}/series/{SER}/metadata"] and list(private_tmp.iterdir()) == []


def test_the_byte_limit_message_in_mib(pacs):
    sops = [f"1.2.{i}" for i in range(40)]
    pacs.json(f"/studies/{STUDY}/series/{SER}/metadata", [image_meta(s, rows=512, cols=512) for s in sops])
    with pytest.raises(DicomWebError, match=r": 20 MiB of pixels is more than the limit of 8 MiB \(raise"):
        fetch_series(SeriesURL(pacs.base, STUDY, SER), max_voxels=2**30, max_bytes=8 * 2**20)


def test_exactly_at_the_limits_is_fetched(pacs, tmp_path):
    url = _serve_series(pacs, _ct_bytes())
    folder = fetch_series(url, tmp_path / "s", max_voxels=3 * 256 * 256, max_bytes=3 * 256 * 256 * 2)
    assert len(list(folder.iterdir())) == 3


@pytest.mark.parametrize("case", ["empty", "no SOP UIDs"])
def test_a_series_without_instances_is_refused(pacs, private_tmp, case):
    meta = [] if case == "empty" else [image_meta("1.2"), {"00280010": tag("US", 4), "00280011": tag("US", 4)}]
    url = _serve_series(pacs, [], meta)
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30)
    why = "the series has no instances" if case == "empty" else "the series metadata lacks SOPInstanceUIDs"
    assert str(e.value) == f"{url}: {why}"
    assert list(private_tmp.iterdir()) == []


def test_a_pacs_sending_more_than_announced_is_stopped_and_nothing_kept(pacs, private_tmp):
    files = _ct_bytes()
    sops = [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in files]
    # metadata claims 3 tiny images: 2 x 2 pixels, so the budget is 24 bytes + 64 KiB of headers each
    url = _serve_series(pacs, files, [image_meta(s, rows=2, cols=2) for s in sops])
    seen = []
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=3 * 2 * 2 * 2, progress=lambda d, t: seen.append(d))
    assert str(e.value) == f"{url}: the PACS sent more than the 0 MiB its metadata announced; download stopped"
    # 3 files of ~131 KiB against a budget of 192 KiB + 24 bytes: the second one is over
    assert seen == [1] and list(private_tmp.iterdir()) == []


def test_a_failed_instance_removes_what_was_fetched(pacs, private_tmp):
    files = _ct_bytes()
    url = _serve_series(pacs, files)
    sop3 = pydicom.dcmread(io.BytesIO(files[2])).SOPInstanceUID
    del pacs.answers[("GET", f"/studies/{STUDY}/series/{SER}/instances/{sop3}")]
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30)
    assert str(e.value) == (f"{url}: not found (HTTP 404) while retrieving instance 3 of 3 (WADO-RS); check the "
                            "UIDs and the DICOMweb prefix")
    assert list(private_tmp.iterdir()) == []


def test_a_failed_fetch_into_a_named_folder_removes_it(pacs, tmp_path):
    url = _serve_series(pacs, _ct_bytes(), [image_meta("9.9", rows=1, cols=1)])  # an instance the PACS lacks
    with pytest.raises(DicomWebError, match="retrieving instance 1 of 1"):
        fetch_series(url, tmp_path / "dest", max_voxels=2**30, max_bytes=2**30)
    assert not (tmp_path / "dest").exists()


# --- STOW-RS ------------------------------------------------------------------------------------
def _stow_reply(pacs, failed: list[int] | None, status: int = 200) -> None:
    reply = {"00081199": tag("SQ", {"00081155": tag("UI", "1.2.3")})}
    if failed is not None:
        reply["00081198"] = tag("SQ", *[{"00081155": tag("UI", f"9.{i}"), "00081197": tag("US", r)}
                                        for i, r in enumerate(failed)])
    pacs.json("/studies", reply, status=status, method="POST")


def test_stored_instances_are_acknowledged_by_their_uids(pacs):
    _stow_reply(pacs, None)
    files = sorted(SERIES.glob("*.dcm"))[:2]
    assert store(pacs.base, files) == [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    assert pacs.paths("POST") == ["/studies"]


@pytest.mark.parametrize("status", [200, 202])
def test_instances_the_pacs_refused_are_an_error_not_a_success(pacs, status):
    """A PACS that accepts the request but refuses instances lists them in FailedSOPSequence (HTTP 202 or 200)."""
    _stow_reply(pacs, [0xA700, 0x0110, 0x0110], status=status)
    with pytest.raises(DicomWebError) as e:
        store(pacs.base, sorted(SERIES.glob("*.dcm"))[:1])
    assert str(e.value) == f"{pacs.base}: the PACS refused 3 instance(s) (failure reason 272, 42752)"


def test_a_stow_refused_whole_is_one_line(pacs):
    _stow_reply(pacs, [0x0110], status=409)
    with pytest.raises(DicomWebError) as e:
        store(pacs.base, sorted(SERIES.glob("*.dcm"))[:1])
    assert str(e.value) == f"{pacs.base}: the PACS answered HTTP 409 while storing (STOW-RS)"
