"""Points without a box (models/point_prompts.py): box candidates of physical sizes around the positive
points, chosen by the base decoder's predicted IoU, refined with every point by the click model; the
one answer that `medseg eval --protocol points:N`, `medseg segment --point` and the UI's lone click get."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.clicks import parse_protocol
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.runner import EvalSettings, evaluate_case
from models import point_prompts
from models.point_prompts import candidate_boxes, grown_box
from models.prompts import MaskResult, Prompts
from models.registry import get_spec, load_segmenter
from tests.conftest import DATA, memoised_embeddings

MANIFEST = DATA / "manifest.csv"
# shared cases (never trained on) where the old route, the click refiner on the point alone, gave a small blob
GAIN_CASES = ("mr_t1_colin27_slabA_thalamus_L_k024", "mr_t1_colin27_slabA_thalamus_R_k017",
              "mr_t1_colin27_slabA_caudate_L_k011", "mr_t1_colin27_slabA_caudate_R_k001")
MARGIN = 0.1  # mean points:1 Dice gain required over the old route; measured: old 0.400, new 0.643 (+0.243)


def test_candidate_boxes_are_physical_sizes_around_the_positive_points():
    one = candidate_boxes(np.array([[50.0, 40.0]]), np.array([1]), (100, 200), (2.0, 0.5), (5.0, 10.0))
    # 5 mm is 2.5 rows of 2 mm and 10 columns of 0.5 mm
    np.testing.assert_allclose(one, [[40, 37.5, 60, 42.5], [30, 35, 70, 45]])
    # several points: the positives' extent, grown; negatives do not shape the box; clipped to the image
    two = candidate_boxes(np.array([[10.0, 20.0], [30.0, 60.0], [190.0, 5.0]]), np.array([1, 1, 0]), (100, 200),
                          None, (5.0, 50.0))
    np.testing.assert_allclose(two, [[5, 15, 35, 65], [0, 0, 80, 99]])
    with pytest.raises(ValueError, match="positive"):
        candidate_boxes(np.array([[10.0, 20.0]]), np.array([0]), (100, 200))


def test_a_box_grows_only_on_the_sides_its_mask_touches():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 50:70] = True  # touches the left side x0 = 50 only
    np.testing.assert_allclose(grown_box(np.array([50, 30, 90, 70]), mask), [29.5, 30, 90, 70])
    assert grown_box(np.array([40, 30, 90, 70]), mask) is None  # the mask fits: nothing to grow
    assert grown_box(np.array([0, 30, 90, 70]), np.pad(mask[:, 50:], ((0, 0), (0, 50)))) is None  # the image edge
    assert grown_box(np.array([50, 30, 90, 70]), np.zeros_like(mask)) is None


needs_data = pytest.mark.skipif(not get_spec("litemedsam").available() or not MANIFEST.is_file(),
                                reason="needs weights/lite_medsam.pth and shared/data")


@pytest.fixture(scope="module", autouse=True)
def _encoded_once(litemedsam):
    """The two tests on the shared cases encode the first case's slice once (``memoised_embeddings``)."""
    with memoised_embeddings(litemedsam):
        yield


@pytest.fixture(scope="module")
def cases():
    specs, _ = read_manifest(MANIFEST)
    loader = CaseLoader(MANIFEST)
    return [loader.load(s) for s in specs if s.case_id in GAIN_CASES]


class OldRoute:
    """litemedsam as it answered points alone before: the click refiner on the points, no box."""

    def __init__(self, segmenter):
        self.segmenter = segmenter

    def embed(self, image):
        return self.segmenter.embed(image)

    def predict(self, embedding, prompts: Prompts, *, multimask_output: bool = False) -> MaskResult:
        low, iou = self.segmenter.decode_prompts(embedding, prompts, multimask_output)
        return self.segmenter.to_result(embedding, low, iou)


