"""What an evaluation does, as checked settings (poslab.config.validate builds them from `eval.*`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PasskeySettings:
    """eval.passkey, with the lengths made absolute."""

    lengths: tuple[int, ...]  # eval lengths, ascending
    depths: tuple[float, ...]  # where the key line sits, fractions of the filler
    trials: int  # sequences per (length, depth) cell
    seed: int  # the same sequences for every run
    threshold: float  # the effective window's accuracy threshold


@dataclass(frozen=True)
class EvalSettings:
    """eval.*, with the lengths made absolute and the protocols listed."""

    lengths: tuple[int, ...]  # eval lengths in tokens, ascending
    protocols: tuple[str, ...]  # in the order they are scored
    stride: int | None  # the sliding protocol's
    num_tokens: int  # held-out tokens asked for (rounded to whole windows of the longest length)
    batch_tokens: int  # tokens per forward pass
    passkey: PasskeySettings | None  # None: no passkey retrieval
