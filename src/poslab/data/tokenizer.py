"""Byte-level tokenizer: a token is a UTF-8 byte, so bits per byte is loss / ln 2 and any text,
any language, any source code is covered without a vocabulary file."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")
