"""Compiled CPU kernels for the step torch cannot run fast: attention.

``llama.attention_weights`` and ``ExactLlama.attend`` are the definition (torch operations, used on
GPUs); these are the same arithmetic fused into one pass per row with numba, so the scores stay in
cache. They must give the same bits, and the tests check that they do. No fast-math: LLVM may not
reassociate or fuse. Rounding to nearest even is (x + 1.5·2**23) − 1.5·2**23, exact for |x| ≤ 2**22,
which holds for every value rounded here. The arithmetic's parameters are arguments, not constants,
because numba's on-disk cache would not notice them change in ``llama.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .llama import EXP2_POLY, LIMIT, Q8, SCORE_FRAC, SCORE_ONE, TINY

_F = np.float32
_I = np.int32
_MAGIC = _F(1.5 * 2**23)
# Everything the arithmetic depends on, in one array: c0..c4, LIMIT, Q8, TINY, 2**−SCORE_FRAC.
_PARAMS = np.array([*EXP2_POLY, LIMIT, Q8, TINY, 2.0**-SCORE_FRAC], dtype=np.float32)
_SHAPE = np.array([SCORE_FRAC, SCORE_ONE], dtype=np.int32)


@njit(inline="always", boundscheck=False)
def _weights_row(dots, key_factor, qf, v_scale, n, z, ints, w, wq, params, shape):  # pragma: no cover
    """One row of ``llama.attention_weights`` over its n visible keys: fills wq[:n], returns (wd, total)."""
    c0, c1, c2, c3, c4, limit, q, tiny, unit = (
        params[0],
        params[1],
        params[2],
        params[3],
        params[4],
        params[5],
        params[6],
        params[7],
        params[8],
    )
    frac, one = shape[0], shape[1]
    dmax, mask = _I(((one + 2) << frac) - 1), _I((1 << frac) - 1)
    for s in range(n):
        y = min(max(_F(dots[s]) * key_factor[s] * qf, -limit), limit)
        z[s] = _I((y + _MAGIC) - _MAGIC)
    top = z[0]
    for s in range(1, n):
        top = max(top, z[s])
    for s in range(n):  # d = top − z = 2**frac·i + f: 2**(one − i) from exponent bits, P(f/2**frac) by Horner
        d = _I(min(_I(top - z[s]), dmax))
        ints[s] = _I(_I(_I(127 + one) - _I(d >> frac)) << _I(23))
        w[s] = _F(_I(d & mask)) * unit
    scale = ints[:n].view(np.float32)
    for s in range(n):
        u = w[s]
        p = (((u * c4 + c3) * u + c2) * u + c1) * u + c0
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
    amax = max(ints[:1].view(np.float32)[0], tiny)
    f = q / amax
    for s in range(n):
        wq[s] = np.int8((w[s] * f + _MAGIC) - _MAGIC)
    return amax / q, total


@njit(parallel=True, boundscheck=False, cache=True)
def _weights(dots, key_factor, q_factor, visible, v_scale, wq, wd, total, params, shape):  # pragma: no cover
    n_groups, n_rows, width = dots.shape
    for job in prange(n_groups * n_rows):
        g, r = job // n_rows, job % n_rows
        n = visible[r]
        z, ints, w = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32)
        wd[g, r], total[g, r] = _weights_row(
            dots[g, r], key_factor[g], q_factor[g, r], v_scale[g], n, z, ints, w, wq[g, r], params, shape
        )
        wq[g, r, n:] = 0


@njit(parallel=True, boundscheck=False, cache=True)
def _attend(
    q, q_factor, keys, key_factor, values, v_scale, visible, width, out, wd, total, dots, wq, scratch, params, shape
):  # noqa: E501 # pragma: no cover
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
                dots[g, r], key_factor[g], q_factor[g, r], v_scale[g], n, z, ints, w, wq[g, r], params, shape
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
        _PARAMS,
        _SHAPE,
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
        _PARAMS,
        _SHAPE,
    )
    return out, wd, total
