"""Training-free extension methods on a trained checkpoint, through poslab-eval: the remapping
variants beside the scalings, log-n temperature put on at evaluation, and what is refused."""

from pathlib import Path

import pytest

from helpers import compose_config
from poslab.commands.evaluate import evaluate
from poslab.commands.train import train
from poslab.errors import ConfigError

EVAL = ["logger=csv", "eval.lengths_x=[1,2,4]", "eval.num_tokens=256", "eval.batch_tokens=256"]


def trained(train_config, pos_enc: str) -> Path:
    cfg = train_config(f"pos_enc={pos_enc}", "trainer.max_steps=3")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def scored(ckpt: Path, folder: Path, *overrides: str) -> dict:
    return evaluate(compose_config("eval", [f"ckpt_path={ckpt}", *EVAL, *overrides], folder))


def rows_by(results: dict) -> dict:
    return {(row["variant"], row["eval_length"]): row for row in results["extrapolation"]}


def test_remapping_variants_and_log_n_score_a_rope_checkpoint(train_config, tmp_path):
    ckpt = trained(train_config, "rope")
    variants = ["rope", "rerope", "leaky_rerope", "self_extend", "rope_longrope"]
    results = scored(ckpt, tmp_path / "variants", f"eval.variants=[{','.join(variants)}]")
    rows = rows_by(results)
    assert all(rows[(v, length)]["status"] == "ok" for v in variants for length in (16, 32, 64))
    # LongRoPE's short factors are ones: plain RoPE within the context; the remappings' windows
    # (2 and 4 of 16 tokens here) lie inside it, so they differ from RoPE there already
    assert rows[("rope_longrope", 16)]["loss"] == pytest.approx(rows[("rope", 16)]["loss"], rel=1e-6)
    assert rows[("rerope", 16)]["loss"] != rows[("rope", 16)]["loss"]  # (3 steps: attention is near uniform)

    logn = scored(ckpt, tmp_path / "logn", "pos_enc=rope", "eval.logit_temperature=logn")
    logn_rows = rows_by(logn)
    # log-n is 1 for every row within the training context, and sharpens rows past it
    assert logn_rows[("rope", 16)]["loss"] == pytest.approx(rows[("rope", 16)]["loss"], rel=1e-6)
    assert logn_rows[("rope", 64)]["loss"] != rows[("rope", 64)]["loss"]
    # what was scored is in the results: the temperature put on, and the rule asked for
    assert logn["config"]["model"]["net"]["logit_temperature"] == "logn"
    assert logn["config"]["eval"]["logit_temperature"] == "logn"

    # windows with sinks, on any variant and with the temperature
    for method in ("streaming_llm", "lm_infinite"):
        windowed = scored(
            ckpt,
            tmp_path / method,
            "eval.variants=[rope,rope_yarn]",
            "eval.window.local=8",
            "eval.window.sinks=2",
            f"eval.window.method={method}",
        )
        windowed_rows = rows_by(windowed)
        assert all(row["status"] == "ok" for row in windowed["extrapolation"])
        assert windowed_rows[("rope", 64)]["loss"] != rows[("rope", 64)]["loss"]
        assert windowed["config"]["eval"]["window"] == {"local": 8, "sinks": 2, "method": method}

    combined = scored(ckpt, tmp_path / "both", "eval.variants=[rerope,self_extend]", "eval.logit_temperature=logn")
    assert {row["variant"] for row in combined["extrapolation"]} == {"rerope", "self_extend"}
    assert combined["config"]["model"]["net"]["logit_temperature"] == "logn"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.logit_temperature=ssmax"], r"eval.logit_temperature=ssmax: allowed: null \(as trained\), none, logn"),
        (["eval.logit_temperature=log_n"], "eval.logit_temperature=log_n: allowed"),
        (["eval.temperature_scale=0.2"], "eval.temperature_scale goes with eval.logit_temperature=llama4"),
        (["eval.window.local=8", "eval.window.method=sliding"], "eval.window.method=sliding: allowed: streaming_llm"),
        (["eval.window.local=0"], "eval.window.local must be a whole number >= 1"),
        (["pos_enc=rerope"], "pos_enc=rerope: the checkpoint was trained with alibi .alibi family.*allowed: alibi"),
    ],
)
def test_what_cannot_be_scored_is_refused_in_one_line(train_config, tmp_path, overrides, message):
    ckpt = trained(train_config, "alibi")
    with pytest.raises(ConfigError, match=message) as refusal:
        scored(ckpt, tmp_path / "eval", *overrides)
    assert "\n" not in str(refusal.value)
    assert not (tmp_path / "eval" / "results.json").exists()


def test_training_refuses_an_evaluation_temperature_and_window(train_config):
    with pytest.raises(ConfigError, match="eval.logit_temperature is for poslab-eval"):
        train(train_config("pos_enc=rope", "eval.logit_temperature=logn"))
    with pytest.raises(ConfigError, match="eval.window is for poslab-eval"):
        train(train_config("pos_enc=rope", "eval.window.local=8"))


def test_a_window_refuses_absolute_positions(train_config, tmp_path):
    ckpt = trained(train_config, "sinusoidal")
    with pytest.raises(ConfigError, match=r"eval.window cannot score pos_enc=\w+: it adds positions"):
        scored(ckpt, tmp_path / "eval", "eval.window.local=8")
