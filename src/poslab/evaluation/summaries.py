"""The numbers a run is summarised by, each rule in one place: wandb's summaries and the report's
summary line read them from here.

"Holds up to L": every scored eval length from the training context up to L has a perplexity
within `WITHIN_TOLERANCE` of the perplexity at the training context. Contiguous on purpose: a
model that fails at 2x and passes at 4x holds up to 1x. The ratio is exact (a table cell that
shows 1.10x may be just above).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# "within 10 percent of the in-length perplexity"
WITHIN_TOLERANCE = 0.10


def longest_within(
    ratios: Mapping[int, float | None], train_context: int | None, tolerance: float = WITHIN_TOLERANCE
) -> int | None:
    """The longest eval length up to which every scored length from `train_context` on has a ratio
    (perplexity over the in-length perplexity) of at most 1 + tolerance; `ratios` maps each scored
    eval length to its ratio, None where it has no value. None when the training context itself
    was not scored or has no value."""
    lengths = sorted(length for length in ratios if train_context and length >= train_context)
    if not lengths or lengths[0] != train_context:
        return None
    longest = None
    for length in lengths:
        ratio = ratios[length]
        if ratio is None or ratio > 1 + tolerance:
            break
        longest = length
    return longest


def ratios_to_in_length(ppl_by_length: Mapping[int, float | None], train_context: int) -> dict[int, float | None]:
    """Each length's perplexity over the perplexity at the training context (None where either is
    missing)."""
    reference = ppl_by_length.get(train_context)
    return {
        length: (ppl / reference if ppl is not None and reference else None) for length, ppl in ppl_by_length.items()
    }


def mean_accuracy(values: Iterable[float | None]) -> float | None:
    """The mean of the accuracies that were scored; None when none was."""
    scored = [value for value in values if value is not None]
    return sum(scored) / len(scored) if scored else None
