"""Evaluation protocols: sliding windows, per-position loss, batches that fit, their settings,
and a training run scored under both protocols with passkey retrieval."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import UniformModel, compose_config
from poslab.commands.evaluate import evaluate
from poslab.commands.train import train
from poslab.config.validate import check_eval_config, check_passkey_mix, eval_protocols
from poslab.encodings import ALiBi, RoPE
from poslab.errors import ConfigError
from poslab.evaluation.protocols import (
    extrapolation_sweep,
    per_position_bins,
    window_ends,
)
from poslab.evaluation.summaries import WITHIN_TOLERANCE, longest_within, ratios_to_in_length
from poslab.model import GPT
from poslab.records.results import read_results

TOKENS = np.random.default_rng(0).integers(0, 256, 1025).astype(np.uint8)


def scored_targets(num_targets: int, length: int, stride: int) -> list[int]:
    """The targets each window scores, in the order the sweep scores them."""
    ends = window_ends(num_targets, length, stride)
    new = np.diff(ends, prepend=0)
    return [t for end, n in zip(ends, new, strict=True) for t in range(end - n, end)]


@pytest.mark.parametrize(
    ("num_targets", "length", "stride"), [(1024, 64, 64), (1024, 64, 1), (1024, 64, 24), (1000, 96, 96), (97, 96, 5)]
)
def test_every_target_is_scored_exactly_once(num_targets, length, stride):
    assert scored_targets(num_targets, length, stride) == list(range(num_targets))


def tiny_gpt(pos_enc_class=RoPE) -> GPT:
    torch.manual_seed(0)
    pos_enc = RoPE(16, 2) if pos_enc_class is RoPE else ALiBi(2)
    return GPT(vocab_size=256, n_layer=2, n_head=2, n_embd=16, pos_enc=pos_enc).eval()


@pytest.mark.parametrize("pos_enc_class", [RoPE, ALiBi])
def test_sliding_window_losses_equal_a_forward_per_target(pos_enc_class):
    """Target j is predicted from tokens[start:j+1], start the first token of the window scoring
    it: the first window from 0, later ones length - stride tokens or more before j."""
    model, tokens, length, stride = tiny_gpt(pos_enc_class), TOKENS[:97], 32, 8
    (row,) = extrapolation_sweep(model, tokens, [length], train_length=32, protocols=["sliding"], stride=stride)
    ends = window_ends(96, length, stride)
    new = np.diff(ends, prepend=0)
    total, contexts = 0.0, []
    with torch.no_grad():
        for end, n in zip(ends, new, strict=True):
            for j in range(end - n, end):
                context = torch.from_numpy(tokens[end - length : j + 1].astype(np.int64))[None]
                logits = model(context)[0, -1]
                total += F.cross_entropy(logits[None], torch.tensor([int(tokens[j + 1])])).item()
                contexts.append(j + 1 - (end - length))
    assert row.tokens_scored == 96 and row.stride == stride
    assert row.loss == pytest.approx(total / 96, rel=1e-5)
    assert min(contexts[length:]) == length - stride + 1  # after the first window: at least length - stride before


def test_a_stride_equal_to_the_length_is_nonoverlapping():
    model = tiny_gpt()
    rows = extrapolation_sweep(model, TOKENS, [64, 256], 64, protocols=["nonoverlapping", "sliding"], stride=64)
    by = {(r.protocol, r.eval_length): r for r in rows}
    assert [r.protocol for r in rows] == ["nonoverlapping"] * 2 + ["sliding"] * 2
    assert by["sliding", 64].loss == by["nonoverlapping", 64].loss
    assert by["sliding", 64].per_position == by["nonoverlapping", 64].per_position
    assert by["nonoverlapping", 256].stride == 256 and by["sliding", 256].stride == 64
    assert by["sliding", 256].loss != by["nonoverlapping", 256].loss  # more context per target


def test_a_length_that_does_not_divide_the_stream_still_scores_every_target_once():
    rows = extrapolation_sweep(UniformModel(256), TOKENS, [96, 1000], train_length=96)
    assert [r.tokens_scored for r in rows] == [1024, 1024]


def test_bins_are_log_spaced_up_to_the_length():
    assert per_position_bins(128) == ([0, 1, 2, 4, 8, 16, 32, 64], [1, 2, 4, 8, 16, 32, 64, 128])
    assert per_position_bins(192) == ([0, 1, 2, 4, 8, 16, 32, 64, 128], [1, 2, 4, 8, 16, 32, 64, 128, 192])
    assert per_position_bins(1) == ([0], [1])


@pytest.mark.parametrize(("protocol", "stride"), [("nonoverlapping", None), ("sliding", 16)])
def test_per_position_bins_sum_back_to_the_row(protocol, stride):
    rows = extrapolation_sweep(tiny_gpt(), TOKENS, [64, 128], 64, protocols=[protocol], stride=stride)
    for row in rows:
        bins = row.per_position
        assert bins["bin_end"][-1] == row.eval_length and sum(bins["tokens"]) == row.tokens_scored
        weighted = sum(loss * n for loss, n in zip(bins["mean_loss"], bins["tokens"], strict=True) if n)
        assert weighted / row.tokens_scored == pytest.approx(row.loss, rel=1e-12)


def test_sliding_scores_early_positions_in_the_first_window_only():
    (row,) = extrapolation_sweep(UniformModel(256), TOKENS, [64], 64, protocols=["sliding"], stride=16)
    # first window: 1, 1, 2, 4, 8, 16, 32 tokens per bin; then (1024 - 64) / 16 windows score positions 48..63
    assert row.per_position["tokens"] == [1, 1, 2, 4, 8, 16, 32 + 960]
    assert row.per_position["mean_loss"][0] == pytest.approx(math.log(256))


def test_a_stride_longer_than_a_length_is_refused():
    """By the sweep itself, before any length is scored (the settings check says it first: eval.stride)."""
    with pytest.raises(ValueError, match="stride 128 must be between 1 and the eval length 64"):
        extrapolation_sweep(UniformModel(256), TOKENS, [64, 256], 64, protocols=["sliding"], stride=128)


class OutOfMemoryAbove(UniformModel):
    """Raises out-of-memory when a batch holds more than max_tokens tokens, as CUDA or the CPU
    allocator would, and remembers the batch sizes that went through."""

    def __init__(self, max_tokens: int, cpu: bool = False):
        super().__init__(256)
        self.max_tokens, self.cpu, self.batches = max_tokens, cpu, []

    def forward(self, idx):
        if idx.numel() > self.max_tokens:
            if self.cpu:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        self.batches.append(tuple(idx.shape))
        return super().forward(idx)


@pytest.mark.parametrize("cpu", [False, True])
def test_the_batch_halves_until_it_fits_and_a_length_that_never_fits_is_a_row(cpu):
    model = OutOfMemoryAbove(max_tokens=300, cpu=cpu)
    rows = extrapolation_sweep(
        model, TOKENS, [64, 512, 128], 64, protocols=["nonoverlapping", "sliding"], stride=32, batch_tokens=1024
    )
    by = {(r.protocol, r.eval_length): r for r in rows}
    # 1024 tokens per batch: 16 windows of 64 -> 8 -> 4 (256 tokens fit); 8 windows of 128 -> 4 -> 2
    assert max(b for b, length in model.batches if length == 64) == 4
    assert max(b for b, length in model.batches if length == 128) == 2
    for key in [("nonoverlapping", 64), ("nonoverlapping", 128), ("sliding", 64), ("sliding", 128)]:
        assert by[key].status == "ok" and by[key].ppl == pytest.approx(256.0) and by[key].tokens_scored == 1024
    for protocol in ("nonoverlapping", "sliding"):
        row = by[protocol, 512]
        assert row.status == "out_of_memory" and row.ppl is None and "one window at a time" in row.reason


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    class Broken(UniformModel):
        def forward(self, idx):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        extrapolation_sweep(Broken(256), TOKENS, [64], 64)


def test_longest_length_within_ten_percent():
    """The one rule behind wandb's extrap/max_len_within_10pct and the report's summary line."""
    ppl = {128: 8.0, 256: 8.7, 512: 8.9, 1024: 12.0, 2048: None}  # 2048: unsupported

    def longest(perplexities):
        return longest_within(ratios_to_in_length(perplexities, 128), 128, 0.10)

    assert WITHIN_TOLERANCE == 0.10
    assert longest(ppl) == 256  # the bound is 8.8
    assert longest({**ppl, 512: 8.79}) == 512
    assert longest({**ppl, 512: 8.79, 1024: 7.5}) == 1024  # lower than in length (more context) is within too
    assert longest({k: v for k, v in ppl.items() if k != 128}) is None  # no in-length row
    assert longest({**ppl, 128: None}) is None  # an in-length row without a value
    assert longest({**ppl, 256: 9.0, 512: 8.79, 1024: 7.5}) == 128  # fails at 2x: 4x and 8x after it do not count


# --- settings --------------------------------------------------------------------------------------

EVAL = {
    "lengths_x": [1, 2, 4],
    "lengths": None,
    "protocols": ["nonoverlapping"],
    "protocol": None,
    "stride": 16,
    "num_tokens": 1024,
    "batch_tokens": 1024,
    "variants": None,
    "passkey": {
        "enabled": True,
        "lengths_x": [1, 2],
        "depths": [0.0, 0.5, 1.0],
        "trials": 10,
        "seed": 0,
        "threshold": 0.2,
    },
}


def eval_config(**changes):
    cfg = OmegaConf.create(EVAL)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_protocol_settings():
    assert eval_protocols(eval_config()) == ["nonoverlapping"]
    assert eval_protocols(eval_config(protocols=["nonoverlapping", "sliding"])) == ["nonoverlapping", "sliding"]
    assert eval_protocols(eval_config(protocol="sliding")) == ["sliding"]  # the older single key
    assert check_eval_config(eval_config(protocols=["sliding"]), context=32).lengths == (32, 64, 128)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocols": ["strided"]}, "eval.protocols: strided unknown; allowed: nonoverlapping, sliding"),
        ({"protocol": "strided"}, "eval.protocol=strided: allowed: nonoverlapping, sliding"),
        ({"protocols": []}, "eval.protocols must be a non-empty list"),
        ({"protocols": ["sliding", "sliding"]}, "eval.protocols lists a protocol twice"),
        (
            {"protocol": "sliding", "protocols": ["sliding", "nonoverlapping"]},
            "eval.protocol=sliding and eval.protocols=['sliding', 'nonoverlapping'] disagree",
        ),
        ({"protocols": ["sliding"], "stride": 64}, "eval.stride=64 is longer than the shortest eval length 32"),
        ({"protocols": ["sliding"], "stride": 0}, "eval.stride must be a positive integer with the sliding protocol"),
        ({"passkey.depths": [0.5, 1.5]}, "eval.passkey.depths must be a non-empty list of fractions in [0, 1]"),
        ({"passkey.trials": 0}, "eval.passkey.trials must be an integer >= 1, got 0"),
        ({"passkey.threshold": 2}, "eval.passkey.threshold must be an accuracy in [0, 1], got 2"),
        ({"passkey.enabled": "yes"}, "eval.passkey.enabled must be true or false"),
        (
            {"passkey.lengths_x": [0.5]},
            "eval.passkey.lengths_x: 0.5 x data.context=32 must be a whole number of at least 32",
        ),
        ({"passkey.lengths_x": [64]}, "the longest passkey length 2048 is more than the 1024 held-out tokens"),
        ({"variants": ["rope", "rope_pi"]}, "eval.passkey.enabled=true scores one encoding per run"),
    ],
)
def test_bad_eval_settings_are_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as error:
        check_eval_config(eval_config(**changes), context=32)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_passkey_settings_are_not_checked_when_off():
    check_eval_config(eval_config(**{"passkey.enabled": False, "passkey.depths": [7]}), context=32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"passkey_mix": 1.5, "context": 64}, "data.passkey_mix must be a fraction of training windows in [0, 1]"),
        ({"passkey_mix": 0.5, "context": 16}, "data.passkey_mix=0.5 needs data.context >= 32"),
    ],
)
def test_bad_passkey_mix(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_passkey_mix(OmegaConf.create(data))


def test_a_run_scores_both_protocols_and_passkey(train_config):
    cfg = train_config(
        "pos_enc=rope",
        "debug=fast_dev_run",
        "data.context=32",
        "data.passkey_mix=0.5",
        "eval.lengths_x=[1,2]",
        "eval.protocols=[nonoverlapping,sliding]",
        "eval.stride=16",
        "eval.passkey.enabled=true",
        "eval.passkey.lengths_x=[1,2]",
        "eval.passkey.depths=[0,1]",
        "eval.passkey.trials=10",
    )
    results = train(cfg)
    rows = results["extrapolation"]
    assert [(r["protocol"], r["eval_length"], r["stride"]) for r in rows] == [
        ("nonoverlapping", 32, 32),
        ("nonoverlapping", 64, 64),
        ("sliding", 32, 16),
        ("sliding", 64, 16),
    ]
    assert len({r["tokens_scored"] for r in rows}) == 1
    assert all(r["per_position"]["bin_end"][-1] == r["eval_length"] for r in rows)
    passkey = results["passkey"]
    assert passkey["lengths"] == [32, 64] and passkey["depths"] == [0, 1] and passkey["trials"] == 10
    assert passkey["status"] == [["ok", "ok"], ["ok", "ok"]] and passkey["trained_with_mix"] == 0.5
    assert all(0.0 <= a <= 1.0 for cells in passkey["accuracy"] for a in cells)
    assert passkey["threshold"] == 0.2 and passkey["variant"] == "rope" and passkey["train_context"] == 32


def test_poslab_eval_scores_passkey_under_the_asked_encoding(train_config, tmp_path):
    cfg = train_config("pos_enc=rope", "trainer.max_steps=2", "data.context=32", "eval.lengths_x=[1,2]")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    overrides = [
        f"ckpt_path={ckpt}",
        "logger=csv",
        "eval.lengths_x=[1,2]",
        "eval.num_tokens=256",
        "eval.batch_tokens=256",
        "eval.protocol=sliding",  # the older single key
        "eval.stride=8",
        "eval.passkey.enabled=true",
        "eval.passkey.lengths_x=[1,2]",
        "eval.passkey.trials=10",
    ]
    scored = evaluate(compose_config("eval", [*overrides, "pos_enc=rope_pi"], tmp_path / "eval"))
    assert [(r["protocol"], r["stride"]) for r in scored["extrapolation"]] == [("sliding", 8), ("sliding", 8)]
    passkey = scored["passkey"]
    assert passkey["variant"] == "rope_pi" and passkey["lengths"] == [32, 64] and passkey["trained_with_mix"] == 0.0
    assert read_results(Path(scored["run"]["output_dir"]) / "results.json")["passkey"] == passkey
    with pytest.raises(ConfigError, match="eval.passkey.enabled=true scores one encoding per run"):
        evaluate(compose_config("eval", [*overrides, "eval.variants=[rope,rope_pi]"], tmp_path / "eval2"))
