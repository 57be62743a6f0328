"""The summary line of each row: how far it holds up under each protocol (the one rule of
poslab.evaluation.summaries), its passkey figures, and whether it was trained with the passkey mix."""

from __future__ import annotations

from poslab.evaluation.summaries import WITHIN_TOLERANCE, longest_within
from poslab.report.cells import CONFIDENCE, cell_at
from poslab.report.grouping import Row, scored_lengths
from poslab.report.intervals import t_interval
from poslab.report.loading import Protocol
from poslab.report.text import is_finite


def summary_line(row: Row, protocols: list[Protocol]) -> str:
    """How far the row holds up under each protocol, its passkey figures, and whether it was
    trained with the passkey mix."""
    holds, without_in_length = [], []
    for protocol in protocols:
        longest = longest_within_tolerance(row, protocol)
        if longest is None:
            if scored_lengths([row], protocol):
                without_in_length.append(protocol.title)
            continue
        length, is_longest_scored = longest
        extent = f"{length / row.train_context:g}x" + (", the longest scored" if is_longest_scored else "")
        holds.append(f"{length} tokens ({extent}) under {protocol.title}")
    sentences = []
    if holds:
        sentences.append(f"Within {WITHIN_TOLERANCE:.0%} of the in-length perplexity up to " + ", ".join(holds) + ".")
    if without_in_length:
        sentences.append(f"No perplexity at the training context under {', '.join(without_in_length)}.")
    if passkey := passkey_summary(row):
        sentences.append(passkey)
    mixes = sorted({run.passkey_mix for run in row.runs if run.passkey_mix})
    if mixes:
        sentences.append(f"Trained with the passkey mix (data.passkey_mix={', '.join(map(str, mixes))}).")
    return f"- {row.label}: " + " ".join(sentences or ["no perplexity."])


def longest_within_tolerance(row: Row, protocol: Protocol) -> tuple[int, bool] | None:
    """The longest eval length the row holds up to (poslab.evaluation.summaries.longest_within, on
    the ratios in its cells: the exact ratio, as wandb's extrap/max_len_within_10pct, so a cell
    showing 1.10x may be just above), and whether it is the longest length scored. None without a
    perplexity at the training context."""
    context = row.train_context
    lengths = [length for length in scored_lengths([row], protocol) if context and length >= context]
    ratios = {length: cell_at(row.runs, protocol, length).ratio for length in lengths}
    longest = longest_within(ratios, context, WITHIN_TOLERANCE)
    return None if longest is None else (longest, longest == lengths[-1] and len(lengths) > 1)


def passkey_summary(row: Row) -> str | None:
    recorded = [run.passkey for run in row.runs if run.passkey]
    if not recorded:
        return None
    windows = sorted({p.get("effective_window") for p in recorded}, key=lambda w: (w is None, w or 0))
    thresholds = sorted({p["threshold"] for p in recorded if is_finite(p.get("threshold"))})
    threshold = f" (threshold {', '.join(f'{t:.0%}' for t in thresholds)})" if thresholds else ""
    if windows == [None]:
        text = f"Passkey: no effective window{threshold}"
    else:
        known = [str(w) for w in windows if w is not None]
        spread = known[0] if len(known) == 1 else f"{known[0]} to {known[-1]}"
        text = f"Passkey: effective window {spread} tokens{threshold}"
        if None in windows:
            text += ", none for some seeds"
    accuracies = [p["in_length_accuracy"] for p in recorded if is_finite(p.get("in_length_accuracy"))]
    if accuracies:
        mean, half_width = t_interval(accuracies, CONFIDENCE)
        interval = f" ± {100 * half_width:.0f}" if half_width is not None else ""
        text += f", in-length accuracy {100 * mean:.0f}{interval}%"
    return text + "."


def passkey_mix_line(rows: list[Row]) -> str | None:
    """Which rows were trained with the passkey mix: said whenever a run was, or was tested on
    passkeys."""
    measured = [row for row in rows if row.measured]
    if not any(run.passkey or run.passkey_mix for row in measured for run in row.runs):
        return None
    mixed = [row for row in measured if any(run.passkey_mix for run in row.runs)]
    if not mixed:
        return "- trained with the passkey mix: none"

    def named(row: Row) -> str:
        if "data.passkey_mix" in row.experiment.label_keys:  # the label says it already
            return row.label
        return f"{row.label} (data.passkey_mix={', '.join(map(str, sorted({run.passkey_mix for run in row.runs})))})"

    names = ", ".join(named(row) for row in mixed)
    without = [row.label for row in measured if not any(run.passkey_mix for run in row.runs)]
    return f"- trained with the passkey mix: {names}" + (f"; without: {', '.join(without)}" if without else "")
