"""The arithmetic's operations on one device: the compiled twins on a CPU, the torch definitions elsewhere.

Both implement ``Ops`` with the same arguments and the same bits (the tests check every twin against its
definition), so the model is written once against this interface and the choice is made once, per device.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from . import arithmetic, kernels


class Ops(Protocol):
    """The operations between the model's matrix products, and the coder's frequencies (``arithmetic``'s)."""

    def product_operand(self, x: Tensor, bits: int, eps: float | None = None) -> tuple[Tensor, Tensor]: ...

    def product_result(self, acc: Tensor, bits: int, scale: Tensor, factor: Tensor) -> Tensor: ...

    def fixed_logits(self, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, r: Tensor) -> Tensor: ...

    def residual_operand(
        self, x: Tensor, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, out_bits: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def swiglu_operand(
        self, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, sigmoid: Tensor, out_bits: int
    ) -> tuple[Tensor, Tensor]: ...

    def attention_weights(
        self, dots: Tensor, key_factor: Tensor, q_factor: Tensor, visible: Tensor, v_scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def frequencies(self, logits: Tensor) -> Tensor: ...

    def token_intervals(self, logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]: ...


def ops_for(device: torch.device) -> Ops:
    """The compiled kernels for tensors on a CPU, the torch definitions for any other device."""
    return kernels if device.type == "cpu" else arithmetic


def frequencies(logits: Tensor) -> Tensor:
    """``arithmetic.frequencies`` on the logits' device."""
    return ops_for(logits.device).frequencies(logits)


def token_intervals(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``arithmetic.token_intervals`` on the logits' device."""
    return ops_for(logits.device).token_intervals(logits, tokens)
