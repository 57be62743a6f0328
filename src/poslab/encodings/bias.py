"""Encodings that add a bias to the attention logits: ALiBi, T5, KERPLE, FIRE.

`bias(q_pos, k_pos)` is called once per forward and shared by every layer; the model folds the
causal mask into it. Positions are integers of shape (T,) or (B, T) (per-sample positions, e.g.
sorted samples from a larger range); the bias is (H, Tq, Tk) or (B, H, Tq, Tk) accordingly.

`score_mod(q_pos, k_pos)` is the same bias for FlexAttention: a function of one logit's indices
(b, h, q_idx, kv_idx) that reads the positions and adds that one bias value, so no (H, Tq, Tk)
tensor exists. Both forms call the same helpers (`alibi_bias`, `t5_relative_bucket`,
`KERPLE.kernel`, `FIRE.psi` / `FIRE.mlp`), so they cannot drift apart. The learned biases read a
table over distances 0..span-1 (H, span), computed with autograd outside the kernel: its gradient
is a scatter into H * span entries rather than into a few parameters shared by every logit.

Shapes: H heads, Tq query positions, Tk key positions; "..." is () or (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from poslab.encodings.base import PositionalEncoding
from poslab.memory import rows_per_block


def query_key_distance(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """i - j for query position i and key position j: (..., Tq, Tk), >= 0 for keys in the past."""
    return q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)


def per_token(values: torch.Tensor):
    """values (T,) or (B, T) -> at(b, index): token `index`'s value in sample b, for a score_mod."""
    if values.dim() == 1:
        return lambda b, index: values[index]
    return lambda b, index: values[b, index]


def distance_at(q_pos: torch.Tensor, k_pos: torch.Tensor):
    """The elementwise `query_key_distance`: (b, q_idx, kv_idx) -> i - j, for a score_mod."""
    q_at, k_at = per_token(q_pos), per_token(k_pos)
    return lambda b, q_idx, kv_idx: q_at(b, q_idx) - k_at(b, kv_idx)


def distance_span(q_pos: torch.Tensor, k_pos: torch.Tensor) -> int:
    """1 + the largest |i - j|: the length of a table indexed by distance."""
    return int(torch.maximum(q_pos.max() - k_pos.min(), k_pos.max() - q_pos.min())) + 1


def integer_positions(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    return not (q_pos.is_floating_point() or k_pos.is_floating_point())


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head slopes of Press et al., ALiBi (arXiv 2108.12409).

    For n heads, n a power of two, the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...,
    2^(-8). Otherwise the paper (and its reference code) takes the slopes of the closest smaller
    power of two m, then fills the remaining n - m heads with every other slope of 2m heads.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_head <= 0:
        raise ValueError(f"ALiBi needs model.net.n_head >= 1, got {n_head}")
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest != n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slope: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """-slope * (i - j), broadcast."""
    return slope * -distance.to(slope.dtype)


class ALiBi(PositionalEncoding):
    """Attention with Linear Biases: head h adds -slope_h * (i - j) to the logit of query i on key j."""

    family = "alibi"

    def __init__(self, n_head: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def bias(self, q_pos, k_pos):
        distance = query_key_distance(q_pos, k_pos)  # (..., Tq, Tk)
        # (H, 1, 1) * (..., 1, Tq, Tk) -> (H, Tq, Tk) or (B, H, Tq, Tk)
        return alibi_bias(self.slopes.view(-1, 1, 1), distance.unsqueeze(-3))

    def score_mod(self, q_pos, k_pos):
        slopes, distance = self.slopes, distance_at(q_pos, k_pos)

        def alibi(score, b, h, q_idx, kv_idx):
            return score + alibi_bias(slopes[h], distance(b, q_idx, kv_idx))

        return alibi


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table (H, N) at index (..., Tq, Tk) -> (..., H, Tq, Tk).

    Advanced indexing rather than F.embedding: on CPU its backward (an index_put) is 2-4x faster
    than embedding's for the (B, Tq, Tk) indices of per-sample positions.
    """
    return table[:, index].movedim(0, -3)


def t5_relative_bucket(distance: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bucketing of a query-key distance i - j, unidirectional (causal) form.

    Raffel et al., T5 (arXiv 1910.10683), section 2.1, and Mesh TensorFlow's
    `_relative_position_bucket`: keys in the future share bucket 0 with distance 0; distances below
    num_buckets/2 get a bucket each; longer ones are log-spaced over the other half up to
    max_distance, and everything beyond shares the last bucket.
    """
    distance = distance.clamp(min=0)
    exact = num_buckets // 2
    # clamp only keeps log() finite for the short distances, which take the exact branch anyway
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (num_buckets - exact)).long()  # .long() truncates: floor of a positive
    far = far.clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, far)


