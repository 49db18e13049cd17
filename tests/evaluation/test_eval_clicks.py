"""Click protocols: parsing, boxes, SAM-Med2D points, corrective clicks and the simulated session."""

from __future__ import annotations

import time

import numpy as np
import pytest

from evaluation.clicks import (
    Click,
    Protocol,
    ProtocolError,
    box_from_mask,
    next_click,
    parse_protocol,
    sample_points,
    simulate,
)
from models.prompts import MaskResult


@pytest.mark.parametrize(
    "text,kind,n,steps",
    [
        ("box", "box", 0, [0]),
        (" Points:3 ", "points", 3, [3]),
        ("clicks:4", "clicks", 4, [1, 2, 3, 4]),
        ("box+clicks:2", "box+clicks", 2, [0, 1, 2]),
    ],
)
def test_parse_protocol(text, kind, n, steps):
    p = parse_protocol(text)
    assert (p.kind, p.n, p.click_steps) == (kind, n, steps)


@pytest.mark.parametrize("text", ["", "boxes", "points", "clicks:-1", "clicks:x", "box:3", "box+points:2"])
def test_bad_protocol_names_the_choices(text):
    with pytest.raises(ProtocolError, match="box \\| points:N"):
        parse_protocol(text)


def test_zero_points_is_refused():
    with pytest.raises(ProtocolError, match="at least 1"):
        parse_protocol("points:0")


