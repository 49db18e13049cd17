"""Which backend runs a model when nobody names one: the fastest that keeps fp32's accuracy (issue 22).

The rule, on the CPU: the fastest backend whose mean Dice on the shared set (42 slices, GT box + 5 px,
``medseg eval``) stays within 0.005 of fp32 torch, with no case worse by more than 0.1. The figures are
measured, never assumed: ``runtime/cpu_backends.json`` holds them with their command and raw files, per
kind of int8 arithmetic (``u8w``: x86 without VNNI, whose int8 files carry uint8 weights, see
``runtime.onnx_quant.int8_dot_saturates``; ``s8w``: the others). A CPU kind or a model without figures
runs torch. On a GPU, LiteMedSAM's default is ``torch-fp16`` (eager fp16 encoder), measured through that
path on the shared set on an H200 (docs/benchmarks.md, section E); other models and adapters run torch.

Override, strongest first: ``--backend NAME`` (CLI, ``medseg serve``, ``medseg labelserver``), then
``$MEDSEG_BACKEND``, then the rule. ``auto`` in either place means "the rule".
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

AUTO = "auto"
ENV_VAR = "MEDSEG_BACKEND"
MEASUREMENTS = Path(__file__).resolve().parent / "cpu_backends.json"
MEAN_TOLERANCE = 0.005  # |mean Dice change| allowed against fp32 torch
CASE_TOLERANCE = 0.1  # largest loss of one case allowed
# GPU: models whose fp16 encoder was measured against fp32 through the path that runs (eager fp16, batch 1 and 64)
GPU_MEASURED = {
    "litemedsam": "H200 2026-12-04, 42 shared slices: mean Dice change -0.00001, worst case -0.0074, "
                  "644 vs 260 slices/s (docs/bench/h200_bisect_compiled_2026-12-04_b.jsonl)",
}


@dataclass(frozen=True)
class BackendChoice:
    """The backend a model runs with, why (one short sentence), who decided (``flag``, ``env`` or ``rule``)
    and, for the rule, the measured figures behind it."""

    backend: str
    reason: str
    source: str
    evidence: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def status(self) -> str:
        """One line for a status bar: ``backend onnx-int8-fast: <reason>``."""
        return f"backend {self.backend}: {self.reason}"


class BackendError(ValueError):
    """A backend name that does not exist, or one that cannot run here; the message names where it came from."""


def cpu_kind() -> str:
    """``u8w`` where int8 weights would saturate (x86 without VNNI), else ``s8w``."""
    from runtime.onnx_quant import int8_dot_saturates

    return "u8w" if int8_dot_saturates() else "s8w"


@functools.lru_cache(maxsize=2)
def load_measurements(path: Path = MEASUREMENTS) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fastest_accurate(rows: Mapping[str, Mapping[str, float]], speed: str = "slice encode") -> tuple[str, str, str]:
    """(backend, reason, evidence): the fastest row that meets the rule; ``torch`` (the reference) always does.

    ``rows``: backend -> ``encoder_ms`` (CPU slice encode), ``mean_dice_change`` and ``worst_case_change``
    (per case, negative = loss) against fp32 torch; ``speed`` names what ``encoder_ms`` measured.
    """
    passing, failing = [], []
    for name, r in rows.items():
        ok = name == "torch" or (
            abs(r["mean_dice_change"]) <= MEAN_TOLERANCE and r["worst_case_change"] >= -CASE_TOLERANCE
        )
        (passing if ok else failing).append((float(r["encoder_ms"]), name))
    if not any(name == "torch" for _, name in passing):
        passing.append((float("inf"), "torch"))
    ms, best = min(passing)
    faster_but_failing = sorted(n for m, n in failing if m < ms)
    outside = f"; {', '.join(faster_but_failing)} faster but outside the rule" if faster_but_failing else ""
    if best == "torch":
        return best, "no faster CPU backend keeps Dice within 0.005 of fp32 torch", outside.lstrip("; ")
    torch_ms = float(rows["torch"]["encoder_ms"]) if "torch" in rows else float("nan")
    r = rows[best]
    return best, "the fastest CPU backend whose Dice stays within 0.005 of fp32 torch", (
        f"{speed} {ms:.0f} ms vs torch {torch_ms:.0f} ms; mean Dice change {r['mean_dice_change']:+.4f}, "
        f"worst case {r['worst_case_change']:+.3f}{outside}"
    )


def choose(
    model: str,
    device: str,
    requested: str | None = None,
    *,
    adapter: bool = False,
    env: Mapping[str, str] | None = None,
) -> BackendChoice:
    """The backend for ``model`` on ``device``: ``requested`` (a flag) if given and not ``auto``, else
    ``$MEDSEG_BACKEND`` if set and not ``auto``, else the rule. Raises BackendError for an unknown name."""
    from runtime import BACKENDS, GPU_ONLY_BACKENDS

    env = os.environ if env is None else env
    for source, value, where in (("flag", requested, "--backend"), ("env", env.get(ENV_VAR, "").strip(), ENV_VAR)):
        if not value or value == AUTO:
            continue
        if value not in BACKENDS:
            raise BackendError(f"{where} {value!r}: expected one of {AUTO}, {', '.join(BACKENDS)}")
        if value != "torch" and adapter:
            if source == "env":  # a machine-wide default does not forbid adapters
                return BackendChoice("torch", f"adapters run on the torch backend only ({ENV_VAR} not applied)", "rule")
            raise BackendError(f"{where} {value}: adapters run on the torch backend only")
        if value in GPU_ONLY_BACKENDS and device == "cpu":
            raise BackendError(f"{where} {value}: needs a CUDA GPU (--device cuda)")
        return BackendChoice(value, f"asked for with {where}", source)
    if device != "cpu":
        if adapter or model not in GPU_MEASURED:
            return BackendChoice("torch", "on a GPU, models without a measured fp16 Dice run torch fp32", "rule")
        return BackendChoice("torch-fp16", "fp16 keeps fp32's Dice on the GPU (within 0.005, no case worse than 0.1)",
                             "rule", GPU_MEASURED[model])
    if adapter:
        return BackendChoice("torch", "adapters run on the torch backend only", "rule")
    table = load_measurements()
    if model not in table["models"]:
        return BackendChoice("torch", f"no CPU Dice measurement of the faster backends for {model}", "rule")
    kind = cpu_kind()
    measured = table["cpus"].get(kind)
    if not measured:
        return BackendChoice("torch", f"no CPU Dice measurement for this CPU's int8 kind ({kind})", "rule")
    speed = "CPU time per slice encode" if measured.get("encoder_ms_is") == "cpu_ms" else "slice encode"
    backend, reason, evidence = fastest_accurate(measured["backends"], speed)
    return BackendChoice(backend, reason, "rule", f"{evidence}; measured {measured['measured']} ({kind})")
