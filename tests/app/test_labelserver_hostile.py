"""Hostile requests to `medseg labelserver` that never reach the model: each is one 400 naming the field or
the client's file, nothing is stored, and the server keeps answering. (The real-model flows are in
``test_labelserver.py``; these run on a fake segmenter in a second.)"""

from __future__ import annotations

import contextlib
import json
import re
import time
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from starlette.testclient import TestClient

from app.labelserver.datastore import Sessions, StudiesDir
from app.labelserver.server import ServerConfig, build_app
from data.readers import StudyError
from tests.conftest import DATA

GRID = (4, 32, 32)  # k, j, i


class NoModel:
    name = "no-model"

    def embed(self, *args, **kw):
        raise AssertionError("a refused request reached the model")

    predict = embed


@pytest.fixture()
def served(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, GRID).astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(studies / "ct.nii.gz"))
    cfg = ServerConfig(model="litemedsam", segmenter=NoModel(), backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
    with TestClient(build_app(cfg), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client, studies, tmp_path / "sessions"


@pytest.mark.parametrize("model, params, fragment", [
    ("litemedsam", '{"foreground": [[Infinity, 1, 1]]}', "params.foreground: expected a list of voxel indices"),
    ("litemedsam", '{"roi": [0, Infinity, 0, 5, 0, 1]}', "params.roi: expected [i0, i1, j0, j1, k0, k1]"),
    ("litemedsam", '{"foreground": [[1, 1, 1]], "slice": -Infinity}', "params.slice: expected a slice index"),
    ("litemedsam_points", '{"points": [[1, 1, 1]], "point_labels": [null]}', "params.point_labels: one 0"),
    ("litemedsam_points", '{"points": [[1, 1, 1]], "point_labels": 5}', "params.point_labels: one 0"),
    ("litemedsam_points", '{"points": [[1, 1, 1]], "point_labels": ["x"]}', "params.point_labels: one 0"),
    ("litemedsam_points", '{"points": [[1, 1, 1]], "label_prompt": [Infinity]}', "params.label_prompt: expected"),
    ("litemedsam_3d", '{"foreground": [[1, 1, 1]], "max_slices": Infinity}', "params.max_slices: expected"),
])
def test_params_that_are_no_finite_numbers_are_400_naming_the_field(served, model, params, fragment):
    """Python's json reads NaN/Infinity literals; int(inf) raised OverflowError, a plain 500 before."""
    client, _, _ = served
    r = client.post(f"/infer/{model}?image=ct&output=json", files={"params": (None, params)})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(fragment), r.json()
    assert client.get("/info/").status_code == 200


def test_the_servers_own_refusals_are_json_naming_the_fault(served):
    """A form of too many parts, a multipart body without its boundary, a wrong method or path answered text/plain
    (`Too many files. Maximum number of files is 4.`), where MONAI Label (FastAPI) answers {"detail": ...}, which its
    clients show: they showed nothing (session 24). Same words and status, as JSON; a 405 keeps its Allow header."""
    client, studies, _ = served
    image = (studies / "ct.nii.gz").read_bytes()
    for r, status, detail in (
        (client.post("/infer/litemedsam?image=ct", files=[("file", ("a.nii.gz", image))] * 5), 400,
         "Too many files. Maximum number of files is 4."),
        (client.post("/infer/litemedsam?image=ct", content=b"abc", headers={"content-type": "multipart/form-data"}),
         400, "Missing boundary in multipart."),
        (client.get("/infer/litemedsam"), 405, "Method Not Allowed"),
        (client.get("/no/such/route"), 404, "Not Found"),
    ):
        assert (r.status_code, r.headers["content-type"], r.json()) == (status, "application/json",
                                                                         {"detail": detail}), r.text
    assert client.get("/infer/litemedsam").headers["allow"] == "POST"


def test_a_roi_without_area_is_400_not_an_empty_label(served):
    """Session 22: roi [3, 3, 2, 8, 0, 1] (one column wide, rounded to voxels) was answered with an empty label."""
    client, _, _ = served
    r = client.post("/infer/litemedsam?image=ct&output=json", files={"params": (None, '{"roi": [3, 3, 2, 8, 0, 1]}')})
    assert r.status_code == 400, r.text
    assert "box 3 2 3 8 has no area: a box needs x0 < x1 and y0 < y1" in r.json()["detail"], r.json()


@pytest.mark.parametrize("expiry", ["nan", "inf", "-5", "soon", "1e300", "1209601"])
def test_a_session_expiry_that_is_no_duration_is_refused_and_creates_nothing(served, expiry):
    """expiry=nan made a session that never expired (and answered 'cannot convert float NaN to integer'),
    expiry=inf a 500 after the session was made. expiry=1e300 (or a year) made a session that kept the patient's
    image on the server's disk for good, where the UI's sessions go after MEDSEG_SESSION_TTL_HOURS (session 24)."""
    client, studies, sessions = served
    r = client.put(f"/session/?expiry={expiry}", files={"files": ("x.nii.gz", (studies / "ct.nii.gz").read_bytes())})
    assert r.status_code == 400 and r.json()["detail"] == (
        f"expiry={expiry!r}: expected seconds from 0 (the default, 3600) to 1209600 (MEDSEG_SESSION_TTL_HOURS, 336 h):"
        " a session keeps its image on the server until it expires")
    assert not any(sessions.iterdir())
    r = client.put("/session/?expiry=1209600", files={"files": ("x.nii.gz", (studies / "ct.nii.gz").read_bytes())})
    assert r.status_code == 200 and r.json()["session_info"]["expiry"] == 1209600


class Square:
    """A model that answers every prompt with a 4 x 4 square (the session tests need a result, not a model)."""

    name = "square"

    def embed(self, rgb):
        return SimpleNamespace(features=None, extras={}, shape=rgb.shape[:2])

    def predict(self, embedding, prompts, multimask_output=False):
        mask = np.zeros(embedding.shape, bool)
        mask[2:6, 2:6] = True
        return SimpleNamespace(best_mask=mask)


def test_infer_calls_carrying_their_image_leave_other_viewers_sessions_alone(tmp_path):
    """Each POST /infer carrying its image made a session (kept 60 s) and the server kept the newest 16: 16 such calls
    took away the images other viewers had uploaded (PUT /session/), who then got 'session ... not found (expired?)'
    an hour before it expired (session 23). Now the carried image is a temporary of its request, sessions go only when
    they expire or are deleted (as MONAI Label's), and a new one when every slot is live is a 429 naming the limit."""
    studies = tmp_path / "studies"
    studies.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(GRID, np.int16)), str(studies / "ct.nii.gz"))
    image = (studies / "ct.nii.gz").read_bytes()
    root = tmp_path / "sessions"
    cfg = ServerConfig(model="litemedsam", segmenter=Square(), backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(root, max_sessions=2), work_dir=tmp_path / "work")
    with TestClient(build_app(cfg), base_url="http://localhost", raise_server_exceptions=False) as client:
        def put(expiry: str = ""):
            return client.put(f"/session/{expiry}", files={"files": ("mine.nii.gz", image)})

        mine = [put().json()["session_id"] for _ in range(2)]
        for _ in range(3):  # another client's load: each call with its image
            r = client.post("/infer/litemedsam?output=json", files={"file": ("theirs.nii.gz", image),
                                                                     "params": (None, '{"foreground": [[3, 3, 1]]}')})
            assert r.status_code == 200 and r.json()["slice"] == 1, r.text
        for sid in mine:
            assert client.get(f"/session/{sid}").status_code == 200
            r = client.post(f"/infer/litemedsam?session_id={sid}&output=json",
                            files={"params": (None, '{"foreground": [[3, 3, 1]]}')})
            assert r.status_code == 200, r.text
        assert sorted(p.name for p in root.iterdir()) == sorted(mine)  # no temporary left behind
        r = put()
        assert r.status_code == 429 and re.fullmatch(
            r"the server holds 2 sessions, its limit of 2, each used in the last 600 s: delete one no longer needed "
            r"\(DELETE session/ID\), or try again when the next frees \(in (5\d\d|600) s\); an image can also go "
            r"with its infer request \(POST /infer with a 'file' part\), which keeps no session",
            r.json()["detail"]), r.text
        assert sorted(p.name for p in root.iterdir()) == sorted(mine)
        assert client.delete(f"/session/{mine[0]}").status_code == 200
        assert put("?expiry=0.05").status_code == 200
        time.sleep(0.1)  # an expired session's slot is free again
        assert put().status_code == 200 and client.get(f"/session/{mine[1]}").status_code == 200


