"""Passkey sequences: filler text with one line stating a random 5-digit key, and a question.

The task of Mohtashami and Jaggi (2023, "Landmark Attention"), as the Position Interpolation
paper (Chen et al., 2023, arXiv 2306.15595) uses it to measure an effective context window. The
sequences are built here, for the training mix (poslab.data.datamodule.PasskeyMix) and for the
evaluation (poslab.evaluation.passkey).

All in bytes (the tokenizer is byte-level). A passkey sequence of eval length L is L + 1 bytes:

    filler[:k] + " pass key=NNNNN. " + filler[k:] + " pass key=" + "NNNNN"

The model reads the first L bytes; the last 5 targets are the key's digits. The filler is a
contiguous slice of corpus bytes (held-out bytes for evaluation, training bytes for the training
mix), and k = round(depth * len(filler)): depth 0 puts the key line first, depth 1 right before
the question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEY_DIGITS = 5
QUESTION = b" pass key="


def key_line(key: str) -> bytes:
    return b" pass key=" + key.encode() + b". "


# the key line, the question and the answer take this many bytes; a sequence needs one more of filler
FIXED_BYTES = len(key_line("0" * KEY_DIGITS)) + len(QUESTION) + KEY_DIGITS
MIN_LENGTH = FIXED_BYTES  # the eval length (input bytes) of the shortest sequence: 1 byte of filler


@dataclass(frozen=True)
class PasskeySample:
    tokens: np.ndarray  # (length + 1,) uint8: the whole sequence, answer included
    key: str
    key_start: int  # index of the key line in tokens
    depth: float

    @property
    def length(self) -> int:
        """The eval length: the bytes the model reads."""
        return len(self.tokens) - 1

    @property
    def answer_start(self) -> int:
        """Index in tokens of the key's first digit after the question."""
        return len(self.tokens) - KEY_DIGITS


def make_passkey(source: np.ndarray, length: int, depth: float, rng: np.random.Generator) -> PasskeySample:
    """One passkey sequence of eval length `length` with filler from `source` (uint8 bytes) and
    the key line at `depth`. The key is drawn again until it occurs nowhere in the filler, and the
    filler's place until it holds no other "pass key=": the prompt states the key exactly once."""
    if length < MIN_LENGTH:
        raise ValueError(f"a passkey sequence needs at least {MIN_LENGTH} tokens, got {length}")
    filler_length = length + 1 - FIXED_BYTES
    if len(source) < filler_length:
        raise ValueError(f"{len(source)} bytes of filler text cannot fill a passkey sequence of {length}")
    for _ in range(1000):
        key = str(int(rng.integers(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS)))
        start = int(rng.integers(0, len(source) - filler_length + 1))
        filler = bytes(source[start : start + filler_length])
        if key.encode() not in filler and QUESTION.strip() not in filler:
            break
    else:  # pragma: no cover - a source made of digits and questions only
        raise ValueError("no filler without the key or a 'pass key=' line found in 1000 draws")
    key_start = round(depth * filler_length)
    sequence = filler[:key_start] + key_line(key) + filler[key_start:] + QUESTION + key.encode()
    return PasskeySample(np.frombuffer(sequence, dtype=np.uint8).copy(), key, key_start, depth)


def trial_seed(seed: int, length: int, depth: float, trial: int) -> list[int]:
    """Seed material of one trial: a cell's trials do not change when other lengths or depths are
    added to the grid, and every model scored with the same seed sees the same sequences."""
    return [seed, length, round(depth * 1_000_000), trial]


def passkey_trials(source: np.ndarray, length: int, depth: float, trials: int, seed: int) -> list[PasskeySample]:
    return [
        make_passkey(source, length, depth, np.random.default_rng(trial_seed(seed, length, depth, trial)))
        for trial in range(trials)
    ]
