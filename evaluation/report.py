"""Write an :class:`EvalRun` to a folder: per_case.csv, summary.json, report.md and its plots.

* ``per_case.csv``: columns exactly ``case_id,structure,clicks,dice,iou,hd95,nsd,seconds``, one
  row per case and click step, in manifest then click order (``box`` is click 0).
* ``summary.json``: the settings, mean metrics per structure (and ``all``) per click, and for
  each ``--group-by`` column FairSeg's equity-scaled Dice/IoU/NSD per structure per click.
* ``report.md`` with ``dice_per_click.png`` and one ``groups_<column>.png`` per group column.

Undefined values (NaN) are written as empty CSV cells and JSON ``null``; a text cell that a spreadsheet would take
for a formula (``=``, ``+``, ``-``, ``@``) starts with a single quote (``data.untrusted.spreadsheet_text``).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Sequence

from data.untrusted import escape_markdown, one_line, spreadsheet_text
from data.writers import atomic_output
from evaluation.fairness import equity_table
from evaluation.metrics import CaseMetrics, MetricAccumulator
from evaluation.runner import PER_CASE_COLUMNS, EvalRun, StepRow

ES_METRICS = ("dice", "iou", "nsd")


def _clean(value: object) -> object:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value: object) -> str:
    """A CSV cell: numbers as numbers, text (case ids, structures from the manifest) safe to open in a spreadsheet."""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, str):
        return spreadsheet_text(value)
    return str(value)


def write_per_case_csv(rows: Sequence[StepRow], path: str | Path) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(PER_CASE_COLUMNS)
            for r in rows:
                w.writerow([_fmt(v) for v in r.csv_row().values()])
    return Path(path)


def click_means(rows: Sequence[StepRow]) -> dict[str, dict[str, dict[str, float]]]:
    """``{structure | "all": {clicks (str): {dice, iou, hd95, nsd, count}}}``; structures sorted."""
    acc = MetricAccumulator()
    for r in rows:
        m = CaseMetrics(r.dice, r.iou, r.hd95, r.nsd)
        acc.add(("all", r.clicks), m)
        acc.add((r.structure, r.clicks), m)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for structure, clicks in sorted(acc.keys(), key=lambda k: (k[0] != "all", k[0], k[1])):
        out.setdefault(structure, {})[str(clicks)] = acc.aggregate((structure, clicks))
    return out


def summarize(run: EvalRun, group_by: Sequence[str] = ()) -> dict:
    """The content of summary.json (see the module doc)."""
    missing = [g for g in group_by if g not in run.attributes and g != "structure"]
    if missing:
        raise ValueError(
            f"--group-by {', '.join(missing)}: no such column in {run.manifest}; "
            f"attribute columns: {', '.join(run.attributes) or 'none'}"
        )
    summary: dict = {
        "model": run.model,
        "manifest": run.manifest,
        "n_cases": run.n_cases,
        **run.settings.as_dict(),
        "clicks": sorted({r.clicks for r in run.rows}),
        "means": click_means(run.rows),
        "equity": {},
        "seconds_total": sum(r.seconds for r in run.rows),
    }
    for column in group_by:
        per_click = {}
        for c in summary["clicks"]:
            flat = [r.flat() for r in run.rows if r.clicks == c]
            per_click[str(c)] = equity_table(flat, group_column=column, metrics=ES_METRICS)
        summary["equity"][column] = per_click
    return _clean(summary)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_dice_per_click(summary: dict, path: str | Path) -> Path:
    """Mean Dice against clicks, one line per structure, ``all`` in black (bars for a one-step protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = summary["means"]
    structures = [s for s in means if s != "all"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    if len(summary["clicks"]) == 1:
        c = str(summary["clicks"][0])
        names = ["all", *structures]
        vals = [means[s][c]["dice"] or 0.0 for s in names]
        ax.barh(names[::-1], vals[::-1], color=["#999"] * len(structures) + ["k"])
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"mean Dice ({summary['protocol']}, clicks = {c})")
    else:
        cmap = plt.get_cmap("tab20")
        for i, s in enumerate(structures):
            xs = [int(c) for c in means[s]]
            ax.plot(xs, [means[s][c]["dice"] for c in means[s]], "o-", ms=3, lw=1, color=cmap(i % 20), label=s)
        xs = [int(c) for c in means["all"]]
        ax.plot(xs, [means["all"][c]["dice"] for c in means["all"]], "o-", lw=2.5, color="k", label="all")
        ax.set_xlabel("clicks (0 = box only)")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.set_xticks(xs)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title(f"{summary['model']}: Dice per click ({summary['protocol']}, margin {summary['margin_px']} px)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def plot_groups(summary: dict, column: str, path: str | Path, *, clicks: int | None = None) -> Path | None:
    """Group means of Dice (all structures pooled) at one click step, M_all as a line, ES-Dice in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = str(summary["clicks"][-1] if clicks is None else clicks)
    res = summary["equity"][column][c]["all"]["dice"]
    if "error" in res:
        return None
    groups = list(res["groups"])
    vals = [res["groups"][g]["mean"] for g in groups]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    bars = ax.bar(groups, vals, color="#4c72b0")
    for b, g in zip(bars, groups):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"n={res['groups'][g]['n']}", ha="center", fontsize=8)
    ax.axhline(res["overall"], color="k", ls="--", lw=1, label=f"all cases: {res['overall']:.3f}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean Dice")
    ax.set_title(f"Dice by {column} ({summary['protocol']}, clicks={c}): ES-Dice {res['es']:.3f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _n(v: object, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _text(value: object) -> str:
    """A manifest's text (a structure, a group, a column name) as literal text on one line of report.md. Why: a cell
    such as ``![x](http://host/beacon.png)`` or ``<img src=x onerror=...>`` was written as is, so a Markdown viewer
    fetched the image or drew the HTML when the report was opened, and a ``|`` broke the tables (session 23)."""
    return escape_markdown(one_line(str(value)))


def _code(value: object) -> str:
    """A manifest's text inside a code span, where Markdown and HTML are inert: one line, no backtick to close it."""
    return one_line(str(value)).replace("`", "'")


def report_markdown(summary: dict, images: dict[str, str]) -> str:
    """report.md text; ``images`` maps a role ('dice', 'group:<column>') to a file name."""
    clicks = [str(c) for c in summary["clicks"]]
    lines = [
        f"# Evaluation: {summary['model']}, protocol `{summary['protocol']}`",
        "",
        f"Manifest `{_code(summary['manifest'])}`, {summary['n_cases']} cases; box margin {summary['margin_px']} px, "
        f"jitter {summary['jitter_px']} px, seed {summary['seed']}; NSD tolerance {summary['nsd_tolerance_mm']} mm; "
        f"empty masks: both empty = {summary['empty_policy']['both_empty']}, HD95 with one empty = "
        f"{summary['empty_policy']['one_empty_hd']}. Model time {summary['seconds_total']:.1f} s.",
        "",
        "## Mean Dice per click",
        "",
        "| structure | n | " + " | ".join(f"{c} clicks" for c in clicks) + " |",
        "|---|---|" + "---|" * len(clicks),
    ]
    for s, per in summary["means"].items():
        n = per[clicks[0]]["count"]
        lines.append(f"| {_text(s)} | {n} | " + " | ".join(_n(per[c]["dice"]) for c in clicks) + " |")
    last = clicks[-1]
    lines += [
        "",
        f"## All metrics at {last} clicks",
        "",
        "| structure | Dice | IoU | HD95 (mm) | NSD |",
        "|---|---|---|---|---|",
    ]
    for s, per in summary["means"].items():
        m = per[last]
        lines.append(f"| {_text(s)} | {_n(m['dice'])} | {_n(m['iou'])} | {_n(m['hd95'], 2)} | {_n(m['nsd'])} |")
    if "dice" in images:
        lines += ["", f"![Dice per click]({images['dice']})"]
    for column, per_click in summary["equity"].items():
        res = per_click[last]
        lines += [
            "",
            f"## Equity-scaled metrics by `{_code(column)}` ({last} clicks)",
            "",
            "ES-M = M_all / (1 + sum_g |M_g - M_all|) (FairSeg); `n/a` where the structure lies in fewer than two groups.",
            "",
            "| structure | ES-Dice | Dice (all) | ES-IoU | ES-NSD | groups: mean Dice (n) |",
            "|---|---|---|---|---|---|",
        ]
        for s, by_metric in res.items():
            d = by_metric["dice"]
            if "error" in d:
                lines.append(f"| {_text(s)} | n/a | | n/a | n/a | {_text(d['error'])} |")
                continue
            groups = ", ".join(f"{_text(g)}: {_n(v['mean'])} ({v['n']})" for g, v in d["groups"].items())
            lines.append(
                f"| {_text(s)} | {_n(d['es'])} | {_n(d['overall'])} | {_n(by_metric['iou'].get('es'))} | "
                f"{_n(by_metric['nsd'].get('es'))} | {groups} |"
            )
        key = f"group:{column}"
        if key in images:
            lines += ["", f"![Dice by {_text(column)}]({images[key]})"]
    return "\n".join(lines) + "\n"


def write_report(run: EvalRun, out_dir: str | Path, group_by: Sequence[str] = ()) -> dict:
    """Write all outputs into ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(run, group_by)
    write_per_case_csv(run.rows, out / "per_case.csv")
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    images: dict[str, str] = {}
    plot_dice_per_click(summary, out / "dice_per_click.png")
    images["dice"] = "dice_per_click.png"
    for column in group_by:
        name = f"groups_{_safe(column)}.png"
        if plot_groups(summary, column, out / name) is not None:
            images[f"group:{column}"] = name
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(report_markdown(summary, images), encoding="utf-8")
    return summary


def plot_protocol_comparison(summaries: dict[str, dict], path: str | Path, *, structure: str = "all") -> Path:
    """Mean Dice against clicks for several runs (label -> summary.json content) on one figure.

    One-step protocols (box, points:N) are single markers at their click count; iterative ones
    are lines. Used for the protocol comparison in docs/evaluation.md.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    markers = iter("osD^v<>phX*")
    for label, s in summaries.items():
        per = s["means"][structure]
        xs = [int(c) for c in per]
        ys = [per[c]["dice"] for c in per]
        if len(xs) == 1:
            ax.plot(xs, ys, next(markers), ms=8, ls="none", label=f"{label}: {ys[0]:.3f}")
        else:
            ax.plot(xs, ys, "o-", ms=3, label=f"{label}: {ys[0]:.3f} -> {ys[-1]:.3f}")
    ax.set_xlabel("clicks (0 = box only; points:N drawn at N)")
    ax.set_ylabel(f"mean Dice ({structure})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    model = next(iter(summaries.values()))["model"] if summaries else ""
    ax.set_title(f"{model}: protocols compared ({structure})")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