@contextlib.contextmanager
def _two_slot_server(tmp_path):
    """A label server with room for two sessions, and the bytes of a study to upload: (client, sessions, image)."""
    studies = tmp_path / "studies"
    studies.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(GRID, np.int16)), str(studies / "ct.nii.gz"))
    sessions = Sessions(tmp_path / "sessions", max_sessions=2)
    cfg = ServerConfig(model="litemedsam", segmenter=Square(), backend="torch", datastore=StudiesDir(studies),
                       sessions=sessions, work_dir=tmp_path / "work")
    with TestClient(build_app(cfg), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client, sessions, (studies / "ct.nii.gz").read_bytes()


def test_a_session_unused_for_ten_minutes_makes_room_for_a_new_one(tmp_path):
    """With every slot live, a new upload was refused (429) although one viewer had left an hour ago: an annotator
    opening a seventeenth image within the hour was refused for the sixteen before it. The session unused longest
    gives its slot, once unused for 10 minutes; one used since keeps its own."""
    with _two_slot_server(tmp_path) as (client, sessions, image):
        def put():
            return client.put("/session/", files={"files": ("mine.nii.gz", image)})

        left, working = (put().json()["session_id"] for _ in range(2))
        sessions.get(left).last_used = time.time() - 601  # its viewer left ten minutes ago
        assert client.get(f"/session/{working}").status_code == 200
        new = put()
        assert new.status_code == 200, new.text
        assert client.get(f"/session/{left}").status_code == 404
        assert client.get(f"/session/{working}").status_code == 200
        assert put().status_code == 429  # the two left were both used just now


def test_a_refused_upload_costs_no_idle_session(tmp_path):
    """With every slot taken and one session idle for ten minutes, an upload that is then refused (a text file
    named .nii.gz) freed the idle session's slot before it was read: 400 for the upload, and the viewer who came back
    to the idle session got 404 'session ... not found (expired?)' (session 24). The slot is freed only for an
    upload that was read."""
    with _two_slot_server(tmp_path) as (client, sessions, image):
        idle, working = (client.put("/session/", files={"files": ("mine.nii.gz", image)}).json()["session_id"]
                         for _ in range(2))
        sessions.get(idle).last_used = time.time() - 601
        r = client.put("/session/", files={"files": ("bad.nii.gz", b"not an image")})
        assert r.status_code == 400 and r.json()["detail"].startswith("bad.nii.gz: not a readable NIfTI file"), r.text
        assert client.get(f"/session/{idle}").status_code == 200
        assert client.get(f"/session/{working}").status_code == 200
        assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == sorted([idle, working])


def _label_put(client, name: str, data: bytes):
    return client.put("/datastore/label?image=ct&tag=final", files={"label": (name, data)})


def test_a_4d_label_is_refused_not_folded_onto_the_grid(served, tmp_path):
    """A (i, j, k, t) label whose (t, k, j) matched the image's (k, j, i) was read as (t, k, j, i), its last
    axis folded away by max(): saved as the image's label, geometry unchecked (200 before)."""
    client, studies, _ = served
    k, j, i = GRID
    data = np.zeros((5, i, j, k), np.uint8)  # nibabel (i, j, k, t) = (5, 32, 32, 4): ITK's (t, k, j, i) = (4, 32, 32, 5)
    data[2, 3, 3, :] = 1
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "l4.nii.gz")
    r = _label_put(client, "my label.nii.gz", (tmp_path / "l4.nii.gz").read_bytes())
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "my label.nii.gz: a 4D NIfTI of size (5, 32, 32, 4); expected a 2D or 3D image (one volume)"
    assert not (studies / "labels").exists()


def test_label_errors_name_the_clients_file_and_a_good_label_is_saved(served, tmp_path):
    client, studies, _ = served
    r = _label_put(client, "liver.nii.gz", b"not an image")
    assert r.status_code == 400 and r.json()["detail"].startswith("liver.nii.gz: not a readable NIfTI file (damaged gzip")
    wrong = sitk.Image(32, 32, 5, sitk.sitkUInt8)
    sitk.WriteImage(wrong, str(tmp_path / "wrong.nii.gz"))
    r = _label_put(client, "liver.nii.gz", (tmp_path / "wrong.nii.gz").read_bytes())
    assert r.json()["detail"] == "liver.nii.gz: label grid (5, 32, 32) (k, j, i) differs from the image's (4, 32, 32)"
    arr = np.zeros(GRID, np.uint8)
    arr[1, 5:9, 6:10] = 3
    good = sitk.GetImageFromArray(arr)
    good.CopyInformation(sitk.ReadImage(str(studies / "ct.nii.gz")))
    sitk.WriteImage(good, str(tmp_path / "good.nii.gz"))
    r = _label_put(client, "liver.nii.gz", (tmp_path / "good.nii.gz").read_bytes())
    assert r.status_code == 200, r.text
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(studies / "labels" / "final" / "ct.nii.gz")))
    np.testing.assert_array_equal(saved, arr)
    assert json.loads(client.get("/datastore/?output=stats").text)["completed"] == 1


def _detached(secret, n: int, key: str = "data file", blank: bool = True) -> bytes:
    return (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {n} 1 1\nencoding: raw\n{key}: {secret}\n"
            + ("\n" if blank else "")).encode()


