"""The propagation rule a walk runs when nobody names one, per encoder backend: the one place the CLI
(``medseg propagate``), the UI and the MONAI Label 3D model take it from.

Why per backend: a rule is made a default only where it was measured to win on the calibration set without
losing on the held-out slab (docs/evaluation.md, 3D propagation), and that was measured per backend: the encoder's
arithmetic moves the walk (each slice is prompted from its neighbour's answer, so small changes compound).
"""

from __future__ import annotations

from dataclasses import replace

from app.propagation import PropagationSettings

BOX_RULE = PropagationSettings()
"""The neighbour's box + 3 px, every 2nd slice (``stride=2``), the stop rule: the default since session 10."""

GUARD_RULE = replace(BOX_RULE, prompt="auto", guard=0.7)
"""The click model's answer to the neighbour's logits + box where it agrees with the box answer (Dice >= 0.7), else
the box answer; every 2nd slice. ``auto`` is the box rule on a model without a click model trained on neighbouring
masks (``PropagationSettings.for_model``), so those models walk as before."""

GUARD_RULE_BACKENDS: frozenset[str] = frozenset({"torch"})
"""Backends whose default is :data:`GUARD_RULE`: only those where it was measured to meet the rule above.

- ``torch`` (fp32): wins on every set, CPU, cached embeddings: calibration 0.485 vs 0.476, check 0.573 vs 0.539,
  held-out slab 0.548 vs 0.540, CT head 0.906 vs 0.779, Colin27 0.487 vs 0.477 (docs/evaluation.md, "The guard rule
  with the stride"; raw docs/img/propagation_guard_stride_s10.*). Measured on the CPU; torch on a GPU (a model
  without a measured fp16, or ``--backend torch``) takes it too, where cuDNN may run its convolutions in TF32:
  ``benchmarks/device_session.sh prop3d`` measures it there.
- not ``onnx-int8-conv`` (the CPU default): it loses 0.022 on the held-out slab there (0.529 vs 0.551;
  docs/img/propagation_guard_stride_int8_s10.*); the other int8 and onnx backends: not measured.
- not ``torch-fp16`` (the GPU default) until measured on a GPU: ``benchmarks/device_session.sh prop3d``.
"""


def default_propagation(backend: str) -> PropagationSettings:
    """The rule a walk on ``backend`` (a ``runtime.BACKENDS`` name, as ``runtime.backend_choice`` picked it) runs by
    default: :data:`GUARD_RULE` where measured to meet the rule (:data:`GUARD_RULE_BACKENDS`), else :data:`BOX_RULE`."""
    return GUARD_RULE if backend in GUARD_RULE_BACKENDS else BOX_RULE


def describe(settings: PropagationSettings) -> str:
    """The rule in a few words for a report line, e.g. ``mask+box, guard 0.7, stride 2`` (pass the settings as
    ``for_model`` made them concrete, so ``auto`` reads as what ran)."""
    parts = [settings.prompt]
    if settings.guarded:
        parts.append(f"guard {settings.guard:g}")
    parts.append(f"stride {settings.stride}")
    return ", ".join(parts)


def rule_of(settings: PropagationSettings, segmenter) -> str:
    """The rule a walk of ``segmenter`` runs with ``settings``, as the CLI's report line and the UI's status say it:
    SAM 2 tracks with its memory (no rule of ours), any other model :func:`describe` of ``settings.for_model``."""
    return "SAM 2 memory" if getattr(segmenter, "memory_tracking", False) else describe(settings.for_model(segmenter))
