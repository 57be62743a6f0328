"""Where text comes from. Every corpus goes through `datasets`, so loading, caching and
fingerprinting are one code path from the embedded default to WikiText-103.

A corpus returns a `datasets.DatasetDict` with splits train / validation / test and a "text"
column, plus a JSON-able fingerprint that says exactly which text that was.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import platform
import re
import socket
import sys
import sysconfig
from pathlib import Path
from urllib.parse import urlparse

SPLITS = ("train", "validation", "test")

log = logging.getLogger(__name__)


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
    """Local text files through `datasets`, without its progress bars: reading local files takes a
    second, and its "Downloading data" bar for them says nothing a user needs."""
    import datasets

    shown = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(
            "text", data_files=data_files, sample_by=sample_by, cache_dir=cache_dir, keep_linebreaks=True
        )
    finally:
        if shown:
            datasets.enable_progress_bars()


class Corpus:
    """Base class. `separator` is appended to every row before tokenizing: a document boundary
    marker for one-document-per-row corpora, nothing for corpora whose rows are lines."""

    name = "corpus"
    separator = "\0"

    def load(self):
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def identity(self) -> dict | None:
        """What determines the text of every split, known before loading (the token cache's key),
        or None when only the loaded data can tell (then `loaded_identity` is used)."""
        return None

    def loaded_identity(self, loaded) -> dict:
        """The identity of loaded splits: `datasets`' own fingerprint of each."""
        return {"corpus": self.name, "datasets_fingerprint": {split: loaded[split]._fingerprint for split in SPLITS}}


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
            folders = [p for p in patterns if os.path.isdir(os.path.expanduser(p))]
            hint = (
                f"; for the files in a folder give a glob, e.g. '{folders[0].rstrip('/')}/**/*.txt'" if folders else ""
            )
            raise ValueError(f"data.corpus.{split}: no file matches {patterns}{hint}")
        return files

    def load(self):
        return _load_text(self.files, self.sample_by, self.cache_dir)

    def _root(self) -> Path:
        all_files = [f for files in self.files.values() for f in files]
        return Path(os.path.commonpath(all_files)) if len(all_files) > 1 else Path(all_files[0]).parent

    def identity(self) -> dict:
        # the content hash covers every file's bytes, relative name and split
        return {"corpus": self.name, "sha256": self.fingerprint()["sha256"], "sample_by": self.sample_by}

    def fingerprint(self) -> dict:
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._read_fingerprint()
        return self._fingerprint

    def _read_fingerprint(self) -> dict:
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

    def _read_fingerprint(self) -> dict:
        return {
            **super()._read_fingerprint(),
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
        }


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the hub, instead of `datasets`' long retry loop."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


_COMMIT = re.compile(r"[0-9a-f]{40}")
ROWS = ("lines", "documents")


class HubCorpus(Corpus):
    """A dataset on the Hugging Face hub, through `datasets` and its cache; or a local folder laid
    out like a hub dataset (e.g. data/train-*.parquet), read through the same code path.

    - `revision`: a commit, branch or tag (null = main). A branch is resolved to its commit when
      the hub is reachable, and the commit is recorded; offline, the last recorded commit is used.
      Data are always loaded at that commit, and the token cache is keyed by it, so new data on
      the hub never meet old tokens. A local folder is identified by a hash of its files.
    - `splits`: this corpus's train / validation / test as the hub's split names, `datasets`'
      slicing included (`validation[:50%]`); default: the same names.
    - `rows`: `lines` (rows are lines of one text, joined as they are: WikiText) or `documents`
      (one document per row, each followed by the NUL document separator).
    - `heldout_bytes`: cut the hub's training split, joined into one text, into train /
      validation / test with the last 2 x heldout_bytes bytes held out (the enwik8 protocol);
      each cut moves forward to the next character boundary.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        revision: str | None = None,
        data_dir: str | None = None,
        text_column: str = "text",
        splits: dict | None = None,
        rows: str = "lines",
        heldout_bytes: int | None = None,
        cache_dir: str | None = None,
    ):
        if rows not in ROWS:
            raise ValueError(f"data.corpus.rows={rows}: allowed: {', '.join(ROWS)}")
        splits = dict(splits or {split: split for split in SPLITS})
        if heldout_bytes is None and set(splits) != set(SPLITS):
            raise ValueError(f"data.corpus.splits must name the hub split of each of {', '.join(SPLITS)}, got {splits}")
        if heldout_bytes is not None and (not isinstance(heldout_bytes, int) or heldout_bytes <= 0):
            raise ValueError(f"data.corpus.heldout_bytes={heldout_bytes} must be a positive integer")
        self.path = path
        self.config_name = name
        self.revision = revision
        self.data_dir = data_dir
        self.text_column = text_column
        self.splits = splits
        self.rows = rows
        self.separator = "" if rows == "lines" else "\0"
        self.heldout_bytes = heldout_bytes
        self.cache_dir = cache_dir
        self.name = f"{path}/{name}" if name else path
        self._commit: str | None = None

    def _offline_help(self, why: str) -> str:
        return (
            f"data: cannot load {self.name!r} from the Hugging Face hub ({why}). Run once on a machine "
            f"that reaches the hub to fill the cache (then HF_HUB_OFFLINE=1 reuses it), or train on local "
            f'files with data=text_files "data.corpus.train=/path/to/*.txt"'
        )

    def _revision_record(self) -> Path:
        from poslab.data.token_cache import default_cache_root, key_hash

        key = key_hash({"kind": "hub-revision", "path": self.path, "revision": self.revision})
        return default_cache_root(self.cache_dir) / "poslab_tokens" / "revisions" / f"{key}.txt"

    def local_folder(self) -> Path | None:
        folder = Path(os.path.expanduser(str(self.path)))
        return folder.resolve() if folder.is_dir() else None

    def _local_sha256(self, folder: Path) -> str:
        """A hash of every file (relative name and bytes) under the folder (or its data_dir)."""
        digest = hashlib.sha256()
        root = folder / self.data_dir if self.data_dir else folder
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            data = path.read_bytes()
            digest.update(f"{relative.as_posix()}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    def resolved_commit(self) -> str | None:
        """The commit the data are read at; None when offline and never resolved on this machine,
        or for a local folder."""
        if self._commit is not None or self.local_folder() is not None:
            return self._commit
        if self.revision and _COMMIT.fullmatch(str(self.revision)):
            self._commit = str(self.revision)
            return self._commit
        record = self._revision_record()
        recorded = record.read_text().strip() if record.is_file() else None
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if hub_offline():
            self._commit = recorded
            return recorded
        if not hub_reachable(endpoint):
            if recorded:
                log.warning("%s is unreachable: reading %s at its last known commit %s", endpoint, self.name, recorded)
                self._commit = recorded
                return recorded
            raise CorpusUnavailableError(self._offline_help(f"{endpoint} is unreachable"))
        from huggingface_hub import HfApi

        try:
            commit = HfApi(endpoint=endpoint).dataset_info(self.path, revision=self.revision, timeout=10).sha
        except Exception as error:  # noqa: BLE001 - one line, whatever the hub client raised
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CorpusUnavailableError(
                f"data: cannot find {self.path!r} at revision {self.revision or 'main'} on the hub: {first}"
            ) from error
        if commit != recorded:
            from poslab.data.token_cache import write_atomically

            write_atomically(record, lambda file: file.write(commit.encode()))
        self._commit = commit
        return commit

    def _settings(self) -> dict:
        return {
            "corpus": self.name,
            "path": self.path,
            "name": self.config_name,
            "revision": self.revision,
            "data_dir": self.data_dir,
            "text_column": self.text_column,
            "splits": self.splits,
            "rows": self.rows,
            "heldout_bytes": self.heldout_bytes,
        }

    def identity(self) -> dict | None:
        folder = self.local_folder()
        if folder is not None:
            return {**self._settings(), "path": str(folder), "sha256": self._local_sha256(folder)}
        commit = self.resolved_commit()
        return None if commit is None else {**self._settings(), "commit": commit}

    def loaded_identity(self, loaded) -> dict:
        return {**self._settings(), "commit": None, **super().loaded_identity(loaded)}

    def _read_splits(self, hub_splits: list[str]) -> list:
        """The hub's splits (slicing included) as `datasets.Dataset`s with a "text" column."""
        import datasets

        local = self.local_folder()
        return datasets.load_dataset(
            str(local) if local else self.path,
            self.config_name,
            revision=None if local else self.resolved_commit() or self.revision,
            data_dir=self.data_dir,
            split=hub_splits,
            cache_dir=self.cache_dir,
        )

    def load(self):
        import datasets

        offline = hub_offline()
        hub_splits = [self.splits["train"]] if self.heldout_bytes else [self.splits[s] for s in SPLITS]
        try:
            parts = self._read_splits(hub_splits)
        except CorpusUnavailableError:
            raise
        except RuntimeError as error:
            if "scripts are no longer supported" in str(error):
                raise CorpusUnavailableError(
                    f"data: {self.name!r} at revision {self.revision or 'main'} is a loading script, which this "
                    "`datasets` no longer runs; point data.corpus.revision at a revision with data files "
                    "(e.g. refs/convert/parquet)"
                ) from error
            raise
        except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            if "Unknown split" in str(error) or "Bad split" in str(error):
                raise CorpusUnavailableError(f"data.corpus.splits={self.splits}: {first}") from error
            if offline:
                why = f"HF_HUB_OFFLINE=1 and no cached copy: {first}"
                raise CorpusUnavailableError(self._offline_help(why)) from error
            raise
        columns = parts[0].column_names
        if self.text_column not in columns:
            raise CorpusUnavailableError(
                f"data.corpus.text_column={self.text_column}: {self.name!r} has the columns {', '.join(columns)}"
            )
        parts = [part.select_columns([self.text_column]) for part in parts]
        if self.text_column != "text":
            parts = [part.rename_column(self.text_column, "text") for part in parts]
        if self.heldout_bytes:
            return datasets.DatasetDict(self._cut(parts[0]))
        return datasets.DatasetDict(dict(zip(SPLITS, parts, strict=True)))

    def _cut(self, source) -> dict:
        import datasets

        data = (self.separator.join(source["text"]) + self.separator).encode("utf-8")
        size, held = len(data), self.heldout_bytes
        if size <= 2 * held:
            raise CorpusUnavailableError(
                f"data.corpus.heldout_bytes={held}: {self.name!r} has only {size} bytes; lower it"
            )

        def boundary(at: int) -> int:  # the next character start at or after byte `at`
            while at < size and data[at] & 0xC0 == 0x80:
                at += 1
            return at

        cuts = [0, boundary(size - 2 * held), boundary(size - held), size]
        texts = [data[a:b].decode("utf-8") for a, b in zip(cuts, cuts[1:], strict=False)]
        return {split: datasets.Dataset.from_dict({"text": [text]}) for split, text in zip(SPLITS, texts, strict=True)}

    def fingerprint(self) -> dict:
        local = self.local_folder()
        if local is not None:
            return {
                "source": "local-folder",
                **self._settings(),
                "path": str(local),
                "sha256": self._local_sha256(local),
            }
        return {"source": "huggingface-hub", **self._settings(), "commit": self._commit}


class PG19Corpus(HubCorpus):
    """PG-19 (Rae et al., 2019, arXiv 1911.05507): books from Project Gutenberg published before
    1919, one book per row. Only the first `num_books` training books are read, streamed from the
    hub (the whole training split is about 11 GB); all validation and test books are kept."""

    def __init__(
        self,
        path: str = "emozilla/pg19",
        revision: str | None = None,
        num_books: int | None = 1000,
        text_column: str = "text",
        cache_dir: str | None = None,
    ):
        if num_books is not None and (not isinstance(num_books, int) or isinstance(num_books, bool) or num_books <= 0):
            raise ValueError(f"data.corpus.num_books={num_books} must be a positive integer, or null for every book")
        super().__init__(path, revision=revision, text_column=text_column, rows="documents", cache_dir=cache_dir)
        self.num_books = num_books

    def _settings(self) -> dict:
        return {**super()._settings(), "num_books": self.num_books}

    def identity(self) -> dict:
        # streamed data have no `datasets` cache to fall back on: offline, the commit must be known
        identity = super().identity()
        if identity is None:
            raise CorpusUnavailableError(self._offline_help("HF_HUB_OFFLINE=1 and never resolved on this machine"))
        return identity

    def _read_splits(self, hub_splits: list[str]) -> list:
        import datasets

        local = self.local_folder()
        if local is not None:
            streams = datasets.load_dataset(str(local), streaming=True)
        else:
            if hub_offline() or self.resolved_commit() is None:
                raise CorpusUnavailableError(self._offline_help("HF_HUB_OFFLINE=1: PG-19 is streamed from the hub"))
            streams = datasets.load_dataset(self.path, revision=self.resolved_commit(), streaming=True)
        parts = []
        for split in hub_splits:
            stream = streams[split].select_columns([self.text_column])
            if split == self.splits["train"] and self.num_books:
                stream = stream.take(self.num_books)
            texts = [row[self.text_column] for row in stream]
            parts.append(datasets.Dataset.from_dict({self.text_column: texts}))
        return parts
