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
    "data/volume.py": ["tests/data/test_geometry.py", "tests/data/test_volume.py"],
    "data/writers.py": ["tests/data/test_geometry.py", "tests/data/test_writers.py"],
    "data/readers.py": ["tests/data/test_geometry.py", "tests/data/test_fuzz_readers.py", "tests/data/test_readers.py"],
    "data/dicom_pixels.py": ["tests/data/test_readers.py", "tests/data/test_pixel_description.py",
                             "tests/data/test_dicom_scan.py"],
    "data/study_errors.py": ["tests/data/test_readers.py", "tests/data/test_limits.py"],
    "data/pictures.py": ["tests/data/test_readers.py", "tests/data/test_exif_orientation.py",
                         "tests/data/test_fuzz_readers.py"],
    "data/deidentify.py": ["tests/data/test_deidentify.py",  # less the CLI run of the real model (40 s a mutant)
                           "--deselect", "tests/data/test_deidentify.py::test_cli_segment_deidentify_flag"],
    "data/dicom_seg.py": ["tests/data/test_dicom_seg.py"],
    "data/export.py": ["tests/data/test_export.py"],
    # data/ readers (branch mutdata): the hostile corpus (tests/data/test_hostile_corpus.py, 35 s to build) is left out
    "data/series_geometry.py": ["tests/data/test_geometry.py", "tests/data/test_series_geometry.py",
                                "tests/data/test_readers.py"],
    "data/dicom_scan.py": ["tests/data/test_dicom_scan.py"],
    "data/nifti_check.py": ["tests/data/test_nifti_check.py"],
    "data/limits.py": ["tests/data/test_limits.py", "tests/data/test_dicom_scan.py", "tests/data/test_nifti_check.py",
                       "--deselect", "tests/data/test_limits.py::"
                       "test_served_paths_are_the_configured_roots_and_never_the_session_folders"],
    "data/untrusted.py": ["tests/data/test_untrusted.py", "tests/data/test_links.py",  # less the server (a child
                          "--deselect",  # process outside mutmut's folder: it cannot find the mutated code)
                          "tests/data/test_links.py::test_a_server_keeps_refusing_links_that_leave_their_folder"],
    "data/parallel.py": ["tests/data/test_parallel.py"],
    # the supervisor called in the test process (it forks the reader child as the server does); the reader child's
    # mutants run in that fork, where mutmut records no coverage: they are "no tests" unless run by name (docs)
    # serve (the accept loop) and warm_up run in the test process too (test_read_worker_serve.py)
    "data/read_worker.py": ["tests/data/test_read_worker.py", "tests/data/test_read_worker_serve.py"],
    # the caller's side without the fork server, and ReadServer against a real worker and a misbehaving fake one
    # (test_read_server.py: start, ask, restart, stop); test_isolated_read.py's crashing readers (10-20 s a mutant)
    # are left out
    "data/isolated_read.py": ["tests/data/test_isolated_read_replies.py", "tests/data/test_read_server.py"],
    # a scripted PACS in the test process (test_dicomweb.py's real Orthanc: 3 s a run, and a mutant that times out
    # leaves its Orthanc behind)
    "data/dicomweb.py": ["tests/data/test_dicomweb_client.py"],
    "evaluation/metrics.py": ["tests/evaluation/test_eval_metrics.py"],
    "evaluation/manifest.py": ["tests/evaluation/test_eval_manifest.py"],
    "evaluation/clicks.py": ["tests/evaluation/test_eval_clicks.py"],
    "evaluation/fairness.py": ["tests/evaluation/test_eval_fairness.py"],
    "evaluation/report.py": ["tests/evaluation/test_eval_report.py"],  # a hand-made run (test_eval_runner: the CLI)
    "evaluation/runner.py": ["tests/evaluation/test_eval_runner_steps.py"],  # a stand-in model (test_eval_runner: the CLI)
    # the driver on a stand-in Ray and a stand-in model (test_batch_steps.py), and test_batch.py less its five tests
    # that start Ray with the real model (minutes a run; the mutated workers would run in Ray's own processes)
    "evaluation/distributed.py": ["tests/evaluation/test_batch_steps.py", "tests/evaluation/test_batch.py", *(
        x for t in ("two_workers_give_the_per_case_csv_of_eval", "saved_masks_are_the_final_masks",
                    "a_killed_worker_is_restarted_and_nothing_is_lost", "resume_runs_only_the_unfinished_cases",
                    "resume_with_other_settings_is_refused")
        for x in ("--deselect", f"tests/evaluation/test_batch.py::test_{t}"))],
    "app/session.py": ["tests/app/test_session.py", "tests/app/test_session_undo_bound.py"],
    "app/uploads.py": ["tests/app/test_ui_uploads.py"],
    "app/interaction.py": ["tests/app/test_interaction_prompts.py"],  # one warm embedding (test_ui_interaction: 77 s)
    "models/segmenter.py": ["tests/models/test_segmenter_template.py"],  # one warm embedding (fast_paths: 9 min)
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
# data/ (issue 26, branch mut2): equivalent mutants of deidentify, dicom_seg, writers and volume
EQUIVALENT |= {
    **{f"data.deidentify.x__apply__mutmut_{n}": "Z on a sequence set to None, not Sequence(): pydicom stores None "
       "on an SQ element as an empty Sequence" for n in (22, 23, 26, 27)},
    **{f"data.deidentify.x_patient_data_note__mutmut_{n}": "dcmread's stop_before_pixels / specific_tags dropped or "
       "flipped: it reads more of the file, the same attributes answer" for n in (3, 4, 6, 7, 8)},
    **{f"data.deidentify.x_patient_data_note__mutmut_{n}": "getattr default for PatientIdentityRemoved made None or "
       "'XXXX': an absent attribute is not 'YES' either way" for n in (18, 25)},
    "data.deidentify.x_patient_data_note__mutmut_34": "getattr(ds, k, None) or '': an absent field is '' either way",
    "data.deidentify.x_deidentifier__mutmut_5": "getattr(args, 'deidentify', None): an absent flag is falsy either way",
}
_SEG = "data.dicom_seg.x_"
EQUIVALENT |= {
    **{f"{_SEG}_own_grid__mutmut_{n}": "get_volume's dtype dropped: _smallest_uint recasts the segment numbers"
       for n in (3, 5)},
    **{f"{_SEG}_own_grid__mutmut_{n}": "np.asarray(affine, dtype=float) without the dtype: highdicom's affine is "
       "float64 already" for n in (10, 12)},
    f"{_SEG}medseg_version__mutmut_3": "importlib.metadata.version('MEDSEG'): distribution names are matched "
                                       "case-insensitively",
    f"{_SEG}_own_grid__mutmut_15": "affine[:3, :4] then columns [2, 1, 0]: the same three columns",
    **{f"{_SEG}_own_grid__mutmut_{n}": "the 4-D channel branch: highdicom 0.28's get_volume(combine_segments=True) "
       "returns (slices, rows, columns), never a channel axis" for n in (34, 35, 36)},
    f"{_SEG}_own_grid__mutmut_48": "handedness test '< 0' made '<= 0': the triple product of orthonormal axes is "
                                   "+-1, never 0",
    f"{_SEG}_own_grid__mutmut_49": "handedness test '< 0' made '< 1': highdicom volumes are right-handed in (slice, "
                                   "row, column), so the (i, j, k) product is always -1",
    **{f"{_SEG}_own_grid__mutmut_{n}": "FrameOfReferenceUID default: a SEG without one is refused by get_volume "
       "before this line" for n in (69, 72, 76)},
    f"{_SEG}_own_grid__mutmut_95": "float(d) - 0.0 instead of + 0.0: only the sign of a zero changes, -0.0 == 0.0",
    f"{_SEG}_own_grid__mutmut_100": "reshape(-2): numpy takes any negative size as 'infer', like -1",
    f"{_SEG}_resample_onto__mutmut_23": "sitk.Resample's default pixel value left out: its default is 0",
    **{f"{_SEG}_segment_layers__mutmut_{n}": "labels.min(initial=None / 1) < 0: the same answer on a non-empty "
       "array" for n in (32, 33)},
    **{f"{_SEG}_source_datasets__mutmut_{n}": "dcmread without stop_before_pixels: the pixels are read too, the "
       "header highdicom uses is the same" for n in (24, 26, 27)},
    f"{_SEG}_source_datasets__mutmut_32": "a missing Type 2 attribute set to None instead of '': pydicom writes "
                                          "the same empty element",
    **{f"{_SEG}read_dicom_seg__mutmut_{n}": "get_pixels_by_source_instance's dtype dropped: _smallest_uint "
       "recasts" for n in (40, 44)},
    f"{_SEG}write_dicom_seg__mutmut_27": "astype(None): 0/1 frames as float64, highdicom packs the same bits",
    f"{_SEG}write_dicom_seg__mutmut_91": "omit_empty_frames left out: highdicom's default is True",
    **{f"data.writers.x_label_volume_image__mutmut_{n}": "labels.max(initial=None / 1): the same uint8 / uint16 "
       "choice on a non-empty label map" for n in (8, 9)},
    **{f"data.writers.x_write_png_labels__mutmut_{n}": "labels.max(initial=None / 1) > 255: the same answer on a "
       "non-empty label map" for n in (3, 4)},
    **{f"data.writers.x_write_png_{kind}__mutmut_22": "save(format='png'): PIL upper-cases the format name"
       for kind in ("mask", "labels")},
    "data.writers.x_write_label_nifti__mutmut_36": "useCompression left out: ITK's NIfTI writer gzips a .nii.gz name "
                                                   "anyway (the test reads the gzip magic)",
    **{f"data.volume.xǁVolumeǁindex_to_physical__mutmut_{n}": "np.asarray(ijk) without dtype=float: the "
       "product with the float spacing is float either way" for n in (3, 5)},
    **{f"data.volume.xǁVolumeǁto_sitk__mutmut_{n}": "GetImageFromArray's isVector made None / left out: SimpleITK "
       "makes a 4-D array a 3-D vector image by itself, a 3-D array is scalar either way" for n in (3, 5)},
    **{f"{_SEG}_smallest_uint__mutmut_{n}": "array.max(initial=None / 1): the same uint8 / uint16 choice on a "
       "non-empty label map" for n in (7, 8)},
}

