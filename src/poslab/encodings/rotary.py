"""The rotary family: RoPE and its context-extension schemes; and xPos, RoPE with a decay.

Every member rotates each (query, key) channel pair i by the angle ``pos * inv_freq[i]``; a member
is one choice of ``frequencies(length) -> (inv_freq, logit_factor)``:

    RoPE                        inv_freq[i] = base^(-2i/d)                      (d = head size)
    RoPEPositionInterpolation   inv_freq / s
    RoPENTK                     the same formula with base' = base * s^(d/(d-2))
    RoPEYaRN                    a per-pair ramp between inv_freq and inv_freq / s, and a temperature
    RoPELlama3                  a per-wavelength blend between inv_freq and inv_freq / s
    RoPELongRoPE                inv_freq / lambda_i, per-pair rescale factors, and a temperature
    RoPEPartial                 inv_freq for the fastest pairs, 0 (no rotation) for the rest

A scaling member's scale s is `factor` when that is a number (a fixed scale, as after fine-tuning)
and max(1, length / train_length) when it is null (zero-shot: the scale follows the sequence, and
within the training context the member is plain RoPE). Nothing here is a trained weight, so a
checkpoint trained with any member can be scored under any other (`family = "rotary"`); xPos's
decay changes what the weights mean, so it is a family of its own.

inv_freq decreases with i: pair 0 is the fastest (highest-frequency) pair. Channel pairing: channel
i is paired with channel i + d/2 (the GPT-NeoX / LLaMA layout, as in transformers); RoFormer pairs
(2i, 2i+1). The two are the same rotation up to a fixed permutation of the head channels, which the
learned projections absorb.

Shapes: pos (T,) or (B, T); q, k (B, H, T, d); angles (..., T, d/2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from poslab.encodings.base import PositionalEncoding


class RotaryTables(NamedTuple):
    """cos and sin of every position's angle per pair, laid out for the (i, i + d/2) pairing: the
    angles of pairs 0..d/2-1 twice, (..., T, d). RoPE's `prepare` computes them once per forward
    for every layer. Per-sample positions (B, T) give (B, 1, T, d), broadcast over heads."""

    cos: torch.Tensor
    sin: torch.Tensor


def _product(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x * table into a new contiguous tensor: x is a strided view of the qkv projection, and a
    product that allocates its own output follows x's layout and runs about twice as slowly on a
    CPU. (With autograd recording, as for tables that learn, the plain product.)"""
    if torch.is_grad_enabled() and (x.requires_grad or table.requires_grad):
        return x * table
    shape = torch.broadcast_shapes(x.shape, table.shape)
    return torch.mul(x, table, out=torch.empty(shape, dtype=x.dtype, device=x.device))


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: int) -> torch.Tensor:
    """(a, b) -> (a cos - b sin, b cos + a sin) for each channel pair (a, b) = (x_i, x_{i + d/2});
    sign -1 rotates by minus the angle. In three passes over x: x cos, x sin, then the halves
    combined in place."""
    out, other = _product(x, cos), _product(x, sin)  # (a c, b c) and (a s, b s)
    half = x.shape[-1] // 2
    if sign > 0:
        out[..., :half].sub_(other[..., half:])
        out[..., half:].add_(other[..., :half])
    else:
        out[..., :half].add_(other[..., half:])
        out[..., half:].sub_(other[..., :half])
    return out


