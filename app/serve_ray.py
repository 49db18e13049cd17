"""Inference on Ray Serve replicas, chosen by configuration, behind the same ``embed``/``predict`` as a Segmenter.

Many clinicians on one UI need more model copies than one process holds. The UI keeps its
sessions and embedding caches; only the two model calls go to a Serve application:

* :class:`SegmenterReplica` (one per replica: one model on one GPU or CPU) wraps ``load_segmenter``;
* :func:`deploy` starts the application (``medseg`` by default) on the connected Ray;
* :class:`RemoteSegmenter` is the UI-side adapter with ``embed``, ``embed_batch``, ``predict`` and
  ``mask_prompt_from_mask``, the calls the UI makes on a local :class:`~models.segmenter.Segmenter`;
* :func:`segmenter_for` picks one or the other from the environment (``docs/scale-out.md``):
  ``MEDSEG_INFERENCE=local`` (default) or ``ray-serve`` with ``MEDSEG_RAY_ADDRESS`` and
  ``MEDSEG_SERVE_APP``.

Replicas keep no per-user state: ``embed`` returns the embedding (on the CPU) to the caller, who
sends it back with each ``predict``, so any replica can answer any request and one that dies
loses nothing. Importing this module does no work and does not import Ray.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from models.prompts import MaskResult, Prompts
from models.segmenter import Embedding

MODE_ENV = "MEDSEG_INFERENCE"
ADDRESS_ENV = "MEDSEG_RAY_ADDRESS"
APP_ENV = "MEDSEG_SERVE_APP"
MODES = ("local", "ray-serve")
DEFAULT_APP = "medseg"


def _to_device(embedding: Embedding, device) -> Embedding:
    return Embedding(
        features=embedding.features.to(device),
        original_size=tuple(embedding.original_size),
        input_size=tuple(embedding.input_size),
        model_name=embedding.model_name,
        extras={k: v.to(device) for k, v in embedding.extras.items()},
        picture=embedding.picture,
    )


class SegmenterReplica:
    """The body of one Serve replica: a model loaded once, stateless calls (wrapped by :func:`build_app`)."""

    def __init__(self, model: str, checkpoint: str | None = None, device: str = "cpu"):
        from models.registry import load_segmenter

        self.segmenter = load_segmenter(model, checkpoint, device)

    def info(self) -> dict:
        return {"model": self.segmenter.name, "device": str(self.segmenter.device), "pid": os.getpid()}

    def embed(self, image: np.ndarray) -> Embedding:
        return _to_device(self.segmenter.embed(image), "cpu")

    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        return [_to_device(e, "cpu") for e in self.segmenter.embed_batch(images)]

    def predict(self, embedding: Embedding, prompts: Prompts, multimask_output: bool = False) -> MaskResult:
        emb = _to_device(embedding, self.segmenter.device)
        return self.segmenter.predict(emb, prompts, multimask_output=multimask_output)

    def mask_prompt_from_mask(self, mask: np.ndarray, strength: float = 8.0) -> np.ndarray:
        return self.segmenter.mask_prompt_from_mask(mask, strength=strength)


def build_app(model: str = "litemedsam", *, checkpoint: str | None = None, device: str = "cpu",
              replicas: int = 1, num_cpus: float = 1, num_gpus: float | None = None):
    """A Serve application of ``replicas`` copies of ``model`` (one GPU each with ``device='cuda'``)."""
    from ray import serve

    gpus = (1 if device.startswith("cuda") else 0) if num_gpus is None else num_gpus
    deployment = serve.deployment(
        SegmenterReplica,
        name="Segmenter",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": gpus},
    )
    return deployment.bind(model, checkpoint, device)


def deploy(model: str = "litemedsam", *, name: str = DEFAULT_APP, **kwargs):
    """Start (or update) the application on the Ray this process is connected to -> its handle."""
    from ray import serve

    return serve.run(build_app(model, **kwargs), name=name, route_prefix=None)


class RemoteSegmenter:
    """A Segmenter look-alike whose model calls run on Serve replicas (``embed``/``predict`` as the UI uses them)."""

    def __init__(self, handle, *, timeout_s: float = 120.0):
        self._handle = handle
        self.timeout_s = timeout_s
        self._info: dict | None = None

    @classmethod
    def connect(cls, app: str = DEFAULT_APP, **kwargs) -> "RemoteSegmenter":
        """The handle of a running application (the caller has joined the cluster with ``ray.init``)."""
        from ray import serve

        return cls(serve.get_app_handle(app), **kwargs)

    def _call(self, method: str, *args, **kwargs):
        return getattr(self._handle, method).remote(*args, **kwargs).result(timeout_s=self.timeout_s)

    @property
    def name(self) -> str:
        if self._info is None:
            self._info = self._call("info")
        return self._info["model"]

    def embed(self, image: np.ndarray) -> Embedding:
        return self._call("embed", np.asarray(image))

    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        return self._call("embed_batch", [np.asarray(im) for im in images])

    def predict(self, embedding: Embedding, prompts: Prompts, *, multimask_output: bool = False) -> MaskResult:
        return self._call("predict", embedding, prompts, multimask_output)

    def mask_prompt_from_mask(self, mask: np.ndarray, *, strength: float = 8.0) -> np.ndarray:
        return self._call("mask_prompt_from_mask", np.asarray(mask), strength)


def inference_mode(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mode = env.get(MODE_ENV, "local").strip() or "local"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r} is unknown; use {' or '.join(MODES)}")
    return mode


def segmenter_for(name: str, device: str = "cpu", env: Mapping[str, str] | None = None):
    """The model the UI should call: a local Segmenter, or the Serve application the environment names.

    ``ray-serve`` joins ``MEDSEG_RAY_ADDRESS`` (default ``auto``: the cluster this machine belongs
    to) once per process and checks that the application serves ``name``.
    """
    env = os.environ if env is None else env
    if inference_mode(env) == "local":
        from models.registry import load_segmenter

        return load_segmenter(name, device=device)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(address=env.get(ADDRESS_ENV) or "auto", log_to_driver=False)
    app = env.get(APP_ENV) or DEFAULT_APP
    remote = RemoteSegmenter.connect(app)
    if remote.name != name:
        raise ValueError(
            f"the Serve application {app!r} runs {remote.name!r}, not {name!r}; set {APP_ENV} to an "
            f"application deployed with --model {name}"
        )
    return remote


def app_builder(args: dict[str, str]):
    """For Ray's CLI: ``serve run app.serve_ray:app_builder model=litemedsam device=cuda replicas=4``."""
    return build_app(
        args.get("model", "litemedsam"),
        checkpoint=args.get("checkpoint") or None,
        device=args.get("device", "cpu"),
        replicas=int(args.get("replicas", 1)),
        num_cpus=float(args.get("num_cpus", 1)),
    )
