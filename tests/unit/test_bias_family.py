"""Learned attention biases (T5, KERPLE, FIRE) against their papers' formulas, computed by hand."""

import math

import pytest
import torch

from poslab.encodings import FIRE, KERPLE, ALiBi, T5Bias, t5_relative_bucket
from poslab.model import GPT

N_HEAD = 4


@pytest.mark.parametrize(
    ("distance", "bucket"),
    [
        (-5, 0),  # a key in the future: bucket 0, like distance 0 (causal T5)
        (0, 0),
        (1, 1),
        (15, 15),  # the last exact bucket: 32 // 2 - 1
        (16, 16),  # the first log bucket: 16 + floor(16 * log(16/16) / log(8)) = 16
        (20, 17),  # 16 + floor(16 * ln(1.25) / ln 8) = 16 + floor(1.72)
        (32, 21),  # 16 + floor(16 / 3)
        (64, 26),  # 16 + floor(32 / 3)
        (100, 30),  # 16 + floor(16 * ln(6.25) / ln 8) = 16 + floor(14.10)
        (127, 31),  # 16 + floor(15.94)
        (128, 31),  # max_distance: 16 + 16, clamped to the last bucket
        (1000, 31),
    ],
)
def test_t5_buckets_follow_the_published_rule(distance, bucket):
    """Mesh TensorFlow's _relative_position_bucket, bidirectional=False, 32 buckets, max distance 128."""
    assert t5_relative_bucket(torch.tensor(distance), num_buckets=32, max_distance=128).item() == bucket


def test_t5_buckets_with_other_sizes():
    # 8 buckets up to 32: exact 0..3, then 4 + floor(4 * log(n / 4) / log(8))
    got = t5_relative_bucket(torch.tensor([3, 4, 7, 8, 15, 16, 31, 32, 500]), num_buckets=8, max_distance=32)
    assert got.tolist() == [3, 4, 5, 5, 6, 6, 7, 7, 7]


def test_t5_bias_looks_up_its_table():
    enc = T5Bias(N_HEAD)
    with torch.no_grad():
        enc.table.copy_(torch.randn(N_HEAD, 32))
    pos = torch.arange(300)
    bias = enc.bias(pos, pos)  # (H, T, T)
    for i, j in [(0, 0), (10, 3), (40, 8), (299, 0), (5, 9)]:
        bucket = t5_relative_bucket(torch.tensor(i - j)).item()
        torch.testing.assert_close(bias[:, i, j], enc.table[:, bucket])
    torch.testing.assert_close(enc.bias(pos[:50] + 1000, pos[:50] + 1000), bias[:, :50, :50])