def blob(shape=(40, 50), rows=(10, 20), cols=(5, 30)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


@pytest.mark.parametrize(
    "rows,cols,margin,expected",
    [
        ((10, 20), (5, 30), 0, [5, 10, 29, 19]),  # tight box, inclusive pixels
        ((10, 20), (5, 30), 5, [0, 5, 34, 24]),
        ((10, 20), (5, 30), 12, [0, 0, 41, 31]),  # clipped to the image (W 50, H 40)
        ((30, 40), (40, 50), 5, [35, 25, 49, 39]),  # clipped at the bottom/right edge
    ],
)
def test_box_margin_and_clipping(rows, cols, margin, expected):
    assert box_from_mask(blob(rows=rows, cols=cols), margin).tolist() == expected


def test_box_jitter_is_bounded_and_seeded():
    gt = blob()
    a = box_from_mask(gt, 5, jitter=3, rng=np.random.default_rng(7))
    b = box_from_mask(gt, 5, jitter=3, rng=np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    assert np.abs(a - np.array([0, 5, 34, 24])).max() <= 3
    boxes = {tuple(box_from_mask(gt, 5, jitter=3, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(boxes) > 5


def test_box_of_empty_mask_is_an_error():
    with pytest.raises(ProtocolError, match="empty"):
        box_from_mask(np.zeros((5, 5), bool), 5)


@pytest.mark.parametrize("n,n_pos,n_neg", [(1, 1, 0), (2, 1, 1), (3, 1, 2), (5, 2, 3), (6, 3, 3)])
def test_sam_med2d_points(n, n_pos, n_neg):
    gt = blob()
    pts, labels = sample_points(gt, n, np.random.default_rng(0))
    assert pts.shape == (n, 2) and (labels == 1).sum() == n_pos and (labels == 0).sum() == n_neg
    x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert gt[y[labels == 1], x[labels == 1]].all()  # positives inside (x = column)
    assert not gt[y[labels == 0], x[labels == 0]].any()  # negatives outside
    again, _ = sample_points(gt, n, np.random.default_rng(0))
    assert np.array_equal(pts, again)


@pytest.mark.parametrize(
    "pred_box,expected",
    [
        (None, Click(x=17, y=14, positive=True)),  # empty mask: the most central GT pixel
        # GT minus its right part (cols 20..29): the miss is cols 20..29, rows 10..19
        ((10, 20, 5, 20), Click(x=24, y=14, positive=True)),
        # GT plus a false-positive slab rows 25..39, cols 0..49 (larger than any miss)
        ("fp", Click(x=24, y=32, positive=False)),
    ],
)
def test_next_click_goes_to_the_centre_of_the_largest_error(pred_box, expected):
    gt = blob()
    if pred_box is None:
        pred = np.zeros_like(gt)
    elif pred_box == "fp":
        pred = gt | blob(rows=(25, 40), cols=(0, 50))
    else:
        pred = blob(rows=pred_box[:2], cols=pred_box[2:])
    assert next_click(gt, pred) == expected


def test_no_error_no_click():
    assert next_click(blob(), blob()) is None


class FakeModel:
    """Records every call; predicts the GT with its right half missing, then the GT itself."""

    def __init__(self, gt: np.ndarray):
        self.gt, self.calls = gt, []

    def __call__(self, prompts, multimask):
        self.calls.append((prompts, multimask))
        mask = self.gt.copy()
        if len(self.calls) == 1:
            mask[:, 18:] = False
        k = 3 if multimask else 1
        logits = np.full((k, 256, 256), float(len(self.calls)), np.float32)
        return MaskResult(masks=np.repeat(mask[None], k, 0), scores=np.arange(k, dtype=np.float32), low_res_logits=logits)


def test_box_plus_clicks_session():
    gt = blob()
    model = FakeModel(gt)
    steps = list(simulate(model, gt, parse_protocol("box+clicks:3"), margin=2, rng=np.random.default_rng(0)))
    assert [s.clicks for s in steps] == [0, 1, 2, 3]
    assert len(model.calls) == 2  # the mask is perfect after click 1: click 2 and 3 repeat it, no model call
    first, second = model.calls
    assert first[0].box.tolist() == [3, 8, 31, 21] and first[0].points is None and not first[1]
    p = second[0]
    assert p.box.tolist() == [3, 8, 31, 21]  # the box is kept
    assert p.points.tolist() == [[23, 14]] and p.point_labels.tolist() == [1]  # centre of the missed part
    assert p.mask_logits is not None and float(p.mask_logits.mean()) == 1.0  # logits of call 1 fed back
    assert steps[-1].mask.sum() == gt.sum() and steps[-1].seconds == 0.0


def test_clicks_session_multimask_only_on_a_lone_first_click_and_no_feedback_option():
    gt = blob()
    model = FakeModel(gt)
    list(simulate(model, gt, Protocol("clicks", 2), rng=np.random.default_rng(0), feed_logits=False))
    (p1, mm1), (p2, mm2) = model.calls
    assert mm1 and not mm2
    assert p1.points.tolist() == [[17, 14]] and p2.points.tolist() == [[17, 14], [23, 14]]
    assert p2.mask_logits is None


def test_points_session_is_one_step_reported_at_n():
    gt = blob()
    steps = list(simulate(FakeModel(gt), gt, parse_protocol("points:5"), rng=np.random.default_rng(3)))
    assert [s.clicks for s in steps] == [5] and len(steps[0].prompts.points) == 5


def test_empty_ground_truth_is_a_clear_error():
    with pytest.raises(ProtocolError, match="empty"):
        list(simulate(FakeModel(blob()), np.zeros((40, 50), bool), parse_protocol("box"), rng=np.random.default_rng(0)))


def test_points_from_a_label_image_and_at_the_edges_of_possible():
    """A 0/255 label image is a mask like any other; one pixel of structure (or of background) is enough."""
    for gt in (blob().astype(np.uint8) * 255, blob().astype(np.uint8)):  # 0/255 and 0/1
        pts, labels = sample_points(gt, 9, np.random.default_rng(1))
        assert pts.dtype == np.float32 and labels.dtype == np.int64 and labels.tolist() == [1] * 4 + [0] * 5
        x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
        assert (gt[y[:4], x[:4]] > 0).all() and (gt[y[4:], x[4:]] == 0).all()
    one = np.zeros((6, 7), bool)
    one[2, 5] = True
    pts, labels = sample_points(one, 3, np.random.default_rng(0))
    assert pts[0].tolist() == [5.0, 2.0] and labels.tolist() == [1, 0, 0]
    full = ~one
    pts, labels = sample_points(full, 2, np.random.default_rng(0))
    assert pts[1].tolist() == [5.0, 2.0] and labels.tolist() == [1, 0]
    with pytest.raises(ProtocolError, match="^the ground truth is empty on this slice: no positive point can be "
                                            "placed$"):
        sample_points(np.zeros((4, 4), bool), 1, np.random.default_rng(0))
    with pytest.raises(ProtocolError, match="^the ground truth fills the whole slice: no negative point can be "
                                            "placed$"):
        sample_points(np.ones((4, 4), bool), 2, np.random.default_rng(0))
    assert sample_points(np.ones((4, 4), bool), 1, np.random.default_rng(0))[1].tolist() == [1]


def test_every_prompt_carries_the_pixel_spacing_and_each_step_what_the_model_gave():
    gt = blob()
    spacing = (0.5, 0.8)
    for text, multimask in (("points:1", [True]), ("points:2", [False]), ("box", [False]),
                            ("box+clicks:2", [False, False]), ("clicks:2", [True, False])):
        model = FakeModel(gt)
        t0 = time.perf_counter()
        steps = list(simulate(model, gt, parse_protocol(text), rng=np.random.default_rng(0), spacing=spacing))
        elapsed = time.perf_counter() - t0
        assert [mm for _, mm in model.calls] == multimask, text
        assert all(p.pixel_spacing == spacing for p, _ in model.calls), text
        assert all(s.prompts.pixel_spacing == spacing for s in steps), text
        assert all(isinstance(s.seconds, float) and 0 <= s.seconds <= elapsed for s in steps), text
        assert steps[0].mask.dtype == bool and steps[0].mask.shape == gt.shape
        if text.startswith("points"):
            (step,) = steps
            first_answer = gt.copy()
            first_answer[:, 18:] = False  # FakeModel's first answer misses the right part
            np.testing.assert_array_equal(step.mask, first_answer)
            assert step.prompts.point_labels.tolist() == ([1] if text == "points:1" else [1, 0])
    # the box protocol: one step, the box grown by the default 5 px margin, the model's mask kept
    model = FakeModel(gt)
    (step,) = simulate(model, gt, parse_protocol("box"), rng=np.random.default_rng(0))
    ((prompts, multimask),) = model.calls
    assert multimask is False and prompts.box.tolist() == [0, 5, 34, 24] and step.clicks == 0
    assert step.prompts.box.tolist() == [0, 5, 34, 24] and float(step.prompts.mask_logits.mean()) == 1.0
    assert step.mask.sum() == gt[:, :18].sum()


def test_a_jittered_box_is_the_seeded_one_and_repeated_steps_keep_their_prompts():
    gt = blob()
    rng = np.random.default_rng(11)
    expected = box_from_mask(gt, 3, jitter=4, rng=np.random.default_rng(11))
    assert expected.tolist() != box_from_mask(gt, 3).tolist()
    model = FakeModel(gt)
    steps = list(simulate(model, gt, parse_protocol("box+clicks:3"), margin=3, jitter=4, rng=rng))
    assert model.calls[0][0].box.tolist() == expected.tolist()
    # click 1 makes the mask perfect: clicks 2 and 3 repeat click 1's prompts and mask, in no model time
    assert steps[2].prompts is steps[1].prompts and steps[3].prompts is steps[1].prompts
    assert steps[2].mask is steps[1].mask and steps[2].seconds == steps[3].seconds == 0.0
    assert steps[1].prompts.points.tolist() == [[23, 14]]


def test_protocol_spellings_and_limits():
    assert parse_protocol("Box + Clicks : 2") == Protocol("box+clicks", 2)
    assert parse_protocol("clicks:1") == Protocol("clicks", 1) and parse_protocol("points:100").n == 100
    assert str(parse_protocol("box")) == "box" and str(Protocol("clicks", 3)) == "clicks:3"
    with pytest.raises(ProtocolError, match=r"^protocol 'points:101': N = 101 clicks is more than the 100 this "
                                            r"simulator allows$"):
        parse_protocol("points:101")
    with pytest.raises(ProtocolError, match=r"^protocol 'clicks:0': N must be at least 1$"):
        parse_protocol("clicks:0")


def test_box_refusals_defaults_and_the_seeded_jitter_by_hand():
    gt = blob()
    box = box_from_mask(gt)
    assert box.tolist() == [5, 10, 29, 19] and box.dtype == np.float32  # no margin by default
    assert box_from_mask(gt.astype(np.uint8)).tolist() == [5, 10, 29, 19]
    for margin, jitter in ((-1, 0), (0, -1)):
        with pytest.raises(ProtocolError, match=rf"^margin and jitter must be >= 0 px, got margin {margin}, "
                                                rf"jitter {jitter}$"):
            box_from_mask(gt, margin, jitter=jitter, rng=np.random.default_rng(0))
    with pytest.raises(ProtocolError, match=r"^box jitter needs a random generator \(a seed\)$"):
        box_from_mask(gt, 2, jitter=1)
    shift = np.random.default_rng(7).integers(-3, 4, size=4)
    expected = np.clip(np.array([0, 5, 34, 24]) + shift, 0, [49, 39, 49, 39])
    assert box_from_mask(gt, 5, jitter=3, rng=np.random.default_rng(7)).tolist() == expected.tolist()
    # a structure in the corner: the jittered box never leaves the image, its sides stay ordered
    corner = np.zeros((40, 50), bool)
    corner[39, 49] = True
    for seed in range(30):
        x0, y0, x1, y1 = box_from_mask(corner, 0, jitter=3, rng=np.random.default_rng(seed)).tolist()
        assert 0 <= x0 <= x1 <= 49 and 0 <= y0 <= y1 <= 39


def test_next_click_takes_label_images_eight_neighbours_and_the_largest_region():
    gt = blob()
    pred = blob(rows=(10, 20), cols=(5, 20))
    assert next_click(gt.astype(np.uint8), pred.astype(np.uint8)) == next_click(gt, pred) == Click(24, 14, True)
    with pytest.raises(ValueError, match=r"^ground truth \(40, 50\) and prediction \(4, 5\) differ in size$"):
        next_click(gt, np.zeros((4, 5), bool))
    # two misses: a small one first in row order, a larger one below: the click goes to the larger
    gt = np.zeros((40, 50), bool)
    gt[2:5, 2:5] = True
    gt[20:30, 20:30] = True
    assert next_click(gt, np.zeros_like(gt)) == Click(24, 24, True)
    # a miss larger than a false positive of 4 px: the miss wins
    pred = np.zeros_like(gt)
    pred[35:37, 40:42] = True
    assert next_click(gt, pred).positive is True
    # a tie in area: the miss wins
    tie = np.zeros((20, 20), bool)
    tie[2:5, 2:5] = True
    fp = np.zeros_like(tie)
    fp[10:13, 10:13] = True
    assert next_click(tie, fp) == Click(3, 3, True)
    # two false-positive squares touching at a corner are one region (8-connected), larger than the miss
    gt = np.zeros((30, 30), bool)
    gt[2:6, 2:6] = True  # 16 px missed
    pred = np.zeros_like(gt)
    pred[10:13, 10:13] = True
    pred[13:16, 13:16] = True  # 9 + 9 px, diagonal neighbours
    assert next_click(gt, pred).positive is False


class OverThenUnder:
    """Answers first with the GT plus a false-positive slab (a negative click follows), then with the GT's left
    part only (a positive click follows), then the GT; logits are the call number."""

    def __init__(self, gt):
        self.gt, self.calls = gt, []

    def __call__(self, prompts, multimask):
        self.calls.append(prompts)
        n = len(self.calls)
        mask = self.gt | blob(rows=(25, 40), cols=(0, 50)) if n == 1 else self.gt.copy()
        if n == 2:
            mask[:, 18:] = False
        return MaskResult(masks=mask[None], scores=np.ones(1, np.float32),
                          low_res_logits=np.full((1, 256, 256), float(n), np.float32))


def test_each_click_keeps_every_earlier_label_and_feeds_the_last_logits_back():
    gt = blob()
    model = OverThenUnder(gt)
    steps = list(simulate(model, gt, parse_protocol("clicks:3"), rng=np.random.default_rng(0)))
    first, second, third = model.calls
    assert second.point_labels.tolist() == [1, 0] and third.point_labels.tolist() == [1, 0, 1]
    assert float(second.mask_logits.mean()) == 1.0 and float(third.mask_logits.mean()) == 2.0
    assert steps[-1].prompts.point_labels.tolist() == [1, 0, 1] and float(steps[-1].prompts.mask_logits.mean()) == 3.0


def test_clicks_and_boxes_at_the_last_row_and_column():
    corner = np.zeros((40, 50), bool)
    corner[39, 49] = True
    assert box_from_mask(corner).tolist() == [49, 39, 49, 39]
    row = np.zeros((40, 50), bool)
    row[39, 10:30] = True  # a structure one pixel thin along the bottom edge
    click = next_click(row, np.zeros_like(row))
    assert click.y == 39 and 10 <= click.x < 30
    column = row.T.copy()
    click = next_click(column, np.zeros_like(column))
    assert click.x == 39 and 10 <= click.y < 30
    # label values other than 1: a 0/2 ground truth and a 0/2 prediction
    gt, pred = blob(), blob(rows=(10, 20), cols=(5, 20))
    twos = next_click(gt.astype(np.uint8) * 2, pred.astype(np.uint8) * 2)
    assert twos == next_click(gt, pred) == Click(24, 14, True)
    assert next_click(gt.astype(np.uint8) * 2, pred) == next_click(gt, pred.astype(np.uint8) * 2) == twos
    with pytest.raises(ProtocolError, match="^the ground truth is empty on this slice: there is no box to draw$"):
        box_from_mask(np.zeros((3, 3), bool))
    with pytest.raises(ProtocolError, match="^the ground truth is empty on this slice; these protocols need a "
                                            "structure to prompt$"):
        list(simulate(FakeModel(blob()), np.zeros((40, 50), bool), parse_protocol("clicks:1"),
                      rng=np.random.default_rng(0)))


def test_negatives_of_a_mostly_filled_0_1_label_image_lie_outside_and_boxes_stay_through_clicks():
    gt = np.ones((40, 50), np.uint8)
    gt[:4, :5] = 0  # 20 background pixels of 2000
    pts, labels = sample_points(gt, 10, np.random.default_rng(2))
    x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert labels.tolist() == [1] * 5 + [0] * 5 and (gt[y[5:], x[5:]] == 0).all() and (gt[y[:5], x[:5]] == 1).all()
    model = OverThenUnder(blob())
    list(simulate(model, blob(), parse_protocol("box+clicks:3"), margin=2, rng=np.random.default_rng(0)))
    assert len(model.calls) == 3 and all(p.box.tolist() == [3, 8, 31, 21] for p in model.calls)
