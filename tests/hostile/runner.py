"""Run ``medseg info`` on many inputs, each in its own forked process, and report how each ended.

    python -m tests.hostile.runner CASES.json RESULTS.json [--timeout S]

``CASES.json`` is a list of ``{"name": ..., "argv": [...]}``. This process imports everything
``medseg`` imports once (``app.cli.build_parser``), then forks one child per case, which runs
``app.cli.main(argv)`` with stdout/stderr sent to files and exits with its return code. The
parent waits with ``os.wait4``, which gives that child's own resource usage, so for each case we
get: exit code or signal, a timeout (hang, child killed), the child's peak RSS, and its stderr.

Why forked children: a fresh ``medseg`` process spends seconds importing torch and MONAI; a fork
starts warm in milliseconds, so ~150 cases run in well under a minute on 2 cores, and a crash or a
hang in native code still ends only that child. A child's peak RSS includes the pages it shares
with this parent (the imports), as a fresh ``medseg info`` process would; ``baseline_kb`` (a
child that exits at once) is reported so increments can be compared too.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _child(argv: list[str], out: str, err: str) -> None:
    code = 70
    try:
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        from app.cli import main

        code = main(argv) if argv else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # a traceback: exactly what the corpus test counts
        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(int(code) & 0xFF)


def run_case(argv: list[str], *, timeout: float, workdir: Path) -> dict:
    out, err = workdir / "stdout", workdir / "stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(argv, str(out), str(err))
    hang = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            done, status, usage = os.wait4(pid, 0)
            hang = True
            break
        time.sleep(0.005)
    return {
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) and not hang else None,
        "hang": hang,
        "maxrss_kb": usage.ru_maxrss,
        "seconds": round(time.monotonic() - t0, 3),
        "stdout": out.read_text("utf-8", "replace")[-4000:] if out.exists() else "",
        "stderr": err.read_text("utf-8", "replace")[-8000:] if err.exists() else "",
    }


def main() -> int:
    cases_file, results_file = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 60.0
    cases = json.loads(Path(cases_file).read_text())
    from app.cli import build_parser

    build_parser()  # import every command module, as `medseg` does before running one
    # Children start with the parent's objects in the permanent generation: their collections no longer
    # walk (and so copy, page by page) the imports' objects (a child that exits at once: ~0.19 -> ~0.13 s).
    gc.collect()
    gc.freeze()
    results = {}
    with tempfile.TemporaryDirectory(prefix="medseg-corpus-") as tmp:
        work = Path(tmp)
        results["__baseline__"] = run_case([], timeout=timeout, workdir=work)
        for case in cases:
            results[case["name"]] = run_case(case["argv"], timeout=timeout, workdir=work)
    Path(results_file).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