# evaluation/ and app/interaction.py, models/segmenter.py (issue 26, branch muteval): equivalent mutants
_F = "evaluation.fairness.x_"
EQUIVALENT |= {
    f"{_F}is_unknown_group__mutmut_1": "None or NaN check made `and`: str(None) 'none' and str(nan) 'nan' are in "
                                       "UNKNOWN_GROUP_VALUES anyway",
    **{f"{_F}equity_scaled__mutmut_{n}": "np.asarray(values) without dtype: the values are floats (equity_table "
       "converts each with float()), numpy keeps float64" for n in (22, 24)},
    f"{_F}equity_scaled__mutmut_47": "the separator of the found-groups list: it is printed only with fewer than two "
                                     "groups, so at most one name",
}
_I = "app.interaction.x_"
EQUIVALENT |= {
    **{f"{_I}measurements__mutmut_{n}": "bincount minlength and the `d.value < len(counts)` guard each make the "
       "other redundant: a mutant of one is covered by the other" for n in (24, 25, 27, 32, 37, 39, 40, 43, 45, 46)},
    **{f"{_I}erase__mutmut_{n}": "Edit's before copied or not (copy=None/False/left out): Edit packs it at once "
       "(PackedArray, zlib)" for n in (46, 48, 49)},
    f"{_I}erase__mutmut_42": "Edit(..., prompt_after) left out: its default is the same None",
    **{f"{_I}_without_corner__mutmut_{n}": "a corner-only prompt never has points, box or logits (box_click makes it "
       "fresh), so the function always returns None" for n in (3, 4)},
    **{f"{_I}mask_prompt__mutmut_{n}": "np.asarray(mask) without bool: every later use converts (any(), nonzero, "
       "merged_plane, mask_prompt_from_mask)" for n in (5, 7)},
    f"{_I}_without_corner__mutmut_2": "always None: a corner-only prompt never has points, box or logits",
    **{f"{_I}erase__mutmut_{n}": "the erase's history kind: Session.apply records none for an edit without a "
       "prompt_after, which an erase never has" for n in (51, 53, 54, 55)},
    "app.interaction.xǁPrefetcherǁ_one__mutmut_21": "the poll interval while a user request holds the model "
                                                    "(0.05 s to 1.05 s): the neighbour is encoded later, the same",
    "app.interaction.xǁPrefetcherǁ_work__mutmut_4": "the idle worker's queue timeout 1.5 s for 0.5 s: it notices a "
                                                    "stop later, the same",
    "app.interaction.xǁPrefetcherǁ_work__mutmut_5": "`break` for `continue` when idle: the worker ends and the next "
                                                    "request starts a new one (_ensure_thread checks is_alive)",
}
EQUIVALENT |= {
    **{f"evaluation.runner.x__slice_key__mutmut_{n}": "the slice index of a 2D image (None) as -1, +1 or -2, or "
       "always the index: rows of one file are all 2D or all 3D, so the order among them is the same"
       for n in (2, 4, 5)},
    **{f"models.segmenter.xǁSegmenterǁprompt_tensors__mutmut_{n}": "torch.as_tensor's dtype dropped: Prompts "
       "already holds float32 points and logits and int64 labels, and the geometry maps them to float32"
       for n in (10, 13, 16, 19, 30, 33)},
    **{f"models.segmenter.xǁSegmenterǁdecode_prompts__mutmut_{n}": "expand(+1, ...) for expand(-1, ...): the batch "
       "is always 1" for n in (44, 55)},
    "evaluation.runner.x_case_rng__mutmut_6": "encode('UTF-8'): codec names are case-insensitive",
    **{f"app.session.xǁSessionǁ_trim_undo__mutmut_{n}": "the .get default of a kept study's 'undo'/'redo': _stash "
       "always writes both keys" for n in (15, 17, 22, 24)},
    "models.segmenter.xǁSegmenterǁto_result__mutmut_15": "np.full(..., None, np.float32): numpy makes None NaN "
                                                         "in a float array",
    "models.segmenter.xǁSegmenterǁdecode_prompts__mutmut_13": "multimask_output None for the click model: its scope "
                                                              "'prompts' ignores it (ClickRefiner.applies)",
    **{f"evaluation.clicks.x_{f}__mutmut_{n}": why for f, n, why in (
        ("simulate", 6, "simulate's asarray(gt, bool): sample_points, box_from_mask and next_click convert again"),
        ("simulate", 8, "simulate's asarray(gt, bool): sample_points, box_from_mask and next_click convert again"),
        ("simulate", 97, "'box' never reaches the click loop either way: its N is 0"),
        ("simulate", 98, "'box' never reaches the click loop either way: its N is 0"),
        ("parse_protocol", 16, "Protocol('box') without n: its default is the same 0"),
        ("box_from_mask", 22, "np.array of numpy integers without dtype=int64: int64 anyway"),
        ("box_from_mask", 24, "np.array of numpy integers without dtype=int64: int64 anyway"),
        ("next_click", 15, "the 3x3 structure as float ones: scipy reads nonzero, the same 8-connectivity"),
        ("box_from_mask", 5, "box_from_mask's asarray(gt, bool): only .any() and np.nonzero read it"),
        ("box_from_mask", 7, "box_from_mask's asarray(gt, bool): only .any() and np.nonzero read it"),
        ("next_click", 17, "the 3x3 structure as float ones: scipy reads nonzero, the same 8-connectivity"),
    )},
}
# data/ readers (issue 26, branch mutdata): equivalent mutants of series_geometry, ...
_G = "data.series_geometry.x_"
EQUIVALENT |= {
    **{f"{_G}orientation__mutmut_{n}": "|norm - 1| > 0.01 made >= 0.01: a norm near 1 minus 1 is a multiple of 2**-53, "
       "never equal to the double 0.01" for n in (22, 27)},
    **{f"{_G}check_series_geometry__mutmut_{n}": "the 'do not advance' guard (mean step <= 0, its message): unreachable "
       "from the reader, which passes the slices sorted by position, distinct and parallel by the checks above"
       for n in (205, 208, 210, 211, 212)},
}
_R = "data.readers.x"
_P = "data.pictures.x"
_X = "data.dicom_pixels.x_"  # the pixel checks, data/readers.py's until session 15 (numbers as they were there)  # the picture reader, data/readers.py's until session 15 (its mutant numbers as they were there)
EQUIVALENT |= {
    **{f"{_R}__same_geometry__mutmut_{n}": "a tighter allclose tolerance: where it says 'differ' the reader applies the "
       "header's geometry, equal to ITK's within 1e-4 anyway" for n in (9, 10, 19, 20, 28)},
    **{f"{_R}_{f}__mutmut_{n}": "issubdtype(None, ...) is True: integer arrays take the float path, which finds "
       "nothing to replace (isfinite is all True)" for f, n in
       (("_raw_non_finite", 2), ("_raw_non_finite", 13), ("_finite", 2), ("guess_modality", 4))},
    f"{_R}__raw_non_finite__mutmut_10": "'or' made 'and' in the raw-array guard: ITK returns floats only where "
                                        "nibabel does (scaled or float data), always of the same size",
    f"{_R}__raw_non_finite__mutmut_18": "raw.T.reshape(None): raw.T already has ITK's [k, j, i] shape",
    **{f"{_R}__finite__mutmut_{n}": "the warning's stacklevel: where Python says it came from, not what it says"
       for n in (36, 39)},
    **{f"{_R}_read_dicom_series__mutmut_{n}": "the warning's stacklevel: where Python says it came from, not what it "
       "says" for n in (82, 84)},
    **{f"{_R}_{f}__mutmut_{n}": "encode('UTF-8'): codec names are case-insensitive"
       for f, n in (("read_study", 9), ("read_dicom_series", 28))},
    f"{_R}_list_series__mutmut_20": "'and' for 'or' before the DICM test: a folder has no DICM marker either "
                                    "(has_dicom_magic answers False), nor has a file under 132 bytes",
    **{f"{_R}_list_series__mutmut_{n}": "a 132-byte file (preamble + DICM, no elements) skipped before the scan "
       "instead of after it: it has no SeriesInstanceUID either way" for n in (23, 24)},
    **{f"{_R}_list_series__mutmut_{n}": "the order among slices that share a position or lack one: a series of 2+ "
       "such files is refused by check_series_geometry, and 1 file has no order" for n in (75, 76, 79, 82)},
    **{f"{_R}__instance__mutmut_{n}": "InstanceNumber's default 0 made None/1 or 'or 1': only orders slices that "
       "lack a position, refused as a series of 2+ anyway" for n in (5, 12, 13)},
    f"{_R}__int__mutmut_6": "getattr(ds, keyword, None) or default: an absent attribute gives the default either way",
    **{f"{_R}__read_header__mutmut_{n}": "dcmread without stop_before_pixels: reads the pixels too, the same header"
       for n in (5, 7, 8)},
    f"{_R}_read_dicom_series__mutmut_1": "allow_uneven's default: read_study, its only caller, always passes it",
    **{f"{_R}_read_dicom_series__mutmut_{n}": "setting the mean slice spacing: ITK's series reader already spaces "
       "slices at (last - first) / (n - 1), the mean" for n in (73, 74, 76)},
    **{f"{_R}_read_nifti__mutmut_{n}": "the 4-D and empty refusals after ITK: data.nifti_check refuses both first "
       "(a 4-D file with one volume opens as 3-D)" for n in (17, 18, 25)},
    f"{_R}_read_nifti__mutmut_40": "'or' for 'and': applies the header's geometry also where ITK's equals it (2-D "
                                   "images and agreeing sform/qform), the same values",
    f"{_R}ǁStudyErrorǁ__init____mutmut_1": "StudyError's default message: it is never raised without one",
    **{f"{_P}_read_image_file__mutmut_{n}": "the mode names after convert('L'/'RGB'): only read by the 'not RGB' "
       "channel cut, which no PNG/JPEG mode reaches (below)" for n in (33, 34, 35, 41, 42, 43)},
    **{f"{_P}_read_image_file__mutmut_{n}": "the byte-order fix: Pillow opens 16-bit PNG as I;16 in native order, "
       "so no PNG/JPEG gives a non-native array" for n in (48, 49, 50, 51, 52, 53, 54)},
    **{f"{_P}_read_image_file__mutmut_{n}": "the channel cut of a non-RGB 3-D array: every PNG/JPEG mode with "
       "channels is converted to RGB above, so it never runs" for n in (57, 58, 59, 60, 61, 62)},
    **{f"{_P}_read_image_file__mutmut_{n}": "the empty-image refusal: Pillow refuses a zero-size PNG/JPEG at open "
       "('cannot identify image file'), and shape[:3] of a 2-D/RGB image has no 0 either" for n in (63, 69, 70)},
    f"{_P}_read_image_file__mutmut_6": "every warning ignored while Image.open reads the header, not only the bomb "
                                       "warning: its other notes are on odd chunks, hidden by the load step anyway",
    f"{_P}_read_image_file__mutmut_86": "modality='OT' left out: Volume's default is 'OT'",
    **{f"{_X}check_pixels__mutmut_{n}": "PhotometricInterpretation's default made None/'XXXX': an absent one is "
       "not 'YBR_FULL_422' either way" for n in (135, 142)},
}
_D = "data.dicom_scan.x"
EQUIVALENT |= {
    **{f"{_D}__inflate__mutmut_{n}": "the inflate step size or its first empty buffer: the same bytes in other "
       "chunks" for n in (11, 12, 13, 14)},
    f"{_D}__inflate__mutmut_39": "'<=' for '<' before keeping the head: appends out[:0] once it is full",
    f"{_D}__inflate__mutmut_6": "the tail starting as b'XXXX': tail_start moves back by the same 4 bytes while the "
                                "tail is under 64 KiB, and they are cut off once it is full",
    f"{_D}ǁ_Bytesǁ__init____mutmut_1": "_Bytes' default tail: only a memory map uses it, and the map covers the file",
    f"{_D}__read_meta__mutmut_15": "meta group/element unpacked signed: group 0x0002 reads the same, and a "
                                   "negative group is not 0x0002 either",
    **{f"{_D}_{f}__mutmut_{n}": "codec 'ASCII' for 'ascii': names are case-insensitive"
       for f, n in (("_read_meta", 75), ("_read_value", 10), ("_walk", 232))},
    **{f"{_D}_{f}__mutmut_{n}": "strip('XX\\0 XX'): a UID or an IS number holds no 'X'"
       for f, n in (("_read_meta", 78), ("_read_value", 11))},
    **{f"{_D}__jpeg_frame_header__mutmut_{n}": "the marker loop's bound: a frame header needs pos + 10 bytes, so "
       "stopping a byte earlier finds the same" for n in (4, 5)},
    f"{_D}__walk__mutmut_22": "FRAGMENTS = 3 for 2: the kinds are only compared with these names, 3 is free",
    f"{_D}__walk__mutmut_40": "stack[0][2] = None for False: falsy alike",
    f"{_D}__walk__mutmut_118": "'depth >= 0' for '> 0': a data set of undefined length is always an item, depth >= 1",
    f"{_D}__walk__mutmut_276": "_is_sequence's u32 argument: unused",
    **{f"{_D}_scan_dicom__mutmut_{n}": "the explicit/implicit guess made before the walk: the walk switches by the "
       "first element's VR itself, so any guess here ends the same"
       for n in (56, 64, 69, 71, 72, 73, 74, 76, 77, 78, 79, 80, 81, 82, 83, 87)},
    f"{_D}_scan_dicom__mutmut_4": "open(path) in text mode: only seek and fileno are used (for the memory map)",
    f"{_D}_encoded_frame_sizes__mutmut_11": "f.read() whole instead of the first 64 KiB: the frame header is at its "
                                            "start",
}
_N = "data.nifti_check.x"
EQUIVALENT |= {
    **{f"{_N}__check_extensions__mutmut_{n}": "where the extension walk starts to be skipped (offset < 352, <= 344, "
       "<= 353): at those offsets no 8-byte extension header fits before vox_offset, the loop does nothing"
       for n in (1, 2, 3)},
    f"{_N}__check_extensions__mutmut_13": "the extension block read whole instead of up to vox_offset: the loop "
                                          "stops at vox_offset",
    **{f"{_N}__geometry__mutmut_{n}": "'/ flip' for '* flip': flip is +-1" for n in (143, 145)},
    **{f"{_N}__geometry__mutmut_{n}": "the sform built without dtype=float: srow_* are float32 in the header, the "
       "float32 result differs from float64 below 1e-6 mm" for n in (35, 37)},
    f"{_N}__geometry__mutmut_76": "zeros((3, 5)) for the pixdim-only affine: columns 0-3 are the same",
    f"{_N}__parse_header__mutmut_13": "sizeof_hdr unpacked unsigned: 348 and 540 read the same",
    f"{_N}__parse_header__mutmut_22": "nibabel's check=None for False: falsy alike",
    f"{_N}__parse_header__mutmut_33": "rstrip(b'XX\\0XX'): a magic 'n+1' has no 'X'",
    **{f"{_N}__qform__mutmut_{n}": "get_qform's dtype dropped: it returns float64 already" for n in (26, 28)},
    f"{_N}__read_prefix__mutmut_6": "gzip.open's mode left out: its default is 'rb'",
    f"{_N}_check_nifti__mutmut_13": "545 header bytes read for 544: only the first 540 are parsed",
    f"{_N}_check_nifti__mutmut_44": "'>= 3' for '> 3' before the extra-dimensions test: shape[3:] of a 3-D image "
                                    "is empty",
}
_U = "data.untrusted.x"
EQUIVALENT |= {
    **{f"{_U}_gzip_length__mutmut_{n}": "wbits 32 (gzip or zlib header) for 31: every caller has read the file with "
       "gzip.open first, which refuses a zlib stream" for n in (11, 42)},
    f"{_U}_gzip_length__mutmut_17": "f.read() whole for 1 MiB steps: the compressed bytes (capped by the upload "
                                    "limit) in memory at once, the same count",
    f"{_U}_gzip_length__mutmut_31": "data = None for b'': falsy alike, the next read follows",
    **{f"{_U}_one_line__mutmut_{n}": "codec names in upper case: case-insensitive" for n in (9, 11)},
}


