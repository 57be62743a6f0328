"""Corpora, tokenizer and the Lightning DataModule."""

from poslab.data.corpora import Corpus, HubCorpus, StdlibCorpus, TextFilesCorpus
from poslab.data.datamodule import TokenDataModule, Windows
from poslab.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "Corpus", "HubCorpus", "StdlibCorpus", "TextFilesCorpus", "TokenDataModule", "Windows"]