class T5Bias(PositionalEncoding):
    """T5's relative position bias (Raffel et al., arXiv 1910.10683, section 2.1): a learned scalar
    per head and distance bucket (see `t5_relative_bucket`). Like T5, one table serves every layer.

    The table starts at N(0, 0.02), the GPT's embedding init, so at initialisation the model is
    close to NoPE and learns its distance profile from the first step.
    """

    family = "t5_bias"

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        if num_buckets < 2 or max_distance <= num_buckets // 2:
            raise ValueError(
                f"pos_enc.num_buckets must be >= 2 and pos_enc.max_distance > num_buckets / 2, "
                f"got {num_buckets} and {max_distance}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Parameter(0.02 * torch.randn(n_head, num_buckets))  # (H, buckets)

    def bias(self, q_pos, k_pos):
        buckets = t5_relative_bucket(query_key_distance(q_pos, k_pos), self.num_buckets, self.max_distance)
        return lookup(self.table, buckets)

    def score_mod(self, q_pos, k_pos):
        if not integer_positions(q_pos, k_pos):
            return super().score_mod(q_pos, k_pos)
        steps = torch.arange(distance_span(q_pos, k_pos), device=self.table.device)
        table = self.table[:, t5_relative_bucket(steps, self.num_buckets, self.max_distance)]  # (H, span)
        distance = distance_at(q_pos, k_pos)

        def t5(score, b, h, q_idx, kv_idx):
            # keys in the future share distance 0's bucket, as in t5_relative_bucket
            return score + table[h, distance(b, q_idx, kv_idx).clamp(min=0)]

        return t5


class KERPLE(PositionalEncoding):
    """KERPLE, logarithmic variant (Chi et al., arXiv 2205.09921):
    bias = -r1 * log(1 + r2 * |i - j|), with r1, r2 > 0 learned per head.

    Positivity as in the paper's code (chijames/KERPLE): the stored values are clamped at
    eps = 0.01 before each use, so the state dict holds the values in use. Init as there too:
    r1 ~ U(0, 2), r2 ~ U(0, 1). The paper learns r1, r2 per layer; here one pair per head serves
    every layer, since the model computes one bias per forward.
    """

    family = "kerple"

    def __init__(self, n_head: int, eps: float = 1e-2):
        super().__init__()
        self.eps = eps
        self.r1 = nn.Parameter(2 * torch.rand(n_head))
        self.r2 = nn.Parameter(torch.rand(n_head))

    def kernel(self, distance: torch.Tensor) -> torch.Tensor:
        """-r1 log(1 + r2 |i - j|): |i - j| (..., Tq, Tk) float -> (..., H, Tq, Tk)."""
        # through .data: a clamp that autograd does not track, as in the reference code
        self.r1.data.clamp_(min=self.eps)
        self.r2.data.clamp_(min=self.eps)
        distance = distance.unsqueeze(-3)  # (..., 1, Tq, Tk)
        return -self.r1.view(-1, 1, 1) * torch.log1p(self.r2.view(-1, 1, 1) * distance)

    def bias(self, q_pos, k_pos):
        return self.kernel(query_key_distance(q_pos, k_pos).abs().float())

    def score_mod(self, q_pos, k_pos):
        if not integer_positions(q_pos, k_pos):
            return super().score_mod(q_pos, k_pos)
        steps = torch.arange(distance_span(q_pos, k_pos), device=self.r1.device, dtype=torch.float32)
        table = self.kernel(steps.unsqueeze(0))[:, 0]  # (1, span) -> (H, 1, span) -> (H, span)
        distance = distance_at(q_pos, k_pos)

        def kerple(score, b, h, q_idx, kv_idx):
            return score + table[h, distance(b, q_idx, kv_idx).abs()]

        return kerple


class FIRE(PositionalEncoding):
    """FIRE, Li et al., "Functional Interpolation for Relative Positions Improves Long Context
    Transformers" (arXiv 2310.04418), section 3:

        bias(i, j) = f(psi(i - j) / psi(max(L, i))),    psi(x) = log(c x + 1)

    f is an MLP 1 -> `hidden` -> H (ReLU), c and the threshold L are learned. Dividing by psi of
    the query position maps every distance into [0, 1] whatever the length ("progressive
    interpolation"); L keeps the normaliser from being tiny for the first positions.

    As in the paper's reference code (its appendix): c starts at 0.1 and enters as |c|; L is
    |threshold_scale * init_threshold| with threshold_scale a learned multiplier starting at 1
    (so L learns at a rate relative to its size), init_threshold 512; eps 1e-6 in the normaliser.
    That code gives each layer its own FIRE; here one serves every layer, since the model computes
    one bias per forward.

    Initialisation of f differs from the reference code on purpose: the same magnitudes as
    PyTorch's default Linear init, with signs chosen (input weights >= 0, output weights <= 0,
    output bias so that f(0) = 0) so that every head starts with a bias that is 0 at distance 0
    and non-increasing with distance: a locality prior like ALiBi's and KERPLE's, instead of a
    random profile. Plain parameters rather than nn.Linear, so the host model's init leaves them be.
    """

    family = "fire"

    def __init__(
        self,
        n_head: int,
        hidden: int = 32,
        init_c: float = 0.1,
        init_threshold: float = 512.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if hidden <= 0 or init_c <= 0 or init_threshold <= 0:
            raise ValueError(
                f"pos_enc.hidden, pos_enc.init_c and pos_enc.init_threshold must be positive, "
                f"got {hidden}, {init_c}, {init_threshold}"
            )
        self.init_threshold = float(init_threshold)
        self.eps = eps
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))
        # f(x) = w2 @ relu(w1 * x + b1) + b2; default Linear bounds are 1/sqrt(fan_in)
        self.w1 = nn.Parameter(torch.rand(hidden))  # fan_in 1: |U(-1, 1)|
        self.b1 = nn.Parameter(2 * torch.rand(hidden) - 1)
        self.w2 = nn.Parameter(-torch.rand(n_head, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(-(self.w2 @ torch.relu(self.b1)).detach())

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """f: (...,) -> (..., H)."""
        return F.linear(torch.relu(x.unsqueeze(-1) * self.w1 + self.b1), self.w2, self.b2)

    def elementwise_mlp(self):
        """f for one input x and one head h, (x, h) -> f(x)[h]: `mlp` unrolled over its hidden
        units, the form FlexAttention fuses into its kernel (a matrix product cannot go there).
        The function holds the weights, not the module."""
        w1, b1, w2, b2 = self.w1, self.b1, self.w2, self.b2

        def f(x, h):
            out = b2[h]
            for unit in range(w1.shape[0]):
                out = out + w2[h, unit] * torch.relu(x * w1[unit] + b1[unit])
            return out

        return f

    def threshold(self) -> torch.Tensor:
        return (self.threshold_scale * self.init_threshold).abs()

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.c.abs() * x)

    def normaliser(self, q_pos: torch.Tensor) -> torch.Tensor:
        """psi(max(L, i)) (+ eps) for float query positions i: (..., Tq)."""
        return self.psi(torch.maximum(q_pos, self.threshold())) + self.eps

    def normalized_distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """psi(i - j) / psi(max(L, i)): (..., Tq, Tk), in [0, 1] for keys in the past."""
        q_pos, k_pos = q_pos.float(), k_pos.float()
        distance = query_key_distance(q_pos, k_pos).abs()
        return self.psi(distance) / self.normaliser(q_pos).unsqueeze(-1)

    def bias(self, q_pos, k_pos):
        # Queries within L share the normaliser psi(L), so for them the bias depends on |i - j|
        # alone: f runs once per distance and is looked up (the whole bias during training at a
        # context up to L). Queries past L run f once per (query, key) pair.
        rows = 0 if q_pos.is_floating_point() or k_pos.is_floating_point() else self.leading_rows_within(q_pos)
        parts = []
        if rows > 0:
            parts.append(self.distance_table_bias(q_pos[..., :rows], k_pos))
        if rows < q_pos.shape[-1]:
            parts.append(self.pairwise_bias(q_pos[..., rows:], k_pos))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)  # (..., H, Tq, Tk)

    def leading_rows_within(self, q_pos: torch.Tensor) -> int:
        """How many leading query rows are within L, in every sample."""
        within = (q_pos <= self.threshold()).reshape(-1, q_pos.shape[-1]).all(0)  # (Tq,)
        return int(within.int().cumprod(0).sum())

    def distance_table(self, span: int) -> torch.Tensor:
        """f at distances 0..span-1 for queries within L (normaliser psi(L)): (H, span)."""
        steps = torch.arange(span, device=self.c.device, dtype=torch.float32)
        return self.mlp(self.psi(steps) / (self.psi(self.threshold()) + self.eps)).t()

    def distance_table_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance = query_key_distance(q_pos, k_pos).abs()  # (..., Tq, Tk)
        return lookup(self.distance_table(int(distance.max()) + 1), distance)

    def pairwise_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        x = self.normalized_distance(q_pos, k_pos)  # (..., Tq, Tk)
        # f's hidden layer holds (..., rows, Tk, hidden) values: the memory budget per chunk of
        # query rows keeps long evaluations within memory (with autograd on, it is kept either way)
        rows = rows_per_block(x[..., 0, :].numel() * self.w1.numel())
        return torch.cat([self.mlp(part) for part in x.split(rows, dim=-2)], dim=-3).movedim(-1, -3)

    def score_mod(self, q_pos, k_pos):
        if not integer_positions(q_pos, k_pos):
            return super().score_mod(q_pos, k_pos)
        span, distance = distance_span(q_pos, k_pos), distance_at(q_pos, k_pos)
        if bool((q_pos <= self.threshold()).all()):  # as `bias` does for rows within L: f per distance
            table = self.distance_table(span)  # (H, span)

            def fire_within_threshold(score, b, h, q_idx, kv_idx):
                return score + table[h, distance(b, q_idx, kv_idx).abs()]

            return fire_within_threshold
        # past L the normaliser depends on the query: f runs on every logit. psi of each distance
        # and each query's normaliser are vectors, so their gradients scatter into many entries
        psi = self.psi(torch.arange(span, device=self.c.device, dtype=torch.float32))  # (span,)
        normaliser = per_token(self.normaliser(q_pos.float()))  # (T,) or (B, T)
        f = self.elementwise_mlp()

        def fire(score, b, h, q_idx, kv_idx):
            x = psi[distance(b, q_idx, kv_idx).abs()] / normaliser(b, q_idx)
            return score + f(x, h)

        return fire
