"""The extrapolation sweep's arithmetic and its protocol."""

import math

import numpy as np
import pytest
import torch

from poslab.data.datamodule import Windows
from poslab.encodings import Learned, NoPE
from poslab.evaluate import extrapolation_sweep
from poslab.model import GPT


class UniformModel(torch.nn.Module):
    """Logits all zero: every next byte has probability 1/vocab."""

    def __init__(self, vocab_size: int, pos_enc=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.pos_enc = pos_enc or NoPE()

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size)


def test_uniform_logits_give_vocab_size_perplexity():
    tokens = np.random.default_rng(0).integers(0, 256, 4097).astype(np.uint8)
    rows = extrapolation_sweep(UniformModel(256), tokens, [64, 256, 1024], train_length=64)
    for row in rows:
        assert row.ppl == pytest.approx(256.0)
        assert row.loss == pytest.approx(math.log(256))
        assert row.bpb == pytest.approx(8.0)  # a uniform byte is 8 bits


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
    with pytest.raises(ValueError, match="eval.protocol='sliding_window'"):
        extrapolation_sweep(UniformModel(256), np.zeros(65, np.uint8), [64], 64, protocol="sliding_window")
