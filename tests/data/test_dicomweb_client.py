"""``data.dicomweb`` against a PACS that answers what the test tells it to (an in-process HTTP server, real
requests through dicomweb-client): what a user reads when the PACS refuses, lies about a series' size or
rejects a stored SEG, the token it is sent, and the study and series lists as a user sees them.
The happy paths against a real Orthanc are in ``test_dicomweb.py``."""

from __future__ import annotations

import http.server
import io
import json
import re
import threading
import time
import tracemalloc
import zlib
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from data.dicomweb import (DicomWebError, SeriesURL, check_base_url, fetch_series, find_series, is_url,
                           list_all_series, parse_series_url, search_series, search_studies, series_size, store)
from tests.conftest import SAMPLES

SERIES = SAMPLES / "ct_head_0051_series"
STUDY, SER = "1.2.3", "4.5.6"
BOUNDARY = "medsegtestboundary"
# what Orthanc returns for a study or series search without includefield: UIDs, patient, date, modality, number
ALWAYS_RETURNED = {"0020000D", "0020000E", "00100010", "00100020", "00080020", "00080060", "00200011"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        pacs: FakePacs = self.server.pacs  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        pacs.requests.append((self.command, url.path, dict(self.headers)))
        stream = pacs.streams.get(url.path.removeprefix("/dicom-web"))
        if stream is not None:
            try:
                stream(self)
            except OSError:  # the client stopped reading and closed
                pass
            return
        status, ctype, body = pacs.route(self.command, url.path, parse_qs(url.query))
        time.sleep(pacs.delays.get(url.path.removeprefix("/dicom-web"), pacs.delay_s))
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up waiting
            pass

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args):
        pass