def test_kerple_is_the_log_kernel():
    torch.manual_seed(0)
    enc = KERPLE(N_HEAD)
    r1, r2 = enc.r1.detach().clone(), enc.r2.detach().clone()
    pos = torch.arange(20) + 7
    bias = enc.bias(pos, pos)
    for h in range(N_HEAD):
        for i, j in [(0, 0), (5, 2), (19, 0), (3, 8)]:
            expected = -r1[h].item() * math.log(1 + r2[h].item() * abs(i - j))
            assert bias[h, i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_kerple_keeps_its_parameters_positive_by_clamping():
    """As the paper's code: values below eps are clamped to eps (in place) before use."""
    enc = KERPLE(N_HEAD)
    with torch.no_grad():
        enc.r1[0] = -3.0
        enc.r2[1] = 0.0
    bias = enc.bias(torch.arange(5), torch.arange(5))
    assert enc.r1[0].item() == pytest.approx(0.01) and enc.r2[1].item() == pytest.approx(0.01)
    assert (bias <= 0).all()


def fire_by_hand(enc: FIRE, i: int, j: int) -> torch.Tensor:
    """psi(i - j) / psi(max(L, i)) through the MLP, one pair at a time, in float64."""
    c = abs(enc.c.item())
    threshold = abs(enc.threshold_scale.item() * enc.init_threshold)
    x = math.log(c * abs(i - j) + 1) / (math.log(c * max(threshold, i) + 1) + enc.eps)
    hidden = torch.relu(x * enc.w1.double() + enc.b1.double())
    return enc.w2.double() @ hidden + enc.b2.double()


def test_fire_is_the_papers_formula():
    torch.manual_seed(0)
    enc = FIRE(N_HEAD)
    with torch.no_grad():  # a trained-looking state: arbitrary signs, c and L moved
        for p in (enc.w1, enc.b1, enc.w2, enc.b2):
            p.copy_(torch.randn_like(p))
        enc.c.fill_(-0.3)  # enters as |c|
        enc.threshold_scale.fill_(0.05)  # L = 25.6: positions past it are normalised by themselves
    pos = torch.arange(100)
    bias = enc.bias(pos, pos)
    for i, j in [(0, 0), (5, 2), (30, 29), (30, 0), (99, 1), (99, 99)]:
        torch.testing.assert_close(bias[:, i, j].double(), fire_by_hand(enc, i, j), rtol=1e-5, atol=1e-5)
    # progressive interpolation: past L, a distance weighs less the later the query
    x = enc.normalized_distance(pos, pos).detach()
    assert x[60, 50] > x[90, 80] and x[99, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert (x.tril() <= 1 + 1e-6).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cls", [KERPLE, FIRE])
def test_learned_bias_starts_non_positive_and_non_increasing_in_distance(cls, seed):
    torch.manual_seed(seed)
    enc = cls(N_HEAD)
    pos = torch.arange(1000)  # past FIRE's threshold L = 512 too
    with torch.no_grad():
        bias = enc.bias(pos, pos)  # (H, T, T)
    past = bias.tril()
    assert (past <= 1e-6).all()
    # along each query row, from the farthest key (j = 0) to the query itself (j = i)
    assert (past.diff(dim=-1).tril(-1) >= -1e-6).all()
    assert (bias[:, 999, 0] < -0.01).all()  # and does fall with distance


def test_fire_weights_survive_the_host_models_init():
    torch.manual_seed(0)
    enc = FIRE(N_HEAD)
    before = {name: p.detach().clone() for name, p in enc.named_parameters()}
    GPT(vocab_size=50, n_layer=1, n_head=N_HEAD, n_embd=32, pos_enc=enc)
    for name, p in enc.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [ALiBi, T5Bias, KERPLE, FIRE])
def test_per_sample_positions_give_each_row_its_own_bias(cls):
    """(B, T) positions (sorted samples from a larger range) -> (B, H, T, T), row b the (T,) bias."""
    torch.manual_seed(0)
    enc = cls(N_HEAD)
    pos = torch.stack([torch.randperm(4000)[:24].sort().values for _ in range(3)])
    batched = enc.bias(pos, pos)
    assert batched.shape == (3, N_HEAD, 24, 24)
    for b in range(3):
        torch.testing.assert_close(batched[b], enc.bias(pos[b], pos[b]))


@pytest.mark.parametrize("cls", [ALiBi, T5Bias, KERPLE])
def test_distance_biases_depend_only_on_the_offset(cls):
    enc = cls(N_HEAD)
    pos = torch.arange(64)
    torch.testing.assert_close(enc.bias(pos + 5000, pos + 5000), enc.bias(pos, pos))


def test_fire_shortcuts_give_the_direct_formula():
    """Query rows within the threshold look f up per distance, the rest run f per pair, in chunks
    of rows when large. Values and gradients equal f(normalized_distance) evaluated in one piece."""
    torch.manual_seed(0)
    enc = FIRE(N_HEAD)
    with torch.no_grad():
        for p in (enc.w1, enc.b1, enc.w2, enc.b2):
            p.copy_(torch.randn_like(p))
        enc.threshold_scale.fill_(1.001)  # L = 512.5: no query exactly at L, where max() splits its gradient

    def direct(q_pos, k_pos):
        return enc.mlp(enc.normalized_distance(q_pos, k_pos)).movedim(-1, -3)

    def sorted_samples(high):
        return torch.stack([torch.randperm(high)[:64].sort().values for _ in range(3)])

    # within L = 512; straddling it; per-sample within; per-sample straddling
    for pos in (torch.arange(300), torch.arange(700), sorted_samples(500), sorted_samples(900)):
        weights = torch.randn(enc.bias(pos, pos).shape)
        got = torch.autograd.grad((enc.bias(pos, pos) * weights).sum(), list(enc.parameters()))
        want = torch.autograd.grad((direct(pos, pos) * weights).sum(), list(enc.parameters()))
        torch.testing.assert_close(enc.bias(pos, pos), direct(pos, pos))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)  # sums over ~10^5 terms
    assert enc.leading_rows_within(torch.arange(700)) == 513
    assert enc.leading_rows_within(torch.tensor([[0, 5, 600, 700], [0, 520, 530, 540]])) == 1
    past = torch.arange(1100) * 3  # 1100 x 1100 x 32 hidden values: three chunks of rows
    with torch.no_grad():
        torch.testing.assert_close(enc.bias(past, past), direct(past, past))
