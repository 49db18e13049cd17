"""``medseg convert-checkpoint IN OUT --trust``: turn a pickled training checkpoint into safetensors.

The official SAM-Med2D and SAM-UNet files pickle an optimizer object beside the weights, which a
weights-only load (the only kind medseg does elsewhere) refuses. Unpickling runs code from the
file, so it happens here only, and only when the user says ``--trust``; the output holds tensors
only and loads everywhere without trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.errors import UsageError
from data.writers import atomic_output
from models.checkpoint import CheckpointError, read_state_dict, unwrap_state_dict


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert-checkpoint",
        help="convert a (trusted) pickled checkpoint to a weights-only .safetensors file",
        description="Read a PyTorch checkpoint (a plain state dict, or {'model': state_dict, 'optimizer': ...} as "
        "SAM-Med2D and SAM-UNet save it) and write its model weights as safetensors. A file that holds pickled "
        "Python objects is only unpickled with --trust, because unpickling can run code.",
    )
    p.add_argument("input", metavar="IN", help="checkpoint to read (.pth/.pt)")
    p.add_argument("output", metavar="OUT", help="file to write; must end in .safetensors")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow unpickling IN (torch.load with weights_only=False); only for files from a source you trust",
    )
    return p


def load_trusted(path: Path) -> dict[str, torch.Tensor]:
    """Unpickle a checkpoint the user vouched for and keep its model tensors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read even with --trust: {e}") from e
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return unwrap_state_dict(obj, path)


def convert(src: str | Path, dst: str | Path, *, trust: bool) -> int:
    """Write the weights of ``src`` to ``dst`` (.safetensors); returns the number of tensors."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"OUT {dst} must end in .safetensors (e.g. {dst.with_suffix('.safetensors')})")
    if not src.is_file():
        raise CheckpointError(f"checkpoint {src} does not exist")
    try:
        state = read_state_dict(src)  # weights-only first: no trust needed if this works
    except CheckpointError as e:
        if trust:
            state = load_trusted(src)
        elif "--trust" in str(e):  # pickled objects, not a corrupt file
            raise CheckpointError(
                f"checkpoint {src} holds pickled Python objects (often an optimizer) besides its weights; reading "
                f"them means unpickling, which can run code from the file. If you trust its source, run: "
                f"medseg convert-checkpoint {src} {dst} --trust"
            ) from e
        else:
            raise
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_output(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"converted_from": src.name})
    return len(tensors)


def run(args: argparse.Namespace) -> int:
    n = convert(args.input, args.output, trust=args.trust)
    print(f"{args.output}: {n} tensors (weights only); load it with --checkpoint {args.output}")
    return 0
