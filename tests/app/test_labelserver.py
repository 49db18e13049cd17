"""`medseg labelserver` driven by the real MONAI Label client (``monailabel.client.MONAILabelClient``) and by
requests shaped like 3D Slicer's MONAILabel module and OHIF's monai-label extension send them."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from app.cli import main
from app.labelserver.datastore import DicomWebStore, Sessions, StudiesDir
from app.labelserver.server import ServerConfig, build_app
from data.readers import read_study
from tests.conftest import SAMPLES
from tests.orthanc import free_port, orthanc_available, running_orthanc

monailabel_client = pytest.importorskip("monailabel.client.client",
                                        reason="pip install --no-deps monailabel==0.8.5 (test extra)")
MONAILabelClient = monailabel_client.MONAILabelClient
MONAILabelClientException = monailabel_client.MONAILabelClientException

SERIES = SAMPLES / "ct_head_0051_series"
K = 3
CLICKS = {"foreground": [[128, 120, K], [100, 150, K]], "background": [[10, 10, K]]}
ROI = [50, 210, 10, 220, K, K]  # Slicer's [i0, i1, j0, j1, k0, k1]
TOKEN = "test-token-0123456789abcdef"


@contextlib.contextmanager
def serving(cfg: ServerConfig):
    """The label server on a free loopback port in this process (real HTTP, the session's model)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "label server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module", autouse=True)
def _server_turn():
    """This module's servers run the real model: they take their turn with the suite's other real servers
    (tests.conftest.real_server_turn), once for the whole module (a second lock in one process would wait forever)."""
    from tests.conftest import real_server_turn

    with real_server_turn():
        yield


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    shutil.copytree(SERIES, root / "ct")
    return root


@pytest.fixture(scope="module")
def server(litemedsam, studies, tmp_path_factory):
    work = tmp_path_factory.mktemp("labelserver")
    cfg = ServerConfig(model="litemedsam", segmenter=litemedsam, backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(work / "sessions"), work_dir=work)
    with serving(cfg) as url:
        yield url


@pytest.fixture()
def mlc(server, tmp_path):
    return MONAILabelClient(server, tmpdir=str(tmp_path))


def segment_cli(tmp_path, *prompt) -> np.ndarray:
    out = tmp_path / f"cli_{len(list(tmp_path.iterdir()))}.nii.gz"
    assert main(["segment", str(SERIES), "--slice", str(K), *map(str, prompt), "--output", str(out)]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def read_label(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_on_source_grid(image: sitk.Image):
    ct = read_study(SERIES)
    assert image.GetSize() == tuple(reversed(ct.array.shape))
    np.testing.assert_allclose(image.GetSpacing(), ct.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ct.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), ct.direction, atol=1e-6)


def test_info_lists_models_the_viewers_offer_tools_for(mlc):
    info = mlc.info()
    for key in ("name", "description", "version", "labels", "models", "trainers", "strategies", "scoring", "train_stats"):
        assert key in info
    assert info["datastore"]["total"] == 1 and set(info["datastore"]) == {"total", "completed", "label_tags"}
    models = info["models"]
    assert (models["litemedsam"]["type"], models["litemedsam"]["dimension"]) == ("deepgrow", 2)
    assert (models["litemedsam_3d"]["type"], models["litemedsam_3d"]["dimension"]) == ("deepgrow", 3)
    assert models["litemedsam_points"]["type"] == "vista3d"
    for entry in models.values():
        assert set(entry) == {"type", "labels", "dimension", "description", "config"}


def test_clicks_and_box_match_medseg_segment_voxel_for_voxel(mlc, tmp_path):
    """MONAILabelClient.infer with clicks, then a box: the label equals `medseg segment` on the same prompt."""
    path, params = mlc.infer("litemedsam", "ct", {**CLICKS, "result_extension": ".nrrd", "result_dtype": "uint8"})
    got, image = read_label(path)
    assert_on_source_grid(image)
    assert params["label_names"] == {"structure": 1} and "total" in params["latencies"]
    points = [a for (i, j, _k) in CLICKS["foreground"] for a in ("--point", i, j, 1)]
    points += [a for (i, j, _k) in CLICKS["background"] for a in ("--point", i, j, 0)]
    expected = segment_cli(tmp_path, *points)
    assert int(expected.sum()) > 100
    np.testing.assert_array_equal(got, expected)

    path, _ = mlc.infer("litemedsam", "ct", {"roi": ROI})  # MONAI Label's default: .nii.gz
    got, image = read_label(path)
    assert_on_source_grid(image)
    expected = segment_cli(tmp_path, "--box", ROI[0], ROI[2], ROI[1], ROI[3])
    assert int(expected.sum()) > 1000
    np.testing.assert_array_equal(got, expected)


def test_save_label_goes_to_the_datastore(mlc, studies, tmp_path):
    path, _ = mlc.infer("litemedsam", "ct", {"roi": ROI, "result_extension": ".nii.gz"})
    reply = mlc.save_label("ct", path, tag="final", params={"label_info": [{"name": "head", "idx": 1}]})
    assert reply == {"image": "ct", "label": "ct"}
    saved, image = read_label(studies / "labels" / "final" / "ct.nii.gz")
    np.testing.assert_array_equal(saved, read_label(path)[0])
    assert_on_source_grid(image)
    store = mlc.datastore()
    assert "final" in store["objects"]["ct"]["labels"]
    assert mlc.info()["datastore"]["completed"] == 1
    # a label on another grid is refused, nothing saved over the good one
    wrong = tmp_path / "wrong.nii.gz"
    sitk.WriteImage(sitk.Image(10, 10, 3, sitk.sitkUInt8), str(wrong))
    with pytest.raises(MONAILabelClientException) as e:
        mlc.save_label("ct", str(wrong), tag="final")
    assert "differs from the image" in e.value.msg
    np.testing.assert_array_equal(read_label(studies / "labels" / "final" / "ct.nii.gz")[0], saved)


def test_slicer_session_with_a_local_volume(mlc, tmp_path):
    """Slicer's flow for a volume of its own: PUT /session/ with the .nrrd it saves, then infer with its params."""
    volume = tmp_path / "volume.nrrd"
    sitk.WriteImage(read_study(SERIES).to_sitk(), str(volume))
    session = mlc.create_session(str(volume))
    sid = session["session_id"]
    assert mlc.get_session(sid)["name"] == "volume.nrrd"
    params = {"label": "head", **CLICKS, "slice": K, "result_extension": ".nrrd", "result_dtype": "uint8"}
    path, reply = mlc.infer("litemedsam", "volume", params, session_id=sid)
    from_session, _ = read_label(path)
    path, _ = mlc.infer("litemedsam", "ct", params)
    np.testing.assert_array_equal(from_session, read_label(path)[0])
    assert reply["label_names"] == {"head": 1}
    mlc.remove_session(sid)
    with pytest.raises(MONAILabelClientException):
        mlc.get_session(sid)


def post_multipart(url: str, params: dict, headers: dict | None = None) -> tuple[int, bytes, dict]:
    boundary = "medsegTestBoundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
            f"--{boundary}--\r\n").encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_bad_requests_get_one_message(server):
    code, body, _ = post_multipart(f"{server}/infer/nope?image=ct", {"foreground": [[1, 1, 1]]})
    assert code == 404 and "litemedsam_3d" in json.loads(body)["detail"]
    code, body, _ = post_multipart(f"{server}/infer/litemedsam?image=ct", {"foreground": [[999, 1, 1]]})
    assert code == 400 and "outside the image" in json.loads(body)["detail"]
    code, body, _ = post_multipart(f"{server}/infer/litemedsam?image=../etc", {"foreground": [[1, 1, 1]]})
    assert code == 404
    code, body, _ = post_multipart(f"{server}/infer/litemedsam?image=ct", {})
    assert code == 400 and json.loads(body)["detail"].startswith("params: give foreground/background clicks")


@pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc + orthanc-dicomweb not installed")
def test_ohif_point_prompts_on_a_pacs_and_the_label_saved_back_as_seg(litemedsam, tmp_path):
    """OHIF's vista3d form (points, point_labels, label_prompt; image = SeriesInstanceUID, output=image,
    uncompressed NRRD) on a --dicomweb datastore; the 3D entry propagates; save_label stores a DICOM-SEG."""
    ct = read_study(SERIES)
    with running_orthanc(tmp_path / "orthanc") as pacs:
        pacs.upload(sorted(SERIES.glob("*.dcm")))
        store = DicomWebStore(pacs.dicomweb, tmp_path / "cache", max_voxels=2**28, max_bytes=2**30, timeout=30)
        cfg = ServerConfig(model="litemedsam", segmenter=litemedsam, backend="torch", datastore=store,
                           sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
        with serving(cfg) as url:
            uid = ct.source.series_instance_uid
            params = {"points": [[128, 120, K], [10, 10, K]], "point_labels": [1, 0], "label_prompt": [1],
                      "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
                      "restore_label_idx": False,
                      "max_slices": 1}  # a per-model infer option (OHIF's config.infer[model]): keeps the test short
            code, body, headers = post_multipart(f"{url}/infer/litemedsam_points?image={uid}&output=image", params)
            assert code == 200 and body.startswith(b"NRRD")
            assert b"encoding: raw" in body[:1000]  # what OHIF's parseNrrdData reads
            label_file = tmp_path / "ohif.nrrd"
            label_file.write_bytes(body)
            labels, image = read_label(label_file)
            assert_on_source_grid(image)
            per_slice = labels.reshape(labels.shape[0], -1).sum(axis=1)
            assert per_slice[K] > 100 and (per_slice > 0).sum() == 3  # carried one slice up and one down

            # output=dicom_seg: a DICOM-SEG of the result, referencing the series
            code, body, headers = post_multipart(f"{url}/infer/litemedsam?image={uid}&output=dicom_seg",
                                                 {"roi": ROI, "label": "head"})
            assert code == 200 and headers["content-type"] == "application/dicom", body[:300]
            (tmp_path / "r.dcm").write_bytes(body)
            seg = pydicom.dcmread(tmp_path / "r.dcm")
            assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "head"
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid

            mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
            assert mlc.info()["datastore"]["total"] == 1
            # OHIF's Next Sample (default strategy random) opens the reply's StudyInstanceUID
            sample = mlc.next_sample("random", {})
            assert (sample["id"], sample["SeriesInstanceUID"]) == (uid, uid)
            assert sample["StudyInstanceUID"] == ct.source.study_instance_uid
            before = pacs.instance_count()
            reply = mlc.save_label(uid, str(label_file), tag="final",
                                   params={"label_info": [{"name": "head", "idx": 1}]})
            assert pacs.instance_count() == before + 1
            seg_uid = reply["label"]
            found = [i for i in pacs.rest("/instances?expand") if i["MainDicomTags"]["SOPInstanceUID"] == seg_uid]
            assert len(found) == 1
            tags = pacs.rest(f"/instances/{found[0]['ID']}/simplified-tags")
            assert tags["Modality"] == "SEG" and tags["SegmentSequence"][0]["SegmentLabel"] == "head"
            assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == uid
            assert mlc.next_sample("random", {}) == {}  # its one series is labelled now


def test_token_required_beyond_loopback(litemedsam, studies, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MEDSEG_TOKEN", raising=False)
    assert main(["labelserver", "--host", "0.0.0.0", "--studies", str(studies)]) == 2
    err = capsys.readouterr().err
    assert "MEDSEG_TOKEN" in err and len(err.strip().splitlines()) == 1

    cfg = ServerConfig(model="litemedsam", segmenter=litemedsam, backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work", token=TOKEN)
    with serving(cfg) as url:
        mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
        with pytest.raises(MONAILabelClientException) as e:
            mlc.info()
        assert e.value.status_code == 401
        assert mlc.auth_enabled()
        with pytest.raises(MONAILabelClientException):
            mlc.auth_token("medseg", "wrong-password-0000000")
        mlc.update_auth(mlc.auth_token("medseg", TOKEN))  # the login Slicer's module does
        assert mlc.info()["name"] == "medseg"
        code, _, _ = post_multipart(f"{url}/infer/litemedsam?image=ct", {"roi": ROI},
                                    headers={"Authorization": "Bearer not-the-token-000000"})
        assert code == 401


def test_slicer_upload_of_its_own_volume_then_save(mlc, studies, tmp_path):
    """Slicer's other flow: PUT /datastore/?image=ID with the volume it saved (NRRD), infer, submit the label."""
    volume = tmp_path / "mine.nrrd"
    sitk.WriteImage(read_study(SERIES).to_sitk(), str(volume))
    assert mlc.upload_image(str(volume), image_id="mine") == {"image": "mine"}
    assert (studies / "mine.nrrd").is_file() and "mine" in mlc.datastore()["objects"]
    path, _ = mlc.infer("litemedsam", "mine", {"roi": ROI, "result_extension": ".nrrd", "result_dtype": "uint8"})
    label, image = read_label(path)
    assert_on_source_grid(image)
    assert mlc.save_label("mine", path, tag="final")["label"] == "mine"
    np.testing.assert_array_equal(read_label(studies / "labels" / "final" / "mine.nii.gz")[0], label)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(MONAILabelClientException) as e:
        mlc.upload_image(str(broken), image_id="broken")
    assert e.value.msg and not (studies / "broken.nii.gz").exists()
