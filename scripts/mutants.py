"""`make mutants`: mutation testing with mutmut, one module at a time with that module's fast tests.

Each module runs in its own folder ``.mutants/<module>/`` (git-ignored): the packages and tests are
linked there with a ``pyproject.toml`` whose ``[tool.mutmut]`` mutates that one file and selects its
tests, so the runs stay independent and small enough for 2 cores. mutmut copies the code into
``mutants/`` there and never touches the checkout. Prints one line per module (killed / survived /
other / kill rate over the non-equivalent mutants) and writes ``.mutants/results.json``; the
survivors are listed with ``cd .mutants/<module> && mutmut show NAME``.

    .venv/bin/python scripts/mutants.py                      # every module below (hours on 2 cores)
    .venv/bin/python scripts/mutants.py data/windowing.py    # one module

Not in CI: too slow for 2 cores. docs/testing.md has the last table and the equivalent mutants.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"
PACKAGES = ("app", "data", "evaluation", "models", "adapters")
# module -> the tests that exercise it and run in seconds to a minute (issue 26's scope)
MODULES: dict[str, list[str]] = {
    "data/windowing.py": ["tests/data/test_windowing.py"],
    "data/volume.py": ["tests/data/test_geometry.py"],
    "data/writers.py": ["tests/data/test_geometry.py"],
    "data/readers.py": ["tests/data/test_geometry.py", "tests/data/test_fuzz_readers.py", "tests/data/test_limits.py"],
    "data/deidentify.py": ["tests/data/test_deidentify.py"],
    "data/dicom_seg.py": ["tests/data/test_dicom_seg.py"],
    "data/export.py": ["tests/data/test_export.py"],
    "evaluation/metrics.py": ["tests/evaluation/test_eval_metrics.py"],
    "evaluation/manifest.py": ["tests/evaluation/test_eval_manifest.py"],
    "evaluation/clicks.py": ["tests/evaluation/test_eval_clicks.py"],
    "evaluation/fairness.py": ["tests/evaluation/test_eval_fairness.py"],
    "evaluation/report.py": ["tests/evaluation/test_eval_fairness.py", "tests/evaluation/test_eval_runner.py"],
    "evaluation/runner.py": ["tests/evaluation/test_eval_runner.py"],
    "evaluation/distributed.py": ["tests/evaluation/test_batch.py"],
    "app/session.py": ["tests/app/test_session.py"],
    "app/uploads.py": ["tests/app/test_ui_uploads.py"],
    "app/interaction.py": ["tests/app/test_ui_interaction.py"],
    "models/segmenter.py": ["tests/models/test_litemedsam_parity.py", "tests/runtime/test_fast_paths.py"],
}
# Mutants that cannot change behaviour, excluded from the kill rate (key -> why); docs/testing.md lists them.
EQUIVALENT: dict[str, str] = {
    f"data.windowing.x_slice_to_rgb__mutmut_{n}": "astype(np.uint8, copy=...) on an RGB slice: copy or not, same values"
    for n in (4, 6, 9)
}
EQUIVALENT |= {
    "app.uploads.x__import__mutmut_46": "max(room_bytes, 1) for max(room_bytes, 0): 1 byte of room prints as 0 MiB",
    **{f"app.uploads.x__import__mutmut_{n}": "the folder name of loose DICOM files: internal, the user sees 'N files'"
       for n in (120, 121)},
    **{f"app.uploads.x__import__mutmut_{n}": "series.mkdir(exist_ok=None/False): the upload folder is new (mkdtemp)"
       for n in (122, 123)},
    "app.uploads.x__safe_name__mutmut_18": "'XX._-XX' allowed in names: X is alphanumeric, allowed anyway",
}
_M = "evaluation.manifest.x"
EQUIVALENT |= {
    **{f"{_M}__where__mutmut_{n}": "the no-column branch of _where: every caller names a column" for n in (3, 4)},
    f"{_M}_read_manifest__mutmut_13": "encoding 'UTF-8-SIG': codec names are case-insensitive",
    f"{_M}__parse_row__mutmut_48": "label_values '' for None: both falsy, only read as `if spec.label_values`",
    **{f"{_M}__parse_row__mutmut_{n}": "norm_lo/norm_hi default None for '': both falsy, used only when both are set"
       for n in (100, 102, 107, 109)},
    f"{_M}__parse_row__mutmut_113": "window '' for None: both falsy, read as `if spec.window` / `spec.window or ()`",
    **{f"{_M}__parse_row__mutmut_{n}": "attribute default: every attribute is a header column, always a row key "
       "(csv fills short rows)" for n in (206, 208, 209)},
    **{f"{_M}ǁCaseLoaderǁload__mutmut_{n}": "the manifest Window's name: never shown nor kept in LoadedCase"
       for n in (50, 52, 53, 54)},
    f"{_M}ǁCaseLoaderǁload__mutmut_72": "labels[..., :4] on an RGB label: the reader gives 3 channels, same as :3",
    f"{_M}ǁCaseLoaderǁload__mutmut_83": "labels[..., 1] for [..., 0]: the line above refuses unequal channels",
}
_S = "app.session.xǁ"
EQUIVALENT |= {
    f"{_S}Sessionǁstart_study__mutmut_17": "`or` for `and` before stashing: study_path and labels are set together",
    f"{_S}Sessionǁstart_study__mutmut_51": "shape[:4] for shape[:3]: Plane.count reads one of the first three axes",
    **{f"{_S}Sessionǁ_stash__mutmut_{n}": "a kept study's study_path/series_uid/study_name key: written to "
       "state.json for the record, never read back" for n in range(3, 9)},
    f"{_S}Sessionǁclear_label__mutmut_24": "Edit(..., prompt_after) left out: its default is the same None",
    **{f"{_S}SessionStoreǁcreate__mutmut_{n}": "mkdir exist_ok=None or left out: the same as False" for n in (13, 15)},
    **{f"{_S}SessionStoreǁ{f}__mutmut_{n}": "rmtree(ignore_errors=False/None) of a folder this process owns: differs "
       "only if another process deletes it at the same moment" for f, n in
       (("open", 7), ("open", 9), ("open", 11), ("cleanup", 25), ("cleanup", 27), ("cleanup", 28))},
    f"{_S}SessionStoreǁsave__mutmut_3": "pop('dirty', None) for pop('dirty', False): both falsy",
    f"{_S}SessionStoreǁsave__mutmut_8": "pop('dirty', True): rewrites an unchanged kept-labels file, same bytes",
    **{f"{_S}SessionStoreǁsave__mutmut_{n}": "the studies/ mkdir: atomic_output creates the parent folder itself"
       for n in (11, 12)},
    **{f"{_S}SessionStoreǁsave__mutmut_{n}": "json.dumps indent: the same JSON, laid out differently"
       for n in (52, 54, 55)},
    f"{_S}SessionStoreǁ_load__mutmut_120": "directory / study for a non-@session path: saved study paths are absolute "
    "(samples under PROJECT_ROOT, uploads under @session/), and pathlib joins an absolute path as itself",
    f"{_S}SessionStoreǁ_load__mutmut_135": "read_untrusted scratch None: the hand-over .npy goes to the system temp "
    "folder, deleted before the read returns",
}
KILLED = {1, 3}
SURVIVED = {0}


def shared_dir() -> Path:
    for candidate in (os.environ.get("MEDSEG_SHARED"), ROOT.parent / "shared", Path("/work/shared")):
        if candidate and Path(candidate, "data").is_dir():
            return Path(candidate).resolve()
    raise SystemExit("mutants: no shared data folder (set MEDSEG_SHARED)")


def stage(module: str, tests: list[str]) -> Path:
    """``.mutants/<module>/``: links to the code, tests and samples, and a pyproject for this module."""
    folder = WORK / module.replace("/", "__").removesuffix(".py")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, "tests", "samples", "scripts"):
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        f"source_paths = {json.dumps(list(PACKAGES))}\n"
        f"only_mutate = {json.dumps([module])}\n"
        "also_copy = [\"samples\", \"scripts\"]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        "pytest_add_cli_args = [\"-p\", \"no:xdist\", \"-p\", \"no:cacheprovider\", \"-x\", \"-q\"]\n"
        "timeout_multiplier = 5.0\n"
    )
    (folder / "pyproject.toml").write_text(config)
    return folder


def tally(folder: Path, module: str) -> dict:
    meta = folder / "mutants" / f"{module}.meta"
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}
    equivalent = sorted(k for k in codes if k in EQUIVALENT)
    rest = {k: v for k, v in codes.items() if k not in EQUIVALENT}
    killed = sorted(k for k, v in rest.items() if v in KILLED)
    survived = sorted(k for k, v in rest.items() if v in SURVIVED)
    other = sorted(k for k, v in rest.items() if v not in KILLED | SURVIVED)
    checked = len(killed) + len(survived)
    return {
        "module": module, "mutants": len(codes), "equivalent": equivalent, "killed": len(killed),
        "survived": survived, "other": {k: rest[k] for k in other},
        "kill_rate": round(len(killed) / checked, 3) if checked else None,
    }


def run(module: str) -> dict:
    folder = stage(module, MODULES[module])
    # mutmut 3 keeps a verdict until the mutated function's code changes: a test added since the last
    # run is never tried on a mutant it already "survived". Start from scratch so the table is honest.
    shutil.rmtree(folder / "mutants", ignore_errors=True)
    env = {**os.environ, "MEDSEG_WEIGHTS": str((ROOT / "weights").resolve()), "MEDSEG_SHARED": str(shared_dir()),
           "GRADIO_ANALYTICS_ENABLED": "False", "MEDSEG_TEST_THREADS": "1", "PYTHONPATH": ""}
    mutmut = Path(sys.executable).with_name("mutmut")
    children = os.environ.get("MUTANTS_CHILDREN", "2")
    with open(folder / "mutmut.log", "w") as log:  # mutmut's progress spinner: kept out of the terminal
        subprocess.run([str(mutmut), "run", "--max-children", children], cwd=folder, env=env, check=False,
                       stdout=log, stderr=subprocess.STDOUT)
    return tally(folder, module)


def main(argv: list[str]) -> int:
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"mutants: unknown module {unknown[0]!r}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        print("mutants: mutmut is not installed in this venv (pip install mutmut==3.8.1)", file=sys.stderr)
        return 2
    results_file = WORK / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for module in modules:
        r = run(module)
        results[module] = r
        WORK.mkdir(exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1))
        rate = "n/a" if r["kill_rate"] is None else f"{100 * r['kill_rate']:.1f} %"
        print(f"{module}: {r['mutants']} mutants, {r['killed']} killed, {len(r['survived'])} survived, "
              f"{len(r['other'])} other (no tests/timeout), {len(r['equivalent'])} equivalent; kill rate {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