# evaluation/report.py (issue 26, branch mut26): equivalent mutants
_E = "evaluation.report.x_"
EQUIVALENT |= {
    **{f"{_E}{f}__mutmut_{n}": "matplotlib.use('agg'/'AGG'): backend names are matched case-insensitively, the "
       "same Agg renderer" for f, n in (("plot_dice_per_click", 3), ("plot_dice_per_click", 4), ("plot_groups", 3),
                                        ("plot_groups", 4), ("plot_protocol_comparison", 5),
                                        ("plot_protocol_comparison", 6))},
    **{f"{_E}{f}__mutmut_{n}": "savefig's format None / left out / 'PNG': every caller names a .png file and "
       "atomic_output keeps the suffix, so matplotlib writes PNG either way (format names are case-insensitive)"
       for f, n in (("plot_dice_per_click", 153), ("plot_dice_per_click", 155), ("plot_dice_per_click", 157),
                    ("plot_groups", 118), ("plot_groups", 120), ("plot_groups", 122),
                    ("plot_protocol_comparison", 94), ("plot_protocol_comparison", 96),
                    ("plot_protocol_comparison", 98))},
    **{f"{_E}{f}__mutmut_{n}": "plt.close(None) closes the current figure, which is this one (plt.subplots above)"
       for f, n in (("plot_dice_per_click", 158), ("plot_groups", 123), ("plot_protocol_comparison", 99))},
    **{f"{_E}{f}__mutmut_{n}": "the axis' lower limit None: the bars start at 0, a sticky edge, so autoscaling "
       "gives 0 (the tests read the limits)" for f, n in (("plot_dice_per_click", 50), ("plot_groups", 94))},
    f"{_E}plot_groups__mutmut_49": "colour '#4C72B0' for '#4c72b0': hex colours are case-insensitive",
    f"{_E}plot_protocol_comparison__mutmut_40": "ls='none' left out: a marker-only format ('o', 's', ...) draws no "
                                                "line already",
    **{f"{_E}write_per_case_csv__mutmut_{n}": "open(newline=None) for newline='': on POSIX nothing is translated "
       "('\\n' is os.linesep), the csv module's \\r\\n rows are the same bytes; differs on Windows only"
       for n in (4, 8)},
    **{f"{_E}{f}__mutmut_{n}": "encoding 'UTF-8' for 'utf-8': codec names are case-insensitive"
       for f, n in (("write_per_case_csv", 14), ("write_report", 40), ("write_report", 78))},
    **{f"{_E}write_report__mutmut_{n}": "summary.json's encoding None / left out: json.dumps escapes every non-ASCII "
       "character (ensure_ascii), so the text is ASCII in any locale" for n in (26, 28)},
    **{f"{_E}write_report__mutmut_{n}": "json.dumps(allow_nan=None/True/default): summarize's _clean already made "
       "every NaN and infinity null" for n in (32, 35, 37)},
    f"{_E}summarize__mutmut_45": "equity_table's metrics left out: its default is ES_METRICS' ('dice', 'iou', 'nsd')",
}

