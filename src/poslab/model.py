"""A small GPT (nanoGPT layout) whose attention calls the positional encoding's hooks.

    tokens -> wte -> pos_enc.embed -> [LayerNorm -> attention -> + -> LayerNorm -> MLP -> +] x n_layer
           -> LayerNorm -> lm_head (tied to wte)

Inside attention, queries and keys pass through pos_enc.rotate, and pos_enc.bias (computed once
per forward, shared by all layers) is added to the logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from poslab.encodings import NoPE, PositionalEncoding


def causal_bias(bias: torch.Tensor) -> torch.Tensor:
    """Fold the causal mask into a float logit bias (..., Tq, Tk): -inf above the diagonal.

    Causality is by index in the sequence, not by position value, so offsets and sampled
    positions keep the model autoregressive.
    """
    q_len, k_len = bias.shape[-2:]
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=bias.device).triu(1 + k_len - q_len)
    return bias.masked_fill(future, float("-inf"))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, pos, pos_enc: PositionalEncoding, attn_bias: torch.Tensor | None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = pos_enc.rotate(q, k, pos)
        scale = pos_enc.logit_scale(T) / math.sqrt(q.size(-1))
        dropout = self.dropout if self.training else 0.0
        if attn_bias is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
        else:  # attn_bias already holds the causal mask as -inf
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout, scale=scale)
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
    def __init__(
        self,
        vocab_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        pos_enc: PositionalEncoding | None = None,
    ):
        # sizes are validated once, with the rest of the config, in poslab.config
        super().__init__()
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
        # One (H, T, T) bias per forward, shared by every layer.
        attn_bias = self.pos_enc.bias(pos, pos)
        if attn_bias is not None:
            attn_bias = causal_bias(attn_bias.to(x.dtype))
            if attn_bias.dim() == 3:
                # (1, H, T, T): a 4-D mask takes SDPA's fused kernel on CPU, a 3-D one its slow math path
                attn_bias = attn_bias.unsqueeze(0)
        for block in self.blocks:
            x = block(x, pos, self.pos_enc, attn_bias)
        return self.lm_head(self.ln_f(x))
