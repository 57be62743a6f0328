"""The interface every positional encoding implements.

A positional scheme touches attention in a few places, so an encoding is a module that overrides
only the hooks it needs; the defaults leave the model position-free (NoPE):

    embed(x, pos)            absolute encodings add a vector per position      x: (B, T, D)
    prepare(pos, length)     once per forward: what rotate() needs in every layer (RoPE's cos, sin)
    rotate(q, k, prepared)   rotary encodings rotate queries and keys          q, k: (B, H, T, hd)
    bias(q_pos, k_pos)       an additive logit bias (ALiBi, T5, KERPLE, FIRE)  -> (H, Tq, Tk)
    score_mod(q_pos, k_pos)  the same bias elementwise, for FlexAttention
    logit_scale(length)      a multiplier on the attention logits (YaRN's temperature)

One hook serves methods whose logit is not one product of rotated queries and keys, and a second,
optional, computes their attention faster than from those logits:

    block_logits(q, k, start, stop, prepared)  the logits of a block of query rows, computed by
                                      the encoding itself (ReRoPE, Self-Extend: two rotations
                                      merged by distance)                 -> (B, H, rows, keys)
    attend(q, k, v, scale, prepared)  the same attention, whole, or None  -> (B, H, T, hd)
                                      (ReRoPE, Self-Extend: a band and a fused causal pass)

Three hooks serve methods whose terms are not a function of the positions alone; each gets the
layer's index, since such methods keep weights per layer:

    for_layer(layer)                  the encoding layer `layer` uses (iRoPE: NoPE in some layers)
    input_bias(x, layer)              a logit bias computed from the layer's input (FoX's forget
                                      gates) -> InputBias, which gives it by blocks of query rows
                                      and as a FlexAttention score_mod                x: (B, T, C)
    contextual_bias(q, logits, layer) a logit bias computed from the queries and the logits of a
                                      block of query rows (CoPE's positions) -> (B, H, rows, keys)

Positions are always passed in explicitly as integer tensors of shape (T,) or (B, T), never
assumed to be ``arange(T)``, so offsets and randomised positions work with every encoding.

Work that depends on the positions alone is done once per forward, never once per layer: the model
calls `prepare` and builds the bias once and hands both to every layer (the chunked attention path
keeps its bias blocks for the next layers while they fit in its budget, and computes the rest again
in each layer rather than hold a (T, T) bias). `prepare`'s default hands
rotate() the positions themselves, so an encoding that computes nothing up front can write
``rotate(q, k, pos)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# FlexAttention's score_mod: (score, b, h, q_idx, kv_idx) -> score, applied to each logit.
ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class InputBias:
    """A logit bias computed from one layer's input, as every attention path reads it: `rows`
    gives the bias of query rows [start, stop) over keys [0, stop), (B, H, rows, stop), and
    `score_mod` its FlexAttention form (None: flex refuses the encoding). Keys after a query may
    hold any finite value: the causal mask is added to them."""

    def rows(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def score_mod(self) -> ScoreMod | None:
        return None


class LengthNotSupportedError(ValueError):
    """Raised when an encoding is asked for positions it has no representation for."""


class PositionalEncoding(nn.Module):
    # Longest sequence the encoding can represent; None means any length.
    max_length: int | None = None
    # Encodings of one family share trained weights' meaning: a checkpoint may be scored under
    # another member of its family only (RoPE weights under PI, NTK or YaRN). A subclass inherits
    # its parent's family; a class that names none (directly below this one) is a family of its
    # own, named by its qualified class name, so two unrelated encodings never share one.
    family: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.family is None:
            cls.family = _qualified_name(cls)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Absolute encodings add to the token embeddings. x: (B, T, D), pos: (T,) or (B, T)."""
        return x

    def prepare(self, pos: torch.Tensor, length: int) -> Any:
        """What `rotate` needs, computed once per forward from the positions and shared by every
        layer. `length` is 1 + the largest position (the span the encoding serves); the default
        hands rotate() the positions themselves."""
        return pos

    def rotate(self, q: torch.Tensor, k: torch.Tensor, prepared: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary encodings rotate queries and keys. q, k: (B, H, T, head_dim); `prepared` is what
        `prepare` returned for this forward."""
        return q, k

    def rotate_at(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`rotate` at these positions, prepared on the spot: for a single call (tests, diagnostics);
        the model prepares once per forward instead."""
        return self.rotate(q, k, self.prepare(pos, span(pos)))

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """Additive attention-logit bias, (H, Tq, Tk) or (B, H, Tq, Tk); None for no bias. The
        model folds the causal mask in itself (poslab.model.attention.causal_bias)."""
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
        """Multiplier on the attention logits for positions spanning `length` (YaRN's temperature)."""
        return 1.0

    def for_layer(self, layer: int) -> PositionalEncoding:
        """The encoding layer `layer` (0-based) runs with; the model prepares each distinct one once
        per forward. Interleaved schemes (iRoPE) return a member per layer; the default is self."""
        return self

    def input_bias(self, x: torch.Tensor, layer: int) -> InputBias | None:
        """A logit bias computed from layer `layer`'s input x (B, T, C) (after its LayerNorm, as
        the queries are), added to `bias`; None for none. FoX's forget gates."""
        return None

    def contextual_bias(self, q: torch.Tensor, logits: torch.Tensor, layer: int) -> torch.Tensor | None:
        """A logit bias computed from a block of query rows q (B, H, rows, hd) and their logits over
        the keys up to the block's last row (B, H, rows, keys), already scaled, with every other
        bias and the causal mask (-inf) in them; returns (B, H, rows, keys) or None. The path
        computes such logits itself (no fused kernel), block by block: CoPE's positions."""
        return None

    def block_logits(
        self, q_rows: torch.Tensor, k_past: torch.Tensor, start: int, stop: int, prepared: Any
    ) -> torch.Tensor:
        """The logits of query rows [start, stop) (B, H, rows, hd) over keys [0, stop) (B, H, stop, hd),
        for an encoding whose logit is not one product of rotated queries and keys: ReRoPE and
        Self-Extend merge two rotations by distance. q_rows and k_past come as `rotate` left them
        (unrotated, for such an encoding), q_rows already scaled; `prepared` is what `prepare`
        returned. Overriding this makes the model compute every layer's logits block by block."""
        raise NotImplementedError

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, prepared: Any
    ) -> torch.Tensor | None:
        """Optional, beside `block_logits`: the layer's causal attention (B, H, T, hd) computed by
        the encoding itself from q, k, v as `rotate` left them (q not yet scaled), where it knows a
        faster way than its logits block by block (ReRoPE: two fused passes merged by their
        log-sum-exp). Returns None where it cannot; the path then computes `block_logits`. Paths
        call it only when nothing else in the layer needs the logits (a sink, a bias of any kind,
        dropout)."""
        return None

    @property
    def has_attend(self) -> bool:
        return type(self).attend is not PositionalEncoding.attend

    @property
    def has_block_logits(self) -> bool:
        return type(self).block_logits is not PositionalEncoding.block_logits

    @property
    def has_input_bias(self) -> bool:
        return type(self).input_bias is not PositionalEncoding.input_bias

    @property
    def has_contextual_bias(self) -> bool:
        return type(self).contextual_bias is not PositionalEncoding.contextual_bias

    def check_length(self, length: int) -> None:
        """Raise LengthNotSupportedError if a sequence of `length` positions cannot be encoded."""
        if self.max_length is not None and length > self.max_length:
            raise LengthNotSupportedError(
                f"{type(self).__name__} has positions 0..{self.max_length - 1} only "
                f"(max_length={self.max_length}); asked for length {length}"
            )