# app/interaction.py (issue 26, branch mut26): equivalent mutants of the functions run to the end here
EQUIVALENT |= {
    **{f"{_I}click__mutmut_{n}": "click's 'a click cancels a half-drawn box' rebuild: the next PromptState is built "
       "from the same fields without a corner anyway, and a corner-only prompt has no points, box or logits (box_click "
       "makes it fresh), so flipping the test or dropping/nulling a field changes nothing"
       for n in (10, 12, 13, 17, 19, 23, 24, 25, 27)},
    f"{_I}click__mutmut_66": "'or p.logits is None' in the ambiguity test: every prompt without logits (new, corner, "
                             "paint) has no points and no box, so the answer is the same",
    f"{_I}box_click__mutmut_56": "box_prompt(before=None): _without_corner of a corner-only prompt is always None",
    f"{_I}mask_prompt__mutmut_51": "the paint's _edit with mask None: its after.base already holds the paint, and "
                                   "merged_plane paints nothing more",
    "app.interaction.xǁModelRunnerǁpredict__mutmut_1": "predict's multimask default: its only caller, _predict, "
                                                       "always passes it",
    **{f"{_I}{f}__mutmut_{n}": "np.array(plane) without copy=True: np.array copies by default"
       for f, n in (("merged_plane", 5), ("new_prompt", 5))},
    **{f"{_I}merged_plane__mutmut_{n}": "np.asarray(mask) without bool: every mask reaching it is bool already (model "
       "masks, candidates, and mask_prompt's converted paint)" for n in (10, 12)},
    **{f"{_I}new_prompt__mutmut_{n}": "new_prompt's view/index made None: every caller reads only its base and label "
       "and takes the plane from its own arguments" for n in (11, 12)},
    **{f"{_I}to_prompts__mutmut_{n}": "to_prompts' dtype or reshape(-1, 2) of the points and labels dropped or "
       "reshape(-2, 2): Prompts.__post_init__ makes points float32 (N, 2) and labels int64 itself"
       for n in (7, 9, 11, 13, 19, 21)},
    **{f"{_I}_edit__mutmut_{n}": "Edit's before copied or not (copy=None/False/left out): Edit packs it at once "
       "(PackedArray, zlib)" for n in (21, 23, 24)},
    "app.interaction.xǁModelRunnerǁ__init____mutmut_30": "the first _last_user 1.0 for 0.0: time.monotonic() is "
                                                          "the seconds since boot, so 'idle_after_s since' has passed "
                                                          "either way",
}

