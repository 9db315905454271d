"""Context mixing around the language model, in exact integer arithmetic (``cm-v1``).

The language model sees one chunk's context and knows the world's text; the online models see every token
already coded in the segment (and a dictionary's tokens) and learn this file as coding goes:

- the match model of ``match-v1``: the token that followed the last occurrence of the last 3 tokens;
- the column model: the token at the same place in the last line that began with the same 3 tokens (a line
  begins at a token whose bytes hold a newline): the field one record up, in JSON, logs, tables;
- token contexts, each a hashed table (bounded memory) remembering up to ``WAYS`` tokens seen after a context and
  how often: the last 8, 6, 4, 3, 2 and 1 tokens, and the column model's token with the last one.

Each position gets up to ``MAX_CANDIDATES`` candidate tokens: the match model's, the column model's, then the
successors of each context in that order. Every candidate has features (the match length; the column model's
record in this line; the count of the candidate and the total count of each context, in buckets), each crossed
with the language model's own share of the candidate. A weight per feature, learned online, says how many bits to
move the candidate's probability: the mix is log-linear, ``f_c · 2**(Σ weights)`` for the candidates and the
model's frequencies for every other token, scaled back to the coder's 2**24 (``boost_row``). After each step the
weights follow the gradient of the code length (``learn_row``), at a rate that starts fast for a feature seldom
seen.

Everything is integers, updated in the stream's order (``mixing.stream_steps``: rows predicted from the state
of the start of their step, updated in table order at its end), so the encoder, which knows every token in advance,
and the decoder, which learns them step by step, compute the same numbers on any machine. ``docs/FORMAT.md``
specifies it to the last rounding, with known answers.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..exact.arithmetic import TOTAL
from ..exact.kernels import floor_ratio
from . import mixing

NAME = "cm-v1"
ORDERS = (8, 6, 4, 3, 2, 1)  # the token contexts' lengths; the column context comes after them
TABLES = len(ORDERS) + 1
WAYS = 6  # tokens remembered after each context
MAX_CANDIDATES = 8
COUNT_LIMIT = 255  # a successor's count beyond this halves every count of its context
LINE_KEY = 3  # a line's first tokens, which find the line above it
SLOTS = 2 + TABLES  # a candidate's features: the match model's, the column model's, each context's (−1: none)
COUNT_BUCKETS = 7  # counts 0, 1, 2, 3, 4..7, 8..15, 16 and more
CONTEXT_FEATURES = COUNT_BUCKETS * COUNT_BUCKETS  # (the candidate's count, the context's total) buckets
COLUMN_FEATURES = COUNT_BUCKETS * 3  # (agreeing tokens in a row, misses in the line: 0, 1, 2 or more)
SHARE_GROUPS = 7  # the language model's share of a candidate, by four octaves: mixing.share_bucket(f) >> 3
SLOT_SIZES = (mixing.LENGTH_BUCKETS, COLUMN_FEATURES) + (CONTEXT_FEATURES,) * TABLES
SLOT_START = np.cumsum((0,) + SLOT_SIZES[:-1]).astype(np.int64)
FEATURES = sum(SLOT_SIZES) * SHARE_GROUPS

# Weights and scores in 1/65536 bits (base-2 logarithms of a probability's factor).
BIT = 1 << 16
SCORE_LIMIT = 24 * BIT  # a candidate moves by at most 2**±24
WEIGHT_LIMIT = 16 * BIT
RATE_START = 94548  # a feature's n-th update moves its weight by RATE_START · 2 / (2n + 3) · error: 1 nat at first
RATE_FLOOR = 9457  # … and never by less than 0.1 nat (both in 1/65536 bits per unit of error)
UPDATES_LIMIT = 255
BOOST_LIMIT = 1 << 38  # a candidate's boosted weight is capped so that every product below fits 63 bits
# 2**(i/64) in 1/65536, rounded to nearest: the fraction of a boost, to 1/64 bit
POW2 = np.array(
    [
        65536, 66250, 66971, 67700, 68438, 69183, 69936, 70698, 71468, 72246, 73032, 73828, 74632, 75444, 76266,
        77096, 77936, 78785, 79642, 80510, 81386, 82273, 83169, 84074, 84990, 85915, 86851, 87796, 88752, 89719,
        90696, 91684, 92682, 93691, 94711, 95743, 96785, 97839, 98905, 99982, 101070, 102171, 103283, 104408,
        105545, 106694, 107856, 109031, 110218, 111418, 112631, 113858, 115098, 116351, 117618, 118899, 120194,
        121502, 122825, 124163, 125515, 126882, 128263, 129660,
    ],
    np.int64,
)  # fmt: skip

# FNV-1a over token ids (64-bit, wrapping): the hash of a context
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
COLUMN_MARK = np.uint64(1 << 32)  # hashed before the column context's two tokens: not a token id
MIN_TABLE_BITS, MAX_TABLE_BITS = 10, 18  # 2**bits contexts a table (40 bytes each), chosen by the segment's size
# The parts an encoder's ``Plan`` can leave out, to measure what each one gains (benchmarks/ablation.py); an archive
# always has them all.
COMPONENTS = ("match", "column", "contexts")


def table_bits(tokens: int) -> int:
    """Slots (as a power of two) of each table for a segment of ``tokens`` tokens (dictionary included)."""
    return min(max(tokens.bit_length(), MIN_TABLE_BITS), MAX_TABLE_BITS)


@njit(cache=True)
def count_bucket(n):  # pragma: no cover (compiled)
    return n if n < 4 else (4 if n < 8 else (5 if n < 16 else 6))


@njit(cache=True)
def share_group(f):  # pragma: no cover (compiled)
    """The language model's frequency f ≥ 1 by four octaves."""
    return mixing.share_bucket(f) >> 3


