"""``medseg eval``'s outputs (per_case.csv, summary.json, report.md and plots) from a small hand-made run:
every number checked against a hand computation, every file's content read back."""

from __future__ import annotations

import csv
import json
import math

import pytest

from evaluation.clicks import parse_protocol
from evaluation.report import plot_protocol_comparison, report_markdown, summarize, write_report
from evaluation.runner import EvalRun, EvalSettings, StepRow

NAN = math.nan


def _row(case, structure, clicks, dice, site, seconds=0.5, hd95=3.0):
    return StepRow(case, structure, clicks, dice, dice - 0.1, hd95, dice, seconds, {"site": site, "scanner": "s1"})


def _run(rows=None) -> EvalRun:
    rows = rows or [
        _row("c1", "liver", 0, 0.8, "A", 1.25), _row("c1", "liver", 1, 0.9, "A"),
        _row("c2", "liver", 0, 0.6, "B"), _row("c2", "liver", 1, 0.7, "B", hd95=NAN),
        _row("c3", "aorta", 0, 0.5, "A"), _row("c3", "aorta", 1, NAN, "A"),
    ]
    settings = EvalSettings(parse_protocol("box+clicks:1"), margin=3, jitter=1, seed=7)
    return EvalRun(rows=rows, settings=settings, model="litemedsam", manifest="m.csv",
                   attributes=["site", "scanner"], n_cases=3)


def test_summary_means_per_structure_and_click_and_equity_by_hand():
    s = summarize(_run(), ["site"])
    assert s["model"] == "litemedsam" and s["manifest"] == "m.csv" and s["n_cases"] == 3
    assert (s["protocol"], s["margin_px"], s["jitter_px"], s["seed"]) == ("box+clicks:1", 3, 1, 7)
    assert s["nsd_tolerance_mm"] == 2.0 and s["feed_logits"] is True
    assert s["empty_policy"] == {"both_empty": "perfect", "one_empty_hd": "diagonal"}
    assert s["clicks"] == [0, 1] and s["seconds_total"] == pytest.approx(3.75)
    assert list(s["means"]) == ["all", "aorta", "liver"] and list(s["means"]["all"]) == ["0", "1"]
    assert s["means"]["all"]["0"] == pytest.approx({"dice": 1.9 / 3, "iou": 1.6 / 3, "hd95": 3.0, "nsd": 1.9 / 3,
                                                    "count": 3})
    assert s["means"]["liver"]["1"] == pytest.approx({"dice": 0.8, "iou": 0.7, "hd95": 3.0, "nsd": 0.8, "count": 2})
    # the aorta's Dice at click 1 is undefined: null in JSON, the count still says one case
    assert s["means"]["aorta"]["1"] == {"dice": None, "iou": None, "hd95": 3.0, "nsd": None, "count": 1}
    # ES-Dice by site at click 0, all structures: M_all = 1.9/3; A = 0.65, B = 0.6
    es = s["equity"]["site"]["0"]["all"]["dice"]
    m_all = 1.9 / 3
    assert es["es"] == pytest.approx(m_all / (1 + abs(0.65 - m_all) + abs(0.6 - m_all)))
    assert es["groups"] == {"A": {"mean": pytest.approx(0.65), "n": 2}, "B": {"mean": pytest.approx(0.6), "n": 1}}
    assert set(s["equity"]["site"]["1"]["all"]) == {"dice", "iou", "nsd"}
    assert "error" in s["equity"]["site"]["0"]["aorta"]["dice"]  # one site only
    assert s["equity"] == summarize(_run(), ["site"])["equity"] and summarize(_run())["equity"] == {}
    assert summarize(_run(), ["structure"])["equity"]["structure"]["0"]["all"]["dice"]["groups"]["aorta"]["n"] == 1
    with pytest.raises(ValueError, match=r"^--group-by sex, age: no such column in m\.csv; attribute columns: "
                                         r"site, scanner$"):
        summarize(_run(), ["site", "sex", "age"])
    bare = _run()
    bare.attributes = []
    with pytest.raises(ValueError, match="attribute columns: none$"):
        summarize(bare, ["site"])


