"""The interface every positional encoding implements.

A positional scheme touches attention in at most three places, so an encoding is a module that
overrides only the hooks it needs; the defaults leave the model position-free (NoPE).

Positions are always passed in explicitly as integer tensors of shape (T,) or (B, T), never
assumed to be ``arange(T)``, so offsets and randomised positions work with every encoding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# FlexAttention's score_mod: (score, b, h, q_idx, kv_idx) -> score, applied to each logit.
ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
        """Additive attention-logit bias, (H, Tq, Tk) or (B, H, Tq, Tk); None for no bias. The
        model folds the causal mask in itself (poslab.model.sdpa_mask)."""
        return None

    def score_mod(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> ScoreMod | None:
        """`bias` in FlexAttention's form: a function that adds the bias of query index q_idx and
        key index kv_idx (head h, sample b) to one logit, so the kernel computes the bias as it
        goes and no (H, Tq, Tk) tensor exists. None for no bias.

        Bias encodings override this with an elementwise form of their own formula. This default
        is correct for any encoding but indexes the materialised `bias`, so it saves nothing.
        """
        bias = self.bias(q_pos, k_pos)
        if bias is None:
            return None
        if bias.dim() == 3:  # (H, Tq, Tk)
            return lambda score, b, h, q_idx, kv_idx: score + bias[h, q_idx, kv_idx]
        return lambda score, b, h, q_idx, kv_idx: score + bias[b, h, q_idx, kv_idx]

    @property
    def has_bias(self) -> bool:
        """Whether the encoding implements `bias`; the model chooses its attention kernel by it."""
        return type(self).bias is not PositionalEncoding.bias

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
