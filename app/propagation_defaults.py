"""The propagation rule a walk runs when nobody names one, per encoder backend: the one place the CLI
(``medseg propagate``), the UI and the MONAI Label 3D model take it from.

Why per backend: a rule is made a default only where it was measured to win on the calibration set without
losing on the held-out slab (docs/evaluation.md, 3D propagation), and that was measured per backend: the encoder's
arithmetic moves the walk (each slice is prompted from its neighbour's answer, so small changes compound).
"""

from __future__ import annotations

from dataclasses import replace

from app.propagation import PropagationSettings

DEFAULT_FILL = "shape"
"""How every backend fills the slices between two anchors by default (``PropagationSettings.fill``): signed-distance
interpolation, chosen in session 18 by a rule fixed before the runs (docs/evaluation.md, "Session 18"): mean fill
Dice, calibration structures, int8 / torch: shape 0.918 / 0.918, the model prompted with the shape 0.877 / 0.878, the
model from both ends 0.591 / 0.607; held-out slab 0.861 / 0.861, 0.818 / 0.819, 0.603 / 0.589."""

BOX_RULE = PropagationSettings(fill=DEFAULT_FILL)
"""The neighbour's box + 3 px, every 2nd slice (``stride=2``), the stop rule: the default since session 10."""

GUARD_RULE = replace(BOX_RULE, prompt="auto", guard=0.7)
"""The click model's answer to the neighbour's logits + box where it agrees with the box answer (Dice >= 0.7), else
the box answer; every 2nd slice. ``auto`` is the box rule on a model without a click model trained on neighbouring
masks (``PropagationSettings.for_model``), so those models walk as before."""

GUARD_BY_BACKEND: dict[str, float] = {"torch": 0.7, "torch-fp16": 0.7, "onnx-int8": 0.8}
"""Backends whose default is :data:`GUARD_RULE`, with the guard threshold measured for each: only those where it was
measured to meet the rule above. Figures with the click model shipped since session 16 (docs/evaluation.md,
"Session 16" and "Session 23"; guard rule vs box rule):

- ``torch-fp16`` (the GPU default), H100, guard 0.7: calibration 0.474 vs 0.465, check 0.519 vs 0.454, held-out
  slab 0.560 vs 0.545, CT head 0.900 vs 0.779 (raw docs/bench/s16/h100_newcm_prop3d_torch-fp16.csv). With the model
  before session 16 it lost 0.003 on the held-out slab there and was not the default.
- ``torch`` (fp32), guard 0.7, the default since session 13: CPU, calibration 0.477 vs 0.476, check 0.518 vs 0.450,
  held-out slab 0.564 vs 0.540, CT head 0.900 vs 0.779 (docs/bench/s16/cpu_newcm_prop3d_torch.csv); on the H100 the
  calibration set ties (-0.0002) and the rest wins (h100_newcm_prop3d_torch.csv).
- ``onnx-int8`` (dynamic int8), guard 0.8, since session 23: CPU, calibration 0.484 vs 0.465, check 0.557 vs 0.546,
  held-out slab 0.549 vs 0.542, CT head 0.900 vs 0.778 (docs/bench/s23/prop3d_onnx-int8.csv); guard 0.7 lost on the
  calibration set there (0.459).
- not ``onnx-int8-conv`` (the CPU default): every guard lost on the calibration set or the held-out slab there
  (session 16: guard 0.7, calibration 0.450 vs 0.464, held-out slab 0.523 vs 0.551; session 18: guard 0.8, held-out
  slab -0.001); the other int8 and onnx backends: not measured.
"""


def default_propagation(backend: str) -> PropagationSettings:
    """The rule a walk on ``backend`` (a ``runtime.BACKENDS`` name, as ``runtime.backend_choice`` picked it) runs by
    default: :data:`GUARD_RULE` with the backend's threshold where measured to meet the rule
    (:data:`GUARD_BY_BACKEND`), else :data:`BOX_RULE`."""
    guard = GUARD_BY_BACKEND.get(backend)
    return BOX_RULE if guard is None else replace(GUARD_RULE, guard=guard)


def describe(settings: PropagationSettings) -> str:
    """The rule in a few words for a report line, e.g. ``mask+box, guard 0.7, stride 2, fill shape`` (pass the settings as
    ``for_model`` made them concrete, so ``auto`` reads as what ran)."""
    parts = [settings.prompt]
    if settings.guarded:
        parts.append(f"guard {settings.guard:g}")
    parts.append(f"stride {settings.stride}")
    parts.append(f"fill {settings.fill}")
    return ", ".join(parts)


def rule_of(settings: PropagationSettings, segmenter) -> str:
    """The rule a walk of ``segmenter`` runs with ``settings``, as the CLI's report line and the UI's status say it:
    SAM 2 tracks with its memory (no rule of ours), any other model :func:`describe` of ``settings.for_model``."""
    return "SAM 2 memory" if getattr(segmenter, "memory_tracking", False) else describe(settings.for_model(segmenter))
