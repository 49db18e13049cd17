import csv, statistics as st
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
cal={"head (1|2)","caudate L","putamen L","pallidum L","thalamus L"}
rows=[r for b in ["onnx-int8-conv","torch"] for r in csv.DictReader(open(f"/work/main/docs/bench/s18/fillgap/gap_{b}.csv")) if r["part"]=="fillgap"]
def grp(r): return "calibration" if r["structure"] in cal else ("held-out slab" if r["dataset"].startswith("held") else "other")
fig,axes=plt.subplots(1,2,figsize=(9,3.6),sharey=True)
for ax,g in zip(axes,["calibration","held-out slab"]):
    for f,c in [("model","tab:grey"),("shape","tab:green"),("guided","tab:blue")]:
        xs,ys=[],[]
        for G in [4,8,12,16,24]:
            v=[float(r["dice3d"]) for r in rows if grp(r)==g and int(r["gap"])==G and r["rule"].split(": ",1)[1].startswith(f)]
            if v: xs.append(G); ys.append(st.mean(v))
        ax.plot(xs,ys,"o-",color=c,label={"model":"model (both ends)","shape":"shape (default)","guided":"model guided by the shape"}[f])
    ax.set_title(f"{g} (int8 and torch pooled)",fontsize=9); ax.set_xlabel("slices between the two anchors"); ax.grid(alpha=.3)
axes[0].set_ylabel("fill Dice (slices between)"); axes[0].legend(fontsize=8); axes[0].set_ylim(0.3,1)
fig.suptitle("Fill between two corrected slices, by the distance between them",fontsize=10)
fig.tight_layout(); fig.savefig("/work/main/docs/img/fill_by_gap.png",dpi=100)
