"""Small pieces with exact answers: the learning-rate schedule, weight-decay groups, the
step-addressed training batches, non-finite scores, strict results.json."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import UniformModel
from poslab.data.datamodule import RandomizedPositionWindows, StepBatches, Windows
from poslab.encodings import RoPE
from poslab.evaluation.protocols import extrapolation_sweep
from poslab.model import GPT, flops_per_token, matmul_parameters
from poslab.records.results import build_results, comparable_config, config_differences, read_results, write_results
from poslab.training import LitGPT
from poslab.training.optim import warmup_cosine


def test_warmup_cosine_hand_values():
    # warmup 4 of 14 steps, floor 0.1: linear 1/4 .. 4/4, then half a cosine from 1 down to 0.1
    assert [warmup_cosine(s, 4, 14, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, 4, 14, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert warmup_cosine(9, 4, 14, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(14, 4, 14, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(100, 4, 14, 0.1) == pytest.approx(0.1)  # past the end: stays at the floor


def test_weight_decay_applies_to_matrices_only():
    net = {"_target_": "poslab.model.GPT", "vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 16}
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.1}
    lit = LitGPT(net, {"_target_": "poslab.encodings.NoPE"}, optimizer, {"warmup_steps": 2, "min_lr_ratio": 0.1})

    class FakeTrainer:
        max_steps = 10

    lit.trainer = FakeTrainer()  # configure_optimizers reads only max_steps
    adamw = lit.configure_optimizers()["optimizer"]
    decayed, not_decayed = adamw.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    # tied embedding (50x16), per layer qkv (48x16), proj (16x16), fc (64x16), mlp proj (16x64)
    assert sum(p.numel() for p in decayed["params"]) == 50 * 16 + 2 * (48 * 16 + 16 * 16 + 64 * 16 + 16 * 64)
    # LayerNorm weights and biases: 2 per block x 2 blocks + the final one, 16 each, x2 (weight, bias)
    assert sum(p.numel() for p in not_decayed["params"]) == (2 * 2 + 1) * 2 * 16
    assert all(p.dim() == 1 for p in not_decayed["params"])


def test_training_batches_are_a_function_of_the_step():
    fresh = iter(StepBatches(num_windows=10, batch_size=3, seed=7))
    batches = [next(fresh) for _ in range(9)]
    # 3 batches per pass over 10 windows (one window left out per pass), each pass a new order
    for data_pass in range(3):  # indices of pass p are offset by 10 p (the dataset wraps them)
        seen = sum(batches[3 * data_pass : 3 * data_pass + 3], [])
        assert len(seen) == len(set(seen)) == 9 and set(seen) <= set(range(10 * data_pass, 10 * data_pass + 10))
    assert batches[0:3] != batches[3:6]
    resumed = iter(StepBatches(num_windows=10, batch_size=3, seed=7, start_step=4))
    assert [next(resumed) for _ in range(5)] == batches[4:9]  # a resumed run sees the same batches
    other_seed = iter(StepBatches(num_windows=10, batch_size=3, seed=8))
    assert [next(other_seed) for _ in range(3)] != batches[:3]
    assert StepBatches(num_windows=10, batch_size=3, seed=7).batch(5) == batches[5]


def test_randomized_positions_are_sorted_distinct_and_reproducible():
    tokens = np.arange(1000) % 256
    windows = RandomizedPositionWindows(tokens, length=16, max_position=64, seed=3)
    x, y, pos = windows[5]
    assert pos.shape == (16,) and pos.dtype == torch.int64
    assert (pos[1:] > pos[:-1]).all() and 0 <= pos.min() and pos.max() < 64
    assert torch.equal(windows[5][2], pos)  # read again (a resumed run): the same sample
    assert not torch.equal(windows[6][2], pos)
    assert torch.equal(x, Windows(tokens, 16)[5][0]) and torch.equal(windows[5 + len(windows)][0], x)
    # over many windows every position in [0, 64) is used, not only the first 16
    used = torch.cat([windows[i][2] for i in range(50)]).unique()
    assert used.tolist() == list(range(64))


class ExplodingModel(UniformModel):
    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        logits[..., 0] = float("nan")
        return logits


def test_non_finite_scores_are_a_status_not_a_number():
    tokens = np.random.default_rng(0).integers(0, 256, 257).astype(np.uint8)
    (row,) = extrapolation_sweep(ExplodingModel(256), tokens, [64], train_length=64)
    assert row.status == "non_finite" and row.ppl is None and row.loss is None and "nan" in row.reason


def test_results_json_is_strict(tmp_path):
    results = build_results(
        run={"name": "x-s0", "pos_enc": "x", "seed": 0, "job": "train"},
        config={"model": {"lr": 1.0}},
        data=None,
        train={"train_loss": float("nan"), "val_loss": float("inf")},
        extrapolation=[{"eval_length": 8, "status": "non_finite", "ppl": float("nan")}],
        status="diverged",
        error="training diverged",
    )
    path = write_results(results, tmp_path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in results.json"))
    assert strict["train"] == {"train_loss": None, "val_loss": None} and strict["status"] == "diverged"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    path.write_text(text.replace("null", "NaN", 1))
    with pytest.raises(ValueError, match="NaN"):
        read_results(path)


def test_runs_compare_by_config_without_labels_and_seed():
    a = {"seed": 0, "data": {"seed": 0, "context": 64}, "run_group": "a", "paths": {"output_dir": "/x"}}
    b = {"seed": 1, "data": {"seed": 1, "context": 64}, "run_group": "b", "paths": {"output_dir": "/y"}}
    assert comparable_config(a) == comparable_config(b) == {"data.context": 64}
    assert config_differences(a, b) == []
    assert config_differences(a, b, ignore_seed=False) == ["data.seed", "seed"]
    assert config_differences(a, {**b, "data": {"seed": 1, "context": 32}}) == ["data.context"]


def test_a_run_recorded_before_the_attention_settings_is_the_same_experiment():
    """Runs recorded before model.net.sink, logit_temperature and temperature_scale existed had
    them off; model.net.train_context follows data.context. A run recorded after, with them off,
    is a seed of the same experiment; one with a sink is not."""
    before = {"model": {"net": {"n_layer": 4}}, "data": {"context": 128}}
    after = {
        "model": {
            "net": {
                "n_layer": 4,
                "attention": "auto",
                "sink": False,
                "logit_temperature": "none",
                "temperature_scale": None,
                "train_context": 128,
            }
        },
        "data": {"context": 128},
    }
    assert config_differences(before, after) == []
    with_sink = {**after, "model": {"net": {**after["model"]["net"], "sink": True}}}
    assert config_differences(before, with_sink) == ["model.net.sink"]


def test_passkey_settings_are_no_difference_while_passkey_is_off():
    """Scoring with passkey off computes nothing with its trials or lengths: poslab-eval's default
    trials (20) beside a sweep's (10) is the same experiment; with passkey on it is not."""
    off = {"eval": {"passkey": {"enabled": False, "trials": 10}}}
    other_trials = {"eval": {"passkey": {"enabled": False, "trials": 20}}}
    assert config_differences(off, other_trials) == []
    on = {"eval": {"passkey": {"enabled": True, "trials": 10}}}
    assert config_differences(on, {"eval": {"passkey": {"enabled": True, "trials": 20}}}) == ["eval.passkey.trials"]
    assert config_differences(off, on) == ["eval.passkey.enabled", "eval.passkey.trials"]


