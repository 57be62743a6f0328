"""The rotary family: RoPE and its context-extension schemes.

Every member rotates each (query, key) channel pair by angle ``pos * inv_freq[i]``; a member is one
choice of ``frequencies(length)``: Position Interpolation divides the frequencies by the extension
factor, NTK-aware scaling changes the base, YaRN ramps between the two per frequency. Nothing here
is a trained weight, so the same checkpoint can be evaluated under any member.

Channel pairing: channel i is paired with channel i + head_dim/2 (the GPT-NeoX / LLaMA layout).
RoFormer pairs (2i, 2i+1); the two are the same rotation up to a fixed permutation of the head
dimensions, which the learned projections absorb.
"""

from __future__ import annotations

import torch

from poslab.encodings.base import PositionalEncoding


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RoPE(PositionalEncoding):
    """Su et al., RoFormer (arXiv 2104.09864): inv_freq[i] = base^(-2i / head_dim)."""

    def __init__(self, n_embd: int, n_head: int, base: float = 10000.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_head={n_head} must divide model.n_embd={n_embd}")
        head_dim = n_embd // n_head
        if head_dim % 2:
            raise ValueError(f"rotary encodings need an even head size, got n_embd/n_head={head_dim}")
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        # not persistent: a checkpoint must not pin a scaling, so any member can load it
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def frequencies(self, length: int) -> tuple[torch.Tensor, float]:
        """Per-pair angular frequencies for a sequence of `length` positions, and the factor by
        which attention logits are multiplied (1 for all but YaRN)."""
        return self.inv_freq, 1.0

    def angles(self, pos: torch.Tensor) -> torch.Tensor:
        inv_freq, _ = self.frequencies(int(pos.max()) + 1)
        return pos.to(inv_freq.dtype).unsqueeze(-1) * inv_freq  # (..., T, head_dim/2)

    def rotate(self, q, k, pos):
        angles = self.angles(pos)
        if angles.dim() == 3:  # per-sample positions (B, T, hd/2): broadcast over heads
            angles = angles.unsqueeze(1)
        cos = torch.cat((angles.cos(), angles.cos()), dim=-1).to(q.dtype)
        sin = torch.cat((angles.sin(), angles.sin()), dim=-1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def logit_scale(self, length: int) -> float:
        return self.frequencies(length)[1]


class RoPEPositionInterpolation(RoPE):
    """Chen et al., Position Interpolation (arXiv 2306.15595).

    A sequence of L > train_length positions is squeezed into the trained range: position p is
    used as p * train_length / L, which is the same as dividing every frequency by
    scale = L / train_length. Within the training context scale is 1 and this is plain RoPE.
    """

    def __init__(self, n_embd: int, n_head: int, train_length: int, base: float = 10000.0):
        super().__init__(n_embd, n_head, base)
        if train_length <= 0:
            raise ValueError(f"rope_pi needs a positive train_length (data.context), got {train_length}")
        self.train_length = train_length

    def scale(self, length: int) -> float:
        return max(1.0, length / self.train_length)

    def frequencies(self, length):
        return self.inv_freq / self.scale(length), 1.0
