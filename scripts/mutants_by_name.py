"""Run named mutants one at a time, each in a fork of one warm pytest process, and print each verdict.

For the mutants mutmut calls "no tests" or times out: code that runs only in processes the tests fork
(``data/read_worker.py``'s reader child: mutmut records which tests reach a function in the test
process only), or tests that bound a hang themselves but more loosely than mutmut's wall limit. It does
what mutmut's fork server does, without its bookkeeping: imports once, then per mutant a fork that sets
``MUTANT_UNDER_TEST`` and runs pytest (``-x``); exit 1 is killed, 0 survived, ``timeout`` past the limit.
Run it in ``.mutants/<module>/mutants`` after ``scripts/mutants.py MODULE`` made that folder (copy any test
changed since into its ``tests/``):

    cd .mutants/data__read_worker/mutants
    ../../../.venv/bin/python ../../../scripts/mutants_by_name.py names.txt 90 tests/data/test_read_worker.py

``names.txt``: one mutant name a line (``data.read_worker.x_reader_child__mutmut_41``). Prints
``NAME VERDICT SECONDS`` per mutant, then the counts. docs/testing.md has the runs made with it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter


def run_one(name: str, pytest_args: list[str], limit_s: float) -> str:
    import pytest

    pid = os.fork()
    if pid == 0:  # its own process group: a timeout kills what the tests forked too
        os.setpgid(0, 0)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        os.environ["MUTANT_UNDER_TEST"] = name
        code = pytest.main(["-p", "no:xdist", "-p", "no:cacheprovider", "-x", "-q", *pytest_args])
        os._exit(int(code))
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return {1: "killed", 0: "survived"}.get(code, f"exit {code}")
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    names = [line.strip() for line in open(argv[0]) if line.strip()]
    limit_s, pytest_args = float(argv[1]), argv[2:]
    import pytest

    os.environ["MUTANT_UNDER_TEST"] = "none"  # no mutant: the warm-up and the clean run below use the original
    saved, quiet = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    pytest.main(["-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--collect-only", *pytest_args])
    os.dup2(saved, 1)
    verdicts: Counter[str] = Counter()
    clean = run_one("none", pytest_args, limit_s)
    if clean != "survived":
        print(f"mutants_by_name: the tests fail without a mutant ({clean}); fix that first", file=sys.stderr)
        return 1
    for name in names:
        start = time.monotonic()
        verdict = run_one(name, pytest_args, limit_s)
        verdicts[verdict] += 1
        print(f"{name} {verdict} {time.monotonic() - start:.1f}", flush=True)
    print(", ".join(f"{n} {v}" for v, n in verdicts.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
