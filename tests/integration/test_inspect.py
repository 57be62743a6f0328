"""poslab-inspect: the geometry numbers against their closed forms, attention statistics on
hand-built patterns, attention recomputed exactly as the model computes it, and the console
script on an encoding and on a checkpoint."""

import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from helpers import ENCODINGS, REPOSITORY, compose_config, run_console, strict_json, train_tiny_run
from poslab import cli
from poslab.commands.inspect import FILENAME, SUMMARY_FILENAME
from poslab.diagnostics import attention, geometry
from poslab.encodings import ALiBi, RoPE, RoPEPositionInterpolation, Sinusoidal, alibi_slopes

# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [10000.0, 500000.0])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_critical_dimension_counted_from_wavelengths_equals_the_closed_form(head_dim, base):
    rope = RoPE(n_embd=4 * head_dim, n_head=4, base=base)
    for context in range(128, 1025):
        inv_freq, _ = rope.frequencies(context)
        counted = 2 * int(geometry.turning_pairs(inv_freq, context).sum())
        closed_form = 2 * math.ceil((head_dim / 2) * math.log(context / (2 * math.pi)) / math.log(base))
        assert counted == closed_form == geometry.critical_dimension_closed_form(head_dim, base, context), context
    # the numbers the paper's setting gives: d = 64 (16 heads of 1024), base 10^4, T = 1024 -> 36
    assert geometry.critical_dimension_closed_form(64, 10000.0, 1024) == 36


def test_sinusoidal_dot_products_depend_only_on_the_offset():
    encoding = Sinusoidal(n_embd=64)
    positions = torch.arange(300)
    dots = geometry.sinusoid_dot_products(encoding, positions)
    shifted = geometry.sinusoid_dot_products(encoding, positions + 1000)
    assert torch.allclose(dots, shifted, atol=2e-4)  # the same at positions 1000.. as at 0..
    theta = encoding.inv_freq.double()
    for offset in (0, 1, 7, 128, 299):
        along = dots.diagonal(-offset)
        assert float(along.max() - along.min()) < 2e-4
        assert float(along.mean()) == pytest.approx(float(torch.cos(offset * theta).mean()), abs=1e-4)
    curve = geometry.sinusoid_similarity_by_distance(encoding, torch.arange(300))
    assert torch.allclose(curve, dots[:, 0], atol=1e-5)
    assert geometry.sinusoid_relative_map_error(encoding, 128, torch.arange(1000)) < 1e-4


def test_rotary_scores_and_bound():
    rope = RoPE(n_embd=128, n_head=4)
    scores = geometry.fixed_query_key_scores(rope, torch.arange(200))
    for offset in (0, 1, 50, 199):  # a RoPE score depends on the offset alone
        along = scores.diagonal(-offset)
        assert float(along.max() - along.min()) < 1e-4
        assert float(along.mean()) == pytest.approx(float(torch.cos(offset * rope.inv_freq.double()).mean()), abs=1e-4)
    bound = geometry.rotary_decay_bound(rope.inv_freq, torch.arange(3000))
    assert float(bound[0]) == pytest.approx((16 + 1) / 2)  # S_j = j at distance 0: mean of 1..d/2
    assert float(bound[2999]) < 0.5 * float(bound[1])  # RoFormer's long-term decay


def test_position_interpolation_counts_in_halves():
    pi = RoPEPositionInterpolation(n_embd=128, n_head=4, train_length=10)
    landed = geometry.effective_positions(pi, 20)  # count to 20 without going past 10
    assert torch.allclose(landed[:, 0], torch.arange(20, dtype=torch.float64) / 2)
    assert torch.allclose(landed[:, -1], landed[:, 0])
    assert float(landed.max()) == 9.5


def test_alibi_reach_is_the_closed_form():
    alibi = ALiBi(n_head=8)
    curves = geometry.bias_by_distance(alibi, 4096)
    reach = geometry.bias_reach(curves, -4.6)
    assert reach == geometry.alibi_reach_closed_form(alibi_slopes(8), -4.6)
    assert reach[0] == math.floor(4.6 / 2**-1) + 1 == 10
    assert reach[-1] == math.floor(4.6 * 2**8) + 1 == 1178


