"""Fill between two anchors (``PropagationSettings.fill``): shape, model, or the model prompted with the shape;
the default of every backend (shape, measured in docs/evaluation.md "Session 18"), the CLI's ``--fill`` and the
UI's choice. Real LiteMedSAM on the bundled 12-slice CT series (head labels), the shared embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from app.embedding_cache import EmbeddingCache
from app.propagation import PropagationSettings, interpolate_shapes, propagate_anchors
from app.propagation_defaults import default_propagation
from data.readers import read_study
from data.windowing import default_window
from tests.app.propagation_fixtures import CT_SERIES, cli_meets_the_cache, ct, head  # noqa: F401 (fixtures)
from tests.conftest import dice


@pytest.fixture(scope="module")
def cache(ct_series_embeddings):
    return ct_series_embeddings


def _counting(cache: EmbeddingCache) -> tuple[EmbeddingCache, list[int]]:
    """A cache that records every slice the encoder is asked for (already cached ones included)."""
    asked: list[int] = []
    real = cache.embeddings

    def embeddings(segmenter, volume, ks, *args, **kwargs):
        asked.extend(ks)
        return real(segmenter, volume, ks, *args, **kwargs)

    cache.embeddings = embeddings
    return cache, asked


@pytest.mark.parametrize("backend", ["torch", "torch-fp16", "onnx-int8-conv", "onnx"])
def test_every_backend_fills_between_anchors_by_shape_by_default(backend):
    assert default_propagation(backend).fill == "shape"


def test_a_fill_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="fill must be 'model', 'shape' or 'guided', got 'smooth'"):
        PropagationSettings(fill="smooth")


def test_shape_fill_is_the_interpolation_and_asks_the_model_for_no_slice_between(litemedsam, ct, head):
    anchors = {2: head[2], 9: head[9]}
    counting, asked = _counting(EmbeddingCache(max_items=16))
    res = propagate_anchors(litemedsam, ct, anchors, window=default_window(ct), cache=counting,
                            settings=PropagationSettings(fill="shape"), beyond=())
    np.testing.assert_array_equal(res.masks, interpolate_shapes(anchors, 12))
    assert asked == [] and res.stopped == {"gap 2..9": "filled (shape)"}


def test_guided_fill_keeps_the_anchors_and_segments_each_slice_between_from_the_shape(litemedsam, ct, head, cache):
    """The model looks at every slice between (its masks are not the shape's) and stays on the head."""
    anchors = {2: head[2], 9: head[9]}
    res = propagate_anchors(litemedsam, ct, anchors, window=default_window(ct), cache=cache,
                            settings=PropagationSettings(fill="guided"), beyond=())
    np.testing.assert_array_equal(res.masks[2], head[2])
    np.testing.assert_array_equal(res.masks[9], head[9])
    shape = interpolate_shapes(anchors, 12)
    assert res.slices == list(range(2, 10)) and res.stopped == {"gap 2..9": "filled (guided)"}
    assert all((res.masks[k] != shape[k]).any() for k in range(3, 9))
    assert dice(res.masks[3:9], head[3:9]) >= 0.85


def test_guided_fill_leaves_a_slice_empty_where_the_shape_is(litemedsam, ct, head, cache):
    """Two anchors that do not overlap: the signed-distance blend is empty midway, and the model is not asked to
    segment from an empty prompt there (it would raise: no box from an empty mask)."""
    left, right = np.zeros_like(head[2]), np.zeros_like(head[2])
    left[100:120, 20:40], right[100:120, 200:220] = True, True
    res = propagate_anchors(litemedsam, ct, {2: left, 9: right}, window=default_window(ct), cache=cache,
                            settings=PropagationSettings(fill="guided"), beyond=())
    empty = [k for k in range(3, 9) if not interpolate_shapes({2: left, 9: right}, 12)[k].any()]
    assert empty and all(not res.masks[k].any() for k in empty)


def _png(path, mask):
    import cv2

    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    return path


@pytest.mark.parametrize("fill", ["guided", "model"])
def test_cli_fill_runs_the_model_between_anchors_and_says_so(head, tmp_path, capsys, fill, cache, monkeypatch):
    from app.cli import main

    cli_meets_the_cache(monkeypatch, cache)
    a, b = _png(tmp_path / "a.png", head[2]), _png(tmp_path / "b.png", head[9])
    out = tmp_path / "fill.nii.gz"
    code = main(["propagate", str(CT_SERIES), "--anchor", f"2:{a}", "--anchor", f"9:{b}", "--fill", fill,
                 "--max-slices", "0", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"fill {fill}" in captured.out and f"gap 2..9: filled{' (guided)' if fill == 'guided' else ''}" in captured.out
    labels = read_study(out).array
    np.testing.assert_array_equal(labels[2] == 1, head[2])
    assert dice(labels[3:9] == 1, head[3:9]) >= 0.75
    assert cache.misses <= 12  # each of the series' slices encoded at most once (see cli_meets_the_cache)


def test_cli_box_with_fill_shape_walks_beyond_and_interpolates_between(head, tmp_path, capsys, cache, monkeypatch):
    """--fill shape with a box used to be refused; now the box's walk runs and the gap to the anchor is the shape."""
    from app.cli import main
    from app.propagation import box_around

    cli_meets_the_cache(monkeypatch, cache)
    b = _png(tmp_path / "b.png", head[9])
    x0, y0, x1, y1 = (str(int(v)) for v in box_around(head[3], 5))
    out = tmp_path / "walk.nii.gz"
    code = main(["propagate", str(CT_SERIES), "--slice", "3", "--box", x0, y0, x1, y1, "--anchor", f"9:{b}",
                 "--fill", "shape", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "gap 3..9: filled (shape)" in captured.out and "fill shape" in captured.out
    labels = read_study(out).array == 1
    np.testing.assert_array_equal(labels[9], head[9])
    assert labels[:3].any() and labels[10:].any()  # walked beyond both ends
    assert cache.misses <= 12


class _Recording:
    """A segmenter that records the prompts it is given (everything else is the wrapped one's)."""

    def __init__(self, segmenter):
        self.segmenter, self.prompts = segmenter, []

    def __getattr__(self, name):
        return getattr(self.segmenter, name)

    def predict(self, embedding, prompts, **kwargs):
        self.prompts.append(prompts)
        return self.segmenter.predict(embedding, prompts, **kwargs)

    def predict_many(self, embeddings, prompts, **kwargs):
        self.prompts.extend(prompts)
        return self.segmenter.predict_many(embeddings, prompts, **kwargs)


@pytest.mark.parametrize("which, with_mask", [("litemedsam", True), ("litemedsam_base", False)])
def test_guided_fill_gives_the_shape_as_a_mask_prompt_only_to_a_decoder_trained_on_one(request, ct, head, which, with_mask):
    """The base LiteMedSAM's box-trained decoder does worse with a mask prompt than without (docs/evaluation.md);
    the click model was trained on neighbouring slices' masks. Guided fill gives the base model the shape's box."""
    segmenter = _Recording(request.getfixturevalue(which))
    propagate_anchors(segmenter, ct, {2: head[2], 5: head[5]}, window=default_window(ct),
                      settings=PropagationSettings(fill="guided"), beyond=())
    assert len(segmenter.prompts) == 2 and all(p.box is not None for p in segmenter.prompts)
    assert all((p.mask_logits is not None) == with_mask for p in segmenter.prompts)
