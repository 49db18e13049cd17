"""A real Orthanc PACS for the tests: loopback only, throwaway storage, DICOMweb plugin on, stopped after.

Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make test`` installs them, like dicom3tools).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    return Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class OrthancServer:
    port: int
    storage: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb base URL (QIDO/WADO/STOW root)."""
        return f"{self.url}/dicom-web"

    def rest(self, path: str) -> object:
        """Orthanc's own REST API (JSON), to check what the PACS really holds."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.loads(r.read())

    def upload(self, files) -> None:
        for f in files:
            req = urllib.request.Request(f"{self.url}/instances", data=Path(f).read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()

    def instance_count(self) -> int:
        return len(self.rest("/instances"))


@contextlib.contextmanager
def running_orthanc(workdir: Path) -> Iterator[OrthancServer]:
    """Start Orthanc on a free loopback port with storage under ``workdir``; stop and remove it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    port = free_port()
    config = {
        "Name": "medseg-tests",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,  # loopback clients only
        "AuthenticationEnabled": False,
        "HttpCompressionEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
        "StableAge": 1,
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(port=port, storage=storage)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}: {(workdir / 'orthanc.log').read_text()[-2000:]}")
            try:
                server.rest("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not answer within 60 s") from None
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(storage, ignore_errors=True)
