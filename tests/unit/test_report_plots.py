"""The report's extrapolation figure on hand-made rows: colours by mechanism, markers, the "other"
group, the baseline rule, the ratio to the in-length perplexity, the small multiples past 8 rows,
and legends that lie outside the panels that hold data."""

import itertools
import math
from pathlib import Path

from matplotlib.colors import rgb_to_hsv

from poslab.report.cells import cell_at
from poslab.report.extrapolation_plot import (
    MARKERS,
    baseline_label,
    curves,
    extrapolation_figure,
    line_styles,
    mechanism_of_row,
    plan_panels,
    plot_extrapolation,
)
from poslab.report.grouping import Experiment, Row
from poslab.report.loading import Protocol, Run

NONOVERLAPPING = Protocol("nonoverlapping")
SLIDING = Protocol("sliding", 64)
TARGETS = {
    "rotary": "poslab.encodings.RoPE",
    "bias": "poslab.encodings.ALiBi",
    "absolute": "poslab.encodings.Learned",
    "none": "poslab.encodings.NoPE",
}
CONTEXT = 128


def score_rows(ppls: dict, protocol: Protocol) -> list[dict]:
    """{eval_length: perplexity, or a row status such as "unsupported"} -> results.json rows."""
    return [
        {
            "eval_length": length,
            "protocol": protocol.name,
            "stride": protocol.stride,
            "status": "ok" if isinstance(ppl, float) else ppl,
            "ppl": ppl if isinstance(ppl, float) else None,
        }
        for length, ppl in ppls.items()
    ]


def fake_row(label: str, target: str | None, *seeds: dict, sliding: dict | None = None, config=True) -> Row:
    """A measured row of one run per seed; `seeds` are their nonoverlapping perplexities, `sliding`
    adds the same sliding ones to every seed; `config=False` leaves the config out."""
    runs = []
    for seed, ppls in enumerate(seeds or [{128: 4.0, 256: 5.0, 512: 7.0}]):
        rows = score_rows(ppls, NONOVERLAPPING) + (score_rows(sliding, SLIDING) if sliding else [])
        pos_enc = {"_target_": target} if target else {}
        results = {
            "status": "ok",
            "run": {"pos_enc": label, "seed": seed, "job": "train"},
            "config": {"pos_enc": pos_enc, "data": {"context": CONTEXT}} if config else None,
            "train": {"train_context": CONTEXT},
            "extrapolation": rows,
        }
        runs.append(Run(results, Path(f"/runs/{label}_s{seed}/results.json")))
    return Row(Experiment(runs, label=label), runs)


def hsv(style) -> tuple[float, float, float]:
    return tuple(rgb_to_hsv(style.color[:3]))


def test_rotary_rows_are_shades_of_one_hue_and_bias_and_absolute_rows_of_others():
    mechanisms = (
        {f"rotary{i}": "rotary" for i in range(10)}
        | {f"bias{i}": "bias" for i in range(6)}
        | {f"absolute{i}": "absolute" for i in range(3)}
        | {"nope": "none"}
    )
    styles = line_styles(mechanisms)

    def hues(mechanism: str) -> list[float]:
        return [hsv(styles[label])[0] for label, m in mechanisms.items() if m == mechanism]

    assert all(0.5 <= hue <= 0.7 for hue in hues("rotary"))  # blues
    assert all(0.0 <= hue <= 0.12 for hue in hues("bias"))  # oranges
    assert all(0.25 <= hue <= 0.45 for hue in hues("absolute"))  # greens
    assert hsv(styles["nope"])[1] < 0.05 and hsv(styles["nope"])[2] < 0.35  # black, no hue
    for mechanism in ("rotary", "bias", "absolute"):
        colors = [styles[label].color for label, m in mechanisms.items() if m == mechanism]
        assert len(set(colors)) == len(colors)
    for mechanism in ("rotary", "bias"):  # three rows cannot all be apart: 0, 2, 1
        colors = [styles[label].color for label, m in mechanisms.items() if m == mechanism]
        # neighbours in the legend are far apart among the shades, never the next one down
        closest = min(math.dist(a[:3], b[:3]) for a, b in itertools.combinations(colors, 2))
        assert all(math.dist(a[:3], b[:3]) > 1.5 * closest for a, b in itertools.pairwise(colors))


