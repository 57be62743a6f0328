"""The extrapolation sweep's arithmetic and its protocol; intervals over seeds."""

import math

import numpy as np
import pytest
import torch

from helpers import UniformModel
from poslab.data.datamodule import Windows
from poslab.encodings import Learned
from poslab.evaluation.protocols import extrapolation_sweep
from poslab.model import GPT
from poslab.report.intervals import t_interval, t_quantile


def test_uniform_logits_give_vocab_size_perplexity():
    tokens = np.random.default_rng(0).integers(0, 256, 4097).astype(np.uint8)
    rows = extrapolation_sweep(UniformModel(256), tokens, [64, 256, 1024], train_length=64)
    for row in rows:
        assert row.ppl == pytest.approx(256.0)
        assert row.loss == pytest.approx(math.log(256))
        assert row.bpb == pytest.approx(8.0)  # a uniform byte is 8 bits


def test_bits_per_byte_counts_the_text_bytes_not_the_tokens():
    # A uniform model over 1,024 tokens: 10 bits per token. If those 4,096 tokens stood for 3 bytes
    # each (a BPE), the same text costs 10 / 3 bits per byte, under every protocol.
    tokens = np.random.default_rng(0).integers(0, 1024, 4097)
    rows = extrapolation_sweep(
        UniformModel(1024),
        tokens,
        [64, 256],
        train_length=64,
        protocols=["nonoverlapping", "sliding"],
        stride=32,
        scored_bytes=3 * 4096,
    )
    for row in rows:
        assert row.bytes_scored == 3 * 4096 and row.tokens_scored == 4096
        assert row.bpb == pytest.approx(10 / 3)
        assert row.ppl == pytest.approx(1024.0)


def test_every_length_scores_the_same_tokens():
    tokens = np.arange(1025) % 256
    lengths = [16, 64, 256, 1024]
    targets = {}
    for length in lengths:
        windows = Windows(tokens, length)
        targets[length] = np.concatenate([windows[i][1].numpy() for i in range(len(windows))])
        inputs = np.concatenate([windows[i][0].numpy() for i in range(len(windows))])
        np.testing.assert_array_equal(inputs, tokens[:-1])  # windows tile the stream, no overlap
    for length in lengths:
        np.testing.assert_array_equal(targets[length], tokens[1:])
    rows = extrapolation_sweep(UniformModel(256), tokens.astype(np.uint8), lengths, train_length=16)
    assert {row.tokens_scored for row in rows} == {1024}


def test_unsupported_lengths_are_recorded_and_the_sweep_goes_on():
    torch.manual_seed(0)
    model = GPT(vocab_size=256, n_layer=1, n_head=2, n_embd=16, pos_enc=Learned(16, max_length=32))
    tokens = np.random.default_rng(0).integers(0, 256, 129).astype(np.uint8)
    rows = extrapolation_sweep(model, tokens, [32, 64, 128], train_length=32)
    assert [r.status for r in rows] == ["ok", "unsupported", "unsupported"]
    assert "max_length=32" in rows[1].reason and rows[1].ppl is None
    assert rows[0].ppl is not None and rows[0].tokens_scored == 128


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocol 'sliding_window' is not one of nonoverlapping, sliding"):
        extrapolation_sweep(UniformModel(256), np.zeros(65, np.uint8), [64], 64, protocols=["sliding_window"])


# Student t quantiles t_{0.975, df} from a printed table (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


def test_t_quantile_matches_the_printed_table():
    for df, printed in T_975.items():
        assert t_quantile(0.975, df) == pytest.approx(printed, abs=5e-4)
    assert t_quantile(0.995, 1) == pytest.approx(63.657, abs=5e-3)  # a 99 percent interval from two seeds
    assert t_quantile(0.975, 10**6) == pytest.approx(1.960, abs=5e-4)  # the normal limit


def test_t_interval_by_hand():
    # n = 2: mean 2, s = sqrt(2), s / sqrt(2) = 1, times t_{0.975,1}
    assert t_interval([1.0, 3.0]) == pytest.approx((2.0, 12.7062), abs=1e-4)
    # n = 3: mean 2, s = 1, s / sqrt(3) = 0.57735, times t_{0.975,2} = 4.30265
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.30265 / math.sqrt(3), abs=1e-4)  # 2.4841
    # n = 5: the quickstart's in-length ppl style, mean 8.0, s^2 = (0.04+0.01+0+0.01+0.04)/4 = 0.025
    mean, half = t_interval([7.8, 7.9, 8.0, 8.1, 8.2])
    assert mean == pytest.approx(8.0) and half == pytest.approx(2.77645 * math.sqrt(0.025) / math.sqrt(5), abs=1e-4)
    assert t_interval([8.13]) == (8.13, None)  # one seed: no spread to measure
    mean, half = t_interval([1.0, 2.0, 3.0], confidence=0.90)  # t_{0.95,2} = 2.91999
    assert half == pytest.approx(2.91999 / math.sqrt(3), abs=1e-4)
