"""ReRoPE, Leaky ReRoPE and Self-Extend against independent references.

The reference logit of a (query, key) pair is computed pair by pair from the distance the method
defines, with the rotation written as complex numbers: pairing channels (c, c + d/2) as
z = x_c + i x_{c+d/2}, RoPE's logit at distance t is sum_c Re(z_q conj(z_k) exp(i t theta_c)) with
theta_c = base^(-2c/d) (RoFormer, eq. 34, in the GPT-NeoX channel layout). The model computes
the same logits as two rotations merged by distance, block by block; nothing of it is used here.
"""

import math

import pytest
import torch

from poslab.encodings import RoPE, SelfExtend
from poslab.encodings.remapped import LeakyReRoPE, ReRoPE
from poslab.model import GPT

N_EMBD, N_HEAD = 32, 2
HEAD_DIM = N_EMBD // N_HEAD


def reference_logits(q: torch.Tensor, k: torch.Tensor, distance) -> torch.Tensor:
    """q (H, T, hd), k (H, T, hd), distance(i, j) -> float: logits (H, T, T), pair by pair, for
    i >= j (the rest 0)."""
    H, T, hd = q.shape
    half = hd // 2
    theta = torch.tensor([10000.0 ** (-2 * c / hd) for c in range(half)], dtype=torch.float64)
    zq = torch.complex(q[..., :half].double(), q[..., half:].double())
    zk = torch.complex(k[..., :half].double(), k[..., half:].double())
    out = torch.zeros(H, T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(i + 1):
            phase = torch.exp(1j * distance(i, j) * theta)
            out[:, i, j] = (zq[:, i] * zk[:, j].conj() * phase).real.sum(-1)
    return out


def rerope_distance(window):
    return lambda i, j: min(i - j, window)


def leaky_distance(window, leak):
    return lambda i, j: i - j if i - j < window else window + (i - j - window) / leak


def self_extend_distance(window, group):
    return lambda i, j: i - j if i - j < window else i // group - j // group + window - window / group


CASES = [
    (ReRoPE(N_EMBD, N_HEAD, window=5), rerope_distance(5)),
    (LeakyReRoPE(N_EMBD, N_HEAD, window=5, leak=4.0), leaky_distance(5, 4.0)),
    (SelfExtend(N_EMBD, N_HEAD, window=6, group=3), self_extend_distance(6, 3)),
]


def block_by_block(encoding, q, k, pos, rows: int) -> torch.Tensor:
    """The encoding's logits (1, H, T, T) gathered from blocks of `rows` query rows."""
    prepared = encoding.prepare(pos, int(pos.max()) + 1)
    T = q.shape[-2]
    out = torch.zeros(1, q.shape[1], T, T)
    for start in range(0, T, rows):
        stop = min(start + rows, T)
        out[..., start:stop, :stop] = encoding.block_logits(q[:, :, start:stop], k[:, :, :stop], start, stop, prepared)
    return out


@pytest.mark.parametrize("encoding, distance", CASES, ids=["rerope", "leaky_rerope", "self_extend"])
@pytest.mark.parametrize("length, rows", [(4, 4), (23, 23), (40, 7)], ids=["within_window", "long", "long_blocks"])
def test_logits_equal_the_pairwise_reference(encoding, distance, length, rows):
    torch.manual_seed(0)
    q, k = torch.randn(1, N_HEAD, length, HEAD_DIM), torch.randn(1, N_HEAD, length, HEAD_DIM)
    logits = block_by_block(encoding, q, k, torch.arange(length), rows)[0]
    expected = reference_logits(q[0], k[0], distance)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    torch.testing.assert_close(logits[:, causal].double(), expected[:, causal], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("encoding, distance", CASES, ids=["rerope", "leaky_rerope", "self_extend"])
@pytest.mark.parametrize("length", [3, 5, 6, 40], ids=["within_window", "window", "window_plus_one", "long"])
def test_fused_attention_equals_softmax_of_the_pairwise_reference(encoding, distance, length):
    """`attend` (a band and a causal pass merged by their log-sum-exp) against the reference
    logits' softmax times the values, pair by pair; also with positions that start at an offset."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, N_HEAD, length, HEAD_DIM) for _ in range(3))
    scale = 1 / math.sqrt(HEAD_DIM)
    logits = reference_logits(q[0], k[0], distance) * scale
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    expected = logits.masked_fill(~causal, float("-inf")).softmax(-1) @ v[0].double()
    y = encoding.attend(q, k, v, scale, encoding.prepare(torch.arange(length), length))
    torch.testing.assert_close(y[0].double(), expected, atol=1e-5, rtol=1e-5)
    if isinstance(encoding, SelfExtend):
        return  # grouped positions depend on where the sequence starts
    shifted = encoding.attend(q, k, v, scale, encoding.prepare(torch.arange(length) + 9, length + 9))
    torch.testing.assert_close(shifted[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_the_model_takes_the_fused_passes_where_they_apply_and_block_logits_elsewhere(monkeypatch):
    """Distance is in positions: where they do not step by 1, `attend` declines and the model
    scores through block_logits; where they do, both ways give the same model outputs."""
    encoding = ReRoPE(N_EMBD, N_HEAD, window=4)
    q, k, v = (torch.randn(1, N_HEAD, 20, HEAD_DIM) for _ in range(3))
    assert encoding.attend(q, k, v, 1.0, encoding.prepare(torch.arange(0, 40, 2), 40)) is None
    torch.manual_seed(0)
    model = GPT(64, 2, N_HEAD, N_EMBD, pos_enc=ReRoPE(N_EMBD, N_HEAD, window=4), train_context=16).eval()
    idx = torch.randint(0, 64, (2, 30))
    fused_calls = []
    attend = ReRoPE.attend

    def recorded(self, *args, **kwargs):
        y = attend(self, *args, **kwargs)
        fused_calls.append(y is not None)
        return y

    monkeypatch.setattr(ReRoPE, "attend", recorded)
    with torch.no_grad():
        fused = model(idx)
        assert fused_calls == [True, True]  # one per layer
        model(idx, pos=torch.arange(0, 60, 2))
        assert fused_calls[2:] == [False, False]
        monkeypatch.setattr(ReRoPE, "attend", lambda self, *args, **kwargs: None)
        by_logits = model(idx)
    torch.testing.assert_close(fused, by_logits, atol=1e-5, rtol=1e-5)


def test_self_extend_distances_by_hand():
    """Window 4, group 2 (the paper's Figure 2 setting, 2401.01325): near pairs keep i - j; from
    distance 4 on, floor(i/2) - floor(j/2) + 4 - 2. Worked by hand: (4, 0) -> 2 - 0 + 2 = 4,
    (5, 0) -> 2 + 2 = 4, (6, 0) -> 3 + 2 = 5, (7, 1) -> 3 - 0 + 2 = 5, (7, 3) -> 3 - 1 + 2 = 4,
    (8, 0) -> 4 + 2 = 6, (9, 4) -> 4 - 2 + 2 = 4."""
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [2, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            [3, 2, 1, 0, 0, 0, 0, 0, 0, 0],
            [4, 3, 2, 1, 0, 0, 0, 0, 0, 0],
            [4, 4, 3, 2, 1, 0, 0, 0, 0, 0],
            [5, 5, 4, 3, 2, 1, 0, 0, 0, 0],
            [5, 5, 4, 4, 3, 2, 1, 0, 0, 0],
            [6, 6, 5, 5, 4, 3, 2, 1, 0, 0],
            [6, 6, 5, 5, 4, 4, 3, 2, 1, 0],
        ],
        dtype=torch.float32,
    )
    distance = SelfExtend(N_EMBD, N_HEAD, window=4, group=2).remapped_distance(torch.arange(10))
    torch.testing.assert_close(distance.tril(), expected)
    # the grouped distances never exceed what a model trained at 6 tokens saw: (6 - 4) * 2 + 4 = 8
    # positions, distances below 8
    assert SelfExtend(N_EMBD, N_HEAD, window=4, group=2).remapped_distance(torch.arange(8)).max() < 6


def test_rerope_caps_every_distance_at_the_window():
    distance = ReRoPE(N_EMBD, N_HEAD, window=3).remapped_distance(torch.arange(8)).tril()
    assert distance.max() == 3 and distance[7, 0] == 3 and distance[2, 0] == 2


def models(encoding, seed=0):
    torch.manual_seed(seed)
    model = GPT(vocab_size=11, n_layer=2, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=encoding).eval()
    return model


def test_within_the_window_the_model_is_plain_rope():
    torch.manual_seed(1)
    idx = torch.randint(0, 11, (2, 12))
    rope = models(RoPE(N_EMBD, N_HEAD))
    for encoding in (ReRoPE(N_EMBD, N_HEAD, window=12), SelfExtend(N_EMBD, N_HEAD, window=12, group=4)):
        model = models(encoding)
        model.load_state_dict(rope.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(idx), rope(idx), atol=1e-5, rtol=1e-5)


def test_chunked_evaluation_equals_the_whole_sequence_at_once():
    """Blocks of a few query rows (a tiny budget) give the logits of one block of every row (the
    sdpa path while autograd records, with per-sample positions as well), and the tensors kept
    stay within the budget."""
    torch.manual_seed(2)
    idx = torch.randint(0, 11, (2, 50))
    model = models(LeakyReRoPE(N_EMBD, N_HEAD, window=8, leak=4.0))
    model.chunk_elements = 2 * N_HEAD * 50 * 7  # blocks of 7 rows
    with torch.no_grad():
        chunked = model(idx)
    whole = model(idx)  # autograd on: the explicit path over all rows
    torch.testing.assert_close(chunked, whole.detach(), atol=1e-5, rtol=1e-5)
    pos = torch.arange(50).expand(2, 50) + torch.tensor([[0], [3]])
    with torch.no_grad():
        per_sample = model(idx, pos)
    torch.testing.assert_close(per_sample[0], chunked[0], atol=1e-5, rtol=1e-5)


def test_training_through_the_merged_logits_has_gradients():
    model = models(ReRoPE(N_EMBD, N_HEAD, window=4)).train()
    idx = torch.randint(0, 11, (2, 16))
    loss = model(idx).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ReRoPE(N_EMBD, N_HEAD, window=0), "pos_enc.window"),
        (lambda: LeakyReRoPE(N_EMBD, N_HEAD, window=4, leak=0.5), "pos_enc.leak"),
        (lambda: SelfExtend(N_EMBD, N_HEAD, window=4, group=0), "pos_enc.group"),
    ],
)
def test_impossible_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_shift_makes_grouped_distances_continue_from_the_window():
    encoding = SelfExtend(N_EMBD, N_HEAD, window=8, group=4)
    distance = encoding.remapped_distance(torch.arange(64))
    # the first far distance of each row is the window itself (a query on a group boundary) or
    # just below it: never a jump back to small distances
    for i in range(8, 64):
        assert encoding.window - 1 <= distance[i, i - 8] <= encoding.window
    assert math.isclose(float(distance[63, 0]), 63 // 4 + 8 - 2)
