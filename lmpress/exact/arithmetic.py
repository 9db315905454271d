"""The exact arithmetic's definition: its constants, and its operations written in torch (any device).

An archive must decode on any machine, so every number on the way to the range coder is computed the
same way everywhere:

- matrix products are of int8 matrices, exact in int32 (``gemm.py``: any backend gives the same bits);
- between them, only single IEEE binary32/binary64 operations (+ − × ÷ √, each rounded to nearest even,
  never fused) and exact integer sums and maxima; exp is a fixed binary32 polynomial on exact powers of
  two (``exp2_fixed``), the sigmoid and the rotary embedding are tables built with exact arithmetic
  (``tables.py``).

No float reduction (sum, mean, softmax) is ever taken, because their results depend on summation order.
Every row (token) is quantised on its own, so a token's numbers do not depend on what else is in the
batch. Each operation is defined once, here; ``kernels.py`` holds compiled CPU twins of some (same
arguments, same bits), and ``ops.py`` chooses between the two once per device. docs/FORMAT.md states the
arithmetic as a specification, with known-answer values; a change to anything here needs a new engine name
(``ENGINE`` in ``__init__.py``) and a new golden archive.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Activations into each product: 16 bits (two int8 halves, twice the products) where 8 bits cost ratio.
BITS = {"qkv": 16, "o": 8, "gate_up": 16, "down": 16, "head": 16}
Q8, Q16 = 127, 127 * 256  # largest magnitude of an 8-bit and a 16-bit (hi·256 + lo) activation
SCORE_FRAC, SCORE_ONE = 6, 22  # attention scores in 1/64 bits; weights 2**22 · 2**(−d/64)
LOGIT_FRAC, LOGIT_ONE = 8, 30  # output logits in 1/256 bits; weights 2**30 · 2**(−d/256)
SIGMOID_FRAC, SIGMOID_SPAN = 8, 16  # sigmoid tabulated at 1/256 steps over [−16, 16]
LIMIT = 1 << 22  # fixed-point scores and logits are clamped to ±LIMIT (exactly roundable in binary32)
TINY = 2.0**-100  # floor of a row's largest magnitude, so that an all-zero row divides safely
LN2 = 0.6931471805599453  # ln 2 rounded to binary64: a literal, not libm's log
PRECISION_BITS = 24  # token frequencies are integers summing to 2**24 (the range coder's probability bits)
TOTAL = 1 << PRECISION_BITS

# 2**−u on [0, 1) as a binary32 polynomial (relative error below 3.1e-6, P(0) = 1), evaluated by Horner's
# rule with each operation rounded (never fused)
EXP2_POLY = (1.0, -0.6930635571479797, 0.23945662379264832, -0.0532233826816082, 0.006831794511526823)


def _full(like: Tensor, value: float) -> Tensor:
    """``value`` as a tensor like ``like``. Divisions are always by tensors: CUDA computes x / scalar as
    x · (1 / scalar), which rounds differently from the CPU's true division."""
    return torch.full_like(like, value)


