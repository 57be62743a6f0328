"""The training-length view: where runs differ in `trainer.max_steps`, each encoding's in-length
perplexity and its ratio at 4x and 16x against the steps it trained for, one line per encoding.

Rows stay apart by their step count (it is a key of their config, so grouping.py makes each
count its own row); here the rows that differ in nothing else are laid side by side as one
series, so that a reader sees where each curve and the order between them settle. A series is an
encoding (or, for poslab-eval rows, a variant on a checkpoint of one encoding) with the same
settings apart from the step count. Beside report.md: training_length.png.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from poslab.figures import pyplot
from poslab.report.cells import cell_at
from poslab.report.extrapolation_plot import log_log_axes
from poslab.report.grouping import Row
from poslab.report.loading import Protocol
from poslab.report.plots import draw_or_say_why_not
from poslab.report.text import ABSENT, value_text

STEPS_KEY = "trainer.max_steps"
RATIO_MULTIPLES = (4, 16)
PLOT_FILENAME = "training_length.png"

INTRO = (
    "The same encodings trained for different numbers of steps (same schedule shape: warmup, then "
    "cosine to the last step), one line per encoding: the perplexity at the training context, and "
    "the ratio of the perplexity at 4x and 16x to it, mean over seeds. Bytes seen are steps times "
    "the batch. The order at each step count ranks the rows by their ratio at 16x (lowest first)."
)


@dataclass
class Series:
    """One encoding's rows at each step count: {steps: row}."""

    name: str
    rows: dict[int, Row]

    def tokens(self, steps: int) -> int | None:
        train = self.rows[steps].runs[0].train
        return train.get("tokens")


def series_name(row: Row) -> str:
    """The row's label without its step count: the name, then every other setting that differs."""
    experiment = row.experiment
    first = experiment.first
    name = experiment.name
    if first.job == "eval":  # "rope_yarn on rope checkpoint (3_rope_1000steps_s0)" -> no checkpoint
        name = f"{first.info.get('variant') or first.encoding} on {first.info.get('trained_as') or 'unknown'}"
    settings = [
        f"{key}={value_text(experiment.config.get(key, ABSENT))}" for key in experiment.label_keys if key != STEPS_KEY
    ]
    return name + (f" ({', '.join(settings)})" if settings else "")


def training_length_series(rows: list[Row]) -> list[Series]:
    """The series with rows at two step counts or more, in the rows' order."""
    by_name: dict[str, dict[int, Row]] = defaultdict(dict)
    for row in rows:
        if not row.measured or row.experiment.config is None:
            continue
        steps = row.experiment.config.get(STEPS_KEY)
        if isinstance(steps, int) and steps > 0:
            by_name[series_name(row)][steps] = row
    return [Series(name, dict(sorted(found.items()))) for name, found in by_name.items() if len(found) > 1]


def in_length(row: Row, protocol: Protocol) -> float | None:
    cell = cell_at(row.runs, protocol, row.train_context) if row.train_context else None
    return cell.ppl if cell and cell.ppl is not None and math.isfinite(cell.ppl) else None


def ratio_at(row: Row, protocol: Protocol, multiple: int) -> float | None:
    cell = cell_at(row.runs, protocol, multiple * row.train_context) if row.train_context else None
    return cell.ratio if cell and cell.ratio is not None and math.isfinite(cell.ratio) else None


def tokens_text(tokens: int) -> str:
    return f"{tokens / 1e6:.1f}M tokens" if tokens >= 100_000 else f"{tokens:,} tokens"


def _number(value: float | None, suffix: str = "") -> str:
    return "" if value is None else f"{value:.2f}{suffix}"


def markdown_tables(series: list[Series], protocol: Protocol) -> list[str]:
    """Three tables (in-length perplexity, ratio at 4x, ratio at 16x), rows the series, columns
    the step counts; then the order at 16x at each step count."""
    counts = sorted({steps for one in series for steps in one.rows})
    header = "| encoding | " + " | ".join(f"{steps} steps" for steps in counts) + " |"
    rule = "|---|" + "---:|" * len(counts)
    measures = [("Perplexity at the training context", lambda row: _number(in_length(row, protocol)))]
    measures += [
        (f"Ratio at {multiple}x", lambda row, multiple=multiple: _number(ratio_at(row, protocol, multiple), "x"))
        for multiple in RATIO_MULTIPLES
    ]
    lines = []
    for title, measure in measures:
        lines += ["", f"{title}:", "", header, rule]
        for one in series:
            cells = [measure(one.rows[steps]) if steps in one.rows else "" for steps in counts]
            lines.append(f"| {one.name} | " + " | ".join(cells) + " |")
    longest = max(RATIO_MULTIPLES)
    lines += ["", f"Order at {longest}x (ratio, lowest first):", ""]
    for steps in counts:
        ranked = sorted(
            (ratio, one.name)
            for one in series
            if steps in one.rows and (ratio := ratio_at(one.rows[steps], protocol, longest)) is not None
        )
        tokens = next((one.tokens(steps) for one in series if steps in one.rows and one.tokens(steps)), None)
        seen = f" ({tokens_text(tokens)})" if tokens else ""
        lines.append(f"- {steps} steps{seen}: " + ", ".join(f"{name} {ratio:.2f}x" for ratio, name in ranked))
    lines += ["", "Where the order settles (the series with a ratio at every step count):", ""]
    lines += [settling_line(series, protocol, multiple) for multiple in RATIO_MULTIPLES]
    return lines


