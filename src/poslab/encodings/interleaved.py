"""Encodings that differ from layer to layer.

IRoPE   RoPE in most layers and none (NoPE) in every `nope_every`-th: Llama 4's iRoPE (its
        "interleaved" layers, every 4th without RoPE), SmolLM3 (NoPE in every 4th layer); Yang
        et al. 2025, "Rope to Nope and Back Again" (arXiv 2501.18795). Layers are counted from
        1: with nope_every=4, layers 4, 8, ... have no positional encoding.
"""

from __future__ import annotations

from poslab.encodings.base import NoPE, PositionalEncoding
from poslab.encodings.rotary import RoPE


class IRoPE(RoPE):
    """RoPE with NoPE layers interleaved. The weights of a NoPE layer mean something else than a
    RoPE layer's, so its checkpoints are not RoPE's (a family of its own)."""

    family = "irope"

    def __init__(self, n_embd: int, n_head: int, n_layer: int, nope_every: int = 4, base: float = 10000.0):
        super().__init__(n_embd, n_head, base)
        if not 1 <= nope_every <= n_layer:
            raise ValueError(
                f"pos_enc.nope_every={nope_every} must be between 1 and model.net.n_layer={n_layer}: "
                f"otherwise no layer goes without RoPE"
            )
        self.nope_every = nope_every
        self.nope_layers = tuple(layer for layer in range(n_layer) if (layer + 1) % nope_every == 0)
        self.nope = NoPE()

    def for_layer(self, layer: int) -> PositionalEncoding:
        return self.nope if layer in self.nope_layers else self
