"""Exact int8 dot products for the compiled kernels (attention, packed weights), with AVX-512 VNNI or AMX where the
CPU has them.

LLVM does not emit VNNI's ``vpdpbusd`` (64 products of an unsigned and a signed byte, summed in fours into
sixteen int32 lanes) from plain loops, so these are numba intrinsics that call it. Each function adds, for
``rows`` vectors r < rows, to 64 int32 lanes ``out[o + r·o_stride :][:64]`` the products of ``n`` blocks of
64 bytes of a matrix, read ``stride`` bytes apart, with four bytes of vector r broadcast to every lane: lane
l = 16·b + i gains Σ_{t<4} m[off + k·stride + 64·b + 4·i + t] · v[v_off + r·v_stride + 4·k + t] for each
k < n. Each block of the matrix is read once for all the rows. Offsets count elements of the arrays as laid
out in memory (C order); nothing is bounds-checked.

- ``add_key_dots``: the matrix is int8 read as unsigned (m + 128), the vector int8: each lane gains
  dot + 128·Σ(vector bytes used), which the caller subtracts. Packed weights and a row of activations, or a
  few (``add_weight_dots``, ``WEIGHT_ROWS`` rows); keys and up to ``HEADS`` queries, their count given first
  (``add_heads_dots``).
- ``add_heads_values``: the vectors hold non-negative weights (≤ 127, read as unsigned), the matrix int8
  values; up to ``HEADS`` vectors, their count given first.

Where the CPU has AMX (Intel's tile unit: a 16×64-byte by 64×16 int8 product in one instruction), ``tile_products``
multiplies the same layouts 16 rows at a time: packed weights (every weight product but a step of one or two rows:
VNNI's vector products are bound by compute beyond a few rows, the tiles only by reading the weights), and a full
pass's keys and values. For a CPU without AMX, the tile intrinsics compile to a trap, so that code choosing the
tiles at run time compiles for any CPU.

``wide_vectors`` is not a product: called in a compiled function, it asks LLVM for 512-bit vectors there (the
attention weights' and the frequencies' passes, which are the faster for it; the others are not).

Every sum is of integers and far below 2**31, so the result is the same on every machine; where the CPU has
no AVX512-VNNI (numba compiles for the machine it runs on, ``NUMBA_CPU_FEATURES`` overriding), the same
arithmetic is written as widening multiplies and adds, which LLVM maps to whatever the CPU has.

numba's on-disk cache of ``kernels.py`` does not notice a change to this file: after editing it, touch that one.
"""

from __future__ import annotations

import ctypes
import platform
import sys

import llvmlite.binding
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

LANES = 64  # int32 results per call: four blocks of sixteen
_I8, _I32 = ir.IntType(8), ir.IntType(32)
_BYTES, _WORDS = ir.VectorType(_I8, 64), ir.VectorType(_I32, 16)
_HALVES, _PAIRS = ir.VectorType(ir.IntType(16), 64), ir.VectorType(_I32, 32)


TILE_ROWS = 16  # operand rows of an AMX tile product: a product's rows are padded with zeros to a multiple
_TILE_QUADS = 16  # quads of input (64 bytes of a row) one AMX step multiplies
_TILES_AHEAD = 2  # steps ahead of the one multiplied whose matrix blocks are asked for


def _cpu_flags() -> set[str]:
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES``, else the host's."""
    features = config.CPU_FEATURES  # type: ignore[attr-defined]  # numba sets it at import, from the environment
    if features is None:
        features = llvmlite.binding.get_host_cpu_features().flatten()
    return set(features.split(","))


def has_vnni() -> bool:
    """Whether numba compiles for a CPU with AVX512-VNNI (and AVX512-BW), as numba itself decides."""
    return {"+avx512vnni", "+avx512bw", "+avx512f"} <= _cpu_flags()


def _compiles_tiles() -> bool:
    """Whether numba compiles for a CPU with AMX's int8 tiles (whether or not this process may use them)."""
    return {"+amx-tile", "+amx-int8"} <= _cpu_flags()


