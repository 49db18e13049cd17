"""Fine-tune an adapter (and optionally the mask decoder) on labelled slices, clicks included.

The loop follows SAM-Med2D's ``train.py`` / ``utils.py`` (OpenGVLab/SAM-Med2D), adapted:

* first prompt: a box from the ground truth (random margin and jitter, as ``medseg eval``'s
  ``box`` protocol) with probability ``box_prob``, else one positive point (multimask, the mask
  with the best predicted IoU kept, as SAM-Med2D);
* then up to ``clicks`` corrective clicks from the error region, the previous low-resolution
  logits fed back as the mask prompt and the box kept (``medseg eval``'s ``box+clicks``). Half
  the clicks are the evaluation's user (:func:`evaluation.clicks.next_click`, the centre of the
  largest error), half a random error pixel (SAM-Med2D's ``select_random_points``);
* loss per prompt step: 20 x focal + Dice (MONAI ``DiceFocalLoss``, SAM-Med2D's weights) on the
  logits at the original resolution, + MSE between the IoU head and the mask's true IoU;
  the steps' mean is one AdamW step (cosine learning rate; SAM-Med2D steps after each prompt instead);
* images pass through the model's own ``Segmenter.preprocess`` and geometry, exactly as at
  inference; the model stays in ``eval()`` mode (frozen BatchNorm statistics, no dropout).

Validation (split by slice, or by structure *and* slice, :mod:`adapters.train_data`) runs
``box+clicks:N`` with the evaluation runner; its score (:func:`selection_score`) is the mean of
the box Dice and the Dice after N clicks, minus the box Dice lost against the base model (measured
at step 0), so an adapter that buys clicks with box Dice does not win. The best adapter is saved;
training stops after ``patience`` validations without improvement, or when the time budget
(``max_minutes``) is spent: the learning-rate schedule then follows the elapsed time, so a run cut
by its budget still ends with a decayed rate. ``DIR/checkpoint.pt`` (adapter, optimizer, schedule,
step, elapsed time) is written atomically at each validation for ``--resume``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.click_refiner import ATTRIBUTE as REFINER
from adapters.inject import AdapterConfig, adapted_segmenter, adapter_state, count_parameters, inject, trainable_parameters
from adapters.io import save_adapter
from adapters.train_data import Augment, check_disjoint, data_summary, load_cases, split_by_slice, split_by_structure
from evaluation.clicks import Click, Protocol, box_from_mask, next_click, simulate
from evaluation.manifest import LoadedCase
from evaluation.runner import EvalSettings, case_rng
from models.prompts import Prompts
from models.segmenter import Embedding, Segmenter

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps in all (a quick run)
    batch_size: int = 2
    lr: float = 3e-4
    decoder_lr_scale: float = 0.1  # the (pre-trained) decoder moves slower than the new adapter
    encoder_lr_scale: float = 1.0  # the encoder adapter's learning rate / lr; 0 freezes it (the base encoder's embeddings)
    warmup_steps: int | None = None  # linear warm-up; default min(100, total steps // 10)
    weight_decay: float = 1e-4
    clicks: int = 5  # most corrective clicks after the first prompt, in training and validation
    click_schedule: str = "uniform"  # corrective clicks per training session: "uniform" 0..clicks, or "full" (always clicks)
    box_prob: float = 0.7  # first prompt: box with this probability, else one positive point
    box_margin: int = 10  # px: the box margin is drawn from 0..box_margin
    box_jitter: int = 3  # px per side
    augment: bool = True
    val_fraction: float = 0.2
    val_split: str = "slice"  # "slice", or "structure": validation structures are never trained on
    val_every: int | None = None  # steps between validations; default once per epoch
    max_minutes: float | None = None  # training time budget (validations included); the schedule follows it
    patience: int = 3  # validations without improvement before stopping
    box_loss_weight: float = 3.0  # validation score: cost of each point of box Dice below the base model's
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on the CPU)


@dataclass
class TrainResult:
    output: Path
    steps: int
    best_score: float
    best_step: int
    history: list[dict]
    stopped_early: bool
    segmenter: Segmenter  # the model as trained at the last step (the saved adapter is the best one)


class Objective:
    """20 x focal + Dice on logits (MONAI DiceFocalLoss) + MSE of the IoU head, as SAM-Med2D."""

    def __init__(self) -> None:
        from monai.losses import DiceFocalLoss

        self.mask_loss = DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_dice=1.0, lambda_focal=20.0)

    def __call__(self, logits: torch.Tensor, gt: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
        """logits, gt: (1, 1, H, W) float; iou_pred: (1,)."""
        with torch.no_grad():
            pred = logits > 0
            inter = (pred & (gt > 0)).sum()
            union = (pred | (gt > 0)).sum()
            iou = (inter.float() / union.clamp(min=1).float()).reshape(1)
        return self.mask_loss(logits, gt) + torch.mean((iou_pred.float() - iou) ** 2)


def random_error_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> Click | None:
    """A uniformly drawn wrong pixel: positive where missed, negative where a false positive."""
    wrong = np.argwhere(gt != pred)
    if len(wrong) == 0:
        return None
    row, col = wrong[rng.integers(len(wrong))]
    return Click(x=int(col), y=int(row), positive=bool(gt[row, col]))


def _decode(seg: Segmenter, emb: Embedding, prompts: Prompts, multimask: bool, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (1, 1, h, w) low-res logits and (1,) IoU of the kept mask (best-scored of several)."""
    with autocast():  # decode_prompts: a click refiner, when the adapter has one, takes the corrective clicks
        low, iou = seg.decode_prompts(emb, prompts, multimask)
    low, iou = low.float(), iou.float()
    best = int(iou[0].argmax())
    return low[:, best : best + 1], iou[:, best]


