"""FoX, CoPE, iRoPE, attention sinks and length-dependent temperature against their papers'
formulas, written out here by loops and products (not through the library's own helpers), and
every attention path against the others."""

import math

import pytest
import torch
import torch.nn.functional as F

from poslab.encodings import CoPE, FoX, IRoPE, NoPE, RoPE, mechanism_of
from poslab.model import GPT, CausalSelfAttention, PreparedPositions
from poslab.model.attention import CausalSdpa
from poslab.model.temperature import query_factor

N_EMBD, N_HEAD, N_LAYER = 32, 4, 2
HEAD_DIM = N_EMBD // N_HEAD


def heads(attn: CausalSelfAttention, x: torch.Tensor):
    """q, k, v (B, H, T, hd) of a layer, by its own projection but no encoding."""
    B, T, C = x.shape
    q, k, v = attn.qkv(x).split(C, dim=2)
    return (t.view(B, T, N_HEAD, HEAD_DIM).transpose(1, 2) for t in (q, k, v))


def prepared_for(model: GPT, T: int, layer: int = 0) -> PreparedPositions:
    return model.prepare(torch.arange(T), T, torch.float32)[layer]


def run_layer(model: GPT, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The layer's attention output on x (its LayerNorm's output), through the model's own path."""
    return model.blocks[layer].attn(x, prepared_for(model, x.size(1), layer))


def gpt(pos_enc=None, **settings) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=50, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, pos_enc=pos_enc, **settings).eval()


