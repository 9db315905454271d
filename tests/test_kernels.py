"""Every compiled kernel gives its definition's bits: the twins of ``arithmetic``'s operations, simd's products at
every byte's extremes (VNNI where the CPU has it, the portable lowering everywhere), and the packed product."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from lmpress.exact import arithmetic as A
from lmpress.exact import gemm, kernels, simd
from lmpress.exact.model import Linear
from lmpress.exact.tables import sigmoid_table


def _attention_inputs(gen, groups, rows, width, scale):
    dots = torch.randint(-(2**20), 2**20, (groups, rows, width), dtype=torch.int32, generator=gen)
    dots[0, 0] = 2**20  # ties for the maximum
    key_factor = torch.rand(groups, width, generator=gen) * scale
    q_factor = torch.rand(groups, rows, generator=gen) * scale
    v_scale = torch.rand(groups, width, generator=gen)
    v_scale[:, 0] = 0  # a value row of zeros
    visible = torch.randint(1, width + 1, (rows,), dtype=torch.int32, generator=gen)
    visible[0], visible[-1] = 1, width
    return dots, key_factor, q_factor, visible, v_scale


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 10.0])  # flat, ordinary, and clamped scores
def test_compiled_attention_equals_its_definition(scale):
    gen = torch.Generator().manual_seed(int(scale * 1e6))
    args = _attention_inputs(gen, 5, 7, 300, scale)
    for got, want in zip(kernels.attention_weights(*args), A.attention_weights(*args)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_compiled_products_equal_their_definition(bits, eps):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(37, 96, generator=gen) * torch.logspace(-6, 3, 37)[:, None]
    x[0] = 0  # an all-zero row
    x[1, 5] = 1e4  # an outlier
    got, want = kernels.product_operand(x, bits, eps), A.product_operand(x, bits, eps)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    w = torch.randint(-127, 128, (50, 96), dtype=torch.int8, generator=gen)
    acc = gemm.Gemm("reference").mm(got[0], w.t())
    scale = torch.rand(50, generator=gen)
    assert torch.equal(kernels.product_result(acc, bits, scale, got[1]), A.product_result(acc, bits, scale, got[1]))
    r = torch.rand(37, 1, generator=gen) / 2  # the logits' row factors: most round, some clamp at ±LIMIT
    factor = torch.tensor([[1.5]])
    assert torch.equal(kernels.fixed_logits(acc, bits, scale, factor, r), A.fixed_logits(acc, bits, scale, factor, r))


@pytest.mark.parametrize("vnni", sorted({False, simd.VNNI}))
@pytest.mark.parametrize(
    "keys, rows, heads",
    [(True, 1, False), (False, 1, False), (True, simd.WEIGHT_ROWS, False), (True, 3, True), (False, simd.HEADS, True)],
)
def test_simd_products_are_exact(keys, rows, vnni, heads):
    """Both lowerings of simd's products (VNNI where this CPU has it, the portable one everywhere) against int64
    numpy, with every byte's extremes, for one vector and for several: a count fixed when compiled, or given at
    run time (``heads``, the step attention's, which also prefetches)."""
    products = simd._heads_products(keys, vnni) if heads else simd._block_products(keys, vnni, rows)
    count = (rows,) if heads else ()  # the run-time count comes first

    @numba.njit
    def run(*args):
        products(*count, *args)

    rng = np.random.default_rng(keys + 2 * vnni + 4 * rows)
    n, stride, off, o, o_stride, v_stride = 7, 320, 40, 3, 70, 4 * 7 + 3
    matrix = rng.integers(-128, 128, off + n * stride).astype(np.int8)
    matrix[off : off + 256] = -128 if keys else 127  # the largest unsigned (k + 128 = 0 or 255) and signed
    matrix[off + stride : off + stride + 256] = 127 if keys else -128
    vector = rng.integers(-127 if keys else 0, 128, 5 + rows * v_stride).astype(np.int8)
    vector[5:13] = (127, -127, 127, -127, 127, 127, 127, 127) if keys else 127
    out = rng.integers(-1000, 1000, o + rows * o_stride).astype(np.int32)
    want = out.astype(np.int64)
    for r in range(rows):
        v = vector[5 + r * v_stride :]
        for k in range(n):
            block = matrix[off + k * stride : off + k * stride + 256].astype(np.int64).reshape(64, 4)
            u, s = (block + 128, v[4 * k : 4 * k + 4]) if keys else (v[4 * k : 4 * k + 4], block)
            at = o + r * o_stride
            want[at : at + 64] += (np.asarray(u, np.int64) * np.asarray(s, np.int64)).sum(-1)
    run(out, o, o_stride, matrix, off, stride, vector, 5, v_stride, n)
    assert np.array_equal(out, want)


def test_wide_vectors_compiles_its_function_for_the_widest_vectors():
    """The attention weights' and the frequencies' passes ask LLVM for 512-bit vectors (it tunes for 256 on
    Intel's AVX-512 servers): the request reaches the compiled function, and where the CPU has AVX-512 its loop
    uses the 512-bit registers."""

    @numba.njit
    def scaled(x, y):
        simd.wide_vectors()
        for i in range(x.shape[0]):
            y[i] = x[i] * np.float32(3.0) + np.float32(1.0)

    x = np.arange(1000, dtype=np.float32)
    y = np.empty_like(x)
    scaled(x, y)
    assert np.array_equal(y, x * np.float32(3.0) + np.float32(1.0))
    [code] = scaled.inspect_llvm().values()
    assert '"prefer-vector-width"="512"' in code
    if "+avx512f" in simd._cpu_flags():
        [asm] = scaled.inspect_asm().values()
        assert "zmm" in asm


@pytest.mark.parametrize("amx", sorted({False, simd.AMX}))
@pytest.mark.parametrize("m, n, k", [(1, 64, 576), (7, 100, 30), (9, 200, 1536), (24, 130, 36), (33, 64, 128)])
def test_packed_product_is_exact(m, n, k, amx):
    """The decoding step's product with packed weights equals the integer reference, at every byte's extremes,
    with row counts around the kernel's groups of rows and shapes that need padding; on AMX tiles where this CPU
    has them, and with vector products everywhere."""
    gen = torch.Generator().manual_seed(m * n * k)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    x[0], w[0], w[1] = -128, -128, 127
    got = kernels.packed_product(x, Linear(w, torch.ones(n)).pack(), n, amx)
    assert torch.equal(got, gemm.Gemm("reference").mm(x, w.t()))


@pytest.mark.parametrize("bits, out_bits", [(16, 16), (8, 16), (16, 8)])
def test_compiled_layer_chains_equal_their_definitions(bits, out_bits):
    """The fused kernels between a layer's products (swiglu's beyond its table and at its ends, the residual
    connection) against their torch definitions."""
    gen = torch.Generator().manual_seed(bits + out_bits)
    rows, n = 9, 32
    acc = torch.randint(-(2**20), 2**20, ((2 if bits == 16 else 1) * rows, 2 * n), dtype=torch.int32, generator=gen)
    scale, factor = torch.rand(2 * n, generator=gen) * 1e-3, torch.rand(rows, generator=gen)
    acc[0, :4] = torch.tensor([2**30, -(2**30), 0, 1])
    scale[:4] = torch.tensor([1.0, 1.0, 16.0 / 2**30, -16.001 / 2**30])  # beyond the table, and at its ends
    table = sigmoid_table(A.SIGMOID_FRAC, A.SIGMOID_SPAN)
    got, want = (
        kernels.swiglu_operand(acc, bits, scale, factor, table, out_bits),
        A.swiglu_operand(acc, bits, scale, factor, table, out_bits),
    )
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    x = torch.randn(rows, 2 * n, generator=gen) * 4
    got = kernels.residual_operand(x, acc, bits, scale, factor, out_bits, 1e-5)
    want = A.residual_operand(x, acc, bits, scale, factor, out_bits, 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_frequencies_are_exact_and_complete():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-(2**16), 2**16, (50, 777), dtype=torch.int32, generator=gen)
    logits[0] = 5  # all tied: the remainder goes to token 0
    logits[1, 10] = logits[1, 20] = 2**20  # tied maxima: to the first
    logits[2] = torch.arange(777) * 2**12  # most weights round to nothing: frequency 1
    f = A.frequencies(logits)
    assert (f.sum(-1) == A.TOTAL).all() and f.min() >= 1
    assert f[0, 0] == f[0].max() and (f[0, 1:] == f[0, 1]).all()
    assert f[1, 10] > f[1, 20]
    assert torch.equal(kernels.frequencies(logits), f)  # the compiled kernel
    tokens = torch.randint(0, 777, (50,), generator=gen)
    tokens[:3] = torch.tensor([0, 10, 776])
    for got, want in zip(kernels.token_intervals(logits, tokens), A.intervals(f, tokens)):
        assert torch.equal(got, want)
