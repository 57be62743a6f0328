"""Windowed attention with sinks (eval.window) against its definitions.

StreamingLLM's is a cache: the sinks and the last `local` tokens, at their positions in the cache.
For a one-layer model that is exactly the model run on the truncated context (sinks + last W
tokens, positions 0.. in order), which is what the first test compares, token by token. (In deeper
models the cached tokens' own states were computed with their own windows, so the rerun on a
truncated context is the definition only while nothing has been evicted: the second test.)
LM-Infinite's is a mask and a distance cap: compared with attention computed pair by pair from the
capped distances, the rotation written in complex numbers.
"""

import pytest
import torch

from helpers import LargestTensor
from poslab.encodings import ALiBi, FoX, Learned, NoPE, RoPE, RoPEYaRN, XPos
from poslab.encodings.remapped import LeakyReRoPE, ReRoPE, SelfExtend
from poslab.model import GPT
from poslab.model.attention import LayerTerms
from poslab.model.window import WINDOW_METHODS, AttentionWindow, WindowedPath, window_refusal

N_EMBD, N_HEAD, VOCAB = 32, 2, 13
SINKS, LOCAL = 2, 5


def model(encoding, n_layer=1, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=VOCAB, n_layer=n_layer, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=encoding).eval()


def streaming(cap=16) -> AttentionWindow:
    return AttentionWindow(sinks=SINKS, local=LOCAL, method="streaming_llm", cap=cap)


ENCODINGS = {
    "rope": lambda: RoPE(N_EMBD, N_HEAD),
    "alibi": lambda: ALiBi(N_HEAD),
    "nope": lambda: NoPE(),
}


@pytest.mark.parametrize("name", ENCODINGS)
def test_streaming_llm_equals_the_model_on_the_truncated_context(name):
    net = model(ENCODINGS[name]())
    idx = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.window = streaming()
        windowed = net(idx)
        net.window = None
        for i in range(idx.shape[1]):
            kept = list(range(min(SINKS, i + 1))) + list(range(max(SINKS, i - LOCAL + 1), i + 1))
            truncated = net(idx[:, kept])[:, -1]
            torch.testing.assert_close(windowed[:, i], truncated, atol=1e-5, rtol=1e-5)


