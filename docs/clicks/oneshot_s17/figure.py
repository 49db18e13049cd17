"""docs/img/oneshot_sized.png: PerSAM-F on the shared Colin27 slab, reference k=1 (brain), targets k=20, 30, by
`medseg oneshot` with the defaults of session 17 and with --sized-candidates off --body-mask off (before)."""
import sys, subprocess, tempfile
from pathlib import Path
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image
sys.path.insert(0, ".")
from tests.adapters.test_persam_litemedsam import BRAIN, IMAGE, mr_slice, window
from tests.conftest import dice

tmp = Path(tempfile.mkdtemp())
Image.fromarray(window(mr_slice(IMAGE, 1))).save(tmp / "ref.png")
Image.fromarray((mr_slice(BRAIN, 1) > 0).astype(np.uint8) * 255).save(tmp / "ref_mask.png")
ks = (20, 30)
for k in ks:
    Image.fromarray(window(mr_slice(IMAGE, k))).save(tmp / f"k{k}.png")
runs = {"before:\nfixed 5/10/20 mm candidates, no body mask": ["--sized-candidates", "off", "--body-mask", "off"],
        "session 17 default:\ncandidates the reference's size, body mask": []}
masks = {}
for name, flags in runs.items():
    out = tmp / str(len(masks))
    subprocess.run([".venv/bin/python", "-m", "app.cli", "oneshot", "--method", "persam_f", "--ref", str(tmp / "ref.png"),
                    "--ref-mask", str(tmp / "ref_mask.png"), "--targets", *[str(tmp / f"k{k}.png") for k in ks],
                    "--output", str(out), *flags], check=True)
    masks[name] = {k: np.asarray(Image.open(out / f"k{k}.png")) > 0 for k in ks}
fig, ax = plt.subplots(len(ks), 3, figsize=(10, 7))
for i, k in enumerate(ks):
    img, gt = window(mr_slice(IMAGE, k)), mr_slice(BRAIN, k) > 0
    ax[i, 0].imshow(window(mr_slice(IMAGE, 1)) if i == 0 else img, cmap="gray")
    if i == 0:
        ax[i, 0].contour(mr_slice(BRAIN, 1) > 0, [0.5], colors="lime")
        ax[i, 0].set_title("reference k=1 (the one annotation)", fontsize=9)
    else:
        ax[i, 0].contour(gt, [0.5], colors="lime"); ax[i, 0].set_title(f"target k={k}: ground truth", fontsize=9)
    for j, (name, m) in enumerate(masks.items()):
        a = ax[i, j + 1]
        a.imshow(img, cmap="gray")
        a.imshow(np.ma.masked_where(~m[k], m[k]), cmap="autumn", alpha=0.45)
        a.contour(gt, [0.5], colors="lime", linewidths=0.8)
        a.set_title(f"k={k}, {name}, Dice {dice(m[k], gt):.2f}", fontsize=8)
for a in ax.ravel():
    a.axis("off")
fig.suptitle("medseg oneshot --method persam_f, Colin27 slab brain (green: truth, orange: PerSAM-F)", fontsize=10)
fig.tight_layout()
fig.savefig("docs/img/oneshot_sized.png", dpi=90)
print("wrote docs/img/oneshot_sized.png")
