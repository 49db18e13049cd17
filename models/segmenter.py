"""The one predictor interface: encode a slice once, prompt it many times.

A variant plugs in its parts (a SAM-shaped ``nn.Module`` with ``image_encoder``,
``prompt_encoder`` and ``mask_decoder``), its geometry and its preprocessing; this base class
runs encode -> prompt -> decode -> postprocess (the template of MONAILabel's ``BasicInferTask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models import decode_many
from models.click_refiner import refiner_for
from models.geometry import LongestSide, Stretch, low_res_to_input_frame
from models.picture_boxes import grey
from models.point_prompts import boxes_source
from models.prompts import MaskResult, PromptError, Prompts


@dataclass
class Embedding:
    """A cached image embedding and the sizes needed to map prompts and masks.

    features: (1, C, h, w) on the model's device. original_size / input_size: (H, W).
    extras: model-specific tensors the decoder also needs (e.g. SAM-UNet's multi-scale feature).
    picture: the (H, W) uint8 grey slice that was encoded, for the prompts that read the picture (a lone point's
    candidate boxes, ``models.picture_boxes``), kept only while ``$MEDSEG_POINT_BOXES`` asks for them (not by
    default: no cost on the encode path or in the embedding cache); None otherwise (the mm boxes answer).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_name: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    picture: np.ndarray | None = None


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) uint8 -> (H, W, 3) uint8. Raises ValueError naming the shape."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"a slice image must be uint8 (window it first), got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"a slice image must be (H, W) or (H, W, 3), got shape {image.shape}")


