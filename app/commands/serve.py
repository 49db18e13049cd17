"""``medseg serve``: the web UI (loopback by default)."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from app.commands.common import add_backend_arg, backend_choice, finite_float

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_batch_window_ms(device: str, backend: str) -> float:
    """The batching window a server gets unless ``--batch-window-ms`` says: 4 ms only on a GPU whose decoders
    are eager torch modules, which one batched call serves for many sessions.

    Why not on ``torch-fp16`` (the GPU default): its encodes and prompts replay as CUDA graphs, one request
    each. A batching runner sends such prompts straight to the model anyway (``ModelRunner.batches_decodes``,
    the one place that decides); a window there would batch only the encodes, eager beyond batch 1
    (``runtime.cuda_graphs.GRAPH_BATCHES``), which is not measured to pay. The batched server, before prompts
    bypassed the batcher, lost to one at a time. Measured on one H100 host, 20 sessions, four interleaved
    rounds: a click every 0.3 s gave p95 23-37 ms one at a time against 50-94 ms batched (which fell behind,
    39-50 of the 58 clicks/s offered), and without pauses 105-125 against 67-110 clicks/s (docs/benchmarks.md,
    section H)."""
    from runtime import CUDA_GRAPH_BACKENDS

    return 4.0 if device == "cuda" and backend not in CUDA_GRAPH_BACKENDS else 0.0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="start the web UI")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", default="litemedsam", help="model a new session starts with")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_backend_arg(p)
    p.add_argument("--batch-window-ms", type=finite_float, default=None, metavar="MS",
                   help="batch the sessions' slice encodes, and their prompts' decoder calls, that arrive within MS of "
                   "each other, each session served in turn (app/encode_batcher.py, app/decode_batcher.py); prompts "
                   "only where the model's decoder can batch them (eager torch, not CUDA graphs or ONNX: those go one "
                   "at a time, as the start-up line says); "
                   "default 0 (one at a time) on the CPU and on a GPU backend with CUDA graphs (the GPU default "
                   "torch-fp16), 4 on a GPU backend without them (docs/benchmarks.md, section H)")
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
    p.add_argument("--dicomweb", metavar="BASE_URL",
                   help="a PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web): the UI lists its series and "
                   "exports DICOM-SEG to it")
    p.add_argument("--open-sample", nargs="?", const="", default=None, metavar="NAME",
                   help="each new session opens this bundled sample (without NAME: the first, the CT head "
                   "series); `make run` does this")
    p.add_argument("--token-file", metavar="FILE",
                   help="access token (first line; default $MEDSEG_TOKEN); required when --host is not loopback: "
                   "the browser logs in as user 'medseg' with the token as password")
    p.add_argument(
        "--malloc-arenas",
        type=int,
        default=2,
        metavar="N",
        help="cap glibc's malloc arenas (0: glibc's default of 8 per core); default 2, see docs/reliability.md",
    )
    return p


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas for the server's threads; True if the cap is set.

    Why: each Gradio worker thread that runs the encoder gets its own arena (up to 8 per core)
    and each arena keeps ~150 MiB of freed activations, so a server's RSS climbs for hours as
    more threads take turns; with 2 arenas it levels off (measured in docs/reliability.md).
    ``MALLOC_ARENA_MAX`` in the environment wins; on a libc without ``mallopt`` nothing happens.
    """
    if n <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, int(n)))


def run(args: argparse.Namespace) -> int:
    if args.prefetch < 0:
        raise ValueError(f"--prefetch must be 0 or more, got {args.prefetch}")
    if args.malloc_arenas < 0:
        raise ValueError(f"--malloc-arenas must be 0 or more, got {args.malloc_arenas}")
    from app.access import LOGIN_USER, required_token, token_matches

    token = required_token(args.host, args.token_file)
    auth = None if token is None else (lambda user, password: user == LOGIN_USER and token_matches(password, token))
    dicomweb = None
    if args.dicomweb:
        from data.dicomweb import check_base_url

        dicomweb = check_base_url(args.dicomweb)
    backend = backend_choice(args).backend  # a bad --backend or $MEDSEG_BACKEND stops here, in one line
    if args.open_sample is not None:
        from app.controller import sample_studies

        samples = list(sample_studies())
        args.open_sample = args.open_sample or samples[0]
        if args.open_sample not in samples:
            raise ValueError(f"--open-sample {args.open_sample!r}: expected one of {', '.join(map(repr, samples))}")
    window = args.batch_window_ms if args.batch_window_ms is not None else default_batch_window_ms(args.device, backend)
    if not 0 <= window <= 1000:
        raise ValueError(f"--batch-window-ms must be 0..1000, got {window}")
    from app.session import claim_root, default_state_dir

    # the arguments checked, a second server on a state folder in use is refused before Gradio and the model are
    # imported (seconds); a refused argument claims nothing
    claim_root(Path(args.state_dir) if args.state_dir else default_state_dir())
    from app.ui import launch

    limit_malloc_arenas(args.malloc_arenas)  # before the server starts its threads
    if args.host not in LOOPBACK:
        print(f"medseg serve: listening on {args.host}: the token login guards it, but traffic is plain HTTP: "
              "put a TLS proxy in front (docs/integration.md, docs/reliability.md#threat-model)", file=sys.stderr)
    launch(
        host=args.host,
        port=args.port,
        model=args.model,
        device=args.device,
        state_dir=args.state_dir,
        prefetch_radius=args.prefetch,
        dicomweb=dicomweb,
        auth=auth,
        backend=args.backend,  # resolved per model by app.model_catalog.backend_for
        batch_window_ms=window,
        open_sample=args.open_sample,
    )
    return 0
