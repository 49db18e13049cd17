"""3D Slicer's *Next Sample* against `medseg labelserver`, through the real MONAI Label client.

Before, ``/info/`` listed no strategy (Slicer's button said "No Strategy Found/Selected") and
``POST /activelearning/{strategy}`` was a 404: an annotator working through a folder of studies had to pick each
next one by hand and could pick one already labelled."""

from __future__ import annotations

import random

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from app.labelserver.activelearning import NextSample
from app.labelserver.datastore import Sessions, StudiesDir
from app.labelserver.server import ServerConfig

monailabel_client = pytest.importorskip("monailabel.client.client",
                                        reason="pip install --no-deps monailabel==0.8.5 (test extra)")
MONAILabelClient = monailabel_client.MONAILabelClient
MONAILabelClientException = monailabel_client.MONAILabelClientException

IDS = ("case_a", "case_b", "case_c")


def _studies(root):
    root.mkdir()
    for n, name in enumerate(IDS):
        image = sitk.GetImageFromArray(np.full((3, 16, 16), n, dtype=np.int16))
        image.SetSpacing((0.7, 0.7, 2.0))
        sitk.WriteImage(image, str(root / f"{name}.nii.gz"))
    return root


@pytest.fixture()
def served(tmp_path):
    from tests.app.test_labelserver import serving

    studies = _studies(tmp_path / "studies")
    cfg = ServerConfig(model="litemedsam", segmenter=None, backend="torch", datastore=StudiesDir(studies),
                       sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
    with serving(cfg) as url:
        yield url, studies, tmp_path


def _label_file(tmp_path, value: int = 1):
    path = tmp_path / f"label_{value}.nii.gz"
    label = sitk.GetImageFromArray(np.full((3, 16, 16), value, dtype=np.uint8))
    label.SetSpacing((0.7, 0.7, 2.0))
    sitk.WriteImage(label, str(path))
    return str(path)


def test_slicer_next_sample_walks_through_the_unlabelled_images_then_says_none_is_left(served):
    url, studies, tmp_path = served
    mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
    strategies = mlc.info()["strategies"]
    assert {"first", "random"} <= set(strategies) and all(s["description"] for s in strategies.values())

    seen = []
    for expected in IDS:
        sample = mlc.next_sample("first", {})
        assert sample["id"] == expected and sample["name"] == f"{expected}.nii.gz"
        assert "path" not in sample and str(studies) not in str(sample)  # no server folder in the reply
        # what Slicer does next: download the image by id and open it under the reply's name
        reply = requests.get(f"{url}/datastore/image", params={"image": sample["id"]}, timeout=30)
        assert reply.status_code == 200
        (tmp_path / sample["name"]).write_bytes(reply.content)
        opened = sitk.ReadImage(str(tmp_path / sample["name"]))
        assert int(sitk.GetArrayFromImage(opened)[0, 0, 0]) == IDS.index(expected)
        np.testing.assert_allclose(opened.GetSpacing(), (0.7, 0.7, 2.0))
        mlc.save_label(sample["id"], _label_file(tmp_path), tag="final")
        seen.append(sample["id"])
    assert seen == list(IDS)
    assert mlc.next_sample("first", {}) == {} and mlc.next_sample("random", {}) == {}
    assert mlc.info()["datastore"]["completed"] == 3


def test_annotators_asking_one_after_another_get_different_images_never_a_labelled_one(served):
    url, _, tmp_path = served
    mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
    mlc.save_label("case_b", _label_file(tmp_path), tag="final")
    picks = [mlc.next_sample("random", {})["id"] for _ in range(2)]
    assert sorted(picks) == ["case_a", "case_c"], picks
    # every unlabelled image is now in someone's hands: still an answer (the one given longest ago for
    # "first"), never the labelled one
    assert mlc.next_sample("first", {})["id"] == picks[0]
    assert {mlc.next_sample("random", {})["id"] for _ in range(8)} <= {"case_a", "case_c"}


def test_an_unknown_strategy_or_bad_params_get_one_line(served):
    url, _, tmp_path = served
    mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
    with pytest.raises(MONAILabelClientException) as e:
        mlc.next_sample("epistemic", {})
    assert e.value.status_code == 404 and "has first, random" in e.value.msg
    for body, expected in ((b"[1, 2]", "JSON object"), (b"{nope", "not valid JSON"), (b"[" * 100_000, "")):
        reply = requests.post(f"{url}/activelearning/first", data=body, timeout=30,
                              headers={"content-type": "application/json"})
        assert reply.status_code == 400 and expected in reply.json()["detail"] and "\n" not in reply.json()["detail"]
    reply = requests.post(f"{url}/activelearning/first", json={"label_tag": "../x"}, timeout=30)
    assert reply.status_code == 400 and "tag" in reply.json()["detail"]


def test_a_label_of_another_tag_leaves_the_image_to_label(tmp_path):
    studies = StudiesDir(_studies(tmp_path / "studies"))
    studies.save_label("case_a", np.ones((3, 16, 16), np.uint8), "draft", {1: "x"})
    chooser = NextSample(studies, rng=random.Random(0))
    assert chooser("first", {})["id"] == "case_a"  # a draft is not a final label
    assert chooser("first", {"label_tag": "draft"})["id"] == "case_b"
    # one annotator skipping an image (Next Sample again without saving) gets the next one, then the first again
    assert [chooser("first", {})["id"] for _ in range(3)] == ["case_c", "case_a", "case_b"]


def test_on_a_pacs_a_series_with_a_seg_stored_there_is_labelled_after_a_restart(tmp_path):
    """A --dicomweb server knew only the labels it had saved itself: restarted, or beside another tool that
    stores SEGs, it offered a series already segmented on the PACS as the next to label (and /info/ said 0
    completed). Now a SEG on the PACS that references the series counts as its final label, as in MONAI Label."""
    from app.labelserver.datastore import DicomWebStore
    from data.dicom_seg import write_dicom_seg
    from data.readers import read_study
    from tests.app.test_labelserver import SERIES, serving
    from tests.orthanc import running_orthanc

    ct = read_study(SERIES)
    labels = np.zeros(ct.array.shape[:3], np.uint8)
    labels[3, 100:140, 100:140] = 1
    seg = write_dicom_seg(labels, ct, tmp_path / "seg.dcm", label_names={1: "lesion"}, model_name="another tool")
    with running_orthanc(tmp_path / "orthanc") as pacs:
        pacs.upload(sorted(SERIES.glob("*.dcm")))

        def next_and_info() -> tuple[dict, dict]:
            store = DicomWebStore(pacs.dicomweb, tmp_path / "cache", max_voxels=2**28, max_bytes=2**30, timeout=30)
            cfg = ServerConfig(model="litemedsam", segmenter=None, backend="torch", datastore=store,
                               sessions=Sessions(tmp_path / "sessions"), work_dir=tmp_path / "work")
            with serving(cfg) as url:  # a fresh server each time: nothing remembered from a save
                mlc = MONAILabelClient(url, tmpdir=str(tmp_path))
                return mlc.next_sample("first", {}), mlc.info()["datastore"]

        sample, status = next_and_info()
        assert sample["id"] == ct.source.series_instance_uid and status["completed"] == 0
        pacs.upload([seg])
        sample, status = next_and_info()
        assert sample == {} and (status["total"], status["completed"]) == (1, 1)
