"""The interface every positional encoding implements.

A positional scheme touches attention in at most three places, so an encoding is a module that
overrides only the hooks it needs; the defaults leave the model position-free (NoPE).

Positions are always passed in explicitly as integer tensors of shape (T,) or (B, T), never
assumed to be ``arange(T)``, so offsets and randomised positions work with every encoding.
"""

from __future__ import annotations

import torch
from torch import nn


class LengthNotSupportedError(ValueError):
    """Raised when an encoding is asked for positions it has no representation for."""


class PositionalEncoding(nn.Module):
    # Longest sequence the encoding can represent; None means any length.
    max_length: int | None = None
    # Encodings of one family share trained weights' meaning; a checkpoint may be scored under
    # another member of its family only (e.g. RoPE weights under PI, NTK or YaRN).
    family: str = "none"

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Absolute encodings add to the token embeddings. x: (B, T, D), pos: (T,) or (B, T)."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary encodings rotate queries and keys. q, k: (B, H, T, head_dim)."""
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """Additive attention-logit bias, (H, Tq, Tk) or (B, H, Tq, Tk); None for no bias."""
        return None

    def logit_scale(self, length: int) -> float:
        """Multiplier on the attention logits for a sequence of this length (YaRN's temperature)."""
        return 1.0

    def check_length(self, length: int) -> None:
        """Raise LengthNotSupportedError if a sequence of `length` positions cannot be encoded."""
        if self.max_length is not None and length > self.max_length:
            raise LengthNotSupportedError(
                f"{type(self).__name__} has positions 0..{self.max_length - 1} only "
                f"(max_length={self.max_length}); asked for length {length}"
            )


class NoPE(PositionalEncoding):
    """No positional information at all: the causal mask alone breaks permutation symmetry
    (Kazemnejad et al., 2023, "The Impact of Positional Encoding on Length Generalization")."""

    family = "nope"
