"""The report's extrapolation figure: for each protocol, perplexity against eval length beside the
ratio to the in-length perplexity. Rows are coloured by how their encoding carries position
(rotary blues, bias oranges, absolute greens, none black, "other" grey when the encoding class
cannot be found). Up to 8 rows share one panel per quantity; with more, each mechanism gets its own
panel, and the baseline row is drawn in every panel as a reference. Legends lie outside the panels."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from poslab.evaluation.summaries import WITHIN_TOLERANCE, ratios_to_in_length
from poslab.figures import pyplot
from poslab.report.cells import CONFIDENCE, cell_at
from poslab.report.grouping import Row, scored_lengths
from poslab.report.intervals import t_interval
from poslab.report.loading import Protocol, Run

# beyond this many rows one panel is a tangle: each mechanism gets its own panel
MAX_ROWS_IN_ONE_PANEL = 8

# the mechanisms (poslab.encodings.MECHANISMS) in the order of the columns and the legends, and
# "other" for a row whose encoding class cannot be found
MECHANISMS = ("rotary", "bias", "data-dependent", "absolute", "none", "other")
# a colour map per mechanism, and the part of it used: from light enough to see on white to dark
SHADES = {
    "rotary": ("Blues", 0.45, 1.0),
    "bias": ("Oranges", 0.4, 0.95),
    "data-dependent": ("RdPu", 0.45, 1.0),
    "absolute": ("Greens", 0.4, 1.0),
    "none": ("Greys", 0.75, 1.0),
    "other": ("Greys", 0.35, 0.6),
}
MARKERS = "osD^vP*Xh<>p"
# once a mechanism has more rows than markers, line styles keep them apart (dashed is the baseline's)
LINESTYLES = ("-", "-.", (0, (5, 1, 1, 1, 1, 1)))

QUANTITIES = {"perplexity": "perplexity per byte (held-out)", "ratio": "ratio to the in-length perplexity"}
BASELINE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.6}
IN_LENGTH_STYLE = {"color": "grey", "linewidth": 1.0}
TOLERANCE_STYLE = {"color": "tab:purple", "linestyle": "-.", "linewidth": 1.2}
TRAIN_CONTEXT_STYLE = {"color": "grey", "linestyle": ":", "linewidth": 1.0}

PANEL_SIZE = (4.8, 3.4)  # inches
LEGEND_ENTRY_HEIGHT = 0.2  # inches, at fontsize 8


# what is drawn


@dataclass
class Series:
    points: list[tuple[int, float]]  # (eval length, mean over seeds), finite values only
    bands: list[tuple[int, float, float]]  # (eval length, low, high) of the 95% interval, where there is one


@dataclass
class Curve:
    label: str
    mechanism: str  # one of MECHANISMS
    perplexity: Series
    ratio: Series  # to the in-length perplexity
    first_without_value: int | None  # the first length with no value, for the legend
    train_contexts: set[int]

    @property
    def points(self) -> list[tuple[int, float]]:
        """The perplexities; a curve without any is not drawn."""
        return self.perplexity.points


@cache
def _mechanism_of_target(target: str) -> str:
    # imported here: it imports the encodings (and torch), which the rest of the report never needs
    from poslab.config.registry import mechanism_of_target

    try:
        mechanism = mechanism_of_target(target)
    except Exception:  # a class renamed or removed since the run, or a plugin not installed here
        return "other"
    return mechanism if mechanism in MECHANISMS else "other"


def mechanism_of_row(row: Row) -> str:
    """How the row's encoding carries position, from the `_target_` in its config; "other" when
    the config has none or names a class that cannot be imported."""
    config = row.runs[0].results.get("config")
    encoding = config.get("pos_enc") if isinstance(config, dict) else None
    target = encoding.get("_target_") if isinstance(encoding, dict) else None
    return _mechanism_of_target(target) if isinstance(target, str) else "other"


def ratio_series(runs: list[Run], protocol: Protocol, lengths: list[int]) -> Series:
    """Each run's perplexity over its own in-length perplexity (ratios_to_in_length), averaged
    over seeds as the tables' "(1.25x)" are, with the 95% interval of those ratios."""
    ratios: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        if not run.train_context:
            continue
        by_length = {length: run.ppl_at(protocol, length) for length in lengths}
        for length, ratio in ratios_to_in_length(by_length, run.train_context).items():
            if ratio is not None and math.isfinite(ratio):
                ratios[length].append(ratio)
    points, bands = [], []
    for length in sorted(ratios):
        mean, half_width = t_interval(ratios[length], CONFIDENCE)
        points.append((length, mean))
        if half_width is not None and math.isfinite(half_width):
            # the axis is logarithmic: an interval reaching below half the in-length perplexity
            # says only that the seeds are few, and is cut there
            bands.append((length, max(0.5, mean - half_width), mean + half_width))
    return Series(points, bands)