def family_of(encoding: PositionalEncoding | type) -> str:
    """The family of an encoding (an instance or its class)."""
    cls = encoding if isinstance(encoding, type) else type(encoding)
    return getattr(cls, "family", None) or _qualified_name(cls)


# How an encoding carries position, read from the hooks its class overrides (so a user's encoding
# has one without declaring it): the report colours rows by it and wandb groups runs by it.
# "data-dependent": a bias computed from the input or the logits (FoX, CoPE).
MECHANISMS = ("absolute", "rotary", "bias", "data-dependent", "none")


def mechanism_of(encoding: PositionalEncoding | type) -> str:
    """'absolute' (adds to the token embeddings), 'rotary' (rotates queries and keys), 'bias'
    (adds to the attention logits), 'data-dependent' (a bias from the input or the logits) or
    'none', by the first hook of those the class overrides."""
    cls = encoding if isinstance(encoding, type) else type(encoding)
    hooks = (
        ("absolute", "embed"),
        ("rotary", "rotate"),
        ("bias", "bias"),
        ("data-dependent", "input_bias"),
        ("data-dependent", "contextual_bias"),
    )
    for mechanism, hook in hooks:
        if getattr(cls, hook) is not getattr(PositionalEncoding, hook):
            return mechanism
    return "none"


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def span(pos: torch.Tensor) -> int:
    """1 + the largest position: how many positions an encoding must serve (a host sync)."""
    return int(pos.max()) + 1


class NoPE(PositionalEncoding):
    """No positional information at all: the causal mask alone breaks permutation symmetry
    (Kazemnejad et al., 2023, "The Impact of Positional Encoding on Length Generalization")."""

    family = "nope"
