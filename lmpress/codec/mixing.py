"""A match model mixed with the language model's frequencies, in exact integer arithmetic (``match-v1``).

The language model sees one chunk's context; the match model sees every token already coded in the segment,
in every chunk. It predicts the token that followed the most recent earlier occurrence of the last
``MIN_MATCH`` tokens, and keeps predicting along that occurrence while it is right. How far to trust it is
learned as coding goes: an adaptive probability that the prediction is right, per (match length, the language
model's own probability of the predicted token), averaged with that probability, gives the predicted token
its share of the 2**24 total and scales every other token's share to fill the rest (``mixed_intervals``,
``mixed_frequencies``).

Everything is integers and Python dicts, updated in the stream's order, so the encoder, which knows every
token in advance, and the decoder, which learns them step by step, compute the same numbers on any machine.
The stream's order (``segments``): groups of chunks one after another, in each group step by step. The models are
updated at the end of each step, for every row of the step in table order, so all rows of a step are
predicted from the same state: a row never sees another row's token of the same step.
``docs/FORMAT.md`` specifies the same in words.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
from numba import njit
from torch import Tensor

from ..exact import kernels
from ..exact.arithmetic import TOTAL

Count = TypeVar("Count", int, np.ndarray)  # one row's count, or an array of rows' counts

NAME = "match-v1"
MIN_MATCH = 3  # tokens of context a match needs
MAX_MATCH = 64  # match lengths are counted up to this
LENGTH_BUCKETS = 23  # lengths 0..15 each, then 16..63 in eights, then 64
SHARE_BUCKETS = 52  # the predicted token's LM frequency by half-octaves: 2 · bit_length + next bit
RATE_LIMIT = 30  # an estimate moves by 1/(n + 1.5) of its error after n updates, down to 1/31.5
P_ONE = 1 << 16  # probabilities are in 1/65536
P_MIN, P_MAX = 16, P_ONE - 16


@njit(cache=True)
def length_bucket(length: int) -> int:  # pragma: no cover (compiled; also called from Python)
    return length if length < 16 else 16 + (length - 16) // 8


@njit(cache=True)
def share_bucket(f: int) -> int:  # pragma: no cover (compiled; also called from Python)
    """Half-octave of a frequency 1 ≤ f ≤ 2**24: 2 · bit_length(f), plus the bit below the top one."""
    n = 0
    while (f >> n) > 0:
        n += 1
    return 2 * n + (((f >> (n - 2)) & 1) if n >= 2 else 0)


class MatchModel:
    """Tokens coded so far, per row, and where the current context of each row occurred before."""

    def __init__(self, rows: int) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(rows)]  # the segment's LM chunks, in table order
        self.last: dict[tuple[int, ...], tuple[int, int]] = {}  # MIN_MATCH tokens -> (row, index) that followed
        self.pointer: list[tuple[int, int] | None] = [None] * rows
        self.length = [0] * rows

    def predict(self, row: int) -> tuple[int, int]:
        """(predicted token, match length), or (-1, 0) when the row has no usable match."""
        at = self.pointer[row]
        if at is None or at[1] >= len(self.tokens[at[0]]):
            return -1, 0
        return self.tokens[at[0]][at[1]], self.length[row]

    def update(self, row: int, token: int, predicted: int) -> None:
        """Append ``row``'s coded ``token``; ``predicted`` is what ``predict`` said at the start of the step
        (asked again now, it could differ: a row this step has already extended may be the match's source)."""
        length = self.length[row]
        own = self.tokens[row]
        own.append(token)
        if (at := self.pointer[row]) is not None and predicted == token:  # (a prediction has a pointer)
            source, index = at
            self.pointer[row], self.length[row] = (source, index + 1), min(length + 1, MAX_MATCH)
        else:
            self.pointer[row], self.length[row] = None, 0
            if len(own) >= MIN_MATCH and (found := self.last.get(tuple(own[-MIN_MATCH:]))) is not None:
                self.pointer[row], self.length[row] = found, self._agreeing(own, *found)
        if len(own) > MIN_MATCH:
            self.last[tuple(own[-MIN_MATCH - 1 : -1])] = (row, len(own) - 1)

    def _agreeing(self, own: list[int], source: int, index: int) -> int:
        """How many tokens before ``index`` in ``source`` equal the last ones of ``own`` (up to MAX_MATCH)."""
        other, n = self.tokens[source], 0
        while n < MAX_MATCH and n < index and n < len(own) and other[index - 1 - n] == own[-1 - n]:
            n += 1
        return n


class HitEstimate:
    """Adaptive probability that the match model's token is the one coded, per (length, LM share) bucket."""

    def __init__(self) -> None:
        lengths, shares = np.arange(LENGTH_BUCKETS), np.arange(SHARE_BUCKETS)
        bits, half = shares // 2, shares % 2
        start = np.clip(((5 + 2 * half) << bits) >> 11, P_MIN, P_MAX)  # the LM's own share, mid-bucket
        self.p = [[int(v) for v in start] for _ in lengths]
        self.n = [[0] * SHARE_BUCKETS for _ in lengths]

    def probability(self, length: int, f: int) -> int:
        """The bucket's estimate averaged with the LM's own share f / 2**24 (the bucket only knows f's
        half-octave): measured better than either alone."""
        return min(max((self.p[length_bucket(length)][share_bucket(f)] + (f >> 8)) // 2, P_MIN), P_MAX)

    def update(self, length: int, f: int, hit: bool) -> None:
        i, j = length_bucket(length), share_bucket(f)
        p, n = self.p[i][j], self.n[i][j]
        p += (((P_ONE if hit else 0) - p) * 2) // (2 * n + 3)
        self.p[i][j] = min(max(p, P_MIN), P_MAX)
        self.n[i][j] = min(n + 1, RATE_LIMIT)


def _scaled(vocab: int, f_predicted: Count, p: Count) -> tuple[Count, Count, Count, Count]:
    """(cp, A, B, R): the predicted token's count cp = f − 1, its new count A, the others' new total B and old
    total R (counts are frequencies minus one, summing to 2**24 − V)."""
    s = TOTAL - vocab
    cp = f_predicted - 1
    a = (p * s) >> 16
    return cp, a, s - a, s - cp


def mixed_intervals(
    left: np.ndarray,
    width: np.ndarray,
    tokens: np.ndarray,
    predicted: np.ndarray,
    f_predicted: np.ndarray,
    p: np.ndarray,
    vocab: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each coded token's interval under the mixed frequencies, from its interval under the LM's (``left``,
    ``width``), the predicted token and its LM frequency, and the hit probability ``p`` (1/65536). Rows whose
    ``predicted`` is -1, or whose LM gives every count to the predicted token, keep the LM's interval."""
    cp, a, b, r = _scaled(vocab, f_predicted, p)
    use = (predicted >= 0) & (r > 0)
    r = np.where(use, r, 1)
    hit, after = tokens == predicted, tokens > predicted
    counts_before = left - tokens - np.where(after, cp, 0)  # counts of the other tokens below this one
    low = (counts_before * b) // r
    high = ((counts_before + width - 1) * b) // r
    new_left = np.where(hit, tokens + low, tokens - after + low + np.where(after, a + 1, 0))
    new_width = np.where(hit, a + 1, 1 + high - low)
    return np.where(use, new_left, left), np.where(use, new_width, width)


def mixed_frequencies(freqs: np.ndarray, predicted: int, p: int) -> np.ndarray:
    """A row's mixed frequencies (int64 [V], summing to 2**24) from the LM's: the definition that
    ``mixed_intervals`` computes token by token."""
    vocab = len(freqs)
    cp, a, b, r = _scaled(vocab, int(freqs[predicted]), p)
    if r == 0:
        return freqs
    counts = freqs - 1
    counts[predicted] = 0
    below = np.zeros(vocab + 1, np.int64)
    np.cumsum(counts, out=below[1:])
    x = np.arange(vocab + 1)
    after = x > predicted
    cumulative = x - after + (below * b) // r + np.where(after, a + 1, 0)
    return np.diff(cumulative)


def stream_steps(lengths: list[int], group: int) -> Iterator[tuple[int, list[int]]]:
    """The stream's order: each step t of each group, with the rows (numbered in table order) coded in it."""
    for first in range(0, len(lengths), group):
        members = range(first, min(first + group, len(lengths)))
        for t in range(max(lengths[r] for r in members)):
            yield t, [r for r in members if lengths[r] > t]


class Plan:
    """What an encoder, which knows every token, needs to mix ``rows`` (a segment's LM chunks in table order,
    decoded ``group`` at a time): the match model's predictions first, then, while the LM scores the rows, its
    frequency of each predicted token (``f_predicted``), then the mixed intervals."""

    def __init__(self, rows: list[list[int]], group: int):
        self.rows, self.group = rows, group
        self.predicted, self.length = predictions(rows, group)
        self.f_predicted = [np.zeros(len(r), np.int64) for r in rows]

    def record(self, row: int, at: slice, freqs: Tensor) -> None:
        """The model's frequencies [n, V] at positions ``at`` of ``row``: those of the predicted tokens."""
        guesses = torch.from_numpy(np.maximum(self.predicted[row][at], 0)).to(freqs.device)
        self.f_predicted[row][at] = freqs.gather(1, guesses[:, None])[:, 0].cpu().numpy()

    def mixed(
        self, left: list[np.ndarray], width: list[np.ndarray], vocab: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every token's interval under the mixed frequencies, from its interval under the LM's."""
        p = hit_probabilities(self.rows, self.group, self.predicted, self.length, self.f_predicted)
        out = [
            mixed_intervals(lo, w, np.asarray(ids, np.int64), guess, f, pr, vocab)
            for lo, w, ids, guess, f, pr in zip(left, width, self.rows, self.predicted, self.f_predicted, p)
        ]
        return [lo for lo, _ in out], [w for _, w in out]


def predictions(rows: list[list[int]], group: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The match model's prediction (-1: none) and match length at every token of ``rows``, the LM chunks of a
    segment in table order decoded ``group`` at a time, as the decoder will compute them."""
    model = MatchModel(len(rows))
    predicted = [np.full(len(r), -1, np.int64) for r in rows]
    length = [np.zeros(len(r), np.int64) for r in rows]
    for t, active in stream_steps([len(r) for r in rows], group):
        for r in active:
            predicted[r][t], length[r][t] = model.predict(r)
        for r in active:
            model.update(r, rows[r][t], int(predicted[r][t]))
    return predicted, length


def hit_probabilities(
    rows: list[list[int]],
    group: int,
    predicted: list[np.ndarray],
    length: list[np.ndarray],
    f_predicted: list[np.ndarray],
) -> list[np.ndarray]:
    """``HitEstimate``'s probability at every token that has a prediction (0 elsewhere), in the stream's order."""
    estimate = HitEstimate()
    p = [np.zeros(len(r), np.int64) for r in rows]
    for t, active in stream_steps([len(r) for r in rows], group):
        live = [r for r in active if predicted[r][t] >= 0]
        for r in live:
            p[r][t] = estimate.probability(int(length[r][t]), int(f_predicted[r][t]))
        for r in live:
            estimate.update(int(length[r][t]), int(f_predicted[r][t]), rows[r][t] == predicted[r][t])
    return p


class MatchMixer:
    """The decoder's side: the match model and hit estimate of one segment, step by step."""

    def __init__(self, rows: int):
        self.model, self.estimate = MatchModel(rows), HitEstimate()
        self.step: list[tuple[int, int, int]] = []  # (predicted, length, its LM frequency) of each active row

    def frequencies(self, rows: list[int], freqs: np.ndarray) -> np.ndarray:
        """The rows' mixed frequencies (int64 [R, V]), from the LM's."""
        self.step = []
        for i, row in enumerate(rows):
            predicted, length = self.model.predict(row)
            self.step.append((predicted, length, int(freqs[i, predicted]) if predicted >= 0 else 0))
        p = [self.estimate.probability(length, f) if predicted >= 0 else 0 for predicted, length, f in self.step]
        return kernels.mixed_frequencies(freqs, np.array([s[0] for s in self.step]), np.array(p))

    def update(self, rows: list[int], tokens: np.ndarray) -> None:
        for row, token, (predicted, length, f) in zip(rows, tokens.tolist(), self.step):
            if predicted >= 0:
                self.estimate.update(length, f, token == predicted)
            self.model.update(row, token, predicted)
