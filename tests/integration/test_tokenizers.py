"""Tokenizers (bytes, a trained BPE, a pretrained BPE), the token cache, bits-per-byte
ingredients, and hub corpora read from local folders through the same code path. Offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import poslab.data.datamodule as datamodule_module
from helpers import TINY, compose_config
from poslab.data import (
    BPETokenizer,
    ByteTokenizer,
    HubCorpus,
    PG19Corpus,
    PretrainedTokenizer,
    TextFilesCorpus,
    TokenCache,
    TokenDataModule,
)
from poslab.data.tokenizer import token_dtype


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


UNICODE = "naïve café, 日本語 — ok\n"  # 31 bytes, counted in test_bits_per_byte_ingredients


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """Explicit train / validation / test files (no hash split), with non-ASCII text."""
    folder = tmp_path / "corpus"
    for split in ("train", "validation", "test"):
        (folder / split).mkdir(parents=True)
    source = Path(__file__).read_text()
    for i in range(6):
        (folder / "train" / f"doc_{i}.txt").write_text(f"# doc {i} {UNICODE}" + source[: 4000 * (1 + i % 3)])
    (folder / "validation" / "v.txt").write_text(UNICODE + source[:3000])
    (folder / "test" / "t.txt").write_text(UNICODE)
    return folder


def make_corpus(folder: Path, cache: Path) -> TextFilesCorpus:
    return TextFilesCorpus(
        train=str(folder / "train" / "*.txt"),
        validation=str(folder / "validation" / "*.txt"),
        test=str(folder / "test" / "*.txt"),
        cache_dir=str(cache),
    )


@pytest.fixture
def count_calls(monkeypatch):
    """Counts corpus loads and tokenizer batches, to show what a cached run does not do."""
    calls = {"load": 0, "encode": 0, "train": 0}

    def counted(cls, name, key):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls[key] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    counted(TextFilesCorpus, "load", "load")
    counted(ByteTokenizer, "encode_batch", "encode")
    counted(BPETokenizer, "encode_batch", "encode")
    counted(BPETokenizer, "train", "train")
    return calls


def test_token_cache_is_written_once_and_reused(corpus_dir, tmp_path, count_calls):
    cache = tmp_path / "cache"
    first = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    first.setup()
    assert count_calls["load"] == 1 and count_calls["encode"] == 3  # one batch per split
    second = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    second.setup()
    assert count_calls == {"load": 1, "encode": 3, "train": 0}  # the second run neither loads nor tokenizes
    for split in ("train", "validation", "test"):
        assert isinstance(second.tokens[split], np.memmap)
        np.testing.assert_array_equal(second.tokens[split], first.tokens[split])
    assert second.fingerprint == first.fingerprint
    assert len(list((cache / "poslab_tokens").glob("*.bin"))) == 3


def test_changed_file_content_gets_a_new_cache(corpus_dir, tmp_path, count_calls):
    cache = tmp_path / "cache"
    before = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    before.setup()
    (corpus_dir / "test" / "t.txt").write_text(UNICODE.upper())  # same size, other bytes
    after = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    after.setup()
    assert count_calls["load"] == 2
    assert after.tokenizer.decode(after.tokens["test"]) == UNICODE.upper() + "\0"
    assert before.fingerprint["token_files"]["test"] != after.fingerprint["token_files"]["test"]
    # every split is keyed by the whole corpus: a changed test file is a new corpus
    assert before.fingerprint["token_files"]["train"] != after.fingerprint["token_files"]["train"]


class Killed(BaseException):
    """Stands for Ctrl-C or a signal arriving in the middle of a write."""


def test_an_interrupted_write_leaves_no_cache(corpus_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(datamodule_module, "BATCH_CHARACTERS", 2000)  # several batches per split
    calls = {"n": 0}
    original = ByteTokenizer.encode_batch

    def dies_on_the_second_batch(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return original(self, texts)

    monkeypatch.setattr(ByteTokenizer, "encode_batch", dies_on_the_second_batch)
    with pytest.raises(Killed):
        TokenDataModule(make_corpus(corpus_dir, cache), context=16).setup()
    assert not any((cache / "poslab_tokens").iterdir())  # no entry, no temporary file
    monkeypatch.setattr(ByteTokenizer, "encode_batch", original)
    dm = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    dm.setup()
    expected = sum(len(f.read_bytes()) + 1 for f in (corpus_dir / "train").glob("*.txt"))
    assert len(dm.tokens["train"]) == expected


def test_a_killed_process_leaves_no_cache(tmp_path):
    """SIGKILL in the middle of writing tokens: the entry does not exist, and a later write makes a
    whole one."""
    marker = tmp_path / "half-written"
    code = (
        "import pathlib, time\n"
        "import numpy as np\n"
        "from poslab.data.token_cache import TokenCache\n"
        "def pieces():\n"
        "    yield np.arange(200, dtype=np.uint8), 200\n"
        f"    pathlib.Path({str(marker)!r}).write_text('x')\n"
        "    time.sleep(120)\n"
        "    yield np.arange(200, dtype=np.uint8), 200\n"
        f"TokenCache({str(tmp_path)!r}).put({{'k': 1}}, pieces(), np.dtype(np.uint8))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    cache = TokenCache(tmp_path)
    assert cache.get({"k": 1}) is None
    assert not list(cache.root.glob("*.bin")) and not list(cache.root.glob("*.json"))
    entry = cache.put({"k": 1}, [(np.arange(5, dtype=np.uint8), 5)], np.dtype(np.uint8))
    assert entry.tokens.tolist() == [0, 1, 2, 3, 4] and entry.num_bytes == 5
    assert cache.get({"k": 1}).tokens.tolist() == [0, 1, 2, 3, 4]


def test_a_truncated_entry_is_not_read(tmp_path):
    cache = TokenCache(tmp_path)
    entry = cache.put({"k": 2}, [(np.arange(10, dtype=np.uint16), 20)], np.dtype(np.uint16))
    with open(entry.path, "r+b") as file:
        file.truncate(6)
    assert cache.get({"k": 2}) is None


def test_trained_bpe_works_offline_round_trips_and_is_cached(corpus_dir, tmp_path, count_calls):
    cache = tmp_path / "cache"
    dm = TokenDataModule(make_corpus(corpus_dir, cache), context=16, tokenizer=BPETokenizer(vocab_size=300))
    dm.setup()
    assert count_calls["train"] == 1
    assert dm.vocab_size == 300 and dm.tokens["train"].dtype == np.uint16
    assert int(max(t.max() for t in dm.tokens.values())) < 300
    assert len(dm.tokens["train"]) < dm.split_bytes["train"]  # merges were learned and used
    # the held-out text comes back exactly, document separator included
    assert dm.tokenizer.decode(dm.tokens["test"]) == UNICODE + "\0"
    text = (corpus_dir / "validation" / "v.txt").read_text()
    assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text
    identity = dm.fingerprint["tokenizer"]
    assert identity["name"] == "bpe" and identity["vocab_size"] == 300 and len(identity["sha256"]) == 64
    (saved,) = (cache / "poslab_tokens").glob("*.tokenizer.json")  # kept beside the tokens
    assert json.loads(saved.read_text())["model"]["type"] == "BPE"

    again = TokenDataModule(make_corpus(corpus_dir, cache), context=16, tokenizer=BPETokenizer(vocab_size=300))
    again.setup()
    assert count_calls["train"] == 1 and count_calls["load"] == 1  # neither trained nor tokenized again
    assert again.fingerprint["tokenizer"] == identity
    np.testing.assert_array_equal(again.tokens["train"], dm.tokens["train"])

    larger = TokenDataModule(make_corpus(corpus_dir, cache), context=16, tokenizer=BPETokenizer(vocab_size=320))
    larger.setup()
    assert count_calls["train"] == 2
    assert larger.fingerprint["token_files"]["train"] != dm.fingerprint["token_files"]["train"]


def test_bits_per_byte_ingredients(corpus_dir, tmp_path):
    # "naïve café, 日本語 — ok\n": 15 one-byte characters (n a v e, c a f, the comma, four spaces,
    # o k, the newline), ï and é 2 bytes each, 日本語 3 x 3, the em dash 3: 15 + 4 + 9 + 3 = 31
    # bytes; the document separator NUL makes 32
    assert len(UNICODE.encode("utf-8")) == 31
    cache = tmp_path / "cache"
    for tokenizer in (ByteTokenizer(), BPETokenizer(vocab_size=300)):
        dm = TokenDataModule(make_corpus(corpus_dir, cache), context=16, tokenizer=tokenizer)
        dm.setup()
        test = dm.tokens["test"]
        assert dm.split_bytes["test"] == 32 == dm.fingerprint["text_bytes"]["test"]
        assert dm.bytes_of(test) == 32  # the tokens stand for exactly the text's bytes
        assert dm.bytes_per_token("test") == pytest.approx(32 / len(test))
        heldout = dm.heldout_tokens(num_tokens=10**6, max_length=1)  # every test token
        assert len(heldout) == len(test)
        # the sweep scores heldout[1:]: every byte but those of the first token
        assert dm.heldout_bytes(heldout) == 32 - int(tokenizer.token_bytes[test[0]])
        # any split: the tokens stand for exactly the text's bytes (per-file sizes + separators)
        expected = sum(len(f.read_bytes()) + 1 for f in (corpus_dir / "train").glob("*.txt"))
        assert dm.split_bytes["train"] == expected == dm.bytes_of(dm.tokens["train"])
    assert dm.bytes_per_token("test") > 1  # the BPE's tokens are longer than a byte
    byte_level = TokenDataModule(make_corpus(corpus_dir, cache), context=16)
    byte_level.setup()
    assert byte_level.heldout_bytes(byte_level.heldout_tokens(10**6, 1)) == 31  # all but the first byte


def test_pretrained_tokenizer_from_a_file_counts_special_tokens_as_their_bytes(corpus_dir, tmp_path):
    """The GPT-2 code path without the hub: a byte-level BPE with an added <|endoftext|>."""
    from tokenizers import Tokenizer as HFTokenizer

    bpe = BPETokenizer(vocab_size=280)
    bpe.train([(corpus_dir / "validation" / "v.txt").read_text()])
    with_special = HFTokenizer.from_str(bpe.tokenizer.to_str())
    with_special.add_special_tokens(["<|endoftext|>"])
    path = tmp_path / "tokenizer.json"
    path.write_text(with_special.to_str())
    tokenizer = PretrainedTokenizer(name="mine", path=str(path), vocab_size=300)
    tokenizer.prepare(None, None, None)
    text = "one<|endoftext|>two é"
    ids = tokenizer.encode(text)
    special = with_special.token_to_id("<|endoftext|>")
    assert special in ids.tolist() and tokenizer.token_bytes[special] == len("<|endoftext|>")
    assert int(tokenizer.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.identity()["name"] == "mine" and len(tokenizer.identity()["sha256"]) == 64
    too_small = PretrainedTokenizer(name="mine", path=str(path), vocab_size=100)
    with pytest.raises(ValueError, match=r"vocab_size=100 is smaller than the mine tokenizer's vocabulary of \d+"):
        too_small.prepare(None, None, None)


def test_gpt2_offline_fails_at_once_in_one_line(tmp_path):
    code = (
        "import time\n"
        "from poslab.data import PretrainedTokenizer\n"
        "from poslab.data.corpora import CorpusUnavailableError\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    PretrainedTokenizer().prepare(None, None, None)\n"
        "except CorpusUnavailableError as error:\n"
        "    print(f'{time.monotonic() - start:.3f}')\n"
        "    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr[-2000:]
    assert float(lines[0]) < 1.0  # no retry loop, no network wait
    assert lines[1].startswith("data.tokenizer: cannot download the gpt2 tokenizer (openai-community/gpt2")
    assert "HF_HUB_OFFLINE=1" in lines[1] and "data.tokenizer.path=" in lines[1]


def test_gpt2_offline_stops_a_training_run_in_one_line(tmp_path, text_corpus):
    args = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt", *TINY, "data/tokenizer=gpt2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "POSLAB_LOG_DIR": str(tmp_path / "o")}
    out = subprocess.run(
        [sys.executable, "-m", "poslab", "train", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "cannot download the gpt2 tokenizer" in line]
    assert len(lines) == 1, out.stdout + out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_model_vocabulary_follows_the_tokenizer(tmp_path, text_corpus):
    default = compose_config("train", [], tmp_path / "default")
    assert default.data.tokenizer._target_ == "poslab.data.ByteTokenizer" and default.model.net.vocab_size == 256
    base = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt"]
    for choice, size in (("bytes", 256), ("gpt2", 50257), ("bpe", 4096)):
        cfg = compose_config("train", [*base, f"data/tokenizer={choice}"], tmp_path / "run")
        assert cfg.data.vocab_size == cfg.model.net.vocab_size == cfg.data.tokenizer.vocab_size == size
    cfg = compose_config("train", [*base, "data/tokenizer=bpe", "data.tokenizer.vocab_size=1000"], tmp_path / "r")
    assert cfg.model.net.vocab_size == 1000


def test_settings_that_cannot_work_are_refused(text_corpus):
    corpus = TextFilesCorpus(train=str(text_corpus / "*.txt"))
    with pytest.raises(ValueError, match=r"data.vocab_size=256 does not match the bpe tokenizer's 512"):
        TokenDataModule(corpus, context=16, vocab_size=256, tokenizer=BPETokenizer(vocab_size=512))
    # data.passkey_mix with a BPE is refused with the rest of the config (tests/integration/test_failures.py)
    with pytest.raises(ValueError, match="data.tokenizer.vocab_size=100: a byte-level BPE needs at least"):
        BPETokenizer(vocab_size=100)
    with pytest.raises(ValueError, match="the byte tokenizer's vocabulary is 256"):
        ByteTokenizer(vocab_size=300)
    assert token_dtype(256) == np.uint8 and token_dtype(257) == np.uint16 and token_dtype(50257) == np.uint16
    assert token_dtype(70000) == np.uint32


def test_a_bpe_run_trains_and_scores(tmp_path, text_corpus):
    from poslab.commands.train import train

    args = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt", "data/tokenizer=bpe"]
    cfg = compose_config(
        "train", [*args, "data.tokenizer.vocab_size=320", *TINY, "debug=fast_dev_run"], tmp_path / "run"
    )
    results = train(cfg)
    assert results["status"] == "ok"
    assert results["data"]["tokenizer"]["name"] == "bpe" and results["config"]["model"]["net"]["vocab_size"] == 320
    rows = [row for row in results["extrapolation"] if row["status"] == "ok"]
    assert rows and all(row["tokens_scored"] == rows[0]["tokens_scored"] for row in rows)


# Hub corpora, read from local folders laid out like hub repositories (data/<split>-*.parquet)


def write_hub_folder(root: Path, books: dict[str, list[str]]) -> Path:
    (root / "data").mkdir(parents=True)
    for split, texts in books.items():
        table = pa.table({"title": [f"book {i}" for i in range(len(texts))], "text": texts})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


BOOKS = {
    split: [f"{split} book {i}: ünïcode line\n" * (40 + i) for i in range(count)]
    for split, count in (("train", 12), ("validation", 3), ("test", 4))
}


def test_pg19_reads_the_first_num_books_and_caches_them(tmp_path, monkeypatch):
    folder = write_hub_folder(tmp_path / "pg19", BOOKS)
    cache = tmp_path / "cache"
    reads = {"n": 0}
    original = PG19Corpus._read_splits

    def counted(self, hub_splits):
        reads["n"] += 1
        return original(self, hub_splits)

    monkeypatch.setattr(PG19Corpus, "_read_splits", counted)
    dm = TokenDataModule(PG19Corpus(path=str(folder), num_books=5, cache_dir=str(cache)), context=16)
    dm.setup()
    assert dm.split_bytes["train"] == sum(len(book.encode()) + 1 for book in BOOKS["train"][:5])
    assert dm.split_bytes["test"] == sum(len(book.encode()) + 1 for book in BOOKS["test"])
    assert (np.asarray(dm.tokens["train"]) == 0).sum() == 5  # one NUL separator per book
    again = TokenDataModule(PG19Corpus(path=str(folder), num_books=5, cache_dir=str(cache)), context=16)
    again.setup()
    assert reads["n"] == 1
    more = TokenDataModule(PG19Corpus(path=str(folder), num_books=7, cache_dir=str(cache)), context=16)
    more.setup()
    assert reads["n"] == 2 and (np.asarray(more.tokens["train"]) == 0).sum() == 7


def test_hub_corpus_splits_and_the_enwik8_cut(tmp_path):
    folder = write_hub_folder(tmp_path / "stories", {"train": BOOKS["train"], "validation": BOOKS["validation"]})
    halves = HubCorpus(
        path=str(folder),
        rows="documents",
        splits={"train": "train", "validation": "validation[:2]", "test": "validation[2:]"},
        cache_dir=str(tmp_path / "cache"),
    )
    loaded = halves.load()
    assert loaded["validation"]["text"] == BOOKS["validation"][:2] and loaded["test"]["text"] == BOOKS["validation"][2:]
    assert halves.separator == "\0"

    cut = HubCorpus(
        path=str(folder), rows="lines", splits={"train": "train"}, heldout_bytes=301, cache_dir=str(tmp_path / "c")
    )
    parts = {split: data["text"][0].encode() for split, data in cut.load().items()}
    whole = "".join(BOOKS["train"]).encode()
    assert parts["train"] + parts["validation"] + parts["test"] == whole
    # a cut inside a 2-byte character moves to the next character
    assert len(parts["test"]) in (300, 301) and len(parts["validation"]) in (300, 301, 302)
    with pytest.raises(Exception, match="heldout_bytes=100000: .* has only"):
        HubCorpus(path=str(folder), splits={"train": "train"}, heldout_bytes=100000, cache_dir=str(tmp_path)).load()


def test_hub_revision_is_resolved_recorded_and_reused_offline(tmp_path, monkeypatch):
    """Online, a branch is resolved to its commit and recorded; offline, the record is used and a
    cached run neither loads nor tokenizes; a new commit on the hub means new tokens."""
    import huggingface_hub

    import poslab.data.corpora as corpora

    source = write_hub_folder(tmp_path / "hub", BOOKS)
    commit = {"sha": "a" * 40}
    reads = []

    class FakeInfo:
        def __init__(self, sha):
            self.sha = sha

    monkeypatch.setattr(corpora, "hub_reachable", lambda endpoint, timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, *a, **k: FakeInfo(commit["sha"]))

    def read_local(self, hub_splits):  # the hub's files, read at the resolved commit
        import datasets

        reads.append(self.resolved_commit())
        return datasets.load_dataset(str(source), split=hub_splits, cache_dir=str(tmp_path / "datasets"))

    monkeypatch.setattr(HubCorpus, "_read_splits", read_local)
    cache = tmp_path / "cache"

    def run():
        dm = TokenDataModule(HubCorpus(path="someone/books", rows="documents", cache_dir=str(cache)), context=16)
        dm.setup()
        return dm

    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = run()
    assert reads == ["a" * 40] and online.fingerprint["commit"] == "a" * 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = run()
    assert reads == ["a" * 40]  # the recorded commit's tokens: nothing loaded
    assert offline.fingerprint["token_files"] == online.fingerprint["token_files"]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    commit["sha"] = "b" * 40
    newer = run()
    assert reads == ["a" * 40, "b" * 40]
    assert newer.fingerprint["token_files"]["train"] != online.fingerprint["token_files"]["train"]


def test_shipped_hub_configs_build_offline(tmp_path):
    """Each hub corpus's config builds its datamodule without touching the network, and the model's
    vocabulary follows the tokenizer."""
    from hydra.utils import instantiate

    for name in ("wikitext103", "pg19", "tinystories", "enwik8"):
        cfg = compose_config("train", [f"data={name}", "data/tokenizer=bpe"], tmp_path / name)
        dm = instantiate(cfg.data)
        assert isinstance(dm.tokenizer, BPETokenizer) and dm.vocab_size == cfg.model.net.vocab_size


# The shipped hub configs against local folders laid out as the hub lists those repositories'
# files (their file trees and dataset cards): the same config keys, read through the same code.


def write_parquet(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def setup_shipped(name: str, folder: Path, tmp_path: Path, *overrides: str) -> TokenDataModule:
    from hydra.utils import instantiate

    cfg = compose_config(
        "train", [f"data={name}", f"data.corpus.path={folder}", "data.context=16", *overrides], tmp_path / f"{name}-run"
    )
    dm = instantiate(cfg.data, cache_dir=str(tmp_path / f"{name}-tokens"))
    dm.setup()
    return dm


def decoded(dm: TokenDataModule, split: str) -> str:
    return bytes(np.asarray(dm.tokens[split]).astype(np.uint8)).decode()


def test_wikitext103_reads_its_config_from_the_dataset_card(tmp_path):
    """Salesforce/wikitext: one folder per config (wikitext-103-raw-v1/train-00000-of-00002.parquet,
    ...), the configs declared in README.md; rows are lines, joined as they are."""
    folder = tmp_path / "wikitext"
    card = ["---", "configs:"]
    lines = {}
    for config in ("wikitext-2-raw-v1", "wikitext-103-raw-v1"):  # the one asked for is not the first
        card += [f"- config_name: {config}", "  data_files:"]
        for split, shards in (("train", 2), ("validation", 1), ("test", 1)):
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
            rows = [f" = {config} {split} {i} = \n" if i % 3 == 0 else f" línea {i} of {split} .\n" for i in range(12)]
            lines[(config, split)] = rows
            for shard in range(shards):
                part = rows[shard * len(rows) // shards : (shard + 1) * len(rows) // shards]
                write_parquet(folder / config / f"{split}-{shard:05d}-of-{shards:05d}.parquet", {"text": part})
    (folder / "README.md").write_text("\n".join([*card, "---", "# wikitext", ""]))

    dm = setup_shipped("wikitext103", folder, tmp_path)
    for split in ("train", "validation", "test"):
        assert decoded(dm, split) == "".join(lines[("wikitext-103-raw-v1", split)]), split


def test_enwik8_reads_the_raw_config_of_the_parquet_export_and_cuts_the_last_bytes(tmp_path):
    """LTCB/enwik8 at refs/convert/parquet: enwik8/train/0000.parquet (a row per line) and
    enwik8-raw/train/0000.parquet (the whole file as one row). data_dir picks the raw one; the
    last 2 x heldout_bytes bytes are validation and test."""
    folder = tmp_path / "enwik8"
    whole = "".join(f"<page><title>Ärticle {i}</title>\n<text>body {i}</text></page>\n" for i in range(60))
    write_parquet(folder / "enwik8-raw" / "train" / "0000.parquet", {"text": [whole]})
    write_parquet(folder / "enwik8" / "train" / "0000.parquet", {"text": [line for line in whole.splitlines() if line]})

    dm = setup_shipped("enwik8", folder, tmp_path, "data.corpus.heldout_bytes=500")
    data = whole.encode()
    assert (decoded(dm, "train") + decoded(dm, "validation") + decoded(dm, "test")).encode() == data
    assert len(decoded(dm, "test").encode()) in (499, 500)  # a cut inside "Ä" moves to the next character
    assert len(decoded(dm, "validation").encode()) in (499, 500, 501)


def test_pg19_reads_the_text_column_of_the_parquet_copy(tmp_path):
    """emozilla/pg19: data/<split>-00000-of-000NN-<hash>.parquet with PG-19's columns
    (short_book_title, publication_date, url, text); one book per row, NUL after each."""
    folder = tmp_path / "pg19"
    books = {
        split: [f"{split} book {i}\nIt was a dark night.\n" * (3 + i) for i in range(n)]
        for split, n in (("train", 6), ("validation", 2), ("test", 3))
    }
    for split, texts in books.items():
        write_parquet(
            folder / "data" / f"{split}-00000-of-00001-29a571947c0b5ccc.parquet",
            {
                "short_book_title": [f"Book {i}" for i in range(len(texts))],
                "publication_date": [1900 + i for i in range(len(texts))],
                "url": [f"http://www.gutenberg.org/ebooks/{i}" for i in range(len(texts))],
                "text": texts,
            },
        )
    dm = setup_shipped("pg19", folder, tmp_path, "data.corpus.num_books=4")
    assert decoded(dm, "train") == "".join(book + "\0" for book in books["train"][:4])
    assert decoded(dm, "validation") == "".join(book + "\0" for book in books["validation"])
