"""An algorithmic task (poslab.data.tasks) served as training and validation batches.

A batch holds examples of several lengths, right-padded: with causal attention a pad after an
example changes nothing before it, and its targets are IGNORED, like every target that is not an
answer token or the end token. Batches are a function of the step alone, so a resumed run sees
exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from poslab.data.datamodule import IGNORED
from poslab.data.tasks import PAD, Example, Task


def collate(examples: list[Example], positions: torch.Tensor | None = None):
    """(x, y) or (x, y, pos): inputs tokens[:-1], targets tokens[1:] with IGNORED wherever the
    next token is not scored; right-padded to the longest example. `positions` (B, T) replaces
    the default 0, 1, 2, ... of every example."""
    width = max(len(example.tokens) for example in examples) - 1
    x = np.full((len(examples), width), PAD, dtype=np.int64)
    y = np.full((len(examples), width), IGNORED, dtype=np.int64)
    for row, example in enumerate(examples):  # filled from lists: one numpy call per row and array
        tokens, scored = np.array(example.tokens), np.array(example.scored[1:])
        x[row, : len(tokens) - 1] = tokens[:-1]
        y[row, : len(tokens) - 1] = np.where(scored, tokens[1:], IGNORED)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return (x, y) if positions is None else (x, y, positions[:, :width])


def randomized_positions(count: int, width: int, max_position: int, generator: torch.Generator) -> torch.Tensor:
    """For each of `count` sequences, a sorted random sample of `width` distinct positions from
    [0, max_position) (Ruoss et al. 2023): training sees the position values of longer inputs."""
    return torch.stack([torch.randperm(max_position, generator=generator)[:width].sort().values for _ in range(count)])


class StepExamples(IterableDataset):
    """Endless training batches from `start_step` on: batch s is the task's training examples of
    step s, this rank's contiguous share of the global batch."""

    def __init__(self, datamodule: TaskDataModule, start_step: int, rank: int, world_size: int):
        self.datamodule, self.start_step, self.rank, self.world_size = datamodule, start_step, rank, world_size

    def __iter__(self):
        dm = self.datamodule
        share = dm.batch_size
        for step in itertools.count(self.start_step):
            examples = dm.task.training_examples(step, share * self.world_size)
            examples = examples[self.rank * share : (self.rank + 1) * share]
            positions = None
            if dm.positions == "randomized":
                generator = torch.Generator().manual_seed(dm.seed * 1_000_003 + step)
                width = max(len(example.tokens) for example in examples) - 1
                positions = randomized_positions(share * self.world_size, width, dm.max_position, generator)
                positions = positions[self.rank * share : (self.rank + 1) * share]
            yield collate(examples, positions)


class TaskDataModule(pl.LightningDataModule):
    """Training batches of the task's training lengths (a function of the step), validation on a
    fixed set of examples of those lengths. Its `context` and `vocab_size` are the task's: the
    longest training sequence and the task's tokens."""

    def __init__(
        self,
        task: Task,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_examples: int = 512,
        seed: int = 0,
        positions: str = "contiguous",
        max_position: int | None = None,
        context: int | None = None,
        vocab_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.task = task
        if vocab_size is not None and vocab_size != task.vocab_size:
            raise ValueError(
                f"data.vocab_size={vocab_size} does not match the {task.name} task's {task.vocab_size} tokens; "
                "leave data.vocab_size as null"
            )
        if context is not None and context < task.train_context:
            raise ValueError(
                f"data.context={context} is shorter than the {task.name} task's longest training sequence "
                f"({task.train_context} tokens at length {task.train_lengths[1]}); leave data.context as null"
            )
        self.context = context or task.train_context
        self.vocab_size = task.vocab_size
        self.batch_size, self.eval_batch_size, self.val_examples = batch_size, eval_batch_size, val_examples
        self.seed, self.positions, self.max_position = seed, positions, max_position
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        """Nothing to load: every example is drawn from the task's seed."""

    @property
    def fingerprint(self) -> dict:
        """What results.json records as the run's data: the task and its settings."""
        return {"task": self.task.settings(), "context": self.context}

    def train_dataloader(self):
        # on resume Lightning has restored the step before it asks for the data: start there
        start_step = self.trainer.global_step if self.trainer is not None else 0
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return DataLoader(StepExamples(self, start_step, rank, world_size), batch_size=None)

    def val_dataloader(self):
        examples = self.task.validation_examples(self.val_examples)
        batches = [examples[i : i + self.eval_batch_size] for i in range(0, len(examples), self.eval_batch_size)]
        return DataLoader(batches, batch_size=None, collate_fn=collate)
