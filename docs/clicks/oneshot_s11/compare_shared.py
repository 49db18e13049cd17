# python docs/clicks/oneshot_s11/compare_shared.py BEFORE/shared.csv AFTER/shared.csv
import csv, sys
b, a = sys.argv[1], sys.argv[2]
rb = list(csv.DictReader(open(b))); ra = list(csv.DictReader(open(a)))
M = ("persam", "persam_parity", "persam_f", "persam_box")
print("| structure | ref k | target k | GT box | " + " | ".join(f"{m} before -> after" for m in M) + " |")
print("|---|---|---|---:|" + "---:|" * len(M))
worst = {m: (0, None) for m in M}
for x, y in zip(rb, ra):
    assert (x["structure"], x["target_k"]) == (y["structure"], y["target_k"])
    cells = []
    for m in M:
        d0, d1 = float(x[f"dice_{m}"]), float(y[f"dice_{m}"])
        cells.append(f"{d0:.2f} -> {d1:.2f}" + (" **(-%.2f)**" % (d0 - d1) if d0 - d1 > 0.01 else ""))
        if d1 - d0 < worst[m][0]:
            worst[m] = (d1 - d0, f"{x['structure']} k{x['target_k']}")
    print(f"| {x['structure']} | {x['ref_k']} | {x['target_k']} | {float(y['dice_gt_box']):.2f} | " + " | ".join(cells) + " |")
for m in M:
    print(m, "mean %.3f -> %.3f" % (sum(float(r[f'dice_{m}']) for r in rb) / len(rb), sum(float(r[f'dice_{m}']) for r in ra) / len(ra)),
          "worst row change %+.3f at %s" % worst[m])