def test_the_files_of_a_run(tmp_path):
    out = tmp_path / "deep" / "run"
    summary = write_report(_run(), out, ["site", "scanner"])
    with open(out / "per_case.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case_id", "structure", "clicks", "dice", "iou", "hd95", "nsd", "seconds"]
    assert rows[1] == ["c1", "liver", "0", "0.8", "0.7", "3", "0.8", "1.25"]
    assert rows[4] == ["c2", "liver", "1", "0.7", "0.6", "", "0.7", "0.5"]  # NaN: an empty cell
    assert rows[6] == ["c3", "aorta", "1", "", "", "3", "", "0.5"] and len(rows) == 7
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and "NaN" not in text and text.startswith('{\n  "model"')
    assert json.loads(text) == summary
    assert (out / "dice_per_click.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "groups_site.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "groups_scanner.png").exists()  # one scanner: no ES, no plot
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "![Dice per click](dice_per_click.png)" in report and "![Dice by site](groups_site.png)" in report
    assert "groups_scanner" not in report and "## Equity-scaled metrics by `scanner` (1 clicks)" in report


def test_report_text_by_hand():
    s = summarize(_run(), ["site"])
    md = report_markdown(s, {"dice": "d.png", "group:site": "g.png"})
    lines = md.split("\n")
    assert lines[0] == "# Evaluation: litemedsam, protocol `box+clicks:1`"
    assert lines[2] == ("Manifest `m.csv`, 3 cases; box margin 3 px, jitter 1 px, seed 7; NSD tolerance 2.0 mm; "
                        "empty masks: both empty = perfect, HD95 with one empty = diagonal. Model time 3.8 s.")
    assert lines[4:10] == [
        "## Mean Dice per click", "",
        "| structure | n | 0 clicks | 1 clicks |", "|---|---|---|---|",
        "| all | 3 | 0.633 | 0.800 |",
        "| aorta | 1 | 0.500 | n/a |",
    ]
    assert lines[10] == "| liver | 2 | 0.700 | 0.800 |"
    assert lines[11:16] == ["", "## All metrics at 1 clicks", "", "| structure | Dice | IoU | HD95 (mm) | NSD |",
                            "|---|---|---|---|---|"]
    assert lines[16:19] == ["| all | 0.800 | 0.700 | 3.00 | 0.800 |", "| aorta | n/a | n/a | 3.00 | n/a |",
                            "| liver | 0.800 | 0.700 | 3.00 | 0.800 |"]
    assert lines[19:21] == ["", "![Dice per click](d.png)"]
    # click 1 by site: A = 0.9 (the aorta's NaN left out), B = 0.7; M_all 0.8 -> ES 0.8 / 1.2
    assert lines[21:28] == [
        "", "## Equity-scaled metrics by `site` (1 clicks)", "",
        "ES-M = M_all / (1 + sum_g |M_g - M_all|) (FairSeg); `n/a` where the structure lies in fewer than two groups.",
        "", "| structure | ES-Dice | Dice (all) | ES-IoU | ES-NSD | groups: mean Dice (n) |", "|---|---|---|---|---|---|",
    ]
    assert lines[28] == "| all | 0.667 | 0.800 | 0.583 | 0.667 | A: 0.900 (1), B: 0.700 (1) |"
    assert lines[29].startswith("| aorta | n/a | | n/a | n/a | equity-scaled dice needs at least two known groups")
    assert lines[30] == "| liver | 0.667 | 0.800 | 0.583 | 0.667 | A: 0.900 (1), B: 0.700 (1) |"
    assert lines[31:] == ["", "![Dice by site](g.png)", ""]
    assert "![" not in report_markdown(s, {})