def randomize(module: torch.nn.Module, std: float = 0.5) -> None:
    """Parameters that start at 0 (CoPE's tables, sinks) or 1/2 gates would hide mistakes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * std)


# --- FoX --------------------------------------------------------------------------------------


def test_fox_bias_is_the_sum_of_log_forget_gates():
    """D_ij = sum_{l=j+1..i} log sigmoid(w . x_l + b), by a loop over l, for every head."""
    fox = FoX(N_EMBD, N_HEAD, N_LAYER)
    randomize(fox)
    x = torch.randn(2, 7, N_EMBD)
    layer = 1
    gate = fox.gates[layer]
    got = fox.input_bias(x, layer).rows(0, 7)  # (B, H, T, T)
    for b in range(2):
        for h in range(N_HEAD):
            for i in range(7):
                for j in range(i + 1):
                    expected = 0.0
                    for gated in range(j + 1, i + 1):
                        logit = float(x[b, gated] @ gate.weight[h] + gate.bias[h])
                        expected += math.log(1.0 / (1.0 + math.exp(-logit)))
                    assert abs(float(got[b, h, i, j]) - expected) < 1e-5, (b, h, i, j)
    # a block of rows is the same rows of the whole
    torch.testing.assert_close(fox.input_bias(x, layer).rows(3, 6), got[:, :, 3:6, :6])


def test_fox_attention_equals_the_gated_softmax():
    """Forgetting Attention, eq. 4 of Lin et al.: o_i = sum_j F_ij exp(q_i k_j / sqrt(d)) v_j /
    sum_j F_ij exp(q_i k_j / sqrt(d)), F_ij = prod_{l=j+1..i} f_l, with products, not log sums."""
    model = gpt(FoX(N_EMBD, N_HEAD, N_LAYER))
    randomize(model.pos_enc)
    attn = model.blocks[0].attn
    B, T = 2, 40  # two blocks of rows on the sdpa path (32 + 8)
    x = torch.randn(B, T, N_EMBD)
    q, k, v = heads(attn, x)
    gates = torch.sigmoid(x @ model.pos_enc.gates[0].weight.T + model.pos_enc.gates[0].bias)  # (B, T, H)
    out = torch.zeros(B, N_HEAD, T, HEAD_DIM)
    for b in range(B):
        for h in range(N_HEAD):
            for i in range(T):
                weights = []
                for j in range(i + 1):
                    forget = torch.prod(gates[b, j + 1 : i + 1, h]) if j < i else torch.tensor(1.0)
                    weights.append(forget * torch.exp(q[b, h, i] @ k[b, h, j] / math.sqrt(HEAD_DIM)))
                weights = torch.stack(weights)
                out[b, h, i] = (weights[:, None] * v[b, h, : i + 1]).sum(0) / weights.sum()
    expected = attn.proj(out.transpose(1, 2).reshape(B, T, N_EMBD))
    with torch.no_grad():
        torch.testing.assert_close(run_layer(model, x), expected, rtol=1e-4, atol=1e-5)


# --- CoPE -------------------------------------------------------------------------------------


def test_cope_positions_follow_the_paper_and_grow_toward_the_past():
    """p_ij = sum_{t=j..i} sigmoid(z_it) (Golovneva et al. eq. 3-4), z the scaled, masked logits:
    by a loop; non-decreasing as j moves into the past, and at most i - j + 1."""
    from poslab.encodings.data_dependent import contextual_positions

    T = 8
    logits = torch.randn(2, N_HEAD, T, T)
    masked = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    got = contextual_positions(torch.sigmoid(masked))
    for i in range(T):
        for j in range(i + 1):
            expected = sum(1.0 / (1.0 + math.exp(-float(logits[0, 1, i, t]))) for t in range(j, i + 1))
            assert abs(float(got[0, 1, i, j]) - expected) < 1e-5
    lower = torch.ones(T, T).tril().bool()
    assert (got[..., :, :-1] >= got[..., :, 1:] - 1e-6)[..., lower[:, 1:]].all()
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :] + 1).float()
    assert (got <= distance + 1e-5)[..., lower].all()


def test_cope_attention_equals_the_paper():
    """z_ij = q_i k_j / sqrt(d) + q_i . e[p_ij], e read linearly between floor(p) and ceil(p) and
    held at its last row past max_position - 1; the positions from the logits without that term."""
    max_position = 4  # short, so that some positions are held at the last row
    model = gpt(CoPE(N_EMBD, N_HEAD, N_LAYER, max_position=max_position))
    randomize(model.pos_enc)
    attn = model.blocks[1].attn
    table = model.pos_enc.tables[1]
    B, T = 2, 40  # two blocks of rows on the sdpa path (32 + 8)
    x = torch.randn(B, T, N_EMBD)
    q, k, v = heads(attn, x)
    out = torch.zeros(B, N_HEAD, T, HEAD_DIM)
    for b in range(B):
        for h in range(N_HEAD):
            for i in range(T):
                z = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(HEAD_DIM) for j in range(i + 1)])
                gates = torch.sigmoid(z)
                logits = []
                for j in range(i + 1):
                    p = min(float(gates[j:].sum()), max_position - 1)
                    low, high = math.floor(p), math.ceil(p)
                    e = table[low] + (p - low) * (table[high] - table[low])
                    logits.append(z[j] + q[b, h, i] @ e)
                out[b, h, i] = torch.stack(logits).softmax(0) @ v[b, h, : i + 1]
    expected = attn.proj(out.transpose(1, 2).reshape(B, T, N_EMBD))
    # prepared without gradients: the chunked path; with them: sdpa's blocks of rows
    with torch.no_grad():
        torch.testing.assert_close(run_layer(model, x, layer=1), expected, rtol=1e-4, atol=1e-5)
    prepared = prepared_for(model, T, layer=1)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[1].attn(x, prepared), expected, rtol=1e-4, atol=1e-5)


def test_cope_lookup_gradient_is_the_numerical_one():
    """The bias's gradient, written out by hand, against finite differences (float64), with
    positions past the table's end (held there) among them."""
    from poslab.encodings.data_dependent import _ContextualLookup

    torch.manual_seed(0)
    T, P = 6, 4
    logits = (torch.randn(2, 3, T, T, dtype=torch.float64) * 2).masked_fill(
        torch.ones(T, T).triu(1).bool(), float("-inf")
    )
    logits.requires_grad_(True)
    table = torch.randn(2, 3, T, P, dtype=torch.float64, requires_grad=True)
    assert (torch.sigmoid(logits.detach()).sum(-1) > P - 1).any()  # some rows run past the table
    assert torch.autograd.gradcheck(_ContextualLookup.apply, (logits, table))


# --- iRoPE ------------------------------------------------------------------------------------


def test_irope_drops_rope_in_every_nope_every_th_layer():
    """nope_every=2 in 4 layers: layers 2 and 4 (counted from 1) run NoPE, 1 and 3 RoPE, and each
    layer's output is what a RoPE or a NoPE model's layer gives with the same weights."""
    torch.manual_seed(0)
    irope = GPT(50, 4, N_HEAD, N_EMBD, pos_enc=IRoPE(N_EMBD, N_HEAD, n_layer=4, nope_every=2)).eval()
    rope = GPT(50, 4, N_HEAD, N_EMBD, pos_enc=RoPE(N_EMBD, N_HEAD)).eval()
    nope = GPT(50, 4, N_HEAD, N_EMBD, pos_enc=NoPE()).eval()
    rope.load_state_dict(irope.state_dict())
    nope.load_state_dict(irope.state_dict())
    T = 10
    x = torch.randn(2, T, N_EMBD)
    kinds = [type(p.pos_enc).__name__ for p in irope.prepare(torch.arange(T), T, torch.float32)]
    assert kinds == ["IRoPE", "NoPE", "IRoPE", "NoPE"]
    with torch.no_grad():
        for layer in range(4):
            got = irope.blocks[layer].attn(x, prepared_for(irope, T, layer))
            as_rope = rope.blocks[layer].attn(x, prepared_for(rope, T, layer))
            as_nope = nope.blocks[layer].attn(x, prepared_for(nope, T, layer))
            same, other = (as_nope, as_rope) if layer % 2 else (as_rope, as_nope)
            torch.testing.assert_close(got, same)
            assert not torch.allclose(got, other)
    assert IRoPE(N_EMBD, N_HEAD, n_layer=8).nope_layers == (3, 7)  # Llama 4's pattern: every 4th