# data/dicomweb.py (issue 26, branch mut26c): equivalent mutants
_W = "data.dicomweb.x_"
EQUIVALENT |= {
    f"{_W}check_base_url__mutmut_14": "'^HTTPS?://' for '^https?://' under re.IGNORECASE: the same pattern",
    f"{_W}client__mutmut_10": "set_http_retry_params(retry=None): dicomweb-client reads `if retry:`, None is False",
    **{f"{_W}fetch_series__mutmut_{n}": "save_as's enforce_file_format False/None/left out: dicomweb-client reads each "
       "part with dcmread, which takes only a Part-10 file, so the data set keeps its preamble and file meta and is "
       "written the same" for n in (97, 99, 100)},
    **{f"{_W}fetch_series__mutmut_{n}": "rmtree(ignore_errors=False/None) of the folder this call made: differs only "
       "if another process deletes it at the same moment" for n in (119, 121, 122)},
    **{f"{_W}series_size__mutmut_{n}": "_value's default made None or left out (''): the `or 0`/`or 1`/`or 16` after "
       "it gives the same number" for n in (8, 11, 19, 22, 32, 35, 44, 47, 56, 59)},
    f"{_W}series_size__mutmut_62": "an empty BitsAllocated taken as 17 for 16: 17 // 8 == 16 // 8",
    f"{_W}series_size__mutmut_77": "bits / 8 for bits // 8: the same bytes for every BitsAllocated DICOM allows (1, 8, "
                                   "16, 32, 64; 1 goes through max(., 1)), as a float only read in '>' and ':.0f'",
}


