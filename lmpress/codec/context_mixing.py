"""Context mixing around the language model, in exact integer arithmetic (``cm-v1``).

The language model sees one chunk's context and knows the world's text; the online models see every token
already coded in the segment (and a dictionary's tokens) and learn this file as coding goes:

- the match model of ``match-v1`` (the token that followed the last occurrence of the last 3 tokens);
- token contexts of orders 6, 4, 3, 2 and 1, each a hashed table (bounded memory) that remembers up to
  ``WAYS`` tokens seen after a context and how often.

Each position gets up to ``MAX_CANDIDATES`` candidate tokens: the match model's, then the successors of each
context, most specific first. Every candidate has features (the match length, or the count of the candidate and
the total count of a context, in buckets), each crossed with the language model's own share of the candidate.
A weight per feature, learned online, says how many bits to move the candidate's probability up or down: the
mix is log-linear, ``f_c · 2**(Σ weights)`` for the candidates and the model's frequencies for every other token,
scaled back to the coder's 2**24 (``boost_row``). After each step the weights follow the gradient of the code
length (``learn_row``), with a rate that starts fast for a feature seldom seen.

Everything is integers, updated in the stream's order (``mixing._steps``: rows predicted from the state of the
start of their step, updated in table order at its end), so the encoder, which knows every token in advance,
and the decoder, which learns them step by step, compute the same numbers on any machine. ``docs/FORMAT.md``
specifies it to the last rounding, with known answers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..exact.arithmetic import TOTAL
from . import mixing

NAME = "cm-v1"
ORDERS = (6, 4, 3, 2, 1)  # token contexts, most specific first: the order candidates are taken in
WAYS = 4  # tokens remembered after each context
MAX_CANDIDATES = 8
COUNT_LIMIT = 255  # a successor's count beyond this halves every count of its context
SLOTS = 1 + len(ORDERS)  # a candidate's features: the match model's, then each context's (−1: none)
COUNT_BUCKETS = 7  # counts 0, 1, 2, 3, 4..7, 8..15, 16 and more
CONTEXT_FEATURES = COUNT_BUCKETS * COUNT_BUCKETS  # (the candidate's count, the context's total) buckets
SHARE_GROUPS = 7  # the language model's share of a candidate, by four octaves: mixing.share_bucket(f) >> 3
SLOT_START = np.array([0] + [mixing.LENGTH_BUCKETS + CONTEXT_FEATURES * j for j in range(len(ORDERS))], np.int64)
FEATURES = (mixing.LENGTH_BUCKETS + CONTEXT_FEATURES * len(ORDERS)) * SHARE_GROUPS

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

# FNV-1a over token ids (64-bit, wrapping), the hash of a context
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
MIN_TABLE_BITS, MAX_TABLE_BITS = 10, 19  # 2**bits contexts a table per order, chosen by the segment's size


def table_bits(tokens: int) -> int:
    """Slots (as a power of two) of each order's table for a segment of ``tokens`` tokens (dictionary included)."""
    return min(max(tokens.bit_length(), MIN_TABLE_BITS), MAX_TABLE_BITS)


@njit(cache=True)
def count_bucket(n):  # pragma: no cover (compiled)
    return n if n < 4 else (4 if n < 8 else (5 if n < 16 else 6))


@njit(cache=True)
def share_group(f):  # pragma: no cover (compiled)
    """``mixing.share_bucket(f) >> 3``: the language model's frequency f ≥ 1 by four octaves."""
    n = 0
    while (f >> n) > 0:
        n += 1
    bucket = 2 * n + (((f >> (n - 2)) & 1) if n >= 2 else 0)
    return bucket >> 3


@njit(cache=True)
def context_hash(recent, k):  # pragma: no cover (compiled)
    """FNV-1a of the last ``k`` tokens of a row, oldest first (``recent`` holds its last len(recent), newest last)."""
    h = FNV_OFFSET
    for i in range(len(recent) - k, len(recent)):
        h = (h ^ np.uint64(recent[i])) * FNV_PRIME
    return h


@njit(cache=True)
def _slot_and_tag(h, bits):  # pragma: no cover (compiled)
    return np.int64(h >> np.uint64(64 - bits)), np.uint32(h & np.uint64(0xFFFFFFFF)) | np.uint32(1)


