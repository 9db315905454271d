"""cm-v1's own arithmetic, checked against docs/FORMAT.md written again here in plain Python integers: the context
hashes, the tables, the column model, the mix and the weights' update. Round trips and the encoder/decoder
agreement are in test_mixing.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frequency_row
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpress.codec import context_mixing as cm
from lmpress.codec import mixing
from lmpress.exact import arithmetic as A

VOCAB = 320
MASK = (1 << 64) - 1


def _fnv(tokens: list[int], start: int = 0xCBF29CE484222325) -> int:
    h = start
    for t in tokens:
        h = ((h ^ t) * 0x100000001B3) & MASK
    return h


def _hashes(recent: list[int], column: int) -> list[int]:
    out = [_fnv(recent[-k:]) if len(recent) >= k else 0 for k in cm.ORDERS]
    out.append(_fnv([1 << 32, column, recent[-1]]) if column >= 0 and recent else 0)
    return out


def test_context_hashes_are_fnv_1a_over_token_ids():
    assert _fnv([]) == 0xCBF29CE484222325
    assert _fnv([0]) == 0xAF63BD4C8601B7DF  # FNV-1a 64 of the byte 0x00: the hash is the standard one
    recent, have = np.array([0, 0, 0, 0, 7, 300, 12, 5], np.int64), 4
    out = np.zeros(cm.TABLES, np.uint64)
    cm.context_hashes(recent, have, 41, out)
    expected = _hashes([7, 300, 12, 5], 41)
    assert [int(h) for h in out] == expected
    assert out[1] == 0 and out[2] != 0  # 4 tokens: no order-6 context yet, an order-4 one
    cm.context_hashes(recent, have, -1, out)
    assert out[cm.TABLES - 1] == 0


def _tables(bits: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    size = 1 << bits
    return (
        np.zeros((cm.TABLES, size), np.uint32),
        np.full((cm.TABLES, size, cm.WAYS), -1, np.int32),
        np.zeros((cm.TABLES, size, cm.WAYS), np.uint16),
        bits,
    )


def _candidates(tables, hashes, match=-1, length=0, column=-1, agreement=-1):
    cands = np.zeros(cm.MAX_CANDIDATES, np.int32)
    feats = np.zeros((cm.MAX_CANDIDATES, cm.SLOTS), np.int8)
    n = cm.row_candidates(*tables, hashes, match, length, column, agreement, cands, feats)
    return cands[:n].tolist(), feats[:n]


def test_tables_count_successors_and_rank_them():
    tables = _tables()
    hashes = np.array(_hashes([1, 2, 3, 4, 5, 6, 7, 8], -1), np.uint64)
    recent = np.zeros(8, np.int64)
    others = list(range(12, 12 + cm.WAYS - 2))  # with 10 and 11, every way taken
    for token in [10, 11, 11, *others, 99]:  # 99 replaces the first way of the smallest count: 10's
        cm.update_row(*tables, hashes, recent, 8, token)
    assert recent[-1] == 99
    cands, feats = _candidates(tables, hashes)
    assert cands == [11, 99, *others][: cm.MAX_CANDIDATES]  # by count, ties by way
    total = 2 + 1 + len(others)
    assert feats[0, 2].item() == cm.count_bucket(2) * cm.COUNT_BUCKETS + cm.count_bucket(total)
    assert feats[1, 2].item() == cm.count_bucket(1) * cm.COUNT_BUCKETS + cm.count_bucket(total)
    orders = 2 + len(cm.ORDERS)
    assert (feats[:, 2:orders] >= 0).all() and (feats[:, orders] == -1).all()  # no column context: its hash is 0
    assert (feats[:, :2] == -1).all()  # no match, no column token


def test_counts_halve_beyond_the_limit():
    tables = _tables()
    hashes = np.array(_hashes([1, 2, 3, 4, 5, 6, 7, 8], -1), np.uint64)
    recent = np.zeros(8, np.int64)
    cm.update_row(*tables, hashes, recent, 8, 9)
    for _ in range(cm.COUNT_LIMIT + 1):
        cm.update_row(*tables, hashes, recent, 8, 8)
    counts = tables[2]
    slot = int(hashes[0]) >> (64 - tables[3])
    assert sorted(counts[0, slot].tolist()) == [0] * (cm.WAYS - 1) + [(cm.COUNT_LIMIT + 1) // 2]  # 9's 1 halved to 0
    assert _candidates(tables, hashes)[0] == [8]


def test_match_and_column_tokens_come_first_once():
    tables = _tables()
    hashes = np.zeros(cm.TABLES, np.uint64)
    cands, feats = _candidates(tables, hashes, match=5, length=20, column=5, agreement=4)
    assert cands == [5] and feats[0, 0] == mixing.length_bucket(20) and feats[0, 1] == 4
    cands, _ = _candidates(tables, hashes, column=7, agreement=0)
    assert cands == [7]


def test_the_column_model_predicts_the_line_above():
    newlines = np.zeros(VOCAB, bool)
    newlines[1] = True  # token 1 begins a line
    tokens: list[list[int]] = [[]]
    model = cm.ColumnModel(tokens, newlines)
    said = []
    for token in [1, 20, 21, 30, 31, 32, 1, 20, 21, 30, 33, 32]:
        said.append(model.predict(0))
        tokens[0].append(token)
        model.update(0, token, said[-1][0])
    # the second line's key (1, 20, 21) finds the first: from its 4th token on, the token above is predicted
    assert [p for p, _ in said[9:]] == [30, 31, 32]
    assert said[10][1] == cm.count_bucket(1) * 3 + 0  # one agreeing token, no miss yet
    assert said[11][1] == cm.count_bucket(0) * 3 + 1  # after a miss


def _share_group(f: int) -> int:
    return mixing.share_bucket(f) >> 3


def _reference_mix(freqs: list[int], cands: list[int], feats: np.ndarray, weights: np.ndarray):
    """docs/FORMAT.md's mixing, with Python's integers: (g, a)."""
    vocab, spare = len(freqs), A.TOTAL - len(freqs)
    e = []
    for i, c in enumerate(cands):
        g = _share_group(freqs[c])
        z = sum(int(weights[(int(cm.SLOT_START[s]) + int(v)) * 7 + g]) for s, v in enumerate(feats[i]) if v >= 0)
        z = min(max(z, -24 << 16), 24 << 16)
        x, k = freqs[c] * int(cm.POW2[(z >> 10) & 63]), (z >> 16) - 16
        e.append(min(x << k if k >= 0 else x >> -k, 1 << 38))
    total = A.TOTAL - sum(freqs[c] for c in cands) + sum(e)
    a = [ei * spare // total for ei in e]
    rest, others = spare - sum(freqs[c] - 1 for c in cands), spare - sum(a)
    if rest == 0:
        a[0] += others
        others, rest = 0, 1
    g, below, lifted, last = [], 0, 0, 0
    for u in range(vocab):
        if u in cands:
            lifted += a[cands.index(u)]
        else:
            below += freqs[u] - 1
        cumulative = u + 1 + lifted + below * others // rest
        g.append(cumulative - last)
        last = cumulative
    return g, a


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    peak=st.sampled_from([0, 1, 4, 16, 40]),
    cands=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=cm.MAX_CANDIDATES, unique=True),
    weights=st.integers(0, 2**31),
    spread=st.sampled_from([1 << 12, 1 << 16, 1 << 19, 1 << 21]),
)
def test_the_mix_is_the_specified_one_and_a_distribution(seed, peak, cands, weights, spread):
    freqs = frequency_row(seed, peak, VOCAB).tolist()
    rng = np.random.default_rng(weights)
    w = rng.integers(-spread, spread, cm.FEATURES).astype(np.int64)
    sizes = np.array(cm.SLOT_SIZES)
    feats = np.floor(rng.random((cm.MAX_CANDIDATES, cm.SLOTS)) * (sizes + 1)).astype(np.int8) - 1  # −1 .. size − 1
    expected, a = _reference_mix(freqs, cands, feats[: len(cands)], w)
    assert sum(expected) == A.TOTAL and min(expected) >= 1

    n = len(cands)
    cand_row = np.full(cm.MAX_CANDIDATES, -1, np.int32)
    cand_row[:n] = cands
    f = np.zeros(cm.MAX_CANDIDATES, np.int32)
    f[:n] = [freqs[c] for c in cands]
    boosted = np.zeros(cm.MAX_CANDIDATES, np.int64)
    others, rest = cm.boost_row(w, cand_row, feats, f, n, VOCAB, boosted)
    assert boosted[:n].tolist() == a
    out = np.empty((1, VOCAB), np.int64)
    lm = np.array([freqs], np.int64)
    cm.mixed_frequencies(lm, cand_row[None], boosted[None], np.array([n]), np.array([others]), np.array([rest]), out)
    assert out[0].tolist() == expected
    left = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    mixed_left = np.concatenate([[0], np.cumsum(expected)[:-1]])
    for token in {*cands, 0, VOCAB - 1, seed % VOCAB}:
        got = cm.token_interval(left[token], freqs[token], token, cand_row, f, boosted, n, others, rest)
        assert got == (mixed_left[token], expected[token]), token


def test_the_model_s_certainty_left_to_candidates_stays_codable():
    """R = 0: the model gave every count to the candidates."""
    freqs = [1] * VOCAB
    freqs[3] = A.TOTAL - (VOCAB - 1)
    w = np.zeros(cm.FEATURES, np.int64)
    feats = np.full((cm.MAX_CANDIDATES, cm.SLOTS), -1, np.int8)
    expected, _ = _reference_mix(freqs, [3], feats[:1], w)
    assert expected == freqs


def test_weights_learn_toward_the_coded_token():
    w, n = np.zeros(cm.FEATURES, np.int64), np.zeros(cm.FEATURES, np.int64)
    cands = np.array([4, 9] + [-1] * (cm.MAX_CANDIDATES - 2), np.int32)
    feats = np.full((cm.MAX_CANDIDATES, cm.SLOTS), -1, np.int8)
    feats[0, 2] = feats[1, 3] = 8
    f = np.array([1 << 20, 1 << 20] + [0] * (cm.MAX_CANDIDATES - 2), np.int32)
    boosted = np.array([1 << 20, 1 << 20] + [0] * (cm.MAX_CANDIDATES - 2), np.int64)
    cm.learn_row(w, n, cands, feats, f, boosted, 2, 4)
    hit, miss = cm.feature(2, 8, _share_group(1 << 20)), cm.feature(3, 8, _share_group(1 << 20))
    error = (1 << 16) - ((1 << 20) + 1 >> 8)
    assert w[hit] == (error * (2 * cm.RATE_START // 3)) >> 16 > 0  # the first update: rate 2·RATE_START / 3
    assert w[miss] < 0 and n[hit] == n[miss] == 1
    assert np.count_nonzero(w) == 2


def test_pow2_is_the_rounded_power_of_two():
    from decimal import Decimal, getcontext

    getcontext().prec = 40
    assert cm.POW2.tolist() == [int((Decimal(2) ** (Decimal(i) / 64) * 65536).to_integral_value()) for i in range(64)]


def test_a_dictionary_seeds_the_online_models(tiny):
    """A record of a repeated schema, with the schema in the dictionary: cm-v1 sees it before the record."""
    record = b'{"name": "lmpress", "version": "0.5.1", "license": "MIT", "keywords": ["compression", "model"]}\n'
    samples = [record.replace(b"0.5.1", f"0.{i}.{i % 3}".encode()) for i in range(40)]
    primer = tuple(tiny.tokenize(b"".join(samples[:20])))
    target = tiny.tokenize(samples[30])
    seeded, plain = cm.Plan([target], 1, tiny.newlines, primer), cm.Plan([target], 1, tiny.newlines)

    def right(plan: cm.Plan) -> int:  # positions whose candidates hold the token coded there
        return sum(token in plan.cands[0][t] for t, token in enumerate(target))

    assert right(seeded) > 0.8 * len(target) > right(plain)


@pytest.mark.parametrize("bits", [cm.MIN_TABLE_BITS, cm.MAX_TABLE_BITS])
def test_table_size_is_bounded(bits):
    assert cm.table_bits(1 << (bits + (2 if bits == cm.MAX_TABLE_BITS else -3))) == bits