# evaluation/distributed.py (issue 26, branch mut26c): equivalent mutants
_B = "evaluation.distributed.x_"
EQUIVALENT |= {
    f"{_B}save_case__mutmut_13": "the unpacked mask as float64 0/1, not bool: write_png_mask writes every value > 0 "
                                 "as the mask",
    **{f"{_B}save_case__mutmut_{n}": "the case file's encoding None/left out/'UTF-8': json.dumps escapes every "
       "non-ASCII character (ensure_ascii), so the text is ASCII in any locale" for n in (51, 53, 60)},
    **{f"{_B}save_case__mutmut_{n}": "json.dumps indent: the same JSON, laid out differently" for n in (55, 57, 58)},
    f"{_B}_drive__mutmut_1": "_drive's cpus default: run_batch, its only caller, always passes it",
    **{f"{_B}{f}__mutmut_{n}": "codec 'UTF-8' for 'utf-8': names are case-insensitive"
       for f, n in (("check_run_file", 8), ("check_run_file", 37), ("load_case", 10), ("case_stem", 18))},
    **{f"{_B}{f}__mutmut_{n}": "run.json / a case file read or written with the locale's encoding: json.dumps "
       "escapes every non-ASCII character (ensure_ascii), so both are ASCII" for f, n in
       (("check_run_file", 6), ("check_run_file", 28), ("check_run_file", 30), ("load_case", 8))},
    **{f"{_B}check_run_file__mutmut_{n}": "json.dumps indent: the same JSON, laid out differently"
       for n in (32, 34, 35)},
    f"{_B}load_case__mutmut_24": "a missing mask name read as 'XX\\0XX' for '\\0': no file name holds a NUL either way",
    f"{_B}_drive__mutmut_54": "ray.wait without num_returns: Ray's default is 1",
    **{f"{_B}_drive__mutmut_{n}": "a replacement worker without the test-only fault marker: the hook fires once a "
       "run, and a replacement exists only after a loss" for n in (72, 74)},
    f"{_B}run_batch__mutmut_4": "run_batch's progress default: medseg batch, its only caller, always passes it",
    **{f"evaluation.distributed.xǁCaseWorkerǁrun__mutmut_{n}": "np.asarray(final mask) without dtype=bool: the "
       "masks a model returns (MaskResult) are bool already, and packbits packs the same bits" for n in (38, 40)},
}


