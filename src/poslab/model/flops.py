"""Model FLOPs per token, for model FLOPs utilisation (MFU).

As in the PaLM paper's appendix B (and nanoGPT's estimate_mfu): 6 N + 12 L T d per token for a
forward and backward pass, with N the weights that take part in a matmul for every token (the
blocks' linear layers and the output head, tied to the embedding; not the embedding lookup,
LayerNorms or position tables), L layers, T the context, d the width. The second term is
attention's scores and weighted sum, counted without the causal half.
"""

from __future__ import annotations

from torch import nn


def matmul_parameters(model: nn.Module) -> int:
    """Weights of the nn.Linear layers, each counted once (the tied output head included)."""
    seen = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return sum(seen.values())


def flops_per_token(model: nn.Module, n_layer: int, n_embd: int, context: int) -> int:
    """6 N + 12 L T d: the FLOPs of one token's forward and backward pass."""
    return 6 * matmul_parameters(model) + 12 * n_layer * context * n_embd