def quantize_rows(x: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """Each row of binary32 ``x`` as integers in [−q, q] and the factor d with x ≈ xq·d:
    xq = round(x · (q / amax)), d = amax / q, amax = max |x| of the row (at least 2**−100)."""
    amax = x.abs().amax(-1, keepdim=True).clamp_min(TINY)
    xq = torch.round(x * (_full(amax, q) / amax)).to(torch.int32)
    return xq, amax / _full(amax, q)


def quantize_normed(x: Tensor, q: int, eps: float) -> tuple[Tensor, Tensor]:
    """RMSNorm folded into quantisation: xq as ``quantize_rows`` and r with x / rms(x) ≈ xq·r.

    The norm is taken of the integers themselves (an exact int64 sum), r = 1 / √(Σxq²/n + eps·(q/amax)²)
    in binary64, so the norm's gain is folded into the next product's weights and costs nothing here.
    """
    amax = x.abs().amax(-1, keepdim=True).clamp_min(TINY)
    f = _full(amax, q) / amax
    xq = torch.round(x * f).to(torch.int32)
    wide = xq.to(torch.int64)
    sum_squares = (wide * wide).sum(-1, keepdim=True).double()
    mean_square = sum_squares / _full(sum_squares, x.shape[-1])
    f64 = f.double()
    r = torch.ones_like(mean_square) / torch.sqrt(mean_square + f64 * f64 * eps)
    return xq, r.float()


def head_norm(x: Tensor, gain: Tensor, eps: float) -> Tensor:
    """Qwen3's RMSNorm of each query and key head (x [..., hd], binary32), before rotation: ``quantize_normed`` at 16
    bits gives xq and r, and the head is (binary32(xq) · r) · gain, two binary32 products an element."""
    xq, r = quantize_normed(x, Q16, eps)
    return (xq.float() * r) * gain


def quantize_weights(w: Tensor, gain: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """int8 weights and a binary32 scale per output channel (row) of w·gain (gain: per input column, a norm's,
    folded in): scale = max|w| / 127 and wq = round(w / scale), in binary32."""
    block = w.float() if gain is None else w.float() * gain
    amax = block.abs().amax(-1).clamp_min(TINY)
    scale = amax / _full(amax, 127.0)
    return torch.round(block / scale[:, None]).to(torch.int8), scale


def product_operand(x: Tensor, bits: int, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """Rows of binary32 x as the int8 operand of a product, and each row's factor [M, 1]: quantised to 8 bits
    (``quantize_rows``), or to 16 bits as hi·256 + lo with hi = (xq + 128) >> 8 (operand [2M, K]: the his, then
    the los); with ``eps``, RMS-normalised (``quantize_normed``)."""
    q = Q8 if bits == 8 else Q16
    xq, factor = quantize_rows(x, q) if eps is None else quantize_normed(x, q, eps)
    if bits == 8:
        return xq.to(torch.int8), factor
    hi = (xq + 128) >> 8
    return torch.cat((hi, xq - (hi << 8))).to(torch.int8), factor


def product_result(acc: Tensor, bits: int, scale: Tensor, factor: Tensor) -> Tensor:
    """binary32 (a · scale) · factor of an int32 product acc, a = hi·256 + lo from its halves for 16 bits."""
    if bits == 8:
        a = acc.float()
    else:
        m = acc.shape[0] // 2
        a = acc[:m].float() * 256.0 + acc[m:].float()
    return a * scale * factor


def fixed_logits(acc: Tensor, bits: int, scale: Tensor, factor: Tensor, r: Tensor) -> Tensor:
    """int32 round(clamp(``product_result``(acc, bits, scale, factor) · r, ±LIMIT)), r [M, 1]: the head's logits."""
    return torch.round((product_result(acc, bits, scale, factor) * r).clamp_(-LIMIT, LIMIT)).to(torch.int32)


def swiglu(gate_up: Tensor, sigmoid: Tensor) -> Tensor:
    """gate · σ(gate) · up for rows [gate | up], σ from the table at round(clamp(gate · 2**8, ±16·2**8))."""
    gate, up = gate_up.chunk(2, dim=-1)
    n = SIGMOID_SPAN << SIGMOID_FRAC
    index = torch.round((gate * float(1 << SIGMOID_FRAC)).clamp_(-n, n)).to(torch.int32) + n
    return gate * sigmoid[index] * up


def residual_operand(
    x: Tensor, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, out_bits: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """A residual connection and the next product's input: h = x + ``product_result``(acc, bits, scale, factor)
    and h's RMS-normalised ``product_operand``; (h, operand, factors [M]). Row factors are [M] here."""
    h = x + product_result(acc, bits, scale, factor[:, None])
    operand, out_factor = product_operand(h, out_bits, eps)
    return h, operand, out_factor.view(-1)


def swiglu_operand(
    acc: Tensor, bits: int, scale: Tensor, factor: Tensor, sigmoid: Tensor, out_bits: int
) -> tuple[Tensor, Tensor]:
    """The gate and up product's result, ``swiglu``, and the down product's operand: (operand, factors [M])."""
    gate_up = product_result(acc, bits, scale, factor[:, None])
    operand, out_factor = product_operand(swiglu(gate_up, sigmoid), out_bits, None)
    return operand, out_factor.view(-1)


def exp2_fixed(d: Tensor, frac: int, one: int) -> Tensor:
    """round(2**(one − i) · P(f / 2**frac)) for d = i·2**frac + f ≥ 0, P ≈ 2**−u (``EXP2_POLY``): the
    weight of something d/2**frac bits below the best, in int32. The power of two is exact (made from
    exponent bits), so the single rounding is of P's binary32 value."""
    d = d.clamp(max=((one + 2) << frac) - 1)  # beyond, every weight rounds to 0
    u = (d & ((1 << frac) - 1)).float() * 2.0**-frac
    p = u * EXP2_POLY[4] + EXP2_POLY[3]
    for c in EXP2_POLY[2::-1]:
        p = p * u + c
    scale = ((127 + one - (d >> frac)) << 23).view(torch.float32)
    return torch.round(p * scale).to(torch.int32)


def attention_weights(
    dots: Tensor, key_factor: Tensor, q_factor: Tensor, visible: Tensor, v_scale: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax weights of rows of int32 query·key ``dots`` [..., R, S], as int8 ready for the product with
    the values, their factor [..., R] and the exact sum of the unscaled weights [..., R] (int64).

    Score z = round(clamp(dot · key_factor · q_factor, ±LIMIT)) in 1/64 bits; row r sees keys s < visible[r];
    e = ``exp2_fixed``(max z − z); w = e · v_scale (binary32), requantised to int8 per row."""
    z = torch.round((dots.float() * key_factor[..., None, :] * q_factor[..., None]).clamp_(-LIMIT, LIMIT))
    hidden = torch.arange(dots.shape[-1], device=dots.device) >= visible[:, None]
    z = z.to(torch.int32).masked_fill_(hidden, -2 * LIMIT)
    e = exp2_fixed(z.amax(-1, keepdim=True) - z, SCORE_FRAC, SCORE_ONE).masked_fill_(hidden, 0)
    wq, wd = quantize_rows(e.float() * v_scale[..., None, :], Q8)
    return wq.to(torch.int8), wd[..., 0], e.sum(-1)


def merge_low_rank(w: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """w + b·a (a [r, K], b [N, r]: an adapter's factors) in binary32, the same on every machine: the rank-r
    product summed in binary64 one term at a time (k = 0 .. r−1; each term b[:, k]·a[k, :] one rounded
    multiplication, each sum one rounded addition), then added to w in binary64 and rounded once to binary32.
    Never a matrix product, whose summation order would depend on the library."""
    w64, a64, b64 = w.double(), a.double(), b.double()
    acc = torch.zeros_like(w64)
    for k in range(a64.shape[0]):
        acc += b64[:, k : k + 1] * a64[k : k + 1, :]
    return (w64 + acc).float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, half-split layout: x·cos + (−x₂, x₁)·sin, three rounded binary32 operations.
    x [N, heads, hd]; cos, sin [N, 1, hd]."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


def frequencies(logits: Tensor) -> Tensor:
    """Integer frequencies f ≥ 1 summing to 2**24, int64 [N, V], from fixed-point logits [N, V] (1/256 bits).

    e_v = ``exp2_fixed``(max − z_v) ≤ 2**30; R = ⌊2**32 · (2**24 − V) / Σe⌋ (one division per row);
    c_v = (e_v · R) >> 32, so Σc ≤ 2**24 − V; the remainder goes to the first token of largest logit;
    f_v = c_v + 1, so every token stays codable.
    """
    vocab = logits.shape[-1]
    budget = TOTAL - vocab
    top = logits.amax(-1, keepdim=True)
    e = exp2_fixed(top - logits, LOGIT_FRAC, LOGIT_ONE).to(torch.int64)
    reciprocal = torch.div(budget << 32, e.sum(-1, keepdim=True), rounding_mode="floor")
    c = (e * reciprocal) >> 32
    first = torch.arange(vocab, device=logits.device).expand_as(logits)
    first_top = torch.where(logits == top, first, vocab).amin(-1, keepdim=True)
    c.scatter_add_(1, first_top, budget - c.sum(-1, keepdim=True))
    return c + 1


def intervals(freqs: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's token as its interval of the cumulative frequencies: (start L, width f), int64."""
    tokens = tokens.view(-1, 1).to(freqs.device)
    f = freqs.gather(1, tokens)
    return (freqs.cumsum(-1).gather(1, tokens) - f)[:, 0], f[:, 0]


def token_intervals(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``intervals(frequencies(logits), tokens)``: what the encoder codes each token with."""
    return intervals(frequencies(logits), tokens)