class _RotatePairs(torch.autograd.Function):
    """The rotation with its gradient written out: the gradient of a rotation is the rotation by
    minus the angle. Autograd would keep each intermediate of the expression and take twice the
    passes over memory; the numbers are the same to the last bit (each value is computed by the
    same operations)."""

    @staticmethod
    def forward(x, cos, sin):
        return _rotated(x, cos, sin, 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, cos, sin = inputs
        ctx.save_for_backward(cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotated(grad, cos, sin, -1), None, None


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair (i, i + d/2) of x (..., d) by its angle: (a, b) -> (a cos - b sin,
    a sin + b cos), with the tables cos and sin (..., d) (each angle twice) broadcast against x."""
    if cos.requires_grad or sin.requires_grad or torch.broadcast_shapes(x.shape, cos.shape) != x.shape:
        # tables that learn, or that broadcast x itself to more dimensions: autograd's gradient
        return _rotated(x, cos, sin, 1)
    return _RotatePairs.apply(x, cos, sin)


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """RoFormer's frequencies base^(-2i/d), i = 0 .. d/2 - 1, in float64."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


class RoPE(PositionalEncoding):
    """Su et al., RoFormer (arXiv 2104.09864), section 3.2: inv_freq[i] = base^(-2i / head_dim)."""

    family = "rotary"
    # a rotation by a then by b is the rotation by a + b: eval.window shifts a query's position so
    composes_rotations = True

    def __init__(self, n_embd: int, n_head: int, base: float = 10000.0):
        super().__init__()
        head_dim = n_embd // n_head
        if head_dim % 2:
            raise ValueError(
                f"rotary encodings need an even head size model.net.n_embd / model.net.n_head, "
                f"got {n_embd}/{n_head}={head_dim}"
            )
        if base <= 1:
            raise ValueError(f"pos_enc.base must be greater than 1, got {base}")
        self.head_dim = head_dim
        self.base = float(base)
        # not persistent: a checkpoint must not pin a scaling, so any member can load it
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, self.base).float(), persistent=False)

    def frequencies(self, length: int) -> tuple[torch.Tensor, float]:
        """Per-pair angular frequencies (d/2,) for a sequence of `length` positions, and the factor
        by which the attention logits are multiplied (1 for all but YaRN)."""
        return self.inv_freq, 1.0

    def angles(self, pos: torch.Tensor, length: int) -> torch.Tensor:
        """pos (T,) or (B, T) -> angles (..., T, d/2) for positions spanning `length`, always
        float32: under bf16 autocast a bf16 position would be exact only up to 256 (elementwise
        products are not autocast)."""
        inv_freq, _ = self.frequencies(length)
        return pos.float().unsqueeze(-1) * inv_freq.float()

    def prepare(self, pos: torch.Tensor, length: int) -> RotaryTables:
        angles = self.angles(pos, length)
        if angles.dim() == 3:  # per-sample positions (B, T, d/2): broadcast over heads
            angles = angles.unsqueeze(1)
        angles = torch.cat((angles, angles), dim=-1)  # pair i's angle at channels i and i + d/2
        return RotaryTables(angles.cos(), angles.sin())

    def rotate(self, q, k, prepared: RotaryTables):
        cos, sin = prepared.cos.to(q.dtype), prepared.sin.to(q.dtype)
        return rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)

    def logit_scale(self, length: int) -> float:
        # the same `length` the model passes to prepare(): 1 + the largest position
        return self.frequencies(length)[1]


