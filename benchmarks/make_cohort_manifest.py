"""A larger cohort for throughput runs: every slice x every labelled structure of a manifest's 3D studies.

The shared manifest has 42 rows; a throughput comparison of ``medseg batch`` against ``medseg eval``
needs hundreds of distinct (slice, structure) cases. This takes each distinct (image, label,
transform, window) of MANIFEST and writes one row per slice k and label value with at least
``--min-area`` pixels, next to MANIFEST (paths stay relative to its folder).

    python benchmarks/make_cohort_manifest.py /work/shared/data/manifest.csv --out cohort.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", default="cohort.csv", help="file name, written in the manifest's folder")
    p.add_argument("--min-area", type=int, default=50, help="pixels of a structure on a slice to make a case")
    args = p.parse_args(argv)
    with open(args.manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    studies = {}
    for r in rows:
        if r.get("slice_index", "") != "":
            studies.setdefault((r["image"], r["label"]), r)
    out_rows = []
    for (image, label), ref in studies.items():
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(args.manifest.parent / label)))
        for k in range(labels.shape[0]):
            values, counts = np.unique(labels[k], return_counts=True)
            for v, n in zip(values, counts):
                if v == 0 or n < args.min_area:
                    continue
                case = f"{Path(image).name.split('_image')[0]}_v{int(v)}_k{k:03d}"
                out_rows.append({"case_id": case, "image": image, "label": label, "slice_index": k,
                                 "transform": ref.get("transform", ""), "structure": f"label_{int(v)}",
                                 "label_values": int(v), "norm_lo": ref.get("norm_lo", ""),
                                 "norm_hi": ref.get("norm_hi", ""), "modality": ref.get("modality", "")})
    path = args.manifest.parent / args.out
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    print(f"{path}: {len(out_rows)} cases from {len(studies)} studies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
