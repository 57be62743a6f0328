"""Tokenized splits on disk, memory-mapped: tokenization runs once per (corpus, revision, split,
tokenizer), and the next run starts at once.

An entry's name is a hash of everything that determines its tokens (`key` below: the corpus's
identity, i.e. a content hash for local files or the resolved commit for a hub dataset, the
split, the separator and the tokenizer's identity, a trained BPE's merges hash included), so a
changed input gets a new entry and never reads a stale one. An entry is two files:

    <hash>.bin    the token ids, raw, in the tokenizer's dtype (np.memmap reads them)
    <hash>.json   what they are: the key, dtype, number of tokens, UTF-8 bytes of the text

Both are written to a temporary name and renamed into place, the .json last: an entry without
its .json, or whose .bin is not the size the .json says, does not exist. A killed run therefore
leaves no half entry (at most a temporary file that nothing reads), and two runs writing the
same entry at once both end with a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Bump when the layout or the tokenization procedure changes: old entries are then never read.
FORMAT = 1


def default_cache_root(cache_dir: str | None) -> Path:
    """Where poslab keeps its files: cache_dir (paths.data_cache_dir), else `datasets`' cache."""
    if cache_dir:
        return Path(os.path.expanduser(str(cache_dir)))
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def key_hash(key: dict) -> str:
    """A stable name for a JSON-able key."""
    canonical = json.dumps({"format": FORMAT, **key}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def write_atomically(path: Path, write) -> None:
    """write(file) into a temporary file beside path, then rename it to path; on any failure
    (KeyboardInterrupt included) the temporary file is removed and path is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class TokenFile:
    tokens: np.ndarray  # read-only np.memmap
    num_bytes: int  # UTF-8 bytes of the text these tokens encode
    path: Path


class TokenCache:
    def __init__(self, root: str | Path):
        self.root = Path(root) / "poslab_tokens"

    def _paths(self, key: dict) -> tuple[Path, Path]:
        name = key_hash(key)
        return self.root / f"{name}.bin", self.root / f"{name}.json"

    def get(self, key: dict) -> TokenFile | None:
        """The entry for key, memory-mapped, or None if there is no whole one."""
        data_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            dtype = np.dtype(meta["dtype"])
            if data_path.stat().st_size != meta["num_tokens"] * dtype.itemsize:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta["num_tokens"] == 0:  # np.memmap cannot map an empty file
            tokens = np.zeros(0, dtype=dtype)
        else:
            tokens = np.memmap(data_path, dtype=dtype, mode="r", shape=(meta["num_tokens"],))
        return TokenFile(tokens, int(meta["num_bytes"]), data_path)

    def put(self, key: dict, pieces: Iterable[tuple[np.ndarray, int]], dtype: np.dtype) -> TokenFile:
        """Write the tokens of `pieces` ((ids, UTF-8 bytes of their text) in order) as the entry
        for key, atomically; returns it memory-mapped."""
        data_path, meta_path = self._paths(key)
        counts = {"num_tokens": 0, "num_bytes": 0}

        def write_tokens(file):
            for ids, num_bytes in pieces:
                ids = np.asarray(ids)
                if ids.size and int(ids.max()) > np.iinfo(dtype).max:
                    raise ValueError(f"token id {int(ids.max())} does not fit in {dtype}")
                file.write(ids.astype(dtype, copy=False).tobytes())
                counts["num_tokens"] += int(ids.size)
                counts["num_bytes"] += int(num_bytes)

        write_atomically(data_path, write_tokens)
        meta = {"key": key, "format": FORMAT, "dtype": np.dtype(dtype).str, **counts}
        write_atomically(meta_path, lambda f: f.write(json.dumps(meta, sort_keys=True, default=str).encode()))
        entry = self.get(key)
        if entry is None:  # another process replaced it in between with a different size: cannot happen for one key
            raise RuntimeError(f"the token cache entry {data_path} vanished right after it was written")
        return entry

    # small text files kept beside the tokens (a trained tokenizer)
    def read_text(self, key: dict, suffix: str = ".txt") -> str | None:
        path = self.root / f"{key_hash(key)}{suffix}"
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            return None

    def write_text(self, key: dict, text: str, suffix: str = ".txt") -> Path:
        path = self.root / f"{key_hash(key)}{suffix}"
        write_atomically(path, lambda f: f.write(text.encode("utf-8")))
        return path
