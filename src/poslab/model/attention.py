"""Causal self-attention and the paths its logits take, behind one interface.

Shapes: B batch, H heads, T sequence length, hd head size, C = H * hd; Tq, Tk query and key rows.

Every path is called the same way, `attend(q, k, v, scale, dropout_p, terms) -> y` with q, k, v
and y of shape (B, H, T, hd), and is built once per forward (`GPT.prepare`), so that whatever it
derives from the positions (a bias, a block mask) is shared by every layer. `terms` carries what
one layer adds from its own input or weights (`LayerTerms`): a bias from the input (FoX), a bias
from the logits (CoPE), a learned sink logit per head, and the logits themselves for an encoding
whose logit is not one product of rotated queries and keys (ReRoPE, Self-Extend), with the
encoding's own faster way to the same attention where it has one (`own_attention`):

    CausalSdpa       no bias: scaled_dot_product_attention with is_causal (flash kernels, no mask)
    MaskedSdpa       the encoding's bias as one (H, T, T) float tensor with the causal mask folded
                     in (as x-transformers' attend.py does), handed to scaled_dot_product_attention
    FlexPath         FlexAttention: the encoding's score_mod adds each bias value inside the kernel
                     and a causal BlockMask skips the future, so nothing of size T x T exists
                     (compiled on CUDA; on a CPU it runs eagerly, materialising the scores, forward only)
    ChunkedPath      blocks of query rows, each with its own (H, rows, keys) bias over the keys up
                     to its last row (a `BlockBias`): whatever T, a block holds at most
                     poslab.memory.BLOCK_ELEMENTS logits, and so do the blocks kept for later layers

A bias from the input is added to the mask; a bias from the logits, a sink or the encoding's own
logits need the logits themselves, so the path computes that layer's attention explicitly (`attend_block`): logits,
softmax with the sink as one more column that has no value, then the values. The flex path adds the
input bias inside its score_mod and the sink through the softmax's log-sum-exp; it refuses a bias
from the logits (the config check says so before training).

Causality is by index in the sequence, not by position value, so offsets and sampled positions
keep the model autoregressive.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from poslab.encodings import PositionalEncoding
from poslab.encodings.base import InputBias, ScoreMod
from poslab.memory import row_blocks

# model.net.attention: the path by name, or auto (see GPT.attention_path)
ATTENTION_PATHS = ("auto", "sdpa", "flex", "chunked")


def causal_bias(bias: torch.Tensor) -> torch.Tensor:
    """Fold the causal mask into a float logit bias (..., Tq, Tk), the last Tq rows of a causal
    sequence of Tk: -inf above the diagonal."""
    q_len, k_len = bias.shape[-2:]
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=bias.device).triu(1 + k_len - q_len)
    return bias.masked_fill(future, float("-inf"))


def sdpa_mask(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An encoding's bias (..., H, Tq, Tk), the last Tq rows of a causal sequence, as SDPA's float
    attn_mask: in `dtype`, causal mask folded in, 4-D (a 3-D mask takes SDPA's slow math path on
    CPU, a 4-D one its fused kernel)."""
    mask = causal_bias(bias.to(dtype))
    return mask.unsqueeze(0) if mask.dim() == 3 else mask


@dataclass(frozen=True)
class LayerTerms:
    """What one layer adds to the path its forward shares: computed from that layer's input or
    held in its weights, so it differs from layer to layer."""

    input_bias: InputBias | None = None  # pos_enc.input_bias(x, layer): FoX's forget gates
    # pos_enc.block_logits bound to the forward's rotation: (q rows, keys, start, stop) -> the
    # logits (B, H, rows, keys) of an encoding that merges two rotations by distance (ReRoPE)
    logits: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor] | None = None
    # pos_enc.attend bound to the forward's rotation: (q, k, v, scale) -> y, the same attention as
    # from `logits` computed a faster way, or None where the encoding cannot (see own_attention)
    attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor | None] | None = None
    # pos_enc.contextual_bias bound to the layer: (q rows, logits) -> bias (B, H, rows, keys); CoPE
    contextual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None
    sink: torch.Tensor | None = None  # (H,) learned sink logits (model.net.sink)

    @property
    def empty(self) -> bool:
        return self.input_bias is None and self.explicit is False

    @property
    def explicit(self) -> bool:
        """Whether attention needs its logits computed here rather than inside a fused kernel."""
        return self.contextual is not None or self.sink is not None or self.logits is not None


