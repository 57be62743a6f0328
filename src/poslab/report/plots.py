"""The report's figures: perplexity against eval length (extrapolation_plot.py, re-exported here),
loss by position in the window (a panel per row), passkey retrieval (a heatmap per row)."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poslab.figures import passkey_cell_word, passkey_heatmap, pyplot

# the extrapolation figure has a module of its own; the report imports every figure from here
from poslab.report.extrapolation_plot import curves, plot_extrapolation  # noqa: F401
from poslab.report.grouping import Row, scored_lengths
from poslab.report.loading import Protocol
from poslab.report.text import is_finite, one_line

log = logging.getLogger("poslab.report")


def _panel_grid(plt, count: int, width: float, height: float, columns: int = 3, **subplots):
    """A figure of `count` panels, at most `columns` a line; the axes in reading order."""
    columns = min(columns, count)
    lines = math.ceil(count / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(width * columns, height * lines), squeeze=False, **subplots)
    axes = list(axes.flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return fig, axes[:count]


def draw_or_say_why_not(draw: Callable[[Path], None], path: Path, no_data: str | None = None) -> str | None:
    """Draw a plot to `path`, unless `no_data` says why there is none; return why there is none.
    A plot that cannot be drawn must not cost the report. Without a plot, the file of an earlier
    report is removed, so that it is never read as this one's."""
    why_not = no_data
    if why_not is None:
        try:
            draw(path)
        except Exception as error:
            log.error("plot %s failed: %s", path, error)
            why_not = f"the plot could not be drawn ({type(error).__name__}: {one_line(error)})"
    if why_not and path.exists():
        path.unlink()
        why_not += f"; the {path.name} of an earlier report was removed"
    return why_not


# loss by position in the window


@dataclass
class PositionPanel:
    label: str
    train_context: int | None
    # eval length -> (bin end, mean loss over seeds): a bin [start, end) of 0-based positions is
    # drawn at its last position counted from 1, which is also the number of tokens its last
    # target sees, so the training context falls where training stopped
    lines: dict[int, list[tuple[int, float]]]


def position_panels(rows: list[Row], protocol: Protocol) -> list[PositionPanel]:
    """A panel per measured row that recorded the loss by position under this protocol."""
    panels = []
    for row in rows:
        if not row.measured:
            continue
        lines = {}
        for length in scored_lengths([row], protocol):
            losses: dict[int, list[float]] = defaultdict(list)
            for run in row.runs:
                scored = run.rows_at(protocol).get(length)
                if not scored or scored["status"] != "ok" or not scored.get("per_position"):
                    continue
                bins = scored["per_position"]
                for end, loss in zip(bins["bin_end"], bins["mean_loss"], strict=True):
                    if is_finite(loss):
                        losses[end].append(loss)
            if losses:
                lines[length] = [(end, statistics.fmean(values)) for end, values in sorted(losses.items())]
        if lines:
            panels.append(PositionPanel(row.label, row.train_context, lines))
    return panels


def plot_per_position(protocol: Protocol, panels: list[PositionPanel], path: Path) -> None:
    """A panel per row, a line per eval length; shared axes, so that rows compare at a glance."""
    plt = pyplot()
    from matplotlib.ticker import ScalarFormatter

    lengths = sorted({length for panel in panels for length in panel.lines})
    colormap = plt.get_cmap("viridis")
    color = {length: colormap(i / max(1, len(lengths) - 1)) for i, length in enumerate(lengths)}
    fig, axes = _panel_grid(plt, len(panels), width=5.0, height=3.6, sharex=True, sharey=True)
    for ax, panel in zip(axes, panels, strict=True):
        for length, points in sorted(panel.lines.items()):
            ax.plot(*zip(*points, strict=True), marker=".", color=color[length], label=f"eval length {length}")
        if panel.train_context:
            ax.axvline(panel.train_context, color="grey", linestyle="--", linewidth=1, label="training context")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 64, not 2^6
        ax.set_title(panel.label, fontsize=9)
        ax.set_xlabel("position in the window (tokens)")
        ax.set_ylabel("mean loss (nats per token)")
        ax.grid(True, alpha=0.3)
    # one legend for all panels: a panel may lack the lengths its encoding cannot serve
    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    axes[0].legend(legend.values(), legend.keys(), fontsize=7)
    fig.suptitle(
        f"Loss by position in the window, protocol {protocol.title}: mean over seeds, "
        "log bins drawn at their last position; dashed: training context"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# passkey retrieval


@dataclass
class PasskeyGrid:
    label: str
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float | None]]  # [depth][length]: mean over the seeds that scored the cell
    why_not: list[list[str]]  # [depth][length]: "" where there is an accuracy, else why not, in a word
    effective_windows: list[int | None]  # one per seed
    trials: list[int]  # one per seed


def passkey_grid(row: Row) -> PasskeyGrid | None:
    recorded = [run.passkey for run in row.runs if run.passkey]
    if not recorded:
        return None
    scores: dict[tuple, list[float]] = defaultdict(list)
    statuses: dict[tuple, list[str]] = defaultdict(list)
    for passkey in recorded:
        for i, length in enumerate(passkey["lengths"]):
            for j, depth in enumerate(passkey["depths"]):
                status = passkey["status"][i][j] if passkey.get("status") else "ok"
                accuracy = passkey["accuracy"][i][j]
                if status == "ok" and is_finite(accuracy):
                    scores[length, depth].append(accuracy)
                else:
                    statuses[length, depth].append(status)
    cells = scores.keys() | statuses.keys()
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    accuracy = [[statistics.fmean(scores[n, d]) if scores.get((n, d)) else None for n in lengths] for d in depths]

    def why_no_accuracy(cell: tuple) -> str:
        if scores.get(cell):
            return ""
        status = (statuses.get(cell) or ["not scored"])[0]
        return passkey_cell_word(status)

    return PasskeyGrid(
        label=row.label,
        lengths=lengths,
        depths=depths,
        accuracy=accuracy,
        why_not=[[why_no_accuracy((n, d)) for n in lengths] for d in depths],
        effective_windows=[passkey.get("effective_window") for passkey in recorded],
        trials=sorted({passkey["trials"] for passkey in recorded if isinstance(passkey.get("trials"), int)}),
    )


def plot_passkey(grids: list[PasskeyGrid], path: Path) -> None:
    """A heatmap per row (poslab.figures.passkey_heatmap, as wandb's): eval length across, key
    depth down, accuracy in percent in each cell."""
    plt = pyplot()
    fig, axes = _panel_grid(plt, len(grids), width=5.4, height=4.0)
    for ax, grid in zip(axes, grids, strict=True):
        image = passkey_heatmap(ax, grid.lengths, grid.depths, grid.accuracy, grid.why_not)
        windows = sorted({str(window) for window in grid.effective_windows})
        ax.set_title(f"{grid.label}\neffective window: {', '.join(windows)}", fontsize=9)
        fig.colorbar(image, ax=ax, label="accuracy (%)")
    trials = {trial for grid in grids for trial in grid.trials}
    per_cell = f", {trials.pop()} trials per cell" if len(trials) == 1 else ""
    fig.suptitle(f"Passkey retrieval accuracy (%), mean over seeds{per_cell}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
