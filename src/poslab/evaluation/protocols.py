"""The extrapolation sweep: score the same held-out tokens at every eval length, under one or
more protocols, with the loss at each position of the window.

Every protocol scores each held-out target exactly once, so at every length and under every
protocol the loss is a mean over the same tokens; what differs is the context each target sees.

- ``nonoverlapping``: consecutive windows of the eval length, each a forward pass from position 0,
  every token in it scored. A target at window position t sees t earlier tokens, so a longer
  window gives more targets more context whether or not the model uses distant tokens (Press et
  al., 2022, "Train Short, Test Long", in its analysis of the "early token curse": much of ALiBi's
  gain at longer lengths under this protocol comes from fewer targets near a window's start).
- ``sliding`` with a stride s: windows of the eval length that advance by s tokens. The first
  window scores all its tokens, each later one only its last s (those the previous window did not
  score), so every target after the first window sees at least length - s earlier tokens. Stride
  1 is the ALiBi paper's analysis setting; stride 256 the PI (Chen et al., 2023) and YaRN (Peng et
  al., 2023) papers'. A stride equal to the length is ``nonoverlapping``.

Windows advance by the stride (the length, for ``nonoverlapping``); when the length does not
divide the held-out stream, the last window is the one ending at the last token and scores only
the targets still left. A forward pass is a batch of windows; its size adapts to the length and
halves when it does not fit in memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from poslab.encodings import LengthNotSupportedError
from poslab.memory import in_batches_that_fit, is_out_of_memory, release_memory

log = logging.getLogger(__name__)

PROTOCOLS = ("nonoverlapping", "sliding")
# the protocol whose numbers are also logged under the plain extrap/... names
DEFAULT_PROTOCOL = "nonoverlapping"


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
    stride: int | None = None  # tokens between window starts (the length, for nonoverlapping)
    # mean loss per window position, in log-spaced bins: see per_position_bins
    per_position: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def window_ends(num_targets: int, length: int, stride: int) -> np.ndarray:
    """End (exclusive) of each window in the held-out stream: the first window is [0, length), each
    next one `stride` further, the last one clipped to end at the last target."""
    if num_targets < length:
        raise ValueError(f"{num_targets} held-out targets cannot fill a window of {length}")
    later = np.arange(length + stride, num_targets + stride, stride)
    return np.concatenate([[length], np.minimum(later, num_targets)]).astype(np.int64)


def per_position_bins(length: int) -> tuple[list[int], list[int]]:
    """Log-spaced bins of window positions: [0,1), [1,2), [2,4), [4,8), ... the last one ending at
    the length. Position t is the target predicted from the window's first t + 1 tokens."""
    starts = [0]
    while max(1, 2 * starts[-1]) < length:
        starts.append(max(1, 2 * starts[-1]))
    return starts, [*starts[1:], length]


