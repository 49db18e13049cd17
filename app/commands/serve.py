"""``medseg serve``: the web UI (loopback by default)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="start the web UI")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def run(args: argparse.Namespace) -> int:
    from app.ui import launch

    launch(host=args.host, port=args.port, model=args.model, device=args.device)
    return 0
