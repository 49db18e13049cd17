"""The runner and `medseg eval` with the real LiteMedSAM on the shared data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from app.cli import main
from evaluation.clicks import parse_protocol
from evaluation.manifest import read_manifest
from evaluation.runner import EmbeddingCache, EvalSettings, evaluate
from tests.conftest import DATA, memoised_embeddings

MANIFEST = DATA / "manifest.csv"


@pytest.fixture(scope="module", autouse=True)
def _encoded_once(litemedsam):
    """The click test's slice (Colin27 k001) is one of the baseline's 16: encoded once (``memoised_embeddings``;
    the click test counts its cache's calls to the model, which stay one)."""
    with memoised_embeddings(litemedsam):
        yield


def baseline_dice(margin: int) -> dict[str, float]:
    with open(DATA / "baseline_litemedsam.csv", newline="") as f:
        return {
            r["case_id"]: float(r["dice"])
            for r in csv.DictReader(f)
            if r["variant"] == "upstream" and int(r["margin_px"]) == margin
        }


def test_cli_box_reproduces_the_upstream_baseline(litemedsam, tmp_path, capsys):
    """`medseg eval manifest.csv --protocol box --margin 5` = baseline_litemedsam.csv (upstream, +5 px)."""
    out = tmp_path / "run"
    code = main(
        [
            "eval", str(MANIFEST), "--protocol", "box", "--margin", "5",
            "--group-by", "modality", "--output", str(out), "--no-progress",
        ]
    )
    assert code == 0
    with open(out / "per_case.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["case_id", "structure", "clicks", "dice", "iou", "hd95", "nsd", "seconds"]
        rows = list(reader)
    base = baseline_dice(5)
    cases, _ = read_manifest(MANIFEST)
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]  # manifest order, one box step each
    assert {r["clicks"] for r in rows} == {"0"}
    ours = np.array([float(r["dice"]) for r in rows])
    ref = np.array([base[r["case_id"]] for r in rows])
    assert abs(ours.mean() - ref.mean()) < 0.005
    assert np.abs(ours - ref).max() < 0.005

    summary = json.loads((out / "summary.json").read_text())
    assert summary["means"]["all"]["0"]["dice"] == pytest.approx(ours.mean(), abs=1e-5)
    # ES-Dice by modality by hand from the CSV: FairSeg's M_all is the mean over all cases.
    modality = {c.case_id: c.attributes["modality"] for c in cases}
    groups = {m: ours[[modality[r["case_id"]] == m for r in rows]].mean() for m in set(modality.values())}
    es = ours.mean() / (1 + sum(abs(g - ours.mean()) for g in groups.values()))
    got = summary["equity"]["modality"]["0"]["all"]["dice"]
    assert got["es"] == pytest.approx(es, abs=1e-5)
    assert set(got["groups"]) == {"MR-T1", "CT", "synthetic"}
    assert "error" in summary["equity"]["modality"]["0"]["thalamus_L"]["dice"]  # one modality only
    report = (out / "report.md").read_text()
    assert "ES-Dice" in report and "![Dice per click](dice_per_click.png)" in report
    assert (out / "dice_per_click.png").stat().st_size > 1000 and (out / "groups_modality.png").is_file()
    assert "mean Dice 0.64" in capsys.readouterr().out


class CountingSegmenter:
    """Passes calls to the real model and counts the encoder runs."""

    def __init__(self, inner):
        self.inner, self.name, self.embeds = inner, inner.name, 0

    def embed(self, image):
        self.embeds += 1
        return self.inner.embed(image)

    def predict(self, embedding, prompts, *, multimask_output=False):
        return self.inner.predict(embedding, prompts, multimask_output=multimask_output)


def manifest_ground_truth(case_id: str) -> np.ndarray:
    """The case's (H, W) ground truth cut here from the label NIfTI with nibabel, as shared/data/README.md
    says (``rot90`` = ``np.rot90(vol[:, :, k])``), checked against the manifest's gt_area_px."""
    import nibabel as nib

    with open(MANIFEST, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["case_id"] == case_id)
    assert row["transform"] == "rot90"
    plane = np.rot90(np.asanyarray(nib.load(DATA / row["label"]).dataobj)[:, :, int(row["slice_index"])])
    gt = np.isin(plane, [float(v) for v in row["label_values"].split("|")])
    assert int(gt.sum()) == int(row["gt_area_px"])
    return gt


def test_clicks_reuse_one_embedding_per_slice_and_are_deterministic(litemedsam, monkeypatch):
    import evaluation.runner

    cases, _ = read_manifest(MANIFEST)
    pick = ["mr_t1_colin27_slabA_caudate_L_k001", "mr_t1_colin27_slabA_brain_k001", "mr_t1_colin27_slabA_caudate_R_k001"]
    subset = [c for c in cases if c.case_id in pick]  # three structures on one slice
    masks = []  # each step's mask, in row order
    simulate = evaluation.runner.simulate

    def recording(*args, **kwargs):
        for step in simulate(*args, **kwargs):
            masks.append(np.asarray(step.mask, bool))
            yield step

    monkeypatch.setattr(evaluation.runner, "simulate", recording)
    seg = CountingSegmenter(litemedsam)
    cache = EmbeddingCache(seg)
    run = evaluate(seg, MANIFEST, EvalSettings(parse_protocol("box+clicks:2"), margin=5), cases=subset, progress=False, cache=cache)
    assert seg.embeds == 1
    assert [(r.case_id, r.clicks) for r in run.rows] == [(c.case_id, k) for c in subset for k in (0, 1, 2)]
    base = baseline_dice(5)
    by_slice = sorted(range(len(subset)), key=lambda i: evaluation.runner._slice_key(subset[i]))  # visit order
    steps = {subset[i].case_id: masks[3 * n: 3 * n + 3] for n, i in enumerate(by_slice)}
    for r in run.rows:
        assert 0.0 <= r.nsd <= 1.0 and r.hd95 >= 0
        gt, mask = manifest_ground_truth(r.case_id), steps[r.case_id][r.clicks]
        both = int((mask & gt).sum())
        assert r.dice == pytest.approx(2 * both / (mask.sum() + gt.sum()), abs=1e-6)  # Dice by hand
        assert r.iou == pytest.approx(both / (mask | gt).sum(), abs=1e-6)
        if r.clicks == 0:
            assert r.dice == pytest.approx(base[r.case_id], abs=0.005)

    settings = EvalSettings(parse_protocol("points:3"), seed=11)
    a = evaluate(seg, MANIFEST, settings, cases=subset[:1], progress=False, cache=cache)
    b = evaluate(seg, MANIFEST, settings, cases=subset[:1], progress=False, cache=cache)
    assert seg.embeds == 1  # the cache served both runs
    assert [r.dice for r in a.rows] == [r.dice for r in b.rows] and a.rows[0].clicks == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["--protocol", "clicks"], "unknown protocol 'clicks'"),
        (["--group-by", "scanner"], "--group-by scanner: no such column"),
        (["--margin", "-1"], "--margin and --jitter must be >= 0"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["eval", str(MANIFEST), "--output", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