def has_amx() -> bool:
    """Whether numba compiles for a CPU with AMX's int8 tiles and this process may use them: Linux gives a
    process the tiles' 8 KiB of register state only when asked (arch_prctl ARCH_REQ_XCOMP_PERM for
    XFEATURE_XTILEDATA; oneDNN asks the same), and a tile instruction without it is a SIGILL."""
    if not _compiles_tiles():
        return False
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    return ctypes.CDLL(None).syscall(sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0


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


def _indices(context, builder: ir.IRBuilder, signature, args: list[ir.Value]) -> list[ir.Value]:
    """An intrinsic's arguments, its integers (offsets, strides, counts) widened to intp."""
    return [
        context.cast(builder, a, t, types.intp) if isinstance(t, types.Integer) else a
        for a, t in zip(args, signature.args)
    ]


def _block_products(keys: bool, vnni: bool, rows: int = 1):
    """The intrinsic (out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n) described in the module
    docstring, for ``rows`` vectors."""

    @intrinsic
    def products(typingctx, out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n):
        def codegen(context, builder, signature, args):
            args = _indices(context, builder, signature, args)
            _emit_products(context, builder, signature.args, args, rows, keys, vnni)
            return context.get_dummy_value()

        return types.void(out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n), codegen

    return products


def _heads_products(keys: bool, vnni: bool):
    """The intrinsic (heads, out, o, …, n): ``_block_products``' for a count of vectors known at run time, 1 to
    ``HEADS``, reading a matrix laid out as one stream (stride 256 bytes) and asking for it ``STREAM_AHEAD``
    bytes ahead of its reads (into L2)."""

    @intrinsic
    def products(typingctx, heads, out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n):
        def codegen(context, builder, signature, args):
            heads_, *rest = _indices(context, builder, signature, args)
            for rows in range(1, HEADS + 1):
                with builder.if_then(builder.icmp_signed("==", heads_, ir.Constant(heads_.type, rows))):
                    _emit_products(context, builder, signature.args[1:], rest, rows, keys, vnni, STREAM_AHEAD)
            return context.get_dummy_value()

        return types.void(heads, out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n), codegen

    return products


def _emit_products(context, builder: ir.IRBuilder, arg_types, args: list, rows: int, keys: bool, vnni: bool, ahead=0):
    """The code of a ``_block_products`` intrinsic: ``rows`` vectors, the matrix asked for ``ahead`` bytes on."""
    out_, o_, o_stride_, matrix_, off_, stride_, vector_, v_off_, v_stride_, n_ = args
    out_ty, matrix_ty, vector_ty = arg_types[0], arg_types[3], arg_types[6]

    def at(array_ty, array, index, ty):
        return builder.bitcast(_element(context, builder, array_ty, array, index), ty.as_pointer())

    def plus(value, constant):
        return builder.add(value, ir.Constant(value.type, constant))

    def row(start, row_stride, r):
        return builder.add(start, builder.mul(row_stride, ir.Constant(row_stride.type, r)))

    outs = [[at(out_ty, out_, plus(row(o_, o_stride_, r), 16 * b), _WORDS) for b in range(4)] for r in range(rows)]
    lanes = _WORDS if vnni else _PAIRS
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(lanes, None)) for _ in range(4)] for _ in range(rows)]
    flip = ir.Constant(_BYTES, [0x80] * 64)
    with cgutils.for_range(builder, n_) as loop:
        k = loop.index
        base = builder.add(off_, builder.mul(k, stride_))
        if ahead:
            for b in range(4):
                _prefetch(builder, at(matrix_ty, matrix_, plus(base, ahead + 64 * b), _I8), _L2)
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