class FakePacs:
    """A DICOMweb server on a loopback port; ``answers[(method, path)] = (status, content type, body)``."""

    def __init__(self):
        self.answers: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self.qido: dict[tuple[str, str], list[dict]] = {}  # searchable lists, answered as _search says
        self.requests: list[tuple[str, str, dict]] = []
        self.streams: dict[str, Callable] = {}  # path -> writes the whole answer itself (huge, slow, lying)
        self.delay_s = 0.0  # before every answer
        self.delays: dict[str, float] = {}  # before the answers to these paths
        self.always = set(ALWAYS_RETURNED)  # attributes a search returns without includefield
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads, self.server.block_on_close = True, False
        self.server.pacs = self  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def route(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        path = path.removeprefix("/dicom-web")
        if (method, path) in self.qido:
            return 200, "application/dicom+json", json.dumps(self._search(self.qido[(method, path)], query)).encode()
        return self.answers.get((method, path), (404, "text/plain", b"no such thing"))

    def _search(self, items: list[dict], query: dict[str, list[str]]) -> list[dict]:
        """As a PACS answers QIDO-RS: matching on the attributes named, at most ``limit`` results, and
        only the attributes it always returns plus those asked for with ``includefield``."""
        wanted = {f"{tag_for_keyword(k):08X}" for k in query.get("includefield", [])} | self.always
        for keyword, (value, *_) in query.items():
            if keyword != "includefield" and tag_for_keyword(keyword) is not None:
                items = [i for i in items if i.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") == [value]]
        items = items[: int(query["limit"][0])] if "limit" in query else items
        return [{k: v for k, v in i.items() if k in wanted} for i in items]

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


def test_a_pacs_too_slow_to_answer_is_one_line_naming_the_setting(pacs):
    pacs.json("/studies", [])
    pacs.delay_s = 1.5
    with pytest.raises(DicomWebError) as e:
        search_studies(pacs.base, timeout=0.25)
    assert str(e.value) == (f"{pacs.base}: no answer within 0.25 s while searching studies (QIDO-RS); is the PACS "
                            "overloaded? (raise MEDSEG_DICOMWEB_TIMEOUT_S)")
    assert len(pacs.requests) == 1  # not asked again


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
def test_the_study_list_shows_names_ids_dates_descriptions_and_modalities(pacs):
    pacs.qido[("GET", "/studies")] = [
        {"0020000D": tag("UI", "1.1"), "00100010": tag("PN", {"Alphabetic": "Doe^Jane"}),
         "00100020": tag("LO", "P-7"), "00080020": tag("DA", "20260102"), "00081030": tag("LO", "Head CT"),
         "00080061": tag("CS", "CT", "SEG")},
        {"0020000D": tag("UI", "1.2"), "00100010": tag("PN", {"Ideographic": "山田"}), "00100020": {"vr": "LO"},
         "00080061": tag("CS")},
        {"0020000D": tag("UI", "1.3")},
    ]
    studies = search_studies(pacs.base, limit=2)
    assert [(s.study_uid, s.patient_name, s.patient_id, s.date, s.description, s.modalities) for s in studies] == [
        ("1.1", "Doe^Jane", "P-7", "20260102", "Head CT", "CT"),
        ("1.2", "", "", "", "", ""),  # a name without an alphabetic form, empty or missing fields: blank
    ]
    assert pacs.paths() == ["/studies"]


def test_the_study_list_stops_at_200_by_default(pacs):
    pacs.qido[("GET", "/studies")] = [{"0020000D": tag("UI", f"1.{i}")} for i in range(201)]
    assert len(search_studies(pacs.base)) == 200


def test_the_series_list_of_a_study(pacs):
    pacs.qido[("GET", f"/studies/{STUDY}/series")] = [
        {"0020000E": tag("UI", "9.1"), "00080060": tag("CS", "MR"), "0008103E": tag("LO", "T1"),
         "00200011": tag("IS", 3), "00201209": tag("IS", 176)},
    ]
    (s,) = search_series(pacs.base, STUDY)
    assert (s.study_uid, s.series_uid, s.modality, s.description, s.number, s.instances) == (
        STUDY, "9.1", "MR", "T1", "3", "176")


def _series(uid, modality, study="1.1"):
    return {"0020000D": tag("UI", study), "0020000E": tag("UI", uid), "00080060": tag("CS", modality),
            "0008103E": tag("LO", f"{modality} series"), "00200011": tag("IS", 1), "00201209": tag("IS", 2)}


def test_the_pacs_panel_lists_image_series_only(pacs):
    pacs.qido[("GET", "/series")] = [_series("2.1", "CT"), _series("2.2", "SEG"), _series("2.3", "SR"),
                                     _series("2.4", "PR"), _series("2.5", "RTSTRUCT"), _series("2.6", "MR")]
    found = list_all_series(pacs.base, limit=5)
    assert [(s.study_uid, s.series_uid, s.modality, s.description, s.number, s.instances) for s in found] == [
        ("1.1", "2.1", "CT", "CT series", "1", "")]  # the count is not asked for here
    assert len(list_all_series(pacs.base)) == 2
    pacs.always.add("00201209")  # a PACS that sends the instance count unasked (dcm4chee does): shown
    assert [s.instances for s in list_all_series(pacs.base)] == ["2", "2"]


def test_the_pacs_panel_lists_500_series_by_default(pacs):
    pacs.qido[("GET", "/series")] = [_series(f"2.{i}", "CT") for i in range(501)]
    assert len(list_all_series(pacs.base)) == 500


def test_a_series_known_by_its_uid_alone(pacs):
    pacs.qido[("GET", "/series")] = [_series("5.5", "CT", study="7.7"), _series(SER, "CT", study=STUDY)]
    assert find_series(pacs.base + "/", SER) == SeriesURL(pacs.base, STUDY, SER)
    with pytest.raises(DicomWebError) as e:
        find_series(pacs.base, "7.7")
    assert str(e.value) == f"{pacs.base}: no series 7.7 on this PACS"


@pytest.mark.parametrize("call, where, what", [
    (lambda base, t: search_series(base, STUDY, timeout=t), f"/studies/{STUDY}", "searching series (QIDO-RS)"),
    (lambda base, t: list_all_series(base, timeout=t), "", "searching series (QIDO-RS)"),
    (lambda base, t: find_series(base, SER, timeout=t), "", f"looking up series {SER} (QIDO-RS)"),
    (lambda base, t: fetch_series(SeriesURL(base, STUDY, SER), max_voxels=1, max_bytes=1, timeout=t),
     f"/studies/{STUDY}/series/{SER}", "reading the series metadata (WADO-RS)"),
    (lambda base, t: store(base, sorted(SERIES.glob("*.dcm"))[:1], timeout=t), "", "storing (STOW-RS)"),
])
def test_every_request_waits_as_long_as_asked_and_says_what_it_was_doing(pacs, call, where, what):
    pacs.delay_s = 1.5  # slower than asked for, faster than the default 30 s
    with pytest.raises(DicomWebError) as e:
        call(pacs.base, 0.25)
    assert str(e.value) == (f"{pacs.base}{where}: no answer within 0.25 s while {what}; is the PACS overloaded? "
                            "(raise MEDSEG_DICOMWEB_TIMEOUT_S)")


@pytest.mark.parametrize("call, where, what", [
    (lambda base: search_series(base, STUDY), f"/studies/{STUDY}", "searching series (QIDO-RS)"),
    (lambda base: list_all_series(base), "", "searching series (QIDO-RS)"),
    (lambda base: find_series(base, SER), "", f"looking up series {SER} (QIDO-RS)"),
    (lambda base: fetch_series(SeriesURL(base, STUDY, SER), max_voxels=1, max_bytes=1),
     f"/studies/{STUDY}/series/{SER}", "reading the series metadata (WADO-RS)"),
])
def test_a_refusal_names_the_address_and_the_step(pacs, call, where, what):
    with pytest.raises(DicomWebError) as e:
        call(pacs.base)  # nothing is served: every path answers 404
    assert str(e.value) == (f"{pacs.base}{where}: not found (HTTP 404) while {what}; check the UIDs and the DICOMweb "
                            "prefix")


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
    # 3 files of ~131 KiB against a budget of 192 KiB + 24 bytes: the second one is over, refused from its
    # Content-Length before its body is read (64 KiB + 24 bytes left, + 4 KiB for the multipart framing)
    assert str(e.value) == (f"{url}: instance 2 of 3 (SOPInstanceUID {sops[1]}) is larger than the 67 KiB allowed, "
                            "the rest of the series' budget (MEDSEG_MAX_UPLOAD_MB 24 bytes plus 64 KiB of header an "
                            "instance); the PACS declared 129 KiB; download stopped, nothing kept")
    assert seen == [1] and list(private_tmp.iterdir()) == []


def test_a_slow_instance_is_one_line_naming_it(pacs, private_tmp):
    files = _ct_bytes()
    url = _serve_series(pacs, files)
    sop2 = pydicom.dcmread(io.BytesIO(files[1])).SOPInstanceUID
    # the metadata and instance 1 answer at once, and must within the timeout: 2 s (0.25 s until session 25, which a
    # niced CI worker, the fake PACS's threads in it, could miss); instance 2 is far slower (its thread outlives the test)
    pacs.delays[f"/studies/{STUDY}/series/{SER}/instances/{sop2}"] = 30
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30, timeout=2)
    assert str(e.value) == (f"{url}: no answer within 2 s while retrieving instance 2 of 3 (WADO-RS); is the PACS "
                            "overloaded? (raise MEDSEG_DICOMWEB_TIMEOUT_S)")
    assert list(private_tmp.iterdir()) == []


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


def test_a_failure_without_a_reason_code_still_says_refused(pacs):
    pacs.json("/studies", {"00081198": tag("SQ", {"00081155": tag("UI", "9.1")})}, status=202, method="POST")
    with pytest.raises(DicomWebError) as e:
        store(pacs.base, sorted(SERIES.glob("*.dcm"))[:1])
    assert str(e.value) == f"{pacs.base}: the PACS refused 1 instance(s) (failure reason ?)"


# --- odd answers ----------------------------------------------------------------------------------
def test_other_failures_are_one_line_with_their_kind():
    from data.dicomweb import _explain

    where, what = "http://pacs/dicom-web", "searching studies (QIDO-RS)"
    assert str(_explain(ValueError(), where, what, 30)) == f"{where}: {what} failed (ValueError: )"
    assert str(_explain(KeyError("0020000D"), where, what, 30)) == f"{where}: {what} failed (KeyError: '0020000D')"
    long = _explain(TypeError("x" * 300 + "\nsecond line"), where, what, 30)
    assert str(long) == f"{where}: {what} failed (TypeError: {'x' * 200})"


def test_a_base_url_ending_in_x_keeps_it():
    assert check_base_url("http://pacs-X/") == "http://pacs-X"
    assert parse_series_url("http://pacs-X/studies/1.2/series/3.4").base == "http://pacs-X"


def test_series_size_of_null_values():
    """DICOM JSON allows null in a Value array (an empty value): it counts as absent, not as the text 'None'."""
    null = {"vr": "US", "Value": [None]}
    size = series_size([image_meta("1", rows=4, cols=4, **{"00280010": null}),
                        image_meta("2", rows=2, cols=3, **{"00280008": null, "00280002": null, "00280100": null})])
    assert (size.voxels, size.bytes) == (6, 12)


def test_series_size_of_empty_values():
    """DICOM JSON allows an empty string for a number: no rows or columns is no pixels, and empty frames,
    samples or bits take their defaults (1 frame, 1 sample, 16 bits)."""
    empty = tag("IS", "")
    size = series_size([image_meta("1", rows=4, cols=4, **{"00280010": empty}),
                        image_meta("2", rows=4, cols=4, **{"00280011": empty}),
                        image_meta("3", rows=2, cols=3, **{"00280008": empty, "00280002": empty, "00280100": empty})])
    assert (size.voxels, size.bytes) == (6, 12)


def test_an_instance_that_is_not_a_dicom_file_is_one_line_and_nothing_kept(pacs, private_tmp):
    """A PACS that sends a data set without the DICOM file header (no preamble, no DICM)."""
    data = _ct_bytes()[0]
    url = _serve_series(pacs, [data])
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.instance(f"/studies/{STUDY}/series/{SER}/instances/{sop}", data[132:])
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30)
    msg = str(e.value)
    assert msg.startswith(f"{url}: retrieving instance 1 of 1 (WADO-RS) failed (InvalidDicomError: ")
    assert "\n" not in msg
    assert list(private_tmp.iterdir()) == []


