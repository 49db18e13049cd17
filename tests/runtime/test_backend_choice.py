"""The default backend is the fastest one that keeps fp32's Dice (issue 22), and it can be overridden.

The measured table (runtime/cpu_backends.json) must agree with the raw `medseg eval` outputs it cites, so a
changed measurement cannot silently leave the default on a backend that no longer meets the rule.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runtime.backend_choice import ENV_VAR, BackendError, choose, cpu_kind, fastest_accurate, load_measurements

ROOT = Path(__file__).resolve().parents[2]


def _rows(**rows):
    return {name: {"encoder_ms": ms, "mean_dice_change": mean, "worst_case_change": worst}
            for name, (ms, mean, worst) in rows.items()}


def test_the_fastest_backend_within_the_rule_wins():
    rows = _rows(torch=(1300, 0, 0), **{"onnx-int8-all": (550, -0.004, -0.09), "onnx-int8-fast": (480, -0.003, -0.05)})
    assert fastest_accurate(rows)[0] == "onnx-int8-fast"


@pytest.mark.parametrize("fast_row, why", [
    ((480, -0.0051, -0.05), "mean Dice 0.0051 below fp32"),
    ((480, +0.0060, -0.05), "mean Dice moved by more than 0.005, even upwards"),
    ((480, -0.001, -0.101), "one case worse by more than 0.1"),
])
def test_a_faster_backend_outside_the_rule_is_passed_over(fast_row, why):
    rows = _rows(torch=(1300, 0, 0), **{"onnx-int8-all": (550, -0.004, -0.09), "onnx-int8-fast": fast_row})
    backend, reason, evidence = fastest_accurate(rows)
    assert backend == "onnx-int8-all", why
    assert "onnx-int8-fast faster but outside the rule" in evidence


def test_torch_when_nothing_faster_meets_the_rule():
    rows = _rows(torch=(1300, 0, 0), **{"onnx-int8-all": (550, -0.02, -0.09)})
    backend, reason, _ = fastest_accurate(rows)
    assert backend == "torch" and "no faster" in reason


def _per_case(path: Path) -> dict[str, float]:
    return {r["case_id"]: float(r["dice"]) for r in csv.DictReader(open(path))}


def test_the_measured_table_matches_its_raw_eval_files():
    """Each backend row's Dice figures are recomputed from the per-case CSVs it cites (docs/bench/)."""
    table = load_measurements()
    checked = 0
    for kind, measured in table["cpus"].items():
        reference = measured.get("per_case_torch")
        if not reference:
            continue  # figures carried over from the log without per-case files (said so in the table)
        torch_dice = _per_case(ROOT / reference)
        assert len(torch_dice) == 42
        for backend, row in measured["backends"].items():
            if backend == "torch":
                continue
            dice = _per_case(ROOT / row["per_case"])
            assert dice.keys() == torch_dice.keys(), backend
            changes = [dice[k] - torch_dice[k] for k in torch_dice]
            assert row["mean_dice_change"] == pytest.approx(sum(changes) / len(changes), abs=5e-5), backend
            assert row["worst_case_change"] == pytest.approx(min(changes), abs=5e-5), backend
            checked += 1
    assert checked >= 3


def test_the_cpu_default_is_the_rule_applied_to_this_cpus_measurements():
    choice = choose("litemedsam", "cpu", env={})
    measured = load_measurements()["cpus"][cpu_kind()]["backends"]
    assert choice.source == "rule"
    assert choice.backend == fastest_accurate(measured)[0] != "torch"
    row = measured[choice.backend]
    assert abs(row["mean_dice_change"]) <= 0.005 and row["worst_case_change"] >= -0.1
    faster = [b for b, r in measured.items() if r["encoder_ms"] < row["encoder_ms"]]
    for b in faster:  # every faster backend breaks the rule
        assert abs(measured[b]["mean_dice_change"]) > 0.005 or measured[b]["worst_case_change"] < -0.1, b


def test_overrides_flag_then_environment_then_rule():
    env = {ENV_VAR: "onnx"}
    assert choose("litemedsam", "cpu", "torch", env=env).as_dict() == {
        "backend": "torch", "reason": "asked for with --backend", "source": "flag", "evidence": ""}
    assert choose("litemedsam", "cpu", "auto", env=env).backend == "onnx"
    assert choose("litemedsam", "cpu", None, env=env).source == "env"
    assert choose("litemedsam", "cpu", None, env={ENV_VAR: "auto"}).source == "rule"
    with pytest.raises(BackendError, match=ENV_VAR):
        choose("litemedsam", "cpu", None, env={ENV_VAR: "onnx-int9"})


def test_gpu_default_is_the_measured_fp16_encoder_adapters_and_unmeasured_models_run_torch():
    # LiteMedSAM's fp16 encoder was measured through its own path on an H200 (docs/benchmarks.md, section E)
    choice = choose("litemedsam", "cuda", env={})
    assert choice.backend == "torch-fp16" and "-0.00001" in choice.evidence and "h200_bisect" in choice.evidence
    assert choose("litemedsam+liver", "cpu", adapter=True, env={}).backend == "torch"
    assert choose("litemedsam+liver", "cpu", adapter=True, env={ENV_VAR: "onnx-int8-fast"}).backend == "torch"
    with pytest.raises(BackendError, match="adapters"):
        choose("litemedsam", "cpu", "onnx", adapter=True, env={})
    sam = choose("sam_vit_b", "cpu", env={})
    assert sam.backend == "torch" and "sam_vit_b" in sam.reason
    assert choose("sam_vit_b", "cuda", env={}).backend == "torch"
    assert choose("litemedsam+liver", "cuda", adapter=True, env={}).backend == "torch"
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        choose("litemedsam", "cpu", "torch-fp16", env={})


def test_medseg_info_prints_the_choice_and_why(capsys, monkeypatch):
    from app.cli import main

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["runtime"]
    expected = choose("litemedsam", "cpu", env={})
    assert facts == {"model": "litemedsam", "device": "cpu", **expected.as_dict()}
    assert "within 0.005" in facts["reason"] and "ms" in facts["evidence"]
    monkeypatch.setenv(ENV_VAR, "onnx")
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"]["backend"] == "onnx"
    assert main(["info", "--json", "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"]["source"] == "flag"
    monkeypatch.setenv(ENV_VAR, "fastest")
    assert main(["info", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert ENV_VAR in err and "\n" not in err and "Traceback" not in err


def test_cli_commands_default_to_auto(monkeypatch):
    """segment, propagate, eval and batch resolve --backend auto (the default) through the same rule."""
    from app.cli import build_parser
    from app.commands.common import backend_choice

    monkeypatch.delenv(ENV_VAR, raising=False)
    parser = build_parser()
    expected = choose("litemedsam", "cpu", env={}).backend
    for argv in (["segment", "x.nii.gz", "--box", "1", "1", "5", "5", "-o", "y.nii.gz"],
                 ["propagate", "x.nii.gz", "--slice", "1", "--box", "1", "1", "5", "5", "-o", "y.nii.gz"],
                 ["eval", "m.csv"], ["batch", "m.csv", "-o", "out"], ["serve"], ["labelserver", "--studies", "."]):
        args = parser.parse_args(argv)
        assert args.backend == "auto", argv[0]
        assert backend_choice(args).backend == expected, argv[0]
