"""Load test: N simulated browser tabs against a real ``medseg serve`` on loopback, for a bounded time.

The server is started as a child process (``medseg serve`` on a free port, a temporary state
folder, prefetch as configured). Each tab (a thread, ``scripts/page_client.Page``: Gradio's page
protocol over HTTP, as the browser's JavaScript speaks it) loads the page, opens a study (even
tabs: the bundled CT sample; odd tabs: uploads the Colin27 NIfTI through the file picker's upload
route), then repeats rounds until the time is up: two slices of its own, on each a box (two
clicks), a refining positive click and a new object, twice; then a NIfTI export, downloaded.

Checks afterwards:
- cross-talk: every downloaded export is compared, bit for bit, with a replay of that tab's own
  actions up to that export, alone, in this process, through the same action layer
  (``app.controller``); any difference, or an empty export, is cross-talk or a lost edit;
- errors: any failed event, warning toast or '⚠' status line;
- memory: the server's RSS sampled every second (start, peak, end, slope over the second half);
- click latency p50/p95 (from posting the click to its answer, queueing included), with the
  machine's load average alongside.

    .venv/bin/python scripts/load_test.py --sessions 20 --seconds 240 --json load.json

Soak (the memory plateau of issue 23): ``--soak MINUTES`` runs 20 tabs (unless ``--sessions``) for
that long without the replay, prints the server's RSS once a minute as it goes, and reports the
per-minute series and its spread over the last 10 minutes (the target: within 10 %):

    .venv/bin/python scripts/load_test.py --soak 30 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.page_client import Page, ServerProcess  # noqa: E402

CT = "CT head (DICOM series, 12 slices)"
UPLOAD = ROOT / "samples" / "colin27" / "mr_t1_colin27_slabA_image.nii.gz"


def study_of(i: int) -> tuple:
    """Even tabs open the bundled CT; odd tabs upload a NIfTI (the two ways a study comes in)."""
    return ("open", CT) if i % 2 == 0 else ("upload", str(UPLOAD))


def round_plan(
    i: int, r: int, n_slices: int, shown: tuple[int, int], rng: random.Random, slices: int = 2
) -> list[tuple]:
    """One round of tab ``i``: its own ``slices`` slices, two boxes each refined by a click, then an export.

    Coordinates are display pixels inside the shown image (``shown`` = (height, width)).
    """
    h, w = shown
    actions: list[tuple] = []
    for k in (i % n_slices, (i + n_slices // 2) % n_slices)[:slices]:
        actions.append(("slice", k))
        for _ in range(2):
            x0, y0 = rng.uniform(0.2, 0.5) * w, rng.uniform(0.2, 0.5) * h
            x1, y1 = x0 + rng.uniform(0.15, 0.35) * w, y0 + rng.uniform(0.15, 0.35) * h
            actions += [("mode", "box"), ("click", x0, y0), ("click", x1, y1)]
            actions += [("mode", "point +"), ("click", (x0 + x1) / 2, (y0 + y1) / 2), ("new",)]
    actions.append(("export", r))
    return actions


def on_page(page: Page, action: tuple, out_dir: Path, i: int) -> None:
    kind = action[0]
    if kind == "open":
        page.open_sample(action[1])
    elif kind == "upload":
        page.upload([Path(action[1])])
    elif kind == "slice":
        page.set_slice(action[1])  # the page chains the slice's encode ("warm") after it
    elif kind == "mode":
        page.set_mode(action[1])
    elif kind == "click":
        page.click(action[1], action[2])
    elif kind == "new":
        page.new_object()
    elif kind == "export":
        page.export(out_dir / f"tab{i:02d}_round{action[1]:03d}.nii.gz")


def replay(actions: list[tuple], exports: Path, i: int, work: Path) -> list[str]:
    """Replay one tab's actions alone through ``app.controller``; compare each export with the server's."""
    from app import controller
    from app.controller import AppContext
    from app.interaction import ModelRunner, Prefetcher
    from app.session import SessionStore
    from data.readers import read_study

    runner = ModelRunner("cpu")
    ctx = AppContext(store=SessionStore(work / f"replay{i:02d}"), runner=runner, prefetcher=Prefetcher(runner, 0))
    sid = controller.start(ctx, None).session_id
    problems = []
    for action in actions:
        kind = action[0]
        if kind == "open":
            controller.open_sample(ctx, sid, action[1])
        elif kind == "upload":
            controller.open_upload(ctx, sid, [action[1]])
        elif kind == "slice":
            controller.set_slice(ctx, sid, action[1])
        elif kind == "mode":
            s = ctx.store.get(sid).view
            controller.set_display(ctx, sid, s.window, s.level, s.width, s.opacity, action[1])
        elif kind == "click":
            controller.click(ctx, sid, action[1], action[2])
        elif kind == "new":
            controller.new_object(ctx, sid)
        elif kind == "export":
            path, _ = controller.export(ctx, sid, "nifti")
            alone = read_study(path).array
            served = read_study(exports / f"tab{i:02d}_round{action[1]:03d}.nii.gz").array
            if alone.shape != served.shape or not np.array_equal(alone, served):
                diff = int(np.count_nonzero(alone != served)) if alone.shape == served.shape else -1
                problems.append(f"tab {i} round {action[1]}: export differs from its replay in {diff} voxels")
            elif not served.any():
                problems.append(f"tab {i} round {action[1]}: empty export (the check would be vacuous)")
    return problems


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    t = np.array([s[0] for s in samples]) / 60.0
    m = np.array([s[1] for s in samples])
    return float(np.polyfit(t, m, 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=None, help="concurrent simulated tabs (default 4; 20 with --soak)")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop starting new rounds after this long")
    ap.add_argument("--slices", type=int, default=2, choices=(1, 2), help="slices a tab works on per round")
    ap.add_argument("--think", type=float, default=0.3, help="mean pause between a tab's actions (s), random")
    ap.add_argument("--prefetch", type=int, default=1, help="the server's --prefetch")
    ap.add_argument("--malloc-arenas", type=int, default=None, help="the server's --malloc-arenas (0: glibc default)")
    ap.add_argument("--no-replay", action="store_true", help="skip the cross-talk replay (memory/latency runs only)")
    ap.add_argument("--soak", type=float, metavar="MINUTES",
                    help="memory soak: run MINUTES (20 tabs unless --sessions, no replay), RSS reported per minute")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the server's --device")
    ap.add_argument("--batch-window-ms", type=float, default=None,
                    help="the server's --batch-window-ms (0: one encode at a time; default: the server's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (state, exports, server log)")
    args = ap.parse_args(argv)
    if args.soak is not None:
        if args.soak <= 0:
            ap.error("--soak must be > 0 minutes")
        args.seconds, args.no_replay = args.soak * 60.0, True
        args.sessions = 20 if args.sessions is None else args.sessions
    args.sessions = 4 if args.sessions is None else args.sessions
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be >= 1 and --seconds > 0")

    if args.soak is not None:  # the server logs what its bounded caches hold, once a minute
        os.environ.setdefault("MEDSEG_MEMORY_LOG_S", "60")
    work = Path(tempfile.mkdtemp(prefix="medseg-load-"))
    exports = work / "exports"
    import torch  # the replay's model; the server gets the same thread count, so results match bit for bit

    server = ServerProcess(work / "state", prefetch=args.prefetch, malloc_arenas=args.malloc_arenas,
                           threads=torch.get_num_threads(), log_path=work / "serve.log",
                           extra_args=("--device", args.device, *(() if args.batch_window_ms is None else
                                                                  ("--batch-window-ms", str(args.batch_window_ms)))))
    t_boot = time.perf_counter()
    server.start()
    boot_s = time.perf_counter() - t_boot
    # one warm-up tab: the first encode pays one-off costs; RSS is counted from a warm server
    warmup = Page(server.url)
    warmup.load()
    warmup.open_sample(CT)
    warmup.close()

    done: dict[int, list[tuple]] = {i: [] for i in range(args.sessions)}
    clicks: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    samples: list[tuple[float, float, float]] = []  # (t, rss MiB, 1-min load average)
    stop = threading.Event()
    t_start = time.perf_counter()
    t_start_wall = time.time()

    def monitor() -> None:
        minute = 0
        while True:
            try:
                samples.append((time.perf_counter() - t_start, server.rss_mib(), os.getloadavg()[0]))
            except OSError:
                return
            if args.soak is not None and samples[-1][0] >= 60 * (minute + 1):
                minute += 1
                last = [m for t, m, _ in samples if t >= 60 * (minute - 1)]
                with lock:
                    n_err, n_clicks = len(errors), len(clicks)
                print(f"minute {minute}: server RSS {last[-1]:.0f} MiB (min {min(last):.0f}, max {max(last):.0f}), "
                      f"load {samples[-1][2]:.1f}, clicks so far {n_clicks}, errors {n_err}", flush=True)
            if stop.wait(1.0):
                return

    def tab(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        page = Page(server.url)

        def act(action: tuple) -> bool:
            if args.soak is not None and time.perf_counter() - t_start >= args.seconds:
                return False  # a soak ends on time, mid-round (memory is its point, not whole rounds)
            time.sleep(rng.expovariate(1 / args.think) if args.think > 0 else 0)
            t0 = time.perf_counter()
            try:
                on_page(page, action, exports, i)
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(f"tab {i} {action[:2]}: {type(e).__name__}: {e}"[:300])
                return False
            dt = time.perf_counter() - t0
            done[i].append(action)
            if action[0] == "click":
                with lock:
                    clicks.append(dt)
            return True

        try:
            page.load()
            if not act(study_of(i)):
                return
            shown = np.asarray(_image_hw(page))
            n_slices = int(page.last["slice_max"]) + 1
            r = 0
            while r == 0 or time.perf_counter() - t_start < args.seconds:
                for action in round_plan(i, r, n_slices, tuple(shown), rng, args.slices):
                    act(action)
                r += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"tab {i}: {type(e).__name__}: {e}"[:300])
        finally:
            page.close()

    threading.Thread(target=monitor, daemon=True).start()
    threads = [threading.Thread(target=tab, args=(i,)) for i in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    stop.set()
    rss_end = server.rss_mib()
    server.stop()

    t_replay = time.perf_counter()
    mismatches: list[str] = []
    for i, actions in done.items():
        if actions and not args.no_replay:
            mismatches += replay(actions, exports, i, work)
    replay_s = time.perf_counter() - t_replay

    half = [(t, m) for t, m, _ in samples if t >= elapsed / 2]
    loads = [la for *_, la in samples]
    figures = {
        "sessions": args.sessions,
        "server_malloc_arenas": args.malloc_arenas if args.malloc_arenas is not None else 2,
        "seconds": round(elapsed, 1),
        "server_start_s": round(boot_s, 1),
        "actions": sum(len(v) for v in done.values()),
        "exports_checked": sum(a[0] == "export" for v in done.values() for a in v),
        "rounds_per_session": [sum(a[0] == "export" for a in done[i]) for i in done],
        "clicks": len(clicks),
        "clicks_per_s": round(len(clicks) / elapsed, 2) if elapsed else None,
        "device": args.device,
        "batch_window_ms": args.batch_window_ms,
        "click_p50_ms": round(1000 * statistics.median(clicks), 1) if clicks else None,
        "click_p95_ms": round(1000 * float(np.percentile(clicks, 95)), 1) if clicks else None,
        "click_max_ms": round(1000 * max(clicks), 1) if clicks else None,
        "errors": errors,
        "cross_talk": mismatches,
        "rss_start_mib": round(samples[0][1]) if samples else None,
        "rss_peak_mib": round(max(m for _, m, _ in samples)) if samples else None,
        "rss_end_mib": round(rss_end),
        "rss_second_half_min_max_mib": [round(min(m for _, m in half)), round(max(m for _, m in half))] if half else None,
        "rss_slope_second_half_mib_per_min": round(slope_mib_per_min(half), 1) if half else None,
        "rss_series_mib": [[round(t), round(m)] for t, m, _ in samples[:: max(1, len(samples) // 30)]],
        "load_average_1min_min_mean_max": [round(min(loads), 1), round(float(np.mean(loads)), 1),
                                           round(max(loads), 1)] if loads else None,
        "replay_s": None if args.no_replay else round(replay_s, 1),
        **(soak_figures([(t, m) for t, m, _ in samples]) if args.soak is not None else {}),
        **(cache_figures(memory_reports(work / "serve.log"), samples, t_start_wall) if args.soak is not None else {}),
        "cpus": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "rss_series_mib"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if args.keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not errors and not mismatches else 1


def rss_per_minute(samples: list[tuple[float, float]]) -> list[float]:
    """The mean RSS (MiB) of each whole minute of the run."""
    out = []
    for minute in range(int(max((t for t, _ in samples), default=0) // 60)):
        inside = [m for t, m in samples if 60 * minute <= t < 60 * (minute + 1)]
        if inside:
            out.append(float(np.mean(inside)))
    return out


def soak_figures(samples: list[tuple[float, float]], window_min: int = 10) -> dict:
    """Per-minute RSS and its spread over the last ``window_min`` minutes (all of them if fewer)."""
    per_minute = rss_per_minute(samples)
    last = per_minute[-window_min:]
    spread = (max(last) - min(last)) / min(last) * 100 if last else None
    return {
        "rss_per_minute_mib": [round(m) for m in per_minute],
        "plateau_window_min": len(last),
        "plateau_spread_pct": None if spread is None else round(spread, 1),
        "plateau_flat_within_10pct": None if spread is None else spread <= 10.0,
        "plateau_slope_mib_per_min": round(float(np.polyfit(np.arange(len(last)), last, 1)[0]), 1)
        if len(last) >= 2 else None,
    }


def memory_reports(log: Path) -> list[dict]:
    """The server's ``medseg memory:`` lines (app/memory_report.py), in order."""
    from app.memory_report import PREFIX

    out = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        if line.startswith(PREFIX):
            try:
                out.append(json.loads(line[len(PREFIX):]))
            except ValueError:
                pass
    return out