# data/isolated_read.py (issue 26, branch mut26c): equivalent mutants
EQUIVALENT |= {
    **{f"data.isolated_read.x__volume__mutmut_{n}": "the re-emitted warning's stacklevel: where Python says it came "
       "from, not what it says" for n in (98, 106)},
    **{f"data.isolated_read.xǁReadServerǁread__mutmut_{n}": "rmtree(ignore_errors=False/None) of the hand-over "
       "folder this call made: differs only if another process deletes it at the same moment" for n in (54, 56, 57)},
    **{f"data.isolated_read.x__volume__mutmut_{n}": "np.load's allow_pickle None or left out: numpy's default is "
       "False, and None is falsy (a pickle is still refused)" for n in (39, 41)},
    "data.isolated_read.xǁReadServerǁ__init____mutmut_3": "the first _dir '' for None: _stop_locked then runs "
                                                          "rmtree('', ignore_errors=True), which does nothing",
}
# data/isolated_read.py's fork-server handle (issue 26, branch mut26d): equivalent mutants of ReadServer
_RS = "data.isolated_read.xǁReadServerǁ"
EQUIVALENT |= {
    f"{_RS}_ask__mutmut_2": "range(3) attempts for range(2): the second attempt (attempt 1) returns or raises, so a "
                            "third never starts",
    **{f"{_RS}_ask__mutmut_{n}": "socket.socket(SOCK_STREAM) / socket.socket(AF_UNIX): SOCK_STREAM is 1, which is "
       "AF_UNIX as a family, and the type defaults to SOCK_STREAM: the same Unix stream socket" for n in (6, 7)},
    f"{_RS}_ask__mutmut_18": "the caller's wait timeout_s + 61 s for + 60 s: one second longer for a worker that never "
                             "answers (timing only; the house rules have no timed tests)",
    f"{_RS}_ask__mutmut_27": "reading until b'XX\\nXX' instead of b'\\n': it reads on until the connection closes, "
                             "and the supervisor closes it right after its one line (os._exit; serve closes its copy "
                             "at once)",
    **{f"{_RS}_ask__mutmut_{n}": "recv(2 MiB) for recv(1 MiB): the same bytes in other chunks" for n in (31, 32)},
    f"{_RS}_ask__mutmut_37": "data = None after an OSError: falsy like b'', so the answer is {'exit': 'none'} either "
                             "way",
    **{f"{_RS}_ask__mutmut_{n}": "the message of the AssertionError after the loop: unreachable (each attempt returns "
       "or raises)" for n in (50, 51, 52)},
    f"{_RS}_start__mutmut_62": "'<=' for '<' against a float deadline of time.monotonic(): the same loop",
    f"{_RS}_start__mutmut_71": "select's poll 2 s for 1 s while waiting for 'ready': a dead worker is seen at once by "
                               "the end of its stdout, so only the give-up at START_TIMEOUT_S comes up to a second "
                               "later (timing only)",
    **{f"{_RS}_stop_locked__mutmut_{n}": "wait(6) for wait(5): a worker that ignores EOF is killed a second later "
       "(timing only)" for n in (4, 6)},
    f"{_RS}_stop_locked__mutmut_5": "wait(None) after proc.kill(): a SIGKILLed process ends, so the wait returns",
    f"{_RS}_stop_locked__mutmut_13": "_dir = '' for None after a stop: only rmtree('', ignore_errors=True) reads it, "
                                     "which does nothing, and _start sets a new folder before any use",
}


