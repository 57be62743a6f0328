"""Where text comes from. Every corpus goes through `datasets`, so loading, caching and
fingerprinting are one code path from the embedded default to WikiText-103.

A corpus returns a `datasets.DatasetDict` with splits train / validation / test and a "text"
column, plus a JSON-able fingerprint that says exactly which text that was.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import socket
import sys
import sysconfig
from pathlib import Path
from urllib.parse import urlparse

SPLITS = ("train", "validation", "test")


class CorpusUnavailableError(RuntimeError):
    """The corpus cannot be loaded here (offline, missing files); the message says what to do."""


def _hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key: assigns items to splits independently of their order,
    so adding a file never moves another file to a different split."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def _check_fractions(validation_fraction: float, test_fraction: float, owner: str) -> None:
    for key, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{owner}.{key} must be in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(f"{owner}: validation_fraction + test_fraction must be below 1")


def split_by_hash(keys: list[str], validation_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Assign each key to train / validation / test by a hash of the key alone. A held-out split
    that comes out empty (few keys) takes the train key with the smallest hash, so every split
    has at least one item whenever there are three keys."""
    fraction = {key: _hash_fraction(key) for key in keys}
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for key in keys:
        u = fraction[key]
        name = "test" if u < test_fraction else "validation" if u < test_fraction + validation_fraction else "train"
        splits[name].append(key)
    for name in ("test", "validation"):
        if not splits[name] and len(splits["train"]) > 1:
            key = min(splits["train"], key=fraction.get)
            splits["train"].remove(key)
            splits[name].append(key)
    return splits


def _load_text(data_files: dict[str, list[str]], sample_by: str, cache_dir: str | None):
    import datasets

    return datasets.load_dataset(
        "text", data_files=data_files, sample_by=sample_by, cache_dir=cache_dir, keep_linebreaks=True
    )


class Corpus:
    """Base class. `separator` is appended to every row before tokenizing: a document boundary
    marker for one-document-per-row corpora, nothing for corpora whose rows are lines."""

    name = "corpus"
    separator = "\0"

    def load(self):
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError


class TextFilesCorpus(Corpus):
    """The user's own text files, through `datasets.load_dataset("text", ...)`.

    Give `train` alone (a glob or a list of globs) and its files are split by a hash of each
    file's path; or give `train`, `validation` and `test` explicitly.
    """

    name = "text_files"

    def __init__(
        self,
        train: str | list[str],
        validation: str | list[str] | None = None,
        test: str | list[str] | None = None,
        sample_by: str = "document",
        validation_fraction: float = 0.05,
        test_fraction: float = 0.05,
        cache_dir: str | None = None,
    ):
        if sample_by not in ("document", "line", "paragraph"):
            raise ValueError(f"data.corpus.sample_by must be one of document, line, paragraph; got {sample_by!r}")
        if (validation is None) != (test is None):
            raise ValueError("data.corpus: give both validation and test files, or neither (then train is split)")
        _check_fractions(validation_fraction, test_fraction, "data.corpus")
        self.sample_by = sample_by
        self.separator = "\0" if sample_by == "document" else "\n"
        self.cache_dir = cache_dir
        patterns = {"train": train, "validation": validation, "test": test}
        found = {name: self._expand(name, p) for name, p in patterns.items() if p is not None}
        if validation is None:
            # hash paths relative to their common folder: the split must not depend on where the corpus sits
            root = Path(os.path.commonpath(found["train"])) if len(found["train"]) > 1 else None
            by_name = split_by_hash(
                [str(Path(f).relative_to(root)) if root else f for f in found["train"]],
                validation_fraction,
                test_fraction,
            )
            self.files = {split: [str(root / rel) if root else rel for rel in rels] for split, rels in by_name.items()}
            empty = [name for name, files in self.files.items() if not files]
            if empty:
                raise ValueError(
                    f"data.corpus.train: {len(found['train'])} file(s) are too few to split by file "
                    f"(no file landed in {', '.join(empty)}); give validation and test files explicitly"
                )
        else:
            self.files = found

    @staticmethod
    def _expand(split: str, patterns: str | list[str]) -> list[str]:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        matches = (f for p in patterns for f in glob.glob(os.path.expanduser(p), recursive=True))
        files = sorted({str(Path(f).resolve()) for f in matches})
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise ValueError(f"data.corpus.{split}: no file matches {patterns}")
        return files

    def load(self):
        return _load_text(self.files, self.sample_by, self.cache_dir)

    def _root(self) -> Path:
        all_files = [f for files in self.files.values() for f in files]
        return Path(os.path.commonpath(all_files)) if len(all_files) > 1 else Path(all_files[0]).parent

    def fingerprint(self) -> dict:
        root = self._root()
        digest = hashlib.sha256()
        total_bytes = 0
        listing = {}
        for split in SPLITS:
            listing[split] = [str(Path(f).relative_to(root)) for f in self.files[split]]
            for path, rel in zip(self.files[split], listing[split], strict=True):
                data = Path(path).read_bytes()
                total_bytes += len(data)
                digest.update(f"{split}\0{rel}\0{len(data)}\0".encode())
                digest.update(data)
        return {
            "corpus": self.name,
            "root": str(root),
            "num_files": {split: len(files) for split, files in listing.items()},
            "bytes": total_bytes,
            "sha256": digest.hexdigest(),
            "files": listing,
        }