def cache_figures(reports: list[dict], samples: list[tuple[float, float, float]], t0_wall: float,
                  window_min: int = 10) -> dict:
    """The server's cache reports, and per minute the lowest RSS minus what the bounded caches hold.

    Why the lowest: RSS swings by hundreds of MiB within a minute (the encoder's activations come
    and go); the floor is what stays. If that floor minus the caches is flat while RSS rises, the
    rise is the caches filling towards their bounds, not a leak.
    """
    for r in reports:
        r["minute"] = round((r.get("unix_time", t0_wall) - t0_wall) / 60.0, 2)
    residual = []
    for minute in range(int(max((t for t, *_ in samples), default=0) // 60)):
        inside = [m for t, m, _ in samples if 60 * minute <= t < 60 * (minute + 1)]
        held = [r for r in reports if minute <= r["minute"] < minute + 1]
        if inside and held:
            caches = held[-1]["embeddings_mib"] + held[-1]["undo_mib"]
            residual.append([minute + 1, round(min(inside)), round(caches), round(min(inside) - caches)])
    last = [r[3] for r in residual[-window_min:]]
    spread = (max(last) - min(last)) / min(last) * 100 if last else None
    return {"server_memory_reports": reports,
            "rss_floor_caches_rest_per_minute_mib": residual,
            "rest_spread_last_window_pct": None if spread is None else round(spread, 1)}


def _image_hw(page: Page) -> tuple[int, int]:
    """(height, width) of the shown plane at the old panel's display size (the clicks' coordinates)."""
    return tuple(page.last["image_hw"])


if __name__ == "__main__":
    sys.exit(main())