def bin_positions(loss_sum: np.ndarray, counts: np.ndarray) -> dict:
    """Per-position sums (float64) and counts -> the row's `per_position` record."""
    starts, ends = per_position_bins(len(counts))
    tokens = [int(counts[a:b].sum()) for a, b in zip(starts, ends, strict=True)]
    sums = [float(loss_sum[a:b].sum()) for a, b in zip(starts, ends, strict=True)]
    return {
        "bin_start": starts,
        "bin_end": ends,
        "mean_loss": [s / n if n else None for s, n in zip(sums, tokens, strict=True)],
        "tokens": tokens,
    }


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    tokens: np.ndarray,
    length: int,
    stride: int,
    batch_tokens: int,
    device: torch.device | str,
) -> tuple[np.ndarray, np.ndarray]:
    """Next-token negative log-likelihood (nats) summed at each window position over every scored
    target, and the number of targets scored at each position; both of shape (length,)."""
    stream = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    ends = window_ends(len(stream) - 1, length, stride)
    # how many of its last tokens each window scores: all of the first, then what is new
    scored = np.diff(ends, prepend=0)
    offsets = torch.arange(length + 1)
    positions = torch.arange(length, device=device)

    def compute(first: int, stop: int):
        starts = torch.from_numpy(ends[first:stop] - length)
        chunk = stream[starts[:, None] + offsets]  # (B, length + 1)
        x, y = chunk[:, :-1].to(device), chunk[:, 1:].to(device)
        logits = model(x).float()
        nats = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, length)
        new = torch.from_numpy(scored[first:stop]).to(device)
        mask = positions[None, :] >= (length - new)[:, None]
        # float64: a float32 sum drifts over many tokens; where, not a product: an unscored
        # position's inf must not turn the sum into nan
        return torch.where(mask, nats.double(), 0.0).sum(0).cpu(), mask.sum(0).cpu()

    loss_sum = torch.zeros(length, dtype=torch.float64)
    counts = torch.zeros(length, dtype=torch.int64)
    for batch_sum, batch_counts in in_batches_that_fit(len(ends), max(1, batch_tokens // length), compute):
        loss_sum += batch_sum
        counts += batch_counts
    return loss_sum.numpy(), counts.numpy()


def protocol_stride(protocol: str, length: int, stride: int | None) -> int:
    """Tokens between window starts (settings are checked in poslab.config; this guards direct calls)."""
    if protocol == "nonoverlapping":
        return length
    if protocol != "sliding":
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if stride is None or not 0 < stride <= length:
        raise ValueError(f"stride {stride} must be between 1 and the eval length {length}")
    return stride


def extrapolation_sweep(
    model,
    tokens: np.ndarray,
    lengths: list[int],
    train_length: int,
    protocols: str | list[str] = ("nonoverlapping",),
    stride: int | None = None,
    batch_tokens: int = 16384,
    device: torch.device | str = "cpu",
    progress=None,
    scored_bytes: int | None = None,
    starting=None,
) -> list[ExtrapolationRow]:
    """Score `tokens` at each length under each protocol (rows in that order: protocol, then
    length). `model` maps (B, T) ids to logits and exposes `pos_enc`. Lengths the encoding cannot
    serve are recorded as unsupported, with the reason; a length whose loss is not finite, or that
    does not fit in memory even one window at a time, is recorded as such and the sweep goes on.
    `scored_bytes`: the UTF-8 bytes of the text behind tokens[1:], so bits per byte compare across
    tokenizers; None means one byte per token (the byte tokenizer). `starting(protocol, length,
    stride, windows)` is called before each length is scored (its cost: windows forward passes of
    `length` tokens), `progress(row)` after."""
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    for protocol in protocols:  # refused up front, not after the shorter lengths are scored
        for length in lengths:
            protocol_stride(protocol, length, stride)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for protocol in protocols:
            for length in lengths:
                row = score_length(
                    model, tokens, length, train_length, protocol, stride, batch_tokens, device, scored_bytes, starting
                )
                rows.append(row)
                if progress is not None:
                    progress(row)
    finally:
        model.train(was_training)
    return rows


def score_length(
    model,
    tokens,
    length,
    train_length,
    protocol,
    stride,
    batch_tokens,
    device,
    scored_bytes: int | None = None,
    starting=None,
) -> ExtrapolationRow:
    step = protocol_stride(protocol, length, stride)
    row = ExtrapolationRow(
        eval_length=length, length_ratio=length / train_length, protocol=protocol, status="ok", stride=step
    )
    try:
        model.pos_enc.check_length(length)
        if starting is not None:
            starting(protocol, length, step, len(window_ends(len(tokens) - 1, length, step)))
        loss_sum, counts = score_windows(model, tokens, length, step, batch_tokens, device)
    except LengthNotSupportedError as error:
        row.status, row.reason = "unsupported", str(error)
        return row
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        row.status, row.reason = "out_of_memory", f"{str(error).splitlines()[0]} (one window at a time)"
        release_memory()
        return row
    total_nats, count = float(loss_sum.sum()), int(counts.sum())
    row.tokens_scored = count
    # every protocol scores each target of tokens[1:] exactly once, so their bytes are the text's
    row.bytes_scored = count if scored_bytes is None else int(scored_bytes)
    mean = total_nats / count
    if not math.isfinite(mean) or mean >= 700:  # exp() of it would not be a finite perplexity
        row.status, row.reason = "non_finite", f"the mean loss is {mean} nats per token"
        return row
    row.loss = mean
    row.ppl = math.exp(mean)
    row.bpb = total_nats / (math.log(2) * row.bytes_scored)
    row.per_position = bin_positions(loss_sum, counts)
    return row