@pytest.mark.parametrize("key, blank", [("data file", True), ("datafile", True), ("data file", False)])
def test_an_nrrd_upload_cannot_read_another_file_of_the_server(served, tmp_path, key, blank):
    """A detached NRRD header (data file: /path) made ITK read any file the server may read as the voxels:
    PUT /datastore/?image=leak then GET /datastore/image?image=leak returned the file's bytes (200)."""
    client, studies, sessions = served
    secret = tmp_path / "other_patient.raw"
    secret.write_bytes(b"secret-patient-data-0123456789")
    header = _detached(secret, secret.stat().st_size, key, blank)
    r = client.put("/datastore/?image=leak", files={"file": ("leak.nrrd", header)})
    assert r.status_code == 400 and r.json()["detail"].startswith("leak.nrrd: "), r.text
    assert client.get("/datastore/image?image=leak").status_code == 404
    assert not list(studies.glob("*leak*"))
    r = client.put("/session/", files={"files": ("volume.nrrd", header)})
    assert r.status_code == 400 and r.json()["detail"].startswith("volume.nrrd: ") and not any(sessions.iterdir())
    r = _label_put(client, "ct.seg.nrrd", header)
    assert r.status_code == 400 and r.json()["detail"].startswith("ct.seg.nrrd: ")
    assert not (studies / "labels").exists()


def test_a_label_is_read_only_as_nifti_or_nrrd(served, tmp_path):
    """A label named x.mha went to ITK's MetaImage reader, whose ElementDataFile reads any file: it was saved as
    the image's final label and served back by GET /datastore/label (200)."""
    client, studies, _ = served
    secret = tmp_path / "other_patient.raw"
    secret.write_bytes(bytes(range(1, 33)) * 32)  # 32 x 32 bytes: the image's (j, i) plane
    mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 32 32 4\nElementType = MET_UCHAR\n"
           f"ElementDataFile = {secret}\n").encode()
    r = _label_put(client, "x.mha", mha)
    assert r.status_code == 400 and r.json()["detail"] == "x.mha: expected a .nii.gz, .nii or .nrrd (.seg.nrrd) label image"
    assert client.get("/datastore/label?image=ct&tag=final").status_code == 404


def test_a_self_contained_nrrd_still_uploads(served, tmp_path):
    client, _, _ = served
    arr = np.arange(4 * 32 * 32, dtype=np.int16).reshape(GRID)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ok.nrrd"))
    r = client.put("/datastore/?image=ok", files={"file": ("ok.nrrd", (tmp_path / "ok.nrrd").read_bytes())})
    assert r.status_code == 200, r.text
    got = client.get("/datastore/image?image=ok")
    (tmp_path / "got.nii.gz").write_bytes(got.content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "got.nii.gz"))), arr)


def test_an_upload_under_a_studys_id_never_replaces_the_study(served, tmp_path):
    """PUT /datastore/?image=ct (Slicer names an upload after its volume node: 'ct' of another patient) deleted
    ct.nii.gz from --studies and put the upload in its place: 200, and the label saved for ct then lay on an image it
    was not drawn on (session 24). Now 409 naming the study and its labels, the study's file untouched; the same image
    uploaded again (a viewer's re-upload, as NRRD) is 200 and keeps the study's own file."""
    client, studies, _ = served
    original = (studies / "ct.nii.gz").read_bytes()
    study = sitk.ReadImage(str(studies / "ct.nii.gz"))
    label = sitk.GetImageFromArray(np.ones(GRID, np.uint8))
    label.CopyInformation(study)
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    assert _label_put(client, "label.nii.gz", (tmp_path / "label.nii.gz").read_bytes()).status_code == 200
    other = sitk.GetImageFromArray(np.zeros(GRID, np.int16))  # another patient: same size, placed elsewhere
    sitk.WriteImage(other, str(tmp_path / "ct.nii.gz"))
    for url in ("/datastore/?image=ct", "/datastore/"):  # by the id, or by the file name
        r = client.put(url, files={"file": ("ct.nii.gz", (tmp_path / "ct.nii.gz").read_bytes())})
        assert r.status_code == 409 and r.json()["detail"] == (
            "image 'ct' is already in the datastore (ct.nii.gz, labelled: final) and this upload is another image "
            "(spacing (1, 1, 1) vs (0.8, 0.8, 2.5)); an upload never replaces a study: give it another id (?image=ID)")
    assert (studies / "ct.nii.gz").read_bytes() == original and sorted(p.name for p in studies.iterdir()) == [
        "ct.nii.gz", "labels"]
    sitk.WriteImage(study, str(tmp_path / "ct.nrrd"))
    r = client.put("/datastore/?image=ct", files={"file": ("ct.nrrd", (tmp_path / "ct.nrrd").read_bytes())})
    assert r.status_code == 200 and r.json() == {"image": "ct"}, r.text
    assert (studies / "ct.nii.gz").read_bytes() == original and not (studies / "ct.nrrd").exists()


def test_uploads_at_once_under_one_new_id_store_one_image_and_refuse_the_others(served, tmp_path):
    """Eight viewers uploading at once under one new id (?image=new) shared one staging file: each read the others'
    half-moved bytes, so good files were refused as `i0.nii.gz: not a readable NIfTI file`, and two could both be
    told 200 while one replaced the other (session 24). Now one is stored (200) and the others are 409, each naming
    its own difference; no staging file is left."""
    import threading

    client, studies, _ = served
    images = []
    for n in range(8):
        sitk.WriteImage(sitk.GetImageFromArray(np.full(GRID, n, np.int16)), str(tmp_path / f"i{n}.nii.gz"))
        images.append((tmp_path / f"i{n}.nii.gz").read_bytes())
    answers: list = [None] * 8
    start = threading.Barrier(8)

    def upload(n: int) -> None:
        start.wait()
        answers[n] = client.put("/datastore/?image=new", files={"file": (f"i{n}.nii.gz", images[n])})

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [409] * 7, [r.text for r in answers]
    stored = next(n for n, r in enumerate(answers) if r.status_code == 200)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(studies / "new.nii.gz"))).flat[0] == stored
    assert sorted(p.name for p in studies.iterdir()) == ["ct.nii.gz", "new.nii.gz"]


def test_a_lone_dicom_file_named_without_dcm_opens_as_a_session(served):
    """A single DICOM slice named as scanners name them (IM0001, or its SOPInstanceUID) was refused, `IM0001: expected
    a .nii.gz, .nii or .nrrd image, or DICOM files`, telling the client that sent one to send DICOM; several such
    files (a series) opened (session 24). Its DICM marker tells it; a text file so named is still refused."""
    client, _, _ = served
    dicom = (DATA / "dicom" / "ct_head_0051_series_k050-061" / "IM0001.dcm").read_bytes()
    r = client.put("/session/", files={"files": ("IM0001", dicom)})
    assert r.status_code == 200 and r.json()["session_info"]["name"] == "IM0001", r.text
    r = client.put("/session/", files={"files": ("IM0002", b"not DICOM" * 30)})
    assert r.status_code == 400 and r.json()["detail"] == (
        "IM0002: expected a .nii.gz, .nii or .nrrd image, or DICOM files"), r.text


