"""Encodings whose logit bias depends on the data, not on the positions alone.

    FoX    Lin et al., ICLR 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate"
           (arXiv 2503.02130): no positional encoding; each head of each layer computes a forget gate
           f_t = sigmoid(w . x_t + b) from the layer's input, and query i's logit on key j gets
           sum_{l=j+1..i} log f_l: a learned, input-dependent ALiBi. The bias is c_i - c_j with
           c_t = sum_{l<=t} log f_l, so a path needs only c (B, H, T), never a (T, T) table.
    CoPE   Golovneva et al. 2024, "Contextual Position Encoding" (arXiv 2405.18719): query i's
           position of key j counts the keys between them that its gates open,
           p_ij = sum_{t=j..i} sigmoid(q_i . k_t) (on the scaled logits), so positions are
           fractional and non-decreasing toward the past; the logit gets q_i . e[p_ij], with e a
           learned table of max_position vectors per layer, interpolated between integer positions
           and held at its last row past it.

Both count by index in the sequence, not by position value: sampled positions change nothing.
Their weights are theirs (each is a family of its own).

Shapes: B batch, H heads, T length, hd head size, rows a block of query rows, keys its keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poslab.encodings.base import InputBias, PositionalEncoding, ScoreMod


class ForgetGateBias(InputBias):
    """FoX's bias from the cumulative log forget gates c (B, H, T): c_i - c_j for query i, key j."""

    def __init__(self, cumulative: torch.Tensor):
        self.cumulative = cumulative  # (B, H, T), float32

    def rows(self, start: int, stop: int) -> torch.Tensor:
        c = self.cumulative
        return c[..., start:stop, None] - c[..., None, :stop]  # (B, H, rows, stop)

    def score_mod(self) -> ScoreMod:
        c = self.cumulative

        def forget(score, b, h, q_idx, kv_idx):
            return score + (c[b, h, q_idx] - c[b, h, kv_idx]).to(score.dtype)

        return forget


class FoX(PositionalEncoding):
    """Forgetting Attention (Lin et al. 2025, eq. 4-6): a forget gate per head and layer,
    f_t = sigmoid(w_f . x_t + b_f), x_t the layer's input after its LayerNorm. The gate projection's
    weights start like every other linear layer's and its bias at 0, so every gate starts at 1/2."""

    family = "fox"

    def __init__(self, n_embd: int, n_head: int, n_layer: int):
        super().__init__()
        self.n_head = n_head
        self.gates = nn.ModuleList(nn.Linear(n_embd, n_head) for _ in range(n_layer))
        for gate in self.gates:
            nn.init.zeros_(gate.bias)

    def log_forget_gates(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """log f_t per head: (B, T, C) -> (B, H, T), in float32 (their running sums must not round)."""
        return F.logsigmoid(self.gates[layer](x).float()).transpose(1, 2)

    def input_bias(self, x: torch.Tensor, layer: int) -> ForgetGateBias:
        return ForgetGateBias(self.log_forget_gates(x, layer).cumsum(dim=-1))


def contextual_positions(gates: torch.Tensor) -> torch.Tensor:
    """CoPE eq. 3-4: p_ij = sum_{t=j..i} g_it for the gates g = sigmoid(z) of query rows (...,
    rows, keys), masked keys' gates 0: each row's total minus the running sum before the key (one
    running sum, no reversal); held at 0 or more (the subtraction may round just below 0 where
    every gate from the key on is 0)."""
    running = gates.cumsum(-1)  # then, in place: total - running + gates
    return running.sub_(gates.sum(-1, keepdim=True)).neg_().add_(gates).clamp_(min=0)


class _ContextualLookup(torch.autograd.Function):
    """CoPE's bias from the logits z (..., K) and the table read at integer positions A (..., P):
    A read at p_ij (contextual_positions) linearly between the integers on each side (eq. 5), p
    held at P - 1. Its time goes in passes over the (rows, keys) tensors, so it takes few: one
    gather of the value at floor(p) and one of the step to the next integer (0 past the last, so
    that a held position reads A[P - 1] and has no slope), and its gradient written out (the
    gates' is a running sum of the positions', sum over j <= t)."""

    @staticmethod
    def forward(ctx, logits, at_integers):
        last = at_integers.size(-1) - 1
        gates = torch.sigmoid(logits)
        positions = contextual_positions(gates).clamp_(max=last)
        index = positions.long()  # floor, as positions are >= 0
        weight = positions.sub_(index)  # in [0, 1), 0 where held at the last integer
        steps = F.pad(at_integers.diff(dim=-1), (0, 1))  # (..., P): A[k + 1] - A[k], and 0 at the last
        slope = steps.gather(-1, index)
        bias = torch.addcmul(at_integers.gather(-1, index), weight, slope)
        ctx.save_for_backward(gates, weight, index, slope)
        ctx.table_size = last + 1
        return bias

    @staticmethod
    def backward(ctx, grad):
        gates, weight, index, slope = ctx.saved_tensors
        shape = (*grad.shape[:-1], ctx.table_size)
        grad_table = grad.new_zeros(shape).scatter_add_(-1, index, grad)
        grad_steps = grad.new_zeros(shape).scatter_add_(-1, index, grad * weight)
        # A[k] enters as the value at k and through the steps k - 1 (as A[k]) and k (as -A[k]);
        # the last step is the constant 0
        grad_table[..., :-1].sub_(grad_steps[..., :-1])
        grad_table[..., 1:].add_(grad_steps[..., :-1])
        grad_gates = (grad * slope).cumsum(-1)  # a held position's slope is 0: no gradient to it
        return grad_gates.mul_(torch.addcmul(gates, gates, gates, value=-1.0)), grad_table


class CoPE(PositionalEncoding):
    """Contextual Position Encoding (Golovneva et al. 2024): per layer a table e of max_position
    vectors of the head size, shared by the heads and starting at 0 (so training starts from
    NoPE); positions past max_position - 1 read its last row."""

    family = "cope"

    def __init__(self, n_embd: int, n_head: int, n_layer: int, max_position: int):
        super().__init__()
        if max_position < 2:
            raise ValueError(f"pos_enc.max_position must be at least 2, got {max_position}")
        self.max_position = max_position
        head_dim = n_embd // n_head
        self.tables = nn.ParameterList(nn.Parameter(torch.zeros(max_position, head_dim)) for _ in range(n_layer))

    def contextual_bias(self, q: torch.Tensor, logits: torch.Tensor, layer: int) -> torch.Tensor:
        at_integer_positions = q @ self.tables[layer].to(q.dtype).T  # (B, H, rows, max_position)
        return _ContextualLookup.apply(logits, at_integer_positions)  # (B, H, rows, keys)