def case_loss(
    seg: Segmenter,
    emb: Embedding,
    case: tuple[np.ndarray, np.ndarray],
    objective: Objective,
    settings: TrainSettings,
    rng: np.random.Generator,
    autocast,
    *,
    n_clicks: int,
    first_box: bool,
) -> torch.Tensor:
    """The mean loss over one simulated session: first prompt, then ``n_clicks`` corrections."""
    _, gt = case
    size = emb.original_size
    gt_t = torch.from_numpy(gt.astype(np.float32))[None, None].to(seg.device)
    if first_box:
        margin = int(rng.integers(0, settings.box_margin + 1))
        prompts = Prompts(box=box_from_mask(gt, margin, jitter=settings.box_jitter, rng=rng))
        multimask = False
    else:
        click = next_click(gt, np.zeros_like(gt)) if rng.random() < 0.5 else random_error_click(gt, np.zeros_like(gt), rng)
        prompts = Prompts(points=np.array([[click.x, click.y]], np.float32), point_labels=np.array([1]))
        multimask = True
    losses = []
    for step in range(n_clicks + 1):
        low, iou = _decode(seg, emb, prompts, multimask, autocast)
        logits = seg.geometry.logits_to_original(low, size)
        losses.append(objective(logits, gt_t, iou))
        if step == n_clicks:
            break
        pred = (logits.detach() > 0)[0, 0].cpu().numpy()
        click = next_click(gt, pred) if rng.random() < 0.5 else random_error_click(gt, pred, rng)
        if click is None:
            break
        prompts = prompts.with_click(click.x, click.y, click.positive)
        prompts = Prompts(
            points=prompts.points,
            point_labels=prompts.point_labels,
            box=prompts.box,
            mask_logits=low.detach()[0].cpu().numpy(),
        )
        multimask = prompts.box is None and len(prompts.points) == 1
    return torch.stack(losses).mean()


