"""Absolute encodings: a vector per position, added to the token embedding."""

from __future__ import annotations

import torch
from torch import nn

from poslab.encodings.base import PositionalEncoding


class Sinusoidal(PositionalEncoding):
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)).

    Computed from the positions on the fly, so it is defined at any length. As in the paper
    (section 3.4), the token embeddings are multiplied by sqrt(d) before the sinusoids are added:
    with GPT-style embeddings (std 0.02) the unit-amplitude sinusoids would otherwise drown the
    tokens. `scale_embeddings=false` adds them unscaled.
    """

    family = "sinusoidal"

    def __init__(self, n_embd: int, base: float = 10000.0, scale_embeddings: bool = True):
        super().__init__()
        if n_embd % 2:
            raise ValueError(f"sinusoidal encoding needs an even model.net.n_embd, got {n_embd}")
        self.n_embd = n_embd
        self.base = base
        self.embedding_scale = n_embd**0.5 if scale_embeddings else 1.0
        inv_freq = base ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def table(self, pos: torch.Tensor) -> torch.Tensor:
        angles = pos.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq  # (..., T, D/2)
        # interleave so that even channels hold sin and odd channels cos, as in the paper
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., T, D)

    def embed(self, x, pos):
        return x * self.embedding_scale + self.table(pos).to(x.dtype)


class Learned(PositionalEncoding):
    """A trained vector per position (GPT-2). Has nothing to say past its table."""

    family = "learned"

    def __init__(self, n_embd: int, max_length: int):
        super().__init__()
        if max_length <= 0:
            raise ValueError(f"learned encoding needs a positive pos_enc.max_length, got {max_length}")
        self.max_length = max_length
        self.table = nn.Embedding(max_length, n_embd)
        nn.init.normal_(self.table.weight, std=0.02)

    def embed(self, x, pos):
        # GPT.forward has already refused positions past max_length, with the reason
        return x + self.table(pos)
