"""The lens's engines: any causal LM on the float engine, beside the exact engine, in the API and the command."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FAMILIES, TRAINING_TEXT, run

import lmpress
from lmpress.codec.chunking import chunks_of
from lmpress.codec.settings import Settings
from lmpress.exact import ENGINE
from lmpress.lens import float_engine
from lmpress.lens.analysis import load_lens_model, score_document, scoring_setup
from lmpress.lens.float_engine import FloatModel
from lmpress.models import SUPPORTED_ARCHITECTURES, LanguageModel

TEXT = TRAINING_TEXT.encode()[:1500]
SMALL = {"window": 64, "keep": 16, "chunk_size": 600}  # several chunks, several windows each


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_family_is_scored_on_the_float_engine(family_model_dirs, arch):
    fm = load_lens_model(str(family_model_dirs[arch]), "float32" if arch in SUPPORTED_ARCHITECTURES else "auto")
    assert isinstance(fm, FloatModel)
    scores = score_document(fm, TEXT, Settings(**SMALL), detail=3)
    assert scores.engine == "float32" and scores.n_bytes == len(TEXT) and not scores.skipped_bytes
    n = sum(len(fm.tokenize(chunk)) for chunk in chunks_of(TEXT, Settings(**SMALL)))
    assert len(scores.bits) == len(scores.z) == len(scores.rank) == len(scores.top) == n
    assert all(math.isfinite(b) and b >= 0 for b in scores.bits) and min(scores.rank) >= 1
    assert 4 < scores.bits_per_byte < 12  # a random model: near the uniform distribution's bits
    assert "".join(scores.text) == TEXT.decode()
    binary = score_document(fm, bytes(range(256)) * 8, Settings(**SMALL))
    assert binary.skipped_bytes == 2048 and not binary.bits  # not text: not scored, said so


def test_auto_runs_the_exact_engine_where_it_can(family_model_dirs):
    for arch in SUPPORTED_ARCHITECTURES:  # llama's network: the exact engine's
        assert isinstance(load_lens_model(str(family_model_dirs[arch])), LanguageModel)
    assert isinstance(load_lens_model(str(family_model_dirs["gemma3_text"])), FloatModel)
    with pytest.raises(lmpress.UnsupportedArchitectureError, match="float engine"):
        load_lens_model(str(family_model_dirs["gemma3_text"]), "exact")
    with pytest.raises(ValueError, match="engine"):
        load_lens_model(None, "float64")


def test_windows_side_by_side_score_as_one_at_a_time(family_model_dirs, monkeypatch):
    """Padding on the right never reaches the positions before it: batching changes no score (beyond float
    rounding of the batched products)."""
    fm = load_lens_model(str(family_model_dirs["gpt2"]))
    together = score_document(fm, TEXT, Settings(**SMALL))
    monkeypatch.setattr(float_engine, "LOGIT_ELEMENTS", 1)  # one window a pass
    alone = score_document(fm, TEXT, Settings(**SMALL))
    assert together.bits == pytest.approx(alone.bits, abs=1e-4)


def test_windows_are_no_wider_than_the_model(family_model_dirs):
    fm = load_lens_model(str(family_model_dirs["gpt2"]))  # 256 positions
    scores = score_document(fm, TRAINING_TEXT.encode() * 2, Settings(window=2048, keep=512, chunk_size=4000))
    assert fm.max_positions == 256
    data = TRAINING_TEXT.encode() * 2
    assert len(scores.bits) == sum(len(fm.tokenize(c)) for c in chunks_of(data, Settings(chunk_size=4000)))


def test_float_and_exact_engines_agree_on_one_model(tiny_model_dir):
    """The exact engine is the float model quantised: its bits stay near the float engine's (the default model's
    figure is the benchmark's)."""
    settings = Settings(mixer="", **SMALL)
    exact = score_document(load_lens_model(str(tiny_model_dir), "exact"), TEXT, settings)
    floating = score_document(load_lens_model(str(tiny_model_dir), "float32"), TEXT, settings)
    assert exact.engine == ENGINE and floating.engine == "float32"
    assert len(exact.bits) == len(floating.bits)
    assert abs(exact.total_bits / floating.total_bits - 1) < 0.05