def test_before_eviction_a_deeper_model_is_its_full_attention():
    net = model(RoPE(N_EMBD, N_HEAD), n_layer=2)
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net(idx)
        net.window = streaming()
        windowed = net(idx)
    torch.testing.assert_close(windowed[:, : SINKS + LOCAL], full[:, : SINKS + LOCAL], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(windowed[:, -1], full[:, -1], atol=1e-3)


def complex_logits(q, k, distance: torch.Tensor) -> torch.Tensor:
    """q, k (H, T, hd) unrotated; distance (T, T): RoPE's logits pair by pair as complex numbers."""
    half = q.shape[-1] // 2
    theta = torch.tensor([10000.0 ** (-2 * c / q.shape[-1]) for c in range(half)], dtype=torch.float64)
    zq = torch.complex(q[..., :half].double(), q[..., half:].double())  # (H, T, half)
    zk = torch.complex(k[..., :half].double(), k[..., half:].double())
    phase = torch.exp(1j * distance.double().unsqueeze(-1) * theta)  # (T, T, half)
    return (zq.unsqueeze(2) * zk.conj().unsqueeze(1) * phase).real.sum(-1)  # (H, T, T)


@pytest.mark.parametrize("cap", [3, 100])
def test_lm_infinite_equals_the_capped_distances_pair_by_pair(cap):
    T, hd = 30, N_EMBD // N_HEAD
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, N_HEAD, T, hd) for _ in range(3))
    pos = torch.arange(T)
    rope = RoPE(N_EMBD, N_HEAD)
    q_rot, k_rot = rope.rotate_at(q, k, pos)
    window = AttentionWindow(sinks=SINKS, local=LOCAL, method="lm_infinite", cap=cap)
    path = WindowedPath(window, rope, pos, T, budget=N_HEAD * T * 7)  # blocks of 7 rows
    scale = hd**-0.5
    got = path(q_rot, k_rot, v, scale=scale, dropout_p=0.0)

    i, j = pos.unsqueeze(1), pos.unsqueeze(0)
    distance = torch.where(j < SINKS, (i - j).clamp(max=cap), i - j)
    seen = (j <= i) & ((j < SINKS) | (i - j < LOCAL))
    logits = complex_logits(q[0], k[0], distance) * scale
    expected = logits.masked_fill(~seen, float("-inf")).softmax(-1) @ v[0].double()
    torch.testing.assert_close(got[0].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sink", [False, True], ids=["gates", "gates_and_sink"])
def test_fox_gates_under_a_window_equal_the_masked_softmax(sink):
    """FoX's bias comes over every key up to a block's last row, so its blocks keep every key,
    masked; a learned sink (a term that does not) joins the same softmax. Both against the formula."""
    T, hd = 30, N_EMBD // N_HEAD
    torch.manual_seed(6)
    fox = FoX(N_EMBD, N_HEAD, n_layer=1)
    x, (q, k, v) = torch.randn(1, T, N_EMBD), (torch.randn(1, N_HEAD, T, hd) for _ in range(3))
    gates = fox.input_bias(x, 0)
    sink_logit = torch.tensor([0.5, -1.0]) if sink else None
    path = WindowedPath(streaming(), fox, torch.arange(T), T, budget=N_HEAD * T * 7)
    scale = hd**-0.5
    with torch.no_grad():
        got = path(q, k, v, scale=scale, dropout_p=0.0, terms=LayerTerms(input_bias=gates, sink=sink_logit))
        i, j = torch.arange(T).unsqueeze(1), torch.arange(T).unsqueeze(0)
        seen = (j <= i) & ((j < SINKS) | (i - j < LOCAL))
        logits = ((q[0] @ k[0].transpose(-2, -1)) * scale + gates.rows(0, T)[0]).masked_fill(~seen, float("-inf"))
        if sink:
            logits = torch.cat([logits, sink_logit.view(N_HEAD, 1, 1).expand(N_HEAD, T, 1)], dim=-1)
        expected = logits.softmax(-1)[..., :T] @ v[0]
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_a_learned_sink_under_a_window_joins_the_softmax_of_the_keys_a_block_sees():
    T, hd = 30, N_EMBD // N_HEAD
    torch.manual_seed(7)
    q, k, v = (torch.randn(1, N_HEAD, T, hd) for _ in range(3))
    sink_logit = torch.tensor([0.5, -1.0])
    path = WindowedPath(streaming(), NoPE(), torch.arange(T), T, budget=N_HEAD * T * 7)
    with torch.no_grad():
        got = path(q, k, v, scale=1.0, dropout_p=0.0, terms=LayerTerms(sink=sink_logit))
        i, j = torch.arange(T).unsqueeze(1), torch.arange(T).unsqueeze(0)
        seen = (j <= i) & ((j < SINKS) | (i - j < LOCAL))
        logits = (q[0] @ k[0].transpose(-2, -1)).masked_fill(~seen, float("-inf"))
        logits = torch.cat([logits, sink_logit.view(N_HEAD, 1, 1).expand(N_HEAD, T, 1)], dim=-1)
        expected = logits.softmax(-1)[..., :T] @ v[0]
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_a_window_as_long_as_the_sequence_is_full_attention():
    for encoding in (RoPEYaRN(N_EMBD, N_HEAD, train_length=8), ALiBi(N_HEAD)):
        net = model(encoding, n_layer=2)
        idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            full = net(idx)
            net.window = AttentionWindow(sinks=0, local=20, method="streaming_llm", cap=8)
            torch.testing.assert_close(net(idx), full, atol=1e-5, rtol=1e-5)


def test_blocks_of_rows_give_the_numbers_of_one_block():
    net = model(ALiBi(N_HEAD), n_layer=2)
    net.window = streaming()
    idx = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        one_block = net(idx)
        net.chunk_elements = 2 * N_HEAD * 40 * 6
        blocks = net(idx)
    torch.testing.assert_close(blocks, one_block, atol=1e-5, rtol=1e-5)


def test_encodings_a_window_cannot_serve_are_named():
    assert window_refusal(model(Learned(N_EMBD, max_length=64))).startswith("it adds positions to the token")
    assert "does not compose" in window_refusal(model(XPos(N_EMBD, N_HEAD)))
    assert "does not compose" in window_refusal(model(ReRoPE(N_EMBD, N_HEAD, window=4)))
    for encoding in (RoPE(N_EMBD, N_HEAD), ALiBi(N_HEAD), NoPE(), FoX(N_EMBD, N_HEAD, n_layer=1)):
        assert window_refusal(model(encoding)) is None


@pytest.mark.parametrize("name", ["rerope", "leaky_rerope", "self_extend", "streaming_llm", "lm_infinite", "alibi"])
def test_no_method_builds_a_t_by_t_tensor_at_32x(name):
    """At 32x a 16-token training context, on the chunked path with a small budget, no tensor of
    the forward (logits, masks, rotations) reaches T x T elements."""
    T, train = 512, 16
    encodings = {
        "rerope": lambda: ReRoPE(N_EMBD, N_HEAD, window=2),
        "leaky_rerope": lambda: LeakyReRoPE(N_EMBD, N_HEAD, window=2, leak=16.0),
        "self_extend": lambda: SelfExtend(N_EMBD, N_HEAD, window=4, group=8),
        "alibi": lambda: ALiBi(N_HEAD),
    }
    net = model(encodings.get(name, lambda: RoPE(N_EMBD, N_HEAD))(), n_layer=2)
    net.chunk_elements = 2**14
    if name in WINDOW_METHODS:
        net.window = AttentionWindow(sinks=4, local=train, method=name, cap=train)
    idx = torch.randint(0, VOCAB, (1, T))
    with torch.no_grad(), LargestTensor() as largest:
        net(idx)
    # the largest is the MLP's hidden layer, T x 4 n_embd = T^2 / 4 here; a T x T tensor would be four times that
    assert largest.most <= T * 4 * N_EMBD < T * T, largest.most