NO_TERMS = LayerTerms()


def own_attention(q, k, v, scale: float, dropout_p: float, terms: LayerTerms) -> torch.Tensor | None:
    """The encoding's own attention (pos_enc.attend: a remapped RoPE's two fused passes), where
    nothing else in the layer needs its logits (a sink, a bias) and there is no dropout; None
    sends the path on to the logits, block by block."""
    if terms.attention is None or dropout_p or terms.sink is not None:
        return None
    if terms.contextual is not None or terms.input_bias is not None:
        return None
    return terms.attention(q, k, v, scale)


def with_input_bias(mask: torch.Tensor, terms: LayerTerms, start: int, stop: int) -> torch.Tensor:
    """The static mask of query rows [start, stop) (..., rows, stop), causal mask in it, plus the
    layer's bias from its input."""
    if terms.input_bias is None:
        return mask
    return mask + terms.input_bias.rows(start, stop).to(mask.dtype)


def block_probabilities(
    q_rows, k_past, scale: float, mask: torch.Tensor, terms: LayerTerms, start: int = 0
) -> torch.Tensor:
    """Attention probabilities of query rows [start, start + rows) (B, H, rows, hd) over the keys
    up to the block's last row (B, H, keys, hd): scaled logits (the encoding's own, for one that
    merges two rotations) plus `mask` (every bias and the causal mask), plus the bias from the
    logits, softmax over the keys and, with a sink, one more logit per head that takes probability
    and has no value (rows then sum to less than 1)."""
    # the scale on the queries (rows x hd values) rather than the logits (rows x keys)
    if terms.logits is not None:
        logits = terms.logits(q_rows * scale, k_past, start, start + q_rows.size(-2))
    else:
        logits = (q_rows * scale) @ k_past.transpose(-2, -1)
    logits = logits.add_(mask)  # (B, H, rows, keys)
    if terms.contextual is not None:
        contextual = terms.contextual(q_rows, logits)
        if contextual is not None:
            logits = logits.add_(contextual)  # the lookup saved its gates, not the logits
    if terms.sink is None:
        return logits.softmax(dim=-1)
    B, H, rows, _ = logits.shape
    sink = terms.sink.to(logits.dtype).view(1, H, 1, 1).expand(B, H, rows, 1)
    return torch.cat([logits, sink], dim=-1).softmax(dim=-1)[..., :-1]