def test_dictionaries_are_for_the_exact_engine(family_model_dirs, tiny):
    fm = load_lens_model(str(family_model_dirs["phi3"]))
    dictionary = lmpress.train(tiny, [TEXT])
    with pytest.raises(lmpress.LmpressError, match="float engine"):
        scoring_setup(fm, dictionary)


def test_the_command_measures_audits_and_shows_every_family(family_model_dirs, tmp_path):
    doc, other = tmp_path / "doc.txt", tmp_path / "other.txt"
    doc.write_bytes(TEXT)
    other.write_bytes(TRAINING_TEXT.encode()[500:1300])
    models = [a for m in family_model_dirs.values() for a in ("--model", m)]
    r = run("measure", "--json", "--window", 64, "--keep-tokens", 16, *models, doc, other)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    totals = {row["model"]: row for row in rows if row["document"] == "(total)"}
    assert set(totals) == {m.name for m in family_model_dirs.values()}
    assert {row["engine"] for row in totals.values()} == {
        ENGINE,
        "float32",
    }  # llama, mistral, qwen2 exact; the rest float
    assert {m for m, row in totals.items() if row["engine"] == ENGINE} == set(SUPPORTED_ARCHITECTURES)
    assert all(row["bytes"] == len(TEXT) + 800 for row in totals.values())

    r = run("measure", "--engine", "bfloat16", "--model", family_model_dirs["llama"], doc)
    assert r.returncode == 0 and b"bfloat16" in r.stdout, r.stderr
    r = run("measure", "--json", "--windows", "rolling", "--window", 200, "--model", family_model_dirs["gpt2"], doc)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["bytes"] == len(TEXT), r.stderr
    r = run("measure", "--windows", "rolling", "--model", family_model_dirs["llama"], doc)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"float engine" in r.stderr

    r = run("audit", "--json", "--model", family_model_dirs["phi3"], "--local-window", 32, doc, other)
    assert r.returncode == 0, r.stderr
    assert [row["engine"] for row in json.loads(r.stdout)] == ["float32", "float32"]

    page = tmp_path / "page.html"
    r = run("show", "--model", family_model_dirs["qwen3"], "--vs", family_model_dirs["rwkv"], doc, "-o", page)
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    assert "qwen3" in html and "rwkv" in html and "<td>float32</td>" in html

    r = run("compress", "-c", "--model", family_model_dirs["gpt2"], doc)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"float engine" in r.stderr


def test_rolling_windows_cover_every_token_once_as_lm_evaluation_harness_does():
    for n, length in [(1, 4), (4, 4), (5, 4), (23, 8), (64, 8)]:
        ids = list(range(100, 100 + n))
        seen = []
        for inputs, first, end, shift in float_engine.rolling_windows(ids, 7, length):
            assert len(inputs) <= length and end - first <= length
            for a in range(first, end):  # the input before token a is the token before it (or the start token)
                j = a - shift
                assert inputs[j] == (ids[a - 1] if a else 7)
            seen += range(first, end)
        assert seen == list(range(n))


def test_rolling_windows_score_as_one_causal_pass(family_model_dirs):
    """With a window as long as the document, rolling scoring is one pass over the whole document from the start
    token; shorter windows score every token with the tokens before it in its window."""
    import torch

    fm, text = load_lens_model(str(family_model_dirs["gpt2"])), TEXT[:400]  # within its 256 positions
    ids = fm.tokenize(text)
    with torch.inference_mode():
        logits = fm.model(input_ids=torch.tensor([[fm.start_token, *ids[:-1]]])).logits[0].double()
    direct = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0] / math.log(2)
    whole = score_document(fm, text, Settings(window=len(ids) + 1, keep=0), rolling=True)
    assert whole.n_bytes == len(text) and whole.bits == pytest.approx(direct.tolist(), abs=1e-4)
    short = score_document(fm, text, Settings(window=100, keep=0), rolling=True)
    assert len(short.bits) == len(ids) and short.bits[:100] == pytest.approx(direct[:100].tolist(), abs=1e-4)
    with pytest.raises(lmpress.LmpressError, match="float engine"):
        score_document(load_lens_model(str(family_model_dirs["llama"])), TEXT, rolling=True)
