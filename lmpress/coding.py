"""Entropy coding of tokens under a model's predicted distribution.

The model side (``probabilities``) and the coder side (``TokenEncoder`` /
``TokenDecoder``) meet only through float32 probability rows. constriction
quantises each row to 24-bit fixed point (every token keeps a nonzero
probability, so anything can be coded) and drives a range coder with 32-bit
words. Quantisation is deterministic Rust code, so equal rows give equal bits.
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

PRECISION_BITS = 24  # constriction's default range coder: 24-bit probabilities, 32-bit words
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax of float32 logits [B, V]: the exact input the coder quantises."""
    return torch.softmax(logits.float(), dim=-1).numpy()


def code_length_bits(probs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Ideal code length −log2 p(token) of each row's token, in bits."""
    p = probs[np.arange(len(tokens)), tokens].astype(np.float64)
    return -np.log2(np.maximum(p, np.finfo(np.float64).tiny))


class TokenEncoder:
    """Range-codes the tokens of all rows of a batch, step after step, into one stream."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, tokens: np.ndarray, probs: np.ndarray) -> None:
        """Append ``tokens[i]`` under distribution ``probs[i]`` for each i, in order."""
        self._coder.encode(np.ascontiguousarray(tokens, dtype=np.int32), _FAMILY, probs)

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class TokenDecoder:
    """Inverse of ``TokenEncoder``: fed the same probability rows, returns the same tokens."""

    def __init__(self, payload: bytes) -> None:
        if len(payload) % 4:
            raise ValueError("range-coded stream is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        return self._coder.decode(_FAMILY, probs).astype(np.int64)