def curves(rows: list[Row], protocol: Protocol) -> list[Curve]:
    lengths = scored_lengths(rows, protocol)
    result = []
    for row in rows:
        if not row.measured:
            continue
        cells = {length: cell_at(row.runs, protocol, length) for length in lengths}
        finite = {n: cell for n, cell in cells.items() if cell and cell.ppl is not None and math.isfinite(cell.ppl)}
        # a perplexity is at least 1: an interval reaching below says only that the seeds are few
        bands = [
            (n, max(1.0, cell.ppl - cell.half_width), cell.ppl + cell.half_width)
            for n, cell in finite.items()
            if cell.half_width is not None and math.isfinite(cell.half_width)
        ]
        missing = [n for n, cell in cells.items() if cell and n not in finite]
        result.append(
            Curve(
                label=row.label,
                mechanism=mechanism_of_row(row),
                perplexity=Series([(n, cell.ppl) for n, cell in finite.items()], bands),
                ratio=ratio_series(row.runs, protocol, lengths),
                first_without_value=missing[0] if missing else None,
                train_contexts={run.train_context for run in row.runs if run.train_context},
            )
        )
    return result


def drawn_rows(panels: list[tuple[Protocol, list[Curve]]]) -> dict[str, str]:
    """{label: mechanism} of the rows with a point in some panel, grouped by mechanism (in the
    order of MECHANISMS), in the rows' order within each."""
    drawn = {curve.label: curve.mechanism for _, lines in panels for curve in lines if curve.points}
    return dict(sorted(drawn.items(), key=lambda item: MECHANISMS.index(item[1])))


# how each row is drawn


@dataclass(frozen=True)
class LineStyle:
    color: tuple  # RGBA
    marker: str
    linestyle: str | tuple


