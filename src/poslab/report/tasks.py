"""The report's part for algorithmic-task runs (task=NAME): per task, a table of exact match by
test length (mean over seeds ± the half-width of a 95% Student-t interval, token accuracy in
brackets), a summary line per row (the longest input length up to which exact match stays at
least 0.9, and at least 0.5), and tasks.png (exact match against input length, a panel per task,
the training range shaded).

Rows are built per task, so a row's label names only what differs between runs of that task
(e.g. data.positions=randomized), not the settings that make one task unlike another.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from poslab.figures import pyplot
from poslab.report.cells import CONFIDENCE, job_outcome
from poslab.report.extrapolation_plot import MECHANISMS, line_styles, mechanism_of_row
from poslab.report.grouping import Row, build_rows
from poslab.report.intervals import t_interval
from poslab.report.loading import Run
from poslab.report.plots import draw_or_say_why_not
from poslab.report.text import count_text, escape_cells

TASK_PLOT_FILENAME = "tasks.png"
# "holds exact match >= t up to length L": every test length up to L, from the shortest on
THRESHOLDS = (0.9, 0.5)

TASK_INTRO = (
    "Exact match: the share of test examples whose whole target greedy decoding reproduces (the "
    "NoPE study's metric); in brackets, token accuracy: the share of answer tokens right under "
    "teacher forcing (the Chomsky suite's). Columns are input lengths in the task's unit, a "
    f"cell the mean over seeds ± the half-width of a {CONFIDENCE:.0%} Student-t interval. The "
    "shaded band of the plot is the training range."
)


def task_of(run: Run) -> str | None:
    """The task a run was trained on: its `task` block's name, or for a job that wrote none (it
    failed or diverged before scoring) the name its config's task class gives."""
    if name := (run.results.get("task") or {}).get("name"):
        return name
    config = run.results.get("config")
    target = (config.get("task") or {}).get("_target_") if isinstance(config, dict) else None
    return _task_name_of_target(target) if isinstance(target, str) else None


@cache
def _task_name_of_target(target: str) -> str:
    try:  # a class renamed since the run, or a plugin not installed here: its name in snake case
        from hydra.utils import get_class

        return str(get_class(target).name)
    except Exception:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", target.rsplit(".", 1)[-1]).lower()


@dataclass
class TaskCell:
    exact: float | None  # mean over the seeds that scored this length
    half_width: float | None
    token: float | None
    why_not: str | None  # a status word where no seed scored it (unsupported, out of memory)


def task_rows(run: Run) -> dict[int, dict]:
    return {row["length"]: row for row in (run.results.get("task") or {}).get("rows", [])}


def task_cell(runs: list[Run], length: int) -> TaskCell | None:
    rows = [task_rows(run).get(length) for run in runs]
    if not any(rows):
        return None
    scored = [row for row in rows if row and row["status"] == "ok" and row["exact_match"] is not None]
    if not scored:
        return TaskCell(None, None, None, sorted({row["status"] for row in rows if row})[0].replace("_", " "))
    exact, half_width = t_interval([row["exact_match"] for row in scored], CONFIDENCE)
    tokens = [row["token_accuracy"] for row in scored if row["token_accuracy"] is not None]
    return TaskCell(exact, half_width, sum(tokens) / len(tokens) if tokens else None, None)


def cell_text(cell: TaskCell | None) -> str:
    if cell is None:
        return ""
    if cell.exact is None:
        return cell.why_not
    text = f"{cell.exact:.2f}"
    if cell.half_width is not None and math.isfinite(cell.half_width):
        text += f" ± {cell.half_width:.2f}"
    return text + (f" ({cell.token:.2f})" if cell.token is not None else "")


def test_lengths(rows: list[Row]) -> list[int]:
    return sorted({length for row in rows if row.measured for run in row.runs for length in task_rows(run)})


def train_range(rows: list[Row]) -> tuple[int, int] | None:
    ranges = {tuple(run.results["task"]["train_lengths"]) for row in rows if row.measured for run in row.runs}
    return ranges.pop() if len(ranges) == 1 else None


