"""The extrapolation sweep: score the same held-out tokens at every eval length.

Protocol ``nonoverlapping``: the held-out tokens are cut into consecutive windows of the eval
length; each window is one forward pass starting at position 0, and every token in it is scored.
The held-out stream is a whole number of windows of the longest length, so every length scores
exactly the same targets and differs only in how much context each target sees.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from poslab.data.datamodule import Windows
from poslab.encodings import LengthNotSupportedError

PROTOCOLS = ("nonoverlapping",)


@dataclass
class ExtrapolationRow:
    eval_length: int
    length_ratio: float  # eval_length / training context
    protocol: str
    status: str  # "ok", "unsupported" (the encoding has no positions this far), "non_finite", "out_of_memory"
    reason: str | None = None
    tokens_scored: int = 0
    bytes_scored: int = 0
    loss: float | None = None  # mean nats per token
    ppl: float | None = None
    bpb: float | None = None  # bits per UTF-8 byte
    variant: str | None = None  # the encoding (setting) the model was scored under

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_windows(
    model: torch.nn.Module, tokens: np.ndarray, length: int, batch_tokens: int, device: torch.device | str
) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (nats) over all windows, and the token count."""
    batch_size = max(1, batch_tokens // length)
    loader = DataLoader(Windows(tokens, length), batch_size=batch_size, shuffle=False)
    total_nats, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        total_nats += nats.double().sum().item()  # float64: a float32 sum drifts over many tokens
        count += y.numel()
    return total_nats, count


def extrapolation_sweep(
    model,
    tokens: np.ndarray,
    lengths: list[int],
    train_length: int,
    protocol: str = "nonoverlapping",
    batch_tokens: int = 16384,
    device: torch.device | str = "cpu",
    progress=None,
) -> list[ExtrapolationRow]:
    """Score `tokens` at each length. `model` maps (B, T) ids to logits and exposes `pos_enc`.
    Lengths the encoding cannot serve are recorded as unsupported, with the reason; a length whose
    loss is not finite, or that does not fit in memory, is recorded as such and the sweep goes on."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    was_training = model.training
    model.eval()
    rows = []
    try:
        for length in lengths:
            row = ExtrapolationRow(
                eval_length=length, length_ratio=length / train_length, protocol=protocol, status="ok"
            )
            try:
                model.pos_enc.check_length(length)
                total_nats, count = score_windows(model, tokens, length, batch_tokens, device)
            except LengthNotSupportedError as error:
                row.status, row.reason = "unsupported", str(error)
            except torch.OutOfMemoryError as error:
                row.status, row.reason = "out_of_memory", str(error).splitlines()[0]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                row.tokens_scored = count
                row.bytes_scored = count  # byte-level tokens
                if math.isfinite(total_nats):
                    row.loss = total_nats / count
                    row.ppl = math.exp(row.loss) if row.loss < 700 else math.inf
                    row.bpb = total_nats / (math.log(2) * row.bytes_scored)
                if not (math.isfinite(total_nats) and math.isfinite(row.ppl)):
                    row.status, row.reason = "non_finite", f"the mean loss is {total_nats / count} nats per token"
                    row.loss = row.ppl = row.bpb = None
            rows.append(row)
            if progress is not None:
                progress(row)
    finally:
        model.train(was_training)
    return rows
