"""An annotation of a 2D image given as a NIfTI (or DICOM-placed) file is checked against the image's place as a 3D
one is: ``medseg oneshot --ref-mask`` and ``medseg eval``'s label column compared grids only for 3D images (a PNG
mask has no place to compare), so a 2D label moved 10 mm or with pixels twice the size was taken as the image's
truth (session 18's adversarial pass). A PNG mask of a 2D image is taken as before."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from app.commands.oneshot import reference_mask
from app.errors import UsageError
from data.readers import read_study
from evaluation.manifest import CaseLoader, ManifestError, read_manifest
from tests.conftest import DATA

IMAGE, LABEL, K = DATA / "mr_t1_colin27_slabA_image.nii.gz", DATA / "mr_t1_colin27_slabA_label.nii.gz", 16


def _slice(path, shift_mm=(0.0, 0.0, 0.0), scale: float = 1.0) -> nib.Nifti1Image:
    """Axial slice K of a real Colin27 file as a 2D NIfTI with the slice's own 3D affine (moved or scaled)."""
    image = nib.load(str(path))
    affine = image.affine.copy()
    affine[:3, 3] += K * affine[:3, 2] + np.asarray(shift_mm)
    affine[:3, :2] *= scale
    out = nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, K], affine)
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    return out


FAULTS = {"moved 10 mm": {"shift_mm": (10.0, 0.0, 0.0)}, "pixels twice the size": {"scale": 2.0}}


@pytest.fixture()
def files(tmp_path):
    nib.save(_slice(IMAGE), tmp_path / "image.nii.gz")
    nib.save(_slice(LABEL), tmp_path / "label.nii.gz")
    for name, kwargs in FAULTS.items():
        nib.save(_slice(LABEL, **kwargs), tmp_path / f"{name.replace(' ', '_')}.nii.gz")
    label = np.asanyarray(nib.load(str(tmp_path / "label.nii.gz")).dataobj)
    Image.fromarray(np.where(label.T > 0, 255, 0).astype(np.uint8)).save(tmp_path / "label.png")
    return tmp_path


def _oneshot_args(folder, mask: str) -> argparse.Namespace:
    return argparse.Namespace(ref=str(folder / "image.nii.gz"), ref_mask=str(folder / mask), ref_label=None)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_oneshot_refuses_a_2d_mask_off_the_reference(files, fault):
    ref = read_study(files / "image.nii.gz")
    with pytest.raises(UsageError, match=r"is not on the grid of --ref .*image\.nii\.gz: (origin|spacing) \("):
        reference_mask(_oneshot_args(files, f"{fault.replace(' ', '_')}.nii.gz"), ref, 0)


def test_oneshot_takes_a_2d_mask_on_the_reference_and_a_png_mask(files):
    ref = read_study(files / "image.nii.gz")
    from_nifti = reference_mask(_oneshot_args(files, "label.nii.gz"), ref, 0)
    from_png = reference_mask(_oneshot_args(files, "label.png"), ref, 0)
    assert from_nifti.sum() > 1000
    np.testing.assert_array_equal(from_nifti, from_png)


def _manifest(folder, label: str):
    path = folder / "manifest.csv"
    path.write_text(f"case_id,image,label\nc1,image.nii.gz,{label}\n")
    cases, _ = read_manifest(path)
    return CaseLoader(path), cases[0]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_eval_refuses_a_2d_label_off_the_image(files, fault):
    loader, case = _manifest(files, f"{fault.replace(' ', '_')}.nii.gz")
    with pytest.raises(ManifestError, match=r"the label is not on the image's grid: (origin|spacing) \("):
        loader.load(case)


def test_eval_takes_a_2d_label_on_the_image_and_a_png_label(files):
    for label in ("label.nii.gz", "label.png"):
        loader, case = _manifest(files, label)
        assert loader.load(case).gt.sum() > 1000
