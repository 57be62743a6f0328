"""poslab-report DIR: every results.json under DIR -> DIR/report.md and DIR/extrapolation.png.

The table has one row per encoding and one column per eval length: perplexity, and in brackets
its ratio to the same run's perplexity at the training context (1x). Seeds are averaged.
Also a Hydra callback that writes the report when a multirun ends.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra.experimental.callback import Callback

from poslab.results import find_results, read_results

log = logging.getLogger(__name__)


def collect(root: str | Path) -> list[dict]:
    runs = []
    for path in find_results(root):
        try:
            runs.append(read_results(path))
        except (ValueError, OSError) as error:
            log.warning("skipping %s: %s", path, error)
    return runs


def _row_by_length(run: dict) -> dict[int, dict]:
    return {row["eval_length"]: row for row in run["extrapolation"]}


def _in_length_ppl(run: dict) -> float | None:
    context = run["train"]["train_context"]
    row = _row_by_length(run).get(context)
    return row["ppl"] if row and row["status"] == "ok" else None


def summarize(runs: list[dict]) -> dict:
    """{encoding: {eval_length: {"ppl", "ratio", "seeds", "status", "reason"}}}, plus the lengths
    and training contexts seen. Ratios are per run, then averaged over seeds."""
    cells: dict[str, dict[int, dict]] = defaultdict(dict)
    per_cell: dict[tuple[str, int], list[tuple[float, float | None]]] = defaultdict(list)
    reasons: dict[tuple[str, int], str] = {}
    lengths, contexts = set(), set()
    for run in runs:
        name = run["run"]["pos_enc"]
        base = _in_length_ppl(run)
        contexts.add(run["train"]["train_context"])
        for length, row in _row_by_length(run).items():
            lengths.add(length)
            if row["status"] == "ok":
                per_cell[name, length].append((row["ppl"], row["ppl"] / base if base else None))
            else:
                reasons[name, length] = row.get("reason") or row["status"]
    for name in sorted({run["run"]["pos_enc"] for run in runs}):
        for length in sorted(lengths):
            values = per_cell.get((name, length))
            if values:
                ratios = [r for _, r in values if r is not None]
                cells[name][length] = {
                    "status": "ok",
                    "seeds": len(values),
                    "ppl": statistics.fmean(p for p, _ in values),
                    "ratio": statistics.fmean(ratios) if ratios else None,
                }
            elif (name, length) in reasons:
                cells[name][length] = {"status": "unsupported", "reason": reasons[name, length]}
    return {"cells": dict(cells), "lengths": sorted(lengths), "contexts": sorted(contexts)}


def markdown_table(summary: dict) -> str:
    lengths = summary["lengths"]
    header = "| encoding | " + " | ".join(f"{n}" for n in lengths) + " |"
    lines = [header, "|---|" + "---:|" * len(lengths)]
    for name, by_length in summary["cells"].items():
        cells = []
        for length in lengths:
            cell = by_length.get(length)
            if cell is None:
                cells.append("")
            elif cell["status"] != "ok":
                cells.append("unsupported")
            elif cell["ratio"] is None:
                cells.append(f"{cell['ppl']:.2f}")
            else:
                cells.append(f"{cell['ppl']:.2f} ({cell['ratio']:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    markers = "osD^vP*Xh<>p"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, by_length) in enumerate(summary["cells"].items()):
        points = sorted((n, c["ppl"]) for n, c in by_length.items() if c["status"] == "ok")
        unsupported = sorted(n for n, c in by_length.items() if c["status"] != "ok")
        label = name + (f" (no value from {unsupported[0]})" if unsupported else "")
        if points:
            # distinct markers and slight transparency keep coinciding runs (rope_pi = rope in context) visible
            ax.plot(*zip(*points, strict=True), marker=markers[i % len(markers)], markersize=7, alpha=0.85, label=label)
    for context in summary["contexts"]:
        ax.axvline(context, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(summary["lengths"])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("eval length (tokens)")
    ax.set_ylabel("perplexity per byte (held-out)")
    ax.set_title("Length extrapolation (dotted: training context)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _describe(runs: list[dict]) -> list[str]:
    first = runs[0]
    cfg, data, train = first["config"], first["data"], first["train"]
    net = cfg["model"]["net"]
    seeds = sorted({run["run"]["seed"] for run in runs})
    return [
        f"- runs: {len(runs)} ({', '.join(sorted({r['run']['pos_enc'] for r in runs}))}); seeds: {seeds}",
        f"- model: {net['n_layer']} layers, width {net['n_embd']}, {net['n_head']} heads, "
        f"{train['parameters']:,} parameters",
        f"- training: context {train['train_context']}, {train['steps']} steps, {train['tokens']:,} tokens "
        f"(first run: {train['wall_time_s']:.0f} s, {train['tokens_per_s']:.0f} tokens/s on "
        f"{first['environment']['device']})",
        f"- data: {data['corpus']}"
        + (f" (Python {data['python']})" if "python" in data else "")
        + f", sha256 {data.get('sha256', 'n/a')[:12]}, byte-level",
        f"- eval: protocol {first['extrapolation'][0]['protocol']}, "
        f"{first['extrapolation'][0]['tokens_scored'] or '-'} held-out tokens scored at every length",
        f"- code: git {str(first['git']['commit'])[:10]}{' (dirty)' if first['git']['dirty'] else ''}",
    ]


def write_report(root: str | Path) -> Path | None:
    root = Path(root)
    runs = collect(root)
    if not runs:
        log.warning("no results.json under %s; no report written", root)
        return None
    summary = summarize(runs)
    table = markdown_table(summary)
    unsupported = [
        (name, cell["reason"])
        for name, row in summary["cells"].items()
        for _, cell in sorted(row.items())
        if cell["status"] != "ok"
    ]
    parts = [
        "# Length extrapolation report",
        "",
        "Perplexity per byte on the same held-out tokens at every eval length (columns, in tokens); "
        "in brackets, the ratio to the same run's perplexity at its training context. "
        "Mean over seeds.",
        "",
        table,
        "",
        "![perplexity vs eval length](extrapolation.png)",
        "",
        "## Set-up",
        *_describe(runs),
    ]
    if unsupported:
        parts += ["", "## Unsupported lengths", *[f"- {name}: {reason}" for name, reason in unsupported]]
    notes = sorted({run["config"].get("report_note") for run in runs} - {None})
    if notes:
        parts += ["", "## What this study can and cannot show", *notes]
    path = root / "report.md"
    path.write_text("\n".join(parts) + "\n")
    plot(summary, root / "extrapolation.png")
    print(f"\n{table}\n\nwrote {path} and {root / 'extrapolation.png'}")
    return path


class ReportCallback(Callback):
    """Hydra callback: write the report for the sweep folder when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            write_report(config.hydra.sweep.dir)
        except Exception as error:  # a report failure must not hide the finished runs
            log.error("report for %s failed: %s", config.hydra.sweep.dir, error)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="poslab-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="folder searched recursively for results.json (e.g. outputs/multirun/...)")
    args = parser.parse_args(argv)
    if not Path(args.dir).is_dir():
        parser.error(f"{args.dir}: not a folder")
    if write_report(args.dir) is None:
        print(f"poslab-report: error: no results.json under {args.dir}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
