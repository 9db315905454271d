"""Exact products of int8 matrices, by whichever way this machine computes them fastest.

Every backend returns the same int32 matrix, bit for bit: an integer product has one right answer, and
each backend either computes in integers or in floats whose every partial sum is an integer small
enough to be exact (below 2**24 in binary32: K ≤ 1024 for int8 operands, so longer products are split).
Summation order, FMA, threads and batch shape then cannot change a bit. A library that rounds or
saturates (oneDNN's pre-VNNI int8 kernels do) would break that, so each backend is checked against
binary64 arithmetic (exact for these sizes) on the model's own shapes before it is used.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from ..errors import LmpressError

FLOAT32_EXACT_K = 1024  # 1024 * 128 * 128 = 2**24: every partial sum of int8 products is exact in binary32
ENV = "LMPRESS_GEMM"  # names the backend to use instead of the fastest
_CHECK_COLUMNS = 4096  # columns compared at once when verifying: bounds the binary64 reference's memory


class BackendError(LmpressError):
    """A matrix product backend is unknown, unavailable, or computes wrong integers on this machine."""


def _split_k(a: Tensor, b: Tensor, product: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Sum of exact partial products over slices of K short enough for binary32."""
    k = a.shape[-1]
    slices = [slice(start, start + FLOAT32_EXACT_K) for start in range(0, k, FLOAT32_EXACT_K)]
    out = product(a[..., slices[0]], b[..., slices[0], :]).to(torch.int32)
    for part in slices[1:]:
        out.add_(product(a[..., part], b[..., part, :]).to(torch.int32))
    return out


def _float32(a: Tensor, b: Tensor) -> Tensor:
    return _split_k(a, b, lambda x, y: torch.matmul(x.float(), y.float()))


def _bfloat16(a: Tensor, b: Tensor) -> Tensor:
    def product(x: Tensor, y: Tensor) -> Tensor:
        x, y = x.bfloat16(), y.bfloat16()  # int8 values are exact in bfloat16
        if x.dim() == 2:
            return torch.mm(x, y, out_dtype=torch.float32)
        flat = torch.bmm(x.flatten(0, -3), y.flatten(0, -3), out_dtype=torch.float32)
        return flat.view(*x.shape[:-1], y.shape[-1])

    return _split_k(a, b, product)