def test_the_recorded_rope_runs_of_two_studies_are_one_experiment():
    """extrapolation_cpu's rope run (recorded before the tokenizer, token-cache and task keys) and
    extension_variants' retraining of it, which gave the same numbers to every digit: the same
    experiment, so a sweep reuses the older run and a report puts both in one row."""
    import json
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    old = json.loads((experiments / "extrapolation_cpu" / "runs" / "lm_24_rope_s0.json").read_text())
    new = json.loads((experiments / "extension_variants" / "runs" / "train" / "0_rope_s0" / "results.json").read_text())
    assert config_differences(old["config"], new["config"]) == []
    rows = lambda results: [(row["protocol"], row["eval_length"], row["ppl"]) for row in results["extrapolation"]]  # noqa: E731
    assert rows(old) == rows(new)
    byte_pair = {**new["config"], "data": {**new["config"]["data"], "tokenizer": {"_target_": "poslab.data.BPE"}}}
    assert "data.tokenizer._target_" in config_differences(old["config"], byte_pair)


def test_model_flops_per_token_of_gpt_small_by_hand():
    model = GPT(vocab_size=256, n_layer=4, n_head=4, n_embd=128, pos_enc=RoPE(128, 4))
    # per block qkv 3d^2, proj d^2, MLP 8d^2 = 12 d^2; the tied head d x V; attention 12 L T d
    matmul = 4 * 12 * 128**2 + 128 * 256
    assert matmul_parameters(model) == matmul == 819_200
    assert flops_per_token(model, n_layer=4, n_embd=128, context=128) == 6 * matmul + 12 * 4 * 128 * 128
    assert flops_per_token(model, n_layer=4, n_embd=128, context=128) == 5_701_632
