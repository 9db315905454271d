"""Compiled CPU twins of ``arithmetic``'s operations, and the fused work of a decoding step.

Each public function here with a name from ``arithmetic`` is its compiled twin: same arguments, same bits
(the tests check every one), so ``ops.py`` can hand either to the model. A torch operation is a full pass over
memory and a call costing microseconds; here a row's whole chain runs in one pass while it is in cache, which
is most of lmpress's speed on a CPU. Beyond the twins, for ``runner.py``: ``packed_product`` multiplies by weights
packed as ``model.Linear.pack`` lays them out (exact integers, like every backend in ``gemm.py``; on AMX's tiles
where the CPU has them); ``attention_step`` and ``layers_step`` run a decoding step's work between products, or
all of a step's layers, in one call; ``attention_tiles`` a full pass's attention a tile of 16 queries at a time
(AMX); ``mixed_frequencies`` is ``codec.mixing``'s for a whole step's rows; ``counts`` the coder's input.

No fast-math: LLVM may not reassociate or fuse. The arithmetic's parameters are arguments, not constants, because
numba's on-disk cache would not notice them change in ``arithmetic.py``. ``bits16`` flags a 16-bit operand (two
int8 halves a row) where the definitions take ``bits``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from numba import get_num_threads, njit, prange
from torch import Tensor

from .arithmetic import (
    EXP2_POLY,
    LIMIT,
    LOGIT_FRAC,
    LOGIT_ONE,
    Q8,
    Q16,
    SCORE_FRAC,
    SCORE_ONE,
    SIGMOID_FRAC,
    SIGMOID_SPAN,
    TINY,
    TOTAL,
)
from .simd import (
    AMX,
    HEADS,
    LANES,
    STREAM_AHEAD,
    TILE_ROWS,
    WEIGHT_ROWS,
    add_heads_dots,
    add_heads_values,
    add_key_dots,
    add_weight_dots,
    prefetch,
    tile_config,
    tile_products,
    tile_release,
    wide_vectors,
)


class KVCache(Protocol):
    """What the kernels read of a ``model.KVCache`` (named here, not imported: the model imports this module)."""

    k: Tensor
    v: Tensor
    k_scale: Tensor
    v_scale: Tensor
    head_dim: int


# ``step_weights``: each layer's packed weights, their scales, its qkv bias and head norms, as numpy arrays
StepWeights = tuple[
    tuple[tuple[np.ndarray, ...], ...],
    tuple[tuple[np.ndarray, ...], ...],
    tuple[np.ndarray, ...],
    tuple[tuple[np.ndarray, np.ndarray], ...],
]

_F = np.float32
_NONE = np.empty(0, np.float32)  # no bias, no head norms: the compiled kernels skip an empty array
_I = np.int32
_MAGIC = _F(1.5 * 2**23)  # x + 1.5·2**23 rounds x to an integer, to nearest even, wherever |x| ≤ 2**22
_TWO23 = _F(2**23)  # binary32 values from 2**23 on are integers
# Everything the arithmetic depends on, in one array: c0..c4, LIMIT, Q8, TINY, 2**−SCORE_FRAC, Q16.
_PARAMS = np.array([*EXP2_POLY, LIMIT, Q8, TINY, 2.0**-SCORE_FRAC, Q16], dtype=np.float32)
_SIGMOID = np.array([SIGMOID_FRAC, SIGMOID_SPAN], dtype=np.int32)
_SHAPE = np.array([SCORE_FRAC, SCORE_ONE], dtype=np.int32)
_LOGITS = np.array([LOGIT_FRAC, LOGIT_ONE, TOTAL], dtype=np.int32)  # and the frequencies' total
PACKED_QUADS = 32  # quads of a weight tile's input columns (8 KiB) applied to every row at once


@njit(inline="always")
def _round_even(x):  # pragma: no cover (compiled)
    """torch.round of binary32 x (to nearest, ties to even) for |x| ≤ 2**22, which holds wherever it is used:
    (x + 1.5·2**23) − 1.5·2**23, two rounded binary32 operations."""
    return (x + _MAGIC) - _MAGIC


@njit(inline="always")
def _round_weight(y):  # pragma: no cover (compiled)
    """torch.round of a binary32 weight 0 ≤ y ≤ 2**30: y itself from 2**23 on (already an integer), else
    (y + 2**23) − 2**23."""
    return y if y >= _TWO23 else (y + _TWO23) - _TWO23


@njit(inline="always", boundscheck=False)
def _weights_row(dots, key_factor, qf, v_scale, n, z, ints, w, wq, params, shape):  # pragma: no cover
    """One row of ``arithmetic.attention_weights`` over its n visible keys: fills wq[:n], returns (wd, total)."""
    wide_vectors()
    c0, c1, c2, c3, c4 = params[0], params[1], params[2], params[3], params[4]
    limit, q, tiny, unit = params[5], params[6], params[7], params[8]
    frac, one = shape[0], shape[1]
    dmax, mask = _I(((one + 2) << frac) - 1), _I((1 << frac) - 1)
    for s in range(n):
        y = min(max(_F(dots[s]) * key_factor[s] * qf, -limit), limit)
        z[s] = _I(_round_even(y))
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
        z[s] = _I(_round_even(p * scale[s]))
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
        wq[s] = np.int8(_round_even(w[s] * f))
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


def attention_weights(
    dots: Tensor, key_factor: Tensor, q_factor: Tensor, visible: Tensor, v_scale: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``arithmetic.attention_weights``, compiled: same arguments, same results."""
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


