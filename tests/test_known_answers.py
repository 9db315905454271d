"""docs/FORMAT.md's known-answer values are what lmpress computes: a second implementation checks itself against the
same values. ``python tests/test_known_answers.py`` prints them (with the default model's, which needs it)."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmpress.codec import context_mixing as cm
from lmpress.exact import arithmetic as A
from lmpress.exact import kernels
from lmpress.exact.tables import rope_tables, sigmoid_table

FORMAT = Path(__file__).parents[1] / "docs" / "FORMAT.md"
EXP2_SAMPLES = (0, 1, 63, 64, 65, 1000, 1407, 1471, 1472)  # score weights: frac 6, one 22 (1471: the last nonzero)
LOGIT_SAMPLES = (0, 1, 255, 256, 2000, 7935, 8191)  # logit weights: frac 8, one 30
SIGMOID_SAMPLES = (-4096, -1000, -1, 0, 1, 256, 4096)
ROPE_SAMPLES = ((1, 0), (1, 31), (777, 17), (2047, 5))  # (position, i) for θ = 100000, hd = 64 (SmolLM2-135M)
LOGITS = [0, -256, -512, 300, 300, -4194304, 17, -9]  # a row of 8 logits: ties for the top, one far below
CM_TOKENS = [7, 300, 12, 5]  # a row's last tokens, for cm-v1's context hashes


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
    out += _context_mixing_lines(freqs.numpy())
    if default_model is not None:
        out += _model_lines(default_model)
    return out


def _context_mixing_lines(freqs: np.ndarray) -> list[str]:
    """cm-v1: the hashes of an order-4 context and of a column context, the slot and tag of the first in a table of
    2**10 slots, and the mix of the 8 frequencies above with two candidates: token 6 with an order-8 context
    feature of value 8 (weight +2.5 bits) and token 0 with a match-length feature of value 5 (weight −1 bit); then
    the weights after token 6 is coded."""
    recent = np.zeros(max(cm.ORDERS), np.int64)
    recent[-len(CM_TOKENS) :] = CM_TOKENS
    hashes = np.zeros(cm.TABLES, np.uint64)
    cm.context_hashes(recent, len(CM_TOKENS), 41, hashes)
    order4 = hashes[cm.ORDERS.index(len(CM_TOKENS))]
    slot, tag = cm.slot_and_tag(order4, 10)
    out = [
        f"cm context tokens={CM_TOKENS} = 0x{int(order4):016x}",
        f"cm column context column=41 last={CM_TOKENS[-1]} = 0x{int(hashes[cm.TABLES - 1]):016x}",
        f"cm slot bits=10 hash=0x{int(order4):016x} = slot {slot} tag 0x{int(tag):08x}",
    ]
    n, vocab = 2, len(freqs)
    cands = np.full(cm.MAX_CANDIDATES, -1, np.int32)
    cands[:n] = (6, 0)
    feats = np.full((cm.MAX_CANDIDATES, cm.SLOTS), -1, np.int8)
    feats[0, 2], feats[1, 0] = 8, 5
    f = np.zeros(cm.MAX_CANDIDATES, np.int32)
    f[:n] = freqs[cands[:n]]
    weights, updates = np.zeros(cm.FEATURES, np.int64), np.zeros(cm.FEATURES, np.int64)
    features = [cm.feature(2, 8, cm.share_group(f[0])), cm.feature(0, 5, cm.share_group(f[1]))]
    weights[features] = (5 << 15, -(1 << 16))
    boosted = np.zeros(cm.MAX_CANDIDATES, np.int64)
    others, rest = cm.boost_row(weights, cands, feats, f, n, vocab, boosted)
    mixed = np.empty((1, vocab), np.int64)
    cm.mixed_frequencies(freqs[None].astype(np.int64), cands[None], boosted[None], np.array([n]), np.array([others]),
                         np.array([rest]), mixed)  # fmt: skip
    out.append(f"cm mix f={freqs.tolist()} x={features} = a {boosted[:n].tolist()} g {mixed[0].tolist()}")
    cm.learn_row(weights, updates, cands, feats, f, boosted, n, 6)
    out.append(f"cm learn token=6 x={features} = w {weights[features].tolist()}")
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
