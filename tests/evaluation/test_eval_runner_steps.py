"""``evaluation.runner`` on the shared manifest's real slices with a stand-in model whose answer is known (the
box, filled): rows in manifest order, one encode per slice, Dice and IoU by hand, seconds, seeds and errors.
The real model's numbers are ``test_eval_runner.py``'s (slow: the CLI over the whole manifest)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from evaluation.clicks import ProtocolError, parse_protocol
from evaluation.manifest import CaseLoader, read_manifest
from evaluation.metrics import EmptyPolicy
from evaluation.runner import EmbeddingCache, EvalSettings, StepRow, case_rng, evaluate, evaluate_case
from models.prompts import MaskResult
from tests.conftest import DATA, dice

MANIFEST = DATA / "manifest.csv"
ONE_SLICE = ["mr_t1_colin27_slabA_caudate_L_k001", "mr_t1_colin27_slabA_brain_k001",
             "mr_t1_colin27_slabA_caudate_R_k001"]  # three structures on one slice


class BoxFiller:
    """A model that answers a box with the box filled and points with a 5 x 5 square on each positive point."""

    name = "box-filler"

    def __init__(self):
        self.embeds, self.calls = [], []

    def embed(self, image):
        self.embeds.append(image.shape)
        return ("embedding", image.shape)

    def predict(self, embedding, prompts, multimask_output=False):
        assert embedding[0] == "embedding"
        h, w = embedding[1][:2]
        self.calls.append((prompts, multimask_output))
        mask = np.zeros((h, w), bool)
        if prompts.box is not None:
            x0, y0, x1, y1 = (int(v) for v in prompts.box)
            mask[y0:y1 + 1, x0:x1 + 1] = True
        else:
            for (x, y), label in zip(prompts.points.astype(int), prompts.point_labels):
                if label:
                    mask[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = True
        k = 3 if multimask_output else 1
        return MaskResult(masks=np.repeat(mask[None], k, 0), scores=np.linspace(0.1, 0.9, k, dtype=np.float32),
                          low_res_logits=np.zeros((k, 256, 256), np.float32))


@pytest.fixture(scope="module")
def cases():
    cases, attributes = read_manifest(MANIFEST)
    return cases, attributes


def _filled_box(gt: np.ndarray, margin: int) -> np.ndarray:
    rows, cols = np.nonzero(gt)
    h, w = gt.shape
    mask = np.zeros_like(gt)
    mask[max(rows.min() - margin, 0):min(rows.max() + margin, h - 1) + 1,
         max(cols.min() - margin, 0):min(cols.max() + margin, w - 1) + 1] = True
    return mask


def test_box_rows_in_manifest_order_one_encode_per_slice_and_dice_by_hand(cases):
    all_cases, attributes = cases
    other = next(c for c in all_cases if c.case_id not in ONE_SLICE and c.image.name.startswith("ct"))
    subset = [c for c in all_cases if c.case_id in ONE_SLICE] + [other]
    subset = [subset[1], subset[3], subset[0], subset[2]]  # the shared slice's rows apart: still one encode
    model = BoxFiller()
    seen = []
    run = evaluate(model, MANIFEST, EvalSettings(parse_protocol("box"), margin=4), cases=subset, progress=False,
                   on_case=seen.append)
    assert len(model.embeds) == 2 and [r.case_id for r in run.rows] == [c.case_id for c in subset]
    assert sorted(rows[0].case_id for rows in seen) == sorted(c.case_id for c in subset)
    assert (run.model, run.manifest, run.n_cases, run.attributes) == ("box-filler", str(MANIFEST), 4, attributes)
    assert run.settings.margin == 4 and {r.clicks for r in run.rows} == {0}
    loader = CaseLoader(MANIFEST)
    for spec, row in zip(subset, run.rows):
        gt = loader.load(spec).gt
        mask = _filled_box(gt, 4)
        assert row.structure == spec.structure and row.attributes == spec.attributes
        assert row.dice == pytest.approx(dice(mask, gt), abs=1e-6)  # MONAI computes in float32
        assert row.iou == pytest.approx((mask & gt).sum() / (mask | gt).sum(), abs=1e-6)  # MONAI computes in float32
        assert row.hd95 > 0 and 0 <= row.nsd < 1  # a filled box: its edges lie off the structure
    # a cache passed in serves a second run without encoding again
    cache = EmbeddingCache(model)
    evaluate(model, MANIFEST, EvalSettings(parse_protocol("box")), cases=subset[:2], progress=False, cache=cache)
    evaluate(model, MANIFEST, EvalSettings(parse_protocol("box")), cases=subset[:2], progress=False, cache=cache)
    assert len(model.embeds) == 4


def test_a_case_reports_each_click_with_its_seconds_seed_and_settings(cases):
    all_cases, _ = cases
    spec = next(c for c in all_cases if c.case_id == ONE_SLICE[0])
    case = CaseLoader(MANIFEST).load(spec)
    model = BoxFiller()
    steps = []
    settings = EvalSettings(parse_protocol("clicks:3"), seed=5, nsd_tolerance_mm=1.0,
                            policy=EmptyPolicy(both_empty="nan"), feed_logits=False)
    rows = evaluate_case(model, case, settings, embedding=("embedding", case.image.shape), embed_seconds=100.0,
                         on_step=steps.append)
    assert not model.embeds and [r.clicks for r in rows] == [1, 2, 3] and len(steps) == 3
    assert rows[0].seconds >= 100.0 and all(r.seconds < 100.0 for r in rows[1:])  # the encode counts once
    assert all(p.mask_logits is None for p, _ in model.calls)  # feed_logits=False
    for row, step in zip(rows, steps):
        assert row.dice == pytest.approx(dice(step.mask, case.gt), abs=1e-6)  # MONAI computes in float32
        assert (row.case_id, row.structure) == (spec.case_id, spec.structure)
    # NSD at 1 mm is no larger than at the default 2 mm
    wide = evaluate_case(model, case, replace(settings, nsd_tolerance_mm=2.0), embedding=("embedding", case.image.shape))
    assert rows[-1].nsd < wide[-1].nsd
    # without an embedding the case's image is encoded
    evaluate_case(model, case, EvalSettings(parse_protocol("box")))
    assert model.embeds == [case.image.shape]
    # points: the case's own generator, whatever else ran before
    model = BoxFiller()
    evaluate_case(model, case, EvalSettings(parse_protocol("points:4"), seed=5), embedding=("embedding", case.image.shape))
    sent = model.calls[0][0].points
    from evaluation.clicks import sample_points

    expected, _ = sample_points(case.gt, 4, case_rng(5, spec.case_id))
    np.testing.assert_array_equal(sent, expected)
    assert model.calls[0][0].pixel_spacing == case.spacing


def test_seeds_per_case_and_errors_name_the_case_and_line(cases):
    a = case_rng(3, "case-a").integers(0, 1 << 30, 4)
    assert a.tolist() == case_rng(3, "case-a").integers(0, 1 << 30, 4).tolist()
    assert a.tolist() != case_rng(3, "case-b").integers(0, 1 << 30, 4).tolist()
    assert a.tolist() != case_rng(4, "case-a").integers(0, 1 << 30, 4).tolist()
    all_cases, _ = cases
    case = CaseLoader(MANIFEST).load(all_cases[0])
    empty = replace(case, gt=np.zeros_like(case.gt))
    with pytest.raises(ProtocolError, match=rf"^case '{all_cases[0].case_id}' \(manifest line 2\): the ground truth "
                                            r"is empty on this slice; these protocols need a structure to prompt$"):
        evaluate_case(BoxFiller(), empty, EvalSettings(parse_protocol("box")), embedding=("embedding", (1, 1)))


def test_the_embedding_cache_keys_by_pixels_and_keeps_the_newest():
    model = BoxFiller()
    cache = EmbeddingCache(model, size=2)
    a, b, c = (np.full((4, 6), v, np.uint8) for v in (1, 2, 3))
    first, _ = cache.get(a)
    assert cache.get(a.copy()) == (first, 0.0)  # the same pixels: reused, no time spent
    cache.get(a.reshape(6, 4))  # the same bytes in another shape: another slice
    cache.get(b)
    cache.get(c)
    assert len(model.embeds) == 4 and EmbeddingCache(model).size == 4
    cache.get(c)
    cache.get(b)
    assert len(model.embeds) == 4
    cache.get(a)  # evicted: encoded again
    assert len(model.embeds) == 5


def test_rows_and_settings_as_written():
    row = StepRow("c", "liver", 2, 0.5, 0.4, 3.0, 0.9, 1.5, {"site": "A", "dice": "x"})
    assert row.csv_row() == {"case_id": "c", "structure": "liver", "clicks": 2, "dice": 0.5, "iou": 0.4, "hd95": 3.0,
                             "nsd": 0.9, "seconds": 1.5}
    assert row.flat() == {"site": "A", **row.csv_row()}  # the metrics win over a same-named attribute
    assert EvalSettings(parse_protocol("clicks:2")).as_dict() == {
        "protocol": "clicks:2", "margin_px": 5, "jitter_px": 0, "seed": 0, "nsd_tolerance_mm": 2.0,
        "empty_policy": {"both_empty": "perfect", "one_empty_hd": "diagonal"}, "feed_logits": True}


def test_progress_goes_to_stderr(cases, capsys):
    all_cases, _ = cases
    evaluate(BoxFiller(), MANIFEST, EvalSettings(parse_protocol("box")), cases=all_cases[:1])
    err = capsys.readouterr().err
    assert "eval box: 100%" in err and "1/1" in err and re.search(r"\dcase/s|s/case,", err)
    assert re.search(r", dice=0\.\d\d\d\]", err)  # the last case's Dice, 3 decimals


def test_rows_sharing_a_slice_are_visited_together_so_each_slice_is_encoded_once(cases, tmp_path):
    """With room for one embedding only, the manifest order CT k1, MR k1, CT k9, CT k1, MR k1 is visited by
    slice (file, then slice index) and costs three encodes, not five."""
    all_cases, _ = cases
    by_id = {c.case_id: c for c in all_cases}
    subset = [by_id[i] for i in ("ct_head_0051_slabA_head_k001", ONE_SLICE[0], "ct_head_0051_slabA_head_k009",
                                 "ct_head_0051_slabA_head_k001", ONE_SLICE[1])]
    model = BoxFiller()
    run = evaluate(model, MANIFEST, EvalSettings(parse_protocol("box")), cases=subset, progress=False,
                   cache=EmbeddingCache(model, size=1))
    assert len(model.embeds) == 3 and [r.case_id for r in run.rows] == [c.case_id for c in subset]
    # without a subset: every case of the manifest, in its order
    import csv

    with open(MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))[28:31]  # three rows of the shared manifest
    small = tmp_path / "small.csv"
    with open(small, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image": str(DATA / r["image"]), "label": str(DATA / r["label"])})
    run = evaluate(BoxFiller(), small, EvalSettings(parse_protocol("box")), progress=False)
    assert [r.case_id for r in run.rows] == [r["case_id"] for r in rows] and run.n_cases == 3


def test_a_slice_encoded_for_a_case_counts_in_its_first_step_and_a_model_without_a_name(cases, monkeypatch):
    import evaluation.clicks
    import evaluation.runner

    clock = [1000.0]  # not 0: a sum in place of a difference must show

    class Clock:
        @staticmethod
        def perf_counter():
            return clock[0]

    class Nameless(BoxFiller):
        def embed(self, image):
            clock[0] += 100.0  # encoding takes 100 s on this clock
            return super().embed(image)

    Nameless.name = property(lambda self: (_ for _ in ()).throw(AttributeError("name")))
    monkeypatch.setattr(evaluation.runner, "time", Clock)
    # the steps' own model time on it too (none): on the wall clock they had to stay under 1 s, which a niced CI
    # worker could stretch past (session 25)
    monkeypatch.setattr(evaluation.clicks, "time", Clock)
    all_cases, _ = cases
    by_id = {c.case_id: c for c in all_cases}
    subset = [by_id[ONE_SLICE[0]], by_id[ONE_SLICE[1]]]  # one slice: encoded for the first case only
    run = evaluate(Nameless(), MANIFEST, EvalSettings(parse_protocol("box")), cases=subset, progress=False)
    assert 100.0 <= run.rows[0].seconds < 101.0 and run.rows[1].seconds < 1.0 and run.model == "Nameless"


def test_each_step_is_scored_in_millimetres_with_the_models_logits_fed_back(cases, monkeypatch):
    import evaluation.clicks
    import evaluation.runner
    from evaluation.metrics import case_metrics

    class StillClock:  # the runner's clock stands still: a step's seconds are only what the runner adds
        @staticmethod
        def perf_counter():
            return 1000.0

    monkeypatch.setattr(evaluation.runner, "time", StillClock)
    monkeypatch.setattr(evaluation.clicks, "time", StillClock)  # where a step's model time is measured

    all_cases, _ = cases
    spec = next(c for c in all_cases if c.case_id == "ct_head_0051_slabA_head_k009")  # 0.957 mm pixels
    case = CaseLoader(MANIFEST).load(spec)
    assert case.spacing != (1.0, 1.0)
    model, steps = BoxFiller(), []
    rows = evaluate_case(model, case, EvalSettings(parse_protocol("clicks:2")), embedding=("embedding", case.image.shape),
                         on_step=steps.append)
    (first, multi), (second, _) = model.calls
    assert multi is True and first.mask_logits is None and second.mask_logits is not None  # fed back by default
    for row, step in zip(rows, steps):
        m = case_metrics(step.mask, case.gt, case.spacing)
        assert (row.dice, row.iou, row.hd95, row.nsd) == pytest.approx((m.dice, m.iou, m.hd95, m.nsd))
    # an embedding handed in costs this case nothing: no encode, no seconds added (on the wall clock, < 1 s until
    # session 25, which a niced CI worker's step could miss)
    assert not model.embeds and rows[0].seconds == 0.0
