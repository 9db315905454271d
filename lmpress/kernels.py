"""Compiled CPU kernels for the one step torch cannot run fast: the attention softmax.

``llama.attention_weights`` is the definition (torch operations, used on GPUs); this is the same
arithmetic fused into one pass per row with numba, so the scores stay in cache. It must give the
same bits, and the tests check that it does. No fast-math: LLVM may not reassociate or fuse.
Rounding to nearest even is (x + 1.5·2**23) − 1.5·2**23, exact for |x| ≤ 2**22, which holds for
every value rounded here.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .llama import EXP2_POLY, LIMIT, Q8, SCORE_FRAC, SCORE_ONE, TINY

_F = np.float32
_I = np.int32
_MAGIC = _F(1.5 * 2**23)
_LIMIT = _F(LIMIT)
_DMAX = _I(((SCORE_ONE + 2) << SCORE_FRAC) - 1)
_FRAC_MASK = _I((1 << SCORE_FRAC) - 1)
_UNIT = _F(2.0**-SCORE_FRAC)
_C0, _C1, _C2, _C3, _C4 = (_F(c) for c in EXP2_POLY)
_Q = _F(Q8)
_TINY = _F(TINY)


@njit(inline="always", boundscheck=False)
def _weights_row(dots, key_factor, qf, v_scale, n, z, ints, w, wq):  # pragma: no cover (compiled)
    """One row of ``llama.attention_weights`` over its n visible keys: fills wq[:n], returns (wd, total)."""
    for s in range(n):
        y = min(max(_F(dots[s]) * key_factor[s] * qf, -_LIMIT), _LIMIT)
        z[s] = _I((y + _MAGIC) - _MAGIC)
    top = z[0]
    for s in range(1, n):
        top = max(top, z[s])
    for s in range(n):  # d = top − z = 64·i + f: 2**(22 − i) from exponent bits, P(f/64) by Horner
        d = _I(min(_I(top - z[s]), _DMAX))
        ints[s] = _I(_I(_I(127 + SCORE_ONE) - _I(d >> _I(SCORE_FRAC))) << _I(23))
        w[s] = _F(_I(d & _FRAC_MASK)) * _UNIT
    scale = ints[:n].view(np.float32)
    for s in range(n):
        u = w[s]
        p = (((u * _C4 + _C3) * u + _C2) * u + _C1) * u + _C0
        z[s] = _I((p * scale[s] + _MAGIC) - _MAGIC)
    total = np.int64(0)
    for s in range(n):
        total += z[s]
    for s in range(n):
        w[s] = _F(z[s]) * v_scale[s]
    as_int = w[:n].view(np.int32)  # w ≥ 0: its bit patterns order as its values do
    top_bits = as_int[0]
    for s in range(1, n):
        top_bits = max(top_bits, as_int[s])
    ints[0] = top_bits
    amax = max(ints[:1].view(np.float32)[0], _TINY)
    f = _Q / amax
    for s in range(n):
        wq[s] = np.int8((w[s] * f + _MAGIC) - _MAGIC)
    return amax / _Q, total


@njit(parallel=True, boundscheck=False, cache=True)
def _weights(dots, key_factor, q_factor, visible, v_scale, wq, wd, total):  # pragma: no cover (compiled)
    n_groups, n_rows, width = dots.shape
    for job in prange(n_groups * n_rows):
        g, r = job // n_rows, job % n_rows
        n = visible[r]
        z, ints, w = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32)
        wd[g, r], total[g, r] = _weights_row(
            dots[g, r], key_factor[g], q_factor[g, r], v_scale[g], n, z, ints, w, wq[g, r]
        )
        wq[g, r, n:] = 0


@njit(parallel=True, boundscheck=False, cache=True)
def _attend(q, q_factor, keys, key_factor, values, v_scale, visible, width, out, wd, total, dots, wq, scratch):  # noqa: E501 # pragma: no cover
    """Queries q [G', R, hd] on the first ``width`` positions of int8 keys [G', W, hd] and values stored
    transposed [G', hd, W], in one pass per group: dots, weights, and the exact sum of weights times values
    into out [G', R, hd] (int32). Every product is a reduction of int8 pairs into int32 along contiguous
    memory, which LLVM turns into vpmaddwd; whole (contiguous) arrays keep it vectorisable."""
    n_groups, n_rows, hd = q.shape
    for g in prange(n_groups):
        for s in range(width):
            for r in range(n_rows):
                acc = _I(0)
                for j in range(hd):
                    acc += _I(q[g, r, j]) * _I(keys[g, s, j])
                dots[g, r, s] = acc
        z, ints = scratch[g, 0], scratch[g, 1]
        w = scratch[g, 2].view(np.float32)
        for r in range(n_rows):
            n = visible[r]
            wd[g, r], total[g, r] = _weights_row(
                dots[g, r], key_factor[g], q_factor[g, r], v_scale[g], n, z, ints, w, wq[g, r]
            )
            wq[g, r, n:width] = 0
        for r in range(n_rows):
            for j in range(hd):
                acc = _I(0)
                for s in range(width):
                    acc += _I(wq[g, r, s]) * _I(values[g, j, s])
                out[g, r, j] = acc


def attention_weights(dots, key_factor, q_factor, visible, v_scale):
    """``llama.attention_weights``, compiled: same arguments, same results."""
    lead = dots.shape[:-2]
    rows, width = dots.shape[-2:]
    flat = dots.reshape(-1, rows, width)
    wq = torch.empty(flat.shape, dtype=torch.int8)
    wd = torch.empty(flat.shape[:2], dtype=torch.float32)
    total = torch.empty(flat.shape[:2], dtype=torch.int64)
    _weights(
        flat.numpy(),
        key_factor.reshape(-1, width).numpy(),
        q_factor.reshape(-1, rows).numpy(),
        visible.numpy(),
        v_scale.reshape(-1, width).numpy(),
        wq.numpy(),
        wd.numpy(),
        total.numpy(),
    )
    return wq.view(*lead, rows, width), wd.view(*lead, rows), total.view(*lead, rows)


def attend(qq, q_factor, keys, key_factor, values, v_scale, visible, width):
    """``ExactLlama.attend`` fused for few queries per group (decoding): (Σ w·v as int32, wd, total)."""
    lead, (rows, hd) = qq.shape[:-2], qq.shape[-2:]
    out = torch.empty((*lead, rows, hd), dtype=torch.int32)
    wd = torch.empty((*lead, rows), dtype=torch.float32)
    total = torch.empty((*lead, rows), dtype=torch.int64)
    length = keys.shape[-2]
    _attend(
        qq.reshape(-1, rows, hd).numpy(),
        q_factor.reshape(-1, rows).numpy(),
        keys.reshape(-1, length, hd).numpy(),
        key_factor.reshape(-1, length).numpy(),
        values.reshape(-1, hd, length).numpy(),
        v_scale.reshape(-1, length).numpy(),
        visible.numpy(),
        width,
        out.view(-1, rows, hd).numpy(),
        wd.view(-1, rows).numpy(),
        total.view(-1, rows).numpy(),
        np.empty((out.numel() // (rows * hd), rows, width), np.int32),
        np.empty((out.numel() // (rows * hd), rows, width), np.int8),
        np.empty((out.numel() // (rows * hd), 3, width), np.int32),
    )
    return out, wd, total