def holds_up_to(row: Row, lengths: list[int], threshold: float) -> int | None:
    """The longest test length up to which every test length has mean exact match >= threshold;
    None when the shortest already falls below."""
    longest = None
    for length in lengths:
        cell = task_cell(row.runs, length)
        if cell is None or cell.exact is None or cell.exact < threshold:
            break
        longest = length
    return longest


def summary_line(task: str, row: Row, lengths: list[int]) -> str:
    longest_train = (train_range([row]) or (None, None))[1]

    def where(length: int | None) -> str:
        if length is None:
            return f"not even at length {lengths[0]}"
        ratio = f" ({length / longest_train:g}x)" if longest_train else ""
        return f"up to length {length}{ratio}" + (", the longest tested" if length == lengths[-1] else "")

    held = [f"exact match >= {t:g} {where(holds_up_to(row, lengths, t))}" for t in THRESHOLDS]
    return f"- {task}, {row.label}: " + "; ".join(held) + "."


def markdown_table(rows: list[Row]) -> str:
    lengths = test_lengths(rows)
    lines = [
        "| encoding | parameters | seeds | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|---:|---:|" + "---:|" * len(lengths),
    ]
    for row in rows:
        if row.measured:
            seeds, cells = str(len(row.runs)), [cell_text(task_cell(row.runs, n)) for n in lengths]
        else:
            seeds, cells = f"seed {row.runs[0].seed}", [job_outcome(row.runs[0])] + [""] * (len(lengths) - 1)
        parameters = " / ".join(sorted({count_text(run.train.get("parameters")) for run in row.runs}))
        lines.append("| " + " | ".join(escape_cells([row.label, parameters, seeds, *cells])) + " |")
    return "\n".join(lines)


def plot_tasks(panels: list[tuple[str, list[Row]]], path: Path) -> None:
    """Exact match against input length, a panel per task; a row keeps its colour and marker
    (by mechanism, as in extrapolation.png) in every panel."""
    plt = pyplot()
    mechanism = {row.label: mechanism_of_row(row) for _, rows in panels for row in rows if row.measured}
    look = line_styles(dict(sorted(mechanism.items(), key=lambda item: MECHANISMS.index(item[1]))))
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 3.6 * lines + 1.2), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (task, rows) in zip(axes.flat, panels, strict=False):
        lengths = test_lengths(rows)
        if train := train_range(rows):
            ax.axvspan(train[0], train[1], color="grey", alpha=0.15, linewidth=0)
        for row in rows:
            if not row.measured:
                continue
            points = [(n, c.exact) for n in lengths if (c := task_cell(row.runs, n)) and c.exact is not None]
            if points:
                style = look[row.label]
                ax.plot(
                    *zip(*points, strict=True),
                    label=f"{row.label} ({mechanism[row.label]})",
                    color=style.color,
                    marker=style.marker,
                    linestyle=style.linestyle,
                    alpha=0.85,
                )
        for threshold in THRESHOLDS:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(task)
        ax.set_xlabel("input length (task's unit)")
        ax.set_ylabel("exact match")
        ax.grid(True, alpha=0.3)
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.suptitle(f"Exact match by input length: mean over seeds; shaded: training range; dotted: {THRESHOLDS}")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / 5), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tasks_part(runs: list[Run], root: Path) -> tuple[list[str], list[Path]]:
    """The task section of report.md and tasks.png; nothing when no run is a task run."""
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if name := task_of(run):
            by_task[name].append(run)
    path = root / TASK_PLOT_FILENAME
    if not by_task:
        draw_or_say_why_not(lambda _: None, path, "no task runs")  # removes an earlier report's
        return [], []
    panels = [(task, build_rows(by_task[task])) for task in sorted(by_task)]
    lines = ["", "## Algorithmic tasks", "", TASK_INTRO]
    summary = [summary_line(task, row, test_lengths(rows)) for task, rows in panels for row in rows if row.measured]
    if summary:
        lines += ["", "How far each row holds: the longest input length up to which every test length has the "
                  "exact match given.", "", *summary]  # fmt: skip
    for task, rows in panels:
        lines += ["", f"### {task}", "", markdown_table(rows)]
    why_not = draw_or_say_why_not(lambda p: plot_tasks(panels, p), path)
    lines += ["", f"No task plot: {why_not}." if why_not else f"![exact match by input length]({path.name})"]
    return lines, [] if why_not else [path]
