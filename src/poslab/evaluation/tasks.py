"""Accuracy on an algorithmic task at each test length: exact match by greedy decoding of the
whole target (the NoPE study's metric) and per-token accuracy under teacher forcing (the Chomsky
suite's).

Greedy decoding reproduces the target exactly if and only if, fed the target's own prefix, the
model's most likely next token is right at every answer position and at the end token: up to the
first miss the greedy prefix is the target's, and a miss ends the match. So one teacher-forced
forward pass per batch gives both metrics, exactly, with no decoding loop (`greedy_decode`, the
loop itself, is kept for the test that shows the two agree). Given target tokens (associative
recall's queries, flip-flop's instructions) are fed, never predicted, in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from poslab.data.datamodule import IGNORED
from poslab.data.task_datamodule import collate
from poslab.data.tasks import EOS, Example, Task
from poslab.encodings import LengthNotSupportedError
from poslab.memory import in_batches_that_fit, is_out_of_memory, release_memory


@dataclass
class TaskRow:
    length: int  # input length, in the task's unit
    length_ratio: float  # over the longest training length
    sequence_length: int  # tokens the model reads: the example less its last token
    status: str  # "ok", "unsupported" (the encoding has no positions this far), "out_of_memory"
    reason: str | None = None
    examples: int = 0
    exact_match: float | None = None
    token_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def answers_right(model, examples: list[Example], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced: per example, whether every answer token and the end token is the model's
    most likely next token (exact match: 0 or 1), and how many answer tokens are, of how many."""
    x, y = collate(examples)
    predicted = model(x.to(device)).argmax(-1).cpu()
    scored = y != IGNORED
    right = (predicted == y) & scored
    exact = (right.sum(1) == scored.sum(1)).double()
    answers = scored & (y != EOS)  # the end token is scored by exact match only
    return exact, torch.stack([(right & answers).sum(1), answers.sum(1)], 1)


def _scorer(model, examples: list[Example], device):
    return lambda start, stop: answers_right(model, examples[start:stop], device)


def score_task(
    model,
    task: Task,
    *,
    device,
    batch_size: int = 256,
    progress: Callable[[TaskRow], None] | None = None,
) -> list[TaskRow]:
    """A row per test length: exact match and token accuracy over the task's test examples."""
    model.eval()
    rows = []
    longest_train = task.train_lengths[1]
    for length in task.test_lengths:
        examples = task.test_examples(length)
        sequence_length = len(examples[0].tokens) - 1
        row = TaskRow(length, length / longest_train, sequence_length, "ok")
        try:
            model.pos_enc.check_length(sequence_length)
            parts = list(in_batches_that_fit(len(examples), batch_size, _scorer(model, examples, device)))
        except LengthNotSupportedError as error:
            row.status, row.reason = "unsupported", str(error)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            release_memory()
            row.status, row.reason = "out_of_memory", str(error).splitlines()[0]
        else:
            exact = torch.cat([part[0] for part in parts])
            counts = torch.cat([part[1] for part in parts]).sum(0)
            row.examples = len(examples)
            row.exact_match = float(exact.mean())
            row.token_accuracy = counts[0].item() / counts[1].item() if counts[1] else None
        rows.append(row)
        if progress:
            progress(row)
    return rows


@torch.no_grad()
def greedy_decode(model, examples: list[Example], device) -> list[list[int]]:
    """Decode every example's target and end token one token at a time from its prompt and
    separator, feeding the model's own choice at answer positions and the given token elsewhere.
    Examples of one length are decoded together, each step a forward over the whole prefix."""
    if len({len(example.tokens) for example in examples}) != 1:
        raise ValueError("greedy_decode decodes examples of one length together")
    start = len(examples[0].prompt) + 1
    sequences = torch.tensor([example.tokens for example in examples])
    produced = sequences[:, :start].clone()
    for position in range(start, sequences.size(1)):
        logits = model(produced.to(device))[:, -1]
        choice = logits.argmax(-1).cpu()
        answer = torch.tensor([example.scored[position] for example in examples])
        token = torch.where(answer, choice, sequences[:, position])
        produced = torch.cat([produced, token[:, None]], 1)
    return produced[:, start:].tolist()
