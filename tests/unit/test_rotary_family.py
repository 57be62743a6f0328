"""The rotary family against Hugging Face transformers' numbers, and against its papers' formulas.

tests/data/rope_reference.json holds what `transformers.modeling_rope_utils` returns for head size
64, base 1e4 and a training context of 128 (tests/data/make_rope_reference.py made it; its
docstring has the command and the transformers version). For a scale s in {2, 4, 16}, poslab's
two settings of each member correspond to transformers as follows:

    poslab member    factor: null, at length s * 128          factor: s, at any length
    rope_pi          "linear", factor s                      the same
    rope_ntk         "dynamic", factor 1, seq_len s * 128    the same: transformers has no fixed NTK
                                                             type ("dynamic" with factor f uses
                                                             f * L / 128 - (f - 1), not f)
    rope_yarn        "yarn", factor s, original 128          the same
    rope_llama3      "llama3", factor s, original 128        the same
    rope_partial     "proportional", partial_rotary_factor = fraction (no scale)

With factor null and a length within the training context, every member is plain RoPE ("default").
transformers multiplies cos and sin by its attention factor, so the logits by its square: poslab's
logit_factor is compared with attention_factor ** 2.

Where transformers and the YaRN paper differ: the paper's ramp gamma(r) is linear in r, while
transformers (default truncate=True) and the paper's reference code ramp linearly in the pair
index between floor/ceil'd bounds, the lower one clamped at pair 0. poslab follows transformers;
test_yarn_keeps_fast_pairs_and_interpolates_slow_ones pins down the consequence.
"""

import json
import math

import pytest
import torch

from helpers import TEST_DATA
from poslab.encodings import (
    LengthNotSupportedError,
    RoPE,
    RoPELlama3,
    RoPELongRoPE,
    RoPENTK,
    RoPEPartial,
    RoPEPositionInterpolation,
    RoPEYaRN,
    XPos,
)

REFERENCE = json.loads((TEST_DATA / "rope_reference.json").read_text())
HEAD_DIM, TRAIN_LENGTH = REFERENCE["head_dim"], REFERENCE["train_length"]
N_HEAD = 4
N_EMBD = HEAD_DIM * N_HEAD
SCALES = (2, 4, 16)
MEMBERS = {
    "linear": RoPEPositionInterpolation,
    "dynamic": RoPENTK,
    "yarn": RoPEYaRN,
    "llama3": RoPELlama3,
}


def reference(case: str) -> tuple[torch.Tensor, float]:
    entry = REFERENCE["cases"][case]
    return torch.tensor(entry["inv_freq"], dtype=torch.float32), entry["attention_factor"]


def assert_matches_reference(enc, length: int, case: str) -> None:
    inv_freq, logit_factor = enc.frequencies(length)
    expected, attention_factor = reference(case)
    # float32 precision: a few units in the last place, with no absolute slack for the slow pairs
    torch.testing.assert_close(inv_freq, expected, rtol=1e-6, atol=0)
    assert logit_factor == pytest.approx(attention_factor**2, rel=1e-12)
    assert enc.logit_scale(length) == logit_factor


def test_reference_was_made_for_these_settings():
    assert REFERENCE["base"] == 10000.0 and REFERENCE["transformers"]
    assert set(REFERENCE["cases"]) >= {f"{t}_{s}" for t in MEMBERS for s in SCALES} | {"default"}


