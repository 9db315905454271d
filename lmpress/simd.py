"""Exact int8 dot products for the compiled kernels (attention, packed weights), with AVX-512 VNNI where the CPU has it.

LLVM does not emit VNNI's ``vpdpbusd`` (64 products of an unsigned and a signed byte, summed in fours into
sixteen int32 lanes) from plain loops, so these are numba intrinsics that call it. Each function adds, for
``rows`` vectors r < rows, to 64 int32 lanes ``out[o + r·o_stride :][:64]`` the products of ``n`` blocks of
64 bytes of a matrix, read ``stride`` bytes apart, with four bytes of vector r broadcast to every lane: lane
l = 16·b + i gains Σ_{t<4} m[off + k·stride + 64·b + 4·i + t] · v[v_off + r·v_stride + 4·k + t] for each
k < n. Each block of the matrix is read once for all the rows. Offsets count elements of the arrays as laid
out in memory (C order); nothing is bounds-checked.

- ``add_key_dots``: the matrix is int8 read as unsigned (m + 128), the vector int8: each lane gains
  dot + 128·Σ(vector bytes used), which the caller subtracts. Keys and a query (one row), or packed weights
  and a few rows of activations (``add_weight_dots``, ``WEIGHT_ROWS`` rows).
- ``add_weighted_values``: the vector holds non-negative weights (≤ 127, read as unsigned), the matrix int8
  values.

Every sum is of integers and far below 2**31, so the result is the same on every machine; where the CPU has
no AVX512-VNNI (numba compiles for the machine it runs on, ``NUMBA_CPU_FEATURES`` overriding), the same
arithmetic is written as widening multiplies and adds, which LLVM maps to whatever the CPU has.

numba's on-disk cache of ``kernels.py`` does not notice a change to this file: after editing it, touch that one.
"""

from __future__ import annotations

import llvmlite.binding
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

LANES = 64  # int32 results per call: four blocks of sixteen
_I8, _I32 = ir.IntType(8), ir.IntType(32)
_BYTES, _WORDS = ir.VectorType(_I8, 64), ir.VectorType(_I32, 16)
_HALVES, _PAIRS = ir.VectorType(ir.IntType(16), 64), ir.VectorType(_I32, 32)


def has_vnni() -> bool:
    """Whether numba compiles for a CPU with AVX512-VNNI (and AVX512-BW), as numba itself decides."""
    features = config.CPU_FEATURES
    if features is None:
        features = llvmlite.binding.get_host_cpu_features().flatten()
    flags = set(features.split(","))
    return {"+avx512vnni", "+avx512bw", "+avx512f"} <= flags


def _accumulate(builder: ir.IRBuilder, acc: ir.Value, unsigned: ir.Value, signed: ir.Value, vnni: bool) -> ir.Value:
    """acc plus the products of two 64-byte vectors: with VNNI, acc has 16 lanes and gains each lane's four
    products; else (no VNNI) it has 32 and gains pairs, summed as x86's pmaddwd does (LLVM recognises the
    pattern and uses whatever the CPU has), ``_fold`` adding the pairs at the end."""
    if vnni:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_WORDS, [_WORDS] * 3), "llvm.x86.avx512.vpdpbusd.512"
        )
        return builder.call(fn, [acc, builder.bitcast(unsigned, _WORDS), builder.bitcast(signed, _WORDS)])
    unsigned, signed = builder.zext(unsigned, _HALVES), builder.sext(signed, _HALVES)
    for t in range(2):
        u, s = (_every_other(builder, x, t) for x in (unsigned, signed))
        acc = builder.add(acc, builder.mul(builder.sext(u, _PAIRS), builder.sext(s, _PAIRS)))
    return acc


def _fold(builder: ir.IRBuilder, acc: ir.Value, vnni: bool) -> ir.Value:
    """The 16 lanes of an accumulator of ``_accumulate``."""
    return acc if vnni else builder.add(_every_other(builder, acc, 0), _every_other(builder, acc, 1))