class StdlibCorpus(TextFilesCorpus):
    """The embedded default: the Python standard library's own source, read from the running
    interpreter, one document per file. Needs no network and no download; its fingerprint
    records the Python version, because another version is another corpus."""

    name = "python_stdlib"
    # tests, vendored packages and bytecode are not the library's own prose-like source
    excluded_dirs = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")

    def __init__(self, validation_fraction: float = 0.05, test_fraction: float = 0.05, cache_dir: str | None = None):
        _check_fractions(validation_fraction, test_fraction, "data.corpus")
        self.root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        files = sorted(
            p for p in self.root.rglob("*.py") if not set(p.relative_to(self.root).parts) & set(self.excluded_dirs)
        )
        if not files:
            raise CorpusUnavailableError(f"no standard-library sources found under {self.root}")
        by_name = split_by_hash([str(p.relative_to(self.root)) for p in files], validation_fraction, test_fraction)
        self.files = {split: [str(self.root / rel) for rel in rels] for split, rels in by_name.items()}
        self.sample_by = "document"
        self.separator = "\0"
        self.cache_dir = cache_dir

    def _root(self) -> Path:
        return self.root

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "python": platform.python_version(), "implementation": sys.implementation.name}


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the hub, instead of `datasets`' long retry loop."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class HubCorpus(Corpus):
    """A dataset on the Hugging Face hub, e.g. WikiText-103 (rows are lines)."""

    separator = ""

    def __init__(self, path: str, name: str | None = None, text_column: str = "text", cache_dir: str | None = None):
        self.path = path
        self.config_name = name
        self.text_column = text_column
        self.cache_dir = cache_dir
        self.name = f"{path}/{name}" if name else path

    def _offline_help(self, why: str) -> str:
        return (
            f"data: cannot load {self.name!r} from the Hugging Face hub ({why}). Run once on a machine "
            f"that reaches the hub to fill the cache (then HF_HUB_OFFLINE=1 reuses it), or train on local "
            f'files with data=text_files "data.corpus.train=/path/to/*.txt"'
        )

    def load(self):
        import datasets

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if not offline and not hub_reachable(endpoint):
            raise CorpusUnavailableError(self._offline_help(f"{endpoint} is unreachable"))
        try:
            loaded = datasets.load_dataset(self.path, self.config_name, cache_dir=self.cache_dir)
        except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
            if offline:
                why = f"HF_HUB_OFFLINE=1 and no cached copy: {error}"
                raise CorpusUnavailableError(self._offline_help(why)) from error
            raise
        missing = [s for s in SPLITS if s not in loaded]
        if missing:
            raise CorpusUnavailableError(f"data: {self.name!r} has no {', '.join(missing)} split(s)")
        if self.text_column != "text":
            loaded = loaded.rename_column(self.text_column, "text")
        return loaded.select_columns(["text"])

    def fingerprint(self) -> dict:
        return {"corpus": self.name, "source": "huggingface-hub", "path": self.path, "name": self.config_name}
