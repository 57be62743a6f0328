"""Corpora, tokenizers, the token cache and the Lightning DataModule."""

from poslab.data.corpora import Corpus, HubCorpus, PG19Corpus, StdlibCorpus, TextFilesCorpus
from poslab.data.datamodule import TokenDataModule, Windows
from poslab.data.task_datamodule import TaskDataModule
from poslab.data.token_cache import TokenCache
from poslab.data.tokenizer import BPETokenizer, ByteTokenizer, PretrainedTokenizer, Tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "HubCorpus",
    "PG19Corpus",
    "PretrainedTokenizer",
    "StdlibCorpus",
    "TextFilesCorpus",
    "TokenCache",
    "TaskDataModule",
    "TokenDataModule",
    "Tokenizer",
    "Windows",
]
