"""The diagnostics' figures (matplotlib, Agg backend: no display needed). Each function draws one
PNG from numbers computed elsewhere; the training context is always marked."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter
from PIL import Image  # matplotlib's own dependency

from poslab.diagnostics.attention import STATISTICS, statistic_table
from poslab.figures import pyplot

plt = pyplot()

CONTEXT_LINE = {"color": "grey", "linestyle": ":", "linewidth": 1.2}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    # a 256-colour palette loses nothing visible in line plots and colormaps, and a third of the bytes
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def _length_axis(ax, lengths):
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def wavelengths_figure(
    name: str,
    wavelengths: np.ndarray,
    train_context: int,
    turning_dims: int,
    closed_form: int,
    head_dim: int,
    base: float,
    path: Path,
) -> Path:
    """Tokens per turn of every pair, against the training context."""
    pairs = np.arange(len(wavelengths))
    finite = np.isfinite(wavelengths)
    turning = wavelengths < train_context
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.bar(pairs[turning], wavelengths[turning], color="tab:blue", label="turns fully within the context")
    ax.bar(pairs[~turning & finite], wavelengths[~turning & finite], color="tab:orange", label="never a full turn")
    if (~finite).any():
        ax.scatter(pairs[~finite], np.full((~finite).sum(), train_context), marker="x", color="black")
        ax.scatter([], [], marker="x", color="black", label="does not rotate (x)")
    ax.axhline(train_context, **CONTEXT_LINE, label=f"training context ({train_context} tokens)")
    ax.set_yscale("log")
    ax.set_xlabel("pair index i (0 = fastest)")
    ax.set_ylabel("wavelength 2pi / theta_i (tokens)")
    ax.set_title(
        f"{name}: wavelength per pair (head size {head_dim}, base {base:g})\n"
        f"{turning_dims} of {head_dim} dims turn within {train_context} tokens; "
        f"2 ceil((d/2) log_base(T/2pi)) = {closed_form}"
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    return _save(fig, path)


def frequency_moves_figure(
    moves: dict[str, dict[float, np.ndarray]], original_wavelengths: np.ndarray, train_context: int, path: Path
) -> Path:
    """Each scaling member's frequency per pair divided by RoPE's, one panel per sequence length."""
    scales = sorted({scale for by_scale in moves.values() for scale in by_scale})
    fig, axes = plt.subplots(1, len(scales), figsize=(4.4 * len(scales), 4.2), sharey=True, squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for member, by_scale in moves.items():
            # a pair that stops rotating (ratio 0) cannot sit on a log axis: draw it at the bottom
            ratio = np.where(by_scale[scale] > 0, by_scale[scale], np.nan)
            ax.plot(original_wavelengths, ratio, marker=".", label=member)
        ax.axvline(train_context, **CONTEXT_LINE)
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        ax.set_title(f"sequence of {scale:g}x the context ({int(scale * train_context)} tokens)")
        ax.set_xlabel("pair's RoPE wavelength (tokens; dotted: context)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("frequency / RoPE frequency")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("How each scaling member moves each pair's frequency (partial: pairs off the axis stop rotating)")
    return _save(fig, path)


def interpolated_positions_figure(
    positions: dict[str, dict[float, np.ndarray]], train_context: int, path: Path
) -> Path:
    """Where positions 0..L-1 land under each member, for the fastest, a middle and the slowest pair."""
    members = list(positions)
    scales = sorted({scale for by_scale in positions.values() for scale in by_scale})
    fig, axes = plt.subplots(
        len(members), len(scales), figsize=(4.2 * len(scales), 2.6 * len(members)), squeeze=False, sharey="col"
    )
    for row, member in enumerate(members):
        for col, scale in enumerate(scales):
            ax = axes[row][col]
            effective = positions[member][scale]  # (L, P)
            actual = np.arange(len(effective))
            pairs = effective.shape[1]
            for pair, style in ((0, "-"), (pairs // 2, "--"), (pairs - 1, "-.")):
                ax.plot(actual, effective[:, pair], style, label=f"pair {pair}")
            ax.plot(actual, actual, color="lightgrey", linewidth=0.8, label="unscaled")
            ax.axhspan(0, train_context - 1, color="tab:green", alpha=0.12, label="trained positions")
            ax.axvline(train_context, **CONTEXT_LINE)
            ax.set_title(f"{member}, {scale:g}x ({len(effective)} tokens)", fontsize=9)
            if row == len(members) - 1:
                ax.set_xlabel("position in the sequence (tokens)")
            if col == 0:
                ax.set_ylabel("effective position")
            ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Interpolation as positions: angle / unscaled frequency, per pair (green: what training saw)")
    return _save(fig, path)


def similarity_figure(
    name: str,
    heatmap: np.ndarray,
    heatmap_positions: np.ndarray,
    heatmap_label: str,
    curve: np.ndarray,
    curve_label: str,
    train_context: int,
    look: dict | None,
    path: Path,
    reference_curve: tuple[str, np.ndarray] | None = None,
) -> Path:
    """Left: similarity of query position m to key position n. Right: as a function of m - n."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.5]})
    masked = np.where(np.tril(np.ones_like(heatmap, dtype=bool)), heatmap, np.nan)  # causal: n <= m
    extent = (heatmap_positions[0], heatmap_positions[-1], heatmap_positions[-1], heatmap_positions[0])
    image = left.imshow(masked, extent=extent, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=left, label=heatmap_label)
    left.axhline(train_context, **CONTEXT_LINE)
    left.axvline(train_context, **CONTEXT_LINE)
    left.set_xlabel("key position n (tokens)")
    left.set_ylabel("query position m (tokens)")
    left.set_title(f"{name}: position m vs position n", fontsize=10)

    distances = np.arange(len(curve))
    right.plot(distances, curve, linewidth=0.8, label=name)
    if reference_curve is not None:
        right.plot(distances, reference_curve[1], linewidth=0.8, alpha=0.6, label=reference_curve[0])
    right.axvline(train_context, **CONTEXT_LINE, label=f"training context ({train_context})")
    if look is not None:
        level = (1 - look["tolerance"]) * look["at_distance_1"]
        right.axhline(
            level, color="tab:red", linewidth=0.8, linestyle="--", label=f"{1 - look['tolerance']:g} x distance 1"
        )
        where = look["largest_beyond_context_at"]
        right.plot([where], [curve[where]], "o", color="tab:red", label=f"most alike beyond the context: {where}")
    right.set_xscale("symlog", linthresh=train_context / 8)
    right.set_xlim(0, distances[-1])
    right.set_xlabel("distance m - n (tokens, log beyond the first few)")
    right.set_ylabel(curve_label)
    answer = ""
    if look is not None:
        back = (
            f"comes back within {look['tolerance']:.0%} at {look['returns_at']}"
            if look["returns_at"]
            else (f"never back within {look['tolerance']:.0%} of distance 1")
        )
        answer = f"\nat {look['max_distance']}: {look['relative_at_max_distance']:.3f} x distance 1; {back}"
    right.set_title(f"{name}: as a function of m - n{answer}", fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    return _save(fig, path)


def bias_figure(
    name: str,
    heatmaps: np.ndarray,
    heatmap_positions: np.ndarray,
    curves: np.ndarray,
    threshold: float,
    reach: list[int | None],
    train_context: int,
    path: Path,
) -> Path:
    """Top: the bias over (query, key) positions for each head. Bottom: the bias by distance."""
    n_head = len(curves)
    shown = min(n_head, 8)
    fig = plt.figure(figsize=(max(10, 2.4 * shown), 7.5))
    grid = fig.add_gridspec(2, shown, height_ratios=[1, 1.3])
    extent = (heatmap_positions[0], heatmap_positions[-1], heatmap_positions[-1], heatmap_positions[0])
    for h in range(shown):
        ax = fig.add_subplot(grid[0, h])
        masked = np.where(np.tril(np.ones_like(heatmaps[h], dtype=bool)), heatmaps[h], np.nan)
        image = ax.imshow(masked, extent=extent, cmap="magma", aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("key position (tokens)", fontsize=8)
        if h == 0:
            ax.set_ylabel("query position (tokens)", fontsize=8)
    curve_ax = fig.add_subplot(grid[1, :])
    distances = np.arange(curves.shape[1])
    for h in range(n_head):
        label = f"head {h}: below {threshold:g} from {reach[h]}" if reach[h] is not None else f"head {h}: never below"
        line = curve_ax.plot(distances, curves[h] - curves[h][0], label=label)[0]
        if reach[h] is not None:
            curve_ax.axvline(reach[h], color=line.get_color(), linewidth=0.8, linestyle="--")
    curve_ax.axhline(
        threshold, color="tab:red", linewidth=0.8, label=f"threshold {threshold:g} (weight x{np.exp(threshold):.2g})"
    )
    curve_ax.axvline(train_context, **CONTEXT_LINE, label=f"training context ({train_context})")
    curve_ax.set_xscale("symlog", linthresh=train_context / 8)
    curve_ax.set_xlim(0, distances[-1])
    curve_ax.set_ylim(max(float(np.nanmin(curves - curves[:, :1])), 8 * threshold), 0.5)
    curve_ax.set_xlabel("distance i - j (tokens)")
    curve_ax.set_ylabel("bias - bias at distance 0 (logits)")
    curve_ax.set_title(f"{name}: how far back each head can see (dashed: first distance below the threshold)")
    curve_ax.grid(True, alpha=0.3)
    curve_ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def forget_gates_figure(
    name: str, mean_log_gates: np.ndarray, threshold: float, reach: np.ndarray, train_context: int, path: Path
) -> Path:
    """FoX: each head's mean bias by distance, m * mean log f, a panel per layer."""
    n_layer, n_head = mean_log_gates.shape
    fig, axes = plt.subplots(1, n_layer, figsize=(4 * n_layer, 3.6), sharey=True, squeeze=False)
    distances = np.arange(0, 16 * train_context + 1)
    for layer, ax in enumerate(axes[0]):
        for h in range(n_head):
            gate = float(np.exp(mean_log_gates[layer, h]))
            ax.plot(
                distances,
                distances * mean_log_gates[layer, h],
                label=f"head {h}: gate {gate:.3f}, reach {reach[layer, h]:g}",
            )
        ax.axhline(threshold, color="tab:red", linewidth=0.8)
        ax.axvline(train_context, **CONTEXT_LINE)
        ax.set_xscale("symlog", linthresh=max(1, train_context / 8))
        ax.set_xlim(0, distances[-1])
        ax.set_ylim(8 * threshold, 0.5)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("distance i - j (tokens)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("mean bias: distance x mean log f")
    fig.suptitle(f"{name}: how far back each head sees on held-out text (red: {threshold:g}; dotted: context)")
    return _save(fig, path)


STATISTIC_LABELS = {
    "entropy": "attention entropy (nats)",
    "mean_distance": "mean attention distance (tokens)",
    "share_beyond_context": "attention mass beyond the context",
}


def attention_figure(variant: str, rows: list[dict], train_context: int, path: Path) -> Path:
    """Per layer (rows) and statistic (columns), each head against the eval length."""
    lengths = [row["eval_length"] for row in rows]
    tables = {statistic: statistic_table(rows, statistic) for statistic in STATISTICS}
    n_layer, n_head = tables["entropy"].shape[1:]
    fig, axes = plt.subplots(n_layer, 3, figsize=(13, 2.6 * n_layer + 0.6), squeeze=False, sharex=True)
    for col, statistic in enumerate(STATISTICS):
        uniform = [row.get("uniform", {}).get(statistic) for row in rows]
        uniform = np.array([np.nan if u is None else u for u in uniform])
        for layer in range(n_layer):
            ax = axes[layer][col]
            for head in range(n_head):
                ax.plot(lengths, tables[statistic][:, layer, head], marker="o", markersize=3, label=f"head {head}")
            ax.plot(lengths, uniform, color="grey", linestyle="--", linewidth=1, label="uniform attention")
            ax.axvline(train_context, **CONTEXT_LINE)
            _length_axis(ax, lengths)
            ax.grid(True, alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"layer {layer}")
            if layer == 0:
                ax.set_title(STATISTIC_LABELS[statistic], fontsize=10)
            if layer == n_layer - 1:
                ax.set_xlabel("eval length (tokens; dotted: training context)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{variant}: attention per layer and head as the sequence grows")
    return _save(fig, path)


def attention_by_variant_figure(rows_by_variant: dict[str, list[dict]], train_context: int, path: Path) -> Path:
    """One checkpoint under several encodings: each layer's mean over heads, a line per variant."""
    rows_by_variant = {v: rows for v, rows in rows_by_variant.items() if any(r["status"] == "ok" for r in rows)}
    first = next(iter(rows_by_variant.values()))
    lengths = [row["eval_length"] for row in first]
    n_layer = statistic_table(first, "entropy").shape[1]
    fig, axes = plt.subplots(n_layer, 3, figsize=(13, 2.6 * n_layer + 0.6), squeeze=False, sharex=True)
    markers = "osD^vP*Xh"
    for col, statistic in enumerate(STATISTICS):
        for i, (variant, rows) in enumerate(rows_by_variant.items()):
            with warnings.catch_warnings():  # a length with no value for any head stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(statistic_table(rows, statistic), axis=2)
            for layer in range(n_layer):
                # distinct markers and some transparency keep coinciding variants (all equal at 1x) visible
                axes[layer][col].plot(
                    lengths, means[:, layer], marker=markers[i % len(markers)], markersize=5, alpha=0.8, label=variant
                )
        uniform = np.array([np.nan if u is None else u for u in (r.get("uniform", {}).get(statistic) for r in first)])
        for layer in range(n_layer):
            ax = axes[layer][col]
            ax.plot(lengths, uniform, color="grey", linestyle="--", linewidth=1, label="uniform attention")
            ax.axvline(train_context, **CONTEXT_LINE)
            _length_axis(ax, lengths)
            ax.grid(True, alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"layer {layer}")
            if layer == 0:
                ax.set_title(f"{STATISTIC_LABELS[statistic]}, mean over heads", fontsize=10)
            if layer == n_layer - 1:
                ax.set_xlabel("eval length (tokens; dotted: training context)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("One checkpoint under each variant: attention as the sequence grows")
    return _save(fig, path)