def test_one_step_runs_and_protocol_comparisons_plot(tmp_path):
    rows = [_row("c1", "liver", 0, 0.8, "A"), _row("c2", "kidney", 0, 0.4, "B")]
    one = _run(rows)
    one.settings = EvalSettings(parse_protocol("box"))
    out = tmp_path / "one"
    s = write_report(one, out, ["site"])
    assert s["clicks"] == [0] and (out / "dice_per_click.png").stat().st_size > 1000
    assert (out / "groups_site.png").is_file()
    path = plot_protocol_comparison({"box": s, "clicks": summarize(_run())}, tmp_path / "cmp" / "c.png")
    assert path == tmp_path / "cmp" / "c.png" and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def figures(monkeypatch):
    """The figures the report saves, kept open for reading (title, axes labels, plotted data)."""
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self) or real(self, *a, **k))
    yield saved
    plt.close("all")


def test_what_the_plots_show(tmp_path, figures):
    s = summarize(_run(), ["site"])
    from evaluation.report import plot_dice_per_click, plot_groups

    plot_dice_per_click(s, tmp_path / "d.png")
    plot_groups(s, "site", tmp_path / "g.png")
    plot_protocol_comparison({"box": summarize(_run([_row("c1", "liver", 0, 0.8, "A")])), "iter": s},
                             tmp_path / "c.png")
    (dice_ax,), (group_ax,), (cmp_ax,) = (f.axes for f in figures)
    assert dice_ax.get_title() == "litemedsam: Dice per click (box+clicks:1, margin 3 px)"
    assert (dice_ax.get_xlabel(), dice_ax.get_ylabel(), dice_ax.get_ylim()) == ("clicks (0 = box only)", "mean Dice",
                                                                                (0.0, 1.0))
    lines = {ln.get_label(): ln for ln in dice_ax.get_lines()}
    assert list(lines) == ["aorta", "liver", "all"] and list(dice_ax.get_xticks()) == [0, 1]
    assert lines["all"].get_xdata().tolist() == [0, 1] and lines["all"].get_color() == "k"
    assert lines["all"].get_ydata() == pytest.approx([1.9 / 3, 0.8]) and lines["all"].get_linewidth() == 2.5
    assert lines["liver"].get_ydata() == pytest.approx([0.7, 0.8])
    assert [t.get_text() for t in dice_ax.get_legend().get_texts()] == ["aorta", "liver", "all"]
    # groups at the last click: A 0.9 (n=1), B 0.7 (n=1), all cases 0.8 dashed, ES-Dice 0.667
    assert group_ax.get_title() == "Dice by site (box+clicks:1, clicks=1): ES-Dice 0.667"
    assert [round(b.get_height(), 6) for b in group_ax.patches] == [0.9, 0.7]
    assert [t.get_text() for t in group_ax.texts] == ["n=1", "n=1"] and group_ax.get_ylim() == (0.0, 1.05)
    (overall,) = group_ax.get_lines()
    assert overall.get_ydata()[0] == pytest.approx(0.8) and overall.get_label() == "all cases: 0.800"
    assert group_ax.get_ylabel() == "mean Dice"
    assert cmp_ax.get_title() == "litemedsam: protocols compared (all)" and cmp_ax.get_ylim() == (0.0, 1.0)
    assert [ln.get_label() for ln in cmp_ax.get_lines()] == ["box: 0.800", "iter: 0.633 -> 0.800"]
    assert cmp_ax.get_lines()[0].get_linestyle() == "None" and cmp_ax.get_lines()[1].get_xdata().tolist() == [0, 1]
    assert cmp_ax.get_xlabel() == "clicks (0 = box only; points:N drawn at N)"
    assert cmp_ax.get_ylabel() == "mean Dice (all)"


def test_a_one_step_run_plots_bars_with_all_first(tmp_path, figures):
    from evaluation.report import plot_dice_per_click

    one = _run([_row("c1", "liver", 0, 0.8, "A"), _row("c2", "kidney", 0, 0.4, "B")])
    one.settings = EvalSettings(parse_protocol("box"))
    plot_dice_per_click(summarize(one), tmp_path / "d.png")
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["liver", "kidney", "all"]  # all on top
    assert [round(b.get_width(), 6) for b in ax.patches] == [0.8, 0.4, 0.6]
    assert ax.get_xlabel() == "mean Dice (box, clicks = 0)" and ax.get_xlim() == (0.0, 1.0)