def _one_instance(pacs, data: bytes, rows: int = 2, cols: int = 2) -> SeriesURL:
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    return _serve_series(pacs, [data], [image_meta(sop, rows=rows, cols=cols)])


@pytest.mark.parametrize("over", [0, 1])
def test_what_a_pacs_may_send_is_the_announced_pixels_plus_64_kib_of_header_an_instance(pacs, tmp_path, over):
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    folder = tmp_path / "probe"
    fetch_series(url, folder, max_voxels=2**30, max_bytes=2**30)
    written = (folder / "00000.dcm").stat().st_size  # the file as it lands on disk
    max_bytes = written - 64 * 2**10 - over  # 2 x 2 pixels announced: well under
    if over:
        with pytest.raises(DicomWebError, match="sent more than"):
            fetch_series(url, tmp_path / "s", max_voxels=2**30, max_bytes=max_bytes)
    else:
        assert (fetch_series(url, tmp_path / "s", max_voxels=2**30, max_bytes=max_bytes) / "00000.dcm").is_file()


def test_the_oversend_message_in_kib(pacs, private_tmp):
    ds = pydicom.dcmread(io.BytesIO(_ct_bytes()[0]))
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(1024 * 1024 * 2)  # 2 MiB sent where 2 x 2 pixels were announced
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    url = _one_instance(pacs, buf.getvalue())
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=int(0.6 * 2**20))
    assert str(e.value) == (f"{url}: instance 1 of 1 (SOPInstanceUID {ds.SOPInstanceUID}) is larger than the 682 KiB "
                            "allowed, the rest of the series' budget (MEDSEG_MAX_UPLOAD_MB 614 KiB plus 64 KiB of "
                            "header an instance); the PACS declared 2049 KiB; download stopped, nothing kept")


