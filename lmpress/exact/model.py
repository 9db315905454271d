"""A llama-family network in exact arithmetic: its integer weights, and its forward pass read top to bottom.

``ExactLlama.forward`` is the definition of what the model computes, in ``arithmetic``'s operations (through
``ops``: compiled on a CPU, torch elsewhere, the same bits) and exact products. How the products and the
attention are computed is the ``Execution`` it is given: the model itself by default (the backend's products,
the attention written here), or a ``runner.Runner``, which computes the same integers faster and owns what that
needs. Every row (token) is computed on its own, so a full-sequence pass over a chunk gives bit for bit what
step-by-step decoding gives: the encoder runs in large passes while the decoder steps.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from . import ENGINE, MAX_CONTEXT, kernels
from . import gemm as gemm_
from .arithmetic import (
    BITS,
    LN2,
    LOGIT_FRAC,
    Q8,
    SCORE_FRAC,
    SIGMOID_FRAC,
    SIGMOID_SPAN,
    head_norm,
    quantize_rows,
    quantize_weights,
    rotate,
)
from .ops import ops_for
from .simd import AMX, LANES
from .tables import rope_tables, sigmoid_table

ROPE_LENGTH = 2048  # rotary tables are built for this many positions, or the next power of two
ROW_BLOCK = 256  # tokens per block of the per-token work, so that its tensors stay in cache
QUANTIZE_ROWS = 4096  # weight rows quantised at once
TILE = 1 << 22  # most attention scores computed at once
_DTYPE_NAMES = {torch.int8: "torch.int8", torch.float32: "torch.float32"}  # as the model digest spells them


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

    def identity(self) -> str:
        """The configuration as the model digest hashes it (docs/FORMAT.md, Model identity): fields in this order,
        integers in decimal, floats as the shortest decimal that reads back as the same binary64 (Python's repr),
        booleans as True / False."""
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"LlamaConfig({fields})"

    @classmethod
    def from_hf(cls, hf: dict) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dictionary of a llama-family model (Llama, Mistral without a sliding
        window, Qwen2: the same network, Qwen2's query, key and value products with biases)."""
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported RoPE scaling {rope.get('rope_type')!r}")
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if sliding is not None and sliding < MAX_CONTEXT:
            raise ValueError(
                f"a sliding attention window of {sliding} positions; lmpress attends to up to {MAX_CONTEXT} in full"
            )
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


@dataclass
class Linear:
    """int8 weights [N, K], one binary32 scale per output channel (row): W ≈ wq · scale, and a binary32 bias [N]
    where the product has one (Qwen2's query, key and value). Kept plain (``wq``), or, where AMX's tiles multiply
    packed weights at any rows, only packed (``packed``, ``wq`` None), so the model is in memory once. Fixed once
    the model is built: a runner keeps any other copy it wants."""

    wq: Tensor | None
    scale: Tensor
    bias: Tensor | None = None
    packed: Tensor | None = field(default=None, repr=False, compare=False)  # wq as ``pack`` lays it out, or None
    shape: tuple[int, int] = field(init=False)  # (N, K)

    def __post_init__(self) -> None:
        assert self.wq is not None
        self.shape = (self.wq.shape[0], self.wq.shape[1])

    @classmethod
    def quantize(cls, w: Tensor, gain: Tensor | None = None) -> Linear:
        """``arithmetic.quantize_weights`` of w (and a norm's gain), in blocks of rows: little memory for large w."""
        wq = torch.empty(w.shape, dtype=torch.int8, device=w.device)
        scale = torch.empty(w.shape[0], device=w.device)
        for rows in _blocks(w.shape[0], QUANTIZE_ROWS):
            wq[rows], scale[rows] = quantize_weights(w[rows], gain)
        return cls(wq, scale)

    def product(self, gemm: gemm_.Gemm, operand: Tensor) -> Tensor:
        """The exact int32 product of int8 rows and Wᵀ, by the backend, or from the packed weights where only those
        are kept. The same integers either way."""
        if self.wq is None:
            assert self.packed is not None
            return kernels.packed_product(operand, self.packed, self.shape[0])
        return gemm.mm(operand, self.wq.t())

    def pack(self) -> Tensor:
        """The weights laid out for ``kernels.packed_product``: in tiles of 64 output channels [N'/64, K'/4, 64, 4],
        four input columns of one channel together, N and K padded with zeros to multiples of 64; the same tiles as
        the key cache's, with channels for positions."""
        if self.packed is not None:
            return self.packed
        assert self.wq is not None
        n, k = self.shape
        wq = torch.nn.functional.pad(self.wq, (0, _round_up(k, LANES) - k, 0, _round_up(n, LANES) - n))
        return wq.view(-1, LANES, wq.shape[1] // 4, 4).transpose(1, 2).contiguous()

    def keep_packed_only(self) -> None:
        """Keep only the packed weights (for AMX's tiles, which multiply them at any rows)."""
        self.packed, self.wq = self.pack(), None

    def plain(self) -> Tensor:
        """wq, made again from the packed weights if only those are kept."""
        if self.wq is not None:
            return self.wq
        assert self.packed is not None
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
    q_norm: Tensor | None = None  # Qwen3: the gains [hd] of the query heads' and the key heads' RMSNorm
    k_norm: Tensor | None = None

    @property
    def head_norms(self) -> tuple[Tensor, Tensor] | None:
        """The query and key heads' norm gains (Qwen3), or None: a model has both or neither."""
        return None if self.q_norm is None or self.k_norm is None else (self.q_norm, self.k_norm)

    def linears(self) -> dict[str, Linear]:
        """The layer's four products, by name, in the order a step runs them."""
        return {"qkv": self.qkv, "o": self.o, "gate_up": self.gate_up, "down": self.down}


class Execution(Protocol):
    """How a forward pass computes its products and its attention: ``ExactLlama`` itself (the definitions), or a
    ``runner.Runner`` (faster ways to the same integers)."""

    def product(self, lin: Linear, operand: Tensor) -> Tensor: ...

    def attention(self, i: int, qkv: Tensor, cache: KVCache | None, pos: int, out: Tensor) -> None: ...


class ExactLlama:
    """The integer model: quantised weights, the tables, and a chosen exact product backend. Nothing here changes
    after it is built, so threads may share it."""

    def __init__(self, cfg: LlamaConfig, layers: list[Layer], embed: Linear, head: Linear):
        self.cfg, self.layers, self.embed, self.head = cfg, layers, embed, head
        self.device = head.scale.device
        self.ops = ops_for(self.device)
        self.sigmoid = sigmoid_table(SIGMOID_FRAC, SIGMOID_SPAN).to(self.device)
        logit_constant = torch.tensor(2.0**LOGIT_FRAC / LN2, dtype=torch.float32)
        self.logit_scale = logit_constant.expand(1, 1).to(self.device)  # a row factor, for product_result
        self.key_constant = torch.tensor(2.0**SCORE_FRAC / LN2 / math.sqrt(cfg.head_dim), dtype=torch.float32)
        self._rope_tables: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))
        self._rope_lock = threading.Lock()
        self.gemm = gemm_.choose(self.device, self.shapes())
        self.tiles = AMX and self.device.type == "cpu"  # AMX's tiles: packed weights at any rows, and attention
        if self.tiles:
            for lin in self.linears():
                lin.keep_packed_only()

    @classmethod
    def from_float(
        cls, cfg: LlamaConfig, state: Mapping[str, Tensor], device: str | torch.device = "cpu"
    ) -> ExactLlama:
        """Quantise Hugging Face-named float weights (deterministic: single binary32 operations)."""
        device = torch.device(device)

        def f32(name: str) -> Tensor:
            return state[name].to(device=device, dtype=torch.float32)

        unsupported = [n for n in state if n.endswith(".bias") and (".self_attn." not in n or "o_proj" in n)]
        if unsupported:
            raise ValueError(f"biases lmpress does not run ({', '.join(unsupported[:3])})")
        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([f32(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            biased = [p + f"self_attn.{n}_proj.bias" for n in "qkv"]
            bias = torch.cat([f32(n) for n in biased]) if all(n in state for n in biased) else None
            if bias is None and any(n in state for n in biased):
                raise ValueError(f"layer {i}: a bias on some of the query, key and value products but not all")
            gate_up = torch.cat([f32(p + "mlp.gate_proj.weight"), f32(p + "mlp.up_proj.weight")])
            qkv_linear = Linear.quantize(qkv, f32(p + "input_layernorm.weight"))
            qkv_linear.bias = bias
            norms = [p + f"self_attn.{n}_norm.weight" for n in "qk"]
            if any(n in state for n in norms) and not all(n in state for n in norms):
                raise ValueError(f"layer {i}: a norm on the query heads or the key heads but not both")
            q_norm, k_norm = (f32(n) for n in norms) if norms[0] in state else (None, None)
            layers.append(
                Layer(
                    q_norm=q_norm,
                    k_norm=k_norm,
                    qkv=qkv_linear,
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
        return [(lin.shape[1], lin.shape[0]) for lin in (*self.layers[0].linears().values(), self.head)] + [
            (c.head_dim, 2048),
            (2048, c.head_dim),
        ]

    def tensors(self) -> dict[str, Tensor]:
        """Everything the arithmetic depends on, by name (what ``digest`` hashes)."""
        out = {"embed.wq": self.embed.plain(), "embed.scale": self.embed.scale}
        out |= {"head.wq": self.head.plain(), "head.scale": self.head.scale}
        for i, layer in enumerate(self.layers):
            for name, lin in layer.linears().items():
                out[f"layers.{i}.{name}.wq"], out[f"layers.{i}.{name}.scale"] = lin.plain(), lin.scale
                if lin.bias is not None:
                    out[f"layers.{i}.{name}.bias"] = lin.bias
            if (norms := layer.head_norms) is not None:
                out[f"layers.{i}.q_norm"], out[f"layers.{i}.k_norm"] = norms
        return out

    def digest(self) -> str:
        """sha256 of the engine name, the configuration and every quantised tensor: equal digests compute equal
        bits, so archives name their model by it."""
        h = hashlib.sha256(f"{ENGINE}|{self.cfg.identity()}\n".encode())
        for name, t in sorted(self.tensors().items()):
            shape = ", ".join(map(str, t.shape)) + ("," if t.dim() == 1 else "")
            h.update(f"{name}|{_DTYPE_NAMES[t.dtype]}|({shape})\n".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(self.cfg, batch, length, self.device)

    def linears(self) -> list[Linear]:
        """Every weight matrix that is multiplied (the embedding is only looked up)."""
        return [self.head, *(lin for layer in self.layers for lin in layer.linears().values())]

    # --- forward ---

    def forward(
        self, tokens: Tensor, cache: KVCache | None = None, pos: int = 0, run: Execution | None = None
    ) -> Tensor:
        """binary32 hidden states [B, T, hidden] after the last layer (before the final norm) for ``tokens``
        [B, T] at positions pos .. pos+T−1, each attending causally to itself, earlier tokens of its row and
        (with a cache) the cached positions before ``pos``, into which it writes its keys and values. ``run``
        computes the products and the attention (this model itself if None)."""
        c, ops, run = self.cfg, self.ops, run or self
        b, t = tokens.shape
        heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        x = self.embed_tokens(tokens.reshape(-1))
        qkv = torch.empty(b * t, (heads + 2 * kv) * hd, device=self.device)
        y = torch.empty(b * t, heads * hd, device=self.device)
        blocks = _blocks(b * t)
        operands = [ops.product_operand(x[rows], BITS["qkv"], c.rms_norm_eps) for rows in blocks]  # each block's next
        for i, layer in enumerate(self.layers):
            for rows, (operand, factor) in zip(blocks, operands):
                acc = run.product(layer.qkv, operand)
                qkv[rows] = ops.product_result(acc, BITS["qkv"], layer.qkv.scale, factor.view(-1, 1))
                if layer.qkv.bias is not None:
                    qkv[rows] += layer.qkv.bias  # one binary32 addition an element
                if (norms := layer.head_norms) is not None:
                    qk = qkv[rows, : (heads + kv) * hd].view(-1, heads + kv, hd)
                    qk[:, :heads] = head_norm(qk[:, :heads], norms[0], c.rms_norm_eps)
                    qk[:, heads:] = head_norm(qk[:, heads:], norms[1], c.rms_norm_eps)
            run.attention(i, qkv, cache, pos, y.view(b, t, heads, hd))
            for j, rows in enumerate(blocks):
                operand, factor = ops.product_operand(y[rows], BITS["o"])
                x[rows], next_operand, next_factor = self.rest_of_layer(layer, x[rows], operand, factor.view(-1), run)
                operands[j] = (next_operand, next_factor)
        return x.view(b, t, -1)

    def rest_of_layer(
        self, layer: Layer, x: Tensor, operand: Tensor, factor: Tensor, run: Execution | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A layer after its attention, for rows of hidden states x: from the output product's operand (row
        factors [M]) to the new hidden states and the next layer's query, key and value operand (and factors)."""
        eps, ops, run = self.cfg.rms_norm_eps, self.ops, run or self
        acc = run.product(layer.o, operand)
        h, operand, factor = ops.residual_operand(x, acc, BITS["o"], layer.o.scale, factor, BITS["gate_up"], eps)
        acc = run.product(layer.gate_up, operand)
        args = (BITS["gate_up"], layer.gate_up.scale, factor, self.sigmoid, BITS["down"])
        operand, factor = ops.swiglu_operand(acc, *args)
        acc = run.product(layer.down, operand)
        return ops.residual_operand(h, acc, BITS["down"], layer.down.scale, factor, BITS["qkv"], eps)

    def rope(self, length: int) -> tuple[Tensor, Tensor]:
        """The rotary tables cos, sin [n, hd] for at least ``length`` positions."""
        n = max(ROPE_LENGTH, 1 << (length - 1).bit_length())
        with self._rope_lock:
            if self._rope_tables[0].shape[0] < n:
                cos, sin = rope_tables(n, self.cfg.head_dim, self.cfg.rope_theta)
                self._rope_tables = (cos.to(self.device), sin.to(self.device))
            return self._rope_tables

    def embed_tokens(self, flat: Tensor) -> Tensor:
        wq = self.embed.plain()
        return wq[flat].float() * self.embed.scale[flat, None]

    def product(self, lin: Linear, operand: Tensor) -> Tensor:
        """``Execution.product``: the backend's."""
        return lin.product(self.gemm, operand)

    def attention(self, i: int, qkv: Tensor, cache: KVCache | None, pos: int, out: Tensor) -> None:
        """Causal attention into ``out`` [B, T, H, hd] of the rows' queries on their keys and values (and the cache's),
        from the query, key and value product's result ``qkv`` [B·T, (H + 2G)·hd] (rotated here).

        Keys and values are int8 per (token, head); queries too, grouped with the heads that share their
        key ([B, G, rep, T, hd]), and processed in tiles of queries that see keys up to their own position."""
        b, t, heads, hd = out.shape
        g = self.cfg.num_key_value_heads
        rep = heads // g
        cos, sin = self.rope(pos + t)
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
            queries, q_factor = qq[:, :, :, t0:t1].reshape(b, g, rows, hd), qd[:, :, :, t0:t1].reshape(b, g, rows)
            pv, wd, total = self.attend(queries, q_factor, kq, key_factor, vq, vd, visible, s)
            factor = (wd.double() / total.double()).float()
            y = pv.float() * factor[..., None]
            out[:, t0:t1] = y.view(b, g, rep, t1 - t0, hd).permute(0, 3, 1, 2, 4).reshape(b, t1 - t0, heads, hd)

    def attend(self, qq, q_factor, keys, key_factor, values, v_scale, visible, s) -> tuple[Tensor, Tensor, Tensor]:
        """int8 queries [..., R, hd] on the first ``s`` positions of int8 keys stored transposed [..., hd, W] and
        values [..., W, hd], with the keys' and values' factors [..., W]: the exact int32 sum of requantised
        weights times values [..., R, hd], the weights' factor and their unscaled sum [..., R]."""
        dots = self.gemm.bmm(qq, keys[..., :s])
        wq, wd, total = self.ops.attention_weights(dots, key_factor[..., :s], q_factor, visible, v_scale[..., :s])
        return self.gemm.bmm(wq, values[..., :s, :]), wd, total

    def logits(self, hidden: Tensor, run: Execution | None = None) -> Tensor:
        """Fixed-point logits in 1/256 bits, int32 [N, vocab], of hidden states [N, hidden] (final norm and
        output head): round(clamp(((a · scale) · (2**8·log2 e)) · r, ±LIMIT)), a the product as in
        ``product_result``."""
        operand, r = self.ops.product_operand(hidden, BITS["head"], self.cfg.rms_norm_eps)
        acc = (run or self).product(self.head, operand)
        return self.ops.fixed_logits(acc, BITS["head"], self.head.scale, self.logit_scale, r)


def _blocks(n: int, size: int = ROW_BLOCK) -> list[slice]:
    return [slice(a, min(n, a + size)) for a in range(0, n, size)]