# --- attention statistics on hand-built patterns ----------------------------------------------


def uniform_causal(length: int) -> torch.Tensor:
    return torch.tril(torch.ones(length, length, dtype=torch.float64)) / torch.arange(1, length + 1).unsqueeze(-1)


def test_uniform_causal_attention():
    length, context = 50, 10
    entropy, distance, beyond = attention.row_statistics(uniform_causal(length), torch.arange(length), context)
    i = torch.arange(length, dtype=torch.float64)
    assert torch.allclose(entropy, torch.log(i + 1))
    assert torch.allclose(distance, i / 2)
    # keys at distance >= context: i - context + 1 of the i + 1 keys
    assert torch.allclose(beyond, ((i + 1 - context) / (i + 1)).clamp(min=0))
    reference = attention.uniform_reference(length, context)
    assert reference["entropy"] == pytest.approx(float(torch.log(i + 1).mean()))
    assert reference["mean_distance"] == pytest.approx((length - 1) / 4)
    assert reference["share_beyond_context"] == pytest.approx(float(beyond[context:].mean()))


def test_all_mass_on_the_previous_token():
    length = 30
    probs = torch.zeros(length, length, dtype=torch.float64)
    probs[0, 0] = 1.0
    probs[torch.arange(1, length), torch.arange(length - 1)] = 1.0
    entropy, distance, beyond = attention.row_statistics(probs, torch.arange(length), 8)
    assert torch.equal(entropy, torch.zeros(length))
    assert torch.equal(distance[1:], torch.ones(length - 1))
    assert torch.equal(beyond, torch.zeros(length))


def test_share_beyond_the_context_on_a_hand_pattern():
    # 0.3 on the first token, 0.7 on itself: the first token is beyond a context of 8 from row 8 on
    length, context = 20, 8
    probs = torch.zeros(length, length, dtype=torch.float64)
    probs[:, 0] += 0.3
    probs[torch.arange(length), torch.arange(length)] += 0.7
    entropy, distance, beyond = attention.row_statistics(probs, torch.arange(length), context)
    i = torch.arange(length, dtype=torch.float64)
    assert torch.allclose(beyond, torch.where(i >= context, 0.3, 0.0).double())
    assert torch.allclose(distance, 0.3 * i)
    expected = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert torch.allclose(entropy[1:], torch.full((length - 1,), expected, dtype=torch.float64))


# --- attention recomputed inside the model ----------------------------------------------------


def tiny_model(pos_enc: str, tmp_path: Path):
    overrides = [
        f"pos_enc={pos_enc}",
        "model.net.n_layer=2",
        "model.net.n_head=4",
        "model.net.n_embd=64",
        "data.context=64",
        "logger=csv",
        *(["pos_enc.nope_every=2"] if pos_enc == "irope" else []),  # 2 layers: the second has no RoPE
    ]
    cfg = compose_config("inspect", overrides, tmp_path)
    torch.manual_seed(0)
    model = instantiate(cfg.model.net, pos_enc=instantiate(cfg.pos_enc)).eval()
    with torch.no_grad():  # larger logits than at init, so attention is far from uniform
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)
    return model


@pytest.mark.parametrize("pos_enc", ENCODINGS)
def test_recomputed_attention_equals_the_models(pos_enc, tmp_path):
    model = tiny_model(pos_enc, tmp_path)
    captured = []

    def keep(attn, args, output):
        captured.append((attn, args, output))

    handles = [block.attn.register_forward_hook(keep) for block in model.blocks]
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        model(tokens)
        for handle in handles:
            handle.remove()
        assert len(captured) == 2
        for attn, (x, prepared), output in captured:
            # a small budget exercises the block-by-block path (3 rows of 40 keys at a time)
            recomputed = attention.recomputed_attention_output(attn, x, prepared, budget=960)
            assert torch.allclose(recomputed, output, atol=1e-5, rtol=1e-4), pos_enc


