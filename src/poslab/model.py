"""A small GPT (nanoGPT layout) whose attention calls the positional encoding's hooks.

    tokens -> wte -> pos_enc.embed -> [LayerNorm -> attention -> + -> LayerNorm -> MLP -> +] x n_layer
           -> LayerNorm -> lm_head (tied to wte)

Inside attention, queries and keys pass through pos_enc.rotate, and the encoding's bias, if it
has one, is added to the logits. How the bias reaches the logits is `GPT.attention`
(`model.net.attention`), decided once per forward and shared by all layers:

    sdpa     pos_enc.bias as one (H, T, T) float tensor with the causal mask folded in, handed
             to scaled_dot_product_attention (an encoding without a bias: is_causal, no mask)
    flex     FlexAttention: pos_enc.score_mod adds each bias value inside the kernel and a causal
             BlockMask skips the future, so nothing of size T x T exists (compiled on CUDA; on
             CPU it runs eagerly, as a reference that materialises the scores, forward only)
    chunked  blocks of query rows, each with its own (H, rows, keys) bias over the keys up to its
             last row: whatever T, a block's bias is at most GPT.chunk_elements, and so are the
             blocks kept for the next layers
    auto     no bias: sdpa (is_causal, flash kernels). With a bias: flex on CUDA (training and
             evaluation); elsewhere sdpa while autograd is on (training), chunked under no_grad

Shapes: B batch, H heads, T sequence length, hd head dim, C = H * hd; Tq, Tk query and key rows.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from poslab.encodings import NoPE, PositionalEncoding

ATTENTION = ("auto", "sdpa", "flex", "chunked")


def causal_bias(bias: torch.Tensor) -> torch.Tensor:
    """Fold the causal mask into a float logit bias (..., Tq, Tk): -inf above the diagonal.

    Causality is by index in the sequence, not by position value, so offsets and sampled
    positions keep the model autoregressive.
    """
    q_len, k_len = bias.shape[-2:]
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=bias.device).triu(1 + k_len - q_len)
    return bias.masked_fill(future, float("-inf"))


def sdpa_mask(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An encoding's bias (..., H, Tq, Tk), the last Tq rows of a causal sequence, as SDPA's float
    attn_mask: in `dtype`, causal mask folded in, 4-D (a 3-D mask takes SDPA's slow math path on
    CPU, a 4-D one its fused kernel)."""
    mask = causal_bias(bias.to(dtype))
    return mask.unsqueeze(0) if mask.dim() == 3 else mask


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


class FlexBias:
    """The flex path: the encoding's score_mod (None: no bias) and the causal BlockMask."""

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


class ChunkedBias:
    """The chunked path: query rows [start, stop) attend to keys [0, stop) with the bias of
    pos_enc.bias(pos[start:stop], pos[:stop]), causal mask folded in. Rows per block keep a block's
    bias within `max_elements`; blocks are kept for the next layers while they fit in
    `max_elements` together, and computed again in each layer past that. A short sequence is one
    block, kept: the sdpa path, same numbers."""

    def __init__(self, pos_enc: PositionalEncoding, pos: torch.Tensor, max_elements: int):
        self.pos_enc, self.pos, self.max_elements = pos_enc, pos, max_elements
        self.kept: dict[tuple[int, int], torch.Tensor] = {}

    def block_bias(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor | None:
        if (start, stop) in self.kept:
            return self.kept[(start, stop)]
        bias = self.pos_enc.bias(self.pos[..., start:stop], self.pos[..., :stop])  # (..., H, rows, stop)
        if bias is None:
            return None
        bias = sdpa_mask(bias, dtype)  # rows start..stop-1 against keys 0..stop-1
        if bias.numel() + sum(b.numel() for b in self.kept.values()) <= self.max_elements:
            self.kept[(start, stop)] = bias
        return bias

    def __call__(self, q, k, v, scale: float, dropout_p: float) -> torch.Tensor:
        B, H, T, hd = q.shape
        rows = max(1, self.max_elements // (B * H * T))
        parts = []
        for start in range(0, T, rows):
            stop = min(T, start + rows)
            bias = self.block_bias(start, stop, q.dtype)
            if bias is None:  # the encoding gave no bias after all
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
            q_rows, k_past, v_past = q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop]
            parts.append(F.scaled_dot_product_attention(q_rows, k_past, v_past, bias, dropout_p, scale=scale))
        return torch.cat(parts, dim=2)  # (B, H, T, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, pos, pos_enc: PositionalEncoding, attn_bias: torch.Tensor | FlexBias | ChunkedBias | None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = pos_enc.rotate(q, k, pos)
        scale = pos_enc.logit_scale(T) / math.sqrt(q.size(-1))
        dropout = self.dropout if self.training else 0.0
        if attn_bias is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
        elif isinstance(attn_bias, torch.Tensor):  # attn_bias already holds the causal mask as -inf
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout, scale=scale)
        else:  # flex or chunked: adds the bias and the causal mask itself
            y = attn_bias(q, k, v, scale=scale, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, hd) -> (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x, pos, pos_enc, attn_bias):
        x = x + self.attn(self.ln_1(x), pos, pos_enc, attn_bias)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    # The chunked path's bias budget: 2^24 float32 logits (64 MiB) per block of query rows, and as
    # much again for blocks kept across layers.
    chunk_elements: int = 2**24

    def __init__(
        self,
        vocab_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        pos_enc: PositionalEncoding | None = None,
        attention: str = "auto",
    ):
        # sizes are validated once, with the rest of the config, in poslab.config
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"model.net.attention={attention}: allowed: {', '.join(ATTENTION)}")
        self.attention = attention
        self.dropout = dropout
        self.pos_enc = pos_enc if pos_enc is not None else NoPE()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)

        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink its output
        # projection by 1/sqrt(2 * n_layer) to keep the residual variance independent of depth.
        for name, param in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids; pos: (T,) or (B, T) integer positions, default 0..T-1.
        Returns logits (B, T, vocab_size)."""
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device)
        self.pos_enc.check_length(int(pos.max()) + 1)

        x = self.pos_enc.embed(self.wte(idx), pos)
        x = self.drop(x)
        attn_bias = self.attention_bias(pos, T, x.dtype)  # once per forward, shared by every layer
        for block in self.blocks:
            x = block(x, pos, self.pos_enc, attn_bias)
        return self.lm_head(self.ln_f(x))

    def attention_path(self, device: torch.device) -> str:
        """`attention`, with auto resolved for this forward (see the module docstring)."""
        if self.attention != "auto":
            return self.attention
        if not self.pos_enc.has_bias:
            return "sdpa"
        if device.type == "cuda" and not (self.training and self.dropout > 0):  # flex has no dropout
            return "flex"
        return "sdpa" if torch.is_grad_enabled() else "chunked"

    def attention_bias(self, pos: torch.Tensor, length: int, dtype: torch.dtype):
        path = self.attention_path(pos.device)
        if path == "flex":
            return FlexBias(self.pos_enc, pos, length)
        if not self.pos_enc.has_bias:
            return None
        if path == "chunked":
            return ChunkedBias(self.pos_enc, pos, self.chunk_elements)
        attn_bias = self.pos_enc.bias(pos, pos)  # (H, T, T) or (B, H, T, T)
        return None if attn_bias is None else sdpa_mask(attn_bias, dtype)
