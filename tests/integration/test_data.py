"""Corpora through `datasets`, splits, fingerprints, and the offline message."""

import os
import subprocess
import sys

import numpy as np
import pytest

from poslab.data import StdlibCorpus, TextFilesCorpus, TokenDataModule
from poslab.data.corpora import CorpusUnavailableError, HubCorpus, split_by_hash


def test_text_files_load_through_datasets_and_split_deterministically(text_corpus, tmp_path):
    corpus = TextFilesCorpus(train=str(text_corpus / "*.txt"), cache_dir=str(tmp_path / "cache"))
    again = TextFilesCorpus(train=[str(text_corpus / "doc_*.txt")], cache_dir=str(tmp_path / "cache"))
    assert corpus.files == again.files
    assert all(corpus.files[s] for s in ("train", "validation", "test"))
    loaded = corpus.load()
    assert [len(loaded[s]) for s in ("train", "validation", "test")] == [len(corpus.files[s]) for s in corpus.files]
    first = sorted(corpus.files["train"])[0]
    assert open(first).read() in set(loaded["train"]["text"])  # one document per file, verbatim


def test_datamodule_tokenizes_bytes_with_document_separators(text_corpus, tmp_path):
    dm = TokenDataModule(TextFilesCorpus(train=str(text_corpus / "*.txt"), cache_dir=str(tmp_path / "c")), context=16)
    dm.setup()
    expected = sum(os.path.getsize(f) + 1 for f in dm.corpus.files["train"])  # +1: the NUL separator
    assert len(dm.tokens["train"]) == expected
    assert dm.tokens["train"].dtype == np.uint8
    assert (dm.tokens["train"] == 0).sum() == len(dm.corpus.files["train"])
    assert dm.fingerprint["tokens"]["train"] == expected


def test_fingerprint_changes_with_content(text_corpus, tmp_path):
    before = TextFilesCorpus(train=str(text_corpus / "*.txt")).fingerprint()
    (text_corpus / "doc_00.txt").write_text("changed")
    after = TextFilesCorpus(train=str(text_corpus / "*.txt")).fingerprint()
    assert before["sha256"] != after["sha256"]
    assert before["files"] == after["files"]


def test_split_by_hash_is_independent_of_other_files():
    keys = [f"file_{i}.py" for i in range(200)]
    full = split_by_hash(keys, 0.1, 0.1)
    part = split_by_hash(keys[:50], 0.1, 0.1)
    for split in full:
        assert set(part[split]) <= set(full[split])
    assert 5 <= len(full["test"]) <= 40
    few = split_by_hash(["a.txt", "b.txt", "c.txt"], 0.05, 0.05)
    assert all(len(few[split]) == 1 for split in few)  # every split gets a file when there are three


def test_stdlib_corpus_fingerprint():
    corpus = StdlibCorpus()
    fp = corpus.fingerprint()
    assert fp["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert sum(fp["num_files"].values()) > 100 and fp["bytes"] > 1_000_000
    assert any(name.endswith("os.py") for files in fp["files"].values() for name in files)
    assert not any("/test/" in f"/{name}" for files in fp["files"].values() for name in files)
    assert StdlibCorpus().files == corpus.files


def test_bad_text_files_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.corpus.train: no file matches"):
        TextFilesCorpus(train=str(tmp_path / "missing/*.txt"))
    (tmp_path / "one.txt").write_text("x")
    with pytest.raises(ValueError, match="too few to split"):
        TextFilesCorpus(train=str(tmp_path / "one.txt"))
    with pytest.raises(ValueError, match="data.corpus.sample_by"):
        TextFilesCorpus(train=str(tmp_path / "one.txt"), sample_by="sentence")


def test_context_longer_than_the_data_is_refused(text_corpus):
    dm = TokenDataModule(TextFilesCorpus(train=str(text_corpus / "*.txt")), context=10**7)
    with pytest.raises(ValueError, match="data.context=10000000 is longer than the training split"):
        dm.setup()


def test_hub_corpus_offline_fails_at_once(monkeypatch):
    # nothing listens on port 9 of this machine: the same answer as a machine with no route to the hub
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CorpusUnavailableError, match="HF_HUB_OFFLINE=1 reuses it"):
        HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1").load()


def test_hub_corpus_with_hub_offline_and_no_cache(tmp_path):
    code = (
        "from poslab.data.corpora import HubCorpus, CorpusUnavailableError\n"
        f"try:\n    HubCorpus('Salesforce/wikitext', 'wikitext-103-raw-v1', cache_dir={str(tmp_path)!r}).load()\n"
        "except CorpusUnavailableError as e:\n    print('CLEAR:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CLEAR: data: cannot load 'Salesforce/wikitext/wikitext-103-raw-v1'" in out.stdout, out.stderr[-2000:]
