"""A small GPT (nanoGPT layout) whose attention calls the positional encoding's hooks.

    tokens -> wte -> pos_enc.embed -> [LayerNorm -> attention -> + -> LayerNorm -> MLP -> +] x n_layer
           -> LayerNorm -> lm_head (tied to wte)

Once per forward, `GPT.prepare` turns the positions into what every layer shares
(`PreparedPositions`): the encoding's rotation tables (pos_enc.prepare), its logit multiplier
(pos_enc.logit_scale) and the attention path with its bias (model/attention.py). Inside each
layer, queries and keys pass through pos_enc.rotate and the path computes attention.

Which path (`model.net.attention`, default auto): an encoding without a bias always takes SDPA with
is_causal (flash kernels). With a bias, auto takes flex on CUDA (training and evaluation, unless
training with dropout, which flex has not); elsewhere sdpa, the materialised bias, while autograd is
on (training), and chunked under no_grad (evaluation at any length within the memory budget).

Shapes: B batch, T sequence length, C width; see model/attention.py for the attention's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from poslab.encodings import NoPE, PositionalEncoding, span
from poslab.memory import BLOCK_ELEMENTS
from poslab.model.attention import (
    AttentionPath,
    BlockBias,
    CausalSdpa,
    CausalSelfAttention,
    ChunkedPath,
    FlexPath,
    MaskedSdpa,
    PreparedPositions,
    sdpa_mask,
)


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

    def forward(self, x: torch.Tensor, prepared: PreparedPositions) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), prepared)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    # The chunked path's bias budget per block of query rows, and as much again for blocks kept
    # across layers (elements; float32 logits)
    chunk_elements: int = BLOCK_ELEMENTS

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
        # every setting is validated once, with the rest of the config, in poslab.config
        super().__init__()
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
        if pos is None:  # the span is known without reading the positions back from the device
            pos, length = torch.arange(T, device=idx.device), T
        else:
            length = span(pos)
        self.pos_enc.check_length(length)

        x = self.pos_enc.embed(self.wte(idx), pos)
        x = self.drop(x)
        prepared = self.prepare(pos, length, x.dtype)  # once per forward, shared by every layer
        for block in self.blocks:
            x = block(x, prepared)
        return self.lm_head(self.ln_f(x))

    def prepare(self, pos: torch.Tensor, length: int, dtype: torch.dtype) -> PreparedPositions:
        """What every layer of a forward over positions `pos` (spanning `length`) shares."""
        return PreparedPositions(
            pos_enc=self.pos_enc,
            pos=pos,
            rotation=self.pos_enc.prepare(pos, length),
            logit_factor=self.pos_enc.logit_scale(length),
            attend=self.attention_for(pos, dtype),
        )

    def attention_path(self, device: torch.device) -> str:
        """`attention`, with auto resolved for this forward (see the module docstring)."""
        if self.attention != "auto":
            return self.attention
        if not self.pos_enc.has_bias:
            return "sdpa"
        if device.type == "cuda" and not (self.training and self.dropout > 0):  # flex has no dropout
            return "flex"
        return "sdpa" if torch.is_grad_enabled() else "chunked"

    def attention_for(self, pos: torch.Tensor, dtype: torch.dtype) -> AttentionPath:
        """The attention path of this forward, with the encoding's bias in it."""
        path = self.attention_path(pos.device)
        if path == "flex":
            return FlexPath(self.pos_enc, pos, pos.shape[-1])
        if not self.pos_enc.has_bias:
            return CausalSdpa()
        if path == "chunked":
            return ChunkedPath(BlockBias(self.pos_enc, pos, self.chunk_elements))
        bias = self.pos_enc.bias(pos, pos)  # (H, T, T) or (B, H, T, T)
        return CausalSdpa() if bias is None else MaskedSdpa(sdpa_mask(bias, dtype))