@pytest.mark.parametrize("damage, said", [
    ("nested_100k", "(the PACS sent a data set nested too deep to read)"),
    ("sequence_never_closed", "retrieving instance 1 of 1 (WADO-RS) failed (OSError: No tag to read"),
    ("delimiter_at_top_level", "writing instance 1 of 1 the PACS sent failed (NotImplementedError: "),
])
def test_a_damaged_instance_from_the_pacs_is_one_line_and_nothing_kept(pacs, private_tmp, damage, said):
    """pydicom (inside dicomweb-client) raised RecursionError, OSError or NotImplementedError on these: they
    escaped fetch_series, so `medseg segment http://pacs/...` printed a traceback and the label server a 500."""
    import struct

    from tests.hostile import dicom_bytes as db

    data = _ct_bytes()[0]
    extra = {"nested_100k": db.nested_undefined(100_000),
             "sequence_never_closed": struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0\xff\xff\xff\xff" + db.ITEM,
             "delimiter_at_top_level": db.SEQ_END}[damage]
    url = _one_instance(pacs, data, rows=256, cols=256)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.instance(f"/studies/{STUDY}/series/{SER}/instances/{sop}", db.insert_before_pixels(data, extra))
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30)
    assert str(e.value).startswith(f"{url}: ") and said in str(e.value) and "\n" not in str(e.value)
    assert list(private_tmp.iterdir()) == []


