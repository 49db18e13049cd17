"""Memory and time ``data.dicomweb.fetch_series`` spends on a hostile PACS's 256 MiB instance.

The PACS is the tests' scripted one (``tests/data/test_dicomweb_client.py``), sending one instance whose
metadata announced 2 x 2 pixels: with an honest Content-Length, chunked, close-delimited, a lying
Content-Length (1000, then chunked) and gzip (~250 KiB inflating to 256 MiB), under a 1 MiB series
limit, and chunked under the default 2 GiB. Each case runs in a forked child (``os.wait4`` gives its
peak RSS; growth = that minus a child that fetches nothing; the server stays in the parent) and again
under tracemalloc in this process (the peak bytes Python held). One line a case; run it in a tree
before and after a change to compare.

``--honest N``: what the cap costs an honest PACS instead: one 64 MiB instance (announced as such,
with its Content-Length) fetched N times each way, alternating, in this process: with the capped read
and with dicomweb-client's plain one (``callback`` left out); median process CPU seconds and wall
seconds, and the peak bytes Python held (tracemalloc, one more fetch each way).

    .venv/bin/python scripts/bench_pacs_bounds.py
    .venv/bin/python scripts/bench_pacs_bounds.py --honest 7
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the tree it is run in (before or after a change)
import pydicom  # noqa: E402

from data.dicomweb import DicomWebError, fetch_series  # noqa: E402
from tests.data import test_dicomweb_client as t  # noqa: E402

CASES = [("declared", 2**20), ("chunked", 2**20), ("close", 2**20), ("lying", 2**20), ("gzip", 2**20),
         ("chunked", 2048 * 2**20)]


def serve(how):
    pacs = t.FakePacs()
    threading.Thread(target=pacs.server.serve_forever, args=(0.05,), daemon=True).start()
    data = t._ct_bytes()[0]
    url = t._one_instance(pacs, data)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    if how:
        pacs.streams[f"/studies/{t.STUDY}/series/{t.SER}/instances/{sop}"] = t._send_huge(how)
    return pacs, url


def fetch(url, max_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fetch_series(url, os.path.join(tmp, "s"), max_voxels=2**30, max_bytes=max_bytes)
            return "opened (no error)"
        except DicomWebError as e:
            return str(e)


def child_rss(how, max_bytes):
    pacs, url = serve(how)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        t0 = time.monotonic()
        msg = fetch(url, max_bytes) if how else "baseline"
        os.write(w, f"{time.monotonic() - t0:.2f}|{msg}".encode()[:4000])
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    _, _, ru = os.wait4(pid, 0)
    pacs.server.shutdown()
    secs, msg = out.decode().split("|", 1)
    return ru.ru_maxrss * 1024, float(secs), msg


def honest(repeat: int) -> None:
    """An honest 64 MiB instance, alternating the capped read (this tree) with dicomweb-client's own."""
    import statistics

    import data.dicomweb as dw

    pixels = 64 * 2**20
    pacs = t.FakePacs()
    threading.Thread(target=pacs.server.serve_forever, args=(0.05,), daemon=True).start()
    data = t._ct_bytes()[0]
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    url = t._serve_series(pacs, [data], [t.image_meta(sop, rows=4096, cols=8192)])  # 64 MiB at 16 bits
    pacs.streams[f"/studies/{t.STUDY}/series/{t.SER}/instances/{sop}"] = t._send_huge("declared", pixels)
    capped_client = dw.client

    def uncapped_client(base, timeout=dw.DEFAULT_TIMEOUT_S, limit=None):
        from dicomweb_client import DICOMwebClient

        c = DICOMwebClient(dw.check_base_url(base), headers=dw._headers(), timeout=float(timeout))
        c.set_http_retry_params(retry=False)
        return c

    def once(way: str) -> tuple[float, float]:
        dw.client = capped_client if way == "capped" else uncapped_client
        with tempfile.TemporaryDirectory() as tmp:
            c0, w0 = time.process_time(), time.monotonic()
            folder = fetch_series(url, Path(tmp) / "s", max_voxels=2**30, max_bytes=2**31)
            c1, w1 = time.process_time(), time.monotonic()
            assert (folder / "00000.dcm").stat().st_size > pixels
        return c1 - c0, w1 - w0

    times = {"capped": [], "plain": []}
    for _ in range(repeat):
        for way in ("plain", "capped"):
            times[way].append(once(way))
    print(f"honest 64 MiB instance, {repeat} fetches each way alternating; load {os.getloadavg()[0]:.1f}")
    for way in ("plain", "capped"):
        tracemalloc.start()
        once(way)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        cpus = [c for c, _ in times[way]]
        wall = statistics.median(w for _, w in times[way])
        print(f"{way:7}: CPU {statistics.median(cpus):.3f} s (median; {min(cpus):.3f}-{max(cpus):.3f}), "
              f"wall {wall:.3f} s, tracemalloc peak {peak / 2**20:.0f} MiB")
    dw.client = capped_client
    pacs.server.shutdown()


if "--honest" in sys.argv:
    honest(int(sys.argv[sys.argv.index("--honest") + 1]))
    sys.exit(0)
base = child_rss(None, 0)[0]
print(f"baseline child peak RSS {base / 2**20:.0f} MiB; load {os.getloadavg()[0]:.1f}")
rows = [child_rss(how, max_bytes) for how, max_bytes in CASES]  # all children first: the parent stays small
for (how, max_bytes), (rss, secs, msg) in zip(CASES, rows):
    pacs, url = serve(how)
    tracemalloc.start()
    fetch(url, max_bytes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    pacs.server.shutdown()
    print(f"{how:8} limit {max_bytes / 2**20:6.0f} MiB | peak RSS growth {(rss - base) / 2**20:7.0f} MiB | "
          f"tracemalloc peak {peak / 2**20:7.1f} MiB | {secs:5.2f} s | {msg.split(': ', 1)[-1][:170]}")