class ScaledRoPE(RoPE):
    """A context-extension member: RoPE plus a scale s = `factor`, or max(1, length / train_length)
    when `factor` is null. Subclasses override only `frequencies`."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        train_length: int,
        factor: float | None = None,
        base: float = 10000.0,
    ):
        super().__init__(n_embd, n_head, base)
        if train_length <= 0:
            raise ValueError(f"pos_enc.train_length (data.context) must be positive, got {train_length}")
        if factor is not None and not factor >= 1:
            raise ValueError(f"pos_enc.factor must be null (follow the sequence) or a number >= 1, got {factor}")
        self.train_length = train_length
        self.factor = None if factor is None else float(factor)

    def scale(self, length: int) -> float:
        if self.factor is not None:
            return self.factor
        return max(1.0, length / self.train_length)


class RoPEPositionInterpolation(ScaledRoPE):
    """Chen et al., Position Interpolation (arXiv 2306.15595).

    Position p is used as p / s, which is the same as dividing every frequency by s. transformers:
    rope_type "linear" with factor s.
    """

    def frequencies(self, length):
        return self.inv_freq / self.scale(length), 1.0


class RoPENTK(ScaledRoPE):
    """NTK-aware scaling (bloc97, 2023; formalised in the YaRN paper, arXiv 2309.00071, section 3.1).

    The base becomes b' = b * s^(d/(d-2)): the fastest pair keeps its frequency and the slowest
    (i = d/2 - 1) is divided by exactly s, so high frequencies extrapolate and low ones interpolate.
    With factor null this is dynamic NTK: transformers' rope_type "dynamic" with factor 1.
    """

    def frequencies(self, length):
        s = self.scale(length)
        if s == 1.0:
            return self.inv_freq, 1.0
        base = self.base * s ** (self.head_dim / (self.head_dim - 2))
        return rope_inv_freq(self.head_dim, base).to(self.inv_freq), 1.0


class RoPEYaRN(ScaledRoPE):
    """Peng et al., YaRN (arXiv 2309.00071): NTK-by-parts (section 3.2) plus a temperature (3.4).

    Pair i completes r_i = train_length / wavelength_i = train_length * inv_freq[i] / 2pi rotations
    over the training context. Pairs with r_i >= beta_fast keep their frequency, pairs with
    r_i <= beta_slow are interpolated (inv_freq / s), the ones between are blended by a ramp.

    The paper's ramp gamma(r) (section 3.2) is linear in r. Its reference code (jquesnelle/yarn)
    and transformers' rope_type "yarn" (default truncate=True) ramp linearly in the pair index
    instead, between floor(i where r = beta_fast), clamped at 0, and ceil(i where r = beta_slow).
    This class follows the code, whose numbers the released YaRN models and transformers use. The
    two agree outside the ramp, except that the clamp keeps pair 0 unscaled even when it turns
    fewer than beta_fast times (a training context shorter than 2pi * beta_fast ~ 201).

    Temperature (section 3.4): sqrt(1/t) = 0.1 ln s + 1. transformers multiplies cos and sin by that
    factor, which multiplies the logits by its square; `logit_factor` is that square, 1/t, applied
    once to the logits. transformers' options, here with the same names and defaults:

        mscale, mscale_all_dim   both set (DeepSeek-V2/V3 configs): sqrt(1/t) is
                                 (0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1)
        attention_factor         sqrt(1/t) given outright
        truncate                 false: the ramp's bounds are not floored and ceiled (gpt-oss)
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        train_length: int,
        factor: float | None = None,
        base: float = 10000.0,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        mscale: float | None = None,
        mscale_all_dim: float | None = None,
        attention_factor: float | None = None,
        truncate: bool = True,
    ):
        super().__init__(n_embd, n_head, train_length, factor, base)
        if not beta_fast > beta_slow > 0:
            raise ValueError(
                f"pos_enc.beta_fast must exceed pos_enc.beta_slow, both positive; got {beta_fast} and {beta_slow}"
            )
        for key, value in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
            if value is not None and not value >= 0:
                raise ValueError(f"pos_enc.{key} must be null or a number >= 0, got {value}")
        if attention_factor is not None and not attention_factor > 0:
            raise ValueError(f"pos_enc.attention_factor must be null or positive, got {attention_factor}")
        self.beta_fast = beta_fast
        self.beta_slow = beta_slow
        self.mscale, self.mscale_all_dim = mscale, mscale_all_dim
        self.attention_factor = attention_factor
        self.truncate = bool(truncate)

    def temperature(self, s: float) -> float:
        """sqrt(1/t), the factor on cos and sin (transformers' attention_factor), at scale s."""
        if self.attention_factor is not None:
            return self.attention_factor

        def mscale(multiplier: float) -> float:
            return 1.0 if s <= 1 else 0.1 * multiplier * math.log(s) + 1.0

        if self.mscale and self.mscale_all_dim:  # transformers: both set and non-zero
            return mscale(self.mscale) / mscale(self.mscale_all_dim)
        return mscale(1.0)

    def ramp(self, s: float) -> torch.Tensor:
        """Per pair, 0 (keep the frequency) to 1 (interpolate: frequency / s), (d/2,)."""
        low, high = self.pair_index(self.beta_fast), self.pair_index(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, self.head_dim - 1)  # transformers' bounds
        if high == low:  # one pair: a step instead of a ramp
            high += 0.001
        pair = torch.arange(self.head_dim // 2, dtype=torch.float32, device=self.inv_freq.device)
        return ((pair - low) / (high - low)).clamp(0, 1)

    def pair_index(self, rotations: float) -> float:
        """The (fractional) pair index i at which r_i = `rotations`: solves
        train_length * base^(-2i/d) / 2pi = rotations for i."""
        return self.head_dim * math.log(self.train_length / (2 * math.pi * rotations)) / (2 * math.log(self.base))

    def frequencies(self, length):
        s = self.scale(length)
        if s == 1.0 and self.attention_factor is None:
            return self.inv_freq, 1.0
        ramp = self.ramp(s)
        inv_freq = self.inv_freq * (1 - ramp) + (self.inv_freq / s) * ramp
        return inv_freq, self.temperature(s) ** 2


class RoPELongRoPE(ScaledRoPE):
    """Ding et al., LongRoPE (arXiv 2402.13753), as transformers implements rope_type "longrope"
    (Phi-3's scaling): pair i's frequency is divided by a rescale factor of its own,

        inv_freq[i] = base^(-2i/d) / lambda_i,   lambda = long_factor past the training context,
                                                          short_factor within it,

    and cos and sin are multiplied by sqrt(1 + ln s / ln train_length) (s > 1; `logit_factor` is its
    square), or by `attention_factor` when given.

    The paper finds lambda by an evolutionary search on perplexity at the target length, per model;
    that search is not run here. Given `long_factor` and `short_factor` lists (d/2 values each, as
    in a released config) they are used as they are. Left null, short_factor is all ones (plain RoPE
    within the context) and long_factor is the search's NTK-by-parts starting point: lambda_i =
    inv_freq[i] / YaRN's frequency of pair i at scale s, 1 for the fast pairs, s for the slow ones.
    The scale s is `factor` (transformers: max_position_embeddings / original) or, null, follows the
    sequence as for the other members.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        train_length: int,
        factor: float | None = None,
        base: float = 10000.0,
        long_factor: list[float] | None = None,
        short_factor: list[float] | None = None,
        attention_factor: float | None = None,
    ):
        super().__init__(n_embd, n_head, train_length, factor, base)
        pairs = self.head_dim // 2
        for key, values in (("long_factor", long_factor), ("short_factor", short_factor)):
            if values is not None and (len(values) != pairs or not all(v > 0 for v in values)):
                raise ValueError(
                    f"pos_enc.{key} must be null or {pairs} positive numbers (one per channel pair of head "
                    f"size {self.head_dim}), got {len(values)} values"
                )
        if attention_factor is not None and not attention_factor > 0:
            raise ValueError(f"pos_enc.attention_factor must be null or positive, got {attention_factor}")
        self.long_factor, self.short_factor = _float32_or_none(long_factor), _float32_or_none(short_factor)
        self.attention_factor = attention_factor
        # the starting point of the search, when no long factors are given: NTK-by-parts at scale s
        self.ramp_from = RoPEYaRN(n_embd, n_head, train_length, factor, base)

    def rescale(self, length: int, s: float) -> torch.Tensor:
        """lambda (d/2,): the long factors past the training context, the short ones within it."""
        if length > self.train_length:
            if self.long_factor is not None:
                return self.long_factor.to(self.inv_freq.device)
            ramp = self.ramp_from.ramp(s).to(self.inv_freq.device)
            return 1.0 / ((1 - ramp) + ramp / s)
        if self.short_factor is not None:
            return self.short_factor.to(self.inv_freq.device)
        return torch.ones_like(self.inv_freq)

    def frequencies(self, length):
        s = self.scale(length)
        if self.attention_factor is not None:
            attention_factor = self.attention_factor
        elif s <= 1.0:
            attention_factor = 1.0
        else:
            attention_factor = math.sqrt(1 + math.log(s) / math.log(self.train_length))
        # transformers: 1 / (lambda * base^(2i/d)), in float32
        return self.inv_freq / self.rescale(length, s), attention_factor**2


class RoPELlama3(ScaledRoPE):
    """Llama 3.1's RoPE scaling (Meta, "The Llama 3 Herd of Models", arXiv 2407.21783; the rule is
    in the released code, transformers' rope_type "llama3").

    With r_i = train_length / wavelength_i as in YaRN: pairs with r_i >= high_freq_factor keep their
    frequency, pairs with r_i <= low_freq_factor are divided by s, and in between the frequency is
    blended linearly in r_i (which is the YaRN paper's ramp gamma(r) with alpha = low_freq_factor,
    beta = high_freq_factor).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        train_length: int,
        factor: float | None = None,
        base: float = 10000.0,
        low_freq_factor: float = 1.0,
        high_freq_factor: float = 4.0,
    ):
        super().__init__(n_embd, n_head, train_length, factor, base)
        if not high_freq_factor > low_freq_factor > 0:
            raise ValueError(
                "pos_enc.high_freq_factor must exceed pos_enc.low_freq_factor, both positive; "
                f"got {high_freq_factor} and {low_freq_factor}"
            )
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor

    def frequencies(self, length):
        s = self.scale(length)
        if s == 1.0:
            return self.inv_freq, 1.0
        rotations = self.train_length * self.inv_freq / (2 * math.pi)  # r_i
        smooth = (rotations - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smooth = smooth.clamp(0, 1)  # 0: divide by s, 1: keep
        return (1 - smooth) * self.inv_freq / s + smooth * self.inv_freq, 1.0


def _float32_or_none(values) -> torch.Tensor | None:
    return None if values is None else torch.tensor(list(values), dtype=torch.float32)


class RoPEPartial(RoPE):
    """p-RoPE, Barbero et al., "Round and Round We Go! What makes Rotary Positional Encodings
    useful?" (arXiv 2410.06205).

    Only the fastest floor(fraction * d/2) pairs rotate, at their RoPE frequencies; the slowest
    pairs get frequency 0 and carry no position, which the paper finds models use as semantic
    channels. fraction=1 is RoPE, fraction=0 is NoPE. transformers: rope_type "proportional" with
    partial_rotary_factor = fraction.
    """

    def __init__(self, n_embd: int, n_head: int, fraction: float = 0.75, base: float = 10000.0):
        super().__init__(n_embd, n_head, base)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"pos_enc.fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.rotating_pairs = int(fraction * self.head_dim // 2)
        # inv_freq decreases with the pair index, so the fastest pairs are the first ones
        rotates = torch.arange(self.head_dim // 2) < self.rotating_pairs
        self.register_buffer("rotates", rotates, persistent=False)

    def frequencies(self, length):
        return self.inv_freq * self.rotates, 1.0


class XPos(RoPE):
    """Sun et al., "A Length-Extrapolatable Transformer" (xPos, arXiv 2212.10554), section 3.

    RoPE plus an exponential decay: pair i has zeta_i = (2i/d + gamma) / (1 + gamma), the query at
    position n is scaled by zeta^(n / scale_base) and the key at m by zeta^(-m / scale_base), so
    the score is multiplied by zeta^((n - m) / scale_base) and still depends only on n - m.

    Numerics: only n - m matters, so the exponent uses positions relative to the centre of each
    sequence's positions (the reference code, torchscale, centres too): the scaled queries and keys
    then depend on the span of the positions, not on their offset, so sampled or shifted positions
    far from 0 stay finite. What remains is the span: a query-key product grows as
    zeta_0^(-(m - n) / scale_base) for a key m in the future, and those masked logits must stay
    finite (a kernel that adds the -inf mask to an inf logit gets NaN). `max_length` is therefore
    where |ln zeta_0| * length / scale_base reaches 80, under float32's and bf16's ln(max) ~ 88
    (~32.7k positions at the defaults); float16 overflows far earlier.

    Training and scoring use plain causal attention; the paper's blockwise-causal evaluation is not
    used. The decay makes its weights mean something else than RoPE's: family "xpos".
    """

    family = "xpos"
    composes_rotations = False  # the decay scales queries and keys by their own positions

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        base: float = 10000.0,
        scale_base: float = 512.0,
        gamma: float = 0.4,
    ):
        super().__init__(n_embd, n_head, base)
        if scale_base <= 0 or gamma <= 0:
            raise ValueError(f"pos_enc.scale_base and pos_enc.gamma must be positive, got {scale_base}, {gamma}")
        self.scale_base = float(scale_base)
        self.gamma = float(gamma)
        zeta = (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim + gamma) / (1 + gamma)
        self.register_buffer("zeta", zeta.float(), persistent=False)
        largest_exponent = 80.0
        self.max_length = int(largest_exponent * scale_base / -math.log(zeta[0].item()))

    def prepare(self, pos: torch.Tensor, length: int) -> XPosTables:
        tables = super().prepare(pos, length)  # (..., T, d)
        pos = pos.float()
        centre = (pos.amin(-1, keepdim=True) + pos.amax(-1, keepdim=True)) / 2
        power = ((pos - centre) / self.scale_base).unsqueeze(-1)  # (..., T, 1)
        scale = self.zeta.float() ** power  # (..., T, d/2)
        if scale.dim() == 3:  # per-sample positions: broadcast over heads
            scale = scale.unsqueeze(1)
        scale = torch.cat((scale, scale), dim=-1)  # (..., T, d), as the angles
        return XPosTables(tables.cos * scale, tables.sin * scale, tables.cos / scale, tables.sin / scale)

    def rotate(self, q, k, prepared: XPosTables):
        dtype = q.dtype
        return (
            rotate_pairs(q, prepared.q_cos.to(dtype), prepared.q_sin.to(dtype)),
            rotate_pairs(k, prepared.k_cos.to(dtype), prepared.k_sin.to(dtype)),
        )


class XPosTables(NamedTuple):
    """xPos's rotation tables: RoPE's cos and sin times zeta^(n / scale_base) for the queries and
    divided by it for the keys, (..., T, d)."""

    q_cos: torch.Tensor
    q_sin: torch.Tensor
    k_cos: torch.Tensor
    k_sin: torch.Tensor
