"""The GPT (gpt.py), its attention and the paths the logits take (attention.py), and its FLOPs."""

from poslab.model.attention import (
    ATTENTION_PATHS,
    BlockBias,
    CausalSdpa,
    CausalSelfAttention,
    ChunkedPath,
    FlexPath,
    MaskedSdpa,
    PreparedPositions,
    causal_bias,
    causal_block_mask,
    causal_mask_mod,
    sdpa_mask,
)
from poslab.model.flops import flops_per_token, matmul_parameters
from poslab.model.gpt import GPT, MLP, Block

__all__ = [
    "ATTENTION_PATHS",
    "GPT",
    "MLP",
    "Block",
    "BlockBias",
    "CausalSdpa",
    "CausalSelfAttention",
    "ChunkedPath",
    "FlexPath",
    "MaskedSdpa",
    "PreparedPositions",
    "causal_bias",
    "causal_block_mask",
    "causal_mask_mod",
    "flops_per_token",
    "matmul_parameters",
    "sdpa_mask",
]
