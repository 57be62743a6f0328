"""The attention paths of a bias encoding give the same numbers, and the long-evaluation paths
never hold a T x T tensor.

flex (FlexAttention + score_mod + causal BlockMask) runs here eagerly on CPU, forward only, as
FlexAttention does off CUDA; chunked (blocks of query rows, each with its own bias) is what CPU
evaluation uses. Both are checked against sdpa, the materialised (H, T, T) bias.
"""

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from helpers import LargestTensor
from poslab.encodings import FIRE, KERPLE, ALiBi, NoPE, RoPEYaRN, T5Bias
from poslab.model import (
    GPT,
    BlockBias,
    CausalSdpa,
    CausalSelfAttention,
    ChunkedPath,
    FlexPath,
    PreparedPositions,
    causal_block_mask,
    causal_mask_mod,
)

# flex_attention off CUDA warns that it runs unfused; that is the point of running it here
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")

N_HEAD, N_EMBD = 4, 32
BIAS = ["alibi", "t5_bias", "kerple", "fire"]


def make_encoding(name: str):
    torch.manual_seed(0)
    enc = {"alibi": ALiBi, "t5_bias": T5Bias, "kerple": KERPLE, "fire": FIRE}[name](N_HEAD)
    with torch.no_grad():  # a trained-looking state, so every term of the formula matters
        if name == "t5_bias":
            enc.table.normal_()
        if name == "fire":
            for p in (enc.w1, enc.b1, enc.w2, enc.b2):
                p.normal_()
            enc.c.fill_(-0.3)
            enc.threshold_scale.fill_(0.1)  # L = 51.2: queries past it normalise by themselves
    return enc


def tiny_gpt(pos_enc, attention: str = "auto") -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=50, n_layer=2, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=pos_enc, attention=attention).eval()


def sorted_samples(batch: int, length: int, high: int) -> torch.Tensor:
    """Randomized positions: (B, T) sorted samples from [0, high)."""
    return torch.stack([torch.randperm(high)[:length].sort().values for _ in range(batch)])


POSITIONS = {
    "arange": lambda T: torch.arange(T),
    "offset": lambda T: torch.arange(T) + 300,  # FIRE: queries past L; T5: log buckets
    "randomized": lambda T: sorted_samples(2, T, 4000),
}


def materialize(score_mod, batch: int, q_len: int, k_len: int) -> torch.Tensor:
    """score_mod(0, b, h, q_idx, kv_idx) at every index: the bias as FlexAttention adds it."""
    b, h, q, k = torch.meshgrid(
        torch.arange(batch), torch.arange(N_HEAD), torch.arange(q_len), torch.arange(k_len), indexing="ij"
    )
    return score_mod(torch.zeros(b.shape), b, h, q, k)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("name", BIAS)
def test_score_mod_adds_the_bias_and_carries_its_gradient(name, positions):
    """Elementwise, score_mod gives bias() value for value, and the same gradients reach the
    encoding's parameters (on GPU the kernel scatters into the tables; the rest is autograd)."""
    enc = make_encoding(name)
    pos = POSITIONS[positions](40)
    bias = enc.bias(pos, pos)
    bias = bias.unsqueeze(0) if bias.dim() == 3 else bias  # (B, H, T, T)
    got = materialize(enc.score_mod(pos, pos), bias.shape[0], 40, 40)
    torch.testing.assert_close(got, bias, rtol=1e-5, atol=1e-5)

    params = [p for p in enc.parameters()]
    if not params:  # ALiBi learns nothing
        return
    weights = torch.randn(bias.shape).tril()  # the causal part: future logits are masked out
    want = torch.autograd.grad((bias * weights).sum(), params)
    got = torch.autograd.grad((got * weights).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["arange", "randomized"])
