"""Per-worker busy wall from a pytest -v --durations=0 xdist log."""
import re, sys, collections
log = open(sys.argv[1], errors="replace").read()
worker = {}
for m in re.finditer(r"\[(gw\d+)\] \[\s*\d+%\] (PASSED|FAILED|SKIPPED|ERROR) (\S+)", log):
    worker[m.group(3)] = m.group(1)
dur = collections.defaultdict(float)
for m in re.finditer(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", log, re.M):
    dur[m.group(3)] += float(m.group(1))
per_w = collections.defaultdict(float); per_f = collections.defaultdict(float); fw = {}
for t, d in dur.items():
    f = t.split("::")[0]
    per_f[f] += d
    w = worker.get(t)
    if w: per_w[w] += d; fw[f] = w
print("workers:", {k: round(v) for k, v in sorted(per_w.items())}, "total", round(sum(dur.values())))
for f, d in sorted(per_f.items(), key=lambda x: -x[1])[:25]:
    print(f"{d:8.1f} {fw.get(f,'?')} {f}")
