"""Fixtures, and the tiers: tests/unit (fast, no run of a command), tests/integration (configs
composed, tiny runs, console scripts), tests/e2e (slow, marked `slow`). `make test` runs all but the
slow ones; each test is marked with its tier, so `pytest -m unit` runs the fast ones alone."""

import os
from pathlib import Path

import pytest

from helpers import TINY, compose_config, write_text_corpus

# Tests never wait on the network or write into the user's wandb/HF folders.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items):
    for item in items:
        tier = next((part for part in Path(item.fspath).parts if part in TIERS), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    os.environ["POSLAB_DATA_CACHE"] = str(tmp_path_factory.mktemp("hf_cache"))
    yield


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A small corpus of real text files, enough for tiny models: 30 documents."""
    return write_text_corpus(tmp_path / "corpus")


@pytest.fixture
def train_config(tmp_path, text_corpus):
    def make(*overrides: str):
        base = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt", *TINY, *overrides]
        return compose_config("train", base, tmp_path / "run")

    return make
