"""Causal self-attention and the paths its logits take, behind one interface.

Shapes: B batch, H heads, T sequence length, hd head size, C = H * hd; Tq, Tk query and key rows.

Every path is called the same way, `attend(q, k, v, scale, dropout_p) -> y` with q, k, v and y of
shape (B, H, T, hd), and is built once per forward (`GPT.prepare`), so that whatever it derives
from the positions (a bias, a block mask) is shared by every layer:

    CausalSdpa       no bias: scaled_dot_product_attention with is_causal (flash kernels, no mask)
    MaskedSdpa       the encoding's bias as one (H, T, T) float tensor with the causal mask folded
                     in (as x-transformers' attend.py does), handed to scaled_dot_product_attention
    FlexPath         FlexAttention: the encoding's score_mod adds each bias value inside the kernel
                     and a causal BlockMask skips the future, so nothing of size T x T exists
                     (compiled on CUDA; on a CPU it runs eagerly, materialising the scores, forward only)
    ChunkedPath      blocks of query rows, each with its own (H, rows, keys) bias over the keys up
                     to its last row (a `BlockBias`): whatever T, a block holds at most
                     poslab.memory.BLOCK_ELEMENTS logits, and so do the blocks kept for later layers

Causality is by index in the sequence, not by position value, so offsets and sampled positions
keep the model autoregressive.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from poslab.encodings import PositionalEncoding
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


class AttentionPath(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float
    ) -> torch.Tensor: ...


class CausalSdpa:
    """No bias: SDPA with is_causal, no (T, T) tensor on any device."""

    def __call__(self, q, k, v, scale: float, dropout_p: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)


class MaskedSdpa:
    """The materialised bias, causal mask folded in (sdpa_mask), as SDPA's attn_mask."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask  # (1, H, T, T) or (B, H, T, T)

    def __call__(self, q, k, v, scale: float, dropout_p: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=dropout_p, scale=scale)


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


class FlexPath:
    """The encoding's score_mod (None: no bias) and the causal BlockMask, for FlexAttention."""

    def __init__(self, pos_enc: PositionalEncoding, pos: torch.Tensor, length: int):
        self.score_mod = pos_enc.score_mod(pos, pos)
        self.block_mask = causal_block_mask(length, pos.device)

    def __call__(self, q, k, v, scale: float, dropout_p: float) -> torch.Tensor:
        if dropout_p:
            raise ValueError("model.net.attention=flex has no attention dropout: set model.net.dropout=0")
        # inside a compiled forward (model.compile) the enclosing graph fuses flex_attention itself
        fused = q.is_cuda and not torch.compiler.is_compiling()
        attend = fused_flex_attention if fused else flex_attention
        return attend(q, k, v, score_mod=self.score_mod, block_mask=self.block_mask, scale=scale)


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
            bias = torch.zeros(stop - start, stop, device=self.pos.device)
        bias = sdpa_mask(bias, dtype) if bias.dim() > 2 else causal_bias(bias.to(dtype))
        if bias.numel() + sum(b.numel() for b in self.kept.values() if b is not None) <= self.budget:
            self.kept[(start, stop)] = bias
        return bias


class ChunkedPath:
    """Query rows in blocks within the memory budget, each block with its own bias over the keys
    up to its last row. A short sequence is one block, kept: the MaskedSdpa path, same numbers."""

    def __init__(self, block_bias: BlockBias):
        self.block_bias = block_bias

    def __call__(self, q, k, v, scale: float, dropout_p: float) -> torch.Tensor:
        B, H, T, hd = q.shape
        parts = []
        for start, stop in row_blocks(T, B * H * T, self.block_bias.budget):
            bias = self.block_bias(start, stop, q.dtype)
            if bias is None:  # the encoding gave no bias after all
                return CausalSdpa()(q, k, v, scale=scale, dropout_p=dropout_p)
            q_rows, k_past, v_past = q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop]
            parts.append(F.scaled_dot_product_attention(q_rows, k_past, v_past, bias, dropout_p, scale=scale))
        return torch.cat(parts, dim=2)  # (B, H, T, hd)


@dataclass
class PreparedPositions:
    """What every layer of one forward shares, prepared once by GPT.prepare: the encoding, what
    its rotate() reads (its prepare()), the multiplier on the logits, and the attention path with
    the bias and the causal mask in it."""

    pos_enc: PositionalEncoding
    pos: torch.Tensor  # (T,) or (B, T)
    rotation: Any  # pos_enc.prepare(pos, length)
    logit_factor: float  # pos_enc.logit_scale(length)
    attend: AttentionPath


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def project(self, x: torch.Tensor, prepared: PreparedPositions) -> tuple[torch.Tensor, ...]:
        """x (B, T, C) -> q, k (rotated by the encoding) and v, each (B, H, T, hd)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, hd)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = prepared.pos_enc.rotate(q, k, prepared.rotation)
        return q, k, v

    def logit_scale(self, prepared: PreparedPositions, head_dim: int) -> float:
        return prepared.logit_factor / math.sqrt(head_dim)

    def forward(self, x: torch.Tensor, prepared: PreparedPositions) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x, prepared)
        dropout = self.dropout if self.training else 0.0
        y = prepared.attend(q, k, v, scale=self.logit_scale(prepared, q.size(-1)), dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, hd) -> (B, T, C)
        return self.resid_dropout(self.proj(y))
