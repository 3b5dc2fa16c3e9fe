"""A deterministic, fast stand-in for the MiniLM encoder (the harness, not the model, is
under test): hashed bag of words, L2-normalised."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")


class HashEncoder:
    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.model_id = f"hash-bow-{dim}"
        self.model_calls = 0

    def encode(
        self,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
        kind: str = "passage",
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for n, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
                out[n, h % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.model_calls += len(texts)
        if progress:
            progress(len(texts))
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)

    def encode_passages(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return self.encode(texts, progress)