@needs_data
def test_point_route_beats_the_old_answer_and_eval_goes_through_it(cases, monkeypatch):
    seg = load_segmenter("litemedsam")
    calls = []
    real = point_prompts.decode_points_many  # every points-alone answer goes through it (batched or not)
    monkeypatch.setattr(point_prompts, "decode_points_many", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    settings = EvalSettings(protocol=parse_protocol("points:1"))
    new, old = [], []
    for case in cases:
        emb = seg.embed(case.image)
        (row,) = evaluate_case(seg, case, settings, embedding=emb)
        (before,) = evaluate_case(OldRoute(seg), case, settings, embedding=emb)
        new.append(row.dice)
        old.append(before.dice)
    # medseg eval's points:1 reached models.point_prompts, once a case, with the case's pixel spacing
    assert len(calls) == len(cases) and all(p.pixel_spacing == c.spacing for p, c in zip(calls, cases))
    print(f"points:1 on {len(cases)} shared cases: old {np.mean(old):.3f} {np.round(old, 3)}, "
          f"new {np.mean(new):.3f} {np.round(new, 3)}")
    assert np.mean(new) >= np.mean(old) + MARGIN


@needs_data
def test_box_and_mask_prompts_never_take_the_point_route(cases, monkeypatch):
    seg = load_segmenter("litemedsam")
    monkeypatch.setattr(point_prompts, "decode_points_many", lambda *a, **k: pytest.fail("the point route was taken"))
    case = cases[0]
    emb = seg.embed(case.image)
    r = seg.predict(emb, Prompts(box=np.array([60, 90, 100, 130]), pixel_spacing=case.spacing))
    seg.predict(emb, Prompts(points=np.array([[80, 110]]), point_labels=[1], mask_logits=r.best_logits))
    seg.predict(emb, Prompts(points=np.array([[80, 110]]), point_labels=[1], base_decoder=True))
    assert r.boxes is None


def test_stability_score_and_the_chooser_switch(monkeypatch):
    import torch

    low = torch.full((1, 1, 4, 4), -5.0)
    low[..., :2, :2] = 5.0
    low[..., 2, 2] = 0.5  # unsure: in the mask at -1, not at +1
    assert float(point_prompts.stability(low)) == pytest.approx(4 / 5)
    assert float(point_prompts.stability(torch.full((1, 1, 4, 4), -5.0))) == 0.0  # empty: not stable, not chosen
    monkeypatch.setenv(point_prompts.CHOICE_ENV, "")
    assert point_prompts.choice() == point_prompts.DEFAULT_CHOICE
    monkeypatch.setenv(point_prompts.CHOICE_ENV, "iou*stability")
    assert point_prompts.choice() == "iou*stability"
    monkeypatch.setenv(point_prompts.CHOICE_ENV, "largest")
    with pytest.raises(ValueError, match="MEDSEG_POINT_CHOICE"):
        point_prompts.choice()


@needs_data
def test_refined_iou_chooser_refines_every_candidate_and_picks_by_the_refiners_iou(cases, monkeypatch):
    """MEDSEG_POINT_CHOICE=refined-iou (docs/clicks.md: measured, not the default): every candidate refined with
    the point, scored by the click refiner's predicted IoU, the best-scored one the answer; ``iou`` unchanged."""
    import torch

    with torch.inference_mode():  # as Segmenter.predict
        _refined_iou_checks(cases, monkeypatch)


def _refined_iou_checks(cases, monkeypatch) -> None:
    seg = load_segmenter("litemedsam")
    case = cases[0]
    emb = seg.embed(case.image)
    ys, xs = np.nonzero(case.gt)
    prompts = Prompts(points=np.array([[xs.mean(), ys.mean()]]), point_labels=np.array([1]), pixel_spacing=case.spacing)
    base_lows, base_iou, boxes = point_prompts.decode_points(seg, emb, prompts, True, refine="none")
    # what the refiner says of each candidate, one call each (the route batches them)
    expected = [seg.decode_prompts(emb, Prompts(points=prompts.points, point_labels=prompts.point_labels,
                                                mask_logits=base_lows[:, k].numpy()), False) for k in range(len(boxes))]
    monkeypatch.setenv(point_prompts.CHOICE_ENV, "refined-iou")
    lows, scores, all_boxes = point_prompts.decode_points(seg, emb, prompts, True)
    np.testing.assert_allclose(scores[0].numpy(), [float(e[1][0, 0]) for e in expected], atol=1e-4)
    for k, (low, _) in enumerate(expected):
        np.testing.assert_allclose(lows[:, k].numpy(), low[:, 0].numpy(), atol=1e-3)
    one_low, one_score, one_box = point_prompts.decode_points(seg, emb, prompts, False)
    best = int(np.argmax(scores[0].numpy()))
    np.testing.assert_allclose(one_low[:, 0].numpy(), lows[:, best].numpy(), atol=1e-5)
    np.testing.assert_array_equal(one_box[0], all_boxes[best])
    # without a refinement there is nothing for the refiner to score: the base IoU picks, as `iou` does
    _, none_score, _ = point_prompts.decode_points(seg, emb, prompts, True, refine="none")
    np.testing.assert_array_equal(none_score.numpy(), base_iou.numpy())
    monkeypatch.setenv(point_prompts.CHOICE_ENV, "iou")
    _, iou_score, _ = point_prompts.decode_points(seg, emb, prompts, True)
    np.testing.assert_array_equal(iou_score.numpy(), base_iou.numpy())