@njit(inline="always", boundscheck=False)
def _row_counts(z, e, spare, params, shape):  # pragma: no cover (compiled)
    """``arithmetic.frequencies`` of one row of logits z, less one, before the remainder: fills e with c_v (spare:
    scratch of the same size) and returns (first top token, remainder). Weights up to 2**30 round as
    y ≥ 2**23 ? y : (y + 2**23) − 2**23."""
    wide_vectors()
    c0, c1, c2, c3, c4 = params[0], params[1], params[2], params[3], params[4]
    frac, one, total = shape[0], shape[1], shape[2]
    vocab = z.shape[0]
    dmax, mask, unit = _I(((one + 2) << frac) - 1), _I((1 << frac) - 1), _F(1.0) / _F(1 << frac)
    top, first = z[0], 0
    for v in range(1, vocab):
        if z[v] > top:
            top, first = z[v], v
    u = spare.view(np.float32)
    for v in range(vocab):
        d = _I(min(_I(top - z[v]), dmax))
        u[v] = _F(_I(d & mask)) * unit
        e[v] = _I(_I(_I(127 + one) - _I(d >> frac)) << _I(23))
    scale = e.view(np.float32)
    for v in range(vocab):
        x = u[v]
        p = (((x * c4 + c3) * x + c2) * x + c1) * x + c0
        y = p * scale[v]
        e[v] = _I(_round_weight(y))
    sum_e = np.int64(0)
    for v in range(vocab):
        sum_e += e[v]
    budget = np.int64(total - vocab)
    reciprocal = (budget << 32) // sum_e
    sum_c = np.int64(0)
    for v in range(vocab):
        e[v] = _I((np.int64(e[v]) * reciprocal) >> 32)
        sum_c += e[v]
    return first, budget - sum_c


@njit(parallel=True, boundscheck=False, cache=True)
def _frequencies(z, out, params, shape):  # pragma: no cover (compiled)
    for r in prange(z.shape[0]):
        e, spare = np.empty(z.shape[1], np.int32), np.empty(z.shape[1], np.int32)  # per row: stays in cache
        first, remainder = _row_counts(z[r], e, spare, params, shape)
        for v in range(z.shape[1]):
            out[r, v] = e[v] + 1
        out[r, first] += remainder


@njit(parallel=True, boundscheck=False, cache=True)
def _intervals(z, tokens, left, width, params, shape):  # pragma: no cover (compiled)
    for r in prange(z.shape[0]):
        e, spare = np.empty(z.shape[1], np.int32), np.empty(z.shape[1], np.int32)
        first, remainder = _row_counts(z[r], e, spare, params, shape)
        t = tokens[r]
        below = np.int64(t)  # the +1 of every token before t
        for v in range(t):
            below += e[v]
        left[r] = below + (remainder if first < t else 0)
        width[r] = e[t] + 1 + (remainder if first == t else 0)


def frequencies(logits: Tensor) -> Tensor:
    """``arithmetic.frequencies``, compiled: int64 [N, V]."""
    z = logits.contiguous().numpy()
    out = np.empty(z.shape, np.int64)
    _frequencies(z, out, _PARAMS, _LOGITS)
    return torch.from_numpy(out)


@njit(parallel=True, boundscheck=False, cache=True)
def _counts(freqs, out):  # pragma: no cover (compiled)
    for r in prange(freqs.shape[0]):
        for v in range(freqs.shape[1]):
            out[r, v] = np.float64(freqs[r, v] - 1)


def counts(freqs: Tensor) -> np.ndarray:
    """``coding``'s counts for constriction, f − 1 as binary64 [N, V] in C order, on every thread (a step's
    [rows, 49152] is 3 MiB each way)."""
    f = np.ascontiguousarray(freqs.numpy())
    out = np.empty(f.shape, np.float64)
    _counts(f, out)
    return out


