"""How one user runs the model: the same integers as ``ExactLlama.forward``, computed faster on a CPU.

A ``Runner`` belongs to one piece of work (a compressor's passes, a decoder group's steps) and owns everything
that work's speed needs: a copy of the weights packed for narrow decoding steps (each step's products read every
weight for a few rows, fastest as ``kernels.packed_product`` lays them out), their numpy views for the one-call
step, and AMX's fused attention tiles. The model itself never changes, so threads may share it, each with runners
of its own. Every route here is tested equal to the model's own forward pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numba
import torch
from torch import Tensor

from . import kernels
from .arithmetic import BITS
from .model import ExactLlama, KVCache, Linear

PACKED_ROWS = 24  # products of at most this many operand rows (16-bit: two a row) use packed weights, if any


class Runner:
    """Runs ``net`` for one user; ``rows``: the rows of the decoding steps it will take (None: full passes only).

    Steps of few enough rows multiply by a packed copy of the weights, made here and freed by ``release``; a wide
    batch's steps use the backend (its cache needs the memory more)."""

    def __init__(self, net: ExactLlama, rows: int | None = None):
        self.net = net
        widest = (rows or 0) * max(BITS.values()) // 8  # operand rows of the widest product: 16 bits are two rows
        narrow = rows is not None and widest <= PACKED_ROWS and net.device.type == "cpu"
        self._packed = {id(lin): lin.pack() for lin in net.linears()} if narrow and not net.tiles else {}
        self._step_arrays: kernels.StepWeights | None = None

    def release(self) -> None:
        """Free the packed copy: the work is done."""
        self._packed, self._step_arrays = {}, None

    def product(self, lin: Linear, operand: Tensor) -> Tensor:
        """``Execution.product``: by the packed copy for few rows, else as the model multiplies."""
        packed = self._packed.get(id(lin))
        if packed is not None and len(operand) <= PACKED_ROWS:
            return kernels.packed_product(operand, packed, lin.shape[0])
        return lin.product(self.net.gemm, operand)

    def attention(self, i: int, qkv: Tensor, cache: KVCache | None, pos: int, out: Tensor) -> None:
        """``Execution.attention``: on a CPU with AMX, ``kernels.attention_tiles`` (rotation, quantisation, cache
        writes and attention fused, from a cache: a one-layer cache of its own if it has none); else the model's."""
        if not self.net.tiles:
            self.net.attention(i, qkv, cache, pos, out)
            return
        b, t, heads, _ = out.shape
        if cache is None:
            cache, i = KVCache(dataclasses.replace(self.net.cfg, num_hidden_layers=1), b, t, self.net.device), 0
        cos, sin = self.net.rope(pos + t)
        rep = heads // self.net.cfg.num_key_value_heads
        kernels.attention_tiles(qkv, cos, sin, pos, cache, i, self.net.key_constant, rep, out)

    def forward(self, tokens: Tensor, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        """``ExactLlama.forward``, run by this runner."""
        return self.net.forward(tokens, cache, pos, self)

    def logits(self, hidden: Tensor) -> Tensor:
        """``ExactLlama.logits``, run by this runner."""
        return self.net.logits(hidden, self)

    def step(self, tokens: Tensor, cache: KVCache, pos: int) -> Tensor:
        """``forward`` for a few new positions per row (``tokens`` [B, T]: a decoding step, T = 1, or one that
        checks T − 1 guessed tokens, each row's products done together: the weights are read once for all). On a
        CPU, the work between two products is fused into one compiled kernel (``kernels.attention_step``,
        ``residual_operand``, ``swiglu_operand``), and every layer runs in one call where all the weights are packed
        (on AMX, or for a narrow step)."""
        net = self.net
        if net.device.type != "cpu":
            return self.forward(tokens, cache, pos)
        cfg, ops = net.cfg, net.ops
        eps, rep = cfg.rms_norm_eps, cfg.num_attention_heads // cfg.num_key_value_heads
        b, t = tokens.shape
        cos, sin = net.rope(pos + t)
        x = net.embed_tokens(tokens.reshape(-1))
        operand, factor = ops.product_operand(x, BITS["qkv"], eps)
        factor = factor.view(-1)
        cos, sin, kappa = cos[pos : pos + t], sin[pos : pos + t], net.key_constant
        weights = self._layer_arrays()
        if weights is not None:
            x = kernels.layers_step(
                weights, x, operand, factor, cos, sin, pos, cache, kappa, rep, net.sigmoid, eps, BITS
            )
            return x.view(b, t, -1)
        for i, layer in enumerate(net.layers):
            acc = self.product(layer.qkv, operand)
            scale, bias, norms = layer.qkv.scale, layer.qkv.bias, layer.head_norms
            operand, factor = kernels.attention_step(
                acc, BITS["qkv"], scale, bias, factor, cos, sin, pos, cache, i, kappa, rep, BITS["o"], norms, eps
            )
            x, operand, factor = net.rest_of_layer(layer, x, operand, factor, self)
        return x.view(b, t, -1)

    def _layer_arrays(self) -> kernels.StepWeights | None:
        """``kernels.step_weights`` of the layers if all their weights are packed (kept by the model on AMX, or
        copied here), else None; made once."""
        if self._step_arrays is None and (self.net.tiles or self._packed):
            layers = [list(layer.linears().values()) for layer in self.net.layers]
            packed = [[lin.pack() if self.net.tiles else self._packed[id(lin)] for lin in four] for four in layers]
            scales = [[lin.scale for lin in four] for four in layers]
            biases = [layer.qkv.bias for layer in self.net.layers]
            norms = [layer.head_norms for layer in self.net.layers]
            self._step_arrays = kernels.step_weights(packed, scales, biases, norms)
        return self._step_arrays


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Compute with ``n`` threads (0: as before), in torch and in the compiled kernels. Speed only: the integers
    are the same with any number."""
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(n or before[0])
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # numba sets it at import
    numba.set_num_threads(min(n, most) if n else before[1])
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
