"""The online models mixed with the LM (``match-v1``, ``cm-v1``) and the levels: exact arithmetic, round trips, the
CLI. ``test_context_mixing.py`` has cm-v1's own arithmetic."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINING_TEXT, frequency_row
from hypothesis import given, settings
from hypothesis import strategies as st

import lmpress
from lmpress.codec import context_mixing, mixers, mixing
from lmpress.codec import format as fmt
from lmpress.codec.scoring import code_rows
from lmpress.codec.segments import Lockstep, groups
from lmpress.codec.settings import DEFAULT_LEVEL, LEVELS, Settings
from lmpress.exact import arithmetic as A
from lmpress.exact import kernels

VOCAB = 320


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    peak=st.sampled_from([0, 1, 4, 16, 40]),
    predicted=st.integers(0, VOCAB - 1),
    p=st.integers(mixing.P_MIN, mixing.P_MAX),
)
def test_mixed_frequencies_are_a_distribution_and_intervals_agree(seed, peak, predicted, p):
    """The decoder's whole rows and the encoder's token-by-token intervals are the same numbers."""
    f = frequency_row(seed, peak)
    g = mixing.mixed_frequencies(f.copy(), predicted, p)
    assert g.sum() == A.TOTAL and g.min() >= 1
    assert (kernels.mixed_frequencies(f[None], [predicted], [p])[0] == g).all()  # the decoder's compiled twin
    if f[predicted] - 1 < A.TOTAL - VOCAB:
        assert g[predicted] == 1 + ((p * (A.TOTAL - VOCAB)) >> 16)
    tokens = np.arange(VOCAB)
    left = np.concatenate([[0], np.cumsum(f)[:-1]])
    got_left, got_width = mixing.mixed_intervals(
        left, f, tokens, np.full(VOCAB, predicted), np.full(VOCAB, f[predicted]), np.full(VOCAB, p), VOCAB
    )
    assert (got_width == g).all()
    assert (got_left == np.concatenate([[0], np.cumsum(g)[:-1]])).all()


def test_compiled_mixing_keeps_rows_without_a_prediction_or_without_room():
    """A row with no prediction, and one whose LM gives the predicted token every count, stay the LM's."""
    f = np.stack([frequency_row(2, 4), frequency_row(3, 4)])
    f[1] = 1
    f[1, 5] += A.TOTAL - VOCAB
    assert (kernels.mixed_frequencies(f, [-1, 5], [0, mixing.P_MAX]) == f).all()


def test_rows_without_a_prediction_keep_the_model_s_intervals():
    f = frequency_row(1, 4)
    left = np.concatenate([[0], np.cumsum(f)[:-1]])
    tokens = np.arange(VOCAB)
    none = np.full(VOCAB, -1)
    got = mixing.mixed_intervals(left, f, tokens, none, np.ones(VOCAB, np.int64), np.zeros(VOCAB, np.int64), VOCAB)
    assert (got[0] == left).all() and (got[1] == f).all()


def test_match_model_follows_an_earlier_occurrence_in_another_row():
    model = mixing.MatchModel(2)

    def code(row: int, tokens: list[int]) -> None:
        for token in tokens:
            model.update(row, token, model.predict(row)[0])

    code(0, [5, 6, 7, 8, 9])
    code(1, [1, 5, 6, 7])
    assert model.predict(1) == (8, 3)  # "5 6 7" was followed by 8 in row 0
    code(1, [8])
    assert model.predict(1) == (9, 4)
    code(1, [3])  # a miss: no occurrence of "7 8 3"
    assert model.predict(1) == (-1, 0)


def test_a_prediction_is_the_one_made_at_the_start_of_the_step():
    """Row 1 follows row 0 right at its end: row 0's token of this step, coded first, must not count as row 1's
    prediction (the decoder could not have known it when it decoded row 1)."""
    model = mixing.MatchModel(2)
    model.tokens = [[5, 6, 7], [1, 2, 3]]
    model.pointer[1], model.length[1] = (0, 3), 3  # the next token of row 0, not coded yet
    assert model.predict(1) == (-1, 0)
    model.update(0, 8, -1)  # this step: row 0 first ...
    assert model.predict(1) == (8, 3)  # (what asking again now would say)
    model.update(1, 8, -1)  # ... then row 1, with the prediction it had: none, so no hit
    assert model.pointer[1] is None and model.length[1] == 0


def test_hit_estimate_learns_and_stays_in_range():
    estimate = mixing.HitEstimate()
    f = 1 << 20  # the LM gives the predicted token 1/16
    start = estimate.probability(20, f)
    for _ in range(200):
        estimate.update(20, f, True)
    assert estimate.probability(20, f) > start
    assert mixing.P_MIN <= estimate.probability(20, f) <= mixing.P_MAX
    for _ in range(400):
        estimate.update(20, f, False)
    assert estimate.probability(20, f) < start