@njit(cache=True)
def fnv(h, token):  # pragma: no cover (compiled)
    return (h ^ np.uint64(token)) * FNV_PRIME


@njit(cache=True)
def context_hashes(recent, have, column, out):  # pragma: no cover (compiled)
    """The hash of each context of a row (0: the row has no such context yet), from its last tokens ``recent``
    (newest last; ``have`` of them real) and the column model's token (−1: none)."""
    for j in range(len(ORDERS)):
        k = ORDERS[j]
        h = np.uint64(0)
        if have >= k:
            h = FNV_OFFSET
            for i in range(len(recent) - k, len(recent)):
                h = fnv(h, recent[i])
        out[j] = h
    out[TABLES - 1] = np.uint64(0)
    if column >= 0 and have >= 1:
        out[TABLES - 1] = fnv(fnv(fnv(FNV_OFFSET, COLUMN_MARK), column), recent[len(recent) - 1])


@njit(cache=True)
def slot_and_tag(h, bits):  # pragma: no cover (compiled)
    return np.int64(h >> np.uint64(64 - bits)), np.uint32(h & np.uint64(0xFFFFFFFF)) | np.uint32(1)


@njit(cache=True)
def row_candidates(  # pragma: no cover (compiled)
    tags, successors, counts, bits, hashes, match, length, column, agreement, cands, feats
):
    """A row's candidates (``cands``, −1 after the last) and their features (``feats`` [C, SLOTS], −1: none), from
    its contexts' ``hashes``, the match model's token and length and the column model's token and feature.
    Returns how many."""
    n = 0
    for token in (match, column):
        if token >= 0 and (n == 0 or cands[0] != token):
            cands[n] = token
            n += 1
    slots = np.full(TABLES, -1, np.int64)
    for j in range(TABLES):
        if hashes[j] == 0:
            continue
        slot, tag = slot_and_tag(hashes[j], bits)
        if tags[j, slot] != tag:
            continue
        slots[j] = slot
        taken = np.zeros(WAYS, np.bool_)
        for _ in range(WAYS):  # the ways by count, largest first (ties: the lower way)
            best = -1
            for w in range(WAYS):
                c = counts[j, slot, w]
                if not taken[w] and c > 0 and (best < 0 or c > counts[j, slot, best]):
                    best = w
            if best < 0:
                break
            taken[best] = True
            token = successors[j, slot, best]
            known = False
            for i in range(n):
                known |= cands[i] == token
            if not known and n < MAX_CANDIDATES:
                cands[n] = token
                n += 1
    for i in range(n, MAX_CANDIDATES):
        cands[i] = -1
    for i in range(MAX_CANDIDATES):
        for s in range(SLOTS):
            feats[i, s] = -1
    for i in range(n):
        if cands[i] == match:
            feats[i, 0] = mixing.length_bucket(length)
        if cands[i] == column:
            feats[i, 1] = agreement
        for j in range(TABLES):
            slot = slots[j]
            if slot < 0:
                continue
            seen, total = 0, 0
            for w in range(WAYS):
                total += counts[j, slot, w]
                if successors[j, slot, w] == cands[i] and counts[j, slot, w] > 0:
                    seen = counts[j, slot, w]
            feats[i, 2 + j] = count_bucket(seen) * COUNT_BUCKETS + count_bucket(total)
    return n


