"""Each encoding against its paper's formula, and the model's attention against plain math."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_config
from poslab.config import CONFIG_DIR
from poslab.encodings import (
    FIRE,
    KERPLE,
    ALiBi,
    CoPE,
    FoX,
    IRoPE,
    Learned,
    LengthNotSupportedError,
    NoPE,
    PositionalEncoding,
    RoPE,
    RoPELlama3,
    RoPENTK,
    RoPEPartial,
    RoPEPositionInterpolation,
    RoPEYaRN,
    Sinusoidal,
    T5Bias,
    XPos,
    alibi_slopes,
    mechanism_of,
    span,
)
from poslab.model import GPT, CausalSelfAttention, MaskedSdpa, PreparedPositions, causal_bias

N_EMBD, N_HEAD, CONTEXT = 32, 4, 16
N_LAYER = 2  # tiny_gpt's; the encodings with weights per layer are built for it


def make_encoding(name: str):
    return {
        "nope": lambda: NoPE(),
        "sinusoidal": lambda: Sinusoidal(N_EMBD),
        "learned": lambda: Learned(N_EMBD, max_length=CONTEXT),
        "rope": lambda: RoPE(N_EMBD, N_HEAD),
        "rope_pi": lambda: RoPEPositionInterpolation(N_EMBD, N_HEAD, train_length=CONTEXT),
        "rope_ntk": lambda: RoPENTK(N_EMBD, N_HEAD, train_length=CONTEXT),
        "rope_yarn": lambda: RoPEYaRN(N_EMBD, N_HEAD, train_length=CONTEXT),
        "rope_llama3": lambda: RoPELlama3(N_EMBD, N_HEAD, train_length=CONTEXT),
        "rope_base500k": lambda: RoPE(N_EMBD, N_HEAD, base=500000.0),
        "rope_partial": lambda: RoPEPartial(N_EMBD, N_HEAD),
        "xpos": lambda: XPos(N_EMBD, N_HEAD),
        "alibi": lambda: ALiBi(N_HEAD),
        "t5_bias": lambda: T5Bias(N_HEAD),
        "kerple": lambda: KERPLE(N_HEAD),
        "fire": lambda: FIRE(N_HEAD),
        "fox": lambda: FoX(N_EMBD, N_HEAD, N_LAYER),
        "cope": lambda: CoPE(N_EMBD, N_HEAD, N_LAYER, max_position=CONTEXT),
        "irope": lambda: IRoPE(N_EMBD, N_HEAD, N_LAYER, nope_every=2),
    }[name]()


ROTARY = ["rope", "rope_pi", "rope_ntk", "rope_yarn", "rope_llama3", "rope_base500k", "rope_partial"]
BIAS = ["alibi", "t5_bias", "kerple", "fire"]
DATA_DEPENDENT = ["fox", "cope"]
ALL = ["nope", "sinusoidal", "learned", *ROTARY, "xpos", "irope", *BIAS, *DATA_DEPENDENT]
NEW = [
    "rope_ntk",
    "rope_yarn",
    "rope_llama3",
    "rope_base500k",
    "rope_partial",
    "xpos",
    "t5_bias",
    "kerple",
    "fire",
    *DATA_DEPENDENT,
    "irope",
]


def random_positions(batch: int, length: int, high: int) -> torch.Tensor:
    """Per-sample randomized positions: (B, T) sorted samples without replacement from [0, high)."""
    return torch.stack([torch.randperm(high)[:length].sort().values for _ in range(batch)])


def tiny_gpt(name: str) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=50, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=make_encoding(name)).eval()


@pytest.mark.parametrize("name", ALL)
def test_a_prefix_scores_the_same_alone(name):
    """The first 5 tokens get the same logits alone as at the start of a longer sequence: nothing
    leaks from later tokens, and positions start at 0 whatever the length (within the context)."""
    model = tiny_gpt(name)
    idx = torch.randint(0, 50, (3, CONTEXT))
    with torch.no_grad():
        whole, prefix = model(idx), model(idx[:, :5])
    assert whole.shape == (3, CONTEXT, 50)
    torch.testing.assert_close(prefix, whole[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_causality(name):
    """Changing token t changes no logit before t, and does change logits from t on."""
    model = tiny_gpt(name)
    idx = torch.randint(0, 50, (2, CONTEXT))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name", ROTARY)
def test_rope_score_depends_only_on_offset(name):
    enc = make_encoding(name)
    q, k = torch.randn(1, N_HEAD, 1, N_EMBD // N_HEAD), torch.randn(1, N_HEAD, 1, N_EMBD // N_HEAD)

    def score(m, n):
        qm, _ = enc.rotate_at(q, q, torch.tensor([m]))
        _, kn = enc.rotate_at(k, k, torch.tensor([n]))
        return (qm * kn).sum(-1)

    torch.testing.assert_close(score(7, 3), score(12, 8), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(3, 3), score(0, 0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 5))


def test_rope_rotation_matches_roformer_formula():
    """Pair (i, i + d/2) is rotated by pos * base^(-2i/d): a 2-D rotation, norms preserved."""
    enc = RoPE(N_EMBD, N_HEAD)
    d = N_EMBD // N_HEAD
    x = torch.randn(1, 1, 1, d)
    pos = 5
    rotated, _ = enc.rotate_at(x, x, torch.tensor([pos]))
    for i in range(d // 2):
        theta = pos * 10000 ** (-2 * i / d)
        a, b = x[..., i], x[..., i + d // 2]
        torch.testing.assert_close(rotated[..., i], a * math.cos(theta) - b * math.sin(theta))
        torch.testing.assert_close(rotated[..., i + d // 2], a * math.sin(theta) + b * math.cos(theta))


def test_rope_pi_is_rope_within_training_context():
    rope, pi = make_encoding("rope"), make_encoding("rope_pi")
    q, k = torch.randn(2, N_HEAD, CONTEXT, 8), torch.randn(2, N_HEAD, CONTEXT, 8)
    pos = torch.arange(CONTEXT)
    for a, b in zip(rope.rotate_at(q, k, pos), pi.rotate_at(q, k, pos), strict=True):
        torch.testing.assert_close(a, b)


def test_rope_pi_at_scaled_length_is_rope_at_fractional_positions():
    """PI (arXiv 2306.15595): at length L > L_train, position p is used as p * L_train / L."""
    rope, pi = make_encoding("rope"), make_encoding("rope_pi")
    length = 4 * CONTEXT
    q, k = torch.randn(1, N_HEAD, length, 8), torch.randn(1, N_HEAD, length, 8)
    pos = torch.arange(length)
    fractional = pos.double() * CONTEXT / length
    for a, b in zip(pi.rotate_at(q, k, pos), rope.rotate_at(q, k, fractional), strict=True):
        torch.testing.assert_close(a, b)
    assert pi.scale(length) == 4.0 and pi.scale(CONTEXT // 2) == 1.0


def test_alibi_slopes_follow_the_paper():
    # 8 heads: 2^-1 ... 2^-8
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # 12 heads: the 8-head slopes, then every other slope of 16 heads: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expected_12 = [2.0**-i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected_12))
    assert len(alibi_slopes(6)) == 6 and len(alibi_slopes(1)) == 1


def test_alibi_bias_depends_only_on_offset():
    enc = ALiBi(N_HEAD)
    bias = enc.bias(torch.arange(8), torch.arange(8))  # (H, 8, 8)
    shifted = enc.bias(torch.arange(100, 108), torch.arange(100, 108))
    torch.testing.assert_close(bias, shifted)
    slopes = alibi_slopes(N_HEAD)
    for i, j in [(5, 2), (7, 0), (3, 3)]:
        torch.testing.assert_close(bias[:, i, j], -slopes * (i - j))


def test_sinusoidal_matches_formula():
    enc = Sinusoidal(N_EMBD)
    pos = torch.arange(50)
    table = enc.table(pos)
    for p in (0, 1, 17, 49):
        for i in range(N_EMBD // 2):
            angle = p / 10000 ** (2 * i / N_EMBD)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    x = torch.randn(1, 50, N_EMBD)
    torch.testing.assert_close(enc.embed(x, pos), x * math.sqrt(N_EMBD) + table)  # paper, section 3.4
    unscaled = Sinusoidal(N_EMBD, scale_embeddings=False)
    torch.testing.assert_close(unscaled.embed(x, pos), x + table)


def test_learned_refuses_positions_past_its_table():
    model = tiny_gpt("learned")
    model(torch.randint(0, 50, (1, CONTEXT)))
    with pytest.raises(LengthNotSupportedError, match="max_length=16"):
        model(torch.randint(0, 50, (1, CONTEXT + 1)))


@pytest.mark.parametrize("name", BIAS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["arange", "per_sample"])
def test_bias_attention_equals_plain_softmax(name, per_sample):
    """softmax(QK^T / sqrt(d) + bias) V by hand, with positions (T,) or sorted samples (B, T)."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(N_EMBD, N_HEAD, dropout=0.0).eval()
    enc = make_encoding(name)
    B, T = 2, 12
    x = torch.randn(B, T, N_EMBD)
    pos = random_positions(B, T, 4 * T) if per_sample else torch.arange(T)
    bias = causal_bias(enc.bias(pos, pos))
    path = MaskedSdpa(bias if bias.dim() == 4 else bias.unsqueeze(0))
    got = attn(x, PreparedPositions(enc, pos, enc.prepare(pos, span(pos)), enc.logit_scale(span(pos)), path))

    q, k, v = attn.qkv(x).split(N_EMBD, dim=2)
    q, k, v = (t.view(B, T, N_HEAD, -1).transpose(1, 2) for t in (q, k, v))
    mask = torch.ones(T, T).triu(1).bool()
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)) + enc.bias(pos, pos)
    y = logits.masked_fill(mask, float("-inf")).softmax(-1) @ v
    expected = attn.proj(y.transpose(1, 2).reshape(B, T, N_EMBD))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_explicit_offset_positions(name):
    """Positions are an input: batched (B, T) positions give each row its own offset."""
    model = tiny_gpt(name)
    idx = torch.randint(0, 50, (2, 8))
    pos = torch.stack([torch.arange(8), torch.arange(8) + 4])
    with torch.no_grad():
        both = model(idx, pos)
        first = model(idx[:1], torch.arange(8))
        second = model(idx[1:], torch.arange(8) + 4)
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-5)


