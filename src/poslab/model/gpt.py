"""A small GPT (nanoGPT layout) whose attention calls the positional encoding's hooks.

    tokens -> wte -> pos_enc.embed -> [LayerNorm -> attention -> + -> LayerNorm -> MLP -> +] x n_layer
           -> LayerNorm -> lm_head (tied to wte)

Once per forward, `GPT.prepare` turns the positions into what the layers share
(`PreparedPositions`): the encoding's rotation tables (pos_enc.prepare), its logit multiplier
(pos_enc.logit_scale), the rows' temperature (model/temperature.py) and the attention path with its
bias (model/attention.py); once per distinct encoding, for a scheme that runs a different one in
some layers (pos_enc.for_layer: iRoPE). Inside each layer, queries and keys pass through
pos_enc.rotate, and the layer hands the path what it adds of its own (a bias from its input, a
bias from the logits, a sink: attention.LayerTerms).

Which path (`model.net.attention`, default auto): an encoding without a bias, and no sink, always
takes SDPA with is_causal (flash kernels). With a bias (from the positions, the input or the
logits) or a sink, auto takes flex on CUDA (training and evaluation, unless training with dropout,
which flex has not, or the bias comes from the logits or the encoding merges two rotations by
distance (ReRoPE), which flex cannot compute); elsewhere sdpa, the materialised bias, while
autograd is on (training), and chunked under no_grad (evaluation at any length within the memory
budget).

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
from poslab.model.temperature import DEFAULT_SCALE, HeadTemperature, query_factor
from poslab.model.window import AttentionWindow, WindowedPath


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, **attention):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, **attention)
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
        sink: bool = False,
        logit_temperature: str = "none",
        temperature_scale: float | None = None,
        train_context: int | None = None,
    ):
        # every setting is validated once, with the rest of the config, in poslab.config
        super().__init__()
        self.attention = attention
        self.dropout = dropout
        self.sink = sink
        self.logit_temperature = logit_temperature
        self.temperature_scale = temperature_scale
        self.train_context = train_context
        # eval.window (model/window.py): set by poslab-eval on a loaded model, never trained with
        self.window: AttentionWindow | None = None
        self.pos_enc = pos_enc if pos_enc is not None else NoPE()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.drop = nn.Dropout(dropout)

        def head_temperature():
            if logit_temperature != "ssmax":
                return None
            return HeadTemperature(n_head, DEFAULT_SCALE["ssmax"] if temperature_scale is None else temperature_scale)

        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, dropout, layer=layer, sink=sink, head_temperature=head_temperature())
            for layer in range(n_layer)
        )
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
        prepared = self.prepare(pos, length, x.dtype)  # once per forward, shared by the layers
        for block, layer_prepared in zip(self.blocks, prepared, strict=True):
            x = block(x, layer_prepared)
        return self.lm_head(self.ln_f(x))

    def prepare(self, pos: torch.Tensor, length: int, dtype: torch.dtype) -> list[PreparedPositions]:
        """What each layer of a forward over positions `pos` (spanning `length`) reads, one entry
        per layer; layers that run the same encoding share one."""
        factor = query_factor(
            self.logit_temperature, pos.shape[-1], self.train_context or 1, self.temperature_scale, pos.device
        )
        by_encoding: dict[int, PreparedPositions] = {}
        per_layer = []
        for layer in range(len(self.blocks)):
            pos_enc = self.pos_enc.for_layer(layer)
            if id(pos_enc) not in by_encoding:
                by_encoding[id(pos_enc)] = PreparedPositions(
                    pos_enc=pos_enc,
                    pos=pos,
                    rotation=pos_enc.prepare(pos, length),
                    logit_factor=pos_enc.logit_scale(length),
                    attend=self.attention_for(pos, dtype, pos_enc, length),
                    query_factor=factor,
                )
            per_layer.append(by_encoding[id(pos_enc)])
        return per_layer

    def needs_logit_path(self, pos_enc: PositionalEncoding | None = None) -> bool:
        """Whether attention needs more than the causal mask: a bias of any kind, or a sink."""
        pos_enc = pos_enc or self.pos_enc
        return (
            pos_enc.has_bias
            or pos_enc.has_input_bias
            or pos_enc.has_contextual_bias
            or pos_enc.has_block_logits
            or self.sink
        )

    def attention_path(self, device: torch.device, pos_enc: PositionalEncoding | None = None) -> str:
        """`attention`, with auto resolved for this forward (see the module docstring)."""
        pos_enc = pos_enc or self.pos_enc
        if self.attention != "auto":
            return self.attention
        if not self.needs_logit_path(pos_enc):
            return "sdpa"
        flex_serves = (
            not pos_enc.has_contextual_bias
            and not pos_enc.has_block_logits
            and not (self.training and self.dropout > 0)
        )
        if device.type == "cuda" and flex_serves:  # flex has no dropout, a bias from the logits, two rotations
            return "flex"
        return "sdpa" if torch.is_grad_enabled() else "chunked"

    def attention_for(
        self,
        pos: torch.Tensor,
        dtype: torch.dtype,
        pos_enc: PositionalEncoding | None = None,
        length: int | None = None,
    ) -> AttentionPath:
        """The attention path of this forward, with the encoding's bias in it."""
        pos_enc = pos_enc or self.pos_enc
        if self.window is not None:  # the window's own blocks, whatever the encoding
            return WindowedPath(self.window, pos_enc, pos, length or span(pos), self.chunk_elements)
        path = self.attention_path(pos.device, pos_enc)
        if path == "flex":
            return FlexPath(pos_enc, pos, pos.shape[-1])
        if not self.needs_logit_path(pos_enc):
            return CausalSdpa()
        if path == "chunked":  # mask-only blocks where the layers' own terms are the only bias
            return ChunkedPath(BlockBias(pos_enc, pos, self.chunk_elements, with_mask_only=not pos_enc.has_bias))
        bias = pos_enc.bias(pos, pos)  # (H, T, T) or (B, H, T, T)
        return CausalSdpa() if bias is None else MaskedSdpa(sdpa_mask(bias, dtype))