def _every_other(builder: ir.IRBuilder, x: ir.Value, first: int) -> ir.Value:
    n = x.type.count // 2
    return builder.shuffle_vector(
        x, ir.Constant(x.type, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [2 * i + first for i in range(n)])
    )


def _element(context, builder: ir.IRBuilder, array_ty, array: ir.Value, index: ir.Value) -> ir.Value:
    """The address of element ``index`` (intp) of a numba array, counted in memory order."""
    return builder.gep(context.make_array(array_ty)(context, builder, array).data, [index])


def _block_products(keys: bool, vnni: bool, rows: int = 1):
    """The intrinsic (out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n) described in the module
    docstring, for ``rows`` vectors."""

    @intrinsic
    def products(typingctx, out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n):
        def codegen(context, builder, signature, args):
            args = [
                context.cast(builder, a, t, types.intp) if isinstance(t, types.Integer) else a
                for a, t in zip(args, signature.args)
            ]
            out_, o_, o_stride_, matrix_, off_, stride_, vector_, v_off_, v_stride_, n_ = args
            out_ty, matrix_ty, vector_ty = signature.args[0], signature.args[3], signature.args[6]

            def at(array_ty, array, index, ty):
                return builder.bitcast(_element(context, builder, array_ty, array, index), ty.as_pointer())

            def plus(value, constant):
                return builder.add(value, ir.Constant(value.type, constant))

            def row(start, row_stride, r):
                return builder.add(start, builder.mul(row_stride, ir.Constant(row_stride.type, r)))

            outs = [
                [at(out_ty, out_, plus(row(o_, o_stride_, r), 16 * b), _WORDS) for b in range(4)] for r in range(rows)
            ]
            lanes = _WORDS if vnni else _PAIRS
            accs = [
                [cgutils.alloca_once_value(builder, ir.Constant(lanes, None)) for _ in range(4)] for _ in range(rows)
            ]
            flip = ir.Constant(_BYTES, [0x80] * 64)
            with cgutils.for_range(builder, n_) as loop:
                k = loop.index
                base = builder.add(off_, builder.mul(k, stride_))
                blocks = [builder.load(at(matrix_ty, matrix_, plus(base, 64 * b), _BYTES), align=1) for b in range(4)]
                if keys:
                    blocks = [builder.xor(block, flip) for block in blocks]
                at_four = builder.add(v_off_, builder.mul(k, ir.Constant(k.type, 4)))
                for r in range(rows):
                    four = builder.load(at(vector_ty, vector_, row(at_four, v_stride_, r), _I32), align=1)
                    broadcast = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(_WORDS, ir.Undefined), four, ir.Constant(_I32, 0)),
                        ir.Constant(_WORDS, ir.Undefined),
                        ir.Constant(_WORDS, [0] * 16),
                    )
                    broadcast = builder.bitcast(broadcast, _BYTES)
                    for block, acc in zip(blocks, accs[r]):
                        pair = (block, broadcast) if keys else (broadcast, block)
                        builder.store(_accumulate(builder, builder.load(acc), *pair, vnni), acc)
            for r in range(rows):
                for acc, place in zip(accs[r], outs[r]):
                    total = builder.add(builder.load(place, align=4), _fold(builder, builder.load(acc), vnni))
                    builder.store(total, place, align=4)
            return context.get_dummy_value()

        return types.void(out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n), codegen

    return products


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the memory for the cache line of ``array``'s element ``index`` (a hint: no fault, no result)."""

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        at = _element(context, builder, signature.args[0], args[0], index)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [at.type, _I32, _I32, _I32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [at, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


VNNI = has_vnni()
WEIGHT_ROWS = 4  # activation rows per weight block read: 16 accumulators, 4 blocks and 4 broadcasts in 32 registers
add_key_dots = _block_products(keys=True, vnni=VNNI)
add_weight_dots = _block_products(keys=True, vnni=VNNI, rows=WEIGHT_ROWS)
add_weighted_values = _block_products(keys=False, vnni=VNNI)
