"""Passkey retrieval: does the model use a token far back in its window?

The task of Mohtashami and Jaggi (2023, "Landmark Attention"), as the Position Interpolation
paper (Chen et al., 2023, arXiv 2306.15595) uses it to measure an effective context window:
filler text, one line stating a random 5-digit key somewhere in it, and a question at the end;
the model's greedy continuation must reproduce the key. A flat perplexity curve does not show
that distant tokens are used; retrieving the key from the far end of a long window does.

All in bytes (the tokenizer is byte-level). A passkey sequence of eval length L is L + 1 bytes:

    filler[:k] + " pass key=NNNNN. " + filler[k:] + " pass key=" + "NNNNN"

The model reads the first L bytes; the last 5 targets are the key's digits. The filler is a
contiguous slice of corpus bytes (held-out bytes for evaluation, training bytes for the training
mix), and k = round(depth * len(filler)): depth 0 puts the key line first, depth 1 right before
the question.

Greedy decoding reproduces the key exactly when the argmax at each of the 5 answer positions,
given the true digits before it, is the true digit (if every earlier argmax was right, greedy
decoding has fed the true prefix), so one teacher-forced forward pass per sequence scores it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from poslab.encodings import LengthNotSupportedError
from poslab.evaluate import in_batches_that_fit, is_out_of_memory

log = logging.getLogger(__name__)

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


@torch.no_grad()
def retrieved(model, samples: list[PasskeySample], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) bool: whether greedy decoding reproduces each sample's key (see the module docstring)."""
    sequences = torch.from_numpy(np.stack([s.tokens for s in samples]).astype(np.int64)).to(device)
    inputs, answers = sequences[:, :-1], sequences[:, -KEY_DIGITS:]
    logits = model(inputs)[:, -KEY_DIGITS:]  # the predictions of the 5 digits
    return (logits.argmax(-1) == answers).all(-1).cpu()


def retrieved_in_batches(model, samples: list[PasskeySample], batch_size: int, device) -> torch.Tensor:
    """retrieved() over all samples, batch_size at a time, halving the batch on out-of-memory."""
    batches = in_batches_that_fit(len(samples), batch_size, lambda a, b: retrieved(model, samples[a:b], device))
    return torch.cat(list(batches))


@dataclass
class PasskeyResult:
    """Accuracy over a grid of eval lengths x key depths; results.json's "passkey"."""

    lengths: list[int]
    depths: list[float]
    trials: int
    seed: int
    train_context: int
    threshold: float
    accuracy: list[list[float | None]] = field(default_factory=list)  # [length][depth]; None unless ok
    status: list[list[str]] = field(default_factory=list)  # [length][depth]: ok, unsupported, out_of_memory
    reasons: dict[int, str] = field(default_factory=dict)  # eval length -> why it is not ok
    effective_window: int | None = None
    in_length_accuracy: float | None = None
    trained_with_mix: float | None = None  # data.passkey_mix of the training run
    variant: str | None = None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["reasons"] = {str(k): v for k, v in self.reasons.items()}  # JSON object keys are strings
        return record


def effective_window(
    lengths: list[int], accuracy: list[list[float | None]], status: list[list[str]], threshold: float
) -> int | None:
    """The longest length up to which accuracy stays at or above the threshold at every depth:
    lengths are walked in increasing order and the first one that fails (or that could not be
    scored) ends the window. None when the shortest already fails."""
    window = None
    for length, cells, states in sorted(zip(lengths, accuracy, status, strict=True)):
        if any(s != "ok" or a is None or a < threshold for a, s in zip(cells, states, strict=True)):
            break
        window = length
    return window


def passkey_retrieval(
    model,
    source: np.ndarray,
    lengths: list[int],
    depths: list[float],
    trials: int,
    seed: int,
    train_length: int,
    threshold: float = 0.2,
    batch_tokens: int = 16384,
    device: torch.device | str = "cpu",
    progress=None,
) -> PasskeyResult:
    """Retrieval accuracy of `model` (maps (B, T) ids to logits, exposes `pos_enc`) at each length
    and depth, `trials` sequences per cell. Lengths the encoding cannot serve are recorded as
    unsupported, a cell that does not fit in memory one sequence at a time as out_of_memory."""
    result = PasskeyResult(
        lengths=sorted(lengths),
        depths=list(depths),
        trials=trials,
        seed=seed,
        train_context=train_length,
        threshold=threshold,
    )
    was_training = model.training
    model.eval()
    try:
        for length in result.lengths:
            try:
                model.pos_enc.check_length(length)
            except LengthNotSupportedError as error:
                result.reasons[length] = str(error)
                result.accuracy.append([None] * len(depths))
                result.status.append(["unsupported"] * len(depths))
                continue
            # every depth of a length in one stream of batches: fewer, fuller forward passes
            samples = [sample for depth in depths for sample in passkey_trials(source, length, depth, trials, seed)]
            try:
                hits = retrieved_in_batches(model, samples, max(1, batch_tokens // length), device)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                result.reasons[length] = f"{str(error).splitlines()[0]} (one sequence at a time)"
                accuracy, status = [None] * len(depths), ["out_of_memory"] * len(depths)
            else:
                accuracy = hits.view(len(depths), trials).double().mean(1).tolist()
                status = ["ok"] * len(depths)
            result.accuracy.append(accuracy)
            result.status.append(status)
            if progress is not None:
                progress(length, accuracy, status)
    finally:
        model.train(was_training)
    result.effective_window = effective_window(result.lengths, result.accuracy, result.status, threshold)
    in_length = [
        a
        for length, cells in zip(result.lengths, result.accuracy, strict=True)
        if length <= train_length
        for a in cells
        if a is not None
    ]
    result.in_length_accuracy = sum(in_length) / len(in_length) if in_length else None
    return result


def heatmap_figure(passkey: dict):
    """Accuracy as a lengths x depths heatmap (a matplotlib figure), cells not scored in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = np.array([[np.nan if a is None else a for a in row] for row in passkey["accuracy"]], dtype=float)
    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(passkey["depths"]), 1.2 + 0.5 * len(passkey["lengths"])))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axes.imshow(np.ma.masked_invalid(accuracy), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    axes.set_xticks(range(len(passkey["depths"])), [f"{d:g}" for d in passkey["depths"]])
    axes.set_yticks(range(len(passkey["lengths"])), [str(n) for n in passkey["lengths"]])
    axes.set_xlabel("depth of the key line (fraction of the filler)")
    axes.set_ylabel("eval length")
    for i, row in enumerate(passkey["accuracy"]):
        for j, value in enumerate(row):
            label = f"{value:.0%}" if value is not None else passkey["status"][i][j].replace("_", " ")
            dark = value is not None and value < 0.6  # viridis is dark at the low end, yellow at the top
            axes.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axes.set_title(f"passkey retrieval, {passkey['trials']} trials per cell (trained at {passkey['train_context']})")
    figure.colorbar(image, ax=axes, label="accuracy")
    figure.tight_layout()
    return figure
