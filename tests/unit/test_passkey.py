"""Passkey retrieval: the sequences, the scoring, the grid, and the training mix."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import UniformModel
from poslab.data.datamodule import IGNORED, PasskeyMix, RandomizedPositionWindows, StepBatches, Windows
from poslab.data.passkey import FIXED_BYTES, KEY_DIGITS, MIN_LENGTH, QUESTION, key_line, make_passkey, passkey_trials
from poslab.encodings import Learned, NoPE
from poslab.evaluation.passkey import effective_window, passkey_retrieval
from poslab.records.loggers import passkey_figure
from poslab.training.losses import passkey_answer_loss, window_mean_loss

# filler: readable bytes with digits and "key=" in them, as in source code
SOURCE = np.frombuffer(
    b"".join(
        f"def f{i}(x, key=None): return sorted(x, key=key)[{i % 97}]  # {i * 7919}\n".encode() for i in range(400)
    ),
    dtype=np.uint8,
)


def test_a_passkey_sequence_is_a_function_of_its_seed():
    a = passkey_trials(SOURCE, 256, 0.5, trials=3, seed=11)
    b = passkey_trials(SOURCE, 256, 0.5, trials=3, seed=11)
    for x, y in zip(a, b, strict=True):
        assert x.key == y.key and np.array_equal(x.tokens, y.tokens)
    assert len({s.key for s in a}) == 3  # trials differ
    other = passkey_trials(SOURCE, 256, 0.5, trials=3, seed=12)
    assert [s.key for s in other] != [s.key for s in a]


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("length", [MIN_LENGTH, 128, 1000])
def test_the_key_appears_once_at_the_asked_depth(length, depth):
    sample = make_passkey(SOURCE, length, depth, np.random.default_rng(3))
    text = bytes(sample.tokens)
    assert len(text) == length + 1 and sample.length == length
    assert text.endswith(QUESTION + sample.key.encode()) and sample.answer_start == length + 1 - KEY_DIGITS
    prompt = text[: sample.answer_start]  # what the model reads before it answers
    assert len(sample.key) == KEY_DIGITS and sample.key.isdigit() and sample.key[0] != "0"
    assert prompt.count(sample.key.encode()) == 1
    assert prompt.count(b"pass key=") == 2  # the key line and the question
    line = key_line(sample.key)
    assert line == b" pass key=" + sample.key.encode() + b". "
    filler_length = length + 1 - FIXED_BYTES
    assert prompt.index(line) == sample.key_start == round(depth * filler_length)
    if depth == 1.0:
        assert prompt.endswith(line + QUESTION)  # right before the question


def test_too_short_a_sequence_is_refused():
    with pytest.raises(ValueError, match=f"at least {MIN_LENGTH} tokens"):
        make_passkey(SOURCE, MIN_LENGTH - 1, 0.5, np.random.default_rng(0))


class CopyKeyModel(torch.nn.Module):
    """Retrieval by hand: wherever the input so far ends with "pass key=" plus k digits of the key
    stated first in the sequence, the logits point at the key's next digit."""

    def __init__(self, pos_enc=None):
        super().__init__()
        self.pos_enc = pos_enc or NoPE()

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 256)
        for b, row in enumerate(idx.tolist()):
            text = bytes(row)
            start = text.find(b"pass key=") + len(b"pass key=")
            key = text[start : start + KEY_DIGITS]
            for k in range(KEY_DIGITS):
                prefix = b"pass key=" + key[:k]
                at = text.find(prefix)
                while at >= 0:
                    logits[b, at + len(prefix) - 1, key[k]] = 10.0
                    at = text.find(prefix, at + 1)
        return logits


def test_a_model_that_copies_the_key_retrieves_it_always_and_a_uniform_one_never():
    lengths, depths = [64, 128, 256], [0.0, 0.5, 1.0]
    copying = passkey_retrieval(CopyKeyModel(), SOURCE, lengths, depths, trials=10, seed=0, train_length=64)
    assert copying.accuracy == [[1.0] * 3] * 3 and copying.status == [["ok"] * 3] * 3
    assert copying.effective_window == 256 and copying.in_length_accuracy == 1.0
    uniform = passkey_retrieval(UniformModel(256), SOURCE, lengths, depths, trials=10, seed=0, train_length=64)
    assert uniform.accuracy == [[0.0] * 3] * 3
    assert uniform.effective_window is None and uniform.in_length_accuracy == 0.0
    record = copying.to_dict()
    assert set(record) >= {"lengths", "depths", "trials", "accuracy", "status", "threshold", "effective_window"}
    assert record["threshold"] == 0.2 and record["trials"] == 10


class GuessingModel(CopyKeyModel):
    """Copies the key of some sequences only (those whose key is even): about half right."""

    def forward(self, idx):
        logits = super().forward(idx)
        for b, row in enumerate(idx.tolist()):
            text = bytes(row)
            start = text.find(b"pass key=") + len(b"pass key=")
            if int(text[start : start + KEY_DIGITS]) % 2:
                logits[b] = 0.0
        return logits


def test_accuracy_counts_trials():
    result = passkey_retrieval(GuessingModel(), SOURCE, [96], [0.5], trials=40, seed=0, train_length=96)
    samples = passkey_trials(SOURCE, 96, 0.5, trials=40, seed=0)
    assert result.accuracy == [[sum(int(s.key) % 2 == 0 for s in samples) / 40]]
    assert 0.2 < result.accuracy[0][0] < 0.8