def _void(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> None:
    """Call the LLVM intrinsic ``name`` that returns nothing."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [a.type for a in args]), name)
    builder.call(fn, args)


_L1, _L2 = 3, 2  # LLVM's prefetch locality: into every cache level (x86 prefetcht0), or from L2 on (prefetcht1)


def _prefetch(builder: ir.IRBuilder, at: ir.Value, keep: int = _L1) -> None:
    read, keep, data = (ir.Constant(_I32, c) for c in (0, keep, 1))
    _void(builder, "llvm.prefetch.p0", [at, read, keep, data])


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the memory for the cache line of ``array``'s element ``index`` (a hint: no fault, no result)."""

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        _prefetch(builder, _element(context, builder, signature.args[0], args[0], index))
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def wide_vectors(typingctx):
    """Compile the function this is called in (a parallel loop's body, when called in one) for the widest vectors
    the CPU has. LLVM tunes for 256-bit vectors on Intel's AVX-512 server CPUs, where the attention weights' passes
    gain from 512. The results are the same: each lane is an IEEE operation of its own, and the sums are of
    integers."""

    def codegen(context, builder, signature, args):
        for attribute in ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"'):
            set.add(builder.function.attributes, attribute)  # llvmlite's add() knows no string attributes
        return context.get_dummy_value()

    return types.void(), codegen


def _tile(number: int) -> ir.Constant:
    return ir.Constant(_I8, number)


def _no_tiles(builder: ir.IRBuilder) -> bool:
    """Whether numba compiles for a CPU without AMX; if so, the tile intrinsic being compiled becomes a trap instead
    (LLVM cannot emit tile instructions for it), so that code choosing the tiles at run time compiles for any CPU,
    and would stop rather than compute if it chose them anyway. (Decided by the CPU features, as numba's cache is:
    a process that may not use the tiles still compiles them, for another that may.)"""
    if not _compiles_tiles():
        _void(builder, "llvm.trap", [])
    return not _compiles_tiles()


@intrinsic
def tile_config(typingctx):
    """Configure this thread's AMX tiles for ``tile_products`` (tiles 0–7: 16 rows of 64 bytes). The configuration
    is the thread's own: call it in the job that uses the tiles, and ``tile_release`` at the job's end."""

    def codegen(context, builder, signature, args):
        if _no_tiles(builder):
            return context.get_dummy_value()
        layout = bytearray(64)  # palette 1; bytes per row of tile i at 16 + 2i (u16); rows of tile i at 48 + i
        layout[0] = 1
        for i in range(8):
            layout[16 + 2 * i] = 64
            layout[48 + i] = TILE_ROWS
        at = cgutils.alloca_once_value(builder, ir.Constant(ir.ArrayType(_I8, 64), layout))
        _void(builder, "llvm.x86.ldtilecfg", [builder.bitcast(at, _I8.as_pointer())])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def tile_release(typingctx):
    """Give this thread's AMX tiles back (their state no longer saved at each context switch)."""

    def codegen(context, builder, signature, args):
        if not _no_tiles(builder):
            _void(builder, "llvm.x86.tilerelease", [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def tile_products(typingctx, out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n):
    """Write ``TILE_ROWS`` × 64 int32 lanes out[o + r·o_stride + j] (r < 16, j < 64): the products of a matrix laid
    out as ``add_weight_dots`` reads it (quads of 64 channels × 4 bytes, ``stride`` bytes apart, from element
    ``off``) with 16 rows of int8 bytes (row r from v_off + r·v_stride), over ``n`` steps of 16 quads: lane j of
    row r is Σ_{q<16n} Σ_{t<4} m[off + q·stride + 4j + t] · v[v_off + r·v_stride + 4q + t], both bytes signed.
    Packed weights and activations, keys and queries, or values and attention weights. One AMX ``tdpbssd`` a
    step and 16 channels; the tiles must be configured (``tile_config``)."""

    def codegen(context, builder, signature, args):
        if _no_tiles(builder):
            return context.get_dummy_value()
        out_, o_, o_stride_, matrix_, off_, stride_, vector_, v_off_, v_stride_, n_ = _indices(
            context, builder, signature, args
        )
        out_ty, matrix_ty, vector_ty = signature.args[0], signature.args[3], signature.args[6]

        def at(array_ty, array, index):
            return builder.bitcast(_element(context, builder, array_ty, array, index), _I8.as_pointer())

        def plus(value, constant):
            return builder.add(value, ir.Constant(value.type, constant))

        sums, rows, blocks = range(4), 4, (5, 6, 7)  # tiles: four of sums (16 channels each), the rows, and
        # blocks of the matrix in turn, so that a block loads while the last is still being multiplied
        for s in sums:
            _void(builder, "llvm.x86.tilezero", [_tile(s)])
        step_bytes = builder.mul(stride_, ir.Constant(stride_.type, _TILE_QUADS))
        with cgutils.for_range(builder, n_) as loop:
            k = loop.index
            step = builder.add(v_off_, builder.mul(k, ir.Constant(k.type, 4 * _TILE_QUADS)))
            _void(builder, "llvm.x86.tileloadd64", [_tile(rows), at(vector_ty, vector_, step), v_stride_])
            block = builder.add(off_, builder.mul(k, step_bytes))
            ahead = builder.add(block, builder.mul(step_bytes, ir.Constant(step_bytes.type, _TILES_AHEAD)))
            for q in range(_TILE_QUADS):  # the 256 bytes this reads of each quad, ``_TILES_AHEAD`` steps on
                line = builder.add(ahead, builder.mul(stride_, ir.Constant(stride_.type, q)))
                for s in sums:
                    _prefetch(builder, at(matrix_ty, matrix_, plus(line, 64 * s)))
            for s in sums:
                tile = _tile(blocks[s % len(blocks)])
                _void(builder, "llvm.x86.tileloadd64", [tile, at(matrix_ty, matrix_, plus(block, 64 * s)), stride_])
                _void(builder, "llvm.x86.tdpbssd", [_tile(s), _tile(rows), tile])
        row_bytes = builder.mul(o_stride_, ir.Constant(o_stride_.type, 4))
        for s in sums:
            _void(builder, "llvm.x86.tilestored64", [_tile(s), at(out_ty, out_, plus(o_, 16 * s)), row_bytes])
        return context.get_dummy_value()

    return types.void(out, o, o_stride, matrix, off, stride, vector, v_off, v_stride, n), codegen


VNNI = has_vnni()
AMX = has_amx()
WEIGHT_ROWS = 4  # activation rows per weight block read: 16 accumulators, 4 blocks and 4 broadcasts in 32 registers
add_key_dots = _block_products(keys=True, vnni=VNNI)
add_weight_dots = _block_products(keys=True, vnni=VNNI, rows=WEIGHT_ROWS)
# A decoding step's attention reads a key head's keys, then its values, once for all its query heads (up to
# ``HEADS`` at once), and keeps the memory busy ahead of its reads: one core alone reads memory at about half the
# machine's rate, and only with many reads in flight.
HEADS = 4
STREAM_AHEAD = 8192  # bytes read ahead; chosen on a 2-core Xeon with AMX, where 8–32 KiB did alike and beat none
add_heads_dots = _heads_products(keys=True, vnni=VNNI)
add_heads_values = _heads_products(keys=False, vnni=VNNI)
