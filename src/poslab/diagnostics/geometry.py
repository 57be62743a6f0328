"""What an encoding does to positions, before any training: numbers computed from its hooks.

- Rotary family: each channel pair turns by pos * inv_freq[i]. A pair whose wavelength
  2pi / inv_freq[i] is shorter than the training context has seen every angle during training;
  the others have seen only an arc, and past the context they meet angles they never saw. Their
  count is the critical dimension of Liu et al., "Scaling Laws of RoPE-based Extrapolation"
  (arXiv 2310.05209): d_extra = 2 ceil((d/2) log_base(T_train / 2pi)).
- Similarity of position m to position n: for sinusoidal the dot product of the two vectors, for
  the rotary family RoFormer's long-term decay bound (arXiv 2104.09864, section 3.4.3), for bias
  encodings the bias itself.
- Interpolation: where a scaling member puts a position, per pair: the angle it gives, divided by
  the pair's unscaled frequency (Position Interpolation maps p to p / s for every pair).

Shapes: d = head size, P = d/2 pairs, N distances, L positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from poslab.encodings import Learned, PositionalEncoding, RoPE, Sinusoidal, XPos


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """Tokens per full turn of each pair, 2pi / inv_freq; inf for a pair that does not rotate."""
    inv_freq = inv_freq.double()
    return torch.where(inv_freq > 0, 2 * math.pi / inv_freq.clamp(min=1e-300), math.inf)


def turning_pairs(inv_freq: torch.Tensor, train_context: int) -> torch.Tensor:
    """Which pairs complete a full turn within the training context: (P,) bool."""
    return wavelengths(inv_freq) < train_context


def critical_dimension_closed_form(head_dim: int, base: float, train_context: int) -> int:
    """d_extra = 2 ceil((d/2) log_base(T_train / 2pi)) (arXiv 2310.05209, section 3), clamped to
    the head size: the dimensions whose period fits in the training context."""
    exponent = (head_dim / 2) * math.log(train_context / (2 * math.pi)) / math.log(base)
    return 2 * min(max(math.ceil(exponent), 0), head_dim // 2)


def rotary_decay_bound(
    inv_freq: torch.Tensor, distances: torch.Tensor, pair_decay: torch.Tensor | None = None
) -> torch.Tensor:
    """RoFormer's relative upper bound on the attention score at distance m - n (section 3.4.3):

        (1/(d/2)) sum_{j=1}^{d/2} |S_j|,    S_j = sum_{k<j} e^{i (m-n) theta_k}

    It is (d/2 + 1)/2 at distance 0 and decays, with ripples, as the pairs fall out of phase.
    xPos multiplies pair k's term by zeta_k^((m-n)/scale_base): `pair_decay` is that base, (P,).
    Returns (N,) in float64."""
    phase = distances.double().unsqueeze(-1) * inv_freq.double()  # (N, P)
    magnitude = torch.ones_like(phase)
    if pair_decay is not None:
        magnitude = pair_decay.double() ** distances.double().unsqueeze(-1)
    partial_sums = torch.polar(magnitude, phase).cumsum(-1)  # S_1 .. S_{d/2}
    return partial_sums.abs().mean(-1)


def xpos_pair_decay(encoding: XPos) -> torch.Tensor:
    """Per-pair decay per token of distance, zeta^(1/scale_base): (P,)."""
    return encoding.zeta.double() ** (1.0 / encoding.scale_base)


def fixed_query_key_scores(encoding: RoPE, positions: torch.Tensor) -> torch.Tensor:
    """The attention logit of one query and one key, both all ones, placed at every pair of
    positions and passed through the encoding's own rotate() and logit_scale(); divided by the
    head size, so it is 1 at distance 0 for RoPE. (L,) positions -> (L, L), query m by key n."""
    ones = torch.ones(1, 1, len(positions), encoding.head_dim)
    q, k = encoding.rotate_at(ones, ones, positions)
    scale = encoding.logit_scale(int(positions.max()) + 1) / encoding.head_dim
    return (q[0, 0] @ k[0, 0].T).double() * scale


def sinusoid_dot_products(encoding: Sinusoidal, positions: torch.Tensor) -> torch.Tensor:
    """PE[m] . PE[n] / (D/2) for the encoding's own vectors (each has squared norm D/2, so this is
    their cosine): (L,) positions -> (L, L). It equals mean_i cos((m - n) theta_i): relative."""
    table = encoding.table(positions).double()
    return table @ table.T / (encoding.n_embd / 2)


def sinusoid_similarity_by_distance(encoding: Sinusoidal, distances: torch.Tensor) -> torch.Tensor:
    """PE[0] . PE[distance] / (D/2), from the encoding's own table: (N,)."""
    origin = encoding.table(torch.zeros(1, dtype=torch.long)).double()  # (1, D)
    return (encoding.table(distances).double() @ origin.T).squeeze(-1) / (encoding.n_embd / 2)


