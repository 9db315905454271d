"""A llama-family transformer in exact arithmetic, readable top to bottom.

An archive must decode on any machine, so every number on the way to the range coder is computed the
same way everywhere:

- matrix products are of int8 matrices, exact in int32 (``gemm.py``: any backend gives the same bits);
- between them, only single IEEE binary32/binary64 operations (+ − × ÷ √, each rounded to nearest even,
  never fused) and exact integer sums and maxima; exp is a fixed binary32 polynomial on exact powers of
  two (``exp2_fixed``), the sigmoid and the rotary embedding are tables built with exact arithmetic
  (``tables.py``).

No float reduction (sum, mean, softmax) is ever taken, because their results depend on summation order.
Every row (token) is quantised on its own, so a token's numbers do not depend on what else is in the
batch: a full-sequence pass over a chunk gives bit for bit what step-by-step decoding gives, which is what
lets the encoder run in large passes while the decoder steps. docs/FORMAT.md states the arithmetic as a
specification; this file is its implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import gemm as gemm_
from .simd import AMX, LANES
from .tables import rope_tables, sigmoid_table

ENGINE = "int8-v1"  # names this arithmetic in archives; any change to it needs a new name

# Activations into each product: 16 bits (two int8 halves, twice the products) where 8 bits cost ratio.
BITS = {"qkv": 16, "o": 8, "gate_up": 16, "down": 16, "head": 16}
Q8, Q16 = 127, 127 * 256  # largest magnitude of an 8-bit and a 16-bit (hi·256 + lo) activation
SCORE_FRAC, SCORE_ONE = 6, 22  # attention scores in 1/64 bits; weights 2**22 · 2**(−d/64)
LOGIT_FRAC, LOGIT_ONE = 8, 30  # output logits in 1/256 bits; weights 2**30 · 2**(−d/256)
SIGMOID_FRAC, SIGMOID_SPAN = 8, 16  # sigmoid tabulated at 1/256 steps over [−16, 16]
LIMIT = 1 << 22  # fixed-point scores and logits are clamped to ±LIMIT (exactly roundable in binary32)
TINY = 2.0**-100  # floor of a row's largest magnitude, so that an all-zero row divides safely
LN2 = 0.6931471805599453  # ln 2 rounded to binary64: a literal, not libm's log
ROPE_LENGTH = 2048  # rotary tables are built for this many positions, or the next power of two
ROW_BLOCK = 256  # tokens per block of the per-token work, so that its tensors stay in cache
QUANTIZE_ROWS = 4096  # weight rows quantised at once
TILE = 1 << 22  # most attention scores computed at once
PACKED_ROWS = 24  # products of at most this many operand rows (16-bit: two a row) use the packed weights, if any

# 2**−u on [0, 1) as a binary32 polynomial (relative error below 3.1e-6, P(0) = 1), evaluated by Horner's
# rule with each operation rounded (never fused)
EXP2_POLY = (1.0, -0.6930635571479797, 0.23945662379264832, -0.0532233826816082, 0.006831794511526823)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, hf: dict) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dictionary of a llama-family model."""
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported RoPE scaling {rope.get('rope_type')!r}")
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )


# --- Fixed-point primitives ---------------------------------------------------------------------------


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


