"""Length-dependent attention temperature: query row i's logits times a factor that grows with i.

Softmax over more keys spreads its mass thinner, so past the training context attention flattens.
These rules sharpen it back as the row's number of keys (i + 1) grows; each composes with every
encoding (`model.net.logit_temperature`):

    none     1
    logn     max(1, log(i + 1) / log(T_train))          Qwen's use_logn_attn; Chiang and Cholak 2022
    llama4   1 + a * log1p(floor((i + 1) / f))          Llama 4's attn_temperature_tuning (a = 0.1)
    ssmax    s_h * log(i + 1), s_h learned per head      Scalable-Softmax, Nakanishi 2025 (s from 0.43)

i is the query's index in the sequence (so i + 1 is the number of keys its softmax covers), not its
position value: with sampled or offset positions the softmax still covers i + 1 keys. T_train is
`model.net.train_context`; llama4's floor scale f is T_train as well (Llama 4 uses 8192, the
chunk length of its local layers: the factor is 1 for rows i + 1 < f and steps up at each multiple
of f, so here the training context's last row already gets 1 + a ln 2).

The factor multiplies the query, so it scales the query-key term of the logits and leaves an
encoding's additive bias from the positions or the input (ALiBi, FoX) as it is (as Qwen and Llama
4 apply it); SSMax, written for plain softmax attention, scales the whole logit, which is the same
thing when the encoding adds no bias. A bias computed from the queries and the logits (CoPE's)
is computed from the scaled ones, so the temperature reaches it too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TEMPERATURE_RULES = ("none", "logn", "llama4", "ssmax")
# the rules' default `model.net.temperature_scale`: llama4's a (Llama 4's attn_scale), and ssmax's
# initial s (the value the SSMax paper reports its learned s settles near)
DEFAULT_SCALE = {"llama4": 0.1, "ssmax": 0.43}


def query_factor(rule: str, length: int, train_context: int, scale: float | None, device=None) -> torch.Tensor | None:
    """The multiplier of each query row's logits (length, 1) under `rule`, before ssmax's learned
    per-head s; None for `none`."""
    if rule == "none":
        return None
    keys = torch.arange(1, length + 1, dtype=torch.float32, device=device)  # i + 1
    if rule == "logn":
        factor = (keys.log() / math.log(train_context)).clamp(min=1.0)
    elif rule == "llama4":
        a = DEFAULT_SCALE["llama4"] if scale is None else scale
        factor = 1.0 + a * torch.log1p(torch.floor(keys / train_context))
    elif rule == "ssmax":
        factor = keys.log()
    else:
        raise ValueError(f"model.net.logit_temperature must be one of {', '.join(TEMPERATURE_RULES)}, got {rule!r}")
    return factor.unsqueeze(-1)


class HeadTemperature(nn.Module):
    """SSMax's learned s per head of one layer: the factor (T, 1) becomes (H, T, 1)."""

    def __init__(self, n_head: int, initial: float):
        super().__init__()
        self.s = nn.Parameter(torch.full((n_head,), float(initial)))

    def forward(self, factor: torch.Tensor) -> torch.Tensor:
        return self.s.view(-1, 1, 1) * factor
