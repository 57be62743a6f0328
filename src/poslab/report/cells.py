"""A table cell: one eval length of one row under one protocol, over its seeds (mean, 95%
Student-t interval, ratio to the in-length perplexity), and the tables made of them."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from poslab.report.grouping import Row, scored_lengths
from poslab.report.intervals import t_interval
from poslab.report.loading import Protocol, Run
from poslab.report.text import ROW_STATUS_TEXT, count_text, escape_cells

# The confidence of the intervals over seeds
CONFIDENCE = 0.95


@dataclass
class Cell:
    """One eval length of one row under one protocol, over its seeds."""

    ppl: float | None  # mean over the seeds with a finite perplexity at this length
    half_width: float | None  # of the 95% Student-t interval around that mean; None under two seeds
    ratio: float | None  # mean over those seeds of ppl / the same run's ppl at its training context
    without_value: list[tuple[object, str]]  # (seed, why) for the seeds with no finite perplexity


def cell_at(runs: list[Run], protocol: Protocol, length: int) -> Cell | None:
    """None when no run scored this length under this protocol."""
    if not any(length in run.rows_at(protocol) for run in runs):
        return None
    ppls, ratios, without_value = [], [], []
    for run in runs:
        ppl = run.ppl_at(protocol, length)
        if ppl is None:
            row = run.rows_at(protocol).get(length)
            status = "not scored" if row is None else row["status"]
            # a row marked ok whose perplexity is missing or not a number is non-finite all the same
            status = "non_finite" if status == "ok" else status
            without_value.append((run.seed, ROW_STATUS_TEXT.get(status, status.replace("_", " "))))
            continue
        ppls.append(ppl)
        in_context = run.ppl_at(protocol, run.train_context)
        if in_context:
            ratios.append(ppl / in_context)
    mean, half_width = t_interval(ppls, CONFIDENCE) if ppls else (None, None)
    return Cell(
        ppl=mean,
        half_width=half_width,
        ratio=statistics.fmean(ratios) if ratios else None,
        without_value=without_value,
    )


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.ppl is None:
        return " / ".join(sorted({why for _, why in cell.without_value}))
    text = f"{cell.ppl:.2f}" if math.isfinite(cell.ppl) else "non-finite"
    if cell.half_width is not None and math.isfinite(cell.half_width):
        text += f" ± {cell.half_width:.2f}"
    if cell.ratio is not None and math.isfinite(cell.ratio):
        text += f" ({cell.ratio:.2f}x)"
    if cell.without_value:
        text += "; " + ", ".join(f"seed {seed}: {why}" for seed, why in cell.without_value)
    return text


def job_outcome(run: Run) -> str:
    """What happened to a job that has no numbers: "failed", or "diverged at step N"."""
    if run.status == "diverged":
        step = run.train.get("diverged_at_step")
        return "diverged" if step is None else f"diverged at step {step}"
    return run.status


def markdown_table(rows: list[Row], protocol: Protocol | None) -> str:
    """One protocol's table; failed and diverged jobs are in every table. With no protocol (no
    length scored anywhere, only failed jobs), one column says what happened."""
    lengths = scored_lengths(rows, protocol) if protocol else []
    columns = [str(length) for length in lengths] or ["result"]
    lines = [
        "| encoding | parameters | seeds | " + " | ".join(columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        if row.measured:
            seeds = str(len(row.runs))
            cells = [cell_text(cell_at(row.runs, protocol, length)) for length in lengths] or [""]
        else:
            seeds = f"seed {row.runs[0].seed}"
            cells = [job_outcome(row.runs[0])] + [""] * (len(columns) - 1)
        parameters = " / ".join(sorted({count_text(run.train.get("parameters")) for run in row.runs}))
        lines.append("| " + " | ".join(escape_cells([row.label, parameters, seeds, *cells])) + " |")
    return "\n".join(lines)


def seed_count_note(rows: list[Row]) -> str | None:
    """Say where the tables show no interval because a row has one seed."""
    measured = [row for row in rows if row.measured]
    single = [row.label for row in measured if len(row.runs) == 1]
    if not single:
        return None
    if len(single) == len(measured):
        return f"One seed per row: no interval is shown (a {CONFIDENCE:.0%} interval needs at least 2 seeds)."
    needs = f"a {CONFIDENCE:.0%} interval needs at least 2 seeds"
    return f"Rows with one seed show no interval ({needs}): {', '.join(single)}."
