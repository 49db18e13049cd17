"""Per-test CPU accounting: this process's and its reaped children's user+sys seconds, and wall, per test."""
import json, os, resource, time
import pytest

_OUT = os.environ.get("CPUPROF_OUT", "/tmp/s26/cpu")


def _cpu():
    s = resource.getrusage(resource.RUSAGE_SELF); c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    s0, c0 = _cpu(); w0 = time.monotonic()
    yield
    s1, c1 = _cpu()
    os.makedirs(_OUT, exist_ok=True)
    with open(os.path.join(_OUT, f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"), "a") as f:
        f.write(json.dumps({"id": item.nodeid, "self": round(s1 - s0, 3), "children": round(c1 - c0, 3),
                            "wall": round(time.monotonic() - w0, 3)}) + "\n")
