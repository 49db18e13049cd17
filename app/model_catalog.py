"""The models the UI offers: the registry's variants and the adapters trained on top of them.

An adapter in ``<weights>/adapters/<folder>/`` (``medseg finetune --output``) is offered as
``<base model>+<folder>``, the name its adapted segmenter carries, so embeddings cached under one
model are never decoded by another. The folder is looked up again on each load, so an adapter
copied into the weights folder while the server runs appears on the next page load.
"""

from __future__ import annotations

from adapters.io import AdapterInfo, list_adapters, load_adapted
from app.session import SessionError
from models.registry import list_specs, weights_dir
from runtime import load_segmenter
from runtime.backend_choice import BackendChoice, choose
from models.segmenter import Segmenter


def adapters() -> dict[str, AdapterInfo]:
    """Model name -> adapter, for every readable adapter folder under the weights folder."""
    return {f"{a.base_model}+{a.name}": a for a in list_adapters(weights_dir())}


def choices() -> list[tuple[str, str]]:
    """(label, name) for every registered variant and every adapter; what cannot run says why."""
    specs = {s.name: s for s in list_specs()}
    out = []
    for spec in specs.values():
        if "auto" in spec.prompt_types:
            out.append((f"{spec.name} (not promptable: automatic segmentation only)", spec.name))
        elif spec.available():
            out.append((f"{spec.name}: {spec.description}", spec.name))
        else:
            out.append((f"{spec.name} (unavailable: needs {spec.default_checkpoint})", spec.name))
    for name, info in adapters().items():
        scores = ", ".join(f"{k} {v:.3f}" for k, v in info.validation.items() if k.endswith("_dice"))
        label = f"{info.label}" + (f" (validation {scores})" if scores else "")
        base = specs.get(info.base_model)
        if base is None or not base.available():
            label += f" (unavailable: needs the {info.base_model} weights)"
        out.append((label, name))
    return out


def name_of(text: str) -> str:
    """The model name ``text`` stands for: a name, or the label the Model box shows for one (the viewer sends the
    option picked, as shown: the box's values are not on the page). Anything else comes back as it is, for
    :func:`check_selectable` to refuse in one line."""
    for label, name in choices():
        if text in (name, label):
            return name
    return text


def check_selectable(name: str) -> None:
    """SessionError saying why ``name`` cannot be used for interactive prompting."""
    specs = {s.name: s for s in list_specs()}
    if name in specs:
        spec = specs[name]
        if "auto" in spec.prompt_types:
            raise SessionError(f"{name} segments without prompts; the interactive UI needs a promptable model")
        if not spec.available():
            raise SessionError(f"{name} is unavailable: put its weights at {spec.default_checkpoint}")
        return
    found = adapters()
    if name not in found:
        raise SessionError(f"unknown model {name!r}; known: {', '.join([*specs, *found])}")
    base = specs.get(found[name].base_model)
    if base is None or not base.available():
        raise SessionError(f"{name} needs the base model {found[name].base_model!r} and its weights")


def backend_for(name: str, device: str, backend: str | None = None) -> BackendChoice:
    """The backend ``name`` runs with (``runtime.backend_choice``: ``backend``, else $MEDSEG_BACKEND, else the
    fastest one that keeps fp32's Dice on this device); adapters run on torch."""
    return choose(name, device, backend, adapter="+" in name)


def load_model(name: str, device: str, backend: str | None = None) -> Segmenter:
    """The shared, read-only segmenter for a registry name or an adapter name (cached per process), run by
    :func:`backend_for`'s backend.

    Called on every model request, so an adapter name goes straight to its folder (no scan of the
    adapters, no metadata read: ``load_adapted`` caches the loaded model by folder).
    """
    if "+" not in name:
        return load_segmenter(name, device=device, backend=backend_for(name, device, backend).backend)
    folder = weights_dir() / "adapters" / name.split("+", 1)[1]
    segmenter = load_adapted(folder, device=device)
    if segmenter.name != name:  # the folder's adapter was trained on another base model
        raise SessionError(f"{name}: the adapter in {folder} is for {segmenter.name.split('+', 1)[0]!r}")
    return segmenter