def token_intervals(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``arithmetic.token_intervals``, compiled, without the whole rows: (L, f) int64 [N]."""
    z = logits.contiguous().numpy()
    left, width = np.empty(len(z), np.int64), np.empty(len(z), np.int64)
    _intervals(z, tokens.numpy().astype(np.int64), left, width, _PARAMS, _LOGITS)
    return torch.from_numpy(left), torch.from_numpy(width)


@njit(inline="always", boundscheck=False)
def _operand_row(x, m, rows, q, bits16, normed, eps, tiny, out):  # pragma: no cover (compiled)
    """Row m (of ``rows``) of ``arithmetic.product_operand``: x [K] into out (the his at m, the los at rows + m);
    returns the row's factor."""
    k = x.shape[0]
    amax = _F(0)
    for j in range(k):
        amax = max(amax, abs(x[j]))
    amax = max(amax, tiny)
    f = q / amax
    sum_squares = np.int64(0)
    for j in range(k):
        v = _I(_round_even(x[j] * f))  # |v| ≤ q ≤ 2**15
        sum_squares += np.int64(v) * v
        if bits16:
            hi = _I(_I(v + 128) >> 8)
            out[m, j] = hi
            out[rows + m, j] = v - (hi << 8)
        else:
            out[m, j] = v
    if normed:
        f64 = np.float64(f)
        return _F(1.0 / np.sqrt(np.float64(sum_squares) / np.float64(k) + f64 * f64 * eps))
    return amax / q


@njit(inline="always", boundscheck=False)
def _head_norm(x, gain, eps, q, tiny):  # pragma: no cover (compiled)
    """``arithmetic.head_norm`` of one head x (binary32 [hd]), in place; q = Q16."""
    amax = _F(0)
    for j in range(x.shape[0]):
        amax = max(amax, abs(x[j]))
    amax = max(amax, tiny)
    f = q / amax
    sum_squares = np.int64(0)
    for j in range(x.shape[0]):
        v = np.int64(_round_even(x[j] * f))
        sum_squares += v * v
    f64 = np.float64(f)
    r = _F(1.0 / np.sqrt(np.float64(sum_squares) / np.float64(x.shape[0]) + f64 * f64 * eps))
    for j in range(x.shape[0]):
        x[j] = (_F(_round_even(x[j] * f)) * r) * gain[j]


@njit(inline="always", boundscheck=False)
def _result_row(acc, m, rows, bits16, scale, factor, out):  # pragma: no cover (compiled)
    """Row m of ``arithmetic.product_result`` into out [N]."""
    if bits16:
        for j in range(out.shape[0]):
            out[j] = ((_F(acc[m, j]) * _F(256.0) + _F(acc[rows + m, j])) * scale[j]) * factor
    else:
        for j in range(out.shape[0]):
            out[j] = (_F(acc[m, j]) * scale[j]) * factor


@njit(inline="always", boundscheck=False)
def _swiglu_row(gate_up, table, frac, span, out):  # pragma: no cover (compiled)
    """One row of ``arithmetic.swiglu``: gate_up [2W] into out [W]."""
    width = out.shape[0]
    n = span << frac
    unit, limit = _F(1 << frac), _F(n)
    for j in range(width):
        g = gate_up[j]
        index = _I(_round_even(min(max(g * unit, -limit), limit))) + n
        out[j] = (g * table[index]) * gate_up[width + j]


@njit(parallel=True, boundscheck=False, cache=True)
def _operand(x, q, bits16, normed, eps, tiny, out, factor):  # pragma: no cover (compiled)
    rows = x.shape[0]
    for m in prange(rows):
        factor[m] = _operand_row(x[m], m, rows, q, bits16, normed, eps, tiny, out)


@njit(parallel=True, boundscheck=False, cache=True)
def _result(acc, bits16, scale, factor, out):  # pragma: no cover (compiled)
    rows = out.shape[0]
    for m in prange(rows):
        _result_row(acc, m, rows, bits16, scale, factor[m], out[m])


@njit(parallel=True, boundscheck=False, cache=True)
def _fixed_logits(acc, bits16, scale, factor, r, limit, out):  # pragma: no cover (compiled)
    rows = r.shape[0]
    for m in prange(rows):
        z = np.empty(scale.shape[0], np.float32)
        _result_row(acc, m, rows, bits16, scale, factor[m], z)
        for j in range(z.shape[0]):
            out[m, j] = _I(_round_even(min(max(z[j] * r[m], -limit), limit)))


@njit(parallel=True, boundscheck=False, cache=True)
def _residual_operand(x, acc, bits16, scale, factor, q, bits16_out, eps, tiny, h, out, out_factor):  # pragma: no cover
    """h = x + product_result(acc), and h's RMS-normalised operand: a residual connection and the next
    product's input in one pass."""
    rows = x.shape[0]
    for m in prange(rows):
        _result_row(acc, m, rows, bits16, scale, factor[m], h[m])
        for j in range(h.shape[1]):
            h[m, j] = x[m, j] + h[m, j]
        out_factor[m] = _operand_row(h[m], m, rows, q, bits16_out, True, eps, tiny, out)


@njit(parallel=True, boundscheck=False, cache=True)
def _swiglu_operand(
    acc, bits16, scale, factor, table, frac, span, q, bits16_out, tiny, out, out_factor
):  # pragma: no cover
    """The gate and up product's result, swiglu, and the down product's operand, a row at a time."""
    rows = factor.shape[0]
    for m in prange(rows):
        gate_up = np.empty(scale.shape[0], np.float32)
        y = np.empty(scale.shape[0] // 2, np.float32)
        _result_row(acc, m, rows, bits16, scale, factor[m], gate_up)
        _swiglu_row(gate_up, table, frac, span, y)
        out_factor[m] = _operand_row(y, m, rows, q, bits16_out, False, 0.0, tiny, out)


def product_operand(x: Tensor, bits: int, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """``arithmetic.product_operand``, compiled: (int8 operand, row factors [M, 1])."""
    x = x.contiguous()
    rows, bits16 = x.shape[0], bits == 16
    out = torch.empty((2 * rows if bits16 else rows, x.shape[1]), dtype=torch.int8)
    factor = torch.empty((rows, 1), dtype=torch.float32)
    normed, q = eps is not None, _F(Q16 if bits16 else Q8)
    _operand(x.numpy(), q, bits16, normed, eps if normed else 0.0, _F(TINY), out.numpy(), factor.numpy()[:, 0])
    return out, factor


def product_result(acc: Tensor, bits: int, scale: Tensor, factor: Tensor) -> Tensor:
    """``arithmetic.product_result``, compiled."""
    bits16 = bits == 16
    rows = acc.shape[0] // 2 if bits16 else acc.shape[0]
    out = torch.empty((rows, acc.shape[1]), dtype=torch.float32)
    factor = factor.expand(rows, 1).contiguous()
    _result(acc.contiguous().numpy(), bits16, scale.numpy(), factor.numpy()[:, 0], out.numpy())
    return out


def fixed_logits(acc: Tensor, bits: int, scale: Tensor, factor: Tensor, r: Tensor) -> Tensor:
    """``arithmetic.fixed_logits``, compiled: the product's result and the logits' rounding in one pass a row."""
    rows = r.shape[0]
    out = torch.empty((rows, acc.shape[1]), dtype=torch.int32)
    factor = factor.expand(rows, 1).contiguous()
    args = (scale.numpy(), factor.numpy()[:, 0], r.contiguous().numpy()[:, 0], _F(LIMIT), out.numpy())
    _fixed_logits(acc.contiguous().numpy(), bits == 16, *args)
    return out


@njit(inline="always", boundscheck=False)
def _excess(v):  # pragma: no cover (compiled)
    """What ``add_key_dots`` and ``add_weight_dots`` add too much to each lane against the int8 vector v, since
    they read the matrix as m + 128: 128·Σv."""
    total = _I(0)
    for j in range(len(v)):
        total += _I(v[j])
    return total << 7


@njit(inline="always", boundscheck=False)
def _quantize_head(x, q, tiny, out):  # pragma: no cover (compiled)
    """``arithmetic.quantize_rows`` of one head x into out (int8); returns its factor."""
    amax = _F(0)
    for j in range(x.shape[0]):
        amax = max(amax, abs(x[j]))
    amax = max(amax, tiny)
    f = q / amax
    for j in range(x.shape[0]):
        out[j] = np.int8(_round_even(x[j] * f))
    return amax / q


@njit(inline="always", boundscheck=False)
def _rotate(x, cos, sin, out):  # pragma: no cover (compiled)
    """``arithmetic.rotate`` of one head: x·cos + (−x₂, x₁)·sin."""
    half = x.shape[0] // 2
    for j in range(half):
        out[j] = x[j] * cos[j] + (-x[half + j]) * sin[j]
        out[half + j] = x[half + j] * cos[half + j] + x[j] * sin[half + j]


@njit(inline="always", boundscheck=False)
def _write_key_value(
    qkv, g, groups, heads, hd, cos, sin, q_limit, tiny, keys, values, k_scale, v_scale, b, p, head, row
):  # pragma: no cover (compiled)
    """Key head g of one row's query, key and value product result ``qkv`` rotated and quantised, its value head
    quantised, both written at position p of row b of a cache layer (laid out as ``model.KVCache`` says);
    ``head`` and ``row`` are scratch of hd."""
    _rotate(qkv[(heads + g) * hd : (heads + g + 1) * hd], cos, sin, head)
    k_scale[b, g, p] = _quantize_head(head, q_limit, tiny, row)
    for j in range(hd):
        keys[b, g, p // LANES, j // 4, p % LANES, j % 4] = row[j]
    v_scale[b, g, p] = _quantize_head(
        qkv[(heads + groups + g) * hd : (heads + groups + g + 1) * hd], q_limit, tiny, row
    )
    for j in range(hd):
        values[b, g, p // 4, j, p % 4] = row[j]


@njit(parallel=True, boundscheck=False, cache=True)
def _attention_step(
    acc,
    bits16,
    scale,
    bias,
    q_norm,
    k_norm,
    eps,
    factor,
    cos,
    sin,
    pos,
    keys,
    values,
    k_scale,
    v_scale,
    kappa,
    rep,
    hd,
    q,
    bits16_out,
    out,
    out_factor,
    params,
    shape,
):  # pragma: no cover
    """Attention for T new positions of each of the cache's B rows (a decoding step: T = 1; a step that checks
    guesses: T > 1), from the query, key and value product ``acc`` of the B·T operand rows (row b's positions
    pos .. pos+T−1 in turn; ``cos``, ``sin`` [T, hd]: their rotary tables) to the operand of the output product
    (out [B·T, H·hd], its factors out_factor [B·T]): rotate and quantise each position's heads, write its key and
    value into the cache, attend over positions 0 .. its own.
    The cache is laid out as ``model.KVCache`` says (keys [B, G, W/64, hd'/4, 64, 4], values [B, G, W/4, hd', 4],
    hd' ≥ hd padded with zeros); its products are ``simd``'s. One job per (row, key head), which writes the row's
    new keys and values of the head, then reads its keys and values once a position for its query heads,
    ``HEADS`` at a time."""
    batch, groups, _, quads, _, _ = keys.shape
    rows, t = factor.shape[0], cos.shape[0]  # operand rows: t new positions for each of the cache's batch rows
    padded = 4 * quads  # (bias: the product's bias, binary32 [N], added after its result; q_norm, k_norm: the
    # gains of Qwen3's head norms, with eps; all three empty for none)
    heads = groups * rep
    q_limit, tiny = params[6], params[7]
    blocks = -(-(pos + t) // LANES) * LANES  # positions whose dots are computed, 64 at once (at most)
    fours = -(-(pos + t) // 4) * 4  # positions whose values are weighed, 4 at once (at most)
    qkv = np.empty((rows, scale.shape[0]), np.float32)
    y = np.empty((rows, heads * hd), np.float32)
    for m in prange(rows):
        _result_row(acc, m, rows, bits16, scale, factor[m], qkv[m])
        for j in range(bias.shape[0]):
            qkv[m, j] += bias[j]  # one binary32 addition, as ``ExactLlama.forward``'s
        if q_norm.shape[0]:  # Qwen3's norms of the query and key heads
            for h in range(heads + groups):
                norm = q_norm if h < heads else k_norm
                _head_norm(qkv[m, h * hd : (h + 1) * hd], norm, eps, params[9], tiny)
    for job in prange(batch * groups):
        b, g = job // groups, job % groups
        head = np.empty(hd, np.float32)
        row = np.empty(hd, np.int8)
        for i in range(t):
            m = b * t + i
            _write_key_value(
                qkv[m], g, groups, heads, hd, cos[i], sin[i], q_limit, tiny, keys, values, k_scale, v_scale, b,
                pos + i, head, row,
            )  # fmt: skip
        key_factor = np.empty(pos + t, np.float32)
        for s in range(pos + t):
            key_factor[s] = k_scale[b, g, s] * kappa
        z, ints, w = np.empty(pos + t, np.int32), np.empty(pos + t, np.int32), np.empty(pos + t, np.float32)
        most = min(rep, HEADS)  # query heads at a time
        query, dots = np.zeros((most, padded), np.int8), np.empty((most, blocks), np.int32)
        wq, total_wv = np.zeros((most, fours), np.int8), np.empty((most, padded), np.int32)
        qd, wd, total = np.empty(most, np.float32), np.empty(most, np.float32), np.empty(most, np.int64)
        for i in range(t):
            m, width = b * t + i, pos + i + 1  # the position's operand row, and the keys it sees
            weighed = -(-width // 4) * 4  # its values weighed, 4 at once (wq is zero beyond width: never written)
            for h0 in range(g * rep, (g + 1) * rep, HEADS):
                n = min(HEADS, (g + 1) * rep - h0)
                for k in range(n):
                    _rotate(qkv[m, (h0 + k) * hd : (h0 + k + 1) * hd], cos[i], sin[i], head)
                    qd[k] = _quantize_head(head, q_limit, tiny, query[k])
                dots[:] = 0
                for s0 in range(0, width, LANES):
                    add_heads_dots(n, dots, s0, blocks, keys[b, g], s0 * padded, 4 * LANES, query, 0, padded, quads)
                for line in range(0, min(STREAM_AHEAD, weighed * padded), 64):  # what add_heads_values will not ask
                    prefetch(values[b, g], line)  # for ahead: on its way while the weights are computed
                for k in range(n):
                    excess = _excess(query[k])
                    for s in range(width):
                        dots[k, s] -= excess
                    wd[k], total[k] = _weights_row(
                        dots[k], key_factor, qd[k], v_scale[b, g], width, z, ints, w, wq[k], params, shape
                    )
                total_wv[:] = 0
                for j0 in range(0, padded, LANES):
                    add_heads_values(
                        n, total_wv, j0, padded, values[b, g], 4 * j0, 4 * padded, wq, 0, fours, weighed // 4
                    )
                for k in range(n):
                    f = _F(np.float64(wd[k]) / np.float64(total[k]))
                    for j in range(hd):
                        y[m, (h0 + k) * hd + j] = _F(total_wv[k, j]) * f
    for m in prange(rows):
        out_factor[m] = _operand_row(y[m], m, rows, q, bits16_out, False, 0.0, tiny, out)


@njit(parallel=True, boundscheck=False, cache=True)
def _attention_tiles(
    qkv, cos, sin, pos, keys, values, k_scale, v_scale, kappa, y, params, shape
):  # pragma: no cover (compiled)
    """Attention of a full pass on AMX tiles, from the query, key and value product's result ``qkv`` [B·t, (H + 2G)·hd]
    (row b·t + i at position pos + i) to binary32 y [B, t, G, rep, hd]: rotate and quantise each row's heads, write
    its keys and values into the cache (laid out as ``model.KVCache`` says, hd' ≥ hd its padded head size), then one
    job per (row, key head, 16 queries): the queries' dots with every key they see, their weights, and the weights'
    products with the values."""
    batch, t, groups, rep, hd = y.shape
    padded, heads = values.shape[-2], groups * rep
    q_limit, tiny = params[6], params[7]
    tiles = -(-t // TILE_ROWS)
    queries = np.zeros((batch, groups, rep, tiles * TILE_ROWS, padded), np.int8)  # zero beyond hd and t
    q_factor = np.zeros((batch, groups, rep, tiles * TILE_ROWS), np.float32)
    for m in prange(batch * t):
        b, i = m // t, m % t
        p = pos + i
        head, row = np.empty(hd, np.float32), np.empty(hd, np.int8)
        for g in range(groups):
            _write_key_value(
                qkv[m],
                g,
                groups,
                heads,
                hd,
                cos[p],
                sin[p],
                q_limit,
                tiny,
                keys,
                values,
                k_scale,
                v_scale,
                b,
                p,
                head,
                row,
            )
            for r in range(rep):
                _rotate(qkv[m, (g * rep + r) * hd : (g * rep + r + 1) * hd], cos[p], sin[p], head)
                q_factor[b, g, r, i] = _quantize_head(head, q_limit, tiny, queries[b, g, r, i])
    for job in prange(batch * groups * tiles):
        b, g, t0 = job // (groups * tiles), job // tiles % groups, job % tiles * TILE_ROWS
        seen = pos + min(t0 + TILE_ROWS, t)  # keys the tile's last query sees
        width = -(-seen // LANES) * LANES
        key_factor = np.empty(seen, np.float32)
        for s in range(seen):
            key_factor[s] = k_scale[b, g, s] * kappa
        dots, wq = np.empty((TILE_ROWS, width), np.int32), np.empty((TILE_ROWS, width), np.int8)
        sums = np.empty((TILE_ROWS, padded), np.int32)
        z, ints, w = np.empty(seen, np.int32), np.empty(seen, np.int32), np.empty(seen, np.float32)
        wd, total = np.empty(TILE_ROWS, np.float32), np.empty(TILE_ROWS, np.int64)
        tile_config()
        for r in range(rep):
            query = queries[b, g, r]
            for s0 in range(0, width, LANES):
                tile_products(
                    dots, s0, width, keys[b, g], s0 * padded, 4 * LANES, query, t0 * padded, padded, padded // 64
                )
            for i in range(TILE_ROWS):
                n = min(pos + t0 + i + 1, seen)
                qf, vs = q_factor[b, g, r, t0 + i], v_scale[b, g]
                wd[i], total[i] = _weights_row(dots[i], key_factor, qf, vs, n, z, ints, w, wq[i], params, shape)
                wq[i, n:] = 0
            for j0 in range(0, padded, LANES):
                tile_products(sums, j0, padded, values[b, g], 4 * j0, 4 * padded, wq, 0, width, width // 64)
            for i in range(min(TILE_ROWS, t - t0)):
                f = _F(np.float64(wd[i]) / np.float64(total[i]))
                for j in range(hd):
                    y[b, t0 + i, g, r, j] = _F(sums[i, j]) * f
        tile_release()


def attention_tiles(
    qkv: Tensor, cos: Tensor, sin: Tensor, pos: int, cache: KVCache, layer: int, kappa: Tensor, rep: int, out: Tensor
) -> None:
    """``ExactLlama``'s attention in a full pass, on AMX tiles: from the query, key and value product's result ``qkv``
    [B·t, (H + 2G)·hd] of positions pos .. pos+t−1 (rotary tables ``cos``, ``sin`` by position), writing their keys
    and values into the cache, to ``out`` [B, t, H, hd] (binary32): ``rotate``, ``quantize_rows``, ``KVCache.write``
    and ``ExactLlama.attend``'s numbers."""
    batch, t, heads, hd = out.shape
    y = out.numpy().reshape(batch, t, heads // rep, rep, hd)
    k, v, k_scale, v_scale = (x[layer].numpy() for x in (cache.k, cache.v, cache.k_scale, cache.v_scale))
    _attention_tiles(qkv.numpy(), cos.numpy(), sin.numpy(), pos, k, v, k_scale, v_scale, _F(kappa), y, _PARAMS, _SHAPE)


def _operand_buffers(rows, k, bits):
    """An empty ``bits``-bit operand for ``rows`` rows of k (two int8 halves for 16 bits), its row factors, and
    the (q, two) of ``arithmetic.product_operand`` that fill them."""
    bits16 = bits == 16
    return (
        np.empty((2 * rows if bits16 else rows, k), np.int8),
        np.empty(rows, np.float32),
        _F(Q16 if bits16 else Q8),
        bits16,
    )


def attention_step(
    acc: Tensor,
    bits: int,
    scale: Tensor,
    bias: Tensor | None,
    factor: Tensor,
    cos: Tensor,
    sin: Tensor,
    pos: int,
    cache: KVCache,
    layer: int,
    kappa: Tensor,
    rep: int,
    out_bits: int,
    norms: tuple[Tensor, Tensor] | None = None,
    eps: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``ExactLlama``'s attention for T new positions of each of the cache's rows (decoding: T = 1), fused with the
    products around it: from the query, key and value product ``acc`` (of ``bits``-bit operands; row b's positions
    pos .. pos+T−1 in turn, ``factor`` [B·T]; ``cos``, ``sin`` [T, hd]: their rotary tables) to the output product's
    operand (``out_bits``), as ``arithmetic.product_result`` (plus ``bias``, where the product has one; then
    ``arithmetic.head_norm`` with the query and key gains ``norms`` and ``eps``, where the model has them), rotate,
    attend, ``arithmetic.product_operand``: (operand, factors [B·T])."""
    rows, groups, hd = factor.shape[0], cache.k.shape[2], cache.head_dim
    out, out_factor, q, bits16_out = _operand_buffers(rows, groups * rep * hd, out_bits)
    q_norm, k_norm = (_NONE, _NONE) if norms is None else (norms[0].numpy(), norms[1].numpy())
    _attention_step(
        acc.numpy(),
        bits == 16,
        scale.numpy(),
        _NONE if bias is None else bias.numpy(),
        q_norm,
        k_norm,
        eps,
        factor.numpy(),
        cos.numpy(),
        sin.numpy(),
        pos,
        cache.k[layer].numpy(),
        cache.v[layer].numpy(),
        cache.k_scale[layer].numpy(),
        cache.v_scale[layer].numpy(),
        _F(kappa),
        rep,
        hd,
        q,
        bits16_out,
        out,
        out_factor,
        _PARAMS,
        _SHAPE,
    )
    return torch.from_numpy(out), torch.from_numpy(out_factor)


def residual_operand(
    x: Tensor, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, out_bits: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """h = x + ``arithmetic.product_result``(acc, bits, ...) and ``arithmetic.product_operand``(h, out_bits, eps):
    (h, operand, factors [B])."""
    h = np.empty(x.shape, np.float32)
    out, out_factor, q, bits16_out = _operand_buffers(x.shape[0], x.shape[1], out_bits)
    args = (q, bits16_out, eps, _F(TINY), h, out, out_factor)
    _residual_operand(x.numpy(), acc.numpy(), bits == 16, scale.numpy(), factor.numpy(), *args)
    return torch.from_numpy(h), torch.from_numpy(out), torch.from_numpy(out_factor)


def swiglu_operand(
    acc: Tensor, bits: int, scale: Tensor, factor: Tensor, table: Tensor, out_bits: int
) -> tuple[Tensor, Tensor]:
    """``arithmetic.product_operand``(``arithmetic.swiglu``(``arithmetic.product_result``(acc, bits, ...)), out_bits):
    (operand, factors [B])."""
    out, out_factor, q, bits16_out = _operand_buffers(factor.shape[0], scale.shape[0] // 2, out_bits)
    args = (SIGMOID_FRAC, SIGMOID_SPAN, q, bits16_out, _F(TINY), out, out_factor)
    _swiglu_operand(acc.numpy(), bits == 16, scale.numpy(), factor.numpy(), table.numpy(), *args)
    return torch.from_numpy(out), torch.from_numpy(out_factor)


@njit(parallel=True, boundscheck=False, cache=True)
def _packed_product(x, w, out):  # pragma: no cover (compiled)
    """out [M, N'] = x [M, K'] times the weights packed as ``model.Linear.pack`` lays them out. One job per
    tile of 64 output columns, which reads its weights once for every ``WEIGHT_ROWS`` rows."""
    m, k = x.shape
    tiles, quads = w.shape[0], w.shape[1]
    n = tiles * LANES
    excess = np.empty(m, np.int32)
    for r in range(m):
        excess[r] = _excess(x[r])
    full = m - m % WEIGHT_ROWS
    for t in prange(tiles):
        for r in range(m):
            for j in range(t * LANES, (t + 1) * LANES):
                out[r, j] = -excess[r]
        for q0 in range(0, quads, PACKED_QUADS):  # every row on a slice of the tile while it is in L1
            nq = min(PACKED_QUADS, quads - q0)
            at = (t * quads + q0) * 4 * LANES
            for line in range(at + nq * 4 * LANES, at + (nq + PACKED_QUADS) * 4 * LANES, 64):
                prefetch(w, line)  # the next slice, on its way while this one is multiplied
            for r in range(0, full, WEIGHT_ROWS):
                add_weight_dots(out, r * n + t * LANES, n, w, at, 4 * LANES, x, r * k + 4 * q0, k, nq)
            for r in range(full, m):
                add_key_dots(out, r * n + t * LANES, 0, w, at, 4 * LANES, x, r * k + 4 * q0, 0, nq)


@njit(parallel=True, boundscheck=False, cache=True)
def _tile_product(x, w, out, jobs):  # pragma: no cover (compiled)
    """``_packed_product`` on AMX tiles, for x [M, K'] with M a multiple of ``TILE_ROWS``: ``jobs`` runs of tiles of
    64 output columns (the tiles' configuration is a thread's: set once a run), each tile multiplied with every
    16 rows in turn while it is in L1."""
    m, k = x.shape
    tiles, quads = w.shape[0], w.shape[1]
    n = tiles * LANES
    for j in prange(jobs):
        tile_config()
        for t in range(j * tiles // jobs, (j + 1) * tiles // jobs):
            for r in range(0, m, TILE_ROWS):
                tile_products(out, r * n + t * LANES, n, w, t * quads * 4 * LANES, 4 * LANES, x, r * k, k, quads // 16)
        tile_release()


@njit(boundscheck=False, cache=True)
def _tiled(m, amx):  # pragma: no cover (compiled)
    """Whether a product of m operand rows runs on AMX's tiles (where ``amx``): not with only a few rows (a
    decoding step's, where reading the weights is all the work and VNNI's vector products read faster)."""
    return amx and m > WEIGHT_ROWS


@njit(boundscheck=False, cache=True)
def _operand_space(m, w, tiles):  # pragma: no cover (compiled)
    """Zeros for the operand of a product of m rows with packed weights w, as ``_product`` takes it: K' columns,
    and rows rounded up to a multiple of ``TILE_ROWS`` for the tiles."""
    return np.zeros((-(-m // TILE_ROWS) * TILE_ROWS if tiles else m, 4 * w.shape[1]), np.int8)


def _padded(x, w, tiles):
    """Operand rows x [m, K] (numpy) laid out as ``_operand_space`` says."""
    operand = _operand_space(len(x), w, tiles)
    if x.shape == operand.shape:
        return np.ascontiguousarray(x)
    operand[: len(x), : x.shape[1]] = x  # in numpy: for a step's few rows a torch call costs more
    return operand


@njit(boundscheck=False, cache=True)
def _product(x, w, amx, threads):  # pragma: no cover (compiled)
    """The int32 product [M', N'] of operand rows x (as ``_operand_space`` lays them out) and packed weights w, on
    ``threads`` threads: on the tiles if ``_tiled`` says so of x's rows (rows are padded only for the tiles, to
    more than ``WEIGHT_ROWS``, so padded or not they choose the same). (numba's ``get_num_threads`` in compiled
    code would keep its callers out of the cache.)"""
    out = np.empty((x.shape[0], w.shape[0] * LANES), np.int32)
    if _tiled(x.shape[0], amx):
        _tile_product(x, w, out, min(w.shape[0], threads))
    else:
        _packed_product(x, w, out)
    return out


def packed_product(x: Tensor, packed: Tensor, n: int, amx: bool | None = None) -> Tensor:
    """The exact int32 product [M, n] of int8 rows x [M, K] and the weights packed by ``model.Linear.pack``
    (any gemm backend's integers): on AMX's tiles where this process may use them and ``_tiled`` says so, ``amx``
    forcing the choice."""
    m, w = x.shape[0], packed.numpy()
    tiles = _tiled(m, AMX) if amx is None else amx
    out = _product(_padded(x.numpy(), w, tiles), w, tiles, get_num_threads())
    return torch.from_numpy(out[:m] if out.shape[1] == n else out[:m, :n].copy())


@njit(inline="always")
def _next_operand(rows, bits16, w, amx, params):  # pragma: no cover (compiled)
    """Space for the operand of ``rows`` rows into packed weights w (16-bit if ``two``), its row factors, and the
    largest integer of its quantisation."""
    m = 2 * rows if bits16 else rows
    return _operand_space(m, w, _tiled(m, amx)), np.empty(rows, np.float32), params[9] if bits16 else params[6]


@njit(boundscheck=False, cache=True)
def _layer_step(
    x,
    operand,
    factor,
    weights,
    scales,
    bias,
    norms,
    bits16,
    cos,
    sin,
    pos,
    keys,
    values,
    k_scale,
    v_scale,
    kappa,
    rep,
    hd,
    table,
    eps,
    amx,
    threads,
    params,
    shape,
    sigmoid,
):  # pragma: no cover (compiled)
    """A layer of a decoding step whose weights are all packed, in one call: ``runner.Runner.step``'s products and
    kernels, from hidden states x [B, hidden] and the query, key and value product's operand (as
    ``_operand_space`` lays it out) and factors, to the new hidden states and the next layer's operand and
    factors. ``weights``, ``scales`` and ``bits16`` (16-bit operand or not): the qkv, o, gate_up and down products';
    ``bias``: the qkv product's; ``norms``: the query and key heads' gains (all empty for none)."""
    rows, tiny = x.shape[0], params[7]
    acc = _product(operand, weights[0], amx, threads)
    y, y_factor, q = _next_operand(rows, bits16[1], weights[1], amx, params)
    args = (pos, keys, values, k_scale, v_scale, kappa, rep, hd, q, bits16[1], y, y_factor, params, shape)
    _attention_step(acc, bits16[0], scales[0], bias, norms[0], norms[1], eps, factor, cos, sin, *args)
    acc = _product(y, weights[1], amx, threads)
    h = np.empty_like(x)
    operand, factor, q = _next_operand(rows, bits16[2], weights[2], amx, params)
    _residual_operand(x, acc, bits16[1], scales[1], y_factor, q, bits16[2], eps, tiny, h, operand, factor)
    acc = _product(operand, weights[2], amx, threads)
    y, y_factor, q = _next_operand(rows, bits16[3], weights[3], amx, params)
    _swiglu_operand(acc, bits16[2], scales[2], factor, table, sigmoid[0], sigmoid[1], q, bits16[3], tiny, y, y_factor)
    acc = _product(y, weights[3], amx, threads)
    x_out = np.empty_like(x)
    operand, factor, q = _next_operand(rows, bits16[0], weights[0], amx, params)
    _residual_operand(h, acc, bits16[3], scales[3], y_factor, q, bits16[0], eps, tiny, x_out, operand, factor)
    return x_out, operand, factor


@njit(boundscheck=False, cache=True)
def _layers_step(
    x, operand, factor, weights, scales, biases, norms, bits16, cos, sin, pos, keys, values, k_scale, v_scale, *rest
):
    """``_layer_step`` of every layer in turn (``weights``, ``scales``: a tuple of the layer's four a layer;
    ``biases``: its qkv product's bias; ``norms``: its query and key heads' gains; empty for none)."""
    for i in range(len(weights)):
        args = (cos, sin, pos, keys[i], values[i], k_scale[i], v_scale[i])
        layer = (weights[i], scales[i], biases[i], norms[i])
        x, operand, factor = _layer_step(x, operand, factor, *layer, bits16, *args, *rest)
    return x


def step_weights(
    packed: list[list[Tensor]],
    scales: list[list[Tensor]],
    biases: list[Tensor | None],
    norms: list[tuple[Tensor, Tensor] | None],
) -> StepWeights:
    """Packed weights, scales, qkv biases and head norms as ``layers_step`` takes them: numpy arrays, a tuple of the
    qkv, o, gate_up and down products' a layer (``packed``, ``scales``: lists of such lists of tensors; ``biases``:
    each layer's qkv bias or None; ``norms``: its query and key gains or None). Made once and kept: converting them
    every step would cost a noticeable part of it."""
    return (
        tuple(tuple(w.numpy() for w in four) for four in packed),
        tuple(tuple(s.numpy() for s in four) for four in scales),
        tuple(_NONE if b is None else b.numpy() for b in biases),
        tuple((_NONE, _NONE) if n is None else (n[0].numpy(), n[1].numpy()) for n in norms),
    )


def layers_step(
    weights: StepWeights,
    x: Tensor,
    operand: Tensor,
    factor: Tensor,
    cos: Tensor,
    sin: Tensor,
    pos: int,
    cache: KVCache,
    kappa: Tensor,
    rep: int,
    table: Tensor,
    eps: float,
    bits: dict[str, int],
) -> Tensor:
    """``runner.Runner.step``'s layers where all their weights are packed, in one call: from the new rows'
    embeddings x and the first product's operand and factors to the hidden states after the last layer.
    ``weights``: ``step_weights`` of the layers; ``bits``: ``arithmetic.BITS``."""
    bits16 = tuple(bits[name] == 16 for name in ("qkv", "o", "gate_up", "down"))
    operand = _padded(operand.numpy(), weights[0][0][0], _tiled(len(operand), AMX))
    arrays = (t.numpy() for t in (x, factor, cos, sin, table))
    x_, factor_, cos_, sin_, table_ = arrays
    rest = (_F(kappa), rep, cache.head_dim, table_, eps, AMX, get_num_threads(), _PARAMS, _SHAPE, _SIGMOID)
    kv = tuple(t.numpy() for t in (cache.k, cache.v, cache.k_scale, cache.v_scale))
    return torch.from_numpy(_layers_step(x_, operand, factor_, *weights, bits16, cos_, sin_, pos, *kv, *rest))


@njit(inline="always", boundscheck=False)
def floor_ratio(m, d):  # pragma: no cover (compiled)
    """⌊m / d⌋ for 0 ≤ m < 2**53 and d > 0, by a binary64 division corrected to the exact floor (the mixers'
    scaling of the model's counts)."""
    q = np.int64(np.float64(m) / np.float64(d))
    return q + np.int64((q + 1) * d <= m) - np.int64(q * d > m)


@njit(parallel=True, boundscheck=False, cache=True)
def _mixed(freqs, predicted, p, total, out):  # pragma: no cover (compiled)
    rows, vocab = freqs.shape
    spare = np.int64(total - vocab)
    for r in prange(rows):
        x = predicted[r]
        cp = freqs[r, x] - 1 if x >= 0 else spare
        if cp == spare:  # no prediction, or the LM already gives it everything: the LM's row
            out[r] = freqs[r]
            continue
        a = (p[r] * spare) >> 16
        b, rest = spare - a, spare - cp  # the other tokens' counts: their new total and their old
        # ⌊below · b / rest⌋, below the counts of the other tokens before u + 1, by a binary64 division: the product
        # is below 2**48 (exact), the quotient below 2**24, so rounding moves it by at most 2**−29, less than any
        # non-integer quotient's distance to an integer (≥ 2**−24); corrected anyway, to be plain.
        below = np.empty(vocab + 1, np.int64)
        below[0] = 0
        for u in range(vocab):
            below[u + 1] = below[u] + (freqs[r, u] - 1 if u != x else 0)
        for u in range(vocab + 1):
            q = floor_ratio(below[u] * b, rest)
            below[u] = u + q + (a if u > x else 0)  # the cumulative frequency: each token its +1, x its a + 1
        for u in range(vocab):
            out[r, u] = below[u + 1] - below[u]


def mixed_frequencies(freqs: np.ndarray, predicted: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``codec.mixing.mixed_frequencies`` of every row (``predicted`` −1: the row as it is), compiled: int64 [R, V]."""
    freqs = np.ascontiguousarray(freqs, dtype=np.int64)
    out = np.empty_like(freqs)
    _mixed(freqs, np.asarray(predicted, np.int64), np.asarray(p, np.int64), int(_LOGITS[2]), out)
    return out
