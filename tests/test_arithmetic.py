"""The arithmetic's definitions: tables exact to the last bit, exp2's weights within their bound."""

from __future__ import annotations

import mpmath
import numpy as np
import torch

from lmpress.exact import arithmetic as A
from lmpress.exact.tables import rope_tables, sigmoid_table


def test_tables_are_exact():
    mp = mpmath.mp.clone()
    mp.prec = 200
    cos, sin = rope_tables(2048, 64, 100000.0)
    for p, i in ((0, 0), (1, 3), (777, 17), (2047, 31)):
        angle = p * mp.power(100000, -mp.mpf(2 * i) / 64)
        assert cos[p, i].item() == np.float32(float(mp.cos(angle)))
        assert sin[p, i + 32].item() == np.float32(float(mp.sin(angle)))
    sig = sigmoid_table(A.SIGMOID_FRAC, A.SIGMOID_SPAN)
    n = A.SIGMOID_SPAN << A.SIGMOID_FRAC
    for i in (-n, -1, 0, 5, n):
        assert sig[i + n].item() == np.float32(float(1 / (1 + mp.exp(-mp.mpf(i) / (1 << A.SIGMOID_FRAC)))))


def test_exp2_weights():
    d = torch.arange(0, (A.SCORE_ONE + 3) << A.SCORE_FRAC, dtype=torch.int32)
    e = A.exp2_fixed(d, A.SCORE_FRAC, A.SCORE_ONE)
    assert e[0] == 2**A.SCORE_ONE and (e[1:] <= e[:-1]).all() and e[-1] == 0
    ideal = 2.0 ** (A.SCORE_ONE - d.double() / 64)
    assert ((e.double() - ideal).abs() <= ideal * 3.2e-6 + 0.5).all()