def test_the_probe_sees_what_the_recomputation_sees(tmp_path):
    model = tiny_model("alibi", tmp_path)
    tokens = np.random.default_rng(0).integers(0, 256, size=48 + 1)  # one window of 48
    row = attention.attention_at_length(model, tokens, 48, train_context=16, device=torch.device("cpu"))
    assert row["status"] == "ok" and row["windows"] == 1
    captured = []
    handle = model.blocks[1].attn.register_forward_pre_hook(lambda attn, args: captured.append(args))
    with torch.no_grad():
        model(torch.from_numpy(tokens[:48]).long().unsqueeze(0))
        handle.remove()
        x, prepared = captured[0]
        ((_, probs, _),) = list(attention.attention_probabilities(model.blocks[1].attn, x, prepared))
    entropy, distance, beyond = attention.row_statistics(probs[0].double(), torch.arange(48), 16)
    by_hand = {
        "entropy": entropy.mean(-1),
        "mean_distance": distance.mean(-1),
        "share_beyond_context": beyond[:, 16:].mean(-1),  # over the queries with keys that far back
    }
    for statistic, values in by_hand.items():
        probed = [head[statistic] for head in row["layers"][1]["heads"]]
        assert np.allclose(probed, values.numpy(), rtol=1e-5), statistic
    assert all(0 < head["entropy"] < math.log(48) for head in row["layers"][1]["heads"])
    learned = attention.attention_at_length(tiny_model("learned", tmp_path), tokens, 96, 16, torch.device("cpu"))
    assert learned["status"] == "unsupported" and "max_length=64" in learned["reason"]


def test_the_sinks_share_is_reported_beside_the_statistics():
    """A sink far above every logit takes nearly all the mass, one at -inf none of it."""
    from poslab.model import GPT

    tokens = np.random.default_rng(0).integers(0, 256, size=2 * 24 + 1)
    for sink, expected in ((40.0, 1.0), (float("-inf"), 0.0)):
        torch.manual_seed(0)
        model = GPT(256, 2, 2, 32, sink=True).eval()
        with torch.no_grad():
            for block in model.blocks:
                block.attn.sink.fill_(sink)
        row = attention.attention_at_length(model, tokens, 24, train_context=16, device=torch.device("cpu"))
        shares = [head["sink_share"] for layer in row["layers"] for head in layer["heads"]]
        assert np.allclose(shares, expected, atol=1e-6), (sink, shares)
    plain = attention.attention_at_length(GPT(256, 1, 2, 32).eval(), tokens, 24, 16, torch.device("cpu"))
    assert "sink_share" not in plain["layers"][0]["heads"][0]


# --- the console script -----------------------------------------------------------------------


def only_run_folder(log_dir: Path) -> Path:
    (folder,) = (log_dir / "inspect").iterdir()
    return folder


def test_inspect_an_encoding(monkeypatch, tmp_path):
    args = ["pos_enc=alibi", "logger=csv", f"paths.log_dir={tmp_path}", "distance_x=8"]
    assert run_console(monkeypatch, cli.inspect_main, *args) == 0
    folder = only_run_folder(tmp_path)
    assert folder.name.split("_")[2] == "alibi"
    results = strict_json(folder / FILENAME)
    alibi = results["encodings"]["alibi"]
    assert alibi["family"] == "alibi" and alibi["reach_closed_form"] == [19, 74, 295, 1178]
    assert alibi["reach"] == [19, 74, 295, None]  # the last head sees past 8 x 128 tokens
    assert results["attention"] is None and (folder / "alibi_bias.png").stat().st_size > 10_000
    assert "head 0: 19, head 1: 74, head 2: 295, head 3: > 1024 tokens" in (folder / SUMMARY_FILENAME).read_text()


