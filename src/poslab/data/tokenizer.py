"""Tokenizers: bytes (the default), a pretrained byte-level BPE such as GPT-2's, and a byte-level
BPE trained on the training split with `tokenizers`.

Every tokenizer here is lossless on UTF-8 text and knows how many UTF-8 bytes each token stands
for (`token_bytes`), so a loss in nats per token converts to bits per byte,
bpb = total nats / (ln 2 * bytes), and runs with different tokenizers compare on one scale.

`identity()` is what the token cache keys on: two tokenizers with the same identity give the
same ids for every text (a trained BPE's identity includes the hash of its merges).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from poslab.data.corpora import CorpusUnavailableError, hub_offline, hub_reachable


class TokenizerUnavailableError(CorpusUnavailableError):
    """The tokenizer cannot be loaded here (offline, no cached file); the message is one line."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id below vocab_size."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} does not fit in 32 bits")


class Tokenizer:
    """The interface the DataModule uses. `vocab_size` is the model's vocabulary (every id is
    below it); `prepare` loads or trains whatever the tokenizer needs before `encode`."""

    name = "tokenizer"
    vocab_size: int

    def prepare(self, train_texts: Callable[[], Iterable[str]], store, source: dict | None) -> None:
        """Ready the tokenizer. `train_texts()` yields the training split's text (only a trained
        tokenizer calls it); `store` is the TokenCache, for files a tokenizer keeps beside the
        tokens; `source` identifies the corpus (what a trained tokenizer's cache key needs)."""

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int64: how many UTF-8 bytes each id stands for (0 for unused ids)."""
        raise NotImplementedError

    def identity(self) -> dict:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


class ByteTokenizer(Tokenizer):
    """A token is a UTF-8 byte: any text, any language, any source code, no vocabulary file; bits
    per byte is the loss / ln 2."""

    name = "bytes"
    vocab_size = 256

    def __init__(self, vocab_size: int = 256):
        if vocab_size != 256:
            raise ValueError(f"data.tokenizer.vocab_size={vocab_size}: the byte tokenizer's vocabulary is 256")

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)

    def identity(self) -> dict:
        return {"name": "bytes"}


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (as `tokenizers`' ByteLevel uses it):
    a byte-level token's string has one character per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    stand_in, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_in[chr(byte)] = byte
        else:
            stand_in[chr(256 + extra)] = byte
            extra += 1
    return stand_in


class _ByteLevelBPE(Tokenizer):
    """A `tokenizers.Tokenizer` whose model is a byte-level BPE (GPT-2's scheme)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._tokenizer = None  # tokenizers.Tokenizer, set by prepare
        self._sha256: str | None = None

    def _set(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = HFTokenizer.from_str(tokenizer_json)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > self.vocab_size:
            raise ValueError(
                f"data.tokenizer.vocab_size={self.vocab_size} is smaller than the {self.name} tokenizer's "
                f"vocabulary of {size}; set data.tokenizer.vocab_size={size} or more"
            )
        self._tokenizer = tokenizer
        self._sha256 = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
        self.__dict__.pop("token_bytes", None)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise RuntimeError(f"the {self.name} tokenizer is not ready: the DataModule's setup() prepares it")
        return self._tokenizer

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=self.dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # fast: no offsets
        return [np.asarray(e.ids, dtype=self.dtype) for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer.json (e.g. into a run folder; data.tokenizer.path reads it back)."""
        Path(path).write_text(self.tokenizer.to_str(), encoding="utf-8")

    @functools.cached_property
    def token_bytes(self) -> np.ndarray:
        alphabet = _byte_level_alphabet()
        added = {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items()}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if i in added:  # matched verbatim in the text, e.g. GPT-2's <|endoftext|>
                lengths[i] = len(added[i].encode("utf-8"))
            elif all(c in alphabet for c in token):
                lengths[i] = len(token)
            else:
                raise ValueError(f"the {self.name} tokenizer is not byte-level: token {token!r} is not made of bytes")
        return lengths


class PretrainedTokenizer(_ByteLevelBPE):
    """A published byte-level BPE (GPT-2's by default): `tokenizer.json` from the Hugging Face hub,
    through the hub's own cache, or from `path` on disk. Offline with no cached copy it fails at
    once, in one line (no retry loop)."""

    def __init__(
        self,
        name: str = "gpt2",
        repo_id: str = "openai-community/gpt2",
        filename: str = "tokenizer.json",
        revision: str | None = None,
        path: str | None = None,
        vocab_size: int = 50257,
    ):
        super().__init__(vocab_size)
        self.name = name
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision
        self.path = path

    def _locate(self) -> str:
        if self.path:
            if not os.path.isfile(os.path.expanduser(self.path)):
                raise TokenizerUnavailableError(f"data.tokenizer.path={self.path}: no such file")
            return os.path.expanduser(self.path)
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo_id, self.filename, revision=self.revision)
        if isinstance(cached, str):
            return cached
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if hub_offline() or not hub_reachable(endpoint):
            why = "HF_HUB_OFFLINE=1" if hub_offline() else f"{endpoint} is unreachable"
            raise TokenizerUnavailableError(
                f"data.tokenizer: cannot download the {self.name} tokenizer ({self.repo_id}/{self.filename}: {why}, "
                "and the Hugging Face cache has no copy); run once where the hub is reachable, give "
                "data.tokenizer.path=/path/to/tokenizer.json, or use data/tokenizer=bytes or data/tokenizer=bpe"
            )
        try:
            return hf_hub_download(self.repo_id, self.filename, revision=self.revision)
        except Exception as error:  # noqa: BLE001 - one line, whatever the hub client raised
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise TokenizerUnavailableError(
                f"data.tokenizer: cannot download {self.repo_id}/{self.filename}: {first}"
            ) from error

    def prepare(self, train_texts, store, source) -> None:
        if self._tokenizer is None:
            self._set(Path(self._locate()).read_text(encoding="utf-8"))

    def identity(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "sha256": self._sha256}


class BPETokenizer(_ByteLevelBPE):
    """A byte-level BPE trained with `tokenizers` on the training split: no download, works
    offline. The trained tokenizer is kept in the token cache under a key of the training text
    and these settings, so a second run loads it instead of training; the tokens are keyed by
    its hash. `path` loads a saved tokenizer.json instead (e.g. one another run trained)."""

    name = "bpe"

    def __init__(
        self,
        vocab_size: int = 4096,
        min_frequency: int = 2,
        max_training_bytes: int | None = None,
        path: str | None = None,
    ):
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(f"data.tokenizer.vocab_size={vocab_size}: a byte-level BPE needs at least the 256 bytes")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"data.tokenizer.min_frequency={min_frequency} must be a positive integer")
        if max_training_bytes is not None and (not isinstance(max_training_bytes, int) or max_training_bytes <= 0):
            raise ValueError(f"data.tokenizer.max_training_bytes={max_training_bytes} must be a positive integer")
        super().__init__(vocab_size)
        self.min_frequency = min_frequency
        self.max_training_bytes = max_training_bytes
        self.path = path

    def training_identity(self) -> dict:
        import tokenizers

        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "min_frequency": self.min_frequency,
            "max_training_bytes": self.max_training_bytes,
            "tokenizers": tokenizers.__version__,  # another trainer version may merge differently
        }

    def prepare(self, train_texts, store, source) -> None:
        if self._tokenizer is not None:
            return
        if self.path:
            if not os.path.isfile(os.path.expanduser(self.path)):
                raise ValueError(f"data.tokenizer.path={self.path}: no such file")
            self._set(Path(os.path.expanduser(self.path)).read_text(encoding="utf-8"))
            return
        key = {"kind": "bpe-tokenizer", "source": source, "split": "train", **self.training_identity()}
        saved = store.read_text(key, suffix=".tokenizer.json")
        if saved is None:
            saved = self.train(train_texts())
            store.write_text(key, saved, suffix=".tokenizer.json")
        self._set(saved)

    def train(self, texts: Iterable[str]) -> str:
        """Train on texts; returns the tokenizer as JSON (and sets it)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.vocab_size,
            min_frequency=self.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator(self._capped(texts), trainer=trainer)
        saved = tokenizer.to_str()
        self._set(saved)
        return saved

    def _capped(self, texts: Iterable[str]) -> Iterator[str]:
        budget = self.max_training_bytes
        for text in texts:
            if budget is not None:
                if budget <= 0:
                    return
                data = text.encode("utf-8")
                if len(data) > budget:
                    text = data[:budget].decode("utf-8", errors="ignore")
                budget -= len(data)
            yield text

    def identity(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "sha256": self._sha256}