@pytest.mark.parametrize("name", BIAS)
def test_flex_and_chunked_paths_equal_the_sdpa_path(name, positions):
    """The whole model's logits under each path, in evaluation (no_grad); chunked with a budget
    small enough for several blocks of rows, recomputed in each layer."""
    idx = torch.randint(0, 50, (2, 32))
    pos = POSITIONS[positions](32)
    logits = {}
    for attention in ("sdpa", "flex", "chunked"):
        model = tiny_gpt(make_encoding(name), attention)
        model.chunk_elements = 2 * N_HEAD * 32 * 10  # 10 rows per block
        with torch.no_grad():
            logits[attention] = model(idx, pos)
    torch.testing.assert_close(logits["flex"], logits["sdpa"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["chunked"], logits["sdpa"], rtol=1e-5, atol=1e-5)


def test_fire_score_mod_takes_the_table_within_the_threshold_and_f_past_it():
    """Both branches of FIRE's score_mod are used by the cases above, and give its formula."""
    enc = make_encoding("fire")  # L = 51.2
    within, past = torch.arange(40), torch.arange(40) + 100
    assert enc.score_mod(within, within).__name__ == "fire_within_threshold"
    assert enc.score_mod(past, past).__name__ == "fire"
    for pos in (within, past):
        torch.testing.assert_close(materialize(enc.score_mod(pos, pos), 1, 40, 40)[0], enc.bias(pos, pos))


@pytest.mark.parametrize("length", [1, 100, 128, 129, 300, 512])
def test_causal_block_mask_equals_create_block_mask(length):
    """Built from blocks, without the T x T mask create_block_mask evaluates, and the same."""
    got = causal_block_mask(length, torch.device("cpu"))
    want = create_block_mask(causal_mask_mod, None, None, length, length, device="cpu")
    assert got.seq_lengths == want.seq_lengths and got.BLOCK_SIZE == want.BLOCK_SIZE
    for field in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    for field in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_yarn_temperature_and_rotation_hold_in_every_path():
    """RoPE-YaRN past its training length (logit scale > 1): each path's attention equals
    softmax(rotated q k^T * scale / sqrt(hd)) V by hand."""
    torch.manual_seed(0)
    enc = RoPEYaRN(N_EMBD, N_HEAD, train_length=8)
    attn = CausalSelfAttention(N_EMBD, N_HEAD, dropout=0.0).eval()
    B, T = 2, 40
    x, pos = torch.randn(B, T, N_EMBD), torch.arange(T)
    assert enc.logit_scale(T) > 1.1

    q, k, v = attn.qkv(x).split(N_EMBD, dim=2)
    q, k, v = (t.view(B, T, N_HEAD, -1).transpose(1, 2) for t in (q, k, v))
    q, k = enc.rotate_at(q, k, pos)
    logits = q @ k.transpose(-1, -2) * enc.logit_scale(T) / math.sqrt(q.size(-1))
    y = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1) @ v
    expected = attn.proj(y.transpose(1, 2).reshape(B, T, N_EMBD))

    paths = (CausalSdpa(), FlexPath(enc, pos, T), ChunkedPath(BlockBias(enc, pos, budget=B * N_HEAD * T * 8)))
    with torch.no_grad():
        for path in paths:
            prepared = PreparedPositions(enc, pos, enc.prepare(pos, T), enc.logit_scale(T), path)
            torch.testing.assert_close(attn(x, prepared), expected, rtol=1e-5, atol=1e-5)
        idx = torch.randint(0, 50, (B, T))
        logits = {a: tiny_gpt(RoPEYaRN(N_EMBD, N_HEAD, train_length=8), a)(idx) for a in ("sdpa", "flex", "chunked")}
    torch.testing.assert_close(logits["flex"], logits["sdpa"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["chunked"], logits["sdpa"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BIAS)
def test_auto_picks_flex_on_cuda_and_chunked_for_cpu_evaluation(name):
    model = tiny_gpt(make_encoding(name))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert model.attention_path(cuda) == "flex"
    assert model.attention_path(cpu) == "sdpa"  # training: autograd on
    with torch.no_grad():
        assert model.attention_path(cuda) == "flex"
        assert model.attention_path(cpu) == "chunked"
    model.train()
    model.dropout = 0.1  # flex has no attention dropout
    assert model.attention_path(cuda) == "sdpa"
    plain = tiny_gpt(NoPE())
    with torch.no_grad():
        assert plain.attention_path(cuda) == plain.attention_path(cpu) == "sdpa"  # is_causal, no bias


LONG = 512


@pytest.mark.parametrize("name", ["nope", "rope_yarn", *BIAS])
def test_evaluation_never_holds_a_t_by_t_tensor(name):
    """A long evaluation (no_grad on CPU, attention=auto) runs without any tensor of T x T
    elements: the bias encodings through the chunked path (here with a budget of 1/16 of T x T),
    the others through SDPA's is_causal (its CPU kernel builds no mask). The same check on the
    sdpa path sees its (1, H, T, T) bias, so it would catch one."""
    enc = RoPEYaRN(N_EMBD, N_HEAD, train_length=32) if name == "rope_yarn" else NoPE()
    enc = make_encoding(name) if name in BIAS else enc
    model = tiny_gpt(enc)
    model.chunk_elements = LONG * LONG // 16
    idx = torch.randint(0, 50, (1, LONG))
    with torch.no_grad(), LargestTensor() as largest:
        model(idx)
    assert largest.most < LONG * LONG
    if name in BIAS:
        model.attention = "sdpa"
        with torch.no_grad(), LargestTensor() as dense:
            model(idx)
        assert dense.most >= N_HEAD * LONG * LONG


@pytest.mark.parametrize("positions", ["arange", "randomized"])
@pytest.mark.parametrize("name", BIAS)
def test_flex_inputs_grow_linearly_with_length(name, positions):
    """What the flex path builds per forward is O(T): the score_mod's tables over distances,
    (H or FIRE's 32 hidden units, span), and the BlockMask's (T/128)^2 blocks; at T = 4096 with
    positions spread over 4T, a thirty-second of T x T at most."""
    enc = make_encoding(name)
    T = 4096
    pos = torch.arange(T) if positions == "arange" else sorted_samples(2, T, 4 * T)
    with torch.no_grad(), LargestTensor() as largest:
        FlexPath(enc, pos, T)
    span = int(pos.max() - pos.min()) + 1
    assert largest.most <= 32 * span <= T * T // 32