def batch_loss(
    seg: Segmenter,
    batch: list[tuple[np.ndarray, np.ndarray]],
    objective: Objective,
    settings: TrainSettings,
    rng: np.random.Generator,
    autocast,
    *,
    deterministic_box: bool = False,
) -> torch.Tensor:
    """Encode the batch once (with gradients into the adapter), then one session per slice.

    ``deterministic_box``: a box with a 5 px margin and no click (the fixed probe of
    :func:`probe_loss`).
    """
    x = torch.cat([seg.preprocess(image) for image, _ in batch]).to(seg.device)
    with autocast():
        features, extras = seg.encode(x)
    total = []
    for b, (image, gt) in enumerate(batch):
        size = (int(image.shape[0]), int(image.shape[1]))
        emb = Embedding(
            features=features[b : b + 1],
            original_size=size,
            input_size=seg.geometry.input_size(size),
            model_name=seg.name,
            extras={k: v[b : b + 1] for k, v in extras.items()},
        )
        if deterministic_box:
            prompts = Prompts(box=box_from_mask(gt, 5))
            low, iou = _decode(seg, emb, prompts, False, autocast)
            gt_t = torch.from_numpy(gt.astype(np.float32))[None, None].to(seg.device)
            total.append(objective(seg.geometry.logits_to_original(low, size), gt_t, iou))
            continue
        n_clicks = int(rng.integers(0, settings.clicks + 1))  # drawn in both schedules: the same rng stream
        if settings.click_schedule == "full":  # SAM-Med2D's fixed iterations: the last clicks get trained as often as the first
            n_clicks = settings.clicks
        first_box = bool(rng.random() < settings.box_prob)
        total.append(
            case_loss(seg, emb, (image, gt), objective, settings, rng, autocast, n_clicks=n_clicks, first_box=first_box)
        )
    return torch.stack(total).mean()


def probe_loss(seg: Segmenter, cases: list[LoadedCase]) -> float:
    """The loss with a fixed 5 px box and no augmentation: comparable from step to step."""
    objective = Objective()
    with torch.no_grad():
        batch = [(c.image, c.gt) for c in cases]
        return float(batch_loss(seg, batch, objective, TrainSettings(), np.random.default_rng(0), contextlib.nullcontext, deterministic_box=True))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def selection_score(box_dice: float, click_dice: float, base_box_dice: float | None, box_loss_weight: float = 3.0) -> float:
    """The validation score that picks the saved adapter: mean(box, box+N clicks) - w x box Dice lost.

    The goal is clicks that help *without losing box Dice*: each point of box Dice below the base
    model's (``base_box_dice``, from the step-0 validation) costs ``box_loss_weight`` points of
    score on top of its share in the mean, so a small gain in clicks never pays for a box loss.
    """
    lost = 0.0 if base_box_dice is None else max(0.0, base_box_dice - box_dice)
    return (box_dice + click_dice) / 2 - box_loss_weight * lost


def validate(
    seg: Segmenter, cases: list[LoadedCase], clicks: int, base_box_dice: float | None = None, box_loss_weight: float = 3.0
) -> dict:
    """``box+clicks:N`` on each case -> mean box Dice, mean Dice after N clicks, and the :func:`selection_score`.

    The protocol is ``medseg eval``'s (:func:`evaluation.clicks.simulate` with its margin, seed and
    logits fed back), but only Dice is computed: HD95 and NSD cost more than the model on a GPU.
    """
    settings = EvalSettings(protocol=Protocol("box+clicks", clicks))
    box, last = [], []
    for case in cases:
        emb = seg.embed(case.image)
        steps = list(simulate(
            lambda prompts, multimask: seg.predict(emb, prompts, multimask_output=multimask),
            case.gt, settings.protocol, margin=settings.margin, jitter=settings.jitter,
            rng=case_rng(settings.seed, case.spec.case_id), feed_logits=settings.feed_logits,
        ))
        box.append(dice(steps[0].mask, case.gt))
        last.append(dice(steps[-1].mask, case.gt))
    box_dice, click_dice = float(np.nanmean(box)), float(np.nanmean(last))
    return {"box_dice": box_dice, f"box_clicks{clicks}_dice": click_dice,
            "score": selection_score(box_dice, click_dice, base_box_dice, box_loss_weight)}


