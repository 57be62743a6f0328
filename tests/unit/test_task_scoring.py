"""Task accuracy: a model that knows the answers scores 1.0, a guesser about chance, a model that
cannot reach a length is recorded as unsupported; one teacher-forced pass gives the exact match
greedy decoding gives; the loss mask covers exactly the answers and the end token."""

import hashlib

import pytest
import torch

from poslab.data.datamodule import IGNORED
from poslab.data.task_datamodule import TaskDataModule, collate
from poslab.data.tasks import EOS, SEP, TASKS, chance_exact_match
from poslab.encodings import Learned, NoPE
from poslab.evaluation.tasks import answers_right, greedy_decode, score_task
from poslab.model import GPT


class Oracle(torch.nn.Module):
    """Logits that put each next token of the example first; with `miss` > 0, a deterministic
    fraction of positions (by a hash of the example and the position) puts a wrong token first
    instead. The example is the one whose given tokens (all but the answers) the input agrees
    with: an example's given tokens decide its answers, so any that agrees will do. Causal:
    position t's logits depend on the input up to t only through the given tokens."""

    def __init__(self, examples, vocab_size, miss=0.0):
        super().__init__()
        self.examples, self.vocab_size, self.miss = examples, vocab_size, miss
        self.pos_enc = NoPE()

    def example_for(self, inputs):
        # the shortest example that can hold the input first: a shorter flip-flop example may
        # agree with a longer one's beginning
        fits = [e for e in self.examples if len(e.tokens) - 1 >= len(inputs)]
        for e in sorted(fits, key=lambda e: len(e.tokens)):
            given = [(t, token) for t, (token, s) in enumerate(zip(e.tokens, e.scored, strict=True)) if not s]
            if all(inputs[t] == token for t, token in given if t < len(inputs)):
                return e
        raise AssertionError("no example agrees with the input")

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab_size)
        for row, inputs in enumerate(x.tolist()):
            tokens = self.example_for(inputs).tokens
            for t in range(min(len(inputs), len(tokens) - 1)):
                digest = hashlib.sha256(repr((tokens, t)).encode()).digest()[0] / 255
                wrong = digest < self.miss
                logits[row, t, (tokens[t + 1] + wrong) % self.vocab_size] = 10.0
        return logits