@njit(cache=True)
def update_row(tags, successors, counts, bits, hashes, recent, have, token):  # pragma: no cover (compiled)
    """Count ``token`` after each of the row's contexts (``hashes``, as they were when it was predicted), then
    append it to the row's recent tokens. Returns the row's new count of recent tokens."""
    for j in range(TABLES):
        if hashes[j] == 0:
            continue
        slot, tag = slot_and_tag(hashes[j], bits)
        if tags[j, slot] != tag:  # a new context (or another one's slot): forget the old
            tags[j, slot] = tag
            for w in range(WAYS):
                successors[j, slot, w] = -1
                counts[j, slot, w] = 0
        way = -1
        for w in range(WAYS):
            if way < 0 and counts[j, slot, w] > 0 and successors[j, slot, w] == token:
                way = w
        if way >= 0:
            counts[j, slot, way] += 1
            if counts[j, slot, way] > COUNT_LIMIT:
                for w in range(WAYS):
                    counts[j, slot, w] >>= 1
            continue
        for w in range(WAYS):  # a free way, else the first of the smallest count
            if way < 0 or counts[j, slot, w] < counts[j, slot, way]:
                way = w
        successors[j, slot, way] = token
        counts[j, slot, way] = 1
    for i in range(len(recent) - 1):
        recent[i] = recent[i + 1]
    recent[len(recent) - 1] = token
    return min(have + 1, len(recent))


@njit(cache=True)
def feature(slot, value, group):  # pragma: no cover (compiled)
    return (SLOT_START[slot] + value) * SHARE_GROUPS + group


@njit(cache=True)
def boost_row(weights, cands, feats, freqs, n, vocab, boosted):  # pragma: no cover (compiled)
    """The candidates' new counts (``boosted``) under the mix, from their frequencies ``freqs`` under the
    language model. Returns (B, R): every other token's count c_v = f_v − 1 is scaled by B / R."""
    spare = TOTAL - vocab
    e = np.zeros(MAX_CANDIDATES, np.int64)
    total, counted = np.int64(TOTAL), np.int64(0)
    for i in range(n):
        group = share_group(freqs[i])
        score = np.int64(0)
        for s in range(SLOTS):
            if feats[i, s] >= 0:
                score += weights[feature(s, feats[i, s], group)]
        score = min(max(score, -SCORE_LIMIT), SCORE_LIMIT)
        x = freqs[i] * POW2[(score >> 10) & 63]
        shift = (score >> 16) - 16
        e[i] = min(x << shift if shift >= 0 else x >> -shift, BOOST_LIMIT)
        total += e[i] - freqs[i]
        counted += freqs[i] - 1
    given = np.int64(0)
    for i in range(n):
        boosted[i] = e[i] * spare // total
        given += boosted[i]
    rest, others = spare - counted, spare - given
    if rest == 0:  # the model gave every count to the candidates: the first takes what is left
        boosted[0] += others
        return np.int64(0), np.int64(1)
    return others, rest