def _repetitive(n_lines: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    lines = TRAINING_TEXT.splitlines(keepends=True)[:3]
    return "".join(rng.choice(lines) for _ in range(n_lines)).encode()


MIXERS = [mixing.NAME, context_mixing.NAME]


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("batch", [1, 3, 24])
def test_mixed_archives_round_trip_across_rows_and_groups(tiny, batch, mixer):
    data = _repetitive(120)
    blob = lmpress.compress(data, model=tiny, chunk_size=700, batch=batch, mixer=mixer)
    assert fmt.parse_header(blob)[0].mixer == mixer
    assert lmpress.decompress(blob, model=tiny) == data


@pytest.mark.parametrize("mixer", MIXERS)
def test_inputs_without_text_mix_nothing(tiny, mixer):
    """No chunk for the model (binary data): the mixers have no rows to mix."""
    assert code_rows(tiny, [], Settings(mixer=mixer)) == ([], [], pytest.approx([]))
    data = bytes(range(256)) * 8
    assert lmpress.decompress(lmpress.compress(data, model=tiny, mixer=mixer), model=tiny) == data


@pytest.mark.parametrize("mixer", MIXERS)
def test_mixing_pays_on_repetitive_text(tiny, mixer):
    data = _repetitive(300)
    plain = lmpress.compress(data, model=tiny, chunk_size=1024, mixer="")
    mixed = lmpress.compress(data, model=tiny, chunk_size=1024, mixer=mixer)
    assert len(mixed) < 0.9 * len(plain)
    assert lmpress.decompress(mixed, model=tiny) == data


def test_context_mixing_beats_the_match_model_alone(tiny):
    data = _repetitive(300, seed=5)
    match = lmpress.compress(data, model=tiny, chunk_size=1024, mixer=mixing.NAME)
    mixed = lmpress.compress(data, model=tiny, chunk_size=1024, mixer=context_mixing.NAME)
    assert len(mixed) < len(match)


def test_mix_is_the_deprecated_name_of_mixer(tiny):
    with pytest.warns(DeprecationWarning, match="mixer"):
        assert Settings.at_level(3, mix=True).mixer == context_mixing.NAME
    with pytest.raises(ValueError, match="mixer must be one of"):
        Settings(mixer="paq8")


@pytest.mark.parametrize("mixer", MIXERS)
def test_a_chunk_that_leaves_the_model_s_rows_is_recoded_without_it(tiny, mixer):
    """Chunks the tiny model codes worse than LZMA2 go classical; the online models must not have seen them."""
    data = _repetitive(300) + Path(__file__).read_bytes()[:3000]
    comp = lmpress.Compressor(tiny, chunk_size=1024, mixer=mixer)
    blob = comp.compress(data) + comp.flush()
    assert comp.stats.chunks.get("lm") and comp.stats.chunks.get("xz")
    assert lmpress.decompress(blob, model=tiny) == data


@pytest.mark.parametrize("primer", [(), (5, 9, 14, 9, 5, 9, 14, 2)])
@pytest.mark.parametrize("mixer", MIXERS)
def test_encoder_intervals_are_the_decoder_s_frequencies(tiny, mixer, primer):
    """``code_rows`` (full passes, mixing after) against ``Lockstep`` with the mixer's decoder (step by step)."""
    rng = random.Random(3)
    rows = [tiny.tokenize(_repetitive(rng.randrange(5, 30), seed=k)) for k in range(5)]
    s = Settings(mixer=mixer, batch=2, window=64, keep=16, primer=primer)
    left, width, _ = code_rows(tiny, rows, s)
    mixer_ = mixers.mixer(tiny, s, [len(r) for r in rows])
    assert mixer_ is not None
    for group in groups(list(range(len(rows))), s.batch):
        steps = Lockstep(tiny, [len(rows[r]) for r in group], s)
        for t in range(max(len(rows[r]) for r in group)):
            active = [group[row] for row in steps.rows]
            freqs = torch.from_numpy(mixer_.frequencies(active, steps.freqs.numpy()))
            assert (freqs.sum(1) == A.TOTAL).all() and (freqs >= 1).all()
            tokens = np.array([rows[r][t] for r in active])
            lo, w = A.intervals(freqs, torch.from_numpy(tokens))
            assert lo.tolist() == [int(left[r][t]) for r in active]
            assert w.tolist() == [int(width[r][t]) for r in active]
            mixer_.update(active, tokens)
            steps.advance(tokens)


def test_levels():
    assert Settings() == Settings.at_level(DEFAULT_LEVEL)
    assert Settings.at_level(9, chunk_size=100).chunk_size == 100
    assert not Settings.at_level(3).mixer and Settings.at_level(9).mixer == context_mixing.NAME
    assert all(level.window * level.batch == 2048 * 24 for level in LEVELS.values())
    with pytest.raises(ValueError, match="level must be 1 to 9"):
        Settings.at_level(10)


def test_header_records_the_mixer_and_old_readers_refuse_it():
    for name in MIXERS:
        header = fmt.Header("m", "00" * 8, "int8-v1", 1, 2048, 512, 24, mixer=name)
        parsed, _ = fmt.parse_header(header.to_bytes())
        assert parsed == header
    plain = fmt.Header("m", "00" * 8, "int8-v1", 1, 2048, 512, 24)
    assert fmt.parse_header(plain.to_bytes())[0].mixer == ""
    assert header.to_bytes() != plain.to_bytes()


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmpress", *args], input=stdin, capture_output=True, timeout=600)


def test_cli_levels(tiny_model_dir, tmp_path):
    data = _repetitive(60)
    model = ["--model", str(tiny_model_dir)]
    archives = {}
    for flag in ["-1", "-3", "--best"]:
        done = _cli("compress", "-c", flag, "--chunk-size", "500", *model, stdin=data)
        assert done.returncode == 0, done.stderr
        archives[flag] = done.stdout
        back = _cli("decompress", "-c", *model, stdin=done.stdout)
        assert back.returncode == 0 and back.stdout == data
    assert fmt.parse_header(archives["-1"])[0].window == LEVELS[1].window
    assert fmt.parse_header(archives["--best"])[0].mixer == context_mixing.NAME
    path = tmp_path / "a.lmp"
    path.write_bytes(archives["--best"])
    listed = _cli("list", str(path))
    assert "mixed with cm-v1" in listed.stdout.decode()
    both = _cli("compress", "-c", "-1", "--best", *model, stdin=data)
    assert both.returncode == 2 and b"not allowed with" in both.stderr
