"""Tokenized splits as flat token arrays, served as fixed-length windows."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from poslab.data.corpora import SPLITS, Corpus
from poslab.data.passkey import KEY_DIGITS, make_passkey
from poslab.data.token_cache import TokenCache, default_cache_root
from poslab.data.tokenizer import ByteTokenizer, Tokenizer

log = logging.getLogger(__name__)

# Text handed to the tokenizer at once: rows are gathered up to this many characters, and a
# longer row (a PG-19 book, enwik8 as one text) is cut into pieces at line ends. The pieces can
# change a BPE's tokens: changing PIECE_CHARACTERS or _pieces needs a new token_cache.FORMAT.
BATCH_CHARACTERS = 1 << 22
PIECE_CHARACTERS = 1 << 20


def _pieces(text: str, limit: int = PIECE_CHARACTERS):
    """A long text in pieces of at most `limit` characters, cut after a newline where there is
    one (a byte-level BPE's pre-tokenizer splits there anyway), so no single call holds a book."""
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start, start + limit) + 1
        if cut <= start:
            cut = start + limit
        yield text[start:cut]
        start = cut
    yield text[start:]


def _texts(dataset, separator: str):
    """The split's rows, each followed by the separator, long ones in pieces."""
    for batch in dataset.iter(batch_size=256):
        for text in batch["text"]:
            yield from _pieces((text or "") + separator)


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


def training_positions(positions: str, context: int, max_position: int | None) -> int:
    """How many positions training uses: the context, or max_position with randomized positions."""
    return max_position if positions == "randomized" and max_position else context


def whole_windows(num_tokens: int, length: int) -> int:
    """num_tokens rounded down to whole windows of length: how many held-out tokens every eval
    length scores (with the longest eval length as length)."""
    return num_tokens // length * length


# The target of every position a training loss must skip (F.cross_entropy's default ignore_index).
IGNORED = -100


class PasskeyMix(Dataset):
    """Training windows of which a fraction are synthetic passkey sequences (poslab.data.passkey) of
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
    """Tokenized splits, served as training windows, validation windows and held-out tokens.

    Tokenization runs once per (corpus identity, split, tokenizer) and is kept in the token
    cache (poslab.data.token_cache) under `cache_dir` (paths.data_cache_dir; null = the corpus's
    own cache_dir, else `datasets`' cache); later runs memory-map it without loading the corpus.
    """

    def __init__(
        self,
        corpus: Corpus,
        context: int,
        batch_size: int = 32,
        eval_batch_size: int = 8,
        val_tokens: int = 65536,
        vocab_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        positions: str = "contiguous",
        max_position: int | None = None,
        passkey_mix: float = 0.0,
        tokenizer: Tokenizer | None = None,
        cache_dir: str | None = None,
    ):
        # sizes are validated once, with the rest of the config, in poslab.config
        super().__init__()
        self.corpus = corpus
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if vocab_size is not None and vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"data.vocab_size={vocab_size} does not match the {self.tokenizer.name} tokenizer's "
                f"{self.tokenizer.vocab_size}; leave data.vocab_size as ${{data.tokenizer.vocab_size}}"
            )
        self.vocab_size = self.tokenizer.vocab_size
        self.cache_dir = cache_dir
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
        self.split_bytes: dict[str, int] = {}  # UTF-8 bytes of each split's text, separators included
        self._fingerprint: dict | None = None

    def token_cache(self) -> TokenCache:
        return TokenCache(default_cache_root(self.cache_dir or getattr(self.corpus, "cache_dir", None)))

    def setup(self, stage: str | None = None) -> None:
        if self.tokens:
            return
        cache = self.token_cache()
        loaded = {}

        def splits():  # the corpus is loaded only if something is not in the cache
            if "splits" not in loaded:
                loaded["splits"] = self.corpus.load()
            return loaded["splits"]

        separator = self.corpus.separator
        source = self.corpus.identity()
        if source is None:
            source = self.corpus.loaded_identity(splits())
        self.tokenizer.prepare(lambda: _texts(splits()["train"], separator), cache, source)
        tokenizer_identity = self.tokenizer.identity()
        files = {}
        for split in SPLITS:
            key = {
                "kind": "tokens",
                "source": source,
                "split": split,
                "separator": separator,
                "tokenizer": tokenizer_identity,
            }
            entry = cache.get(key)
            if entry is None:
                log.info(
                    "tokenizing the %s split with the %s tokenizer (once: kept in %s)",
                    split,
                    self.tokenizer.name,
                    cache.root,
                )
                entry = cache.put(key, self._encode(splits()[split], separator), self.tokenizer.dtype)
            self.tokens[split] = entry.tokens
            self.split_bytes[split] = entry.num_bytes
            files[split] = entry.path.name
        self._fingerprint = {
            **self.corpus.fingerprint(),
            "tokenizer": tokenizer_identity,
            "tokens": {split: int(len(t)) for split, t in self.tokens.items()},
            "text_bytes": dict(self.split_bytes),
            "token_files": files,
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

    def _encode(self, dataset, separator: str):
        """(ids, UTF-8 bytes of their text) for consecutive stretches of the split's rows. Each
        stretch's tokens are checked to stand for exactly its bytes: bits per byte depends on it."""
        token_bytes = self.tokenizer.token_bytes
        batch: list[str] = []
        size = 0
        for text in _texts(dataset, separator):
            batch.append(text)
            size += len(text)
            if size >= BATCH_CHARACTERS:
                yield self._encode_batch(batch, token_bytes)
                batch, size = [], 0
        if batch:
            yield self._encode_batch(batch, token_bytes)

    def _encode_batch(self, texts: list[str], token_bytes: np.ndarray) -> tuple[np.ndarray, int]:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.concatenate(encoded) if encoded else np.zeros(0, dtype=self.tokenizer.dtype)
        num_bytes = len("".join(texts).encode("utf-8"))
        if int(token_bytes[ids].sum()) != num_bytes:
            raise ValueError(
                f"the {self.tokenizer.name} tokenizer is not lossless on this corpus: its tokens stand for "
                f"{int(token_bytes[ids].sum())} bytes of a {num_bytes}-byte text"
            )
        return ids, num_bytes

    def bytes_of(self, tokens: np.ndarray) -> int:
        """How many UTF-8 bytes of text these tokens stand for."""
        return int(self.tokenizer.token_bytes[np.asarray(tokens)].sum())

    def heldout_bytes(self, heldout: np.ndarray) -> int:
        """The UTF-8 bytes the extrapolation sweep scores: those of the held-out targets,
        heldout[1:] (every protocol and eval length scores each of them exactly once), so
        bits per byte = total nats / (ln 2 * heldout_bytes(heldout))."""
        return self.bytes_of(heldout[1:])

    def bytes_per_token(self, split: str = "test") -> float:
        """The mean UTF-8 bytes per token of a whole split (1 for the byte tokenizer)."""
        return self.split_bytes[split] / max(1, len(self.tokens[split]))

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
        usable = whole_windows(min(num_tokens, len(test) - 1), max_length)
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
