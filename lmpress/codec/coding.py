"""The range coder: tokens coded under exact integer frequencies (``exact.arithmetic.frequencies``).

The coder is constriction's range coder (32-bit words, 24-bit probabilities). It meets the model through numbers
that are integers on every machine: constriction's categorical model is handed the floats c_v = f_v − 1, which
sum to exactly 2**24 − V, so its quantiser scales them by exactly 1 and codes with exactly the frequencies f_v.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch
from torch import Tensor

from ..exact import kernels
from ..exact.arithmetic import PRECISION_BITS, TOTAL

_FAMILY = constriction.stream.model.Categorical(perfect=False)


def max_tokens(stream_bytes: int, vocab: int) -> int:
    """The most tokens a range-coded stream of ``stream_bytes`` can hold: each costs at least
    −log2((2**24 − V + 1) / 2**24) bits, and the coder never writes fewer bits than the code length (64 bits of
    slack). Bounds a decoder's work by the bytes it was given, whatever a chunk table claims."""
    return math.floor((8 * stream_bytes + 64) / -math.log2((TOTAL - vocab + 1) / TOTAL))


def code_length_bits(freqs: Tensor, tokens: Tensor) -> Tensor:
    """Exact code length −log2(f / 2**24) of each row's token, in bits (binary64)."""
    f = freqs.gather(1, tokens.view(-1, 1).to(freqs.device))[:, 0].double()
    return PRECISION_BITS - torch.log2(f)


def _counts(freqs: Tensor) -> np.ndarray:
    """What constriction's model is given: f − 1, as binary64 (integers, exactly), in C order (constriction
    reads the buffer's rows as if it were)."""
    return kernels.counts(freqs.cpu())


class TokenEncoder:
    """Range-codes tokens, one after another, into one stream.

    A range coder's step depends only on the coded symbol's interval [L, L + f) of the 2**24 total, so the
    encoder needs no whole distributions: it codes the middle symbol of the three-symbol model
    [L, f, 2**24 − L − f] (or the first or last, at the ends), which writes exactly the bits that coding the
    token under its full distribution writes; the decoder, which must search, uses the full rows.
    """

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, left: np.ndarray, width: np.ndarray) -> None:
        """Append symbols given by their intervals [left, left + width) of the cumulative frequencies."""
        left, width = np.asarray(left, dtype=np.int64), np.asarray(width, dtype=np.int64)
        right = TOTAL - left - width
        # Three counts summing to 2**24 − 3 (each symbol gets count + 1); an empty side borrows from the other.
        first, last = left == 0, right == 0
        counts = np.stack([left - 1, width - 1, right - 1], axis=1)
        counts[first] = np.stack([width[first] - 1, np.zeros(first.sum(), np.int64), right[first] - 2], axis=1)
        counts[last] = np.stack([left[last] - 2, np.zeros(last.sum(), np.int64), width[last] - 1], axis=1)
        symbols = np.where(first, 0, np.where(last, 2, 1)).astype(np.int32)
        self._coder.encode(symbols, _FAMILY, counts.astype(np.float64))

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class TokenDecoder:
    """Inverse of ``TokenEncoder``: fed the same frequency rows, returns the same tokens."""

    def __init__(self, payload: bytes) -> None:
        if len(payload) % 4:
            raise ValueError("range-coded stream is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, freqs: Tensor) -> np.ndarray:
        return self._coder.decode(_FAMILY, _counts(freqs)).astype(np.int64)
