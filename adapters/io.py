"""Adapter files: the adapter's tensors alone (safetensors) + ``adapter.json`` metadata.

A folder ``DIR`` holds ``adapter.safetensors`` (only the tensors :func:`adapters.inject.is_adapter_key`
selects: a few hundred kB to a few MB, not the base model) and ``adapter.json``::

    {"format": 1, "base_model": "litemedsam", "base_sha256": "...", "adapter": {AdapterConfig},
     "data": {data summary}, "validation": {scores}, "training": {settings}, "created": "..."}

Loading checks that the base weights are the ones the adapter was trained on (sha256), since
an adapter on other base weights would silently give wrong masks, and that adapter.safetensors is the
file adapter.json describes (``weights_sha256``): the two are replaced one after the other, so a save
interrupted between them leaves a pair that must not load as one (adapters saved before the field
existed load unchecked).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from adapters.inject import AdapterConfig, adapted_segmenter, adapter_state, inject, is_adapter_key
from models.checkpoint import CheckpointError, sha256_of

WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT = 1


def save_adapter(
    model: nn.Module,
    config: AdapterConfig,
    directory: str | Path,
    *,
    base_model: str,
    base_sha256: str,
    data: dict | None = None,
    validation: dict | None = None,
    training: dict | None = None,
) -> Path:
    """Write DIR/adapter.safetensors and DIR/adapter.json (each atomically: temp file, then rename).

    adapter.json records the weights' sha256: a crash between the two renames leaves new weights beside
    old metadata, which ``apply_adapter`` then refuses instead of loading with another adapter's settings.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "base_model": base_model,
        "base_sha256": base_sha256,
        "adapter": config.as_dict(),
        "data": data or {},
        "validation": validation or {},
        "training": training or {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    state = adapter_state(model, config)
    if not state:
        raise ValueError("this model has no adapter tensors to save: was it made with adapters.inject.inject?")
    fd, tmp = tempfile.mkstemp(prefix=".adapter.", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"base_model": base_model, "base_sha256": base_sha256})
        meta["weights_sha256"] = sha256_of(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / WEIGHTS_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".adapter.", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / META_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return directory


def read_metadata(directory: str | Path) -> dict:
    """DIR/adapter.json as a dict; CheckpointError naming the file and the fix."""
    directory = Path(directory)
    meta_path, weights = directory / META_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise CheckpointError(f"adapter folder {directory} does not exist (made by medseg finetune --output DIR)")
    for path in (meta_path, weights):
        if not path.is_file():
            raise CheckpointError(f"adapter folder {directory} has no {path.name}; is it the --output of medseg finetune?")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):  # `5` or a string raised TypeError/AttributeError: a traceback
        raise CheckpointError(f"{meta_path} holds a JSON {type(meta).__name__}; expected an object with base_model, "
                              "base_sha256 and adapter")
    for key in ("base_model", "base_sha256", "adapter"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} lacks the field {key!r}; re-save the adapter with medseg finetune")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta.get('format')!r}; this medseg reads format {FORMAT}")
    return meta


def apply_adapter(base, directory: str | Path, base_checkpoint: str | Path):
    """A new Segmenter = ``base`` (left untouched) + the adapter in DIR, after checking the base weights.

    ``base_checkpoint`` is the weights file ``base`` was loaded from; its sha256 must be the
    one recorded when the adapter was trained.
    """
    from safetensors.torch import load

    directory = Path(directory)
    meta = read_metadata(directory)
    if meta["base_model"] != base.name:
        raise CheckpointError(
            f"adapter {directory} was trained on model {meta['base_model']!r}, not {base.name!r}: "
            f"use --model {meta['base_model']}"
        )
    digest = sha256_of(base_checkpoint)
    if digest != meta["base_sha256"]:
        raise CheckpointError(
            f"adapter {directory} was trained on base weights with sha256 {meta['base_sha256']}, but "
            f"{base_checkpoint} has sha256 {digest}: load the base checkpoint it was trained on (--checkpoint FILE)"
        )
    try:
        config = AdapterConfig.from_dict(meta["adapter"], source=str(directory / META_FILE))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / META_FILE}: bad adapter settings: {e}") from e
    model = inject(base.model, config)
    try:
        state = load(_checked_weights(directory, meta))
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is not a valid safetensors file: {e}") from e
    expected = {k for k in model.state_dict() if is_adapter_key(k, config)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not fit a {config.kind} adapter on {base.name}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}; was it saved for another model?"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # wrong shapes
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not fit {base.name}: {e}") from e
    return adapted_segmenter(base, model, f"{base.name}+{directory.name}")


def _checked_weights(directory: Path, meta: dict) -> bytes:
    """DIR/adapter.safetensors' bytes, once they match the sha256 adapter.json records (read once: hashed and
    loaded from the same bytes)."""
    path = directory / WEIGHTS_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from e
    expected = meta.get("weights_sha256")
    if expected is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise CheckpointError(
                f"{path} has sha256 {digest[:16]}..., but the {META_FILE} beside it records {str(expected)[:16]}...: "
                "the two are not one save (a save interrupted between them, or a file copied over); save the "
                "adapter again (medseg finetune --output DIR)"
            )
    return data


def load_adapted(
    directory: str | Path,
    *,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    backend: str = "torch",
):
    """The base model named in DIR's metadata (from the registry, shared) + the adapter, cached per process.

    ``model``: the base model the caller asked for; CheckpointError if the adapter is for another.
    """
    if backend != "torch":
        raise ValueError(f"adapters run on the torch backend only, not {backend!r}; drop --backend or --adapter")
    if model is not None:
        base_model = read_metadata(directory)["base_model"]
        if base_model != model:
            raise CheckpointError(f"adapter {directory} was trained on model {base_model!r}, not {model!r}: use --model {base_model}")
    return _load_adapted_cached(str(Path(directory).resolve()), None if checkpoint is None else str(checkpoint), device)


@functools.lru_cache(maxsize=4)
def _load_adapted_cached(directory: str, checkpoint: str | None, device: str):
    from models.registry import get_spec, load_segmenter

    meta = read_metadata(directory)
    base = load_segmenter(meta["base_model"], checkpoint, device)
    path = checkpoint if checkpoint is not None else get_spec(meta["base_model"]).default_checkpoint
    return apply_adapter(base, directory, path)


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter found on disk, for a model list (the UI's, ``medseg models``)."""

    name: str  # the folder name
    path: Path
    base_model: str
    kind: str
    validation: dict

    @property
    def label(self) -> str:
        return f"{self.base_model} + {self.kind} adapter '{self.name}'"


def list_adapters(weights_dir: str | Path) -> list[AdapterInfo]:
    """Adapters under ``weights_dir/adapters/*/`` (folders with adapter.json + adapter.safetensors), by name.

    Unreadable folders are left out, so one bad folder cannot break the model list.
    """
    root = Path(weights_dir) / "adapters"
    found = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            meta = read_metadata(folder)
        except CheckpointError:
            continue
        found.append(
            AdapterInfo(
                name=folder.name,
                path=folder,
                base_model=str(meta["base_model"]),
                kind=str(meta["adapter"].get("kind", "?")),
                validation=dict(meta.get("validation") or {}),
            )
        )
    return found