def test_bad_settings_name_the_config_key():
    with pytest.raises(ValueError, match=r"model\.net\.n_embd / model\.net\.n_head, got 36/4=9"):
        RoPE(36, 4)
    with pytest.raises(ValueError, match=r"model\.net\.n_embd"):
        Sinusoidal(33)
    with pytest.raises(ValueError, match=r"model\.net\.n_head"):
        ALiBi(0)
    with pytest.raises(ValueError, match=r"pos_enc\.max_length"):
        Learned(N_EMBD, max_length=0)
    with pytest.raises(ValueError, match=r"pos_enc\.factor"):
        RoPEYaRN(N_EMBD, N_HEAD, train_length=CONTEXT, factor=0.5)
    with pytest.raises(ValueError, match=r"pos_enc\.train_length \(data\.context\)"):
        RoPENTK(N_EMBD, N_HEAD, train_length=0)
    with pytest.raises(ValueError, match=r"pos_enc\.fraction"):
        RoPEPartial(N_EMBD, N_HEAD, fraction=1.5)
    with pytest.raises(ValueError, match=r"pos_enc\.num_buckets"):
        T5Bias(N_HEAD, num_buckets=32, max_distance=8)


def test_family_names_what_a_checkpoint_can_be_scored_under():
    families = {name: make_encoding(name).family for name in ALL}
    assert {families[name] for name in ROTARY} == {"rotary"}
    assert {name: families[name] for name in ALL if name not in ROTARY} == {
        "nope": "nope",
        "sinusoidal": "sinusoidal",
        "learned": "learned",
        "xpos": "xpos",
        "alibi": "alibi",
        "t5_bias": "t5_bias",
        "kerple": "kerple",
        "fire": "fire",
        "fox": "fox",
        "cope": "cope",
        "irope": "irope",
    }


