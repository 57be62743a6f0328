"""Encodings that add a bias to the attention logits."""

from __future__ import annotations

import math

import torch

from poslab.encodings.base import PositionalEncoding


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head slopes of Press et al., ALiBi (arXiv 2108.12409).

    For n heads, n a power of two, the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...,
    2^(-8). Otherwise the paper (and its reference code) takes the slopes of the closest smaller
    power of two m, then fills the remaining n - m heads with every other slope of 2m heads.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_head <= 0:
        raise ValueError(f"ALiBi needs model.n_head >= 1, got {n_head}")
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest != n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PositionalEncoding):
    """Attention with Linear Biases: head h adds -slope_h * (i - j) to the logit of query i on key j."""

    def __init__(self, n_head: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def bias(self, q_pos, k_pos):
        distance = (k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).to(self.slopes.dtype)  # (..., Tq, Tk)
        # (H, 1, 1) * (..., 1, Tq, Tk) -> (H, Tq, Tk) or (B, H, Tq, Tk)
        return self.slopes.view(-1, 1, 1) * distance.unsqueeze(-3)