@njit(cache=True)
def row_candidates(  # pragma: no cover (compiled)
    tags, successors, counts, bits, recent, have, match, length, cands, feats
):
    """A row's candidates (``cands``, −1 after the last) and their features (``feats`` [C, SLOTS], −1: none).
    Returns how many."""
    n = 0
    if match >= 0:
        cands[0] = match
        n = 1
    slots = np.full(len(ORDERS), -1, np.int64)
    for j in range(len(ORDERS)):
        k = ORDERS[j]
        if have < k:
            continue
        slot, tag = _slot_and_tag(context_hash(recent, k), bits)
        if tags[j, slot] != tag:
            continue
        slots[j] = slot
        taken = np.zeros(WAYS, np.bool_)
        for _ in range(WAYS):  # the ways by count, largest first (ties: the lower way)
            best = -1
            for w in range(WAYS):
                if not taken[w] and counts[j, slot, w] > 0 and (best < 0 or counts[j, slot, w] > counts[j, slot, best]):
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
            feats[i, 0] = length if length < 16 else 16 + (length - 16) // 8
        for j in range(len(ORDERS)):
            slot = slots[j]
            if slot < 0:
                continue
            seen, total = 0, 0
            for w in range(WAYS):
                total += counts[j, slot, w]
                if successors[j, slot, w] == cands[i] and counts[j, slot, w] > 0:
                    seen = counts[j, slot, w]
            feats[i, 1 + j] = count_bucket(seen) * COUNT_BUCKETS + count_bucket(total)
    return n


@njit(cache=True)
def update_row(tags, successors, counts, bits, recent, have, token):  # pragma: no cover (compiled)
    """Count ``token`` after each context of the row, then append it to the row's recent tokens.
    Returns the row's new count of recent tokens."""
    for j in range(len(ORDERS)):
        k = ORDERS[j]
        if have < k:
            continue
        slot, tag = _slot_and_tag(context_hash(recent, k), bits)
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
def _scaled(n, others, rest):  # pragma: no cover (compiled)
    """⌊n · others / rest⌋ for 0 ≤ n·others < 2**48: a binary64 division, exact after the correction."""
    m = n * others
    q = np.int64(np.float64(m) / np.float64(rest))
    return q + np.int64((q + 1) * rest <= m) - np.int64(q * rest > m)


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
    start = token + lifted + _scaled(below, others, rest)
    if hit >= 0:
        return start, boosted[hit] + 1
    return start, 1 + _scaled(below + width - 1, others, rest) - _scaled(below, others, rest)


@njit(parallel=True, cache=True)
def mixed_frequencies(freqs, cands, boosted, n, others, rest, out):  # pragma: no cover (compiled)
    """Every row's mixed frequencies (int64 [R, V], each row summing to 2**24) from the model's ``freqs``."""
    rows, vocab = freqs.shape
    for r in prange(rows):
        below, lifted = np.int64(0), np.int64(0)
        last = np.int64(0)  # the cumulative frequency below token u
        for u in range(vocab):
            own = -1
            for i in range(n[r]):
                if cands[r, i] == u:
                    own = i
            if own >= 0:
                lifted += boosted[r, own]
            else:
                below += freqs[r, u] - 1
            g = u + 1 + lifted + _scaled(below, others[r], rest[r])
            out[r, u] = g - last
            last = g


@njit(cache=True)
def mix_stream(  # pragma: no cover (compiled)
    weights, updates, order, starts, cands, feats, freqs, count, tokens, left, width, vocab
):
    """The encoder's mix: tokens in stream order (``order``, steps from ``starts``), their candidates and
    features, the model's intervals (``left``, ``width``, replaced by the mixed ones)."""
    boosted = np.zeros((len(order), MAX_CANDIDATES), np.int64)
    for s in range(len(starts) - 1):
        for at in range(starts[s], starts[s + 1]):
            i = order[at]
            others, rest = boost_row(weights, cands[i], feats[i], freqs[i], count[i], vocab, boosted[at])
            left[i], width[i] = token_interval(
                left[i], width[i], tokens[i], cands[i], freqs[i], boosted[at], count[i], others, rest
            )
        for at in range(starts[s], starts[s + 1]):
            i = order[at]
            learn_row(weights, updates, cands[i], feats[i], freqs[i], boosted[at], count[i], tokens[i])