def cosine_lr(base: float, step: int, total: int, warmup: int = 0, time_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``total``: a function of the step alone.

    Being stateless, it resumes exactly and stretches when a resumed run is given more steps.
    The warm-up matters with ``--train-decoder``: Adam's first steps move every decoder weight
    by about the learning rate at once, which can wreck a pre-trained decoder.
    ``time_fraction`` (elapsed / time budget): the decay follows whichever of the steps and the
    time budget is further along, so a run stopped by its budget ends with a decayed rate.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = max(min(step - warmup, span) / span, min(max(time_fraction, 0.0), 1.0))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_history(history: list[dict], output: Path) -> None:
    if not history:
        return
    columns = sorted({k for row in history for k in row}, key=lambda k: (k not in ("step", "epoch"), k))
    with open(output / HISTORY, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(history)
    plot_curves(history, output / "curves.png")


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation Dice against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    tr = [r for r in history if r.get("train_loss") not in (None, "")]
    steps, losses = [r["step"] for r in tr], np.array([r["train_loss"] for r in tr], dtype=float)
    a.plot(steps, losses, lw=0.6, alpha=0.5, label="per step")
    if len(losses) >= 20:  # each step draws its own prompts: the running mean shows the trend
        k = max(5, len(losses) // 20)
        a.plot(steps[k - 1 :], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
        a.legend()
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    va = [r for r in history if r.get("score") not in (None, "")]
    for key in sorted({k for r in va for k in r if k.endswith("_dice")}):
        b.plot([r["step"] for r in va], [r[key] for r in va], marker="o", label=key)
    b.set_xlabel("step")
    b.set_ylabel("validation Dice")
    if va:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finetune(
    base: Segmenter,
    base_checkpoint: str | Path,
    manifest: str | Path,
    output: str | Path,
    config: AdapterConfig,
    settings: TrainSettings,
    *,
    val_manifest: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train an adapter on ``manifest`` and save the best one to ``output`` (see the module doc).

    ``base`` is not modified: the adapter goes into a deep copy of its model.
    """
    from models.checkpoint import sha256_of

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cases = load_cases(manifest)
    if val_manifest is not None:
        train, val = cases, load_cases(val_manifest)
        check_disjoint(train, val)
    elif settings.val_split == "structure":
        train, val = split_by_structure(cases, settings.val_fraction, settings.seed)
    elif settings.val_split == "slice":
        train, val = split_by_slice(cases, settings.val_fraction, settings.seed)
    else:
        raise ValueError(f"validation split {settings.val_split!r} is unknown; use 'slice' or 'structure'")
    if not train:
        raise ValueError(f"{manifest}: no training case is left after the validation split")
    base_sha = sha256_of(base_checkpoint)
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = inject(base.model, config)
    seg = adapted_segmenter(base, model, f"{base.name}+training")
    model = seg.model = seg.model.to(device)
    seg.device = device
    params = trainable_parameters(model)
    n_train, n_total = count_parameters(model)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    if total_steps < 1:
        raise ValueError("nothing to train: --epochs and --max-steps must be at least 1")
    val_every = settings.val_every or steps_per_epoch
    decoder = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("mask_decoder.", "prompt_encoder."))]
    refiner = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(f"{REFINER}.")]
    adapter = [p for p in params if all(p is not q for q in decoder + refiner)]
    if settings.encoder_lr_scale == 0:  # only the decoder side learns; the encoder adapter stays the identity
        for p in adapter:
            p.requires_grad_(False)
        params, adapter = decoder + refiner, []
    groups = [{"params": g, "lr_scale": s} for g, s in (
        (adapter, settings.encoder_lr_scale), (decoder, settings.decoder_lr_scale), (refiner, 1.0)) if g]
    if not groups:
        raise ValueError("nothing to train: the encoder adapter is frozen (encoder_lr_scale 0) and no decoder part is trained")
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else min(100, max(1, total_steps // 10))
    use_bf16 = settings.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    objective = Objective()
    augment = Augment() if settings.augment else None
    step, best_score, best_step, bad, history, elapsed_before = 0, -math.inf, -1, 0, [], 0.0
    ckpt_path = output / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {output}; start without --resume")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("adapter_config") != config.as_dict() or ckpt.get("base_sha256") != base_sha:
            raise ValueError(f"--resume: {ckpt_path} was written for another adapter or base model; use a new --output")
        model.load_state_dict(ckpt["adapter"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_score, best_step, bad = ckpt["step"], ckpt["best_score"], ckpt["best_step"], ckpt["bad_validations"]
        history = list(ckpt["history"])
        elapsed_before = float(ckpt.get("elapsed_seconds", 0.0))
    budget = None if settings.max_minutes is None else 60.0 * settings.max_minutes
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start
    summary = data_summary(manifest, train, val)
    training_meta = {**asdict(settings), "val_manifest": None if val_manifest is None else str(val_manifest),
                     "trainable_parameters": n_train, "total_parameters": n_total}

    def save_best(scores: dict) -> None:
        save_adapter(model, config, output, base_model=base.name, base_sha256=base_sha, data=summary,
                     validation={**scores, "step": step}, training=training_meta)

    def checkpoint() -> None:
        _atomic_torch_save(
            {"adapter": adapter_state(model, config), "optimizer": optimizer.state_dict(),
             "scheduler": {"kind": "cosine", "base_lr": settings.lr, "total_steps": total_steps, "warmup": warmup}, "step": step, "best_score": float(best_score),
             "best_step": best_step, "bad_validations": bad, "history": history, "elapsed_seconds": elapsed(),
             "adapter_config": config.as_dict(), "base_sha256": base_sha},
            ckpt_path,
        )

    def run_validation() -> bool:
        """Validate, save the adapter if it is the best; True when training should stop."""
        nonlocal best_score, best_step, bad
        if not val:
            return False
        base_box = next((r["box_dice"] for r in history if r.get("step") == 0 and "box_dice" in r), None)
        scores = validate(seg, val, settings.clicks, base_box, settings.box_loss_weight)
        history.append({"step": step, "epoch": step / steps_per_epoch, **scores, "elapsed_s": elapsed()})
        line = f"validation at step {step} ({elapsed():.0f} s): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        if scores["score"] > best_score + 1e-6:
            best_score, best_step, bad = scores["score"], step, 0
            save_best(scores)
        else:
            bad += 1
        return bad >= settings.patience

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=f"finetune {config.kind}", unit="step", file=sys.stderr)
    stopped = False
    try:
        if step == 0 and run_validation():  # the base model's score is the bar to beat
            stopped = True
        while step < total_steps and not stopped:
            epoch = step // steps_per_epoch
            order = np.random.default_rng([settings.seed, epoch]).permutation(len(train))
            start = (step % steps_per_epoch) * settings.batch_size
            for i in range(start, len(order), settings.batch_size):
                rng = np.random.default_rng([settings.seed, 1, step])
                batch = []
                for j in order[i : i + settings.batch_size]:
                    c = train[int(j)]
                    image, gt = c.image, c.gt
                    if augment is not None:
                        image, gt = augment(image, gt, int(rng.integers(2**31)))
                    batch.append((image, gt))
                t0 = time.perf_counter()
                loss = batch_loss(seg, batch, objective, settings, rng, autocast)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr = cosine_lr(settings.lr, step, total_steps, warmup, 0.0 if budget is None else elapsed() / budget)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                optimizer.step()
                step += 1
                history.append({"step": step, "epoch": step / steps_per_epoch, "train_loss": float(loss.detach()),
                                "lr": lr, "seconds": time.perf_counter() - t0})
                if bar is not None:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", best=f"{best_score:.3f}")
                    bar.update(1)
                out_of_time = budget is not None and elapsed() >= budget
                if step % val_every == 0 or step >= total_steps or out_of_time:
                    stopped = run_validation()
                    checkpoint()
                if out_of_time:
                    stopped = True
                if stopped or step >= total_steps:
                    break
    finally:
        if bar is not None:
            bar.close()
    if not val:  # nothing to choose with: keep the last adapter
        save_best({})
        best_step = step
    checkpoint()
    _write_history(history, output)
    return TrainResult(output=output, steps=step, best_score=float(best_score), best_step=best_step,
                       history=history, stopped_early=stopped, segmenter=seg)