class Segmenter:
    """Base class of every variant. Subclasses implement :meth:`preprocess`.

    ``model`` is shared read-only between sessions: nothing here mutates it, and per-image
    state lives in the returned :class:`Embedding`.
    """

    name: str = "segmenter"
    low_res_size: int = 256
    has_iou_head: bool = True

    def __init__(self, model: nn.Module, *, geometry: LongestSide | Stretch, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.geometry = geometry
        self.device = torch.device(device)

    # --- to implement per variant ----------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32 model input on the CPU."""
        raise NotImplementedError

    def preprocess_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 slices -> (B, 3, S, S) float32 model input on ``self.device``.

        Variants whose arithmetic can run on the device override this (LiteMedSAM)."""
        return torch.cat([self.preprocess(im) for im in images]).to(self.device)

    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 3, S, S) -> (B, C, h, w) features and per-image extras (batched)."""
        return self.model.image_encoder(batch), {}

    def decode(
        self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder call -> (B, K, h, w) low-res logits and (B, K) IoU predictions."""
        return self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    # --- the template ----------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        """Encode one (H, W) or (H, W, 3) uint8 slice."""
        return self.embed_batch([image])[0]

    @torch.inference_mode()
    def embed_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        """Encode several slices in one forward pass (volumes, propagation, evaluation)."""
        rgb = [as_rgb_uint8(im) for im in images]
        for im in rgb:
            self.check_input_size(im.shape[:2])
        features, extras = self.embed_features(rgb)
        keep_picture = boxes_source() != "mm"
        out = []
        for b, im in enumerate(rgb):
            size = (int(im.shape[0]), int(im.shape[1]))
            out.append(
                Embedding(
                    features=features[b : b + 1],
                    original_size=size,
                    input_size=self.geometry.input_size(size),
                    model_name=self.name,
                    extras={k: v[b : b + 1] for k, v in extras.items()},
                    picture=grey(im) if keep_picture else None,
                )
            )
        return out

    def check_input_size(self, size: tuple[int, int]) -> None:
        """ValueError when an (H, W) image's short side rounds to 0 pixels at the model's input: a 3000 x 2 or
        1 x 100000 image reached cv2.resize (LiteMedSAM: "inv_scale_x > 0", a traceback) or PIL (SAM)."""
        newh, neww = self.geometry.input_size(size)
        if min(newh, neww) < 1:
            raise ValueError(f"the image is {size[0]} x {size[1]} pixels (rows x columns): at {self.name}'s "
                             f"{self.geometry.target}-pixel input its short side would be 0 pixels; crop it nearer to "
                             "square")

    def embed_features(self, rgb: list[np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """RGB uint8 slices -> batched features and extras: preprocessing + encoder, the one step a
        fast path may replace whole (``runtime.cuda_graphs`` replays both as one CUDA graph)."""
        return self.encode(self.preprocess_batch(rgb))

    @torch.inference_mode()
    def predict(self, embedding: Embedding, prompts: Prompts, *, multimask_output: bool = False) -> MaskResult:
        """Segment one structure. Prompts are in original pixels (x, y); see :class:`Prompts`.

        Points alone on LiteMedSAM with its click model go to ``models.point_prompts``; the rest to
        :meth:`decode_prompts`. One request of :func:`models.decode_many.predict_many`, unbatched."""
        return decode_many.first(decode_many.predict_many(self, [embedding], [prompts], multimask_output, batch=False))

    @torch.inference_mode()
    def predict_many(
        self, embeddings: list[Embedding], prompts: list[Prompts], *, multimask_output: bool = False
    ) -> list[MaskResult | Exception]:
        """:meth:`predict` for many (embedding, prompts) in as few decoder calls as their prompt shapes allow
        (``models.decode_many``; a server's sessions, ``app.decode_batcher``): a MaskResult or that request's
        error each. A variant with a ``predict`` of its own answers one request at a time."""
        if type(self).predict is not Segmenter.predict:
            out: list[MaskResult | Exception] = []
            for e, p in zip(embeddings, prompts):
                try:
                    out.append(self.predict(e, p, multimask_output=multimask_output))
                except Exception as err:  # noqa: BLE001 - this request's error only
                    out.append(err)
            return out
        return decode_many.predict_many(self, embeddings, prompts, multimask_output)

    def plain_torch_decoder(self) -> bool:
        """Whether prompts are decoded by this class's torch modules unchanged, so several images can share
        one call (``models.batched_decode``); not where a backend or variant replaced a step."""
        cls = type(self)
        steps = ("decode", "decode_prompts", "encode_prompts", "prompt_tensors", "prompt_arrays")
        return all(getattr(cls, k) is getattr(Segmenter, k) and k not in vars(self) for k in steps)

    def to_result(
        self, embedding: Embedding, low_res: torch.Tensor, iou: torch.Tensor, boxes: np.ndarray | None = None
    ) -> MaskResult:
        """(1, K, h, w) low-res logits and (1, K) IoU -> masks at the original size (the postprocessing)."""
        upscaled = self.geometry.logits_to_original(low_res, embedding.original_size)
        masks = (upscaled > 0.0)[0].cpu().numpy()
        scores = iou[0].float().cpu().numpy() if self.has_iou_head else np.full(masks.shape[0], np.nan, np.float32)
        return MaskResult(masks=masks, scores=scores, low_res_logits=low_res[0].float().cpu().numpy(), boxes=boxes)

    def decode_prompts(
        self, embedding: Embedding, prompts: Prompts, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (1, K, h, w) low-res logits and (1, K) IoU (another backend replaces this).

        A model carrying a click refiner (``models.click_refiner``: an adapter's, or the shipped
        click model of ``models.click_model``) sends the prompts it takes through it (corrective
        clicks; for the click model every point or mask prompt); a box alone always goes through
        the model's own decoder, so box masks are the base model's bit for bit.
        """
        refiner = refiner_for(self.model, prompts, multimask_output)
        if refiner is not None:
            points, boxes, masks = self.prompt_tensors(embedding, prompts)
            low, iou = refiner(embedding.features, points, boxes, masks)
            if multimask_output:  # one refined mask; callers that mix three candidates (PerSAM-F) get it thrice
                low, iou = low.expand(-1, 3, -1, -1), iou.expand(-1, 3)
            return low, iou
        sparse, dense = self.encode_prompts(embedding, prompts)
        return self.decode(embedding, sparse, dense, multimask_output)

    def encode_prompts(self, embedding: Embedding, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Map prompts into the model frame and run the prompt encoder -> (sparse, dense)."""
        points, boxes, masks = self.prompt_tensors(embedding, prompts)
        return self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def prompt_tensors(
        self, embedding: Embedding, prompts: Prompts
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None]:
        """Prompts in original pixels -> the prompt encoder's (points, boxes, masks) in the model frame."""
        coords, labels, box, mask = self.prompt_arrays(embedding, prompts)
        points = boxes = masks = None
        if coords is not None:
            points = (
                torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None],
                torch.as_tensor(labels, dtype=torch.int64, device=self.device)[None],
            )
        if box is not None:
            boxes = torch.as_tensor(box, device=self.device)[None]
        if mask is not None:
            masks = torch.as_tensor(mask, dtype=torch.float32, device=self.device)[None]
        return points, boxes, masks

    def prompt_arrays(
        self, embedding: Embedding, prompts: Prompts
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The host half of :meth:`prompt_tensors`: (coords, labels, box, mask logits) in the model frame
        as numpy arrays, so a CUDA-graphed decoder can copy them into its static buffers."""
        size = embedding.original_size
        coords = labels = box = mask = None
        if prompts.points is not None:
            coords = self.geometry.apply_coords(prompts.points, size)
            labels = np.asarray(prompts.point_labels)
        if prompts.box is not None:
            box = self.geometry.apply_box(prompts.box, size)
        if prompts.mask_logits is not None:
            mask = prompts.mask_logits
            if mask.shape[-2:] != (self.low_res_size, self.low_res_size):
                raise PromptError(
                    f"mask prompt must be ({self.low_res_size}, {self.low_res_size}) low-res logits of this model, "
                    f"got {mask.shape}; use mask_prompt_from_mask() for a drawn mask"
                )
        return coords, labels, box, mask

    def mask_prompt_from_mask(self, mask: np.ndarray, *, strength: float = 8.0) -> np.ndarray:
        """A drawn (H, W) bool mask -> (1, h, w) logits usable as ``Prompts.mask_logits``.

        SAM's mask prompt expects logits, not 0/1; +-``strength`` is a confident logit.
        """
        frame = low_res_to_input_frame(mask.astype(bool), self.geometry, self.low_res_size)
        return ((frame * 2.0 - 1.0) * strength)[None].astype(np.float32)
