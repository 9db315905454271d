"""``audit --teacher``: a student distilled from a teacher is told apart from one taught by the data alone, and an
unrelated teacher flags neither. Tiny models: a teacher of weather reports, an unrelated one of code (with the same
tokenizer), and two students of order records from the first teacher, one distilled, one from the data alone."""

from __future__ import annotations

import json
import random

import pytest
from conftest import build_tiny_model, run

from lmpress.distillation import Shape, distil
from lmpress.lens.float_engine import load_float_model
from lmpress.lens.lineage import MARGIN, trace
from lmpress.models import load_model

_rng = random.Random(0)
_CITIES = ["Berlin", "Lima", "Oslo", "Pune", "Quito"]
_WINDS = ["north", "south", "east", "west"]
WEATHER = "".join(
    f"Weather in {_rng.choice(_CITIES)}: {_rng.randint(-5, 30)} degrees, wind {_rng.choice(_WINDS)}.\n"
    for _ in range(150)
)
ORDERS = "".join(
    f"{_rng.choice(['Ada', 'Bo', 'Cy', 'Dee', 'Eli', 'Fay'])} ordered {_rng.randint(1, 9)} boxes of "
    f"{_rng.choice(['tea', 'rice', 'salt', 'figs'])} for {_rng.choice(_CITIES)}.\n"
    for _ in range(200)
)
CODE = "".join(
    f"def f{_rng.randint(0, 99)}(x):\n    return x * {_rng.randint(2, 9)} + {_rng.randint(0, 9)}\n" for _ in range(120)
)
HUMAN = ORDERS[-3000:].encode()  # the documents the audit reads: order records the students never trained on


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lineage")
    teacher = build_tiny_model(root / "weather", seed=2, text=WEATHER)
    unrelated = build_tiny_model(root / "code", seed=3, text=CODE, tokenizer=teacher / "tokenizer.json")
    lm = load_model(str(teacher))
    samples = [ORDERS[i : i + 400].encode() for i in range(0, len(ORDERS) - 3000, 400)]
    small = {"shape": Shape(32, 2, 4, 2, 64, head_dim=8), "steps": 150, "block": 32, "batch": 8}
    distilled = distil(lm, samples, root / "distilled", **small).path
    data_only = distil(lm, samples, root / "data-only", soft_weight=0.0, **small).path
    paths = {"teacher": teacher, "unrelated": unrelated, "distilled": distilled, "data-only": data_only}
    return {k: load_float_model(str(p)) for k, p in paths.items()} | {"paths": paths}


def test_a_distilled_student_is_flagged_and_a_student_of_the_data_is_not(models):
    found = trace(models["teacher"], models["distilled"], models["data-only"], [HUMAN])
    assert found.flagged and found.interval[0] > MARGIN and found.suspect_repeats > found.reference_repeats
    reverse = trace(models["teacher"], models["data-only"], models["distilled"], [HUMAN])
    assert not reverse.flagged and reverse.difference == pytest.approx(-found.difference)


def test_an_unrelated_teacher_flags_neither_student(models):
    for suspect, reference in (("distilled", "data-only"), ("data-only", "distilled")):
        found = trace(models["unrelated"], models[suspect], models[reference], [HUMAN])
        assert not found.flagged and found.interval[0] < MARGIN


def test_every_model_needs_the_teachers_tokenizer(models, tiny_model_dir):
    other = load_float_model(str(tiny_model_dir))
    with pytest.raises(ValueError, match="tokenizer"):
        trace(models["teacher"], other, models["data-only"], [HUMAN])
    with pytest.raises(ValueError, match="windows"):
        trace(models["teacher"], models["distilled"], models["data-only"], [b"Bo"])


def test_the_command(models, tmp_path):
    paths = models["paths"]
    (tmp_path / "orders.txt").write_bytes(HUMAN)
    args = ["audit", tmp_path / "orders.txt", "--teacher", paths["teacher"], "--reference", paths["data-only"]]
    r = run(*args, "--model", paths["distilled"])
    assert r.returncode == 0, r.stderr
    assert b"learned from the teacher" in r.stdout and b"95% interval" in r.stdout
    r = run(*args, "--model", paths["data-only"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"] == "no sign of the teacher"
    r = run("audit", tmp_path / "orders.txt", "--teacher", paths["teacher"], "--model", paths["distilled"])
    assert r.returncode == 1 and b"--reference" in r.stderr and r.stderr.count(b"\n") == 1