# --- a PACS that sends too much, or too slowly: bounded before anything holds the answer ------------------
HUGE = 256 * 2**20  # what the hostile answers below would send in all
ZEROS = bytes(2**20)


def _multipart_head(pixel_bytes: int = HUGE) -> bytes:
    """The start of a multipart answer: a real CT slice whose PixelData says ``pixel_bytes`` follow."""
    ds = pydicom.dcmread(io.BytesIO(_ct_bytes()[0]))
    ds.PixelData = b""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # explicit VR little endian: PixelData last, its length last
    dicom = buf.getvalue()
    assert dicom[-12:-4] == b"\xe0\x7f\x10\x00OW\0\0"
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dicom[:-4]
            + pixel_bytes.to_bytes(4, "little"))


def _body(total: int):
    """A multipart answer with one instance of ``total`` pixel bytes, in 1 MiB pieces (never held whole)."""
    yield _multipart_head(total)
    for _ in range(total // len(ZEROS)):
        yield ZEROS
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _gzip_body(total: int) -> bytes:
    """``_body(total)`` gzipped (256 MiB -> ~250 KiB), made without holding it."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(z.compress(piece) for piece in _body(total)), z.flush()])


def _send_huge(how: str, total: int = HUGE) -> Callable:
    """An instance answer with ``total`` bytes of pixel data: ``declared`` (an honest Content-Length),
    ``chunked`` (no length), ``close`` (no length, the end is the connection's end), ``lying``
    (Content-Length 1000, then chunked), ``gzip`` (Content-Encoding: gzip, ~250 KiB on the wire)."""
    chunked = how in ("chunked", "lying")

    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.protocol_version = "HTTP/1.1" if chunked else "HTTP/1.0"
        h.send_response(200)
        h.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        if how == "gzip":
            body = _gzip_body(total)
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if how == "declared":
            h.send_header("Content-Length", str(sum(len(piece) for piece in _body(total))))
        if how == "lying":
            h.send_header("Content-Length", "1000")
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for piece in _body(total):
            if chunked:
                h.wfile.write(b"%x\r\n" % len(piece))
            h.wfile.write(piece)
            if chunked:
                h.wfile.write(b"\r\n")
        if chunked:
            h.wfile.write(b"0\r\n\r\n")
    return answer


def _peak_python_bytes(fn) -> tuple[int, float]:
    """Peak bytes Python held while ``fn`` ran (tracemalloc: every bytes object requests, urllib3 and
    dicomweb-client make is counted) and the CPU seconds this process spent meanwhile (the client and the fake
    PACS's threads: bytes read or sent cost CPU; the wall clock was the figure until session 25, and a niced
    xdist worker on CI's loaded cores may wait several times its CPU for it)."""
    tracemalloc.start()
    t = time.process_time()
    try:
        fn()
    finally:
        seconds = time.process_time() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, seconds


def _refusals(url: SeriesURL, max_bytes: int) -> tuple[list[str], int, float]:
    """Fetch a series that must be refused: the error lines, the peak of Python's memory and the CPU seconds."""
    errors = []

    def fetch():
        with pytest.raises(DicomWebError) as e:
            fetch_series(url, max_voxels=2**30, max_bytes=max_bytes)
        errors.append(str(e.value))

    peak, seconds = _peak_python_bytes(fetch)
    return errors, peak, seconds


@pytest.mark.parametrize("how", ["declared", "chunked", "close", "lying", "gzip"])
def test_a_huge_instance_is_refused_in_one_line_with_memory_bounded(pacs, private_tmp, how):
    """A 256 MiB instance where the metadata announced 2 x 2 pixels, under a 1 MiB series limit. Before,
    requests read the whole answer into memory (and dicomweb-client copied it twice) before the size
    check on the written file: ~0.5-1 GiB held, in seconds, and a hostile PACS could send any size."""
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.streams[f"/studies/{STUDY}/series/{SER}/instances/{sop}"] = _send_huge(how)
    errors, peak, seconds = _refusals(url, max_bytes=2**20)
    declared = "the PACS declared 256 MiB" if how == "declared" else "the PACS sent more"  # 256 MiB + 130 KiB
    assert errors == [f"{url}: instance 1 of 1 (SOPInstanceUID {sop}) is larger than the 1092 KiB allowed, the rest "
                      "of the series' budget (MEDSEG_MAX_UPLOAD_MB 1024 KiB plus 64 KiB of header an instance); "
                      f"{declared}; download stopped, nothing kept"]
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held for a 256 MiB answer"  # 2 x the cap and change
    assert seconds < 10 and list(private_tmp.iterdir()) == []


def test_an_instance_over_what_its_metadata_announced_is_stopped_at_the_header_allowance(pacs, private_tmp):
    """At the default 2 GiB limit the series' budget is no bound worth having: an instance may be what its
    metadata announced plus MAX_DICOM_HEADER_BYTES (32 MiB, the most header the readers accept)."""
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.streams[f"/studies/{STUDY}/series/{SER}/instances/{sop}"] = _send_huge("chunked", 320 * 2**20)
    errors, peak, seconds = _refusals(url, max_bytes=2048 * 2**20)
    assert errors == [f"{url}: instance 1 of 1 (SOPInstanceUID {sop}) is larger than the 32 MiB allowed, what its "
                      "metadata announced (8 bytes of pixels) plus 32 MiB of header; the PACS sent more; download "
                      "stopped, nothing kept"]
    assert peak < 80 * 2**20, f"{peak / 2**20:.0f} MiB held for a 320 MiB answer"  # the 32 MiB cap, twice
    assert seconds < 20 and list(private_tmp.iterdir()) == []


def test_a_huge_metadata_answer_is_refused_in_one_line(pacs, private_tmp, monkeypatch):
    monkeypatch.setattr("data.dicomweb.MAX_JSON_BYTES", 2**20)

    def metadata(h):
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        item = b'{"00080018": {"vr": "UI", "Value": ["1.2.3"]}},' * 20_000  # ~1 MiB a chunk
        for _ in range(64):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(item), item))

    pacs.streams[f"/studies/{STUDY}/series/{SER}/metadata"] = metadata
    url = SeriesURL(pacs.base, STUDY, SER)
    errors, peak, _ = _refusals(url, max_bytes=2**30)
    assert errors == [f"{url}: the PACS's answer is larger than the 1024 KiB allowed while reading the series metadata "
                      "(WADO-RS) (the PACS sent more); stopped, nothing kept"]
    assert peak < 8 * 2**20 and list(private_tmp.iterdir()) == []


def test_a_series_of_more_instances_than_allowed_is_refused_before_any(pacs, private_tmp):
    url = _serve_series(pacs, _ct_bytes())
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30, max_instances=2)
    assert str(e.value) == (f"{url}: 3 instances is more than the limit of 2 (raise MEDSEG_MAX_UPLOAD_FILES); "
                            "nothing was downloaded")
    assert pacs.paths() == [f"/studies/{STUDY}/series/{SER}/metadata"] and list(private_tmp.iterdir()) == []
    assert len(list(fetch_series(url, max_voxels=2**30, max_bytes=2**30, max_instances=3).iterdir())) == 3