def test_irope_refuses_a_setting_with_no_nope_layer():
    with pytest.raises(ValueError, match=r"pos_enc\.nope_every=4 must be between 1 and model\.net\.n_layer=2"):
        IRoPE(N_EMBD, N_HEAD, n_layer=2, nope_every=4)


# --- sinks ------------------------------------------------------------------------------------


def test_a_sink_takes_probability_and_no_value():
    """softmax over [z_i0 .. z_ii, s_h], the sink's share dropped: by hand."""
    model = gpt(RoPE(N_EMBD, N_HEAD), sink=True)
    with torch.no_grad():
        model.blocks[0].attn.sink.copy_(torch.tensor([-1.0, 0.0, 1.0, 3.0]))
    attn = model.blocks[0].attn
    B, T = 2, 75  # past one block of rows: the sdpa path computes these logits 32 rows at a time
    x = torch.randn(B, T, N_EMBD)
    prepared = prepared_for(model, T)
    q, k, v = attn.project(x, prepared)  # rotated
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
    logits = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    expected = torch.zeros(B, N_HEAD, T, HEAD_DIM)
    for h in range(N_HEAD):
        numerators = logits[:, h].exp()  # (B, T, T)
        denominators = numerators.sum(-1, keepdim=True) + math.exp(float(attn.sink[h]))
        expected[:, h] = (numerators / denominators) @ v[:, h]
    expected = attn.proj(expected.transpose(1, 2).reshape(B, T, N_EMBD))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, prepared), expected, rtol=1e-5, atol=1e-6)


def test_a_sink_at_minus_infinity_is_the_plain_model():
    plain = gpt(RoPE(N_EMBD, N_HEAD))
    sunk = gpt(RoPE(N_EMBD, N_HEAD), sink=True)
    state = plain.state_dict()
    for block in range(N_LAYER):
        state[f"blocks.{block}.attn.sink"] = torch.full((N_HEAD,), float("-inf"))
    sunk.load_state_dict(state)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(sunk(idx), plain(idx), rtol=1e-5, atol=1e-6)


# --- every path serves every term -------------------------------------------------------------

TERM_MODELS = {
    "fox": lambda: gpt(FoX(N_EMBD, N_HEAD, N_LAYER)),
    "cope": lambda: gpt(CoPE(N_EMBD, N_HEAD, N_LAYER, max_position=8)),
    "rope+sink": lambda: gpt(RoPE(N_EMBD, N_HEAD), sink=True),
    "fox+sink+logn": lambda: gpt(FoX(N_EMBD, N_HEAD, N_LAYER), sink=True, logit_temperature="logn", train_context=4),
    "rope+ssmax": lambda: gpt(RoPE(N_EMBD, N_HEAD), logit_temperature="ssmax"),
}


@pytest.mark.parametrize("name", TERM_MODELS)
def test_every_attention_path_gives_the_same_numbers(name):
    """sdpa (whole rows, or blocks of 32 where it computes the logits), chunked in blocks of 3
    query rows, and flex (on a CPU: eager, forward
    only) agree; flex refuses a bias from the logits in one line naming the alternative."""
    model = TERM_MODELS[name]()
    randomize(model)
    T = 70  # sdpa computes explicit logits in blocks of 32 rows
    idx = torch.randint(0, 50, (2, T))
    outputs = {}
    with torch.no_grad():
        for path in ("sdpa", "chunked", "flex"):
            model.attention = path
            model.chunk_elements = 2 * N_HEAD * T * 3  # 3 query rows a block
            if path == "flex" and name == "cope":
                with pytest.raises(ValueError, match="attention=flex cannot compute a bias from each row's logits"):
                    model(idx)
                continue
            outputs[path] = model(idx)
    for path, logits in outputs.items():
        torch.testing.assert_close(logits, outputs["sdpa"], rtol=1e-4, atol=1e-5, msg=path)


# --- temperature ------------------------------------------------------------------------------