def product_operand(x: Tensor, bits: int, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """Rows of binary32 x as the int8 operand of a product, and each row's factor [M, 1]: quantised to 8 bits
    (``quantize_rows``), or to 16 bits as hi·256 + lo with hi = (xq + 128) >> 8 (operand [2M, K]: the his, then
    the los); with ``eps``, RMS-normalised (``quantize_normed``)."""
    q = Q8 if bits == 8 else Q16
    if x.device.type == "cpu":
        return _kernels().product_operand(x, q, bits == 16, eps)
    return _product_operand(x, bits, eps)


def _product_operand(x: Tensor, bits: int, eps: float | None) -> tuple[Tensor, Tensor]:
    q = Q8 if bits == 8 else Q16
    xq, factor = quantize_rows(x, q) if eps is None else quantize_normed(x, q, eps)
    if bits == 8:
        return xq.to(torch.int8), factor
    hi = (xq + 128) >> 8
    return torch.cat((hi, xq - (hi << 8))).to(torch.int8), factor


def product_result(acc: Tensor, bits: int, scale: Tensor, factor: Tensor) -> Tensor:
    """binary32 (a · scale) · factor of an int32 product acc, a = hi·256 + lo from its halves for 16 bits."""
    if acc.device.type == "cpu":
        return _kernels().product_result(acc, bits == 16, scale, factor)
    return _product_result(acc, bits, scale, factor)


def _product_result(acc: Tensor, bits: int, scale: Tensor, factor: Tensor) -> Tensor:
    if bits == 8:
        a = acc.float()
    else:
        m = acc.shape[0] // 2
        a = acc[:m].float() * 256.0 + acc[m:].float()
    return a * scale * factor


def fixed_logits(acc: Tensor, bits: int, scale: Tensor, factor: Tensor, r: Tensor) -> Tensor:
    """int32 round(clamp(``product_result``(acc, bits, scale, factor) · r, ±LIMIT)), r [M, 1]: the head's logits."""
    if acc.device.type == "cpu":
        return _kernels().fixed_logits(acc, bits == 16, scale, factor, r)
    return _fixed_logits(acc, bits, scale, factor, r)


def _fixed_logits(acc: Tensor, bits: int, scale: Tensor, factor: Tensor, r: Tensor) -> Tensor:
    return torch.round((_product_result(acc, bits, scale, factor) * r).clamp_(-LIMIT, LIMIT)).to(torch.int32)


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
    if x.device.type == "cpu":
        return _kernels().residual_operand(x, acc, bits, scale, factor, out_bits, eps)
    return _residual_operand(x, acc, bits, scale, factor, out_bits, eps)


def _residual_operand(
    x: Tensor, acc: Tensor, bits: int, scale: Tensor, factor: Tensor, out_bits: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    h = x + _product_result(acc, bits, scale, factor[:, None])
    operand, out_factor = _product_operand(h, out_bits, eps)
    return h, operand, out_factor.view(-1)


def swiglu_operand(
    acc: Tensor, bits: int, scale: Tensor, factor: Tensor, sigmoid: Tensor, out_bits: int
) -> tuple[Tensor, Tensor]:
    """The gate and up product's result, ``swiglu``, and the down product's operand: (operand, factors [M])."""
    if acc.device.type == "cpu":
        return _kernels().swiglu_operand(acc, bits, scale, factor, sigmoid, out_bits)
    return _swiglu_operand(acc, bits, scale, factor, sigmoid, out_bits)


def _swiglu_operand(
    acc: Tensor, bits: int, scale: Tensor, factor: Tensor, sigmoid: Tensor, out_bits: int
) -> tuple[Tensor, Tensor]:
    gate_up = _product_result(acc, bits, scale, factor[:, None])
    operand, out_factor = _product_operand(swiglu(gate_up, sigmoid), out_bits, None)
    return operand, out_factor.view(-1)


@functools.cache  # an import statement costs microseconds, and a decoding step asks hundreds of times
def _kernels():
    from . import kernels  # compiled on first use

    return kernels


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


@dataclass
class Linear:
    """int8 weights [N, K], one binary32 scale per output channel (row): W ≈ wq · scale. Kept plain (``wq``),
    packed for ``kernels.packed_product`` (``packed``), or both; where AMX's tiles multiply packed weights at any
    rows, only packed (``wq`` None), so the model is in memory once."""

    wq: Tensor | None
    scale: Tensor
    packed: Tensor | None = field(default=None, repr=False, compare=False)  # wq as ``pack`` lays it out, or None
    shape: tuple[int, int] = field(init=False)  # (N, K)

    def __post_init__(self) -> None:
        self.shape = tuple(self.wq.shape)

    @classmethod
    def quantize(cls, w: Tensor, gain: Tensor | None = None) -> Linear:
        """Per output channel of w·gain (gain: per input column, a norm's, folded in): scale = max|w| / 127
        and wq = round(w / scale), in binary32; in blocks of rows, so large matrices need little memory."""
        wq = torch.empty(w.shape, dtype=torch.int8, device=w.device)
        scale = torch.empty(w.shape[0], device=w.device)
        for rows in _blocks(w.shape[0], QUANTIZE_ROWS):
            block = w[rows].float() if gain is None else w[rows].float() * gain
            amax = block.abs().amax(-1).clamp_min(TINY)
            scale[rows] = amax / _full(amax, 127.0)
            wq[rows] = torch.round(block / scale[rows, None]).to(torch.int8)
        return cls(wq, scale)

    def product(self, gemm: gemm_.Gemm, operand: Tensor) -> Tensor:
        """The exact int32 product of int8 rows and Wᵀ: with the packed weights if the plain ones are gone or there
        are few rows, else with the backend. The same integers either way."""
        if self.packed is not None and (self.wq is None or len(operand) <= PACKED_ROWS):
            return _kernels().packed_product(operand, self.packed, self.shape[0])
        return gemm.mm(operand, self.wq.t())

    def pack(self, keep_plain: bool = True) -> None:
        """Lay the weights out for ``kernels.packed_product`` as ``packed``: in tiles of 64 output channels
        [N'/64, K'/4, 64, 4], four input columns of one channel together, N and K padded with zeros to
        multiples of 64; the same tiles as the key cache's, with channels for positions."""
        if self.packed is None:
            n, k = self.shape
            wq = torch.nn.functional.pad(self.wq, (0, _round_up(k, LANES) - k, 0, _round_up(n, LANES) - n))
            self.packed = wq.view(-1, LANES, wq.shape[1] // 4, 4).transpose(1, 2).contiguous()
        if not keep_plain:
            self.wq = None

    def unpack(self) -> None:
        """Free the packed copy, if the plain weights are kept."""
        if self.wq is not None:
            self.packed = None

    def plain(self) -> Tensor:
        """wq, made again from the packed weights if only those are kept."""
        if self.wq is not None:
            return self.wq
        n, k = self.shape
        return self.packed.transpose(1, 2).reshape(-1, self.packed.shape[1] * 4)[:n, :k]


# --- Cache --------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of ``batch`` rows for up to ``length`` positions: int8 per (position, head), with the
    binary32 factor of each (position, head) [..., position].

    Laid out for the compiled decoding step's products (``simd.py``), which read both in order: keys in tiles
    of 64 positions [..., W/64, hd/4, 64, 4] (four head dimensions of one position together), values as
    [..., W/4, hd, 4] (four positions of one head dimension together); hd is padded with zeros and W (positions)
    rounded up to multiples of ``simd.LANES`` (64). ``write`` and ``read`` convert from and to plain layouts.
    The layout is not part of the format: any gives the same integers."""

    def __init__(self, cfg: LlamaConfig, batch: int, length: int, device: torch.device):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads)
        padded, width = _round_up(cfg.head_dim, LANES), _round_up(length, LANES)
        self.k = torch.zeros((*shape, width // LANES, padded // 4, LANES, 4), dtype=torch.int8, device=device)
        self.v = torch.zeros((*shape, width // 4, padded, 4), dtype=torch.int8, device=device)
        self.k_scale = torch.zeros((*shape, width), device=device)
        self.v_scale = torch.zeros((*shape, width), device=device)
        self.head_dim = cfg.head_dim

    def write(self, layer: int, pos: int, k: Tensor, v: Tensor, k_scale: Tensor, v_scale: Tensor) -> None:
        """Store int8 keys and values [B, G, T, hd] and their factors [B, G, T] at positions pos .. pos+T−1."""
        end = pos + k.shape[2]
        pad = (0, self.v.shape[-2] - self.head_dim)
        at = torch.arange(pos, end, device=self.v.device)
        k = torch.nn.functional.pad(k, pad).unflatten(-1, (-1, 4)).permute(2, 0, 1, 3, 4)  # [T, B, G, hd/4, 4]
        self.k[layer][:, :, at // LANES, :, at % LANES] = k
        self.v[layer][:, :, at // 4, :, at % 4] = torch.nn.functional.pad(v, pad).permute(2, 0, 1, 3)
        self.k_scale[layer, ..., pos:end], self.v_scale[layer, ..., pos:end] = k_scale, v_scale

    def read(self, layer: int, s: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Positions 0 .. s−1: keys transposed [B, G, hd, s], values [B, G, s, hd], and their factors [B, G, s]."""
        hd = self.head_dim
        keys = self.k[layer, :, :, : -(-s // LANES)].permute(0, 1, 3, 5, 2, 4).flatten(-2).flatten(2, 3)
        values = self.v[layer, :, :, : -(-s // 4)].transpose(-2, -1).flatten(-3, -2)
        keys, values = keys[..., :hd, :s].contiguous(), values[..., :s, :hd].contiguous()
        return keys, values, self.k_scale[layer, ..., :s], self.v_scale[layer, ..., :s]

    def copy_prefix(self, source: KVCache, n: int) -> None:
        """Make positions 0 .. n−1 of every row those of ``source`` (of one row, or as many as this)."""
        tiles, quads = n // LANES, n // 4
        self.k[..., :tiles, :, :, :] = source.k[..., :tiles, :, :, :]
        if n % LANES:
            self.k[..., tiles, :, : n % LANES, :] = source.k[..., tiles, :, : n % LANES, :]
        self.v[..., :quads, :, :] = source.v[..., :quads, :, :]
        if n % 4:
            self.v[..., quads, :, : n % 4] = source.v[..., quads, :, : n % 4]
        self.k_scale[..., :n], self.v_scale[..., :n] = source.k_scale[..., :n], source.v_scale[..., :n]

    def rows(self, start: int, end: int) -> KVCache:
        """Rows start .. end − 1 of the batch, as a cache that shares this one's memory (this cache, if all)."""
        if start == 0 and end >= self.k.shape[1]:
            return self
        view = copy.copy(self)
        for name in ("k", "v", "k_scale", "v_scale"):
            setattr(view, name, getattr(self, name)[:, start:end])
        return view

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows (ascending indices into the batch), moved down in place: a copy of the kept rows
        would hold two caches at once, the decoder's peak memory."""
        for name in ("k", "v", "k_scale", "v_scale"):
            t = getattr(self, name)
            for j, i in enumerate(rows):
                if i != j:
                    t[:, j] = t[:, i]
            setattr(self, name, t[:, : len(rows)])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --- The network --------------------------------------------------------------------------------------


@dataclass
class Layer:
    qkv: Linear  # input_layernorm's gain folded in
    o: Linear
    gate_up: Linear  # post_attention_layernorm's gain folded in
    down: Linear


class ExactLlama:
    """The integer model: quantised weights, the tables, and a chosen exact product backend."""

    def __init__(self, cfg: LlamaConfig, layers: list[Layer], embed: Linear, head: Linear):
        self.cfg, self.layers, self.embed, self.head = cfg, layers, embed, head
        self.device = head.scale.device
        self.sigmoid = sigmoid_table(SIGMOID_FRAC, SIGMOID_SPAN).to(self.device)
        logit_constant = torch.tensor(2.0**LOGIT_FRAC / LN2, dtype=torch.float32)
        self.logit_scale = logit_constant.expand(1, 1).to(self.device)  # a row factor, for product_result
        self.key_constant = torch.tensor(2.0**SCORE_FRAC / LN2 / math.sqrt(cfg.head_dim), dtype=torch.float32)
        self._rope_cache: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))
        self._packed: list[Tensor] = []  # the packed weights ``_step_weights`` last converted, and its result
        self._packed_arrays: tuple = ()
        self.gemm = gemm_.choose(self.device, self.shapes())
        self.attention_weights = _kernels().attention_weights if self.device.type == "cpu" else attention_weights
        self.tiles = AMX and self.device.type == "cpu"  # AMX's tiles: packed weights at any rows, and attention
        if self.tiles:
            for lin in self.linears():
                lin.pack(keep_plain=False)

    @classmethod
    def from_float(cls, cfg: LlamaConfig, state: dict[str, Tensor], device: str | torch.device = "cpu"):
        """Quantise Hugging Face-named float weights (deterministic: single binary32 operations)."""
        device = torch.device(device)

        def f32(name: str) -> Tensor:
            return state[name].to(device=device, dtype=torch.float32)

        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([f32(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            gate_up = torch.cat([f32(p + "mlp.gate_proj.weight"), f32(p + "mlp.up_proj.weight")])
            layers.append(
                Layer(
                    qkv=Linear.quantize(qkv, f32(p + "input_layernorm.weight")),
                    o=Linear.quantize(f32(p + "self_attn.o_proj.weight")),
                    gate_up=Linear.quantize(gate_up, f32(p + "post_attention_layernorm.weight")),
                    down=Linear.quantize(f32(p + "mlp.down_proj.weight")),
                )
            )
        embed = Linear.quantize(f32("model.embed_tokens.weight"))
        head = f32("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight")
        return cls(cfg, layers, embed, Linear.quantize(head, f32("model.norm.weight")))

    def shapes(self) -> list[tuple[int, int]]:
        """(K, N) of every weight product, and of the attention products at their largest."""
        c = self.cfg
        return [lin.shape[::-1] for lin in (*vars(self.layers[0]).values(), self.head)] + [
            (c.head_dim, 2048),
            (2048, c.head_dim),
        ]

    def tensors(self) -> dict[str, Tensor]:
        """Everything the arithmetic depends on, by name (what ``digest`` hashes)."""
        out = {"embed.wq": self.embed.wq, "embed.scale": self.embed.scale}
        out |= {"head.wq": self.head.plain(), "head.scale": self.head.scale}
        for i, layer in enumerate(self.layers):
            for name, lin in vars(layer).items():
                out[f"layers.{i}.{name}.wq"], out[f"layers.{i}.{name}.scale"] = lin.plain(), lin.scale
        return out

    def digest(self) -> str:
        """sha256 of the engine name, the configuration and every quantised tensor: equal digests compute equal
        bits, so archives name their model by it."""
        h = hashlib.sha256(f"{ENGINE}|{self.cfg}\n".encode())
        for name, t in sorted(self.tensors().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(self.cfg, batch, length, self.device)

    def prepare_steps(self, batch: int) -> None:
        """Get ready to decode ``batch`` rows a step. A narrow batch's products read every weight for a few rows,
        fastest from a copy packed for ``kernels.packed_product`` (made here, on a CPU); a wide batch's use the
        backend, and the copy is freed for its cache's memory. Weights kept only packed (AMX) stay so."""
        widest = batch * max(BITS.values()) // 8  # operand rows of the widest product: 16 bits are two int8 rows
        narrow = widest <= PACKED_ROWS and self.device.type == "cpu"
        for lin in self.linears():
            lin.pack() if narrow else lin.unpack()

    def linears(self) -> list[Linear]:
        """Every weight matrix that is multiplied (the embedding is only looked up)."""
        return [self.head, *(lin for layer in self.layers for lin in vars(layer).values())]

    # --- forward ---

    def forward(self, tokens: Tensor, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        """binary32 hidden states [B, T, hidden] after the last layer (before the final norm) for ``tokens``
        [B, T] at positions pos .. pos+T−1, each attending causally to itself, earlier tokens of its row and
        (with a cache) the cached positions before ``pos``, into which it writes its keys and values."""
        c = self.cfg
        b, t = tokens.shape
        if t == 1 and cache is not None and self.device.type == "cpu":
            return self._step(tokens, cache, pos)
        heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        x = self._embed(tokens.reshape(-1))
        qkv = torch.empty(b * t, (heads + 2 * kv) * hd, device=self.device)
        y = torch.empty(b * t, heads * hd, device=self.device)
        blocks = _blocks(b * t)
        operands = [product_operand(x[rows], BITS["qkv"], c.rms_norm_eps) for rows in blocks]  # each block's next
        for i, layer in enumerate(self.layers):
            for rows, (operand, factor) in zip(blocks, operands):
                acc = layer.qkv.product(self.gemm, operand)
                qkv[rows] = product_result(acc, BITS["qkv"], layer.qkv.scale, factor.view(-1, 1))
            self._attention(i, qkv, cache, pos, y.view(b, t, heads, hd))
            for j, rows in enumerate(blocks):
                operand, factor = product_operand(y[rows], BITS["o"])
                x[rows], *operands[j] = self._rest_of_layer(layer, x[rows], operand, factor.view(-1))
        return x.view(b, t, -1)

    def _step(self, tokens: Tensor, cache: KVCache, pos: int) -> Tensor:
        """``forward`` for one new position per row (a decoding step) on a CPU: the same arithmetic, with all
        the work between two products fused into one compiled kernel (``kernels.py``), four a layer; every layer in
        one call where all the weights are packed (on AMX, or for a narrow step)."""
        k, eps, rep = _kernels(), self.cfg.rms_norm_eps, self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        cos, sin = self._rope(pos + 1)
        x = self._embed(tokens.reshape(-1))
        operand, factor = product_operand(x, BITS["qkv"], eps)
        factor = factor.view(-1)
        where = (cos[pos], sin[pos], pos, cache)
        weights = self._step_weights()
        if weights is not None:
            x = k.layers_step(weights, x, operand, factor, *where, self.key_constant, rep, self.sigmoid, eps, BITS)
            return x.view(len(x), 1, -1)
        for i, layer in enumerate(self.layers):
            acc = layer.qkv.product(self.gemm, operand)
            args = (*where, i, self.key_constant, rep, BITS["o"])
            operand, factor = k.attention_step(acc, BITS["qkv"], layer.qkv.scale, factor, *args)
            x, operand, factor = self._rest_of_layer(layer, x, operand, factor)
        return x.view(len(x), 1, -1)

    def _step_weights(self) -> tuple | None:
        """``kernels.step_weights`` of the layers if all their weights are packed, else None; kept while the packed
        weights are the same tensors."""
        packed = [lin.packed for layer in self.layers for lin in vars(layer).values()]
        if any(p is None for p in packed):
            return None
        if len(packed) != len(self._packed) or any(a is not b for a, b in zip(packed, self._packed)):
            self._packed, self._packed_arrays = packed, _kernels().step_weights(self.layers)
        return self._packed_arrays

    def _rest_of_layer(self, layer: Layer, x: Tensor, operand: Tensor, factor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A layer after its attention, for rows of hidden states x: from the output product's operand (row
        factors [M]) to the new hidden states and the next layer's query, key and value operand (and factors)."""
        eps = self.cfg.rms_norm_eps
        acc = layer.o.product(self.gemm, operand)
        h, operand, factor = residual_operand(x, acc, BITS["o"], layer.o.scale, factor, BITS["gate_up"], eps)
        acc = layer.gate_up.product(self.gemm, operand)
        operand, factor = swiglu_operand(acc, BITS["gate_up"], layer.gate_up.scale, factor, self.sigmoid, BITS["down"])
        acc = layer.down.product(self.gemm, operand)
        return residual_operand(h, acc, BITS["down"], layer.down.scale, factor, BITS["qkv"], eps)

    def _rope(self, length: int) -> tuple[Tensor, Tensor]:
        n = max(ROPE_LENGTH, 1 << (length - 1).bit_length())
        if self._rope_cache[0].shape[0] < n:
            self._rope_cache = tuple(t.to(self.device) for t in rope_tables(n, self.cfg.head_dim, self.cfg.rope_theta))
        return self._rope_cache

    def _embed(self, flat: Tensor) -> Tensor:
        return self.embed.wq[flat].float() * self.embed.scale[flat, None]

    def _attention(self, i: int, qkv: Tensor, cache: KVCache | None, pos: int, out: Tensor):
        """Causal attention into ``out`` [B, T, H, hd] of the rows' queries on their keys and values (and the cache's),
        from the query, key and value product's result ``qkv`` [B·T, (H + 2G)·hd] (rotated here).

        Keys and values are int8 per (token, head); queries too, grouped with the heads that share their
        key ([B, G, rep, T, hd]), and processed in tiles of queries that see keys up to their own position: on a
        CPU with AMX, by ``kernels.attention_tiles`` from a cache (a one-layer cache of its own if it has none)."""
        b, t, heads, hd = out.shape
        g = self.cfg.num_key_value_heads
        rep = heads // g
        cos, sin = self._rope(pos + t)
        if self.tiles:
            if cache is None:
                cache, i = KVCache(dataclasses.replace(self.cfg, num_hidden_layers=1), b, t, self.device), 0
            _kernels().attention_tiles(qkv, cos, sin, pos, cache, i, self.key_constant, rep, out)
            return
        cos, sin = cos[pos : pos + t].repeat(b, 1)[:, None], sin[pos : pos + t].repeat(b, 1)[:, None]
        q = rotate(qkv[:, : heads * hd].view(-1, heads, hd), cos, sin).view(b, t, heads, hd)
        k = rotate(qkv[:, heads * hd : (heads + g) * hd].view(-1, g, hd), cos, sin).view(b, t, g, hd)
        v = qkv[:, (heads + g) * hd :].view(b, t, g, hd)
        kq, kd = quantize_rows(k, Q8)
        vq, vd = quantize_rows(v, Q8)
        kq, vq = kq.to(torch.int8).transpose(1, 2).contiguous(), vq.to(torch.int8).transpose(1, 2).contiguous()
        kd, vd = kd[..., 0].transpose(1, 2), vd[..., 0].transpose(1, 2)  # [B, G, T]
        qq, qd = quantize_rows(q, Q8)
        qq = qq.to(torch.int8).view(b, t, g, rep, hd).permute(0, 2, 3, 1, 4)  # [B, G, rep, T, hd]
        qd = qd.view(b, t, g, rep).permute(0, 2, 3, 1)
        if cache is None:
            kq = kq.transpose(2, 3)  # [B, G, hd, T]
        else:
            cache.write(i, pos, kq, vq, kd, vd)
            kq, vq, kd, vd = cache.read(i, pos + t)
        key_factor = kd * self.key_constant  # 2**6 · log2(e) / √hd: scores in 1/64 bits
        step = max(1, TILE // (b * heads * (pos + t)))
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            s = pos + t1  # keys visible to the tile's last query
            rows = (t1 - t0) * rep
            visible = (pos + 1 + torch.arange(t0, t1, device=q.device, dtype=torch.int32)).repeat(rep)
            args = (qq[:, :, :, t0:t1].reshape(b, g, rows, hd), qd[:, :, :, t0:t1].reshape(b, g, rows))
            args += (kq, key_factor, vq, vd, visible, s)
            pv, wd, total = self.attend(*args)
            factor = (wd.double() / total.double()).float()
            y = pv.float() * factor[..., None]
            out[:, t0:t1] = y.view(b, g, rep, t1 - t0, hd).permute(0, 3, 1, 2, 4).reshape(b, t1 - t0, heads, hd)

    def attend(self, qq, q_factor, keys, key_factor, values, v_scale, visible, s) -> tuple[Tensor, Tensor, Tensor]:
        """int8 queries [..., R, hd] on the first ``s`` positions of int8 keys stored transposed [..., hd, W] and
        values [..., W, hd], with the keys' and values' factors [..., W]: the exact int32 sum of requantised
        weights times values [..., R, hd], the weights' factor and their unscaled sum [..., R]."""
        dots = self.gemm.bmm(qq, keys[..., :s])
        wq, wd, total = self.attention_weights(dots, key_factor[..., :s], q_factor, visible, v_scale[..., :s])
        return self.gemm.bmm(wq, values[..., :s, :]), wd, total

    def logits(self, hidden: Tensor) -> Tensor:
        """Fixed-point logits in 1/256 bits, int32 [N, vocab], of hidden states [N, hidden] (final norm and
        output head): round(clamp(((a · scale) · (2**8·log2 e)) · r, ±LIMIT)), a the product as in
        ``product_result``."""
        operand, r = product_operand(hidden, BITS["head"], self.cfg.rms_norm_eps)
        acc = self.head.product(self.gemm, operand)
        return fixed_logits(acc, BITS["head"], self.head.scale, self.logit_scale, r)


def _blocks(n: int, size: int = ROW_BLOCK) -> list[slice]:
    return [slice(a, min(n, a + size)) for a in range(0, n, size)]


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, half-split layout: x·cos + (−x₂, x₁)·sin, three rounded binary32 operations.
    x [N, heads, hd]; cos, sin [N, 1, hd]."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin
