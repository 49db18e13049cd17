"""Prepare the click model's training data and its held-out evaluation sets (here, not on the GPU).

Subjects (every one a public registry package; see docs/clicks.md):

* **training**: the INIA19 rhesus macaque template and its NeuroMaps atlas (Debian ``mricron-data``,
  ``templates/inia19-t1-brain.nii.gz`` + ``inia19-NeuroMaps.nii.gz``): one brain delineated on its
  own image, ~700 labelled structures, 0.5 mm. Nothing of Colin27, the CT or MNI152 is trained on.
* **held out** (never trained on, not even for checkpoint selection):
  - the shared evaluation set (``shared/data/manifest.csv``: Colin27 slab A, CT head 0051, phantom);
  - MNI152 2009a (nilearn's ``mni_icbm152_*_tal_nlin_sym_09a_converted``): white matter, brain,
    grey matter from its tissue maps, axial/coronal/sagittal slices: ``mni152/manifest.csv``;
  - Colin27 outside the shared manifest (same subject as the shared MR; AAL's cerebellum, lobes,
    hippocampus... on coronal and sagittal slices): ``colin27_other/manifest.csv``.

Writes into ``--out`` (git-ignored ``weights/devdata/click_model``): ``train_inia19.npz`` (the
windowed uint8 volume + int16 labels, the GPU trainer's only input), the two held-out manifests
with their NIfTI views, ``eval_slices.npz`` (every held-out case as the 2D uint8 slice and mask that
``medseg eval`` loads, with its pixel spacing, for the GPU machine, which has no SimpleITK), and ``sources.json``
(package, version, path inside, sha256 of every file used).

    apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb /tmp/mricron
    pip download --no-deps nilearn==0.14.1 -d /tmp/nilearn
    python scripts/prepare_click_data.py --mricron /tmp/mricron --nilearn-wheel /tmp/nilearn/nilearn-0.14.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "weights" / "devdata" / "click_model"
MRICRON = ("mricron-data", "1.2.20211006+dfsg-4")
NILEARN = ("nilearn", "0.14.1")
VIEW_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
# Colin27 AAL groups never in the shared manifest (which holds AAL 71-78 on axial slices z 66-97).
COLIN_OTHER = {"cerebellum_L": range(91, 108, 2), "cerebellum_R": range(92, 109, 2), "hippocampus_L": (37,),
               "hippocampus_R": (38,), "frontal_L": tuple(range(3, 29, 2)), "occipital_R": tuple(range(44, 55, 2)),
               "temporal_L": (81, 83, 85, 87, 89), "insula_R": (30,)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def window_uint8(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """MedSAM's MR preprocessing: the 0.5/99.5 percentiles of the non-zero voxels -> 0..255."""
    nz = volume[volume > 0]
    lo, hi = (float(v) for v in np.percentile(nz, [0.5, 99.5]))
    out = np.clip((volume.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255
    return np.rint(out).astype(np.uint8), lo, hi


def prepare_inia19(templates: Path, out: Path, sources: list[dict]) -> None:
    import nibabel as nib

    t1_path, lab_path = templates / "inia19-t1-brain.nii.gz", templates / "inia19-NeuroMaps.nii.gz"
    t1_img = nib.load(t1_path)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(lab_path).dataobj).astype(np.int16)
    spacing = np.asarray(t1_img.header.get_zooms()[:3], np.float32)  # mm per voxel along the array axes (0.5)
    if t1.shape != labels.shape:
        raise SystemExit(f"{templates}: INIA19 image {t1.shape} and labels {labels.shape} differ")
    image, lo, hi = window_uint8(t1)
    # spacing: the point sessions' candidate boxes are physical sizes, as at inference (adapters.click_train)
    np.savez_compressed(out / "train_inia19.npz", image=image, labels=labels, brain=(t1 > 0), spacing=spacing)
    for path in (t1_path, lab_path):
        sources.append({"use": "train", "subject": "INIA19 macaque template", "package": MRICRON[0],
                        "version": MRICRON[1], "path": f"usr/share/mricron/templates/{path.name}", "sha256": sha256(path)})
    print(f"INIA19: {image.shape}, {spacing.tolist()} mm, window {lo:.1f}..{hi:.1f}, "
          f"{len(np.unique(labels)) - 1} labels")


def _fill(mask2d: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask2d)


def _good_slices(label: np.ndarray, n: int) -> list[int]:
    """n slices spread over those whose area is >= 30 % of the largest (as the shared manifest)."""
    areas = label.reshape(-1, label.shape[2]).sum(axis=0)
    cand = np.flatnonzero(areas >= max(0.3 * areas.max(), 30))
    return [int(cand[i]) for i in np.linspace(0, len(cand) - 1, n + 2)[1:-1].round().astype(int)]


def write_view_set(name: str, image: np.ndarray, labels: np.ndarray, structures: dict[str, tuple[int, ...]],
                   views: tuple[str, ...], per_view: int, out: Path, modality: str) -> Path:
    """One NIfTI pair per view + a ``medseg eval`` manifest (rot90 rows, 1 mm, window from the volume)."""
    import nibabel as nib

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    _, lo, hi = window_uint8(image)
    rows = []
    for view in views:
        img_v, lab_v = image.transpose(VIEW_AXES[view]), labels.transpose(VIEW_AXES[view])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(img_v), np.eye(4)), folder / f"{view}_image.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(lab_v.astype(np.int16)), np.eye(4)), folder / f"{view}_label.nii.gz")
        for structure, values in structures.items():
            for k in _good_slices(np.isin(lab_v, values), per_view):
                rows.append({"set": name, "case_id": f"{name}_{view}_{structure}_k{k:03d}", "modality": modality,
                             "image": f"{view}_image.nii.gz", "label": f"{view}_label.nii.gz", "slice_index": k,
                             "transform": "rot90", "structure": structure, "label_values": "|".join(map(str, values)),
                             "norm_lo": f"{lo:.2f}", "norm_hi": f"{hi:.2f}", "view": view})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{name}: {len(rows)} cases -> {manifest}")
    return manifest


def prepare_mni152(wheel: Path, out: Path, sources: list[dict]) -> Path:
    """MNI152 2009a T1 + tissue maps: 1 white matter, 2 grey matter, 3 the rest of the filled brain."""
    import gzip

    import nibabel as nib
    from scipy import ndimage

    vols = {}
    with zipfile.ZipFile(wheel) as z:
        for kind in ("t1", "gm", "wm"):
            member = f"nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
            raw = z.read(member)
            vols[kind] = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(raw)).dataobj)
            sources.append({"use": "heldout", "subject": "MNI152 2009a template", "package": NILEARN[0],
                            "version": NILEARN[1], "path": member, "sha256": hashlib.sha256(raw).hexdigest()})
    gm, wm = vols["gm"].astype(np.float32) / 255, vols["wm"].astype(np.float32) / 255
    brain = (gm + wm) > 0.5
    lab, n = ndimage.label(brain)
    brain = lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    brain = np.stack([_fill(brain[:, :, k]) for k in range(brain.shape[2])], axis=2)
    labels = np.where(brain, 3, 0).astype(np.int16)
    labels[brain & (gm > 0.5)] = 2
    labels[brain & (wm > 0.5)] = 1
    return write_view_set("mni152", vols["t1"], labels, {"white_matter": (1,), "grey_matter": (2,), "brain": (1, 2, 3)},
                          ("axial", "coronal", "sagittal"), 4, out, "MR-T1")


def prepare_colin_other(templates: Path, out: Path, sources: list[dict]) -> Path:
    import nibabel as nib

    t1_path, aal_path = templates / "ch2.nii.gz", templates / "aal.nii.gz"
    image = np.asarray(nib.load(t1_path).dataobj)
    aal = np.asarray(nib.load(aal_path).dataobj)
    for path in (t1_path, aal_path):
        sources.append({"use": "heldout", "subject": "Colin27", "package": MRICRON[0], "version": MRICRON[1],
                        "path": f"usr/share/mricron/templates/{path.name}", "sha256": sha256(path)})
    return write_view_set("colin27_other", image, aal, {k: tuple(v) for k, v in COLIN_OTHER.items()},
                          ("coronal", "sagittal"), 2, out, "MR-T1")


def export_eval_slices(manifests: dict[str, Path], out: Path) -> None:
    """Every held-out case as the uint8 slice + mask ``medseg eval`` loads (for the GPU machine)."""
    from evaluation.manifest import CaseLoader, read_manifest

    arrays, index = {}, []
    for set_name, manifest in manifests.items():
        specs, _ = read_manifest(manifest)
        loader = CaseLoader(manifest)
        for spec in specs:
            case = loader.load(spec)
            i = len(index)
            arrays[f"image_{i}"] = case.image[..., 0] if (case.image[..., :1] == case.image).all() else case.image
            arrays[f"gt_{i}"] = case.gt
            index.append({"set": set_name, "case_id": spec.case_id, "structure": spec.structure,
                          "spacing": [float(v) for v in case.spacing]})  # (row, col) mm: medseg eval passes it
    np.savez_compressed(out / "eval_slices.npz", index=json.dumps(index), **arrays)
    print(f"eval slices: {len(index)} cases")


def unverified(sources: list[dict], adapter_json: Path) -> str | None:
    """The first source whose sha256 is not the one ``adapter.json`` records (``training_volumes``,
    ``heldout_volumes``), as a one-line message; None when all match. A registry that ships other bytes under the
    same version would otherwise give other training or held-out data without a word."""
    meta = json.loads(adapter_json.read_text())
    recorded = {(r.get("package"), r.get("path")): r.get("sha256")
                for r in meta.get("training_volumes", []) + meta.get("heldout_volumes", [])}
    for s in sources:
        want = recorded.get((s["package"], s["path"]))
        if want != s["sha256"]:
            return (f"{s['path']} in {s['package']} {s['version']} has sha256 {s['sha256'][:12]}..., "
                    f"{adapter_json} records {want[:12] + '...' if want else 'no such file'}")
    return None


def not_ours(folder: Path) -> bool:
    """True for a folder this script must not replace: it exists, holds something, and is not an earlier output
    (which always has ``sources.json``). ``--out`` is replaced whole, so a folder of the user's own files is refused."""
    return folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / "sources.json").is_file()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mricron", type=Path, required=True, help="mricron-data unpacked (dpkg-deb -x) or its templates folder")
    p.add_argument("--nilearn-wheel", type=Path, required=True, help="nilearn-0.14.1-py3-none-any.whl")
    p.add_argument("--shared", type=Path, default=Path("/work/shared/data"), help="the shared evaluation data")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--verify", type=Path, metavar="ADAPTER_JSON",
                   help="refuse any source file whose sha256 differs from the one this adapter.json records")
    args = p.parse_args()
    templates = args.mricron if (args.mricron / "inia19-t1-brain.nii.gz").is_file() else args.mricron / "usr/share/mricron/templates"
    # built beside --out and moved there whole once verified: a refused or interrupted run leaves no data that a
    # test or the trainer could take for the real thing
    out = args.out.with_name(args.out.name + ".partial")
    if not_ours(args.out):
        print(f"prepare_click_data: --out {args.out} exists and is not an earlier output of this script (no sources.json); "
              "give an empty or new folder", file=sys.stderr)
        return 1
    if out.exists() and not (out.is_dir() and (out / ".prepare_click_data").is_file()):
        print(f"prepare_click_data: {out} exists and is not this script's build folder; move it away", file=sys.stderr)
        return 1
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / ".prepare_click_data").touch()  # marks the build folder as ours, so a rerun may clear it
    sources: list[dict] = []
    prepare_inia19(templates, out, sources)
    manifests = {"shared": args.shared / "manifest.csv", "mni152": prepare_mni152(args.nilearn_wheel, out, sources),
                 "colin27_other": prepare_colin_other(templates, out, sources)}
    if args.verify and (wrong := unverified(sources, args.verify)):
        shutil.rmtree(out)
        print(f"prepare_click_data: {wrong}", file=sys.stderr)
        return 1
    export_eval_slices(manifests, out)
    (out / "sources.json").write_text(json.dumps(sources, indent=2))
    (out / ".prepare_click_data").unlink()
    shutil.rmtree(args.out, ignore_errors=True)
    out.rename(args.out)
    for f in sorted(args.out.glob("*.npz")):
        print(f"{f.name}: {f.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
