"""``medseg labelserver``: a MONAI Label-compatible server (3D Slicer's MONAILabel module, OHIF, MONAILabelClient)."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from app.commands.common import add_backend_arg, backend_choice
from app.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "labelserver",
        help="serve medseg's models over MONAI Label's REST API (3D Slicer, OHIF)",
        description="MONAI Label's API (/info/, /infer/{model}, /session/, /datastore/) at the root of the port. "
        "Images come from a folder of NIfTI files and DICOM series folders (--studies) or a PACS (--dicomweb; "
        "image id = SeriesInstanceUID, saved labels are stored back as DICOM-SEG). Loopback only unless a token "
        "is set (MEDSEG_TOKEN or --token-file); see docs/integration.md.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--studies", metavar="DIR", help="folder of .nii/.nii.gz/.nrrd images and DICOM series folders")
    src.add_argument("--dicomweb", metavar="BASE_URL", help="a PACS's DICOMweb root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--model", default="litemedsam", help="registry name (see `medseg models`); default litemedsam")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_backend_arg(p)
    p.add_argument("--token-file", metavar="FILE", help="access token (first line); default $MEDSEG_TOKEN")
    return p


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from app import header_deadline
    from app.access import required_token
    from app.labelserver.datastore import DicomWebStore, Sessions, StudiesDir
    from app.labelserver.server import ServerConfig, build_app
    from app.settings import get_settings
    from runtime import load_segmenter

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 1..65535")
    token = required_token(args.host, args.token_file)
    limits = get_settings()
    # uvicorn stops gracefully on SIGTERM, then re-raises it: exit through `finally` instead of dying there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    work = Path(tempfile.mkdtemp(prefix="medseg-labelserver-"))
    try:  # the work folder (sessions, retrieved series) goes with the server, or with a failed start
        if args.studies:
            datastore = StudiesDir(Path(args.studies))
        else:
            datastore = DicomWebStore(args.dicomweb, work / "pacs", max_voxels=limits.max_voxels,
                                      max_bytes=limits.max_upload_bytes, max_instances=limits.max_upload_files,
                                      timeout=limits.dicomweb_timeout_s)
        choice = backend_choice(args)
        # load (and export once) before serving: fail early on missing weights
        segmenter = load_segmenter(args.model, device=args.device, backend=choice.backend)
        cfg = ServerConfig(model=args.model, segmenter=segmenter, backend=choice.backend, datastore=datastore,
                           sessions=Sessions(work / "sessions", max_expiry_s=limits.session_ttl_s), work_dir=work,
                           token=token,
                           max_upload_bytes=limits.max_upload_bytes)
        app = build_app(cfg)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"medseg labelserver: MONAI Label API at http://{shown}:{args.port}/ "
              f"({'token required' if token else 'loopback, no token'}); models {args.model}, {args.model}_3d, "
              f"{args.model}_points; {choice.status()}", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    http=header_deadline.protocol_class(AutoHTTPProtocol, limits.header_timeout_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