def sinusoid_relative_map_error(encoding: Sinusoidal, offset: int, positions: torch.Tensor) -> float:
    """The sense in which sinusoids are relative (Vaswani et al., section 3.5): PE[p + offset] is a
    fixed rotation of PE[p], the same for every p. Returns max |PE[p + k] - R_k PE[p]| over the
    positions, which is float rounding only."""
    angles = offset * encoding.inv_freq.double()  # (D/2,)
    cos, sin = angles.cos(), angles.sin()
    here = encoding.table(positions).double().view(len(positions), -1, 2)  # (L, D/2, [sin, cos])
    there = encoding.table(positions + offset).double().view(len(positions), -1, 2)
    rotated_sin = here[..., 0] * cos + here[..., 1] * sin  # sin(a + b)
    rotated_cos = here[..., 1] * cos - here[..., 0] * sin  # cos(a + b)
    return float(torch.stack((rotated_sin, rotated_cos), -1).sub(there).abs().max())


def learned_cosines(encoding: Learned) -> torch.Tensor:
    """Cosine similarity of the learned position vectors: (max_length, max_length)."""
    table = torch.nn.functional.normalize(encoding.table.weight.detach().double(), dim=-1)
    return table @ table.T


def mean_by_distance(matrix: torch.Tensor) -> torch.Tensor:
    """Mean of matrix[m, m - k] over m, for every distance k: (L, L) -> (L,)."""
    return torch.stack([matrix.diagonal(-k).mean() for k in range(matrix.size(0))])


def bias_by_distance(encoding: PositionalEncoding, length: int) -> torch.Tensor | None:
    """The bias of the last query of a `length`-token sequence on the key `distance` tokens back,
    per head: (H, length), column k is distance k; None for an encoding without a bias. (Only FIRE
    depends on the query position, through its normaliser.)"""
    query = torch.tensor([length - 1])
    keys = torch.arange(length - 1, -1, -1)  # distance 0, 1, ... length - 1
    with torch.no_grad():
        bias = encoding.bias(query, keys)
    return None if bias is None else bias[:, 0].double()


def bias_reach(bias: torch.Tensor, threshold: float) -> list[int | None]:
    """Per head, the first distance at which the bias has fallen below `threshold` relative to
    distance 0 (a key there weighs exp(threshold) times a key at distance 0 that scores the same);
    None if it never does within the distances given. bias: (H, N) by distance."""
    below = (bias - bias[:, :1]) < threshold
    return [int(row.nonzero()[0]) if row.any() else None for row in below]


def alibi_reach_closed_form(slopes: torch.Tensor, threshold: float) -> list[int]:
    """ALiBi's bias is -slope * distance: below `threshold` from distance floor(-threshold/slope) + 1."""
    return [math.floor(-threshold / float(slope)) + 1 for slope in slopes]


@dataclass
class LookAlike:
    """Does a far token look like a near one? Figures of a similarity curve f(distance)."""

    at_distance_1: float
    max_distance: int
    relative_at_max_distance: float  # f(max_distance) / f(1)
    tolerance: float
    # the nearest distance >= the training context at which f comes back to (1 - tolerance) f(1)
    returns_at: int | None
    # the most alike a token beyond the training context gets: f / f(1), and where
    largest_beyond_context: float
    largest_beyond_context_at: int


def look_alike(similarity: torch.Tensor, train_context: int, tolerance: float) -> LookAlike:
    """similarity: (N,) by distance 0 .. N-1, N > train_context."""
    reference = float(similarity[1])
    beyond = similarity[train_context:] / reference
    returns = (beyond >= 1 - tolerance).nonzero()
    largest = int(beyond.argmax())
    return LookAlike(
        at_distance_1=reference,
        max_distance=len(similarity) - 1,
        relative_at_max_distance=float(similarity[-1]) / reference,
        tolerance=tolerance,
        returns_at=train_context + int(returns[0]) if len(returns) else None,
        largest_beyond_context=float(beyond[largest]),
        largest_beyond_context_at=train_context + largest,
    )


def effective_positions(member: RoPE, length: int) -> torch.Tensor:
    """Where each position of a `length`-token sequence lands, per pair: the angle the member gives
    it, divided by the pair's unscaled frequency. (length, P); Position Interpolation gives p / s in
    every column, a pair that stops rotating (partial RoPE) gives 0."""
    inv_freq, _ = member.frequencies(length)
    ratio = inv_freq.double() / member.inv_freq.double()
    return torch.arange(length, dtype=torch.float64).unsqueeze(-1) * ratio


def frequency_ratios(member: RoPE, length: int) -> torch.Tensor:
    """Each pair's frequency at `length` divided by its unscaled frequency: (P,)."""
    inv_freq, _ = member.frequencies(length)
    return inv_freq.double() / member.inv_freq.double()