def test_a_refused_series_upload_names_the_files_sent_not_the_servers_folder(served):
    """PUT /session/ of the real CT series less one slice said `c03ccc6f-...: 1 slice(s) missing between
    00004_IM0005.dcm (0.75 mm) and 00005_IM0007.dcm (3.75 mm) ...; ..., or pass --allow-uneven`: the server's folder
    (a uuid, like a session id), file names the client never sent, and a command-line flag (session 24)."""
    client, _, sessions = served
    series = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").glob("*.dcm"))
    r = client.put("/session/", files=[("files", (p.name, p.read_bytes())) for p in series if p.name != "IM0006.dcm"])
    assert r.status_code == 400 and r.json()["detail"] == (
        "the 11 files sent: 1 slice(s) missing between IM0005.dcm (0.75 mm) and IM0007.dcm (3.75 mm) (the other "
        "slices are 1.5 mm apart); add the missing file(s), open the complete series"), r.text
    r = client.put("/session/", files=[("files", ("a.dcm", b"x" * 200)), ("files", ("b.dcm", b"y" * 200))])
    assert r.status_code == 400 and r.json()["detail"].startswith("the 2 files sent: no DICOM image series"), r.text
    assert not any(sessions.iterdir())


def test_a_series_upload_with_a_nifti_among_its_files_is_refused_naming_it(served):
    """PUT /session/ of the real CT series and a NIfTI: the series opened (200) and the NIfTI was left out, told in
    the server's log only; the client saw a session of the series, as if all it sent were in it (session 24's pass)."""
    client, _, sessions = served
    series = sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").glob("*.dcm"))
    nifti = nib.Nifti1Image(np.zeros((32, 32, 4), np.int16), np.eye(4)).to_bytes()
    r = client.put("/session/", files=[*[("files", (p.name, p.read_bytes())) for p in series],
                                       ("files", ("scan.nii", nifti))])
    assert r.status_code == 400 and r.json()["detail"] == (
        "scan.nii: a .nii image among 13 files sent; expected one image alone, or DICOM files only (a series): "
        "send it in a request of its own"), r.text
    assert not any(sessions.iterdir())


def test_an_upload_of_two_series_is_refused_without_the_clis_series_flag(served):
    """PUT /session/ of the real CT series with pydicom's MR_small among its files: `the 13 files sent: holds 2 series,
    pick one with --series UID: ...`, a command-line flag no label-server client can pass (session 25)."""
    client, _, sessions = served
    files = [*sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").glob("*.dcm")),
             DATA / "dicom" / "pydicom_MR_small.dcm"]
    r = client.put("/session/", files=[("files", (p.name, p.read_bytes())) for p in files])
    assert r.status_code == 400 and r.json()["detail"].startswith(
        "the 13 files sent: holds 2 series; expected one: give the files of one series alone: "), r.text
    assert "--series" not in r.text and not any(sessions.iterdir())


@pytest.mark.parametrize("other", ["ct.nii", "ct"])
def test_two_images_of_one_id_in_studies_are_refused_not_one_hidden(served, tmp_path, other):
    """`ct.nii` (or a series folder `ct`) beside `ct.nii.gz` in --studies: the first in sorted order was served as
    `ct` and the other was invisible to every client, without a word at start (session 24's pass)."""
    client, studies, _ = served
    (studies / other).mkdir() if other == "ct" else sitk.WriteImage(sitk.Image(8, 8, 2, sitk.sitkInt16),
                                                                     str(studies / other))
    names = "ct and ct.nii.gz" if other == "ct" else "ct.nii and ct.nii.gz"
    said = f"{names} are both image 'ct'; expected one image per name: rename or move all but one"
    with pytest.raises(StudyError) as e:  # at the start: `medseg labelserver --studies` says it and stops
        StudiesDir(studies)
    assert str(e.value) == f"--studies {studies}: {said}"
    r = client.get("/datastore/image", params={"image": "ct"})  # appeared while it ran: refused, not one picked
    assert r.status_code == 400 and r.json()["detail"] == said, r.text


def test_a_studies_series_with_a_slice_missing_is_refused_without_the_clis_flag(served):
    """A series folder of --studies less one slice: `GET /datastore/image` said `...; add the missing file(s), open
    the complete series, or pass --allow-uneven`, a flag the label server does not have (nor its client); a PACS
    series read by the server said so too (session 24's pass)."""
    client, studies, _ = served
    (studies / "head").mkdir()
    for p in sorted((DATA / "dicom" / "ct_head_0051_series_k050-061").glob("*.dcm")):
        if p.name != "IM0006.dcm":
            (studies / "head" / p.name).write_bytes(p.read_bytes())
    r = client.get("/datastore/image", params={"image": "head"})
    assert r.status_code == 400 and r.json()["detail"].endswith(
        "1 slice(s) missing between IM0005.dcm (0.75 mm) and IM0007.dcm (3.75 mm) (the other slices are 1.5 mm "
        "apart); add the missing file(s), open the complete series"), r.text


def test_an_nrrd_with_sheared_space_directions_is_refused_like_a_nifti(served):
    """space directions (1,0.5,0) (0,1,0) (0,0,2): ITK kept the non-perpendicular axes and the session opened on
    a direction matrix that is no rotation (200); the NIfTI reader refuses shear."""
    client, _, sessions = served
    header = (b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 32 32 4\n"
              b"space directions: (1,0.5,0) (0,1,0) (0,0,2)\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    r = client.put("/session/", files={"files": ("sheared.nrrd", header + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400 and r.json()["detail"].startswith("sheared.nrrd: the NRRD's space directions are not "
                                                                  "perpendicular (shear)"), r.text
    assert not any(sessions.iterdir())


def test_an_image_upload_that_does_not_open_is_named_as_the_client_sent_it(served):
    """Before: `.scan.nii.gz.part.nii.gz: not a readable NIfTI file ...`, the server's staging name."""
    client, studies, _ = served
    r = client.put("/datastore/image?image=scan", files={"file": ("scan.nii.gz", b"not an image")})
    assert r.status_code == 400 and r.json()["detail"].startswith("scan.nii.gz: not a readable NIfTI file"), r.text
    assert ".part" not in r.text and not list(studies.glob("*scan*"))


NRRD_HEAD = ("NRRD0004\ntype: {type}\ndimension: 3\nspace: left-posterior-superior\nsizes: 32 32 4\n"
             "space directions: (0.8,0,0) (0,0.8,0) (0,0,2.5)\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n{extra}\n")


def test_nan_and_infinite_nrrd_voxels_become_finite_as_from_every_other_reader(tmp_path):
    """A float volume from 3D Slicer (an ADC or PET map, NaN outside the body) opened with its NaN and +Inf as they
    were: the model's min/max normalisation then made every pixel NaN. The NIfTI/DICOM readers' rule applies."""
    from data.readers import StudyWarning
    from app.labelserver.datastore import read_image_file

    values = np.random.default_rng(1).uniform(-5, 5, GRID).astype(np.float32)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "adc.nrrd"
    path.write_bytes(NRRD_HEAD.format(type="float", extra="").encode() + values.tobytes())
    with pytest.warns(StudyWarning, match=r"^adc.nrrd: 3 NaN/infinite voxels set to the finite minimum"):
        volume = read_image_file(path)
    finite = values[np.isfinite(values)]
    assert np.isfinite(volume.array).all()
    assert volume.array[0, 0, :3].tolist() == [finite.min(), finite.max(), finite.min()]
    np.testing.assert_array_equal(volume.array.ravel()[3:], values.ravel()[3:])


