"""The training losses: the mean next-token loss, with passkey windows scored on their answer only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poslab.data.datamodule import IGNORED


def window_mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss. Targets marked IGNORED (passkey windows score their answer digits
    only) make every window weigh the same: the mean over its scored targets, then the mean over
    windows, so 5 answer digits count as much as a whole language-model window. Without ignored
    targets this is the plain mean over all tokens."""
    if not (targets == IGNORED).any():
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T), 0 where ignored
    scored = (targets != IGNORED).sum(1).clamp(min=1)
    return (nats.sum(1) / scored).mean()


def passkey_answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Mean loss on the answer digits of the batch's passkey windows (those with ignored targets);
    None when the batch has none."""
    passkey_windows = (targets == IGNORED).any(1)
    if not passkey_windows.any():
        return None
    return F.cross_entropy(logits[passkey_windows].transpose(1, 2), targets[passkey_windows])