# data/read_worker.py (issue 26, branch mut26c): equivalent mutants
_RW = "data.read_worker.x_"
EQUIVALENT |= {
    **{f"{_RW}{f}__mutmut_{n}": "a read of 65537 bytes for 65536: the same bytes in other chunks"
       for f, n in (("read_line", 7), ("supervise", 58))},
    **{f"{_RW}read_line__mutmut_{n}": "split(b'\\n') without maxsplit 1, or with 2: the first part is the same"
       for n in (19, 22)},
    f"{_RW}supervise__mutmut_34": "'left < 0' for '<= 0': left is a float difference of monotonic clocks, and "
                                  "select with 0 s left answers at once either way",
    **{f"{_RW}supervise__mutmut_{n}": "the data dropped after killing an over-long reply made None or b'XXXX': the "
       "child was killed, so the signal branch answers before data is read" for n in (68, 69)},
    **{f"{_RW}supervise__mutmut_{n}": "the 'neither exited nor signalled' exit code: waitpid without WUNTRACED "
       "returns only a child that exited or was killed" for n in (96, 99, 100)},
    **{f"{_RW}reader_child__mutmut_{n}": "the link rule's default when a request names none: every request names "
       "it (ReadServer.read sends link_policy())" for n in (6, 8, 11, 12)},
    f"{_RW}reader_child__mutmut_74": "the reader's exit code 1 after it has answered: the supervisor reads the "
                                     "answer, and looks at the exit code only when there is none",
    **{f"{_RW}reader_child__mutmut_{n}": "np.save's allow_pickle None/left out/True for a numeric array: numpy "
       "pickles only object arrays, and read_study never returns one" for n in (126, 129, 137)},
}
# data/read_worker.py's accept loop (issue 26, branch mut26d): equivalent mutants of serve
EQUIVALENT |= {
    **{f"{_RW}serve__mutmut_{n}": "socket.socket(SOCK_STREAM) / socket.socket(AF_UNIX): SOCK_STREAM is 1, which is "
       "AF_UNIX as a family, and the type defaults to SOCK_STREAM: the same Unix stream socket" for n in (4, 5)},
    f"{_RW}serve__mutmut_13": "listen(65) for listen(64): a backlog of one more pending connection (the caller "
                              "connects once per read, under a lock)",
    f"{_RW}serve__mutmut_43": "os.read(stdin, 4097) for 4096: only whether it is empty (EOF) is read",
    **{f"{_RW}serve__mutmut_{n}": "the supervisor's exit code (2 for 1 before supervise, 1 for 0 after it): nobody "
       "reads it, serve ignores SIGCHLD so the kernel reaps it" for n in (57, 66)},
    f"{_RW}supervise__mutmut_15": "the reader child's exit code None for 1 before reader_child runs: it matters only "
                                  "if reader_child raises, and then os._exit(None) raises in the child, which unwinds "
                                  "into serve's wrapper, whose os._exit(1) ends it with the same 1",
    f"{_RW}serve__mutmut_63": "the supervisor's socket timeout 31 s for 30 s: a client that sends nothing is dropped a "
                              "second later (timing only; the house rules have no timed tests)",
}


def shared_dir() -> Path:
    for candidate in (os.environ.get("MEDSEG_SHARED"), ROOT.parent / "shared", Path("/work/shared")):
        if candidate and Path(candidate, "data").is_dir():
            return Path(candidate).resolve()
    raise SystemExit("mutants: no shared data folder (set MEDSEG_SHARED)")


def stage(module: str, tests: list[str]) -> Path:
    """``.mutants/<module>/``: links to the code, tests and samples, and a pyproject for this module."""
    folder = WORK / module.replace("/", "__").removesuffix(".py")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, "tests", "samples", "scripts", "weights"):  # weights/click_model: models/ finds it beside itself
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        f"source_paths = {json.dumps(list(PACKAGES))}\n"
        f"only_mutate = {json.dumps([module])}\n"
        "also_copy = [\"samples\", \"scripts\", \"weights\"]\n"
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