def test_rope_equals_transformers_default():
    assert_matches_reference(RoPE(N_EMBD, N_HEAD), 100, "default")


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("rope_type", MEMBERS)
def test_zero_shot_member_equals_transformers_at_s_times_the_context(rope_type, s):
    enc = MEMBERS[rope_type](N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=None)
    assert enc.scale(s * TRAIN_LENGTH) == s
    assert_matches_reference(enc, s * TRAIN_LENGTH, f"{rope_type}_{s}")


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("rope_type", MEMBERS)
def test_fixed_factor_member_equals_transformers_at_every_length(rope_type, s):
    enc = MEMBERS[rope_type](N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=s)
    for length in (1, TRAIN_LENGTH // 2, TRAIN_LENGTH, s * TRAIN_LENGTH, 4 * s * TRAIN_LENGTH):
        assert_matches_reference(enc, length, f"{rope_type}_{s}")


YARN_OPTIONS = {
    "yarn_mscale": {"mscale": 1.0, "mscale_all_dim": 0.5},
    "yarn_untruncated": {"truncate": False},
    "yarn_attention_factor": {"attention_factor": 1.3},
}


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("case", YARN_OPTIONS)
def test_yarn_options_equal_transformers(case, s):
    assert REFERENCE["cases"][f"{case}_{s}"]["rope_parameters"].items() >= YARN_OPTIONS[case].items()
    enc = RoPEYaRN(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=s, **YARN_OPTIONS[case])
    for length in (TRAIN_LENGTH, s * TRAIN_LENGTH):
        assert_matches_reference(enc, length, f"{case}_{s}")


def longrope(s: float | None, **options) -> RoPELongRoPE:
    parameters = REFERENCE["cases"]["longrope_long_2"]["rope_parameters"]
    factors = {"long_factor": parameters["long_factor"], "short_factor": parameters["short_factor"]}
    return RoPELongRoPE(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=s, **factors, **options)


@pytest.mark.parametrize("s", SCALES)
def test_longrope_equals_transformers_past_and_within_the_context(s):
    """Long factors past the original context, short ones within it, and the attention factor
    sqrt(1 + ln s / ln 128) at both (transformers applies it at every length)."""
    for factor in (s, None):  # a fixed factor, and the scale following the sequence
        assert_matches_reference(longrope(factor), s * TRAIN_LENGTH, f"longrope_long_{s}")
    assert_matches_reference(longrope(s), TRAIN_LENGTH, f"longrope_short_{s}")
    assert_matches_reference(longrope(s, attention_factor=1.1), s * TRAIN_LENGTH, f"longrope_attention_factor_{s}")


def test_longrope_without_factors_starts_from_ntk_by_parts():
    """Null factors: plain RoPE within the context; past it YaRN's frequencies (the search's
    starting point), with LongRoPE's own temperature instead of YaRN's."""
    enc = RoPELongRoPE(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH)
    inv_freq, factor = enc.frequencies(TRAIN_LENGTH)
    assert torch.equal(inv_freq, enc.inv_freq) and factor == 1.0
    yarn = RoPEYaRN(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH)
    for s in SCALES:
        inv_freq, factor = enc.frequencies(s * TRAIN_LENGTH)
        torch.testing.assert_close(inv_freq, yarn.frequencies(s * TRAIN_LENGTH)[0], rtol=1e-6, atol=0)
        assert factor == pytest.approx(1 + math.log(s) / math.log(TRAIN_LENGTH))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"long_factor": [1.0, 2.0]}, "pos_enc.long_factor must be null or 32 positive numbers"),
        ({"short_factor": [0.0] * 32}, "pos_enc.short_factor"),
        ({"attention_factor": -1.0}, "pos_enc.attention_factor"),
    ],
)
def test_longrope_refuses_factors_that_do_not_fit(options, message):
    with pytest.raises(ValueError, match=message):
        RoPELongRoPE(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, **options)


