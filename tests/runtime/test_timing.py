"""``medseg bench``'s latencies (``runtime.timing.measure_segmenter``) time what their names say, with the real
weights: ``box_ms`` a box, ``click_ms`` a corrective click that the click model's refiner answers. Until session 9
``click_ms`` timed the box, which never reaches the refiner, so "the click model's click latency" it reported
was the base decoder's."""

from __future__ import annotations

import numpy as np

from models.click_refiner import refiner_for
from runtime import timing


def test_click_ms_times_a_click_that_reaches_the_click_model(litemedsam, monkeypatch):
    asked = []
    predict = litemedsam.predict

    def recording(emb, prompts, *args, **kwargs):
        asked.append(prompts)
        return predict(emb, prompts, *args, **kwargs)

    monkeypatch.setattr(litemedsam, "predict", recording)
    # The encoder timings (encoder_ms, network_ms, slices_per_s: 14 runs of the encoder with their warm-ups) are not
    # what this test checks: the encoder runs once and answers the same input with that output (~25 s -> ~2 s).
    encode, encoded = litemedsam.encode, {}

    def encode_once(batch):
        key = (tuple(batch.shape), batch.cpu().numpy().tobytes())
        if key not in encoded:
            encoded[key] = encode(batch)
        return encoded[key]

    monkeypatch.setattr(litemedsam, "encode", encode_once)
    rng = np.random.default_rng(0)
    image = np.zeros((128, 128, 3), np.uint8)
    image[32:96, 40:90] = 180 + rng.integers(0, 40, (64, 50, 3), dtype=np.uint8)
    row = timing.measure_segmenter(litemedsam, image, device="cpu", batches=[1], repeat=1)
    assert row["box_ms"] > 0 and row["click_ms"] > 0
    assert len(encoded) == 1  # one real encode: every call was of the same model input
    boxes = [p for p in asked if p.points is None]
    clicks = [p for p in asked if p.points is not None]
    assert boxes and clicks
    assert all(refiner_for(litemedsam.model, p, False) is None for p in boxes)  # box_ms: the base decoder
    # click_ms: a positive point with the box and the box answer's logits fed back, which the refiner answers
    assert all(refiner_for(litemedsam.model, p, False) is not None for p in clicks)
    assert all(p.mask_logits is not None and p.box is not None and p.point_labels.tolist() == [1] for p in clicks)