def test_markers_and_line_styles_tell_a_mechanisms_rows_apart():
    styles = line_styles({f"rotary{i}": "rotary" for i in range(15)} | {"alibi": "bias", "fire": "bias"})
    rotary = [style for label, style in styles.items() if label.startswith("rotary")]

    assert len({style.marker for style in rotary[: len(MARKERS)]}) == len(MARKERS)
    assert len({(style.marker, style.linestyle) for style in rotary}) == 15
    assert styles["alibi"].marker != styles["fire"].marker
    assert all(style.linestyle != "--" for style in styles.values())  # dashed is the baseline's


def test_an_unimportable_target_or_a_missing_config_is_other_without_raising():
    rows = [
        fake_row("ghost", "poslab.encodings.NoSuchEncoding"),
        fake_row("lost", "no_such_package.Encoding"),
        fake_row("unnamed", None),
        fake_row("bare", TARGETS["rotary"], config=False),
    ]
    assert [mechanism_of_row(row) for row in rows] == ["other"] * 4
    assert [mechanism_of_row(fake_row(m, target)) for m, target in TARGETS.items()] == list(TARGETS)
    saturation = hsv(line_styles({"ghost": "other"})["ghost"])[1]
    assert saturation < 0.05  # grey

    (curve,) = curves(rows[:1], NONOVERLAPPING)
    assert curve.mechanism == "other"
    extrapolation_figure([(NONOVERLAPPING, curves(rows, NONOVERLAPPING))])  # draws


def test_the_baseline_is_rope_else_the_first_rotary_row_else_none():
    assert baseline_label({"alibi": "bias", "rope_pi": "rotary", "rope": "rotary"}) == "rope"
    assert baseline_label({"alibi": "bias", "xpos": "rotary", "rope_pi": "rotary"}) == "xpos"
    assert baseline_label({"alibi": "bias", "nope": "none"}) is None
    # rows labelled by their settings: the rope row with its settings off, not the first rotary one
    labelled = {
        "irope (model.net.sink=false)": "rotary",
        "rope (model.net.sink=true)": "rotary",
        "rope (model.net.sink=false)": "rotary",
    }
    assert baseline_label(labelled) == "rope (model.net.sink=false)"
    # eval rows: plain RoPE on the checkpoints, not the first rotary row nor RoPE with log-n
    scored = {
        "leaky_rerope on rope checkpoints": "rotary",
        "rope+logn on rope checkpoints": "rotary",
        "rope on rope checkpoints": "rotary",
    }
    assert baseline_label(scored) == "rope on rope checkpoints"


def test_the_ratio_is_each_perplexity_over_the_one_at_the_training_context():
    (curve,) = curves([fake_row("rope", TARGETS["rotary"], {128: 4.0, 256: 6.0, 512: 10.0})], NONOVERLAPPING)
    assert curve.ratio.points == [(128, 1.0), (256, 1.5), (512, 2.5)]
    assert curve.ratio.points == [(n, ppl / 4.0) for n, ppl in curve.perplexity.points]
    assert curve.ratio.bands == []  # one seed: no interval

    # over seeds, the mean of each seed's ratio, as the tables' cells: (6/4 + 8/8) / 2
    row = fake_row("rope", TARGETS["rotary"], {128: 4.0, 256: 6.0}, {128: 8.0, 256: 8.0})
    (curve,) = curves([row], NONOVERLAPPING)
    assert curve.ratio.points == [(128, 1.0), (256, 1.25)]
    assert curve.ratio.points[1][1] == cell_at(row.runs, NONOVERLAPPING, 256).ratio
    low, high = {length: (low, high) for length, low, high in curve.ratio.bands}[256]
    assert low < 1.25 < high


