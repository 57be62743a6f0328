"""What every figure shares: matplotlib without a display, and the passkey heatmap.

The heatmap is drawn here only, so wandb's image and the report's panel show a grid the same way
round: eval length across, key depth down, accuracy in percent in each cell.
"""

from __future__ import annotations

import math

# a passkey cell without an accuracy says why in a word (unsupported length, out of memory)
PASSKEY_CELL_WORDS = {"unsupported": "n/a", "out_of_memory": "OOM"}


def passkey_cell_word(status: str) -> str:
    return PASSKEY_CELL_WORDS.get(status, "-")


def by_depth(grid: list[list]) -> list[list]:
    """A results.json passkey grid, [length][depth], as the heatmap draws it: [depth][length]."""
    return [list(line) for line in zip(*grid, strict=True)]


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display, no GUI on a cluster node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def passkey_heatmap(ax, lengths: list[int], depths: list[float], accuracy, missing=None):
    """Draw accuracy[depth][length] (fractions; None where a cell has no accuracy) on `ax`, the
    percent in each cell and `missing[depth][length]` (a word) where there is none; grey cells
    have no accuracy. Returns the image, for a colour bar."""
    import numpy as np

    plt = pyplot()
    colormap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    percent = np.array([[math.nan if a is None else 100 * a for a in line] for line in accuracy], dtype=float)
    image = ax.imshow(np.ma.masked_invalid(percent), cmap=colormap, vmin=0, vmax=100, aspect="auto")
    for i, line in enumerate(accuracy):
        for j, value in enumerate(line):
            text = (missing[i][j] if missing else "-") if value is None else f"{100 * value:.0f}"
            # white on the dark low end of the colour map, black on the light high end
            color = "white" if value is not None and value < 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    ax.set_yticks(range(len(depths)), [f"{depth:g}" for depth in depths])
    ax.set_xlabel("context length (tokens)")
    fraction = all(0 <= depth <= 1 for depth in depths)
    ax.set_ylabel(f"depth of the key line ({'fraction' if fraction else 'percent'} of the filler)")
    return image