def _spread(count: int) -> list[int]:
    """Shade indices for `count` rows in legend order, so that neighbours are far apart: 0, 4, 1,
    5, 2, 6, 3, 7 for eight."""
    half = math.ceil(count / 2)
    return [i // 2 + (i % 2) * half for i in range(count)]


def line_styles(mechanisms: dict[str, str]) -> dict[str, LineStyle]:
    """{label: mechanism}, in legend order -> {label: style}: a mechanism's rows are shades of its
    colour map, with a marker each (then a line style each, once the markers run out)."""
    plt = pyplot()
    labels_of: dict[str, list[str]] = defaultdict(list)
    for label, mechanism in mechanisms.items():
        labels_of[mechanism].append(label)
    styles = {}
    for mechanism, labels in labels_of.items():
        name, lightest, darkest = SHADES[mechanism]
        colormap = plt.get_cmap(name)
        # a lone row takes a shade three quarters of the way to the darkest, where the hue still shows
        steps = [k / (len(labels) - 1) for k in range(len(labels))] if len(labels) > 1 else [0.75]
        shades = [colormap(lightest + (darkest - lightest) * step) for step in steps]
        for i, (label, shade) in enumerate(zip(labels, _spread(len(labels)), strict=True)):
            linestyle = LINESTYLES[i // len(MARKERS) % len(LINESTYLES)]
            styles[label] = LineStyle(shades[shade], MARKERS[i % len(MARKERS)], linestyle)
    return styles


def baseline_label(mechanisms: dict[str, str]) -> str | None:
    """The row the small multiples draw in every panel as the reference: the row labelled "rope"
    if there is one; else the plain "rope on ... checkpoint(s)" row of eval runs; else, where
    settings label the rows ("rope (model.net.sink=true)"), the rope row with the most settings
    switched off (none, false, null); else the first rotary row, else none. `mechanisms` is
    {label: mechanism}."""
    if "rope" in mechanisms:
        return "rope"
    # eval rows: plain RoPE on a checkpoint ("rope on rope checkpoints"), not rope+logn
    scored = [label for label in mechanisms if label.startswith("rope on ")]
    if scored:
        return scored[0]
    ropes = [label for label in mechanisms if label.startswith("rope (")]
    if ropes:
        off = ("=none", "=false", "=null", "=False", "=None")
        return max(ropes, key=lambda label: sum(label.count(value) for value in off))  # the first of the most
    return next((label for label, mechanism in mechanisms.items() if mechanism == "rotary"), None)


def legend_texts(panels: list[tuple[Protocol, list[Curve]]], with_mechanism: bool) -> dict[str, str]:
    """{label: its legend entry}: the mechanism where one panel mixes them, and where values stop
    (per protocol when the protocols disagree)."""
    drawn_in: Counter[str] = Counter()
    stops: dict[str, dict[str, int]] = defaultdict(dict)
    for protocol, lines in panels:
        for curve in (curve for curve in lines if curve.points):
            drawn_in[curve.label] += 1
            if curve.first_without_value:
                stops[curve.label][protocol.title] = curve.first_without_value
    texts = {}
    for label, mechanism in drawn_rows(panels).items():
        notes = [mechanism] if with_mechanism else []
        where = stops.get(label, {})
        if len(where) == drawn_in[label] and len(set(where.values())) == 1:
            notes.append(f"no value from {next(iter(where.values()))}")
        elif where:
            notes.append("no value from " + ", ".join(f"{n} under {title}" for title, n in where.items()))
        texts[label] = label + (f" ({'; '.join(notes)})" if notes else "")
    return texts


# the layout


@dataclass(frozen=True)
class PanelSpec:
    protocol: Protocol
    quantity: str  # a key of QUANTITIES
    mechanism: str | None  # None: every row in the panel


def plan_panels(panels: list[tuple[Protocol, list[Curve]]]) -> list[list[PanelSpec]]:
    """The grid, a list of lines of panels. Up to MAX_ROWS_IN_ONE_PANEL rows: a line per protocol,
    [perplexity | ratio]. More: a line per protocol and quantity, a panel per mechanism drawn."""
    rows = drawn_rows(panels)
    if len(rows) <= MAX_ROWS_IN_ONE_PANEL:
        return [[PanelSpec(protocol, quantity, None) for quantity in QUANTITIES] for protocol, _ in panels]
    columns = [mechanism for mechanism in MECHANISMS if mechanism in rows.values()]
    return [
        [PanelSpec(protocol, quantity, mechanism) for mechanism in columns]
        for protocol, _ in panels
        for quantity in QUANTITIES
    ]


# drawing

# the steps of the ticks on a log axis, densest first: a perplexity or a ratio often spans less
# than a decade, where a log axis's own ticks (1, 10, 100) would leave it unlabelled
TICK_STEPS = ((1, 1.1, 1.2, 1.5, 2, 3, 4, 5, 6, 7, 8, 9), (1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1,))


def log_ticks(low: float, high: float, fewest_per_axis: int = 12) -> list[float] | None:
    """The ticks between low and high: the densest of TICK_STEPS whose ticks are at least
    1/`fewest_per_axis` of the axis apart, so that their labels never run into each other. None
    when the span is too narrow for two of them."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    closest = math.log10(high / low) / fewest_per_axis
    chosen = None
    for steps in TICK_STEPS:  # each a part of the one before, so ever fewer ticks
        ticks = [step * 10.0**decade for decade in decades for step in steps if low <= step * 10.0**decade <= high]
        if len(ticks) < 2:
            break
        chosen = ticks
        if all(math.log10(b / a) >= closest for a, b in itertools.pairwise(ticks)):
            break
    return chosen


def _draw_panel(ax, spec: PanelSpec, lines: list[Curve], styles: dict[str, LineStyle], baseline: str | None) -> None:
    drawn = [curve for curve in lines if curve.points]
    shown = [curve for curve in drawn if curve.label == baseline or spec.mechanism in (None, curve.mechanism)]
    # the bands of many rows stack up into one blot: each is the fainter the more rows there are
    band_alpha = min(0.15, 0.6 / max(1, len(shown)))
    for curve in shown:
        series: Series = getattr(curve, spec.quantity)  # curve.perplexity or curve.ratio
        if not series.points:
            continue
        if curve.label == baseline:
            look = BASELINE_STYLE
        else:
            style = styles[curve.label]
            look = {"color": style.color, "marker": style.marker, "linestyle": style.linestyle, "markersize": 6}
        # slight transparency keeps coinciding rows (rope_pi = rope in context) visible
        ax.plot(*zip(*series.points, strict=True), label=curve.label, alpha=0.85, **look)
        if series.bands:
            lengths, low, high = zip(*series.bands, strict=True)
            ax.fill_between(lengths, low, high, color=look["color"], alpha=band_alpha, linewidth=0)

    for context in sorted(set().union(*(curve.train_contexts for curve in drawn))):
        ax.axvline(context, **TRAIN_CONTEXT_STYLE)
    if spec.quantity == "ratio":
        ax.axhline(1.0, **IN_LENGTH_STYLE)
        ax.axhline(1.0 + WITHIN_TOLERANCE, **TOLERANCE_STYLE)
    log_log_axes(ax, sorted({n for curve in drawn for n, _ in curve.points}), x_base=2)
    ax.set_xlabel("eval length (tokens)")
    ax.set_title(f"{spec.protocol.title}: {spec.mechanism or spec.quantity}", fontsize=10)


def log_log_axes(ax, x_ticks: list, x_base: float = 10) -> None:
    """Log scales on both axes, ticked in plain numbers (128 and 1.1, not 2^7 and 1.100): x at
    `x_ticks`, y at log_ticks of its range, and a light grid."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_xscale("log", base=x_base)
    ax.xaxis.set_major_locator(FixedLocator(x_ticks))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale("log")
    ticks = log_ticks(*ax.get_ylim())
    # a span too narrow for the log steps is as good as linear: linear steps then
    ax.yaxis.set_major_locator(FixedLocator(ticks) if ticks else MaxNLocator(4))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(True, alpha=0.3)


def _row_legend(labels: list[str], styles: dict[str, LineStyle], texts: dict[str, str]) -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=s.color, marker=s.marker, linestyle=s.linestyle) for s in map(styles.get, labels)]
    return handles, [texts[label] for label in labels]


