"""Train the shipped click model: a ``scope="prompts"`` click refiner on cached embeddings.

Why a trainer of its own (beside ``adapters.train``): the encoder stays the base model's (box
masks bit-identical), so each slice is encoded once and every training step runs the prompt
encoder and mask decoder only, for a whole batch of simulated sessions in lockstep. On an H200
this makes thousands of sessions a minute, where ``medseg finetune`` re-encodes every slice.

Slices are resized beforehand so that the longest side is the model's input size (256): the
model frame is then the slice itself (padded), prompts need no rescaling, and clicks and losses
are computed on the 256 x 256 low-resolution logits directly (the padding is ignored).

Sessions (one kind per batch, drawn each step), each followed by corrective clicks (the centre of
the largest error region, ``evaluation.clicks.next_click``, or a random wrong pixel, half each),
with the points accumulated and the previous logits fed back, as ``medseg eval`` does:

* ``box``: the frozen base decoder's box mask (margin 0-10 px, jitter 3), then 5 clicks;
* ``points``: one positive point (or ``points:N``'s N/2 positive + N/2 negative points), answered as at
  inference (``models.point_prompts``): box candidates of 5/10/20 mm around the positives (the slice's
  pixel spacing: the volume's voxel size scaled by the resize to 256), the frozen base decoder segments
  each, its predicted IoU picks one, and the refiner gets the points with that candidate's low-res
  logits as the mask prompt; then 0-5 clicks;
* ``neighbour``: the mask of a slice 1-4 voxels away as the mask prompt (the base model's box
  prediction there, or its label as +-8 logits), with that mask's box half the time: what 3D
  propagation passes on (issue 21).

Loss per step: 20 x focal + Dice (SAM-Med2D's weights) + MSE of the IoU head against the true IoU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models import point_prompts
from models.batched_decode import decode_batched, refine_batched
from models.click_refiner import ClickRefiner
from models.prompts import Prompts
from models.segmenter import Embedding
from evaluation.clicks import Click, box_from_mask, next_click, sample_points

SESSION_KINDS = ("box", "points", "neighbour")


@dataclass(frozen=True)
class ClickTrainSettings:
    steps: int = 2000
    batch_size: int = 24
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 1e-4
    clicks: int = 5
    kind_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)  # box, points, neighbour
    max_minutes: float | None = None
    val_every: int = 200
    seed: int = 0
    device: str = "cpu"
    points_large_share: float | None = None  # share of point sessions on a large structure; None: LARGE_SHARE
    # each training point session's pixel spacing x a factor log-uniform in [lo, hi] (validation: the geometric
    # middle): (1, 1) the slice's physical spacing; > 1 makes the mm boxes smaller against the macaque's anatomy,
    # as they are against a human's (a human brain is ~2.2 x INIA19's in length; docs/clicks.md)
    point_mm_scale: tuple[float, float] = (1.0, 1.0)
    # point sessions' mask prompt: the box candidate inference would choose (True, since session 9), or none (the
    # shipped model's recipe: the points alone, the refiner's answer is the correction itself)
    point_route: bool = True
    # share of box sessions that start from a good mask with one error (the base model's box logits, every error
    # region but the largest turned to the label's sign): INIA19's box masks are poor (validation Dice 0.39), human
    # structures' often good, and a first click on a good mask is where the refiner lost (docs/clicks.md)
    one_error_share: float = 0.0
    # weight of the hinge "a click makes the mask no worse": relu(Dice before the click - soft Dice after it)
    monotone_weight: float = 0.0


# --- data -------------------------------------------------------------------------------------
@dataclass
class TrainSlice:
    image: np.ndarray  # (h, w) uint8, longest side = input size
    labels: np.ndarray  # (h, w) int32; -1 = the brain mask's own code
    volume_key: tuple[int, str]  # (variant, view): neighbours share it
    k: int
    spacing: tuple[float, float] | None = None  # (row, col) mm per pixel of the resized slice; None: unknown


def resize_longest(image: np.ndarray, labels: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = image.shape
    s = size / max(h, w)
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)
    return (cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR),
            cv2.resize(labels.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST))


def volume_slices(image: np.ndarray, labels: np.ndarray, brain: np.ndarray, *, min_brain_px: int = 800,
                  spacing: tuple[float, float, float] | np.ndarray | None = None) -> list[TrainSlice]:
    """Every slice of the three views (and their left-right mirror, a gamma variant) with enough brain.

    ``spacing``: the volume's mm per voxel along its three axes; each slice then carries its own (row, col)
    mm after the resize (INIA19's 0.5 mm becomes 0.5 x 206 / 256 = 0.40 mm on an axial slice), which the
    point sessions' physical candidate boxes need."""
    axes = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
    out = []
    lab = np.where(brain & (labels == 0), -1, labels).astype(np.int32)  # brain voxels without a label still count as brain
    for v, (view, ax) in enumerate(axes.items()):
        img_v, lab_v = image.transpose(ax), lab.transpose(ax)
        for k in range(img_v.shape[2]):
            im2, la2 = np.rot90(img_v[:, :, k]), np.rot90(lab_v[:, :, k])
            if (la2 != 0).sum() < min_brain_px / 4:
                continue
            h0, w0 = im2.shape
            im2, la2 = resize_longest(np.ascontiguousarray(im2), np.ascontiguousarray(la2))
            mm = None
            if spacing is not None:  # rot90: rows run along the view's second axis, columns along its first
                mm = (float(spacing[ax[1]]) * h0 / im2.shape[0], float(spacing[ax[0]]) * w0 / im2.shape[1])
            if (la2 != 0).sum() < min_brain_px:
                continue
            for variant, (flip, gamma) in enumerate(((False, 1.0), (True, 1.0), (False, 0.75), (True, 1.35))):
                im3 = im2[:, ::-1] if flip else im2
                la3 = la2[:, ::-1] if flip else la2
                if gamma != 1.0:
                    im3 = np.rint(255.0 * (im3 / 255.0) ** gamma).astype(np.uint8)
                out.append(TrainSlice(np.ascontiguousarray(im3), np.ascontiguousarray(la3), (variant, view), k, mm))
    return out


LARGE = (0, -2, -3)  # the whole brain, its image-left and image-right halves: the large structures
LARGE_SHARE = 0.3  # of the sessions prompt a large structure (the atlas' parcels are mostly small)


def structures_on(labels: np.ndarray, min_px: int = 40, exclude: set[int] | None = None) -> list[int]:
    """Label values on a slice big enough to prompt (0 = the whole brain: any non-zero)."""
    vals, counts = np.unique(labels, return_counts=True)
    keep = [int(v) for v, c in zip(vals, counts) if v > 0 and c >= min_px and (exclude is None or v not in exclude)]
    return keep + [0]


def structure_mask(labels: np.ndarray, value: int) -> np.ndarray:
    """The mask of a label value; 0 the brain, -2/-3 the brain's left/right half (split at its centroid)."""
    if value > 0:
        return labels == value
    brain = labels != 0
    if value == 0 or not brain.any():
        return brain
    mid = int(round(np.argwhere(brain)[:, 1].mean()))
    half = np.zeros_like(brain)
    if value == -2:
        half[:, :mid] = brain[:, :mid]
    else:
        half[:, mid:] = brain[:, mid:]
    return half


def draw_structure(structures: list[int], rng: np.random.Generator, large_share: float = LARGE_SHARE) -> int:
    small = [v for v in structures if v > 0]
    if not small or rng.random() < large_share:
        return int(LARGE[rng.integers(len(LARGE))])
    return int(small[rng.integers(len(small))])


# --- prompts ----------------------------------------------------------------------------------
def random_error_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> Click | None:
    wrong = np.argwhere(gt != pred)
    if len(wrong) == 0:
        return None
    row, col = wrong[rng.integers(len(wrong))]
    return Click(x=int(col), y=int(row), positive=bool(gt[row, col]))


CENTRE_SHARE = 0.7  # of the training clicks go to the centre of the largest error (the evaluation's user)


def pick_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> Click | None:
    return next_click(gt, pred) if rng.random() < CENTRE_SHARE else random_error_click(gt, pred, rng)


def _click_job(args: tuple) -> Click | None:
    gt, pred, seed = args
    if seed is None:
        return next_click(gt, pred)
    return pick_click(gt, pred, np.random.default_rng(seed))


def pad_points(points: list[list[tuple[float, float, int]]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-session lists of (x, y, label) -> (B, N, 2), (B, N) with label -1 (SAM's 'not a point') as padding."""
    n = max(1, max(len(p) for p in points))
    coords = np.zeros((len(points), n, 2), np.float32)
    labels = -np.ones((len(points), n), np.int64)
    for b, pts in enumerate(points):
        for i, (x, y, lab) in enumerate(pts):
            coords[b, i] = (x, y)
            labels[b, i] = lab
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


def logits_from_mask(mask: np.ndarray, strength: float = 8.0) -> np.ndarray:
    return ((mask.astype(np.float32) * 2 - 1) * strength)


def pad_to(a: np.ndarray, size: int = 256) -> np.ndarray:
    out = np.zeros((size, size), a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


# --- loss -------------------------------------------------------------------------------------
def session_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """20 x focal (gamma 2, alpha 0.25) + Dice on the valid (unpadded) pixels + IoU-head MSE; (B,) -> mean."""
    x, t, v = logits[:, 0].float(), gt, valid
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha * ce * (1 - p_t) ** 2 * v).sum(dim=(1, 2)) / v.sum(dim=(1, 2))
    dice = 1 - soft_dice(logits, gt, valid)
    with torch.no_grad():
        hard = (x > 0).float() * v
        iou = (hard * t).sum(dim=(1, 2)) / ((hard + t - hard * t) * v).sum(dim=(1, 2)).clamp(min=1)
    return (20 * focal + dice + (iou_pred[:, 0].float() - iou) ** 2).mean()


def soft_dice(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) Dice of sigmoid(logits) against ``gt`` on the valid pixels: the differentiable Dice of one step."""
    p = torch.sigmoid(logits[:, 0].float()) * valid
    return (2 * (p * gt).sum(dim=(1, 2)) + 1) / (p.sum(dim=(1, 2)) + (gt * valid).sum(dim=(1, 2)) + 1)


def monotone_hinge(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, before: list[float]) -> torch.Tensor:
    """Mean of relu(Dice before the click - soft Dice after it): zero unless the click made the mask worse."""
    prev = torch.as_tensor(before, dtype=torch.float32, device=logits.device)
    return torch.relu(prev - soft_dice(logits, gt, valid)).mean()


def one_error_logits(low: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, h, w) logits with every error region but the largest corrected: the magnitude kept, the sign the label's.

    A good mask with one thing wrong, in the decoder's own logit scale: the start a first click meets on a
    structure whose box mask is already good."""
    from scipy import ndimage

    out = low.copy()
    for b in range(len(low)):
        pred = (low[b] > 0) & valid[b]
        wrong = (pred != gt[b]) & valid[b]
        lab, n = ndimage.label(wrong)
        if n <= 1:
            continue
        sizes = ndimage.sum(wrong, lab, index=np.arange(1, n + 1))
        fix = wrong & (lab != 1 + int(np.argmax(sizes)))
        mag = np.maximum(np.abs(low[b]), 1.0)
        out[b] = np.where(fix, np.where(gt[b], mag, -mag), low[b])
    return out


# --- the trainer --------------------------------------------------------------------------------
class ClickTrainer:
    def __init__(self, segmenter, slices: list[TrainSlice], settings: ClickTrainSettings, exclude: set[int], pool=None):
        self.seg, self.slices, self.s, self.pool = segmenter, slices, settings, pool
        self.large_share = LARGE_SHARE
        self.candidate_dice = math.nan  # the last point sessions' chosen candidates, before the refiner
        self.validating = False  # validation sessions: the middle of point_mm_scale, the validation structures
        self.device = torch.device(settings.device)
        model = segmenter.model
        self.refiner = ClickRefiner(model.prompt_encoder, model.mask_decoder, scope="prompts").to(self.device)
        self.base_pe, self.base_dec = model.prompt_encoder, model.mask_decoder
        self.structures = [structures_on(s.labels, exclude=exclude) for s in slices]
        self.by_key = {(s.volume_key, s.k): i for i, s in enumerate(slices)}
        self.features = self._encode()

    @torch.no_grad()
    def _encode(self) -> torch.Tensor:
        feats = []
        for i in range(0, len(self.slices), 64):
            batch = [np.repeat(s.image[:, :, None], 3, axis=2) for s in self.slices[i : i + 64]]
            f, _ = self.seg.embed_features(batch)
            feats.append(f.float())
        return torch.cat(feats)

    @torch.no_grad()
    def point_candidates(self, idx: list[int], prompts: list[Prompts]) -> torch.Tensor:
        """(B, 1, 256, 256): for each slice's points alone, the low-res logits of the box candidate that
        inference would pass to the refiner as the mask prompt. ``models.point_prompts`` itself, on the
        frozen base decoder (``refine="none"``: the refiner's turn is the training step's), with the
        slice as the original image: the slices are already at the model's input size, so prompts and
        boxes map to the model frame unchanged, as at inference they map from the original pixels."""
        embs = [Embedding(self.features[i : i + 1], self.slices[i].labels.shape,
                          self.seg.geometry.input_size(self.slices[i].labels.shape), self.seg.name) for i in idx]
        answers = point_prompts.decode_points_many(self.seg, embs, prompts, False, refine="none")
        failed = next((a for a in answers if isinstance(a, Exception)), None)
        if failed is not None:
            raise failed
        return torch.cat([a[0] for a in answers]).float().to(self.device)

    def point_mm_factor(self, rng: np.random.Generator) -> float:
        """The factor on a point session's pixel spacing: log-uniform in ``point_mm_scale`` (no draw for
        (1, 1): the default run's random stream is unchanged); validation takes the range's geometric middle."""
        lo, hi = self.s.point_mm_scale
        if self.validating or lo == hi:
            return math.sqrt(lo * hi)
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def _session(self, idx: list[int], kind: str, rng: np.random.Generator, grad: bool = True):
        """Run one batch of sessions; -> (mean loss over steps, per-step Dice lists)."""
        dev = self.device
        feats = self.features[idx]
        gts, valids, values, boxes, points, masks_in = [], [], [], None, [[] for _ in idx], None
        large_share = self.large_share
        if kind == "points" and self.s.points_large_share is not None and not self.validating:
            large_share = self.s.points_large_share
        for b, i in enumerate(idx):
            sl = self.slices[i]
            value = draw_structure(self.structures[i], rng, large_share)
            values.append(value)
            gts.append(pad_to(structure_mask(sl.labels, value)))
            valids.append(pad_to(np.ones(sl.labels.shape, bool)))
        gt_np = np.stack(gts)
        gt_t = torch.from_numpy(gt_np.astype(np.float32)).to(dev)
        valid_t = torch.from_numpy(np.stack(valids).astype(np.float32)).to(dev)
        steps: list[torch.Tensor] = []
        dices: list[list[float]] = []
        if kind == "box":
            bx = np.stack([box_from_mask(g, int(rng.integers(0, 11)), jitter=3, rng=rng) for g in gt_np])
            for b, i in enumerate(idx):  # keep boxes inside the slice, as a user's would be
                h, w = self.slices[i].labels.shape
                bx[b] = np.minimum(bx[b], [w - 1, h - 1, w - 1, h - 1])
            boxes = torch.from_numpy(np.floor(bx).astype(np.float32)).to(dev)
            with torch.no_grad():
                low, _ = decode_batched(self.base_pe, self.base_dec, feats, None, boxes, None)
            masks_in = low.float()
            if not self.validating and self.s.one_error_share > 0 and rng.random() < self.s.one_error_share:
                fixed = one_error_logits(masks_in[:, 0].cpu().numpy(), gt_np.astype(bool),
                                         np.stack(valids).astype(bool))
                masks_in = torch.from_numpy(fixed[:, None]).to(dev)
            n_clicks = self.s.clicks
        elif kind == "points":
            prompts = []
            for b, g in enumerate(gt_np):
                n = 1 if rng.random() < 0.6 else int(rng.integers(2, 6))
                sl = self.slices[idx[b]]
                h, w = sl.labels.shape
                pts, labs = sample_points(g[:h, :w], n, rng)  # negatives inside the slice, not in the padding
                points[b] = [(float(x), float(y), int(l)) for (x, y), l in zip(pts, labs)]
                if sl.spacing is None:
                    raise ValueError("point sessions need each slice's pixel spacing: volume_slices(..., spacing=)")
                f = self.point_mm_factor(rng)
                spacing = (sl.spacing[0] * f, sl.spacing[1] * f)
                prompts.append(Prompts(points=pts, point_labels=labs, pixel_spacing=spacing))
            masks_in = self.point_candidates(idx, prompts)  # the chosen candidate, as at inference
            cand = (masks_in[:, 0] > 0).cpu().numpy() & (valid_t > 0).cpu().numpy()
            self.candidate_dice = float(np.mean(_dices(cand, gt_np)))
            if not self.s.point_route:
                masks_in = None
            n_clicks = int(rng.integers(0, self.s.clicks + 1))
        else:
            neigh = []
            for b, i in enumerate(idx):
                sl = self.slices[i]
                j = None
                for _ in range(4):
                    d = int(rng.integers(1, 5)) * (1 if rng.random() < 0.5 else -1)
                    j = self.by_key.get((sl.volume_key, sl.k + d))
                    if j is not None:
                        break
                neigh.append(i if j is None else j)
            value_masks = []
            for b, j in enumerate(neigh):  # the same structure (label value) on the neighbour
                nm = pad_to(structure_mask(self.slices[j].labels, values[b]))
                value_masks.append(nm if nm.sum() >= 10 else gt_np[b])
            nmask = np.stack(value_masks)
            use_box = rng.random() < 0.5
            if use_box:
                bx = np.stack([box_from_mask(m, 5) for m in nmask])
                boxes = torch.from_numpy(bx).to(dev)
            with torch.no_grad():
                if rng.random() < 0.5:  # the base model's own prediction on the neighbour
                    nb = torch.from_numpy(np.stack([box_from_mask(m, 5) for m in nmask])).to(dev)
                    low, _ = decode_batched(self.base_pe, self.base_dec, self.features[neigh], None, nb, None)
                    masks_in = low.float()
                else:
                    masks_in = torch.from_numpy(logits_from_mask(nmask)[:, None]).to(dev)
            n_clicks = int(rng.integers(0, 4))
        for step in range(n_clicks + 1):
            if kind == "box" and step == 0:
                pred = (masks_in[:, 0] > 0).cpu().numpy() & (valid_t > 0).cpu().numpy()
                dices.append(_dices(pred, gt_np))
            else:
                pts = pad_points(points, dev) if any(points) else None
                with torch.set_grad_enabled(grad):
                    low, iou = refine_batched(self.refiner, feats, pts, boxes, masks_in)
                loss = session_loss(low, iou, gt_t, valid_t)
                if self.s.monotone_weight > 0 and dices:  # a click after a mask: no worse than that mask
                    loss = loss + self.s.monotone_weight * monotone_hinge(low, gt_t, valid_t, dices[-1])
                steps.append(loss)
                pred = (low.detach()[:, 0] > 0).cpu().numpy() & (valid_t > 0).cpu().numpy()
                dices.append(_dices(pred, gt_np))
                masks_in = low.detach()
            if step == n_clicks:
                break
            jobs = [(gt_np[b], pred[b], int(rng.integers(2**31)) if grad else None) for b in range(len(idx))]
            clicks = self.pool.map(_click_job, jobs) if self.pool is not None else [_click_job(j) for j in jobs]
            for b, click in enumerate(clicks):
                if click is not None:
                    points[b].append((float(click.x), float(click.y), int(click.positive)))
                elif not points[b]:
                    points[b].append((0.0, 0.0, -1))
        loss = torch.stack(steps).mean() if steps else None
        return loss, dices

    def train(self, log) -> list[dict]:
        s = self.s
        params = [p for p in self.refiner.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        history, t0 = [], time.perf_counter()
        budget = None if s.max_minutes is None else 60 * s.max_minutes
        kinds_p = np.asarray(s.kind_weights) / np.sum(s.kind_weights)
        best = (-math.inf, None, -1)
        for step in range(s.steps):
            rng = np.random.default_rng([s.seed, step])
            frac = max(step / s.steps, 0.0 if budget is None else (time.perf_counter() - t0) / budget)
            lr = s.lr * min(1.0, (step + 1) / s.warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for g in opt.param_groups:
                g["lr"] = lr
            kind = SESSION_KINDS[int(rng.choice(3, p=kinds_p))]
            idx = [int(i) for i in rng.integers(len(self.slices), size=s.batch_size)]
            loss, dices = self._session(idx, kind, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            row = {"step": step + 1, "kind": kind, "loss": float(loss.detach()), "lr": lr, "elapsed_s": time.perf_counter() - t0,
                   "dice_first": float(np.mean(dices[0])), "dice_last": float(np.mean(dices[-1]))}
            history.append(row)
            if (step + 1) % 20 == 0 or s.steps <= 20:  # every step of a smoke run
                log(json.dumps(row))
            out_of_time = budget is not None and time.perf_counter() - t0 >= budget
            if (step + 1) % s.val_every == 0 or step + 1 == s.steps or out_of_time:
                val = self.validate()
                history.append({"step": step + 1, **val, "elapsed_s": time.perf_counter() - t0})
                log(json.dumps(history[-1]))
                if val["score"] > best[0]:
                    best = (val["score"], {k: v.detach().clone() for k, v in self.refiner.state_dict().items()}, step + 1)
            if out_of_time:
                break
        if best[1] is not None:
            self.refiner.load_state_dict(best[1])
        self.best_step = best[2]
        return history

    @torch.no_grad()
    def validate(self) -> dict:
        """Fixed validation sessions on ``self.val_idx`` (structures never trained on): mean Dice per kind."""
        out = {}
        for kind in SESSION_KINDS:
            rng = np.random.default_rng([self.s.seed, 99, SESSION_KINDS.index(kind)])
            saved, self.structures, self.large_share, self.validating = self.structures, self.val_structures, 0.0, True
            try:
                _, dices = self._session(self.val_idx, kind, rng, grad=False)
            finally:
                self.structures, self.large_share, self.validating = saved, LARGE_SHARE, False
            out[f"val_{kind}_first"] = float(np.mean(dices[0]))
            out[f"val_{kind}_last"] = float(np.mean(dices[-1]))
            if kind == "box":  # the first click after the box: where held-out masks got worse (docs/clicks.md)
                out["val_box_click1"] = float(np.mean(dices[1]))
            if kind == "points":  # the chosen candidate before the refiner: what the refiner adds to
                out["val_points_candidate"] = self.candidate_dice
        out["score"] = float(np.mean([out["val_box_last"] - out["val_box_first"], out["val_points_first"],
                                      out["val_points_last"], out["val_neighbour_first"]]))
        return out


def _dices(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    inter = (pred & gt).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + gt.sum(axis=(1, 2))
    return [1.0 if t == 0 else 2 * i / t for i, t in zip(inter, total)]


def settings_dict(s: ClickTrainSettings) -> dict:
    return asdict(s)