class OnlineModels:
    """The state both sides keep for a segment of ``rows`` LM chunks: the match model, the context tables and the
    recent tokens of each row. A dictionary's tokens (``primer``) are seen first, as a row of their own."""

    def __init__(self, rows: int, tokens: int, primer: tuple[int, ...] = ()):
        self.bits = table_bits(tokens + len(primer))
        size = 1 << self.bits
        self.tags = np.zeros((len(ORDERS), size), np.uint32)
        self.successors = np.full((len(ORDERS), size, WAYS), -1, np.int32)
        self.counts = np.zeros((len(ORDERS), size, WAYS), np.int32)
        self.recent = np.zeros((rows + 1, max(ORDERS)), np.int64)  # the last row: the dictionary's
        self.have = np.zeros(rows + 1, np.int64)
        self.match = mixing.MatchModel(rows + 1)
        for token in primer:
            self.update(rows, token, -1)

    def predict(self, row: int, cands: np.ndarray, feats: np.ndarray) -> tuple[int, int]:
        """Row ``row``'s candidates and their features, written into ``cands`` [MAX_CANDIDATES] and ``feats``
        [MAX_CANDIDATES, SLOTS]: (how many, the match model's token or −1, which ``update`` needs)."""
        match, length = self.match.predict(row)
        tables = self.tags, self.successors, self.counts, self.bits
        return row_candidates(*tables, self.recent[row], self.have[row], match, length, cands, feats), match

    def update(self, row: int, token: int, match: int) -> None:
        """Row ``row`` coded ``token``; ``match`` is what ``predict`` said the match model's token was."""
        tables = self.tags, self.successors, self.counts, self.bits
        self.have[row] = update_row(*tables, self.recent[row], self.have[row], token)
        self.match.update(row, token, match)


class Plan:
    """What an encoder, which knows every token, needs to mix ``rows`` (a segment's LM chunks in table order,
    decoded ``group`` at a time): every position's candidates first, then, while the model scores the rows,
    their frequencies (``record``), then the mixed intervals (``mixed``)."""

    def __init__(self, rows: list[list[int]], group: int, primer: tuple[int, ...] = ()):
        self.rows, self.group = rows, group
        models = OnlineModels(len(rows), sum(len(r) for r in rows), primer)
        self.cands = [np.full((len(r), MAX_CANDIDATES), -1, np.int64) for r in rows]
        self.feats = [np.full((len(r), MAX_CANDIDATES, SLOTS), -1, np.int8) for r in rows]
        self.count = [np.zeros(len(r), np.int64) for r in rows]
        self.freqs = [np.zeros((len(r), MAX_CANDIDATES), np.int64) for r in rows]
        for t, active in mixing._steps([len(r) for r in rows], group):
            matches = []
            for r in active:
                self.count[r][t], match = models.predict(r, self.cands[r][t], self.feats[r][t])
                matches.append(match)
            for r, match in zip(active, matches):
                models.update(r, rows[r][t], match)

    def guesses(self, row: int, at: slice) -> np.ndarray:
        """The candidates at ``at`` of ``row`` [n, MAX_CANDIDATES] (0 where there are fewer), whose
        frequencies to ``record``."""
        return np.maximum(self.cands[row][at], 0)

    def record(self, row: int, at: slice, freqs: np.ndarray) -> None:
        self.freqs[row][at] = freqs

    def mixed(
        self, left: list[np.ndarray], width: list[np.ndarray], vocab: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every token's interval under the mixed frequencies, from its interval under the model's."""
        lengths = [len(r) for r in self.rows]
        first = np.concatenate([[0], np.cumsum(lengths)])
        order: list[int] = []
        starts = [0]
        for t, active in mixing._steps(lengths, self.group):
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

    def __init__(self, rows: int, tokens: int, primer: tuple[int, ...] = ()):
        self.models = OnlineModels(rows, tokens, primer)
        self.weights = np.zeros(FEATURES, np.int64)
        self.updates = np.zeros(FEATURES, np.int64)

    def frequencies(self, rows: list[int], freqs: np.ndarray) -> np.ndarray:
        """The rows' mixed frequencies (int64 [R, V]), from the model's."""
        n = len(rows)
        self.cands = np.full((n, MAX_CANDIDATES), -1, np.int64)
        self.feats = np.full((n, MAX_CANDIDATES, SLOTS), -1, np.int8)
        self.count = np.zeros(n, np.int64)
        self.matches = []
        for i, row in enumerate(rows):
            self.count[i], match = self.models.predict(row, self.cands[i], self.feats[i])
            self.matches.append(match)
        self.freqs = np.take_along_axis(freqs, np.maximum(self.cands, 0), 1)
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
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            self.models.update(row, token, self.matches[i])
