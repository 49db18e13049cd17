import csv, statistics as st, sys
cal={"head (1|2)","caudate L","putamen L","pallidum L","thalamus L"}
fills=["model","shape","guided"]
data={}
for b in ["onnx-int8-conv","torch"]:
    for r in csv.DictReader(open(f"/tmp/fill18/gap_{b}.csv")):
        if r["part"]!="fillgap": continue
        g=int(r["gap"]); f=r["rule"].split(": ",1)[1].split(" ")[0]
        grp="cal" if r["structure"] in cal else ("held" if r["dataset"].startswith("held") else ("check" if r["dataset"]!="CT head" else "skull"))
        data.setdefault((grp,g,f,b),[]).append(float(r["dice3d"]))
for grp in ["cal","check","held"]:
    print(grp)
    for g in [4,8,12,16,24]:
        line=f"  G={g:2d}"
        for f in fills:
            vals=[st.mean(data[(grp,g,f,b)]) for b in ["onnx-int8-conv","torch"] if (grp,g,f,b) in data]
            n=len(data.get((grp,g,f,"torch"),[]))
            line+=f"  {f} {st.mean(vals):.3f}" if vals else f"  {f} -"
        print(line, f"(n={n})")