def _int_mm(a: Tensor, b: Tensor) -> Tensor:
    if a.dim() > 2:  # one product a matrix, each written in place (no stack: a copy of a large result)
        flat_a, flat_b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        out = torch.empty(*a.shape[:-1], b.shape[-1], dtype=torch.int32, device=a.device)
        for x, y, into in zip(flat_a, flat_b, out.view(-1, *out.shape[-2:])):
            if a.is_cuda:
                into.copy_(_int_mm(x, y))
            else:
                torch._int_mm(x.contiguous(), y, out=into)
        return out
    if a.is_cuda:  # cuBLASLt int8: M > 16, K and N multiples of 8, B column-major
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        pm, pk, pn = max(24, -(-m // 8) * 8), -(-k // 8) * 8, -(-n // 8) * 8
        a = torch.nn.functional.pad(a, (0, pk - k, 0, pm - m))
        b = torch.nn.functional.pad(b, (0, pn - n, 0, pk - k)).t().contiguous().t()
        return torch._int_mm(a.contiguous(), b)[:m, :n]
    return torch._int_mm(a.contiguous(), b)


def _reference(a: Tensor, b: Tensor) -> Tensor:
    out = np.matmul(a.cpu().numpy().astype(np.int64), b.cpu().numpy().astype(np.int64))
    return torch.from_numpy(out.astype(np.int32)).to(a.device)


PRODUCTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "int_mm": _int_mm,  # oneDNN (VNNI, AMX) or cuBLASLt int8 kernels
    "float32": _float32,  # any BLAS, with K split into exact slices
    "bfloat16": _bfloat16,  # bfloat16 inputs, binary32 accumulation and output (CUDA)
    "reference": _reference,  # numpy int64: slow, obviously right
}


class Gemm:
    """An exact int8 product backend: ``mm(a, b)`` for [M, K] × [K, N] and ``bmm`` for batches of them."""

    def __init__(self, name: str):
        if name not in PRODUCTS:
            raise BackendError(f"unknown matrix product backend {name!r} (known: {', '.join(PRODUCTS)})")
        self.name = name
        self._product = PRODUCTS[name]

    def mm(self, a: Tensor, b: Tensor) -> Tensor:
        return self._product(a, b)

    def bmm(self, a: Tensor, b: Tensor) -> Tensor:
        return self._product(a, b)

    def __repr__(self) -> str:
        return f"Gemm({self.name!r})"


def _operands(m: int, k: int, n: int, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """Random int8 a [M, K] and b [K, N], b a column-major view as the model's weights are, with worst-case
    rows and columns (all −128, all 127) that would expose saturation or overflow."""
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    a[0], w[0] = -128, -128
    if m > 1:
        a[1], w[min(1, n - 1)] = 127, -128
    return a.to(device), w.to(device).t()


def verify(gemm: Gemm, shapes: Iterable[tuple[int, int]], device: torch.device) -> None:
    """Raise BackendError unless ``gemm`` reproduces exact products at these (K, N) shapes."""
    gen = torch.Generator().manual_seed(0)
    for k, n in shapes:
        for m in (1, 17, 80):
            a, b = _operands(m, k, n, gen, device)
            try:
                got = gemm.mm(a, b)
            except (RuntimeError, TypeError, NotImplementedError) as e:
                raise BackendError(f"{gemm.name} cannot multiply {m}×{k} by {k}×{n} here: {e}") from None
            for cols in (slice(c, c + _CHECK_COLUMNS) for c in range(0, n, _CHECK_COLUMNS)):
                want = a.double() @ b[:, cols].double()  # exact: every partial sum is below 2**53
                if not torch.equal(got[:, cols].double(), want):
                    raise BackendError(f"{gemm.name} computes wrong integers for {m}×{k} by {k}×{n} on this machine")
    for k, n in ((64, 1500), (1500, 64)):  # batches of attention's shapes: the first positions of the cache
        a, b = _operands(3, k, 2048, gen, device)
        batch_a, batch_b = torch.stack([a, -a.clamp_min(-127)]), torch.stack([b, b.flip(0)]).contiguous()
        batch_b = batch_b[..., :n].contiguous()  # keys [hd, s] and values [s, hd], as KVCache.read gives them
        want = (batch_a.double() @ batch_b.double()).to(torch.int64)
        if not torch.equal(gemm.bmm(batch_a, batch_b).to(torch.int64), want):
            raise BackendError(f"{gemm.name} computes wrong integers for batched products on this machine")


def candidates(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["int_mm", "bfloat16", "float32"]
    return ["int_mm", "float32"]


_CHOSEN: dict[tuple[str, tuple], Gemm] = {}


def choose(device: torch.device, shapes: Iterable[tuple[int, int]], name: str | None = None) -> Gemm:
    """The backend to use: ``name`` (or $LMPRESS_GEMM) if given, else the fastest correct one, timed on the
    largest of ``shapes``. Every backend is verified on ``shapes`` first; the choice is remembered."""
    shapes = tuple(sorted(set(shapes)))
    name = name or os.environ.get(ENV) or None
    key = (f"{device}:{name}", shapes)
    if key in _CHOSEN:
        return _CHOSEN[key]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 drops mantissa bits: not exact
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    if name is not None:
        gemm = Gemm(name)
        verify(gemm, shapes, device)
    else:
        gemm = _fastest(device, shapes)
    _CHOSEN[key] = gemm
    return gemm


def _fastest(device: torch.device, shapes: tuple[tuple[int, int], ...]) -> Gemm:
    """The fastest backend that verifies: all are timed (cheap), then verified in order of speed until one
    passes. Timed on the largest product below output-head size: representative, and cheap in memory."""
    k, n = max((s for s in shapes if s[1] <= 8192), key=lambda s: s[0] * s[1], default=shapes[0])
    a, b = _operands(64, k, n, torch.Generator().manual_seed(1), device)
    timed = []
    for name in candidates(device):
        gemm = Gemm(name)
        try:
            timed.append((_time(functools.partial(gemm.mm, a, b), device), name, gemm))
        except (RuntimeError, TypeError, NotImplementedError):
            continue
    failures = []
    for _, _, gemm in sorted(timed, key=lambda t: t[:2]):
        try:
            verify(gemm, shapes, device)
            return gemm
        except BackendError as e:
            failures.append(str(e))
    raise BackendError("no exact matrix product backend works here: " + ("; ".join(failures) or "none runs"))


def _time(run: Callable[[], object], device: torch.device, repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs, after one to warm up: robust to a machine that is busy meanwhile."""
    run()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best
