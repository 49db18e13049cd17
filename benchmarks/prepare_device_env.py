"""Pack the Python packages the GPU machine lacks into ``.devwheels/`` (git-ignored), in three parts
that each fit one ``device`` call's 64 MiB carry beside the tracked tree (~30 MiB since session 16).

The GPU machine (python 3.12, torch, timm, cv2, scipy, aiohttp, ...) has no SimpleITK, MONAI,
nibabel, pydicom, segment-anything, Ray or jsonschema, and cannot download them. SimpleITK's and
Ray's wheels are 53 and 79 MB; unpacked and re-compressed with xz (Ray without its Java jars and
the RLlib/Tune/Train/Data libraries, which ``medseg batch`` does not import) they are ~29 and
~30 MB. ``benchmarks/device_install.sh`` unpacks a part into ``/tmp/site`` on the machine, where
it stays while the machine is warm:

    .venv/bin/python benchmarks/prepare_device_env.py
    # device call 1: carry .devwheels/a   command: bash benchmarks/device_install.sh .devwheels/a
    # device call 2: carry .devwheels/s   command: bash benchmarks/device_install.sh .devwheels/s
    # device call 3: carry .devwheels/b   (Ray, for `medseg batch` only) the same with .devwheels/b
    # later calls:   export PYTHONPATH=/tmp/site:$PWD ...

Part a (MONAI, nibabel, pydicom, segment-anything, ~7 MiB) and part s (SimpleITK alone, ~27 MiB) were
one part until the tree grew past 29 MiB and a + tree no longer fitted 64 MiB (session 17).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".devwheels"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# the versions of this project's venv; part a: the study readers and MONAI; part s: SimpleITK; part b: Ray
# and what it needs beyond the machine's packages
PART_A = ["monai==1.6.1", "nibabel==5.4.2", "pydicom==3.0.2", "segment-anything==1.0"]
PART_S = ["simpleitk==2.5.7"]
PART_B = ["ray==2.60.0", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1",
          "referencing==0.37.0", "rpds-py==2026.9.1"]
REPACK = {"simpleitk": (), "ray": ("ray/jars", "ray/rllib", "ray/tune", "ray/train", "ray/data")}


def download(spec: str, dest: Path) -> Path:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), spec],
                   check=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    return next(p for p in dest.glob("*.whl") if p.name.lower().startswith(name))


def repack(wheel: Path, drop: tuple[str, ...], dest: Path) -> Path:
    """A wheel -> ``NAME.tar.xz`` of its unpacked contents without the ``drop`` folders."""
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        for d in drop:
            shutil.rmtree(Path(tmp) / d, ignore_errors=True)
        out = dest / (wheel.name.split("-")[0] + ".tar.xz")
        with tarfile.open(out, "w:xz", preset=6) as tar:
            for item in sorted(Path(tmp).iterdir()):
                tar.add(item, arcname=item.name)
    return out


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    for part, specs in (("a", PART_A), ("s", PART_S), ("b", PART_B)):
        dest = OUT / part
        dest.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            for spec in specs:
                wheel = download(spec, Path(tmp))
                key = spec.split("==")[0].lower()
                if key in REPACK:
                    repack(wheel, REPACK[key], dest)
                else:
                    shutil.copy(wheel, dest)
        size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
        print(f"{dest}: {size:.1f} MiB ({', '.join(sorted(f.name for f in dest.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
