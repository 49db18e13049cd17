import csv, sys
# usage (repo root): python docs/clicks/oneshot_s11/compare_heldout.py BEFORE_DIR AFTER_DIR
sys.path.insert(0, ".")  # run from the repo root
import numpy as np
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
T = "/tmp/os18/mricron/usr/share/mricron/templates"
VOL = {"cerebellum_colin27": f"{T}/ch2.nii.gz", "brain_colin27": f"{T}/ch2.nii.gz",
       "brain_mni152": "weights/devdata/click_model/mni152/axial_image.nii.gz"}
b, a = sys.argv[1], sys.argv[2]
vols = {}
for name in VOL:
    if VOL[name] not in vols:
        v = read_study(VOL[name]); vols[VOL[name]] = (v, default_window(v, None))
    v, w = vols[VOL[name]]
    rb = list(csv.DictReader(open(f"{b}/{name}.csv"))); ra = list(csv.DictReader(open(f"{a}/{name}.csv")))
    print(f"{name} n={len(ra)} gt_box {np.mean([float(r['dice_gt_box']) for r in ra]):.3f}")
    for m in ("persam", "persam_f", "persam_box"):
        def stats(rows):
            d = np.mean([float(r[f"dice_{m}"]) for r in rows]); ge = sum(float(r[f"dice_{m}"]) >= 0.6 for r in rows)
            ing = sum(r[f"pos_in_gt_{m}"] == "True" for r in rows)
            air = 0
            for r in rows:
                x, y = (int(t) for t in r[f"pos_xy_{m}"].split())
                air += int(slice_to_rgb(v, int(r["target_k"]), w)[y, x, 0] == 0)
            return d, ge, ing, air
        sb, sa = stats(rb), stats(ra)
        print(f"  {m:10s} Dice {sb[0]:.3f} -> {sa[0]:.3f} | >=0.6 {sb[1]} -> {sa[1]} | point in GT {sb[2]} -> {sa[2]} | in air {sb[3]} -> {sa[3]}")
