"""docs/FORMAT.md's known-answer values are what lmpress computes: a second implementation checks itself against the
same values. ``python tests/test_known_answers.py`` prints them (with the default model's, which needs it)."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest
import torch

from lmpress.exact import arithmetic as A
from lmpress.exact import kernels
from lmpress.exact.tables import rope_tables, sigmoid_table

FORMAT = Path(__file__).parents[1] / "docs" / "FORMAT.md"
EXP2_SAMPLES = (0, 1, 63, 64, 65, 1000, 1407, 1471, 1472)  # score weights: frac 6, one 22 (1471: the last nonzero)
LOGIT_SAMPLES = (0, 1, 255, 256, 2000, 7935, 8191)  # logit weights: frac 8, one 30
SIGMOID_SAMPLES = (-4096, -1000, -1, 0, 1, 256, 4096)
ROPE_SAMPLES = ((1, 0), (1, 31), (777, 17), (2047, 5))  # (position, i) for θ = 100000, hd = 64 (SmolLM2-135M)
LOGITS = [0, -256, -512, 300, 300, -4194304, 17, -9]  # a row of 8 logits: ties for the top, one far below


def _hex(x: float) -> str:
    """A binary32 value as its bits, 0x and eight hex digits."""
    return "0x" + struct.pack(">f", x).hex()


def lines(default_model=None) -> list[str]:
    """The known answers, one ``name arguments = value`` a line."""
    out = []
    for frac, one, samples in ((A.SCORE_FRAC, A.SCORE_ONE, EXP2_SAMPLES), (A.LOGIT_FRAC, A.LOGIT_ONE, LOGIT_SAMPLES)):
        e = A.exp2_fixed(torch.tensor(samples, dtype=torch.int32), frac, one)
        out += [f"exp2 frac={frac} one={one} d={d} = {int(v)}" for d, v in zip(samples, e)]
    sigmoid = sigmoid_table(A.SIGMOID_FRAC, A.SIGMOID_SPAN)
    n = A.SIGMOID_SPAN << A.SIGMOID_FRAC
    out += [f"sigmoid i={i} = {_hex(sigmoid[i + n].item())}" for i in SIGMOID_SAMPLES]
    cos, sin = rope_tables(2048, 64, 100000.0)
    for p, i in ROPE_SAMPLES:
        out.append(f"rope theta=100000 hd=64 p={p} i={i} = cos {_hex(cos[p, i].item())} sin {_hex(sin[p, i].item())}")
    freqs = A.frequencies(torch.tensor([LOGITS], dtype=torch.int32))[0]
    out.append(f"frequencies z={LOGITS} = {freqs.tolist()}")
    if default_model is not None:
        out += _model_lines(default_model)
    return out


def _model_lines(lm) -> list[str]:
    """The default model's first prediction, from the start token alone: what every chunk of the golden archive
    begins with."""
    net = lm.net
    with torch.inference_mode():
        logits = net.logits(net.forward(torch.tensor([[lm.start_token]]))[0])[0]
    freqs = A.frequencies(logits[None])[0]
    top = torch.argsort(logits, descending=True, stable=True)[:3].tolist()
    return [
        f"model smollm2-135m id = {lm.model_id}",
        f"model smollm2-135m config = {net.cfg.identity()}",
        f"model smollm2-135m start={lm.start_token} logits sum = {int(logits.long().sum())}",
        *(
            f"model smollm2-135m start={lm.start_token} token={t} = logit {int(logits[t])} f {int(freqs[t])}"
            for t in top
        ),
    ]


def documented() -> list[str]:
    """The lines of FORMAT.md's known-answers block."""
    text = FORMAT.read_text()
    block = re.search(r"```known-answers\n(.*?)```", text, re.S)
    assert block, "docs/FORMAT.md has no known-answers block"
    return block.group(1).strip().splitlines()


def test_known_answers_are_documented():
    doc = [line for line in documented() if not line.startswith("model ")]
    assert doc == lines()


def test_compiled_frequencies_give_the_known_answer():
    want = A.frequencies(torch.tensor([LOGITS], dtype=torch.int32))
    assert torch.equal(kernels.frequencies(torch.tensor([LOGITS], dtype=torch.int32)), want)


@pytest.mark.slow
def test_default_model_known_answers():
    from lmpress.models import load_model

    assert [line for line in documented() if line.startswith("model ")] == _model_lines(load_model())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from lmpress.models import load_model

    print("\n".join(lines(load_model() if "--model" in sys.argv else None)))
