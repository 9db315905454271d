"""Dictionaries: choosing the text, the .lmpd file, the archives made with one, and the errors around them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TRAINING_TEXT, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmpress
from lmpress.cli.dictionaries import report
from lmpress.codec import format as fmt
from lmpress.codec.scoring import score_rows
from lmpress.codec.settings import Settings
from lmpress.dictionary import DEFAULT_TOKENS, SEGMENT, Dictionary, select, train_adapter
from lmpress.errors import DictionaryMismatchError, FormatError, ModelMismatchError
from lmpress.exact.arithmetic import merge_low_rank
from lmpress.models import adapted, load_model
from lmpress.tuning import HOLD_OUT, Trial, Tuned

SAMPLES = [TRAINING_TEXT.encode()[i : i + 160] for i in range(0, 3000, 80)]


@pytest.fixture(scope="module")
def dictionary(tiny):
    return lmpress.train(tiny, SAMPLES, size=48)


def test_select_covers_shared_text_first_and_keeps_whole_samples():
    common = [7, 8, 9, 10, 11]
    samples = [[1, *common, 2], [3, *common, 4], [5, 6, 7], [1, *common, 4]]
    chosen = select(samples, size=100)
    assert chosen[-7:] in samples  # the best segment is last, whole
    assert sorted(chosen) == sorted(t for s in samples if s != [5, 6, 7] for t in s)  # then others that share
    assert select(samples, size=5) == chosen[-5:]
    assert select([[1, 2, 3], [4, 5, 6]], size=10) == []  # nothing shared: nothing to learn
    long = list(range(3 * SEGMENT))
    assert len(select([long, long], size=10_000)) == 2 * len(long)  # long samples are cut into segments


def test_training_is_deterministic_and_sized(tiny, dictionary):
    assert 0 < len(dictionary.tokens) <= 48
    assert lmpress.train(tiny, reversed(SAMPLES[::-1]), size=48) == dictionary
    assert dictionary.model_id == tiny.model_id
    with pytest.raises(ValueError, match="share no text"):
        lmpress.train(tiny, [b"abc"], size=48)


def test_tuning_measures_each_size_on_held_out_samples_and_builds_the_best_from_all(tiny):
    seen = []
    tuned = lmpress.tune(tiny, SAMPLES, sizes=[16, 48, 1000], progress=lambda done, total: seen.append((done, total)))
    usable = [s for s in SAMPLES if tiny.tokenize(s)]  # a sample that is not text teaches nothing: left out
    held, rest = usable[HOLD_OUT - 1 :: HOLD_OUT], [s for i, s in enumerate(usable) if i % HOLD_OUT != HOLD_OUT - 1]
    assert (tuned.held_out, tuned.held_out_bytes) == (len(held), sum(map(len, held)))
    assert [(t.kind, t.size) for t in tuned.trials][:3] == [("none", 0), ("primed", 16), ("primed", 48)]
    assert len(tuned.trials) == 4 or lmpress.train(tiny, rest, 1000) == lmpress.train(tiny, rest, 48)  # same: once
    for trial in tuned.trials:  # each trial is what compress writes, one archive a held-out sample
        d = lmpress.train(tiny, rest, trial.size) if trial.size else None
        assert trial.archive_bytes == sum(len(lmpress.compress(s, model=tiny, dictionary=d)) for s in held)
    assert tuned.chosen == min(tuned.trials, key=lambda t: t.archive_bytes)
    assert tuned.baseline == tuned.trials[0] and tuned.pays == (tuned.chosen.kind != "none")
    assert tuned.dictionary == lmpress.train(tiny, SAMPLES, max(tuned.chosen.size, 16))  # from every sample
    assert seen[-1][0] == seen[-1][1] == len(tuned.trials) * len(held)

    few = lmpress.tune(tiny, SAMPLES[: HOLD_OUT - 1])  # none to hold out: the default size, and nothing measured
    assert (
        few.chosen is None and few.trials == () and few.dictionary == lmpress.train(tiny, SAMPLES[:4], DEFAULT_TOKENS)
    )
    assert "too few samples (4 or fewer)" in report(few)
    with pytest.raises(ValueError, match="kinds to try"):
        lmpress.tune(tiny, SAMPLES, kinds=["lora"])
    with pytest.raises(ValueError, match="at most 1,534 tokens here"):
        lmpress.tune(tiny, SAMPLES, sizes=[2000])


def test_the_report_says_when_no_dictionary_paid(dictionary):
    trials = (Trial("none", 0, 900), Trial("primed", 256, 950), Trial("primed", 512, 1000))
    said = report(Tuned(dictionary, trials[0], trials, 10, 9000, 40))
    assert "10 held-out samples (9,000 bytes)" in said and "built from 40 others" in said
    assert "(+5.6%)" in said and said.count("<- chosen") == 1 and "no dictionary  " in said.splitlines()[1][:20]
    assert said.splitlines()[-1].startswith("no dictionary made them smaller") and "without -D" in said


def test_file_round_trip_and_damage(dictionary, tmp_path):
    raw = dictionary.to_bytes()
    assert Dictionary.from_bytes(raw) == dictionary and len(dictionary.id) == 2 * fmt.DICTIONARY_ID_BYTES
    for position in range(len(raw)):
        damaged = bytearray(raw)
        damaged[position] ^= 0x41
        with pytest.raises(FormatError):
            Dictionary.from_bytes(bytes(damaged))
    for cut in range(len(raw)):
        with pytest.raises(FormatError):
            Dictionary.from_bytes(raw[:cut])
    (tmp_path / "long.lmpd").write_bytes(raw + bytes(2000))
    with pytest.raises(FormatError, match="long.lmpd: corrupted dictionary"):
        Dictionary.read(tmp_path / "long.lmpd")


CASES = {
    "one chunk": {},
    "chunks and groups": {"chunk_size": 150, "batch": 2},
    "restarts": {"window": 80, "keep": 8, "chunk_size": 2000},
    "restarts, nothing kept": {"window": 60, "keep": 0},
}


@pytest.mark.parametrize("case", CASES)
def test_round_trip_with_dictionary(tiny, dictionary, case):
    data = TRAINING_TEXT.encode()[:1500] + bytes(range(40)) + "naïve café 東京\n".encode() * 5
    blob = lmpress.compress(data, model=tiny, dictionary=dictionary, **CASES[case])
    assert blob[4] == 4 and fmt.parse_header(blob)[0].dictionary == dictionary.id
    assert lmpress.decompress(blob, model=tiny, dictionary=dictionary) == data
    d = lmpress.Decompressor(tiny, dictionary=dictionary)  # in pieces
    assert b"".join(d.decompress(blob[i : i + 7]) for i in range(0, len(blob), 7)) == data and d.eof


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode), st.integers(0, 30))
def test_round_trip_property(tiny, dictionary, data, keep):
    blob = lmpress.compress(data, model=tiny, dictionary=dictionary, window=90, keep=keep, chunk_size=120)
    assert lmpress.decompress(blob, model=tiny, dictionary=dictionary) == data


def test_scoring_over_the_computed_prefix_equals_a_whole_pass(tiny, dictionary):
    """The encoder computes the dictionary once and each window on top of it: the same logits, bit for bit, as
    one pass over the prefix and the window together (and the decoder's steps, by the round trips)."""
    rows = [tiny.tokenize(TRAINING_TEXT.encode()[:400]), tiny.tokenize(TRAINING_TEXT.encode()[500:650])]
    s = Settings(window=100, keep=10, primer=dictionary.tokens)
    prefix = s.prefix(tiny)
    got = {}
    score_rows(tiny, rows, s, lambda row, first, logits, _: got.__setitem__((row, first), logits))
    checked = 0
    with torch.inference_mode():
        for (row, first), logits in got.items():
            ctx = 0 if first < s.window - len(dictionary.tokens) else first - s.keep
            hidden = tiny.net.forward(torch.tensor([[*prefix, *rows[row][ctx:first]]]))[0, -1:]
            assert torch.equal(tiny.net.logits(hidden), logits[:1])
            checked += 1
    assert checked >= 4


def test_archive_needs_its_dictionary(tiny, dictionary, other_model_dir):
    data = TRAINING_TEXT.encode()[:600]
    blob = lmpress.compress(data, model=tiny, dictionary=dictionary)
    with pytest.raises(DictionaryMismatchError, match=f"dictionary {dictionary.id}; pass"):
        lmpress.decompress(blob, model=tiny)
    other = lmpress.train(tiny, SAMPLES[::2], size=20)
    with pytest.raises(DictionaryMismatchError, match=f"{dictionary.id}, but the one given is {other.id}"):
        lmpress.decompress(blob, model=tiny, dictionary=other)
    with pytest.raises(DictionaryMismatchError, match="was built for the model"):
        lmpress.decompress(blob, model=load_model(str(other_model_dir)), dictionary=dictionary)
    with pytest.raises(ValueError, match="dictionary tokens"):
        lmpress.compress(data, model=tiny, dictionary=dictionary, window=50)
    plain = lmpress.compress(data, model=tiny)
    assert plain[4] == 3 and lmpress.decompress(plain, model=tiny, dictionary=dictionary) == data  # not needed


def test_file_objects_and_recover_take_a_dictionary(tiny, dictionary, tmp_path):
    path = tmp_path / "notes.lmp"
    with lmpress.open(path, "wt", model=tiny, dictionary=dictionary, encoding="utf-8", newline="") as f:
        f.write(TRAINING_TEXT[:500])
    with lmpress.open(path, "rt", model=tiny, dictionary=dictionary, encoding="utf-8", newline="") as f:
        assert f.read() == TRAINING_TEXT[:500]
    data, damage = lmpress.recover(path.read_bytes(), tiny, dictionary=dictionary)
    assert data == TRAINING_TEXT[:500].encode() and damage == []


def test_command_line(tiny_model_dir, tmp_path):
    model = ["--model", tiny_model_dir]
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, s in enumerate(SAMPLES):
        (samples / f"{i}.txt").write_bytes(s)
    r = run("train", samples, "-o", tmp_path / "auto.lmpd", *model)  # the size chosen on held-out samples
    assert r.returncode == 0, r.stderr
    assert b"measured on 6 held-out samples" in r.stderr and r.stderr.count(b"<- chosen") == 1
    assert run("train", samples, "-o", tmp_path / "x.lmpd", "--size", "many", *model).stderr.endswith(
        b"--size takes a number of tokens or 'auto', not 'many'\n"
    )
    r = run("train", samples, "-o", tmp_path / "x.lmpd", "--size", 1600, *model)
    assert r.returncode == 1 and b"holds at most 1,534 tokens" in r.stderr and not (tmp_path / "x.lmpd").exists()
    r = run("train", samples, "-o", tmp_path / "notes.lmpd", "--size", 48, *model)
    assert r.returncode == 0, r.stderr
    assert b"wrote" in r.stderr and b"tokens" in r.stderr and b"measured" not in r.stderr
    assert Dictionary.read(tmp_path / "notes.lmpd").id.encode() in r.stderr
    assert run("train", samples, "-o", tmp_path / "notes.lmpd", *model).returncode == 1  # exists: needs -f
    r = run("train", samples, "-o", tmp_path / "notes.dict", *model)
    assert r.returncode == 1 and b"NAME.lmpd" in r.stderr

    (tmp_path / "a.txt").write_bytes(TRAINING_TEXT.encode()[:900])
    r = run("compress", "--verify", "-D", tmp_path / "notes.lmpd", *model, tmp_path / "a.txt")
    assert r.returncode == 0, r.stderr
    listing = run("list", tmp_path / "a.txt.lmp")
    assert b"dictionary " + Dictionary.read(tmp_path / "notes.lmpd").id.encode() in listing.stdout
    r = run("decompress", *model, "-c", tmp_path / "a.txt.lmp")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"pass its .lmpd file with -D" in r.stderr
    r = run("decompress", "-D", tmp_path / "notes.lmpd", *model, "-c", tmp_path / "a.txt.lmp")
    assert r.returncode == 0 and r.stdout == TRAINING_TEXT.encode()[:900]
    assert run("test", "-D", tmp_path / "notes.lmpd", *model, tmp_path / "a.txt.lmp").returncode == 0

    bits = {}
    for extra in ([], ["-D", tmp_path / "notes.lmpd"]):
        r = run("measure", "--json", *model, *extra, tmp_path / "a.txt")
        assert r.returncode == 0, r.stderr
        bits[bool(extra)] = json.loads(r.stdout)[-1]["bits"]
    assert bits[True] != bits[False]


@pytest.mark.slow
def test_a_dictionary_makes_small_similar_files_smaller():
    """With the default model, on records of one kind: the archives of held-out records are much smaller."""
    records = [
        json.dumps({"id": 1000 + i, "level": ["info", "warn", "error"][i % 3], "service": f"api-{i % 4}",
                    "message": f"request {i} handled in {17 * i % 250} ms", "user": f"u{(i * 37) % 91:03}"}).encode()
        for i in range(60)
    ]  # fmt: skip
    lm = load_model()
    d = lmpress.train(lm, records[:50], size=256)
    plain = with_dictionary = 0
    for r in records[50:]:
        blob = lmpress.compress(r, model=lm, dictionary=d)
        assert lmpress.decompress(blob, model=lm, dictionary=d) == r
        with_dictionary += len(blob)
        plain += len(lmpress.compress(r, model=lm))
    assert with_dictionary < 0.85 * plain, (with_dictionary, plain)


def test_low_rank_merge_is_exact_arithmetic():
    """The merge is defined operation by operation (binary64, a term of the rank at a time): any thread count
    gives the same bits, and so does the same sequence of operations in numpy."""
    g = torch.Generator().manual_seed(5)
    w, a, b = torch.randn(70, 90, generator=g), torch.randn(4, 90, generator=g) * 1e-2, torch.randn(70, 4, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge_low_rank(w, a, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, merge_low_rank(w, a, b))
    acc = np.zeros((70, 90))
    for k in range(4):
        acc += b.double().numpy()[:, k : k + 1] * a.double().numpy()[k : k + 1, :]
    assert np.array_equal(one.numpy(), (w.double().numpy() + acc).astype(np.float32))


@pytest.fixture(scope="module")
def adapter(tiny):
    pytest.importorskip("peft")
    return train_adapter(tiny, SAMPLES, steps=12, primer=24)


def test_adapter_round_trip_and_file(tiny, adapter, tmp_path):
    assert adapter.kind == 3 and len(adapter.tokens) == 24 and adapter.factors()
    path = tmp_path / "a.lmpd"
    path.write_bytes(adapter.to_bytes())
    assert Dictionary.read(path) == adapter
    data = TRAINING_TEXT.encode()[:900] + bytes(range(30))
    blob = lmpress.compress(data, model=tiny, dictionary=path, chunk_size=300, batch=2)
    assert lmpress.decompress(blob, model=tiny, dictionary=adapter) == data
    c = lmpress.Compressor(tiny, dictionary=adapter)
    assert c.model.model_id != tiny.model_id  # the coding model is the adapted one ...
    assert fmt.parse_header(c.compress(b""))[0].model_name == tiny.name  # ... the archive names the base
    rebuilt = adapted(tiny, adapter.factors(), "again")  # the merge and quantisation are deterministic
    assert rebuilt.model_id == c.model.model_id
    damaged = Dictionary(adapter.model_id, adapter.tokens, adapter.adapter[:-9])  # cut short, past its own crc
    with pytest.raises(FormatError, match="corrupted dictionary"):
        lmpress.compress(data, model=tiny, dictionary=damaged)
    elsewhere = dataclasses.replace(adapter, adapted_id="00" * 8)  # as if made from other float weights
    with pytest.raises(ModelMismatchError, match="float weights of the model differ"):
        lmpress.compress(data, model=tiny, dictionary=elsewhere)


def test_adapter_from_the_command_line(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    model = ["--model", tiny_model_dir]
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"text": s.decode(errors="ignore")}) + "\n" for s in SAMPLES)
    )
    r = run("train", "--kind", "adapter", "--steps", 3, tmp_path / "samples.jsonl", "-o", tmp_path / "a.lmpd", *model)
    assert r.returncode == 0, r.stderr
    assert b"an adapter of rank 8" in r.stderr
    r = run(
        "train",
        "--kind",
        "auto",
        "--size",
        32,
        "--steps",
        2,
        tmp_path / "samples.jsonl",
        "-o",
        tmp_path / "b.lmpd",
        *model,
    )
    assert r.returncode == 0, r.stderr
    for trial in (b"no dictionary", b"32 tokens of primed context", b"an adapter ", b"an adapter and 32 tokens"):
        assert trial in r.stderr
    (tmp_path / "a.txt").write_bytes(TRAINING_TEXT.encode()[:400])
    assert run("compress", "-D", tmp_path / "a.lmpd", *model, tmp_path / "a.txt").returncode == 0
    r = run("decompress", "-c", "-D", tmp_path / "a.lmpd", *model, tmp_path / "a.txt.lmp")
    assert r.returncode == 0 and r.stdout == TRAINING_TEXT.encode()[:400]
    r = run("measure", "--json", "-D", tmp_path / "a.lmpd", *model, tmp_path / "a.txt")
    assert r.returncode == 0 and "+dictionary" in json.loads(r.stdout)[0]["model"]  # scored by the adapted model
