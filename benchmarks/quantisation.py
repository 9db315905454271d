"""What each activation scheme of the weight products costs in bits, with and without SmoothQuant smoothing:
the design study for an engine with fewer int8 products (16-bit activations cost two products each).

    python benchmarks/quantisation.py                      # default model, ../shared/bench texts

The float model (transformers, as the benchmark's float reference) with simulated quantisation of the linear
layers only: int8 weights per output channel, activations per token at 8 or 16 bits, everything else float.
Smoothing (arXiv 2211.10438) divides input channel j of a product by s_j = max|x_j|^α / max|W_j|^(1−α),
folded into the op before (the norm's gain, or up_proj's rows for down_proj) and multiplied into the weights;
max|x_j| comes from a calibration text. Bits are relative to the float model on each held-out text.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from lmpress.models import load_model

from suite import BENCH
from suite.measuring import FloatReference

TEXTS = ["fresh/uv_CHANGELOG.md", "fresh/claude-code_security-guidance_llm.py", "canterbury/alice29.txt"]
CALIBRATION = ("canterbury/alice29.txt", 20000, 28000)  # bytes a..b: not the evaluated prefix
PRODUCTS = ("qkv", "o", "gate_up", "down", "head")
SCHEMES = {  # bits of each product's activations; the engine int8-v1 is the first
    "int8-v1: 16 bits but o": dict(qkv=16, o=8, gate_up=16, down=16, head=16),
    "8 bits everywhere": dict(qkv=8, o=8, gate_up=8, down=8, head=8),
    "8 bits but down, head": dict(qkv=8, o=8, gate_up=8, down=16, head=16),
    "8 bits but head": dict(qkv=8, o=8, gate_up=8, down=8, head=16),
}
SMOOTHED = [  # (scheme, α, products smoothed)
    ("8 bits but down, head", 0.5, ("qkv", "gate_up")),
    ("8 bits but down, head", 0.75, ("qkv", "gate_up")),
    ("8 bits but head", 0.5, ("qkv", "gate_up", "down")),
    ("8 bits but head", 0.75, ("qkv", "gate_up", "down")),
    ("8 bits everywhere", 0.5, ("qkv", "gate_up", "down")),
]


def product_of(name: str) -> str:
    if name == "lm_head":
        return "head"
    kind = name.rsplit(".", 1)[-1].removesuffix("_proj")
    return {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}.get(kind, kind)


def quantized(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of x rounded to ``bits``-bit integers times one scale per row."""
    top = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / top
    return torch.round(x / scale).clamp(-top, top) * scale


def code_length(model, lm, data: bytes, tokens: int) -> float:
    ids = lm.tokenize(data)[:tokens]
    with torch.inference_mode():
        logits = model(torch.tensor([[lm.start_token, *ids[:-1]]])).logits[0]
        logp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids)[:, None])
    return -float(logp.sum()) / math.log(2)


def input_ranges(model, lm, data: bytes, tokens: int) -> dict[str, torch.Tensor]:
    """max |x_j| of every linear layer's input channels on ``data``."""
    ranges: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        seen = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
        ranges[name] = torch.maximum(ranges[name], seen) if name in ranges else seen

    hooks = [
        m.register_forward_pre_hook(lambda _, inp, name=name: record(name, inp[0]))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    code_length(model, lm, data, tokens)
    for hook in hooks:
        hook.remove()
    return ranges


def smooth(model, ranges: dict[str, torch.Tensor], alpha: float, products: tuple[str, ...]) -> None:
    def factors(x_max: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        w_max = torch.cat(weights).abs().amax(0)
        return (x_max.clamp_min(1e-5) ** alpha / w_max.clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)

    for i, layer in enumerate(model.model.layers):
        at, attn, mlp = f"model.layers.{i}.", layer.self_attn, layer.mlp
        groups = {
            "qkv": (layer.input_layernorm, "self_attn.q_proj", [attn.q_proj, attn.k_proj, attn.v_proj]),
            "gate_up": (layer.post_attention_layernorm, "mlp.gate_proj", [mlp.gate_proj, mlp.up_proj]),
        }
        for product in products:
            if product == "down":
                s = factors(ranges[at + "mlp.down_proj"], [mlp.down_proj.weight])
                mlp.up_proj.weight.data /= s[:, None]
                mlp.down_proj.weight.data *= s
            else:
                norm, first, linears = groups[product]
                s = factors(ranges[at + first], [lin.weight for lin in linears])
                norm.weight.data /= s
                for lin in linears:
                    lin.weight.data *= s


def quantize(model, bits: dict[str, int]) -> None:
    """int8 weights per output channel (the output head untied from the embedding); activations per token."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.weight = torch.nn.Parameter(quantized(m.weight.detach().clone(), 8))
            width = bits[product_of(name)]
            m.register_forward_pre_hook(lambda _, inp, width=width: (quantized(inp[0], width),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=BENCH, help="the corpora (default ../shared/bench)")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens of each text, one context each")
    args = parser.parse_args()
    lm = load_model()
    reference = FloatReference(lm)
    texts = [(args.bench / t).read_bytes()[:16384] for t in TEXTS]
    name, a, b = CALIBRATION
    calibration = (args.bench / name).read_bytes()[a:b]
    base = reference.model()
    floats = [code_length(base, lm, t, args.tokens) for t in texts]
    ranges = input_ranges(base, lm, calibration, args.tokens)
    print(f"| scheme | {' | '.join(Path(t).name for t in TEXTS)} | all |")
    print("|---|" + "---:|" * (len(TEXTS) + 1))
    for scheme, alpha, products in [*((s, None, ()) for s in SCHEMES), *SMOOTHED]:
        model = reference.model()
        if alpha is not None:
            smooth(model, ranges, alpha, products)
        quantize(model, SCHEMES[scheme])
        bits = [code_length(model, lm, t, args.tokens) for t in texts]
        label = scheme + (f", smoothed {'/'.join(products)} α={alpha}" if alpha is not None else "")
        cells = [f"{100 * (x / f - 1):+.2f} %" for x, f in zip(bits, floats)]
        print(f"| {label} | {' | '.join(cells)} | {100 * (sum(bits) / sum(floats) - 1):+.2f} % |", flush=True)


if __name__ == "__main__":
    main()
