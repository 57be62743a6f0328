"""poslab-report DIR: every results.json under DIR -> DIR/report.md and plots (--html: report.html).

With --html, DIR/report.html is the same report as one self-contained page, plots inline.

One table per evaluation protocol (nonoverlapping windows; a sliding window with its stride), one
row per experiment. Runs whose configs differ only in the seed (or in keys that only label a run)
are seeds of one experiment: a cell is the mean perplexity over the seeds at one eval length, the
half-width of a 95% Student-t interval over them, and in brackets the ratio to the same run's
perplexity at its training context under the same protocol (per run, then averaged). Runs that
differ in anything else are separate rows, labelled by what differs. A failed or diverged job is
a row that says so, never numbers. Nothing is dropped silently: failed and diverged jobs, job
folders without a results.json and unreadable results.json files are listed as problems, and
fast_dev_run jobs as left out.

Beside report.md: extrapolation.png (perplexity and its ratio to the in-length perplexity against
eval length, for each protocol, bands over seeds; a panel per mechanism past 8 rows);
per_position_<protocol>.png (loss by position in the window, a panel per row) and passkey.png
(passkey retrieval accuracy by length and depth, a panel per row) when the runs recorded them;
training_length.png where encodings ran at several trainer.max_steps (report/training_length.py).

The console script and the sweep-end callback are in poslab.commands.report.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from poslab.evaluation.summaries import WITHIN_TOLERANCE
from poslab.report.cells import CONFIDENCE, markdown_table, seed_count_note
from poslab.report.command_lines import command_lines
from poslab.report.describe import describe_setup
from poslab.report.grouping import Row, build_rows, protocols_of
from poslab.report.html import write_html
from poslab.report.loading import Protocol, collect
from poslab.report.plots import (
    curves,
    draw_or_say_why_not,
    passkey_grid,
    plot_extrapolation,
    plot_passkey,
    plot_per_position,
    position_panels,
)
from poslab.report.problems import lengths_without_value_lines, problem_lines, reuse_lines
from poslab.report.summary import summary_line
from poslab.report.tasks import task_of, tasks_part
from poslab.report.text import relative_to_root
from poslab.report.training_length import training_length_part

log = logging.getLogger("poslab.report")

REPORT_FILENAME = "report.md"
PLOT_FILENAME = "extrapolation.png"
PER_POSITION_PLOT_PREFIX = "per_position_"  # + the protocol's slug + .png
PASSKEY_PLOT_FILENAME = "passkey.png"


@dataclass
class Report:
    path: Path | None  # report.md; None when the folder has no results.json
    plot: Path | None  # extrapolation.png; None when there is no plot
    problems: list[str]  # one line each: failed or diverged jobs, folders without results, unreadable files
    rows: list[Row] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)  # every plot written
    html: Path | None = None  # report.html, when asked for


INTRO = (
    "Perplexity per byte on the same held-out tokens at every eval length (columns, in tokens), a "
    "table per evaluation protocol. One row per experiment: runs that differ only in the seed are "
    f"its seeds, and a cell is their mean ± the half-width of a {CONFIDENCE:.0%} Student-t interval over them "
    "(n - 1 degrees of freedom); in brackets, the ratio to the same run's perplexity at its "
    "training context under the same protocol (taken per run, then averaged). Rows are labelled "
    "by the settings that differ."
)

SUMMARY_INTRO = (
    f"How far each row holds up: the longest eval length up to which every length from the "
    f"training context on stays within {WITHIN_TOLERANCE:.0%} of the perplexity at the training context "
    "(the ratio in the tables); and, where the runs were tested on passkeys, the effective window "
    "and the accuracy within the training context."
)

POSITION_INTRO = (
    "Mean next-token loss (nats per token) by position in the window, one line per eval length, "
    "mean over seeds. Positions are binned in doubling widths, each bin drawn at its last position "
    "(log scale). The dashed line is the training context: positions to its right were never "
    "trained on."
)

PASSKEY_INTRO = (
    "Accuracy of retrieving a passkey hidden at each depth of a context of each length, in percent "
    "of the trials, mean over seeds; n/a: a length the encoding cannot serve, OOM: out of memory."
)


def write_report(root: str | Path, html: bool = False) -> Report:
    root = Path(root)
    found = collect(root)
    problems = problem_lines(found, root)
    if not found.runs and not found.unreadable:  # the caller says so, once
        return Report(path=None, plot=None, problems=problems)

    # fast_dev_run checks the wiring on a batch or two: its numbers measure nothing
    left_out = [run for run in found.runs if run.is_fast_dev_run]
    measured_runs = [run for run in found.runs if not run.is_fast_dev_run]
    # task runs have their own part (report/tasks.py); the perplexity tables are language models'
    task_lines, task_plots = tasks_part(measured_runs, root)
    language_model_runs = [run for run in measured_runs if task_of(run) is None]
    rows = build_rows(language_model_runs)
    protocols = protocols_of(rows)
    # with nothing scored anywhere (only failed jobs), one table still says what happened
    tables = [(protocol, markdown_table(rows, protocol)) for protocol in protocols] or [
        (None, markdown_table(rows, None))
    ]

    parts = ["# Length extrapolation report"]
    plot_path, why_no_plot = None, None
    if rows or not task_lines:
        parts += ["", INTRO]
        if note := seed_count_note(rows):
            parts += ["", note]
        if summary := [summary_line(row, protocols) for row in rows if row.measured]:
            parts += ["", "## Summary", "", SUMMARY_INTRO, "", *summary]
        for protocol, table in tables:
            parts += ["", f"## Perplexity, protocol {protocol.title}" if protocol else "## Results", "", table]
        plot_path, why_no_plot = extrapolation_part(rows, protocols, root, fast_dev_runs=len(left_out))
        parts += ["", f"No plot: {why_no_plot}." if why_no_plot else f"![perplexity vs eval length]({PLOT_FILENAME})"]
    training_lines, training_plots = training_length_part(rows, protocols, root)
    parts += training_lines + task_lines
    if left_out:
        folders = ", ".join(relative_to_root(run.folder, root) for run in left_out)
        parts += ["", f"Left out of the table: {len(left_out)} fast_dev_run job(s), which check wiring: {folders}."]
    position_lines, position_plots = per_position_part(rows, protocols, root)
    passkey_lines, passkey_plots = passkey_part(rows, root)
    parts += position_lines + passkey_lines
    every_row = rows + build_rows([run for run in measured_runs if task_of(run) is not None])
    parts += ["", "## Commands", *command_lines(every_row, root)]
    parts += ["", "## Set-up", *describe_setup(every_row)]
    if problems:
        parts += ["", "## Problems", *[f"- {problem}" for problem in problems]]
    if reused := reuse_lines(found.runs, root):
        parts += ["", "## Reused and resumed jobs", *reused]
    if without_value := lengths_without_value_lines(rows, protocols):
        parts += ["", "## Lengths without a value", *without_value]
    notes = sorted({run.flat_config.get("report_note") for run in found.runs} - {None})
    if notes:
        parts += ["", "## What this study can and cannot show", *notes]

    path = root / REPORT_FILENAME
    path.write_text("\n".join(parts) + "\n")
    images = ([plot_path] if plot_path else []) + training_plots + position_plots + passkey_plots + task_plots
    html_path = None
    if html:
        html_path = write_html(path)
    also = ", ".join(str(item) for item in [*images, *([html_path] if html_path else [])])
    wrote = f"wrote {path}" + (f" and {also}" if also else "") + (f" (no plot: {why_no_plot})" if why_no_plot else "")
    shown = [table for _, table in tables] if rows or not task_lines else []
    shown += ["\n".join(line for line in task_lines if line.startswith("|"))] if task_lines else []
    tables_text = "\n\n".join(shown)
    print(f"\n{tables_text}\n\n{wrote}")
    return Report(path=path, plot=plot_path, problems=problems, rows=rows, images=images, html=html_path)


def extrapolation_part(
    rows: list[Row], protocols: list[Protocol], root: Path, fast_dev_runs: int = 0
) -> tuple[Path | None, str | None]:
    """extrapolation.png, for each protocol that has a finite perplexity; or why there is none."""
    panels = []
    for protocol in protocols:
        lines = curves(rows, protocol)
        if any(line.points for line in lines):
            panels.append((protocol, lines))
    path = root / PLOT_FILENAME
    if not any(row.measured for row in rows) and fast_dev_runs:
        no_data = f"the only measured jobs are {fast_dev_runs} fast_dev_run job(s), left out"
    else:
        no_data = None if panels else "no run has a finite perplexity at any eval length"
    why_not = draw_or_say_why_not(functools.partial(plot_extrapolation, panels), path, no_data)
    return (None, why_not) if why_not else (path, None)


def per_position_part(rows: list[Row], protocols: list[Protocol], root: Path) -> tuple[list[str], list[Path]]:
    """A plot of the loss by position per protocol that recorded it, and its section of
    report.md; nothing when no run recorded it."""
    lines, written, with_data = [], [], set()
    for protocol in protocols:
        panels = position_panels(rows, protocol)
        if not panels:
            continue
        with_data |= {panel.label for panel in panels}
        path = root / f"{PER_POSITION_PLOT_PREFIX}{protocol.slug}.png"
        why_not = draw_or_say_why_not(functools.partial(plot_per_position, protocol, panels), path)
        if why_not:
            lines += ["", f"No plot of the loss by position for protocol {protocol.title}: {why_not}."]
        else:
            lines += ["", f"![loss by position, protocol {protocol.title}]({path.name})"]
            written.append(path)
    for earlier in root.glob(f"{PER_POSITION_PLOT_PREFIX}*.png"):
        if earlier not in written:  # an earlier report's, never to be read as this one's
            earlier.unlink()
    if not with_data:
        return [], []
    without = [row.label for row in rows if row.measured and row.label not in with_data]
    if without:
        lines += ["", f"No loss by position recorded for: {', '.join(without)}."]
    return ["", "## Loss by position in the window", "", POSITION_INTRO, *lines], written


def passkey_part(rows: list[Row], root: Path) -> tuple[list[str], list[Path]]:
    """passkey.png, a heatmap per row that was tested on passkeys, and its section of report.md;
    nothing when no run was."""
    grids = [grid for row in rows if row.measured and (grid := passkey_grid(row))]
    path = root / PASSKEY_PLOT_FILENAME
    if not grids:
        draw_or_say_why_not(plot_passkey, path, "no passkey results")  # removes an earlier report's
        return [], []
    why_not = draw_or_say_why_not(functools.partial(plot_passkey, grids), path)
    lines = ["", "## Passkey retrieval", "", PASSKEY_INTRO, ""]
    lines.append(f"No passkey plot: {why_not}." if why_not else f"![passkey retrieval accuracy]({path.name})")
    without = [row.label for row in rows if row.measured and not any(run.passkey for run in row.runs)]
    if without:
        lines += ["", f"No passkey results for: {', '.join(without)}."]
    return lines, [] if why_not else [path]
