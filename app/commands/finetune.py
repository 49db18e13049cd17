"""``medseg finetune``: train an adapter (and optionally the decoder) on a manifest of labelled slices."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import finite_float
from app.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from adapters.inject import KINDS
    from adapters.train import TrainSettings

    d = TrainSettings()
    p = sub.add_parser(
        "finetune",
        help="fine-tune an adapter on your own labelled slices (boxes and clicks)",
        description="Train an adapter injected into a frozen encoder on MANIFEST.csv (the format of medseg eval), "
        "with simulated boxes and corrective clicks. Writes DIR/adapter.safetensors + DIR/adapter.json (use them "
        "with `medseg segment --adapter DIR`), DIR/history.csv, DIR/curves.png and DIR/checkpoint.pt (--resume).",
    )
    p.add_argument("manifest", metavar="MANIFEST.csv", help="training slices; paths are relative to its folder")
    p.add_argument("--model", default="litemedsam", help="base model (registry name); default litemedsam")
    p.add_argument("--checkpoint", metavar="FILE", help="base weights; default: the registry's file in weights/")
    p.add_argument("--adapter", required=True, choices=KINDS, help="adapter kind")
    p.add_argument("--epochs", type=int, required=True, metavar="N", help="passes over the training slices")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N optimizer steps in all")
    p.add_argument("--train-decoder", action="store_true", help="train the prompt encoder and mask decoder too (saved with the adapter)")
    p.add_argument("--train-click-prompts", action="store_true",
                   help="train only the prompt encoder's click and mask-prompt embeddings (saved with the adapter); "
                   "a box alone never reads them, so box results are the adapter-only model's")
    p.add_argument("--click-refiner", action="store_true",
                   help="train a residual decoder for corrective clicks (models.click_refiner): boxes keep the "
                   "frozen decoder, each click adds a learned correction to the previous logits")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--val-manifest", metavar="CSV", help="validation slices (default: a split of MANIFEST by slice)")
    p.add_argument("--val-fraction", type=finite_float, default=d.val_fraction, help=f"share of slices (and with --val-split structure, of structures) held out; default {d.val_fraction}")
    p.add_argument("--val-split", choices=["slice", "structure"], default=d.val_split,
                   help="without --val-manifest: hold out slices (default), or structures never trained on "
                   "(on slices never trained on)")
    p.add_argument("--max-minutes", type=finite_float, default=None, metavar="MIN",
                   help="training time budget, validations included; the learning rate decays over it")
    p.add_argument("--val-every", type=int, default=None, metavar="STEPS", help="validate every STEPS steps; default once an epoch")
    p.add_argument("--patience", type=int, default=d.patience, help=f"validations without gain before stopping; default {d.patience}")
    p.add_argument("--box-loss-weight", type=finite_float, default=d.box_loss_weight,
                   help="validation score = mean(box, box+clicks) - W x box Dice lost against the base model; "
                   f"default {d.box_loss_weight:g}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"slices per step; default {d.batch_size}")
    p.add_argument("--lr", type=finite_float, default=d.lr, help=f"learning rate (AdamW, cosine); default {d.lr:g}")
    p.add_argument("--decoder-lr-scale", type=finite_float, default=d.decoder_lr_scale,
                   help=f"--train-decoder: decoder learning rate / --lr; default {d.decoder_lr_scale}")
    p.add_argument("--encoder-lr-scale", type=finite_float, default=d.encoder_lr_scale,
                   help="encoder adapter learning rate / --lr; 0 freezes it, so boxes give exactly the base "
                   f"model's masks (with --click-refiner); default {d.encoder_lr_scale:g}")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps; default min(100, steps / 10)")
    p.add_argument("--clicks", type=int, default=d.clicks, help=f"most corrective clicks per slice; default {d.clicks}")
    p.add_argument("--click-schedule", choices=["uniform", "full"], default=d.click_schedule,
                   help="corrective clicks per training session: uniform in 0..--clicks (default), or always --clicks "
                   "(SAM-Med2D's fixed iterations; trains the later clicks as often as the first)")
    p.add_argument("--box-prob", type=finite_float, default=d.box_prob, help=f"share of sessions starting with a box; default {d.box_prob}")
    p.add_argument("--no-augment", action="store_true", help="no MONAI augmentation")
    p.add_argument("--bottleneck-ratio", type=finite_float, default=0.25, help="sam_med2d: adapter width / block width; default 0.25")
    p.add_argument("--lora-rank", type=int, default=4, help="lora: rank; default 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu; bf16 autocast on cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from adapters.inject import AdapterConfig
    from adapters.train import TrainSettings, finetune
    from models.registry import get_spec, load_segmenter

    for name in ("epochs", "batch_size", "patience", "lora_rank"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes must be above 0, got {args.max_minutes}")
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.val_every is not None and args.val_every < 1:
        raise UsageError(f"--val-every must be at least 1, got {args.val_every}")
    if args.box_loss_weight < 0:
        raise UsageError(f"--box-loss-weight must be >= 0, got {args.box_loss_weight}")
    if args.encoder_lr_scale < 0:
        raise UsageError(f"--encoder-lr-scale must be >= 0, got {args.encoder_lr_scale}")
    if args.encoder_lr_scale == 0 and not (args.train_decoder or args.train_click_prompts or args.click_refiner):
        raise UsageError("--encoder-lr-scale 0 freezes the encoder adapter: add --click-refiner, --train-decoder "
                         "or --train-click-prompts, or there is nothing to train")
    if args.clicks < 0 or not 0 <= args.box_prob <= 1:
        raise UsageError("--clicks must be >= 0 and --box-prob in [0, 1]")
    out = Path(args.output)
    if (out / "checkpoint.pt").exists() and not args.resume:
        raise UsageError(f"{out} already holds a training run: add --resume to continue it, or choose a new --output")
    config = AdapterConfig(
        kind=args.adapter, bottleneck_ratio=args.bottleneck_ratio, lora_rank=args.lora_rank, train_decoder=args.train_decoder,
        train_click_prompts=args.train_click_prompts, click_refiner=args.click_refiner,
    )
    settings = TrainSettings(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, clicks=args.clicks, click_schedule=args.click_schedule,
        decoder_lr_scale=args.decoder_lr_scale, encoder_lr_scale=args.encoder_lr_scale, warmup_steps=args.warmup_steps, box_prob=args.box_prob, augment=not args.no_augment, val_fraction=args.val_fraction, val_split=args.val_split, val_every=args.val_every, max_minutes=args.max_minutes, box_loss_weight=args.box_loss_weight,
        patience=args.patience, seed=args.seed, device=args.device,
    )
    base = load_segmenter(args.model, args.checkpoint, args.device)
    checkpoint = Path(args.checkpoint) if args.checkpoint else get_spec(args.model).default_checkpoint
    result = finetune(
        base, checkpoint, args.manifest, out, config, settings,
        val_manifest=args.val_manifest, resume=args.resume, progress=not args.no_progress,
    )
    best = "no validation set" if result.best_step < 0 else f"best validation score {result.best_score:.4f} at step {result.best_step}"
    print(f"{out}: {result.steps} steps{' (stopped early)' if result.stopped_early else ''}, {best}; "
          f"use it with: medseg segment ... --model {args.model} --adapter {out}")
    return 0