@njit(cache=True)
def learn_row(weights, updates, cands, feats, freqs, boosted, n, token):  # pragma: no cover (compiled)
    """Move each feature of each candidate along the gradient of the code length of ``token``."""
    for i in range(n):
        group = share_group(freqs[i])
        error = (BIT if cands[i] == token else 0) - ((boosted[i] + 1) >> 8)
        for s in range(SLOTS):
            if feats[i, s] < 0:
                continue
            x = feature(s, feats[i, s], group)
            rate = max(RATE_FLOOR, 2 * RATE_START // (2 * updates[x] + 3))
            weights[x] = min(max(weights[x] + ((error * rate) >> 16), -WEIGHT_LIMIT), WEIGHT_LIMIT)
            updates[x] = min(updates[x] + 1, UPDATES_LIMIT)


@njit(cache=True)
def token_interval(left, width, token, cands, freqs, boosted, n, others, rest):  # pragma: no cover (compiled)
    """The mixed interval of ``token`` from its interval (left, width) under the language model."""
    below = left - token  # the counts of the tokens below it, candidates' included
    lifted = np.int64(0)
    hit = -1
    for i in range(n):
        if cands[i] < token:
            below -= freqs[i] - 1
            lifted += boosted[i]
        elif cands[i] == token:
            hit = i
    start = token + lifted + floor_ratio(below * others, rest)
    if hit >= 0:
        return start, boosted[hit] + 1
    return start, 1 + floor_ratio((below + width - 1) * others, rest) - floor_ratio(below * others, rest)


@njit(parallel=True, cache=True)
def mixed_frequencies(freqs, cands, boosted, n, others, rest, out):  # pragma: no cover (compiled)
    """Every row's mixed frequencies (int64 [R, V], each row summing to 2**24) from the model's ``freqs``."""
    rows, vocab = freqs.shape
    for r in prange(rows):
        order = np.argsort(cands[r, : n[r]])  # the candidates by token, met in that order below
        k = 0
        below, lifted = np.int64(0), np.int64(0)
        last = np.int64(0)  # the cumulative frequency below token u
        for u in range(vocab):
            if k < n[r] and cands[r, order[k]] == u:
                lifted += boosted[r, order[k]]
                k += 1
            else:
                below += freqs[r, u] - 1
            g = u + 1 + lifted + floor_ratio(below * others[r], rest[r])
            out[r, u] = g - last
            last = g


@njit(cache=True)
def mix_stream(  # pragma: no cover (compiled)
    weights, updates, order, starts, cands, feats, freqs, count, tokens, left, width, vocab
):
    """The encoder's mix: tokens in stream order (``order``, steps from ``starts``), their candidates and
    features, the model's intervals (``left``, ``width``, replaced by the mixed ones)."""
    widest = 0
    for s in range(len(starts) - 1):
        widest = max(widest, starts[s + 1] - starts[s])
    boosted = np.zeros((widest, MAX_CANDIDATES), np.int64)  # the candidates' new counts of one step's rows
    for s in range(len(starts) - 1):
        for at in range(starts[s], starts[s + 1]):
            i, b = order[at], boosted[at - starts[s]]
            others, rest = boost_row(weights, cands[i], feats[i], freqs[i], count[i], vocab, b)
            left[i], width[i] = token_interval(
                left[i], width[i], tokens[i], cands[i], freqs[i], b, count[i], others, rest
            )
        for at in range(starts[s], starts[s + 1]):
            i = order[at]
            learn_row(weights, updates, cands[i], feats[i], freqs[i], boosted[at - starts[s]], count[i], tokens[i])


class ColumnModel:
    """The token at the same place in the line above: the last line, in any row, that began with the same
    ``LINE_KEY`` tokens. A line begins at a token whose bytes hold a newline (``newlines``), or at a row's start."""

    def __init__(self, tokens: list[list[int]], newlines: np.ndarray):
        self.tokens, self.newlines = tokens, newlines  # ``tokens``: the match model's, appended to by it
        rows = len(tokens)
        self.start = [0] * rows  # where each row's current line begins
        self.above: list[tuple[int, int] | None] = [None] * rows  # (row, start) of the line above it
        self.run = [0] * rows  # tokens in a row that equalled the line above's
        self.misses = [0] * rows  # tokens of this line that did not
        self.last: dict[tuple[int, ...], tuple[int, int]] = {}  # a line's first tokens -> (row, start)

    def predict(self, row: int) -> tuple[int, int]:
        """(the line above's token at this place, the feature of its record in this line), or (−1, −1)."""
        if (above := self.above[row]) is None:
            return -1, -1
        source, start = above
        at = start + len(self.tokens[row]) - self.start[row]
        if at >= len(self.tokens[source]):
            return -1, -1
        return self.tokens[source][at], count_bucket(self.run[row]) * 3 + min(self.misses[row], 2)

    def update(self, row: int, token: int, predicted: int) -> None:
        """``token`` was appended to ``row``; ``predicted`` is what ``predict`` said before."""
        if predicted >= 0:
            hit = token == predicted
            self.run[row] = self.run[row] + 1 if hit else 0
            self.misses[row] += not hit
        own = self.tokens[row]
        if self.newlines[token]:
            self.start[row], self.above[row], self.run[row], self.misses[row] = len(own) - 1, None, 0, 0
        if len(own) - self.start[row] == LINE_KEY:
            key = tuple(own[self.start[row] :])
            self.above[row] = self.last.get(key)
            self.last[key] = (row, self.start[row])


class Prediction:
    """What a row's step needs again at its end: its contexts' hashes and the match and column models' tokens."""

    def __init__(self) -> None:
        self.hashes = np.zeros(TABLES, np.uint64)
        self.match = self.column = -1


class OnlineModels:
    """The state both sides keep for a segment of ``rows`` LM chunks: the match and column models, the context
    tables and the recent tokens of each row. A dictionary's tokens (``primer``) are seen first, as a row of their
    own. ``newlines``: which tokens begin a line."""

    def __init__(
        self,
        rows: int,
        tokens: int,
        newlines: np.ndarray,
        primer: tuple[int, ...] = (),
        without: frozenset = frozenset(),
    ):
        self.without = without
        self.bits = table_bits(tokens + len(primer))
        size = 1 << self.bits
        self.tags = np.zeros((TABLES, size), np.uint32)
        self.successors = np.full((TABLES, size, WAYS), -1, np.int32)
        self.counts = np.zeros((TABLES, size, WAYS), np.uint16)
        self.recent = np.zeros((rows + 1, max(ORDERS)), np.int64)  # the last row: the dictionary's
        self.have = np.zeros(rows + 1, np.int64)
        self.match = mixing.MatchModel(rows + 1)
        self.column = ColumnModel(self.match.tokens, newlines)
        seen, cands, feats = (
            Prediction(),
            np.zeros(MAX_CANDIDATES, np.int32),
            np.zeros((MAX_CANDIDATES, SLOTS), np.int8),
        )
        for token in primer:
            self.predict(rows, seen, cands, feats)
            self.update(rows, token, seen)

    def predict(self, row: int, into: Prediction, cands: np.ndarray, feats: np.ndarray) -> int:
        """Row ``row``'s prediction (``into``), its candidates and their features, written into ``cands``
        [MAX_CANDIDATES] and ``feats`` [MAX_CANDIDATES, SLOTS]. Returns how many candidates."""
        into.match, length = self.match.predict(row) if "match" not in self.without else (-1, 0)
        into.column, agreement = self.column.predict(row) if "column" not in self.without else (-1, -1)
        context_hashes(self.recent[row], self.have[row], into.column, into.hashes)
        if "contexts" in self.without:
            into.hashes[:] = 0
        tables = self.tags, self.successors, self.counts, self.bits
        return row_candidates(*tables, into.hashes, into.match, length, into.column, agreement, cands, feats)

    def update(self, row: int, token: int, seen: Prediction) -> None:
        """Row ``row`` coded ``token``; ``seen`` is its prediction of the step."""
        tables = self.tags, self.successors, self.counts, self.bits
        self.have[row] = update_row(*tables, seen.hashes, self.recent[row], self.have[row], token)
        self.match.update(row, token, seen.match)
        self.column.update(row, token, seen.column)


class Plan:
    """What an encoder, which knows every token, needs to mix ``rows`` (a segment's LM chunks in table order,
    decoded ``group`` at a time): every position's candidates first, then, while the model scores the rows,
    their frequencies (``record``), then the mixed intervals (``mixed``). ``without``: ``COMPONENTS`` to leave
    out, for measuring only."""

    def __init__(
        self,
        rows: list[list[int]],
        group: int,
        newlines: np.ndarray,
        primer: tuple[int, ...] = (),
        without: frozenset = frozenset(),
    ):
        self.rows, self.group = rows, group
        models = OnlineModels(len(rows), sum(len(r) for r in rows), newlines, primer, without)
        self.cands = [np.full((len(r), MAX_CANDIDATES), -1, np.int32) for r in rows]
        self.feats = [np.full((len(r), MAX_CANDIDATES, SLOTS), -1, np.int8) for r in rows]
        self.count = [np.zeros(len(r), np.int64) for r in rows]
        self.freqs = [np.zeros((len(r), MAX_CANDIDATES), np.int32) for r in rows]
        seen = [Prediction() for _ in rows]
        for t, active in mixing.stream_steps([len(r) for r in rows], group):
            for r in active:
                self.count[r][t] = models.predict(r, seen[r], self.cands[r][t], self.feats[r][t])
            for r in active:
                models.update(r, rows[r][t], seen[r])

    def record(self, row: int, at: slice, freqs: Tensor) -> None:
        """The model's frequencies [n, V] at positions ``at`` of ``row``: the candidates'."""
        cands = torch.from_numpy(np.maximum(self.cands[row][at], 0)).to(freqs.device)
        self.freqs[row][at] = freqs.gather(1, cands).cpu().numpy()

    def mixed(
        self, left: list[np.ndarray], width: list[np.ndarray], vocab: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every token's interval under the mixed frequencies, from its interval under the model's."""
        if not self.rows:
            return left, width
        lengths = [len(r) for r in self.rows]
        first = np.concatenate([[0], np.cumsum(lengths)])
        order: list[int] = []
        starts = [0]
        for t, active in mixing.stream_steps(lengths, self.group):
            order.extend(int(first[r]) + t for r in active)
            starts.append(len(order))
        new_left, new_width = np.concatenate(left), np.concatenate(width)
        mix_stream(
            np.zeros(FEATURES, np.int64),
            np.zeros(FEATURES, np.int64),
            np.array(order, np.int64),
            np.array(starts, np.int64),
            np.concatenate(self.cands),
            np.concatenate(self.feats),
            np.concatenate(self.freqs),
            np.concatenate(self.count),
            np.concatenate([np.asarray(r, np.int64) for r in self.rows]),
            new_left,
            new_width,
            vocab,
        )
        return np.split(new_left, first[1:-1]), np.split(new_width, first[1:-1])


class ContextMixer:
    """The decoder's side: the online models and the mixer's weights of one segment, step by step."""

    def __init__(self, rows: int, tokens: int, newlines: np.ndarray, primer: tuple[int, ...] = ()):
        self.models = OnlineModels(rows, tokens, newlines, primer)
        self.seen = [Prediction() for _ in range(rows)]
        self.weights = np.zeros(FEATURES, np.int64)
        self.updates = np.zeros(FEATURES, np.int64)

    def frequencies(self, rows: list[int], freqs: np.ndarray) -> np.ndarray:
        """The rows' mixed frequencies (int64 [R, V]), from the model's."""
        n = len(rows)
        self.cands = np.full((n, MAX_CANDIDATES), -1, np.int32)
        self.feats = np.full((n, MAX_CANDIDATES, SLOTS), -1, np.int8)
        self.count = np.zeros(n, np.int64)
        for i, row in enumerate(rows):
            self.count[i] = self.models.predict(row, self.seen[row], self.cands[i], self.feats[i])
        self.freqs = np.take_along_axis(freqs, np.maximum(self.cands, 0), 1).astype(np.int32)
        self.boosted = np.zeros((n, MAX_CANDIDATES), np.int64)
        others, rest = np.zeros(n, np.int64), np.zeros(n, np.int64)
        vocab = freqs.shape[1]
        for i in range(n):
            others[i], rest[i] = boost_row(
                self.weights, self.cands[i], self.feats[i], self.freqs[i], self.count[i], vocab, self.boosted[i]
            )
        out = np.empty_like(freqs)
        mixed_frequencies(freqs, self.cands, self.boosted, self.count, others, rest, out)
        return out

    def update(self, rows: list[int], tokens: np.ndarray) -> None:
        """The step's coded ``tokens`` of ``rows``: the weights learn, then the models see them."""
        for i, token in enumerate(tokens.tolist()):
            learn_row(
                self.weights, self.updates, self.cands[i], self.feats[i], self.freqs[i], self.boosted[i],
                self.count[i], token,
            )  # fmt: skip
        for row, token in zip(rows, tokens.tolist()):
            self.models.update(row, token, self.seen[row])