@pytest.mark.parametrize("units", ['"m" "m" "m"', '"um" "um" "um"', '"mm" "mm" "cm"'])
def test_an_nrrd_in_other_units_than_millimetres_is_refused_naming_the_field(served, units):
    """ITK ignores 'space units': an NRRD in metres opened 1000 times too small, and the label written back
    (a NIfTI in mm) lay a thousand times smaller than the image in every other viewer."""
    client, _, sessions = served
    header = NRRD_HEAD.format(type="short", extra=f"space units: {units}\n").encode()
    r = client.put("/session/", files={"files": ("metres.nrrd", header + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == f"metres.nrrd: space units {units}; expected millimetres (\"mm\") on every axis"
    assert not any(sessions.iterdir())
    mm = NRRD_HEAD.format(type="short", extra='space units: "mm" "mm" "mm"\n').encode()
    assert client.put("/session/", files={"files": ("mm.nrrd", mm + bytes(2 * 32 * 32 * 4))}).status_code == 200


def test_an_nrrd_whose_geometry_no_label_map_can_hold_is_refused(served):
    """space origin 1e300: the session opened, and the label written back (a NIfTI, float32) had an infinite origin."""
    client, _, sessions = served
    header = NRRD_HEAD.format(type="short", extra="").replace("space origin: (0,0,0)", "space origin: (1e300,0,0)")
    r = client.put("/session/", files={"files": ("far.nrrd", header.encode() + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400 and r.json()["detail"].startswith("far.nrrd: origin (1e+300, 0, 0) mm is more than "), r.text
    assert not any(sessions.iterdir())


def test_an_nrrd_without_geometry_or_with_values_past_float32_is_refused(served):
    """unu's plain NRRD (no space, space directions, spacings nor origin) opened at 1 x 1 x 1 mm, identity, as if
    measured, and its label was written back on that made-up grid; an NRRD of doubles holding 1e300 opened as stored,
    the viewer's float32 copy infinite (session 25's leftovers; hostile25b). uint64 past 2^63 opens: float32 holds
    it."""
    client, _, sessions = served
    bare = NRRD_HEAD.format(type="short", extra="")
    for line in ("space: left-posterior-superior\n", "space directions: (0.8,0,0) (0,0.8,0) (0,0,2.5)\n",
                 "space origin: (0,0,0)\n"):
        bare = bare.replace(line, "")
    said = ("bare.nrrd: no space directions (nor spacings): the voxels' size and where the image lies are not in the "
            "file (it would open at a guessed 1 x 1 x 1 mm); expected the geometry 3D Slicer writes: space, space "
            "directions and space origin")
    r = client.put("/session/", files={"files": ("bare.nrrd", bare.encode() + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400 and r.json()["detail"] == said, r.text
    label = bare.replace("type: short", "type: unsigned char").encode() + bytes(32 * 32 * 4)
    r = _label_put(client, "bare.nrrd", label)
    assert r.status_code == 400 and r.json()["detail"] == said, r.text
    values = np.zeros(GRID)
    values[1, 2, 3] = 1e300
    r = client.put("/session/", files={"files": ("huge.nrrd", NRRD_HEAD.format(type="double", extra="").encode()
                                                 + values.tobytes())})
    assert r.status_code == 400 and r.json()["detail"] == (
        "huge.nrrd: values 0 to 1e+300, past float32's range (+-3.4e+38), in which the viewer is sent the image (they "
        "would show as infinite); expected values a 32-bit float holds: rescale the image"), r.text
    assert not any(sessions.iterdir())
    big = np.full(GRID, 2**63 + 5, np.uint64)
    r = client.put("/session/", files={"files": ("u64.nrrd", NRRD_HEAD.format(type="unsigned long long", extra="")
                                                 .encode() + big.tobytes())})
    assert r.status_code == 200, r.text


GUESSED_NRRD_GEOMETRY = [  # (name, header line(s) changed, the refusal) of session 25's pass: each opened before (200)
    ("spaceunits", ("space origin: (0,0,0)", 'space origin: (0,0,0)\nspaceunits: "m" "m" "m"'),
     'spaceunits.nrrd: space units "m" "m" "m"; expected millimetres ("mm") on every axis'),
    ("none_axis", ("space directions: (0.8,0,0)", "space directions: none"),
     "none_axis.nrrd: space directions: axis 1 is 'none', but it is an axis of the image's grid; expected its "
     "direction in mm, e.g. (0,0.8,0) (its spacing would be guessed as 1 mm)"),
    ("long_axis", ("(0.8,0,0)", "(1e200,0,0)"),
     "long_axis.nrrd: space directions: axis 1 (1e200,0,0): expected a direction of finite numbers whose length, the "
     "spacing, is 1e-06 to 100000 mm"),
    ("nan_spacing", ("space directions: (0.8,0,0) (0,0.8,0) (0,0,2.5)\n", "spacings: nan nan 2.5\n"),
     "nan_spacing.nrrd: spacings nan nan 2.5: axis 1 has none (nan), but it is an axis of the image's grid; expected "
     "its spacing in mm (it would be guessed as 1 mm)"),
    ("left_handed", ("left-posterior-superior", "3D-left-handed"),
     "left_handed.nrrd: space 3D-left-handed: expected a patient space (left-posterior-superior, "
     "right-anterior-superior or left-anterior-superior); any other is read as left-posterior-superior, so where the "
     "image lies, and its left and right, would be guessed"),
    ("scanner", ("left-posterior-superior", "scanner-xyz"), "scanner.nrrd: space scanner-xyz: expected a patient space"),
]


@pytest.mark.parametrize("name, change, said", GUESSED_NRRD_GEOMETRY, ids=[c[0] for c in GUESSED_NRRD_GEOMETRY])
def test_an_nrrd_whose_geometry_itk_would_guess_is_refused_naming_the_field(served, name, change, said):
    """ITK's NRRD reader fills in what a header leaves out or cannot hold: an image axis whose direction is `none` or
    1e200 mm long, or whose spacing is nan, opened 1 mm thick; `spaceunits` (teem's other spelling of `space
    units`) passed the mm check, a metre image opened as mm; a `space` that is not the patient's was taken as
    left-posterior-superior (a left-handed frame then lies mirrored). Each opened a session (200); an image or a label
    (the same reader) is now refused naming the field (session 25)."""
    client, _, sessions = served
    header = NRRD_HEAD.format(type="short", extra="").replace(*change).encode()
    assert header != NRRD_HEAD.format(type="short", extra="").encode()
    r = client.put("/session/", files={"files": (f"{name}.nrrd", header + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400 and r.json()["detail"].startswith(said), r.text
    assert not any(sessions.iterdir())
    r = _label_put(client, f"{name}.nrrd", header.replace(b"type: short", b"type: unsigned char") + bytes(32 * 32 * 4))
    assert r.status_code == 400 and r.json()["detail"].startswith(said), r.text


@pytest.mark.parametrize("change, said", [
    (("kinds: domain domain domain", "kinds: domain domain"),
     "not a readable NRRD file (its kinds field 'domain domain': couldn't extract string for kind 3 of 3)"),
    (("sizes: 32 32 4", "sizes: 32 32"), "not a readable NRRD file (its sizes field '32 32': parsed 2 values, but "
                                         "dimension is 3)"),
    (("encoding: raw", "encoding: raw\nline skip: 50"), "not a readable NRRD file (hit EOF skipping line "),
])
def test_an_nrrd_itk_refuses_is_refused_with_its_reason_and_field(served, change, said):
    """Every header ITK refused was `x.nrrd: not a readable NRRD file`, naming neither the field nor the fault; a zero
    spacing was `the NRRD pixel data could not be read`, blaming the voxels (session 25)."""
    client, _, sessions = served
    head = NRRD_HEAD.format(type="short", extra="").replace("space origin", "kinds: domain domain domain\nspace origin")
    r = client.put("/session/", files={"files": ("x.nrrd", head.replace(*change).encode() + bytes(2 * 32 * 32 * 4))})
    assert r.status_code == 400 and r.json()["detail"].startswith(f"x.nrrd: {said}"), r.text
    assert "/" not in r.json()["detail"] and not any(sessions.iterdir())  # no server path in teem's words
    zero = NRRD_HEAD.format(type="short", extra="").replace("(0.8,0,0)", "(0,0,0)")
    r = client.put("/session/", files={"files": ("x.nrrd", zero.encode() + bytes(2 * 32 * 32 * 4))})
    assert r.json()["detail"].startswith("x.nrrd: space directions: axis 1 (0,0,0): expected a direction "), r.text


def _good_label(studies, tmp_path) -> bytes:
    arr = np.zeros(GRID, np.uint8)
    arr[1, 5:9, 6:10] = 1
    good = sitk.GetImageFromArray(arr)
    good.CopyInformation(sitk.ReadImage(str(studies / "ct.nii.gz")))
    sitk.WriteImage(good, str(tmp_path / "good.nii.gz"))
    return (tmp_path / "good.nii.gz").read_bytes()


def test_params_sent_as_a_file_part_is_400_not_500(served, tmp_path):
    """A client that sends ``params`` with a file name (a file part, as ``curl -F params=@p.json`` does) got a plain
    500 and a traceback in the log (``json.loads`` of an UploadFile raised TypeError) (session 18)."""
    client, studies, _ = served
    r = client.post("/infer/litemedsam?image=ct&output=json",
                    files={"params": ("p.json", b'{"foreground": [[1, 1, 1]]}', "application/json")})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "params: expected a form field of JSON text, not a file part"
    r = client.put("/datastore/label?image=ct&tag=final",
                   files={"label": ("liver.nii.gz", _good_label(studies, tmp_path)), "params": ("p.json", b"{}")})
    assert r.status_code == 400, r.text  # Starlette's own refusal here (one file allowed), as before
    assert not (studies / "labels").exists()
    assert client.get("/info/").status_code == 200


@pytest.mark.parametrize("idx", ["1e400", "-1e400"])
def test_a_label_info_index_past_any_number_is_left_out_not_a_500(served, tmp_path, idx):
    """Slicer's ``label_info`` with ``"idx": 1e400`` (Python's json reads it as infinity): int(inf) raised
    OverflowError, a plain 500, and the label was not saved. Names whose index is no whole number were already
    left out (the label is saved without them)."""
    client, studies, _ = served
    params = '{"label_info": [{"name": "liver", "idx": %s}, {"name": "spleen", "idx": 1}]}' % idx
    r = client.put("/datastore/label?image=ct&tag=final",
                   files={"label": ("liver.nii.gz", _good_label(studies, tmp_path)), "params": (None, params)})
    assert r.status_code == 200, r.text
    assert (studies / "labels" / "final" / "ct.nii.gz").is_file()


def test_label_names_from_params_take_only_whole_finite_indices():
    from app.labelserver.datastore import label_names_from_params

    info = [{"name": "a", "idx": float("inf")}, {"name": "b", "idx": float("nan")}, {"name": "c", "idx": "x"},
            {"name": "d", "idx": 2}, {"name": "e", "id": "3"}]
    assert label_names_from_params(info) == {2: "d", 3: "e"}


@pytest.mark.parametrize("name, shown", [("ct (1).nii.gz", "ct (1)"), ("scan\x1b[31m.nii.gz", "scan\x1b[31m"),
                                         ("ü.nii.gz", "ü")])
def test_an_image_upload_whose_name_is_no_image_id_is_400_naming_the_rule(served, name, shown):
    """A browser's second download (``ct (1).nii.gz``) or a name with a space, uploaded without ``?image=``, was
    answered 404 ``image 'ct (1)': unknown id``, as if the client had asked for an image the server lacks; the
    client could not tell that the name was the fault (session 18)."""
    client, studies, _ = served
    data = (studies / "ct.nii.gz").read_bytes()
    r = client.put("/datastore/image", files={"file": (name, data)})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == (f"image id {shown!r} (from the file name): letters, digits, '.', '-' and '_' only, "
                                  "at most 128; rename the file or give ?image=ID")
    r = client.put("/datastore/image?image=my%20scan", files={"file": ("ct.nii.gz", data)})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("image id 'my scan': letters, digits, '.', '-' and '_' only, at most 128; "
                                  "give another ?image=ID")
    assert sorted(p.name for p in studies.iterdir()) == ["ct.nii.gz"]
    r = client.put("/datastore/image", files={"file": ("ct_1.nii.gz", data)})
    assert r.status_code == 200 and r.json() == {"image": "ct_1"}
    assert client.get("/datastore/image?image=no%20such").status_code == 404  # a lookup stays a 404


def _slice_k(path, k: int, shift_mm=(0.0, 0.0, 0.0), scale: float = 1.0, affine=None):
    """Slice ``k`` of a real NIfTI as a 2D NIfTI (``dim[0]`` 2, as nibabel writes a 2D array) with the slice's own
    3D affine (the volume's, moved to slice k), optionally moved, scaled, or given another affine."""
    image = nib.load(str(path))
    plane = np.asanyarray(image.dataobj)[:, :, k]
    slice_affine = image.affine.copy()
    slice_affine[:3, 3] += k * slice_affine[:3, 2] + np.asarray(shift_mm)
    slice_affine[:3, :2] *= scale
    out = nib.Nifti1Image(plane, slice_affine if affine is None else affine)
    out.set_qform(out.affine, 1)
    out.set_sform(out.affine, 1)
    return out


SLICES_2D = {  # a real image and its label, and the slice taken: coronal (its 2 x 2 affine corner is singular), axial
    "ct_coronal": ("ct_head_0051_slabA_image.nii.gz", "ct_head_0051_slabA_label.nii.gz", 5),
    "colin27_axial": ("mr_t1_colin27_slabA_image.nii.gz", "mr_t1_colin27_slabA_label.nii.gz", 16),
}


@pytest.fixture(params=sorted(SLICES_2D))
def served_2d(tmp_path, request):
    """A label server whose datastore holds one slice of a real study (a 2D NIfTI with its 3D affine)."""
    from tests.conftest import DATA

    image, label, k = SLICES_2D[request.param]
    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(_slice_k(DATA / image, k), studies / "ct.nii.gz")
    cfg = ServerConfig(model="litemedsam", segmenter=NoModel(), backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
    with TestClient(build_app(cfg), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client, studies, (DATA / label, k)


@pytest.mark.parametrize("fault, kwargs, what", [
    ("moved 10 mm", {"shift_mm": (10.0, 0.0, 0.0)}, "origin"),
    ("pixels twice the size", {"scale": 2.0}, "spacing"),
    ("an identity affine (no place)", {"affine": np.eye(4)}, "spacing|origin"),
])
def test_a_2d_label_off_the_images_place_is_refused_as_a_3d_one_is(served_2d, tmp_path, fault, kwargs, what):
    """A 2D label (``dim[0]`` 2) was checked for its size only: one moved 10 mm, with pixels twice the size, or with
    no place at all, was saved as the image's label (200), while a 3D label with the same fault was refused
    (session 18). Its geometry is now the one medseg's NIfTI reader gives it (its 3D affine), checked alike."""
    client, studies, (label, k) = served_2d
    nib.save(_slice_k(label, k, **kwargs), tmp_path / "lab.nii.gz")
    r = _label_put(client, "lab.nii.gz", (tmp_path / "lab.nii.gz").read_bytes())
    assert r.status_code == 400, (fault, r.text)
    assert any(r.json()["detail"].startswith(f"lab.nii.gz: {w} (") for w in what.split("|")), r.text
    assert r.json()["detail"].endswith("; the label is not on the image's grid: export it on the image's grid")
    assert not (studies / "labels").exists()


def test_a_2d_label_on_the_images_place_is_saved_voxel_for_voxel(served_2d, tmp_path):
    client, studies, (label, k) = served_2d
    good = _slice_k(label, k)
    nib.save(good, tmp_path / "lab.nii.gz")
    r = _label_put(client, "lab.nii.gz", (tmp_path / "lab.nii.gz").read_bytes())
    assert r.status_code == 200, r.text
    saved = nib.load(str(studies / "labels" / "final" / "ct.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj).reshape(np.asanyarray(good.dataobj).shape),
                                  np.asanyarray(good.dataobj))
    assert int((np.asanyarray(good.dataobj) > 0).sum()) > 1000  # the real label, not an empty one


def test_a_3d_label_off_the_image_is_refused_naming_what_differs(served, tmp_path):
    client, studies, _ = served
    arr = np.zeros(GRID, np.uint8)
    arr[1, 5:9, 6:10] = 1
    moved = sitk.GetImageFromArray(arr)
    moved.CopyInformation(sitk.ReadImage(str(studies / "ct.nii.gz")))
    moved.SetOrigin((0.0, 0.0, 5.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    r = _label_put(client, "moved.nii.gz", (tmp_path / "moved.nii.gz").read_bytes())
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("moved.nii.gz: origin (0, 0, 5) vs (0, 0, 0); the label is not on the image's grid: "
                                  "export it on the image's grid")


def test_uploads_with_long_legal_file_names_are_read_or_refused_as_the_clients_fault(served):
    """A file name of 255 bytes is legal (Slicer names its files after the node): the server's temporary file took
    the name's last suffixes whole (``.ggg...g``) and could not be created, and several DICOM files were moved to
    ``00000_<name>``, past 255 bytes: both answered 500 ``the server could not read or write a file``, blaming the
    server (session 18). The temporary name keeps a known suffix only, and kept names are cut to 200 bytes."""
    import shutil as _shutil

    from tests.conftest import SAMPLES

    client, studies, sessions = served
    data = (studies / "ct.nii.gz").read_bytes()
    name = "scan." + "g" * 250
    r = client.put("/session/", files={"files": (name, data)})
    assert r.status_code == 400
    assert r.json()["detail"] == f"{name}: expected a .nii.gz, .nii or .nrrd image, or DICOM files"
    r = client.put("/datastore/image", files={"file": ("scan.nii." + "z" * 245, data)})
    assert r.status_code == 400 and r.json()["detail"].endswith(": expected a .nii.gz, .nii or .nrrd image"), r.text
    r = client.put("/session/", files={"files": ("y" * 245 + ".nii.gz", data)})
    assert r.status_code == 200, r.text
    series = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))
    r = client.put("/session/", files=[("files", (f"{i:02d}_" + "x" * 246 + ".dcm", f.read_bytes()))
                                       for i, f in enumerate(series)])
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    assert client.get(f"/session/{sid}").status_code == 200
    assert not any(len(p.name.encode()) > 255 for p in sessions.rglob("*"))
    _shutil.rmtree(sessions / sid, ignore_errors=True)


def _method_1_colin(path):
    """The real Colin27 slab as a NIfTI placed by pixdim only (sform_code = qform_code = 0, NIfTI method 1)."""
    from tests.conftest import SAMPLES

    source = nib.load(str(SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"))
    out = nib.Nifti1Image(np.asanyarray(source.dataobj), None)
    out.header.set_zooms((1.0, 1.0, 1.0))
    out.set_sform(None, 0)
    out.set_qform(None, 0)
    nib.save(out, path)


def test_the_image_a_viewer_fetches_keeps_the_sources_space_and_lies_where_its_labels_do(tmp_path):
    """``GET /datastore/image`` wrote the image with ITK alone: codes 1 whatever the source, so the MNI Colin27
    (codes 4) lost its space, and one placed by pixdim only (codes 0) was served with ITK's affine under code 1
    while the labels saved for it keep codes 0: nibabel-based tools drew the two apart (session 18)."""
    from tests.conftest import SAMPLES

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "colin.nii.gz").write_bytes((SAMPLES / "colin27" / "mr_t1_colin27_slabA_image.nii.gz").read_bytes())
    _method_1_colin(studies / "m1.nii.gz")
    cfg = ServerConfig(model="litemedsam", segmenter=NoModel(), backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
    with TestClient(build_app(cfg), base_url="http://localhost", raise_server_exceptions=False) as client:
        for image_id, codes in (("colin", (4, 4)), ("m1", (0, 0))):
            r = client.get(f"/datastore/image?image={image_id}")
            assert r.status_code == 200
            (tmp_path / "got.nii.gz").write_bytes(r.content)
            got, source = nib.load(str(tmp_path / "got.nii.gz")), nib.load(str(studies / f"{image_id}.nii.gz"))
            assert (int(got.header["sform_code"]), int(got.header["qform_code"])) == codes
            np.testing.assert_allclose(got.affine, source.affine, atol=1e-4)
            np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(source.dataobj))
            # the label saved for it (the image's own grid, as Slicer sends it back) lies where the image does
            label = nib.Nifti1Image((np.asanyarray(got.dataobj) > 100).astype(np.uint8), got.affine, got.header)
            nib.save(label, tmp_path / "label.nii.gz")
            r = _label_put_for(client, image_id, (tmp_path / "label.nii.gz").read_bytes())
            assert r.status_code == 200, r.text
            saved = nib.load(str(studies / "labels" / "final" / f"{image_id}.nii.gz"))
            np.testing.assert_allclose(saved.affine, got.affine, atol=1e-4)


def _label_put_for(client, image_id: str, data: bytes):
    return client.put(f"/datastore/label?image={image_id}&tag=final", files={"label": ("label.nii.gz", data)})


def _seg_nrrd(layers: np.ndarray, segments: list[tuple[str, int, int]]) -> bytes:
    """A Slicer .seg.nrrd on the served image's grid: (k, j, i, layer) uint8 under ``kinds: list domain domain
    domain``, with Slicer's SegmentN_Name/_Layer/_LabelValue fields (name, layer, value)."""
    k, j, i, n = layers.shape
    head = ["NRRD0004", "type: unsigned char", "dimension: 4", "space: left-posterior-superior",
            f"sizes: {n} {i} {j} {k}", "space directions: none (0.8,0,0) (0,0.8,0) (0,0,2.5)",
            "kinds: list domain domain domain", "encoding: raw", "space origin: (0,0,0)"]
    for s, (name, layer, value) in enumerate(segments):
        head += [f"Segment{s}_ID:=Segment_{s + 1}", f"Segment{s}_Name:={name}", f"Segment{s}_Layer:={layer}",
                 f"Segment{s}_LabelValue:={value}"]
    return ("\n".join(head) + "\n\n").encode() + np.ascontiguousarray(layers, np.uint8).tobytes()


def test_a_seg_nrrd_whose_segments_overlap_or_share_a_value_across_layers_is_refused_naming_them(served):
    """Slicer writes overlapping segments to separate layers, each often of label value 1. The layers were folded
    by max(): where liver and tumour overlapped only the larger value stayed, and two segments of value 1 in two
    layers were saved as one label (200 both): annotations lost without a word."""
    client, studies, _ = served
    layers = np.zeros((*GRID, 2), np.uint8)
    layers[1, 4:12, 4:12, 0] = 1  # liver, layer 0
    layers[1, 8:10, 8:10, 1] = 1  # tumour inside it, layer 1: 4 voxels of overlap
    r = _label_put(client, "case.seg.nrrd", _seg_nrrd(layers, [("liver", 0, 1), ("tumour", 1, 1)]))
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("case.seg.nrrd: segments 'liver' and 'tumour' overlap (4 voxels in all between "
                                  "layers); a saved label holds one segment a voxel, so one would be lost: make the "
                                  "segments not overlap (or send them as separate labels) and send it again")
    layers[1, 8:10, 8:10, 1] = 0
    layers[2, 20:22, 20:22, 1] = 1  # apart, but the same value in another layer
    r = _label_put(client, "case.seg.nrrd", _seg_nrrd(layers, [("liver", 0, 1), ("tumour", 1, 1)]))
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("case.seg.nrrd: segments 'liver' and 'tumour' share label value 1 in different "
                                  "layers; one label map cannot tell them apart: give each segment its own value (or "
                                  "send them as separate labels) and send it again")
    r = _label_put(client, "case.seg.nrrd", _seg_nrrd(layers, []))  # no segment fields: named by layer and value
    assert "segments value 1 of layer 0 and value 1 of layer 1 share label value 1" in r.json()["detail"]
    assert not (studies / "labels").exists()


def test_a_seg_nrrd_whose_layers_neither_overlap_nor_share_a_value_is_saved_whole(served):
    client, studies, _ = served
    layers = np.zeros((*GRID, 2), np.uint8)
    layers[1, 4:12, 4:12, 0] = 1
    layers[2, 20:22, 20:22, 1] = 2
    r = _label_put(client, "case.seg.nrrd", _seg_nrrd(layers, [("liver", 0, 1), ("tumour", 1, 2)]))
    assert r.status_code == 200, r.text
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(studies / "labels" / "final" / "ct.nii.gz")))
    np.testing.assert_array_equal(saved, layers.max(axis=-1))


def test_a_nifti2_label_on_the_images_grid_is_saved(served, tmp_path):
    """A NIfTI-2 label (nibabel's Nifti2Image on ct's grid): its header passes the checks since session 26, and its
    voxels were then handed to ITK, which reads no NIfTI-2 here. They are read by nibabel, as read_nifti reads them: the
    label is saved and served back voxel for voxel."""
    client, studies, _ = served
    labels = np.zeros(GRID, np.uint8)
    labels[1:3, 5:20, 8:12] = 2
    grid = nib.load(studies / "ct.nii.gz")
    two = nib.Nifti2Image(labels.transpose(2, 1, 0), grid.affine)
    two.header.set_sform(grid.affine, code=1)
    two.header.set_qform(grid.affine, code=1)
    nib.save(two, tmp_path / "label.nii.gz")
    r = _label_put(client, "label.nii.gz", (tmp_path / "label.nii.gz").read_bytes())
    assert r.status_code == 200, r.text
    got = client.get("/datastore/label?image=ct&tag=final")
    (tmp_path / "got.nii.gz").write_bytes(got.content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "got.nii.gz"))), labels)


@pytest.mark.parametrize("model, params, detail", [
    ("litemedsam", {"foreground": [[1, 1, 1]] * 10**5},  # 0.9 MB: under Starlette's 1 MB a form field
     "params.foreground: 100000 points; at most 1000 in one request"),
    ("litemedsam_points", {"points": [[1, 1, 1]] * 1001}, "params.points: 1001 points; at most 1000 in one request"),
    ("litemedsam", {"foreground": [[1, 1, 1]] * 600, "background": [[2, 2, 1]] * 600},
     "1200 points in one prompt: at most 1000 (each one costs the model time and memory); start a new object"),
])
def test_a_request_of_more_clicks_than_a_prompt_holds_is_400_before_the_model(served, model, params, detail):
    """10^5 clicks in one infer request (0.8 MB of JSON: Starlette takes a form field up to 1 MB) went to the model:
    each point is a token the mask decoder attends over the image with (LiteMedSAM on this CPU: 6.5 s for 1000 points,
    29 s and +770 MiB for 4000), so the request held the model lock for an hour or more and asked ~19 GB (session
    26b). Now one 400."""
    client, _, _ = served
    t0 = time.monotonic()
    r = client.post(f"/infer/{model}?image=ct&output=json", files={"params": (None, json.dumps(params, separators=(",", ":")))})
    assert (r.status_code, r.json()) == (400, {"detail": detail})
    assert time.monotonic() - t0 < 30 and client.get("/info/").status_code == 200


@pytest.mark.parametrize("route", ["infer", "label", "activelearning"])
def test_a_number_longer_than_python_reads_in_params_is_one_line_naming_params(served, route):
    """A 5000-digit integer in params answered Python's own words: "Exceeds the limit (4300 digits) for integer string
    conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit", naming no field and
    advising on the server's code (session 26b). Now it names params; nothing is stored."""
    client, studies, _ = served
    params = '{"foreground": [[%s, 1, 1]]}' % ("9" * 5000)
    if route == "infer":
        r = client.post("/infer/litemedsam?image=ct&output=json", files={"params": (None, params)})
    elif route == "label":
        r = client.put("/datastore/label?image=ct", files={
            "params": (None, params), "label": ("ct.nii.gz", (studies / "ct.nii.gz").read_bytes(), "application/gzip")})
    else:
        r = client.post("/activelearning/random", content=params.encode())
    assert (r.status_code, r.json()) == (400, {"detail": "params: not valid JSON here (a number of more than 4300 "
                                                         "digits)"})
    assert not list(studies.rglob("*label*")) and client.get("/info/").status_code == 200