def _reference_legend(baseline_text: str | None) -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D

    references = [
        (TRAIN_CONTEXT_STYLE, "training context"),
        (IN_LENGTH_STYLE, "ratio 1: the in-length perplexity"),
        (TOLERANCE_STYLE, f"ratio {1 + WITHIN_TOLERANCE:.2f}: within {WITHIN_TOLERANCE:.0%} of it"),
    ]
    if baseline_text:
        references.insert(0, (BASELINE_STYLE, f"{baseline_text}: the baseline, in every panel"))
    return [Line2D([], [], **style) for style, _ in references], [text for _, text in references]


def extrapolation_figure(panels: list[tuple[Protocol, list[Curve]]]):
    """The figure of the module's docstring; a row keeps its colour and marker in every panel."""
    plt = pyplot()
    grid = plan_panels(panels)
    rows = drawn_rows(panels)
    small_multiples = grid[0][0].mechanism is not None
    baseline = baseline_label(rows) if small_multiples else None
    # the baseline is drawn black, so the shades spread over the other rows
    styles = line_styles({label: mechanism for label, mechanism in rows.items() if label != baseline})
    texts = legend_texts(panels, with_mechanism=not small_multiples)
    lines_of = dict(panels)

    width, height = PANEL_SIZE
    if small_multiples:
        # under the panels, a line of legends: each mechanism's under its column
        legend_height = LEGEND_ENTRY_HEIGHT * max(Counter(rows[label] for label in styles).values()) + 0.4
    else:  # one legend under the panels, four entries a line
        legend_height = LEGEND_ENTRY_HEIGHT * math.ceil((len(styles) + 3) / 4) + 0.2
    figsize = (width * len(grid[0]), height * len(grid) + legend_height)
    fig = plt.figure(figsize=figsize, layout="constrained")  # constrained: room for the legends outside
    heights = [height] * len(grid) + ([legend_height] if small_multiples else [])
    layout = fig.add_gridspec(len(heights), len(grid[0]), height_ratios=heights)
    for i, line in enumerate(grid):
        for j, spec in enumerate(line):
            ax = fig.add_subplot(layout[i, j])
            _draw_panel(ax, spec, lines_of[spec.protocol], styles, baseline)
            if j == 0 or not small_multiples:
                ax.set_ylabel(QUANTITIES[spec.quantity])

    references = _reference_legend(texts.get(baseline))
    if small_multiples:
        for j, spec in enumerate(grid[0]):
            legend_ax = fig.add_subplot(layout[len(grid), j])
            legend_ax.axis("off")  # a place for the legend, no data
            own = [label for label in styles if rows[label] == spec.mechanism]
            handles, labels = _row_legend(own, styles, texts)
            legend_ax.legend(
                handles, labels, loc="upper center", fontsize=8, title=f"{spec.mechanism} rows", frameon=False
            )
        # one column of panels (every row of one mechanism) is too narrow for the references side by side
        ncols = len(references[0]) if len(grid[0]) > 1 else 1
        fig.legend(*references, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    else:
        handles, labels = _row_legend(list(styles), styles, texts)
        handles, labels = handles + references[0], labels + references[1]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8, frameon=False)
    title = [
        f"Length extrapolation: mean over seeds, band: {CONFIDENCE:.0%} interval",
        "ratio: each seed's perplexity over its own at the training context, averaged",
    ]
    if len(grid[0]) == 1:  # a figure one panel wide: the title in shorter lines
        title = [part for line in title for part in textwrap.wrap(line, 44)]
    fig.suptitle("\n".join(title), fontsize=12 if len(grid[0]) > 1 else 10)
    return fig


def plot_extrapolation(panels: list[tuple[Protocol, list[Curve]]], path: Path) -> None:
    plt = pyplot()
    fig = extrapolation_figure(panels)
    fig.savefig(path, dpi=110)
    plt.close(fig)