def data_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.axison]  # legend places are axes without axis lines


def many_rows() -> list[Row]:
    """Nine rows of four mechanisms under two protocols; fire has no sliding value at all."""
    sliding = {128: 4.0, 256: 4.4, 512: 5.0}
    rows = [fake_row(name, TARGETS["rotary"], sliding=sliding) for name in ("rope", "rope_pi", "xpos", "rope_ntk")]
    rows += [fake_row(name, TARGETS["bias"], sliding=sliding) for name in ("alibi", "kerple")]
    rows += [fake_row("fire", TARGETS["bias"])]
    rows += [fake_row("learned", TARGETS["absolute"], {128: 4.0, 256: "unsupported"}, sliding=sliding)]
    rows += [fake_row("nope", TARGETS["none"], sliding=sliding)]
    return rows


def figure_panels(rows: list[Row]) -> list:
    return [(protocol, curves(rows, protocol)) for protocol in (NONOVERLAPPING, SLIDING)]


def test_more_than_eight_rows_get_a_panel_per_mechanism_with_the_baseline_in_each():
    panels = figure_panels(many_rows())

    grid = plan_panels(panels)
    assert [[(spec.protocol, spec.quantity, spec.mechanism) for spec in line] for line in grid] == [
        [(protocol, quantity, mechanism) for mechanism in ("rotary", "bias", "absolute", "none")]
        for protocol in (NONOVERLAPPING, SLIDING)
        for quantity in ("perplexity", "ratio")
    ]
    fig = extrapolation_figure(panels)
    axes = data_axes(fig)
    assert len(axes) == 16
    for ax in axes:
        baseline = [line for line in ax.get_lines() if line.get_label() == "rope"]
        assert len(baseline) == 1 and baseline[0].get_linestyle() == "--" and baseline[0].get_color() == "black"
    # the bias panels hold the bias rows only, and fire keeps its colour in every panel it is in
    bias_panel_labels = {line.get_label() for line in axes[1].get_lines()}
    assert {"alibi", "kerple", "fire", "rope"} <= bias_panel_labels and "xpos" not in bias_panel_labels
    fire_colors = {tuple(line.get_color()) for ax in axes for line in ax.get_lines() if line.get_label() == "fire"}
    assert len(fire_colors) == 1
    # the ratio panels mark 1 and the tolerance
    ratio_levels = {tuple(line.get_ydata()) for line in axes[4].get_lines()}
    assert (1.0, 1.0) in ratio_levels and (1.1, 1.1) in ratio_levels


def test_up_to_eight_rows_share_a_panel_per_quantity_and_protocol():
    rows = many_rows()[:3] + [many_rows()[7]]
    panels = figure_panels(rows)

    assert [[(spec.quantity, spec.mechanism) for spec in line] for line in plan_panels(panels)] == [
        [("perplexity", None), ("ratio", None)]
    ] * 2
    fig = extrapolation_figure(panels)
    assert len(data_axes(fig)) == 4
    assert all(line.get_linestyle() != "--" for ax in data_axes(fig) for line in ax.get_lines())
    (legend,) = fig.legends
    texts = [text.get_text() for text in legend.get_texts()]
    assert "rope (rotary)" in texts and "learned (absolute; no value from 256 under nonoverlapping)" in texts


def test_legends_lie_outside_the_panels_that_hold_data(tmp_path):
    for rows in (many_rows(), many_rows()[:3]):
        fig = extrapolation_figure(figure_panels(rows))
        fig.canvas.draw()  # lays the figure out
        renderer = fig.canvas.get_renderer()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends
        for legend, ax in itertools.product(legends, data_axes(fig)):
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))

    plot_extrapolation(figure_panels(many_rows()), tmp_path / "extrapolation.png")
    assert (tmp_path / "extrapolation.png").read_bytes()[:4] == b"\x89PNG"
