"""Plot mean Dice per corrective click, before and after an adapter, from adapter_experiment runs.

Reads the ``per_case.tgz`` archives that the device runs bring back (``eval/<set>_<before|after>_box_clicks5/per_case.csv``)
and draws docs/img/adapter_dice_per_click.png; prints the per-click means and the per-case gains.
Usage: python experiments/plot_adapter_runs.py [LABEL=PER_CASE.tgz ...]

Question: Dice per corrective click before/after an adapter. Result: docs/img/adapter_dice_per_click.png in docs/adapters.md.
"""
import csv, collections, tarfile, io, sys, json
import numpy as np
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
runs = dict(a.split("=", 1) for a in sys.argv[1:]) or {
    "run7 (seed 0)": str(ROOT / "docs/adapter_runs/run7_per_case.tgz"),
    "run8 (seed 1)": str(ROOT / "docs/adapter_runs/run8_per_case.tgz"),
}
def curves(tgz):
    out = {}
    with tarfile.open(tgz) as t:
        for m in t.getmembers():
            if not m.name.endswith("per_case.csv"): continue
            key = m.name.split("/")[1]
            rows = list(csv.DictReader(io.TextIOWrapper(t.extractfile(m))))
            by = collections.defaultdict(dict)
            for r in rows: by[r["case_id"]][int(r["clicks"])] = float(r["dice"])
            out[key] = by
    return out
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
stats = {}
for i, (name, tgz) in enumerate(runs.items()):
    c = curves(tgz)
    for ax, s in zip(axes, ("heldout", "all")):
        for tag, style in (("before", "--"), ("after", "-")):
            by = c[f"{s}_{tag}_box_clicks5"]
            ks = sorted({k for d in by.values() for k in d})
            m = [np.mean([by[case][k] for case in by]) for k in ks]
            if tag == "before" and i > 0: continue
            ax.plot(ks, m, style, marker="o", label=f"base LiteMedSAM" if tag == "before" else f"+ click refiner, {name}")
            stats[(name, s, tag)] = [round(x, 3) for x in m]
        after = c[f"{s}_after_box_clicks5"]; before = c[f"{s}_before_box"]
        d = np.array([after[case][5] - after[case][0] for case in after])
        stats[(name, s, "per-case gain 5 vs box")] = dict(mean=round(d.mean(),3), better=int((d > 0.005).sum()), worse=int((d < -0.005).sum()), n=len(d), worst=round(d.min(),3), best=round(d.max(),3))
        ax.set_title(f"{s} ({len(after)} cases)"); ax.set_xlabel("corrective clicks after the box"); ax.grid(alpha=.3)
axes[0].set_ylabel("mean Dice"); axes[0].legend(fontsize=8)
fig.tight_layout(); fig.savefig(ROOT / "docs/img/adapter_dice_per_click.png", dpi=100)
for k, v in stats.items():
    print(k, v)