def settling_line(series: list[Series], protocol: Protocol, multiple: int) -> str:
    """The shortest step count from which the order by ratio at `multiple` x no longer changes,
    or, where it still changes at the last count, the pairs that swap there. Exact order of the
    means: whether a swap is larger than the seed-to-seed spread is for the reader to judge."""
    counts = sorted({steps for one in series for steps in one.rows})
    ratios = {
        one.name: [ratio_at(one.rows[steps], protocol, multiple) if steps in one.rows else None for steps in counts]
        for one in series
    }
    compared = {name: values for name, values in ratios.items() if None not in values}
    left_out = sorted(set(ratios) - set(compared))
    apart = f" ({', '.join(left_out)} left out: not at every count)" if left_out else ""
    if len(compared) < 2 or len(counts) < 2:
        return f"- at {multiple}x: fewer than two series at every step count{apart}"
    orders = [tuple(sorted(compared, key=lambda name, at=at: compared[name][at])) for at in range(len(counts))]
    settled = len(counts) - 1
    while settled > 0 and orders[settled - 1] == orders[-1]:
        settled -= 1
    if settled == 0:
        return f"- at {multiple}x: the same order at every step count{apart}"
    if settled < len(counts) - 1:
        return f"- at {multiple}x: the same order from {counts[settled]} steps on{apart}"
    before, last = orders[-2], orders[-1]
    pair = lambda a, b, at: f"{compared[a][at]:.2f}x, {compared[b][at]:.2f}x"  # noqa: E731
    swaps = [
        f"{a} and {b} ({pair(a, b, -2)} -> {pair(a, b, -1)})"
        for i, a in enumerate(before)
        for b in before[i + 1 :]
        if last.index(a) > last.index(b)
    ]
    return (
        f"- at {multiple}x: still changes at the last step count; between {counts[-2]} and {counts[-1]} steps "
        + "; ".join(swaps)
        + f" swap{apart}"
    )


def plot_training_length(series: list[Series], protocols: list[Protocol], path: Path) -> None:
    """A line of panels per protocol: in-length perplexity, ratio at 4x, ratio at 16x, against
    steps (log scale), one line per series."""
    plt = pyplot()
    colours = plt.get_cmap("tab10").colors + plt.get_cmap("tab20").colors[1::2]  # 20, the first 10 distinct
    markers = "osD^v<>p*hX"
    counts = sorted({steps for one in series for steps in one.rows})
    measures = [("perplexity at the training context", in_length)]
    measures += [
        (f"ratio at {multiple}x", lambda row, protocol, multiple=multiple: ratio_at(row, protocol, multiple))
        for multiple in RATIO_MULTIPLES
    ]
    fig, axes = plt.subplots(
        len(protocols), len(measures), figsize=(5 * len(measures), 3.8 * len(protocols)), squeeze=False
    )
    for line_of_panels, protocol in zip(axes, protocols, strict=True):
        for ax, (title, measure) in zip(line_of_panels, measures, strict=True):
            for number, one in enumerate(series):
                points = [(steps, measure(row, protocol)) for steps, row in one.rows.items()]
                points = [(steps, value) for steps, value in points if value is not None]
                if points:
                    look = {"color": colours[number % len(colours)], "marker": markers[number % len(markers)]}
                    ax.plot(*zip(*points, strict=True), label=one.name, alpha=0.85, **look)
            if title.startswith("ratio"):
                ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
            log_log_axes(ax, counts)
            ax.set_xlabel("training steps")
            ax.set_title(f"{title}\n{protocol.title}", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_length_part(rows: list[Row], protocols: list[Protocol], root: Path) -> tuple[list[str], list[Path]]:
    """The report's section and figure, or nothing where no encoding ran at two step counts."""
    series = training_length_series(rows)
    if not series or not protocols:
        return [], []
    lines = ["", "## Training length", "", INTRO]
    for protocol in protocols:
        lines += ["", f"### Protocol {protocol.title}", *markdown_tables(series, protocol)]
    path = root / PLOT_FILENAME
    why_not = draw_or_say_why_not(lambda target: plot_training_length(series, protocols, target), path)
    lines += ["", f"No plot: {why_not}." if why_not else f"![against training steps]({PLOT_FILENAME})"]
    return lines, ([] if why_not else [path])