def test_an_instance_that_drips_is_stopped_after_the_timeout(pacs, private_tmp):
    """A PACS that sends a byte every 50 ms never stays silent for the timeout, so requests waits for the
    whole answer; after the first timeout's seconds an answer must average 64 KiB/s."""
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID

    def drip(h):
        h.send_response(200)
        h.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        h.end_headers()
        body = _multipart_head()
        for i in range(300):  # 15 s in all
            h.wfile.write(body[i:i + 1])
            h.wfile.flush()
            time.sleep(0.05)

    pacs.streams[f"/studies/{STUDY}/series/{SER}/instances/{sop}"] = drip
    t = time.monotonic()
    with pytest.raises(DicomWebError) as e:
        fetch_series(url, max_voxels=2**30, max_bytes=2**30, timeout=0.5)
    assert time.monotonic() - t < 12  # stopped, not the drip's 15 s (or more: its sleeps); 5 s until session 25
    assert re.fullmatch(rf"{re.escape(str(url))}: the PACS sent only \d+ bytes in 1 s while retrieving instance 1 of "
                        r"1 \(WADO-RS\); stopped \(is the PACS overloaded\?\)", str(e.value)), str(e.value)
    assert list(private_tmp.iterdir()) == []


def test_the_ui_refuses_a_huge_pacs_instance_in_one_line_and_keeps_the_open_study(pacs, tmp_path, monkeypatch):
    """The UI's "Open from PACS" at the default limits (2 GiB, 10,000 instances): the CT the session has open
    stays open, its folder gets nothing, and the user reads one line naming the series and the instance."""
    from app import controller
    from app.controller import AppContext, sample_studies
    from app.interaction import ModelRunner, Prefetcher
    from app.pacs import open_series
    from app.session import SessionStore
    from app.settings import get_settings

    for name in ("MEDSEG_MAX_UPLOAD_MB", "MEDSEG_MAX_UPLOAD_FILES", "MEDSEG_MAX_VOXELS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    runner = ModelRunner("cpu")
    ctx = AppContext(SessionStore(tmp_path / "sessions"), runner, Prefetcher(runner, radius=0))
    ct_name = next(iter(sample_studies()))
    sid = controller.start(ctx, None, None, ct_name).session_id
    session = ctx.store.get(sid)
    before = session.volume
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.streams[f"/studies/{STUDY}/series/{SER}/instances/{sop}"] = _send_huge("chunked", 320 * 2**20)
    errors = []

    def open_it():
        with pytest.raises(DicomWebError) as e:
            open_series(ctx, sid, str(url))
        errors.append(str(e.value))

    peak, seconds = _peak_python_bytes(open_it)
    get_settings.cache_clear()
    assert errors == [f"{url}: instance 1 of 1 (SOPInstanceUID {sop}) is larger than the 32 MiB allowed, what its "
                      "metadata announced (8 bytes of pixels) plus 32 MiB of header; the PACS sent more; download "
                      "stopped, nothing kept"]
    assert peak < 80 * 2**20 and seconds < 20
    assert ctx.store.get(sid).volume is before and before.num_slices == 12
    assert list((session.directory / "pacs").iterdir()) == []


def test_bytes_after_a_short_content_length_are_never_read(pacs, tmp_path):
    """A keep-alive PACS that declares an instance's true length and then sends 256 MiB more: only the
    declared bytes are read, the series opens as sent, the connection with unread bytes is not reused
    (urllib3 drops it), and memory stays small. Held before the cap too (HTTP framing): a guard."""
    files = _ct_bytes()[:2]
    url = _serve_series(pacs, files)
    sop = pydicom.dcmread(io.BytesIO(files[0])).SOPInstanceUID
    path = f"/studies/{STUDY}/series/{SER}/instances/{sop}"
    _, ctype, body = pacs.answers[("GET", path)]

    def lie(h):
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        for _ in range(256):
            h.wfile.write(ZEROS)

    pacs.streams[path] = lie
    folders = []
    peak, seconds = _peak_python_bytes(lambda: folders.append(
        fetch_series(url, tmp_path / "s", max_voxels=2**30, max_bytes=2**30)))
    assert [(folders[0] / f"{n:05d}.dcm").read_bytes() for n in range(2)] == files
    assert peak < 8 * 2**20 and seconds < 10


def test_the_cli_refuses_a_huge_pacs_instance_in_one_line(pacs, private_tmp, monkeypatch, capsys):
    """`medseg info SERIES_URL` at the default limits against a 320 MiB instance announced as 2 x 2 pixels:
    exit 2, one line on stderr naming the instance, nothing left in the temp folder, < 80 MiB held."""
    from app.cli import main
    from app.settings import get_settings

    for name in ("MEDSEG_MAX_UPLOAD_MB", "MEDSEG_MAX_UPLOAD_FILES", "MEDSEG_MAX_VOXELS", "MEDSEG_ISOLATE_READS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    data = _ct_bytes()[0]
    url = _one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    pacs.streams[f"/studies/{STUDY}/series/{SER}/instances/{sop}"] = _send_huge("chunked", 320 * 2**20)
    assert main(["info", f"{pacs.base}/studies/9/series/9"]) == 2  # a 404 first: the CLI's imports are done
    capsys.readouterr()
    codes = []
    peak, seconds = _peak_python_bytes(lambda: codes.append(main(["info", str(url)])))
    get_settings.cache_clear()
    err = capsys.readouterr().err.strip()
    assert codes == [2] and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"instance 1 of 1 (SOPInstanceUID {sop}) is larger than the 32 MiB allowed" in err
    assert peak < 80 * 2**20 and seconds < 20
    assert [p.name for p in private_tmp.iterdir() if p.name.startswith("medseg")] == []  # torch's caches aside