def test_lengths_the_encoding_cannot_serve_are_unsupported():
    model = CopyKeyModel(pos_enc=Learned(8, max_length=128))
    result = passkey_retrieval(model, SOURCE, [64, 128, 256], [0.0, 1.0], trials=10, seed=0, train_length=128)
    assert result.status == [["ok", "ok"], ["ok", "ok"], ["unsupported", "unsupported"]]
    assert result.accuracy[2] == [None, None] and "max_length=128" in result.reasons[256]
    assert result.effective_window == 128 and result.in_length_accuracy == 1.0


class OutOfMemoryAbove(CopyKeyModel):
    """Raises as CUDA would when a batch holds more than max_tokens tokens."""

    def __init__(self, max_tokens: int):
        super().__init__()
        self.max_tokens = max_tokens
        self.batches = []

    def forward(self, idx):
        if idx.numel() > self.max_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(idx.shape[0])
        return super().forward(idx)


def test_passkey_batches_shrink_on_out_of_memory_and_a_length_that_never_fits_is_recorded():
    model = OutOfMemoryAbove(max_tokens=320)
    result = passkey_retrieval(
        model, SOURCE, [64, 512], [0.0, 1.0], trials=10, seed=0, train_length=64, batch_tokens=4096
    )
    # the 20 sequences of length 64 (both depths) in one batch of 1280 tokens -> 10 -> 5 (320 tokens)
    assert result.accuracy[0] == [1.0, 1.0] and model.batches == [5, 5, 5, 5]
    assert result.status[1] == ["out_of_memory", "out_of_memory"] and "CUDA out of memory" in result.reasons[512]
    assert result.effective_window == 64


def test_effective_window_is_where_accuracy_first_falls_below_the_threshold():
    ok = [["ok", "ok"]] * 4
    assert effective_window([128, 256, 512, 1024], [[1, 1], [0.5, 0.2], [0.1, 0.9], [1, 1]], ok, 0.2) == 256
    assert effective_window([128, 256], [[0.1, 1], [1, 1]], ok[:2], 0.2) is None
    unsupported = [["ok", "ok"], ["unsupported", "unsupported"]]
    assert effective_window([128, 256], [[1, 1], [None, None]], unsupported, 0.2) == 128


def test_heatmap_draws_every_cell_length_across_and_depth_down():
    """wandb's heatmap of one run, drawn by the report's function (poslab.figures.passkey_heatmap):
    eval length across, key depth down, as in the report's passkey.png."""
    result = passkey_retrieval(CopyKeyModel(Learned(8, max_length=64)), SOURCE, [64, 128], [0.0, 1.0], 10, 0, 64)
    axes = passkey_figure(result.to_dict()).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["64", "128"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["0", "1"]
    assert [t.get_text() for t in axes.texts] == ["100", "n/a", "100", "n/a"]  # row by row: depth 0, then 1


# --- the training mix ---------------------------------------------------------------------------


def test_passkey_windows_score_their_answer_digits_only_and_are_a_function_of_the_index():
    windows = Windows(SOURCE, 64)
    mix = PasskeyMix(windows, fraction=0.5, seed=3)
    kinds = []
    for i in range(200):
        x, y = mix[i]
        again_x, again_y = mix[i]
        assert torch.equal(x, again_x) and torch.equal(y, again_y)  # read again (a resumed run): the same
        is_passkey = bool((y == IGNORED).any())
        kinds.append(is_passkey)
        if is_passkey:
            text, key = bytes(x.tolist()), bytes(y[-KEY_DIGITS:].tolist())
            assert (y != IGNORED).sum() == KEY_DIGITS and key.isdigit()
            assert text.endswith(QUESTION + key[:-1])  # teacher forcing: each digit predicted from those before
            assert text.count(key_line(key.decode())) == 1
        else:
            assert torch.equal(x, windows[i][0]) and torch.equal(y, windows[i][1])
    assert 0.35 < np.mean(kinds) < 0.65
    assert not any((PasskeyMix(windows, 0.0, 3)[i][1] == IGNORED).any() for i in range(50))
    other_seed = PasskeyMix(windows, 0.5, 4)
    assert any(not torch.equal(other_seed[i][0], mix[i][0]) for i in range(20))


def test_mixed_batches_resume_at_the_same_step():
    from torch.utils.data import DataLoader

    mix = PasskeyMix(Windows(SOURCE, 64), fraction=0.5, seed=1)
    fresh = iter(DataLoader(mix, batch_sampler=StepBatches(len(mix), 8, seed=1)))
    batches = [next(fresh) for _ in range(6)]
    resumed = iter(DataLoader(mix, batch_sampler=StepBatches(len(mix), 8, seed=1, start_step=4)))
    for expected in batches[4:]:
        got = next(resumed)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_randomized_positions_stay_with_passkey_windows():
    windows = RandomizedPositionWindows(SOURCE, 64, max_position=256, seed=2)
    mix = PasskeyMix(windows, fraction=1.0, seed=2)
    x, y, pos = mix[7]
    assert torch.equal(pos, windows[7][2]) and (y == IGNORED).sum() == 64 - KEY_DIGITS


def test_every_window_weighs_the_same_in_a_mixed_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 256)
    targets = torch.randint(0, 256, (3, 8))
    plain = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert window_mean_loss(logits, targets) == plain  # no passkey window: the usual mean, bit for bit
    assert passkey_answer_loss(logits, targets) is None
    targets[1, :-5] = IGNORED  # window 1 is a passkey window: its 5 answer digits only
    per_window = [
        F.cross_entropy(logits[0], targets[0]),
        F.cross_entropy(logits[1, -5:], targets[1, -5:]),
        F.cross_entropy(logits[2], targets[2]),
    ]
    assert window_mean_loss(logits, targets) == pytest.approx(sum(per_window).item() / 3, rel=1e-6)
    assert passkey_answer_loss(logits, targets) == pytest.approx(per_window[1].item(), rel=1e-6)