def test_temperature_rules_follow_their_published_formulas():
    """logn: Qwen's table, log_{T}(n) for n > T else 1 (n = i + 1 keys); llama4: transformers'
    1 + a * log1p(floor((cache_position + 1) / floor_scale)); ssmax: log n (times s per head)."""
    T_train, length = 16, 100
    logn = query_factor("logn", length, T_train, None).squeeze(-1)
    qwen = [math.log(n, T_train) if n > T_train else 1.0 for n in range(1, length + 1)]
    torch.testing.assert_close(logn, torch.tensor(qwen))
    llama4 = query_factor("llama4", length, T_train, 0.1).squeeze(-1)
    expected = [1.0 + 0.1 * math.log1p(math.floor((position + 1) / T_train)) for position in range(length)]
    torch.testing.assert_close(llama4, torch.tensor(expected))
    assert float(llama4[T_train - 2]) == 1.0 and float(llama4[T_train - 1]) == pytest.approx(1 + 0.1 * math.log(2))
    ssmax = query_factor("ssmax", length, T_train, None).squeeze(-1)
    torch.testing.assert_close(ssmax, torch.log(torch.arange(1, length + 1).float()))
    assert query_factor("none", length, T_train, None) is None


@pytest.mark.parametrize("rule", ["logn", "llama4", "ssmax"])
def test_temperature_multiplies_each_rows_logits(rule):
    """The layer's attention equals softmax(factor_i * q_i k_j / sqrt(d) + bias) by hand, SSMax's
    factor times its learned s per head."""
    model = gpt(RoPE(N_EMBD, N_HEAD), logit_temperature=rule, train_context=4, temperature_scale=0.5)
    attn = model.blocks[0].attn
    if rule == "ssmax":
        with torch.no_grad():
            attn.head_temperature.s.copy_(torch.tensor([0.2, 0.5, 1.0, 2.0]))
    B, T = 2, 12
    x = torch.randn(B, T, N_EMBD)
    prepared = prepared_for(model, T)
    q, k, v = heads(attn, x)
    q, k = model.pos_enc.rotate_at(q, k, torch.arange(T))
    n = torch.arange(1, T + 1).float()
    factor = {
        "logn": (n.log() / math.log(4)).clamp(min=1),
        "llama4": 1 + 0.5 * torch.log1p(torch.floor(n / 4)),
        "ssmax": n.log(),
    }[rule].view(1, 1, T, 1)
    if rule == "ssmax":
        factor = factor * attn.head_temperature.s.view(1, N_HEAD, 1, 1)
    logits = factor * (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
    y = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1) @ v
    expected = attn.proj(y.transpose(1, 2).reshape(B, T, N_EMBD))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, prepared), expected, rtol=1e-5, atol=1e-6)


def test_the_model_without_terms_keeps_the_fused_causal_kernel():
    """No bias, no sink: SDPA with is_causal, whatever the temperature (it scales the queries)."""
    for model in (gpt(RoPE(N_EMBD, N_HEAD)), gpt(RoPE(N_EMBD, N_HEAD), logit_temperature="ssmax")):
        assert isinstance(prepared_for(model, 8).attend, CausalSdpa)
        assert model.attention_path(torch.device("cpu")) == "sdpa"


def test_new_mechanisms_and_families():
    assert mechanism_of(FoX) == mechanism_of(CoPE) == "data-dependent"
    assert mechanism_of(IRoPE) == "rotary"
    assert (FoX.family, CoPE.family, IRoPE.family) == ("fox", "cope", "irope")


@pytest.mark.parametrize("name", ["rope+sink", "fox+sink+logn", "rope+ssmax", "cope"])
def test_terms_train_and_their_weights_get_gradients(name):
    """A few AdamW steps: finite losses, and every sink, gate, table and s gets a gradient."""
    model = TERM_MODELS[name]().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        idx = torch.randint(0, 50, (4, 17))
        loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, 50), idx[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        for pname, param in model.named_parameters():
            if any(part in pname for part in ("sink", "gates", "tables", "head_temperature")):
                assert param.grad is not None and param.grad.abs().sum() > 0, pname
        optimizer.step()
        assert math.isfinite(loss.item())


def test_the_attention_settings_experiment_sweeps_the_rules_beside_the_study():
    """experiment=attention_settings: extrapolation_cpu's runs (seeds, protocols) with the
    temperature rules as a sweep axis, each value one the config check accepts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from poslab.config import CONFIG_DIR
    from poslab.model.temperature import TEMPERATURE_RULES

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=attention_settings"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = cfg.hydra.sweeper.params
    rules = params["model.net.logit_temperature"].split(",")
    assert set(rules) <= set(TEMPERATURE_RULES) and "none" not in rules
    assert params["pos_enc"] == "rope,nope,alibi" and params["seed"] == "0,1,2"
    assert list(cfg.eval.protocols) == ["nonoverlapping", "sliding"]