def test_mechanism_is_read_from_the_hooks_a_class_overrides():
    mechanisms = {name: mechanism_of(make_encoding(name)) for name in ALL}
    assert {mechanisms[name] for name in ROTARY} == {"rotary"}
    assert {name: mechanisms[name] for name in ALL if name not in ROTARY} == {
        "nope": "none",
        "sinusoidal": "absolute",
        "learned": "absolute",
        "xpos": "rotary",
        "alibi": "bias",
        "t5_bias": "bias",
        "kerple": "bias",
        "fire": "bias",
        "fox": "data-dependent",
        "cope": "data-dependent",
        "irope": "rotary",
    }

    class UserBias(PositionalEncoding):  # a user's encoding declares nothing
        def bias(self, q_pos, k_pos):
            return None

    class UserRotary(UserBias):
        def rotate(self, q, k, prepared):
            return q, k

    assert (mechanism_of(UserBias), mechanism_of(UserRotary), mechanism_of(PositionalEncoding)) == (
        "bias",
        "rotary",
        "none",
    )


@pytest.mark.parametrize("positions", ["arange", "randomized"])
@pytest.mark.parametrize("name", NEW)
def test_new_encodings_train_a_few_steps(name, positions):
    """A tiny GPT takes AdamW steps on random tokens without NaN, and every trained weight of
    the encoding gets a gradient (a bias that never reaches the logits would get none)."""
    torch.manual_seed(0)
    model = GPT(vocab_size=50, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=make_encoding(name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    B, T = 4, CONTEXT
    losses = []
    for _ in range(4):
        idx = torch.randint(0, 50, (B, T + 1))
        pos = random_positions(B, T, 4 * T) if positions == "randomized" else None
        logits = model(idx[:, :-1], pos)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), idx[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        for pname, param in model.pos_enc.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname
            assert param.grad.abs().sum() > 0, pname
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_each_encoding_has_a_config_that_builds_it(name, tmp_path):
    """conf/pos_enc/NAME.yaml cites its paper on the first line and, composed as the command line
    would, builds the class and settings tested here with the model's and data's sizes."""
    assert (Path(CONFIG_DIR) / "pos_enc" / f"{name}.yaml").read_text().startswith("# ")
    sizes = [f"model.net.n_head={N_HEAD}", f"model.net.n_embd={N_EMBD}", f"data.context={CONTEXT}"]
    sizes += [f"model.net.n_layer={N_LAYER}", "pos_enc.nope_every=2"] if name == "irope" else []
    cfg = compose_config("train", [f"pos_enc={name}", *sizes], tmp_path)
    built, tested = instantiate(cfg.pos_enc), make_encoding(name)
    assert type(built) is type(tested) and built.family == tested.family
    attributes = ("base", "train_length", "factor", "fraction", "scale_base", "num_buckets", "max_distance")
    for attribute in (*attributes, "max_position", "nope_layers"):
        assert getattr(built, attribute, None) == getattr(tested, attribute, None), attribute
