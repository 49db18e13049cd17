"""``medseg serve``: the web UI (loopback by default)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="start the web UI")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default="litemedsam", help="model a new session starts with")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where sessions are saved (default $MEDSEG_STATE_DIR or ~/.local/state/medseg)",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=1,
        metavar="N",
        help="encode N neighbouring slices ahead while idle (0: off); default 1",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from app.ui import launch

    if args.prefetch < 0:
        raise ValueError(f"--prefetch must be 0 or more, got {args.prefetch}")
    launch(
        host=args.host,
        port=args.port,
        model=args.model,
        device=args.device,
        state_dir=args.state_dir,
        prefetch_radius=args.prefetch,
    )
    return 0
