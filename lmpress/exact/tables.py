"""Lookup tables for the integer model's sigmoid and rotary embedding, built with exact arithmetic.

libm's exp, sin and cos differ between platforms in the last bit, so no table entry comes from them:
each is computed with mpmath (pure-Python integers, the same on every machine) to far more precision
than it is stored with, then rounded to binary64 and that to binary32. docs/FORMAT.md defines every table
by formula.
"""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import torch

_PREC = 160  # working precision in bits: rounding ties at 53 bits are out of reach of the error


def _mp() -> mpmath.context.MPContext:
    ctx = mpmath.mp.clone()
    ctx.prec = _PREC
    return ctx


@functools.lru_cache(maxsize=4)
def sigmoid_table(frac_bits: int, span: int) -> torch.Tensor:
    """``binary32(1 / (1 + exp(-i / 2**frac_bits)))`` for ``i = -n .. n``, ``n = span * 2**frac_bits``."""
    mp = _mp()
    n, unit = span << frac_bits, mp.mpf(1) / (1 << frac_bits)
    values = [float(1 / (1 + mp.exp(-i * unit))) for i in range(-n, n + 1)]  # binary64, rounded once
    return torch.from_numpy(np.array(values, dtype=np.float64).astype(np.float32))


@functools.lru_cache(maxsize=4)
def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding cos and sin [length, head_dim] (half-split layout): ``binary32(binary64(cos(p * w_i)))``
    with ``w_i = theta ** (-2i / head_dim)``.

    Positions advance by exact rotation in 2**-_PREC fixed point (error below 2**-140 at any length here),
    which is thousands of times faster than evaluating cos and sin at every position.
    """
    mp, half, one = _mp(), head_dim // 2, 1 << _PREC
    cos = np.empty((length, half), dtype=np.float64)
    sin = np.empty((length, half), dtype=np.float64)
    for i in range(half):
        w = mp.power(mp.mpf(theta), -mp.mpf(2 * i) / head_dim)
        c1, s1 = int(mp.nint(mp.cos(w) * one)), int(mp.nint(mp.sin(w) * one))
        c, s = one, 0
        for p in range(length):
            cos[p, i], sin[p, i] = c / one, s / one  # int / int: correctly rounded to binary64
            c, s = (c * c1 - s * s1) >> _PREC, (s * c1 + c * s1) >> _PREC
    c32, s32 = torch.from_numpy(cos.astype(np.float32)), torch.from_numpy(sin.astype(np.float32))
    return torch.cat((c32, c32), dim=-1), torch.cat((s32, s32), dim=-1)
