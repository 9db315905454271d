"""``lmpress distil``: a student of the tiny model, trained on the tiny model's own kind of text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TRAINING_TEXT, run

import lmpress
from lmpress import distillation
from lmpress.distillation import Shape, distil
from lmpress.models import load_model

SHAPE = Shape(hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32, head_dim=8)
SAMPLES = [TRAINING_TEXT[i : i + 300].encode() for i in range(0, len(TRAINING_TEXT), 300)]
SMALL = {"shape": SHAPE, "block": 32, "batch": 4}


def test_a_student_is_a_model_folder_the_exact_engine_codes_with(tiny, tmp_path):
    student = distil(tiny, SAMPLES, tmp_path / "student", steps=40, **SMALL)
    folder = student.path
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", distillation.CARD, "README.md"} <= files
    assert not list(tmp_path.glob(".*")), "the working folder and temporary files are gone"
    lm = load_model(str(folder))
    card = json.loads((folder / distillation.CARD).read_text())
    assert card == student.card and card["model_id"] == lm.model_id and card["steps"] == 40
    assert card["parameters"] == sum(p.numel() for p in lm_params(folder))
    assert lm.tokenizer.encode("fox jumps").ids == tiny.tokenizer.encode("fox jumps").ids
    assert lm.start_token == tiny.start_token
    data = TRAINING_TEXT[:500].encode()
    assert lmpress.decompress(lmpress.compress(data, lm), lm) == data
    # the teacher's bits on the same held-out blocks are there to compare with, and training taught it something
    assert 0 < card["teacher_bits_per_byte"] < 8 and card["student_bits_per_byte"] < 8


def lm_params(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).parameters()


def test_training_lowers_the_students_bits(tiny, tmp_path):
    short = distil(tiny, SAMPLES, tmp_path / "a", steps=2, **SMALL).card
    long = distil(tiny, SAMPLES, tmp_path / "b", steps=60, **SMALL).card
    assert long["student_bits_per_byte"] < short["student_bits_per_byte"]
    assert long["teacher_bits_per_byte"] == short["teacher_bits_per_byte"]


def test_a_stopped_run_resumes_to_the_same_student(tiny, tmp_path):
    whole = distil(tiny, SAMPLES, tmp_path / "whole", steps=8, **SMALL)
    seen: list[tuple[str, int]] = []

    def stop_at_five(stage: str, done: int, total: int) -> None:
        seen.append((stage, done))
        if stage == "training" and done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distil(tiny, SAMPLES, tmp_path / "resumed", steps=8, progress=stop_at_five, **SMALL)
    assert not (tmp_path / "resumed").exists()
    assert ("teacher", 1) in seen or any(stage == "teacher" for stage, _ in seen)
    seen.clear()
    resumed = distil(tiny, SAMPLES, tmp_path / "resumed", steps=8, progress=lambda *a: seen.append(a[:2]), **SMALL)
    assert seen[0] == ("training", 6), "the teacher's targets come from the cache, training from step 5"
    same = (whole.path / "model.safetensors").read_bytes() == (resumed.path / "model.safetensors").read_bytes()
    assert same and whole.card["model_id"] == resumed.card["model_id"]


def test_bad_requests(tiny, tmp_path):
    with pytest.raises(ValueError, match="at least"):
        distil(tiny, [b"too short"], tmp_path / "s", **SMALL)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        distil(tiny, SAMPLES, tmp_path / "taken", **SMALL)
    with pytest.raises(ValueError, match="steps"):
        distil(tiny, SAMPLES, tmp_path / "s", steps=0, **SMALL)


def test_held_out_blocks():
    assert distillation.held_out(2).tolist() == [False, True]
    hold = distillation.held_out(100)
    assert hold.sum() == 5 and not hold[:19].any() and hold[19]


def test_projected_embeddings_keep_the_teachers_geometry():
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(50, 12, generator=gen) @ torch.diag(torch.tensor([5.0, 3.0] + [0.1] * 10))
    p = distillation.projected_embeddings(e, 2)
    assert p.shape == (50, 2)
    assert torch.isclose(p.norm(dim=1).mean(), e.norm(dim=1).mean())
    # two leading directions hold nearly all of it: distances between tokens are kept, up to the common scale
    de, dp = torch.cdist(e, e), torch.cdist(p, p)
    assert np.corrcoef(de.flatten().numpy(), dp.flatten().numpy())[0, 1] > 0.99
    assert distillation.projected_embeddings(e, 16)[:, 12:].abs().max() == 0


def test_the_command(tiny_model_dir, tmp_path):
    sample = tmp_path / "samples.txt"
    sample.write_text(TRAINING_TEXT)
    out = tmp_path / "student"
    r = run("distil", sample, "-o", out, "--model", tiny_model_dir, "--steps", "2", "--preset", "tiny")
    assert r.returncode == 0, r.stderr
    assert b"wrote" in r.stderr and b"bits/byte" in r.stderr and b"--model" in r.stderr
    assert load_model(str(out)).model_id == json.loads((out / distillation.CARD).read_text())["model_id"]
    r = run("distil", sample, "-o", out, "--model", tiny_model_dir)
    assert r.returncode == 1 and b"already exists" in r.stderr and r.stderr.count(b"\n") == 1
    (tmp_path / "short.txt").write_text("a few words")
    r = run("distil", tmp_path / "short.txt", "-o", tmp_path / "s2", "--model", tiny_model_dir)
    assert r.returncode == 1 and b"at least" in r.stderr and r.stderr.count(b"\n") == 1
    assert not (tmp_path / "s2").exists()
    r = run("distil", sample, "-o", tmp_path / "s3", "--steps", "0")
    assert r.returncode == 1 and b"--steps" in r.stderr