@pytest.mark.parametrize("rope_type", MEMBERS)
def test_zero_shot_member_is_rope_within_the_training_context(rope_type):
    enc = MEMBERS[rope_type](N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=None)
    for length in (1, TRAIN_LENGTH // 2, TRAIN_LENGTH):
        assert_matches_reference(enc, length, "default")


@pytest.mark.parametrize("fraction", [0.25, 0.75])
def test_partial_equals_transformers_proportional(fraction):
    assert_matches_reference(RoPEPartial(N_EMBD, N_HEAD, fraction=fraction), 100, f"proportional_{fraction}")


def rotations(enc, train_length: int) -> torch.Tensor:
    """r_i: how many turns pair i makes over the training context, in float64."""
    return train_length * enc.inv_freq.double() / (2 * math.pi)


@pytest.mark.parametrize("s", [2, 16])
@pytest.mark.parametrize("train_length", [128, 4096])
def test_yarn_keeps_fast_pairs_and_interpolates_slow_ones(train_length, s):
    enc = RoPEYaRN(N_EMBD, N_HEAD, train_length=train_length, factor=s)
    rope = enc.inv_freq
    inv_freq, _ = enc.frequencies(1)
    r = rotations(enc, train_length)
    fast, slow = r >= 32, r <= 1
    assert slow.sum() >= 8
    torch.testing.assert_close(inv_freq[fast], rope[fast], rtol=0, atol=0)
    torch.testing.assert_close(inv_freq[slow], rope[slow] / s, rtol=0, atol=0)
    kept = inv_freq / rope  # from 1 (kept) down to 1/s (interpolated), never back up
    assert (kept <= 1).all() and (kept >= 1 / s - 1e-7).all() and (kept.diff() <= 1e-7).all()
    middle = ~fast & ~slow
    assert ((kept[middle] > 1 / s) | (kept[middle] == 1)).all()
    if train_length == 4096:
        assert fast.sum() == 11 and (kept[middle] < 1).all()
    else:
        # No pair turns 32 times in 128 positions (pair 0: 128 / 2pi = 20.4 turns). The ramp
        # starts at pair 0 all the same (clamped there), so pair 0 keeps its frequency: so do
        # transformers and the reference code. The paper's gamma(r) would interpolate it by
        # 1 - gamma(20.4) = 1 - 19.4 / 31.
        assert not fast.any() and kept[0] == 1 and kept[1] < 1


def test_yarn_temperature_follows_the_paper():
    """sqrt(1/t) = 0.1 ln s + 1 (section 3.4): logits x (0.1 ln s + 1)^2, and 1 within the context."""
    enc = RoPEYaRN(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH)
    assert enc.logit_scale(TRAIN_LENGTH) == 1.0
    for s in (2, 4, 16, 3.5):
        assert enc.logit_scale(int(s * TRAIN_LENGTH)) == pytest.approx((0.1 * math.log(s) + 1) ** 2)


@pytest.mark.parametrize("s", [2, 16])
def test_ntk_keeps_the_fastest_pair_and_divides_the_slowest_by_s(s):
    enc = RoPENTK(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=s)
    inv_freq, _ = enc.frequencies(1)
    assert inv_freq[0] == enc.inv_freq[0] == 1.0
    torch.testing.assert_close(inv_freq[-1], enc.inv_freq[-1] / s, rtol=1e-6, atol=0)
    # b' = b s^(d/(d-2)) is the same as multiplying pair i by s^(-2i/(d-2))
    i = torch.arange(HEAD_DIM // 2, dtype=torch.float64)
    torch.testing.assert_close(
        inv_freq.double(), enc.inv_freq.double() * s ** (-2 * i / (HEAD_DIM - 2)), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("s", [2, 16])
def test_llama3_keeps_short_wavelengths_and_divides_long_ones(s):
    enc = RoPELlama3(N_EMBD, N_HEAD, train_length=TRAIN_LENGTH, factor=s)
    inv_freq, _ = enc.frequencies(1)
    r = rotations(enc, TRAIN_LENGTH)
    high, low = r >= 4, r <= 1
    assert high.sum() >= 5 and low.sum() >= 16
    torch.testing.assert_close(inv_freq[high], enc.inv_freq[high], rtol=0, atol=0)
    torch.testing.assert_close(inv_freq[low], enc.inv_freq[low] / s, rtol=0, atol=0)
    # between: linear in r, from 1/s at r = 1 to 1 at r = 4
    middle = ~high & ~low
    smooth = (r[middle] - 1) / 3
    expected = enc.inv_freq[middle].double() * ((1 - smooth) / s + smooth)
    torch.testing.assert_close(inv_freq[middle].double(), expected, rtol=1e-6, atol=0)


def test_partial_rotates_only_the_fastest_pairs():
    enc = RoPEPartial(N_EMBD, N_HEAD, fraction=0.75)
    rotating = 24  # floor(0.75 * 32)
    inv_freq, _ = enc.frequencies(1)
    assert inv_freq[0] == inv_freq.max() == 1.0  # pair 0 is the fastest
    torch.testing.assert_close(inv_freq[:rotating], RoPE(N_EMBD, N_HEAD).inv_freq[:rotating], rtol=0, atol=0)
    assert (inv_freq[rotating:] == 0).all()
    q = torch.randn(1, N_HEAD, 5, HEAD_DIM)
    rotated, _ = enc.rotate_at(q, q, torch.arange(100, 105))
    still = torch.cat((torch.arange(rotating, 32), torch.arange(rotating + 32, 64)))
    torch.testing.assert_close(rotated[..., still], q[..., still], rtol=0, atol=0)
    assert not torch.allclose(rotated[..., :rotating], q[..., :rotating])


SHORT = 16  # training context for the shift tests: lengths past it switch the zero-shot scales on


def members(factor):
    return {
        "rope": RoPE(N_EMBD, N_HEAD),
        "rope_base500k": RoPE(N_EMBD, N_HEAD, base=500000.0),
        "rope_partial": RoPEPartial(N_EMBD, N_HEAD),
        "xpos": XPos(N_EMBD, N_HEAD),
        **{
            name: cls(N_EMBD, N_HEAD, train_length=SHORT, factor=factor)
            for name, cls in {
                "rope_pi": RoPEPositionInterpolation,
                "rope_ntk": RoPENTK,
                "rope_yarn": RoPEYaRN,
                "rope_llama3": RoPELlama3,
            }.items()
        },
    }


def scores(enc, pos: torch.Tensor) -> torch.Tensor:
    """Logits of one query vector against one key vector placed at every position: (H, T, T)."""
    torch.manual_seed(0)
    T = pos.shape[-1]
    q = torch.randn(1, N_HEAD, 1, HEAD_DIM).expand(1, N_HEAD, T, HEAD_DIM)
    k = torch.randn(1, N_HEAD, 1, HEAD_DIM).expand(1, N_HEAD, T, HEAD_DIM)
    q, k = enc.rotate_at(q, k, pos)
    return (q @ k.transpose(-1, -2))[0] * enc.logit_scale(T)


@pytest.mark.parametrize("name", list(members(None)))
def test_score_depends_only_on_the_offset_zero_shot(name):
    """Same vectors at every position: the logits are constant along each diagonal (Toeplitz),
    also at 4x the training context where the zero-shot scales are on."""
    enc = members(None)[name]
    s = scores(enc, torch.arange(4 * SHORT))
    torch.testing.assert_close(s[:, 1:, 1:], s[:, :-1, :-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(s[:, 40, 0], s[:, 40, 30], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list(members(4.0)))
def test_score_is_unchanged_by_an_offset(name):
    enc = members(4.0)[name]
    pos = torch.arange(2 * SHORT)
    torch.testing.assert_close(scores(enc, pos + 1000), scores(enc, pos), rtol=1e-3, atol=1e-3)


def test_xpos_score_is_rope_score_times_the_decay():
    """xPos (arXiv 2212.10554): q_n k_m summed per pair with weight zeta_i^((n - m) / scale_base),
    zeta_i = (2i/d + 0.4) / 1.4."""
    torch.manual_seed(0)
    xpos, rope = XPos(N_EMBD, N_HEAD), RoPE(N_EMBD, N_HEAD)
    T = 40
    pos = torch.arange(T) * 37 + 300  # spread out: the decay is visible at distances of hundreds
    q, k = torch.randn(1, N_HEAD, T, HEAD_DIM), torch.randn(1, N_HEAD, T, HEAD_DIM)
    xq, xk = xpos.rotate_at(q, k, pos)
    rq, rk = rope.rotate_at(q, k, pos)
    zeta = (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM + 0.4) / 1.4
    zeta = torch.cat((zeta, zeta))  # channel i + d/2 belongs to pair i
    offset = (pos[:, None] - pos[None, :]).double()  # (T, T)
    decay = zeta ** (offset[..., None] / 512)  # (T, T, d)
    expected = torch.einsum("hnc,hmc,nmc->hnm", rq[0].double(), rk[0].double(), decay)
    torch.testing.assert_close((xq @ xk.transpose(-1, -2))[0].double(), expected, rtol=1e-4, atol=1e-4)
    assert decay[T - 1, 0, 0] < 0.05  # the decay does matter at these distances


def test_xpos_stays_finite_up_to_its_max_length():
    enc = XPos(N_EMBD, N_HEAD)
    assert enc.max_length == int(80 * 512 / math.log(1.4 / 0.4))  # ~32.7k
    # every logit finite, the masked future ones (zeta^(n - m) > 1 for m > n) included
    pos = torch.linspace(0, enc.max_length - 1, 64).long()
    q, k = enc.rotate_at(torch.randn(1, N_HEAD, 64, HEAD_DIM), torch.randn(1, N_HEAD, 64, HEAD_DIM), pos)
    assert torch.isfinite(q).all() and torch.isfinite(k).all() and torch.isfinite(q @ k.transpose(-1, -2)).all()
    with pytest.raises(LengthNotSupportedError):
        enc.check_length(enc.max_length + 1)


@pytest.mark.parametrize("name", list(members(None)))
def test_angles_are_float32_under_bf16_autocast(name):
    """At position 16,000 a bf16 position is off by up to 64 (bf16 keeps 8 significant bits):
    rotating under CPU bf16 autocast must match float32 to bf16 rounding of the result only."""
    assert torch.tensor(16001.0).bfloat16().item() != 16001.0
    enc = members(None)[name]
    torch.manual_seed(0)
    q, k = torch.randn(2, N_HEAD, 8, HEAD_DIM), torch.randn(2, N_HEAD, 8, HEAD_DIM)
    pos = torch.arange(16000, 16008)
    want = enc.rotate_at(q, k, pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = enc.rotate_at(q.bfloat16(), k.bfloat16(), pos)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, rtol=2e-2, atol=3e-2)


def rotate_by_formula(x, cos, sin):
    """RoFormer's rotation of pairs (i, i + d/2), written as the paper does: x cos + rotate_half(x) sin."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


@pytest.mark.parametrize("per_sample", [False, True], ids=["(T, d) tables", "(B, 1, T, d) tables"])
def test_the_rotation_and_its_gradient_equal_the_formula_to_the_bit(per_sample):
    """rotate_pairs computes its own gradient (the rotation by minus the angle): the same numbers
    as autograd through the formula, forward and backward, bit for bit."""
    from poslab.encodings.rotary import rotate_pairs

    torch.manual_seed(0)
    x = torch.randn(2, N_HEAD, 24, HEAD_DIM, requires_grad=True)
    pos = torch.stack([torch.arange(24), torch.arange(24) + 100]) if per_sample else torch.arange(24)
    cos, sin = RoPE(N_HEAD * HEAD_DIM, N_HEAD).prepare(pos, int(pos.max()) + 1)
    upstream = torch.randn(2, N_HEAD, 24, HEAD_DIM)
    ours = rotate_pairs(x, cos, sin)
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    formula = rotate_by_formula(x, cos, sin)
    (formula_grad,) = torch.autograd.grad((formula * upstream).sum(), x)
    assert torch.equal(ours, formula) and torch.equal(ours_grad, formula_grad)
    small = x.detach()[:1, :1, :4].double().requires_grad_()  # a few positions: gradcheck is O(elements^2)
    tables = (cos[..., :4, :].double(), sin[..., :4, :].double())
    if per_sample:
        tables = tuple(table[:1] for table in tables)
    assert torch.autograd.gradcheck(lambda t: rotate_pairs(t, *tables), (small,))


def test_rotation_tables_that_learn_get_their_gradient():
    """Tables that require a gradient (a learned rotation) take autograd's path through the formula."""
    from poslab.encodings.rotary import rotate_pairs

    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, HEAD_DIM)
    angles = torch.rand(8, HEAD_DIM // 2, requires_grad=True)

    def tables():
        both = torch.cat((angles, angles), -1)
        return both.cos(), both.sin()

    (ours,) = torch.autograd.grad(rotate_pairs(x, *tables()).sum(), angles)
    (formula,) = torch.autograd.grad(rotate_by_formula(x, *tables()).sum(), angles)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, formula)
