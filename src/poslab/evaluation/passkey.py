"""Passkey retrieval: does the model use a token far back in its window?

A flat perplexity curve does not show that distant tokens are used; retrieving a key stated once
at the far end of a long window does (the sequences: poslab.data.passkey).

Greedy decoding reproduces the key exactly when the argmax at each of the 5 answer positions,
given the true digits before it, is the true digit (if every earlier argmax was right, greedy
decoding has fed the true prefix), so one teacher-forced forward pass per sequence scores it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from poslab.data.passkey import KEY_DIGITS, PasskeySample, passkey_trials
from poslab.encodings import LengthNotSupportedError
from poslab.memory import in_batches_that_fit, is_out_of_memory

log = logging.getLogger(__name__)


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
