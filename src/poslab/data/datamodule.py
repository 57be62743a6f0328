"""Tokenized splits as flat token arrays, served as fixed-length windows."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from poslab.data.corpora import SPLITS, Corpus
from poslab.data.tokenizer import ByteTokenizer
from poslab.passkey import KEY_DIGITS, make_passkey

log = logging.getLogger(__name__)


class Windows(Dataset):
    """Non-overlapping windows of `length` tokens: item i is (x, y) = tokens[a:a+length],
    tokens[a+1:a+length+1] with a = i * length. Every token from 1 to len(self)*length is a
    target exactly once."""

    def __init__(self, tokens: np.ndarray, length: int):
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        self.tokens = tokens
        self.length = length

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.length

    def __getitem__(self, i: int):
        start = (i % len(self)) * self.length  # indices past len() wrap (a later pass, see StepBatches)
        chunk = torch.from_numpy(self.tokens[start : start + self.length + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class RandomizedPositionWindows(Windows):
    """Windows whose positions are a sorted random sample of `length` distinct positions from
    [0, max_position) (Ruoss et al., 2023, "Randomized Positional Encodings Boost Length
    Generalization of Transformers", arXiv 2305.16843): training then sees the position values of
    sequences up to max_position long. Item i is (x, y, pos); the sample is drawn from a generator
    seeded by (seed, i), so it is the same whenever item i is read again (a resumed run)."""

    def __init__(self, tokens: np.ndarray, length: int, max_position: int, seed: int):
        super().__init__(tokens, length)
        self.max_position = max_position
        self.seed = seed

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        pos = torch.randperm(self.max_position, generator=generator)[: self.length].sort().values
        return x, y, pos


# The target of every position a training loss must skip (F.cross_entropy's default ignore_index).
IGNORED = -100


class PasskeyMix(Dataset):
    """Training windows of which a fraction are synthetic passkey sequences (poslab.passkey) of
    the same length, with filler from the training split. A passkey window's targets are IGNORED
    except its 5 answer digits: a small model learns retrieval from the answer loss alone, not
    from the language-model loss on the whole sequence. Item i decides, from a generator seeded
    by (seed, i), whether it is a passkey window and draws its key, depth and filler, so it is the
    same whenever it is read again (a resumed run sees the same batches). Other items are the
    wrapped windows' own, positions included."""

    def __init__(self, windows: Windows, fraction: float, seed: int):
        self.windows = windows
        self.fraction = fraction
        self.seed = seed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        item = self.windows[i]
        # a stream of its own: the same (seed, i) also seeds RandomizedPositionWindows
        rng = np.random.default_rng([self.seed, i, 0x9A55])
        if rng.random() >= self.fraction:
            return item
        sample = make_passkey(self.windows.tokens, self.windows.length, depth=rng.random(), rng=rng)
        sequence = torch.from_numpy(sample.tokens.astype(np.int64))
        targets = torch.full((self.windows.length,), IGNORED, dtype=torch.int64)
        targets[-KEY_DIGITS:] = sequence[-KEY_DIGITS:]
        return (sequence[:-1], targets, *item[2:])


class StepBatches(Sampler[list[int]]):
    """Training batches as a function of the optimisation step alone.

    Batch s is the (s mod b)-th slice of a permutation of the windows seeded by (seed, s div b),
    where b is the number of whole batches in the training split. Indices are offset by the pass
    times the number of windows (the dataset wraps them), so an item names its pass too. A run
    resumed at step s therefore sees exactly the batches an uninterrupted run would have seen from
    step s on, without storing any sampler state. Endless: training stops at trainer.max_steps.

    With data parallelism, `batch_size` is the global batch and rank r of `world_size` takes the
    r-th contiguous part of it, so the same global batch is seen on one process or on several.
    """

    def __init__(
        self, num_windows: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ):
        self.num_windows = num_windows
        self.batch_size = min(batch_size, num_windows)
        self.seed = seed
        self.start_step = start_step
        self.batches_per_pass = num_windows // self.batch_size
        self.rank, self.world_size = rank, world_size

    def permutation(self, data_pass: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + data_pass)
        return torch.randperm(self.num_windows, generator=generator)

    def batch(self, step: int) -> list[int]:
        data_pass, index = divmod(step, self.batches_per_pass)
        return self._slice(self.permutation(data_pass), data_pass, index)

    def _slice(self, order: torch.Tensor, data_pass: int, index: int) -> list[int]:
        windows = order[index * self.batch_size : (index + 1) * self.batch_size]
        share = self.batch_size // self.world_size  # this rank's part of the global batch
        windows = windows[self.rank * share : (self.rank + 1) * share]
        return (windows + data_pass * self.num_windows).tolist()

    def __iter__(self):
        order, order_pass = None, None
        for step in itertools.count(self.start_step):
            data_pass, index = divmod(step, self.batches_per_pass)
            if data_pass != order_pass:  # one permutation per pass over the data, not per step
                order, order_pass = self.permutation(data_pass), data_pass
            yield self._slice(order, data_pass, index)


class TokenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        corpus: Corpus,
        context: int,
        batch_size: int = 32,
        eval_batch_size: int = 8,
        val_tokens: int = 65536,
        vocab_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        positions: str = "contiguous",
        max_position: int | None = None,
        passkey_mix: float = 0.0,
    ):
        # sizes are validated once, with the rest of the config, in poslab.config
        super().__init__()
        self.corpus = corpus
        self.tokenizer = ByteTokenizer()
        if vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"data.vocab_size={vocab_size} does not match the byte tokenizer's 256")
        self.context = context
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_tokens = val_tokens
        self.num_workers = num_workers
        self.seed = seed
        self.positions = positions
        self.max_position = max_position
        self.passkey_mix = passkey_mix
        self.tokens: dict[str, np.ndarray] = {}
        self._fingerprint: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokens:
            return
        splits = self.corpus.load()
        separator = self.corpus.separator
        tokenizer = self.tokenizer

        def encode(batch):
            return {"ids": [tokenizer.encode(text + separator) for text in batch["text"]]}

        import datasets

        features = datasets.Features({"ids": datasets.Sequence(datasets.Value("uint8"))})
        fingerprints = {}
        for split in SPLITS:
            encoded = splits[split].map(
                encode,
                batched=True,
                remove_columns=splits[split].column_names,
                features=features,
                desc=f"tokenizing {split}",
            )
            fingerprints[split] = encoded._fingerprint
            column = encoded.data.column("ids")
            parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
            self.tokens[split] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        self._fingerprint = {
            **self.corpus.fingerprint(),
            "tokenizer": "bytes",
            "tokens": {split: int(len(t)) for split, t in self.tokens.items()},
            "datasets_fingerprint": fingerprints,
        }
        if len(self.tokens["train"]) < self.context + 1:
            raise ValueError(
                f"data.context={self.context} is longer than the training split "
                f"({len(self.tokens['train'])} tokens); lower data.context or add data"
            )
        if len(self.tokens["validation"]) < self.context + 1:
            raise ValueError(
                f"data.context={self.context} is longer than the validation split "
                f"({len(self.tokens['validation'])} tokens); lower data.context or add data"
            )
        log.info("tokens per split: %s", self._fingerprint["tokens"])

    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            raise RuntimeError("call setup() before asking for the data fingerprint")
        return self._fingerprint

    def heldout_tokens(self, num_tokens: int, max_length: int) -> np.ndarray:
        """The tokens the extrapolation sweep scores: the first num_tokens of the test split,
        rounded down to a whole number of windows of the longest eval length, plus one for the
        last target. Every eval length then scores exactly these tokens."""
        test = self.tokens["test"]
        usable = min(num_tokens, len(test) - 1) // max_length * max_length
        if usable == 0:
            raise ValueError(
                f"eval.lengths: the longest eval length {max_length} is longer than the test split "
                f"({len(test)} tokens); lower eval.lengths or add data"
            )
        return test[: usable + 1]

    def train_dataloader(self):
        if self.positions == "randomized":
            windows = RandomizedPositionWindows(self.tokens["train"], self.context, self.max_position, self.seed)
        else:
            windows = Windows(self.tokens["train"], self.context)
        if self.passkey_mix > 0:
            windows = PasskeyMix(windows, self.passkey_mix, self.seed)
        # On resume Lightning has restored the step before it asks for the data: start there.
        start_step = self.trainer.global_step if self.trainer is not None else 0
        # data.batch_size is per device (Lightning's convention); the sampler deals the global batch
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        batches = StepBatches(len(windows), self.batch_size * world_size, self.seed, start_step, rank, world_size)
        return DataLoader(windows, batch_sampler=batches, num_workers=self.num_workers)

    def val_dataloader(self):
        val = self.tokens["validation"][: self.val_tokens + 1]
        return DataLoader(Windows(val, self.context), batch_size=self.eval_batch_size, num_workers=self.num_workers)
