"""What the lens says of each token of a document, whichever engine computed it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..codec.chunking import chunks_of
from ..codec.settings import Settings


@dataclass
class TokenScores:
    """Per-token results for one document, in document order."""

    text: list[str] = field(default_factory=list)  # each token's text (a chunk's tokens concatenate to it)
    bits: list[float] = field(default_factory=list)  # −log2 p(token)
    z: list[float] = field(default_factory=list)  # Min-K%++ score: (log p − E[log p]) / std[log p]
    rank: list[int] = field(default_factory=list)  # 1 = the model's top choice
    top: list[list[tuple[str, float]]] = field(default_factory=list)  # alternatives with probabilities
    n_bytes: int = 0  # UTF-8 bytes covered by the scored tokens
    skipped_bytes: int = 0  # bytes of chunks that are not text (not scored)
    engine: str = ""  # what computed the bits: the exact engine's name ("int8-v1"), or "float32" / "bfloat16"

    @property
    def total_bits(self) -> float:
        return float(sum(self.bits))

    @property
    def bits_per_byte(self) -> float:
        return self.total_bits / self.n_bytes if self.n_bytes else math.nan


def text_rows(
    tokenize: Callable[[bytes], list[int] | None], data: bytes, settings: Settings, engine: str
) -> tuple[TokenScores, list[list[int]]]:
    """The token ids of each text chunk of ``data``, cut as the compressor cuts it, and the scores to fill
    (``engine``'s, with the bytes scored and the bytes of chunks that are not text, skipped)."""
    out = TokenScores(engine=engine)
    rows: list[list[int]] = []
    for chunk in chunks_of(data, settings):
        ids = tokenize(chunk)
        if ids is None:
            out.skipped_bytes += len(chunk)
        else:
            out.n_bytes += len(chunk)
            rows.append(ids)
    return out, rows


def z_and_rank(logp: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Each position's Min-K%++ z-score and the rank of its token (1: the most likely), from the natural-log
    probabilities ``logp`` [n, V] (binary64) of the positions and their tokens [n]."""
    chosen = logp.gather(1, tokens.view(-1, 1).to(logp.device))[:, 0]
    p = logp.exp()
    mu = (p * torch.nan_to_num(logp, neginf=0.0)).sum(-1)
    second = (p * torch.nan_to_num(logp, neginf=0.0).square()).sum(-1)
    sigma = (second - mu.square()).clamp_min(1e-12).sqrt()
    rank = (logp > chosen[:, None]).sum(-1) + 1
    return (chosen - mu) / sigma, rank


def token_texts(decode, ids: list[int]) -> list[str]:
    """Each token's text (``decode``: a tokenizer's ``decode``); a token that ends inside a UTF-8 character leaves
    it to the token completing it."""
    texts: list[str] = []
    pending: list[int] = []
    for i in ids:
        pending.append(i)
        decoded = decode(pending, skip_special_tokens=False)
        texts.append("" if decoded.endswith("\ufffd") else decoded)
        if texts[-1]:
            pending = []
    if pending:
        texts[-1] = decode(pending, skip_special_tokens=False)
    return texts