def attend_block(
    q_rows, k_past, v_past, scale: float, dropout_p: float, mask, terms: LayerTerms, start: int, stop: int
):
    """Attention of query rows [start, stop) over keys [0, stop) with this layer's terms: through
    SDPA when they only add to the mask, explicitly when they need the logits (sink, CoPE)."""
    mask = with_input_bias(mask, terms, start, stop)
    if not terms.explicit:
        return F.scaled_dot_product_attention(q_rows, k_past, v_past, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    probs = block_probabilities(q_rows, k_past, scale, mask, terms, start)
    return F.dropout(probs, dropout_p) @ v_past if dropout_p else probs @ v_past


def causal_mask(rows: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The causal mask alone for the last `rows` query rows over `keys` keys: 0 or -inf."""
    return causal_bias(torch.zeros(rows, keys, dtype=dtype, device=device))


def causal_row_blocks(rows: int, blocks: int = 4, smallest: int = 32) -> list[tuple[int, int]]:
    """[start, stop) blocks of about rows / blocks rows, none under `smallest` (below that the
    per-block overhead outweighs the keys it skips)."""
    step = max(smallest, -(-rows // blocks))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


class AttentionPath(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        dropout_p: float,
        terms: LayerTerms = NO_TERMS,
    ) -> torch.Tensor: ...


class CausalSdpa:
    """No bias: SDPA with is_causal, no (T, T) tensor on any device. A layer with terms of its own
    gets the causal mask as a tensor, and its terms on it; one whose terms need the logits (CoPE,
    a sink) computes them in blocks of rows over the keys each block can see."""

    def __call__(self, q, k, v, scale: float, dropout_p: float, terms: LayerTerms = NO_TERMS) -> torch.Tensor:
        if terms.empty:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
        if (y := own_attention(q, k, v, scale, dropout_p, terms)) is not None:
            return y
        T = q.size(-2)
        if not terms.explicit:
            return attend_block(q, k, v, scale, dropout_p, causal_mask(T, T, q.dtype, q.device), terms, 0, T)
        # Logits computed here: in blocks of rows, each over the keys up to its last row, so that
        # the keys no row of the block sees are never computed (5/8 of the (T, T) work in 4 blocks)
        parts = []
        for start, stop in causal_row_blocks(T):
            q_rows, k_past, v_past = q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop]
            mask = causal_mask(stop - start, stop, q.dtype, q.device)
            parts.append(attend_block(q_rows, k_past, v_past, scale, dropout_p, mask, terms, start, stop))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


class MaskedSdpa:
    """The materialised bias, causal mask folded in (sdpa_mask), as SDPA's attn_mask."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask  # (1, H, T, T) or (B, H, T, T)

    def __call__(self, q, k, v, scale: float, dropout_p: float, terms: LayerTerms = NO_TERMS) -> torch.Tensor:
        if terms.empty:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=dropout_p, scale=scale)
        T = q.size(-2)
        return attend_block(q, k, v, scale, dropout_p, self.mask, terms, 0, T)


def causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def causal_block_mask(length: int, device: torch.device, block: int = 128) -> BlockMask:
    """FlexAttention's causal BlockMask, built from its (n, n) block structure, n = T / block:
    create_block_mask would evaluate the mask at all T x T pairs first. Blocks below the diagonal
    are full (the kernel skips the mask there), diagonal ones partial; a last block row padded
    past `length` is partial throughout, as create_block_mask makes it."""
    n = -(-length // block)
    index = torch.arange(n, device=device)
    below = index.unsqueeze(1) > index  # (n, n): key block before the query block
    full = below & (index < n - 1).unsqueeze(1) if length % block else below
    partial = (below | (index.unsqueeze(1) == index)) & ~full

    def ordered(blocks):  # (n, n) -> per row: how many, and their columns first (1, 1, n), (1, 1, n, n)
        blocks = blocks.to(torch.int32)
        count = blocks.sum(-1, dtype=torch.int32)
        columns = torch.argsort(blocks, dim=-1, descending=True, stable=True).to(torch.int32)
        return count[None, None], columns[None, None]

    return BlockMask.from_kv_blocks(
        *ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=causal_mask_mod, seq_lengths=(length, length)
    )


@functools.cache
def compiled_flex_attention():
    # Compiled on first use; uncompiled, flex_attention materialises the (B, H, T, T) scores.
    return torch.compile(flex_attention)


def fused_flex_attention(q, k, v, **kwargs) -> torch.Tensor:
    # Each score_mod (encoding), autograd mode and new shape compiles once. Past dynamo's default
    # limit of 8 it would run flex_attention uncompiled, with the scores materialised: allow more,
    # and fail rather than fall back.
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return compiled_flex_attention()(q, k, v, **kwargs)


def added_score_mods(first: ScoreMod | None, second: ScoreMod | None) -> ScoreMod | None:
    """Two score_mods applied one after the other (each adds its bias); None where there is none."""
    if first is None or second is None:
        return first or second
    return lambda score, b, h, q_idx, kv_idx: second(first(score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)


def with_log_sum_exp(attend, q, k, v, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention's output and the log-sum-exp of each row's logits (B, H, T), natural log:
    asked for with return_aux where torch has it (2.9 on), return_lse before."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return attend(q, k, v, return_lse=True, **kwargs)
    y, aux = attend(q, k, v, return_aux=AuxRequest(lse=True), **kwargs)
    return y, aux.lse


class FlexPath:
    """The encoding's score_mod (None: no bias) and the causal BlockMask, for FlexAttention. A
    layer's bias from its input joins the score_mod; a sink scales the output by the probability
    the sink leaves to the keys, sigmoid(lse - sink), from the softmax's log-sum-exp."""

    def __init__(self, pos_enc: PositionalEncoding, pos: torch.Tensor, length: int):
        self.score_mod = pos_enc.score_mod(pos, pos)
        self.block_mask = causal_block_mask(length, pos.device)

    def __call__(self, q, k, v, scale: float, dropout_p: float, terms: LayerTerms = NO_TERMS) -> torch.Tensor:
        if dropout_p:
            raise ValueError("model.net.attention=flex has no attention dropout: set model.net.dropout=0")
        if terms.contextual is not None or terms.logits is not None:
            raise ValueError(
                "model.net.attention=flex cannot compute a bias from each row's logits (CoPE) nor merge "
                "two rotations by distance (ReRoPE, Self-Extend): use model.net.attention=sdpa or chunked"
            )
        score_mod = self.score_mod
        if terms.input_bias is not None:
            input_mod = terms.input_bias.score_mod()
            if input_mod is None:
                raise ValueError(
                    "model.net.attention=flex needs the encoding's input bias as a score_mod, and it has "
                    "none: use model.net.attention=sdpa or chunked"
                )
            score_mod = added_score_mods(score_mod, input_mod)
        # inside a compiled forward (model.compile) the enclosing graph fuses flex_attention itself
        fused = q.is_cuda and not torch.compiler.is_compiling()
        attend = fused_flex_attention if fused else flex_attention
        if terms.sink is None:
            return attend(q, k, v, score_mod=score_mod, block_mask=self.block_mask, scale=scale)
        y, lse = with_log_sum_exp(attend, q, k, v, score_mod=score_mod, block_mask=self.block_mask, scale=scale)
        # softmax over [keys, sink]: the keys keep exp(lse) / (exp(lse) + exp(sink)) of the mass
        kept = torch.sigmoid(lse.float() - terms.sink.float().view(1, -1, 1))  # (B, H, T)
        return y * kept.unsqueeze(-1).to(y.dtype)


class BlockBias:
    """The logit bias of query rows [start, stop) over keys [0, stop), causal mask folded in:
    pos_enc.bias(pos[start:stop], pos[:stop]) (..., H, rows, stop), or the causal mask alone for
    an encoding without a bias (`with_mask_only`). Blocks are kept for the next layers while they
    fit in `budget` elements together, and computed again past that. The chunked path and the
    diagnostics' attention read their blocks from here."""

    def __init__(self, pos_enc: PositionalEncoding, pos: torch.Tensor, budget: int, with_mask_only: bool = False):
        self.pos_enc, self.pos, self.budget, self.with_mask_only = pos_enc, pos, budget, with_mask_only
        self.kept: dict[tuple[int, int], torch.Tensor | None] = {}

    def __call__(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor | None:
        if (start, stop) in self.kept:
            return self.kept[(start, stop)]
        bias = self.pos_enc.bias(self.pos[..., start:stop], self.pos[..., :stop])  # (..., H, rows, stop)
        if bias is None:
            if not self.with_mask_only:
                return None
            bias = causal_mask(stop - start, stop, dtype, self.pos.device)
        else:
            bias = sdpa_mask(bias, dtype)
        if bias.numel() + sum(b.numel() for b in self.kept.values() if b is not None) <= self.budget:
            self.kept[(start, stop)] = bias
        return bias


class ChunkedPath:
    """Query rows in blocks within the memory budget, each block with its own bias over the keys
    up to its last row. A short sequence is one block, kept: the MaskedSdpa path, same numbers.
    For an encoding without a bias (whose layers bring terms of their own: a sink, FoX's gates),
    the blocks hold the causal mask alone (BlockBias with_mask_only)."""

    def __init__(self, block_bias: BlockBias):
        self.block_bias = block_bias

    def __call__(self, q, k, v, scale: float, dropout_p: float, terms: LayerTerms = NO_TERMS) -> torch.Tensor:
        if (y := own_attention(q, k, v, scale, dropout_p, terms)) is not None:
            return y
        B, H, T, hd = q.shape
        parts = []
        for start, stop in row_blocks(T, B * H * T, self.block_bias.budget):
            bias = self.block_bias(start, stop, q.dtype)
            if bias is None:  # a bias encoding that gave none: the causal kernel, as without one
                return CausalSdpa()(q, k, v, scale=scale, dropout_p=dropout_p, terms=terms)
            q_rows, k_past, v_past = q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop]
            parts.append(attend_block(q_rows, k_past, v_past, scale, dropout_p, bias, terms, start, stop))
        return torch.cat(parts, dim=2)  # (B, H, T, hd)


@dataclass
class PreparedPositions:
    """What every layer of one forward shares, prepared once by GPT.prepare: the encoding, what
    its rotate() reads (its prepare()), the multiplier on the logits, and the attention path with
    the bias and the causal mask in it."""

    pos_enc: PositionalEncoding  # the layer's encoding: pos_enc.for_layer(layer)
    pos: torch.Tensor  # (T,) or (B, T)
    rotation: Any  # pos_enc.prepare(pos, length)
    logit_factor: float  # pos_enc.logit_scale(length)
    attend: AttentionPath
    # per query row, the multiplier model.net.logit_temperature puts on its logits: (T, 1), or None
    query_factor: torch.Tensor | None = None


class CausalSelfAttention(nn.Module):
    """One layer's attention. `layer` is its index, which the encoding's per-layer hooks receive;
    `sink` gives it a learned sink logit per head (zero at the start), and `head_temperature`
    SSMax's learned s per head (poslab.model.temperature)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float,
        layer: int = 0,
        sink: bool = False,
        head_temperature: nn.Module | None = None,
    ):
        super().__init__()
        self.n_head = n_head
        self.layer = layer
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.sink = nn.Parameter(torch.zeros(n_head)) if sink else None
        self.head_temperature = head_temperature

    def project(self, x: torch.Tensor, prepared: PreparedPositions) -> tuple[torch.Tensor, ...]:
        """x (B, T, C) -> q, k (rotated by the encoding; q times the row's temperature) and v,
        each (B, H, T, hd)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, hd)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = prepared.pos_enc.rotate(q, k, prepared.rotation)
        if prepared.query_factor is not None:
            factor = prepared.query_factor  # (T, 1)
            if self.head_temperature is not None:
                factor = self.head_temperature(factor)  # (H, T, 1)
            q = q * factor.to(q.dtype)
        return q, k, v

    def terms(self, x: torch.Tensor, prepared: PreparedPositions) -> LayerTerms:
        """What this layer adds to the shared path: the encoding's bias from x, its bias from the
        logits, and the sink."""
        pos_enc = prepared.pos_enc
        contextual = (
            functools.partial(pos_enc.contextual_bias, layer=self.layer) if pos_enc.has_contextual_bias else None
        )
        logits = (
            functools.partial(pos_enc.block_logits, prepared=prepared.rotation) if pos_enc.has_block_logits else None
        )
        # attend computes the whole attention: never for an encoding whose bias it would leave out
        own = pos_enc.has_attend and not pos_enc.has_bias
        attention = functools.partial(pos_enc.attend, prepared=prepared.rotation) if own else None
        return LayerTerms(
            input_bias=pos_enc.input_bias(x, self.layer),
            contextual=contextual,
            sink=self.sink,
            logits=logits,
            attention=attention,
        )

    def logit_scale(self, prepared: PreparedPositions, head_dim: int) -> float:
        return prepared.logit_factor / math.sqrt(head_dim)

    def forward(self, x: torch.Tensor, prepared: PreparedPositions) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x, prepared)
        dropout = self.dropout if self.training else 0.0
        scale = self.logit_scale(prepared, q.size(-1))
        y = prepared.attend(q, k, v, scale=scale, dropout_p=dropout, terms=self.terms(x, prepared))
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, hd) -> (B, T, C)
        return self.resid_dropout(self.proj(y))