class Guesser(torch.nn.Module):
    """Random logits: every token equally likely to come first."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size, self.pos_enc = vocab_size, NoPE()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.randn(*x.shape, self.vocab_size, generator=self.generator)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_model_that_knows_the_answers_scores_one(name):
    task = TASKS[name](train_lengths=[2, 4], examples_per_length=20)
    examples = [e for n in task.test_lengths for e in task.test_examples(n)]
    rows = score_task(Oracle(examples, task.vocab_size), task, device="cpu", batch_size=7)
    assert [row.length for row in rows] == task.test_lengths == [4, 6, 8, 12, 16]
    assert all(row.status == "ok" and row.exact_match == 1.0 and row.token_accuracy == 1.0 for row in rows)
    assert [row.length_ratio for row in rows] == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert rows[0].sequence_length == len(task.test_examples(4)[0].tokens) - 1 and rows[0].examples == 20


def test_a_guesser_scores_about_chance():
    task = TASKS["parity"](train_lengths=[2, 4], test_lengths=[4], examples_per_length=4000)
    (row,) = score_task(Guesser(task.vocab_size), task, device="cpu")
    chance = chance_exact_match(task, 4)  # (1/5)^2: the bit and the end token
    assert abs(row.exact_match - chance) < 4 * (chance * (1 - chance) / 4000) ** 0.5
    assert abs(row.token_accuracy - 1 / task.vocab_size) < 0.03


@pytest.mark.parametrize("name", ["copy", "associative_recall", "flip_flop", "addition"])
def test_one_teacher_forced_pass_gives_greedy_decodings_exact_match(name):
    task = TASKS[name](train_lengths=[3, 6], test_lengths=[6], examples_per_length=60)
    examples = task.test_examples(6)
    model = Oracle(examples, task.vocab_size, miss=0.04)  # misses some positions: some examples fail
    exact, _ = answers_right(model, examples, "cpu")
    decoded = greedy_decode(model, examples, "cpu")
    by_decoding = [
        all(
            d == t
            for d, t, s in zip(row, e.tokens[len(e.prompt) + 1 :], e.scored[len(e.prompt) + 1 :], strict=True)
            if s
        )
        for row, e in zip(decoded, examples, strict=True)
    ]
    assert exact.tolist() == [float(b) for b in by_decoding]
    assert 0 < sum(by_decoding) < len(examples)  # both outcomes occur


def test_greedy_decoding_of_a_gpt_follows_its_teacher_forced_choices_until_the_first_miss():
    torch.manual_seed(0)
    task = TASKS["copy"](alphabet=4, train_lengths=[2, 3], test_lengths=[3], examples_per_length=16)
    model = GPT(vocab_size=task.vocab_size, n_layer=1, n_head=2, n_embd=16).eval()
    examples = task.test_examples(3)
    decoded = greedy_decode(model, examples, "cpu")
    x, y = collate(examples)
    forced = model(x).argmax(-1)
    start = len(examples[0].prompt) + 1
    for row, example, choices in zip(decoded, examples, forced, strict=True):
        target = example.tokens[start:]
        first_choice = choices[start - 1].item()  # after the separator, both see the same prefix
        assert row[0] == first_choice
        for t in range(len(target)):
            assert row[t] == choices[start - 1 + t].item()
            if row[t] != target[t]:
                break


def test_the_loss_mask_covers_exactly_the_answers_and_the_end_token():
    task = TASKS["associative_recall"](train_lengths=[2, 3], keys=16, values=8)
    examples = task.training_examples(0, 8)
    x, y = collate(examples)
    for row, example in enumerate(examples):
        n = len(example.tokens) - 1
        assert x[row, :n].tolist() == example.tokens[:-1] and (x[row, n:] == 0).all()
        scored = [t for t, s in zip(example.tokens[1:], example.scored[1:], strict=True) if s]
        assert y[row][y[row] != IGNORED].tolist() == scored
        assert scored[-1] == EOS and len(scored) == sum(example.answer) + 1
        assert SEP not in scored


def test_a_length_past_a_learned_table_is_unsupported_not_a_crash():
    task = TASKS["copy"](train_lengths=[2, 4], test_lengths=[4, 8], examples_per_length=5)
    model = GPT(vocab_size=task.vocab_size, n_layer=1, n_head=2, n_embd=16, pos_enc=Learned(16, max_length=12)).eval()
    rows = score_task(model, task, device="cpu")
    assert [row.status for row in rows] == ["ok", "unsupported"]
    assert rows[1].exact_match is None and "max_length=12" in rows[1].reason


def test_training_batches_are_a_function_of_the_step():
    task = TASKS["copy"](train_lengths=[1, 6])
    datamodule = TaskDataModule(task, batch_size=4)
    first = next(iter(datamodule.train_dataloader()))
    again = next(iter(datamodule.train_dataloader()))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert datamodule.context == task.train_context == 13 and datamodule.vocab_size == 3 + 16


def test_randomized_positions_are_sorted_distinct_and_within_max_position():
    task = TASKS["copy"](train_lengths=[1, 6])
    datamodule = TaskDataModule(task, batch_size=4, positions="randomized", max_position=64)
    x, y, pos = next(iter(datamodule.train_dataloader()))
    assert pos.shape == x.shape and (pos < 64).all() and (pos[:, 1:] > pos[:, :-1]).all()


def test_a_resumed_run_starts_at_the_batch_of_its_step():
    from poslab.data.task_datamodule import StepExamples

    task = TASKS["sort"](train_lengths=[1, 6])
    datamodule = TaskDataModule(task, batch_size=4)
    straight = StepExamples(datamodule, start_step=0, rank=0, world_size=1)
    resumed = StepExamples(datamodule, start_step=5, rank=0, world_size=1)
    sixth = list(zip(range(6), iter(straight), strict=False))[5][1]
    assert all(torch.equal(a, b) for a, b in zip(sixth, next(iter(resumed)), strict=True))
    # two ranks deal out the one global batch
    halves = [next(iter(StepExamples(TaskDataModule(task, batch_size=2), 5, rank, 2))) for rank in (0, 1)]
    whole = collate(task.training_examples(5, 4))
    width = whole[0].shape[1]
    assert torch.equal(torch.cat([torch.nn.functional.pad(h[0], (0, width - h[0].shape[1])) for h in halves]), whole[0])