def test_inspect_rope_draws_the_whole_family(monkeypatch, tmp_path):
    args = ["pos_enc=rope", "logger=csv", f"paths.log_dir={tmp_path}", "model.net.n_head=2", "data.context=256"]
    assert run_console(monkeypatch, cli.inspect_main, *args) == 0
    folder = only_run_folder(tmp_path)
    results = strict_json(folder / FILENAME)
    rope = results["encodings"]["rope"]
    # head size 64, context 256: 2 ceil(32 log_10000(256 / 2pi)) = 2 ceil(12.87) = 26
    assert rope["critical_dimension"] == {"from_wavelengths": 26, "closed_form": 26}
    members = results["rotary_members"]
    assert {"rope_pi", "rope_ntk", "rope_yarn", "rope_llama3", "rope_partial"} <= set(members)
    assert members["rope_pi"]["last_position_lands_at"]["4x"] == {"fastest_pair": 255.75, "slowest_pair": 255.75}
    assert members["rope_pi"]["frequency_ratio"]["16x"] == pytest.approx([1 / 16] * 32)
    for figure in ("rope_wavelengths", "rope_similarity", "rotary_frequency_moves", "rotary_interpolated_positions"):
        assert (folder / f"{figure}.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pos_enc=rop"], "pos_enc=rop: unknown; available: "),
        (["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt: no such file"),
        ([], "give pos_enc=NAME to inspect an encoding (one of: alibi, "),
        (["pos_enc=rope", "variant=rope_pi"], "variant= applies to a checkpoint (ckpt_path=...)"),
        (["pos_enc=rope", "return_tolerance=2"], "return_tolerance must be a fraction between 0 and 1"),
        (["pos_enc=alibi", "bias_threshold=3"], "bias_threshold must be a negative number of logits"),
        (["pos_enc=rope", "lengths_x=[0.5]"], "lengths_x: every multiple must be a number >= 1, got 0.5"),
        (["pos_enc=rope", "model.net.n_embd=30", "model.net.n_head=2"], "pos_enc: rotary encodings need an even head"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(monkeypatch, capfd, tmp_path, args, message):
    assert run_console(monkeypatch, cli.inspect_main, *args, "logger=csv", f"paths.log_dir={tmp_path}") == 2
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if message in line]
    assert len(lines) == 1, out + err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def rope_checkpoint(tmp_path_factory):
    """A tiny RoPE run (context 16), in a run folder as poslab-train leaves it."""
    return train_tiny_run(tmp_path_factory.mktemp("inspect_ckpt"), "2026-01-01_00-00-00_rope_abc123", "seed=0")


def test_inspect_a_checkpoint_under_its_variants(monkeypatch, tmp_path, rope_checkpoint):
    args = [
        f"ckpt_path={rope_checkpoint}",
        "variant=[rope,rope_pi,rope_yarn]",
        "lengths_x=[1,2,4]",
        "num_tokens=192",
        f"paths.log_dir={tmp_path}",
    ]  # the wandb logger, disabled by the tests' WANDB_MODE
    assert run_console(monkeypatch, cli.inspect_main, *args) == 0
    folder = only_run_folder(tmp_path)
    assert "2026-01-01_00-00-00_rope_abc123_rope+rope_pi+rope_yarn" in folder.name
    results = strict_json(folder / FILENAME)
    assert results["train_context"] == 16 and results["run"]["trained_as"] == "rope"
    rows = results["attention"]
    assert set(rows) == {"rope", "rope_pi", "rope_yarn"}
    for variant_rows in rows.values():
        assert [r["eval_length"] for r in variant_rows] == [16, 32, 64]
        assert [r["windows"] for r in variant_rows] == [12, 6, 3]  # the same 192 tokens at every length
        for row in variant_rows:
            assert len(row["layers"]) == 1 and len(row["layers"][0]["heads"]) == 2
            for head in row["layers"][0]["heads"]:
                assert 0 <= head["entropy"] <= math.log(row["eval_length"])
                assert 0 <= head["mean_distance"] <= row["eval_length"] - 1
                if row["length_ratio"] == 1:
                    assert head["share_beyond_context"] is None  # no key is that far back
                else:
                    assert 0 <= head["share_beyond_context"] <= 1
    # within the training context PI and YaRN are RoPE: the same attention, number for number
    assert rows["rope_pi"][0]["layers"] == rows["rope"][0]["layers"] == rows["rope_yarn"][0]["layers"]
    assert rows["rope_pi"][2]["layers"] != rows["rope"][2]["layers"]
    for figure in ("rope_attention", "rope_pi_attention", "attention_by_variant", "rope_pi_similarity"):
        assert (folder / f"{figure}.png").is_file()


def test_inspect_a_fox_checkpoint_shows_each_heads_decay_and_reach(monkeypatch, tmp_path):
    """Like ALiBi's slopes: each head's mean forget gate on held-out text, -log of it as the decay
    per token, and the reach where the mean bias falls below the threshold."""
    checkpoint = train_tiny_run(tmp_path / "train", "2026-01-01_00-00-00_fox_abc123", "pos_enc=fox")
    args = [f"ckpt_path={checkpoint}", "lengths_x=[1,2]", "num_tokens=128", "logger=csv", f"paths.log_dir={tmp_path}"]
    assert run_console(monkeypatch, cli.inspect_main, *args) == 0
    folder = only_run_folder(tmp_path)
    results = strict_json(folder / FILENAME)
    gates = results["encodings"]["fox"]["forget_gates"]
    mean_gate, reach = np.array(gates["mean_gate"]), np.array(gates["reach"])
    assert mean_gate.shape == reach.shape == (1, 2)  # layers x heads of the tiny model
    assert ((0 < mean_gate) & (mean_gate < 1)).all()
    # the reach is where distance x mean log f first falls below the threshold (as ALiBi's)
    np.testing.assert_allclose(reach, np.floor(gates["threshold"] / np.log(mean_gate)) + 1)
    np.testing.assert_allclose(gates["decay_per_token"], -np.log(mean_gate), rtol=1e-6)
    assert (folder / "fox_forget_gates.png").stat().st_size > 5_000
    summary = (folder / SUMMARY_FILENAME).read_text()
    assert "fox layer 0: head 0: gate " in summary and results["attention"]["fox"][0]["status"] == "ok"


def test_a_checkpoint_is_inspected_within_its_family(monkeypatch, capfd, tmp_path, rope_checkpoint):
    args = [f"ckpt_path={rope_checkpoint}", "variant=alibi", "logger=csv", f"paths.log_dir={tmp_path}"]
    assert run_console(monkeypatch, cli.inspect_main, *args) == 2
    out, err = capfd.readouterr()
    assert "variant=alibi: the checkpoint was trained with rope (rotary family)" in out + err
    assert not any(tmp_path.iterdir())


def test_the_readme_diagnostics_commands_make_the_figures_they_show(monkeypatch, tmp_path):
    """Each `poslab-inspect pos_enc=...` command of the README's diagnostics section, as written,
    writes the figure linked next to it; every figure linked there is in experiments/diagnostics."""
    readme = REPOSITORY / "README.md"
    section = readme.read_text().split("## Diagnostics: why an encoding extrapolates or breaks")[1].split("\n## ")[0]
    for link in re.findall(r"\]\((experiments/diagnostics/[^)]+\.png)\)", section):
        assert (readme.parent / link).is_file(), link
    pairs = re.findall(r"`(poslab-inspect pos_enc=[^`]+)` &rarr; \[([\w.]+\.png)\]", section)
    assert len(pairs) == 4
    for command, figure in pairs:
        log_dir = tmp_path / figure
        argv = [*shlex.split(command)[1:], "logger=csv", f"paths.log_dir={log_dir}"]
        assert run_console(monkeypatch, cli.inspect_main, *argv) == 0, command
        assert (only_run_folder(log_dir) / figure).is_file(), command
