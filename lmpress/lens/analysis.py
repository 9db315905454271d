"""Compression as a lens: how many bits each token of a document costs under a model.

Documents are scored by the compressor's own full-sequence passes (``codec.scoring.score_rows``): same chunks,
same context windows, same integer frequencies, so a document's total here is exactly the ideal code
length of its archive's model-coded part.
"""

from __future__ import annotations

import dataclasses
import lzma
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..codec import mixing
from ..codec.chunking import chunks_of
from ..codec.scoring import score_rows
from ..codec.settings import Settings
from ..exact.arithmetic import PRECISION_BITS, TOTAL
from ..exact.ops import frequencies
from ..models import LanguageModel


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

    @property
    def total_bits(self) -> float:
        return float(sum(self.bits))

    @property
    def bits_per_byte(self) -> float:
        return self.total_bits / self.n_bytes if self.n_bytes else math.nan


def score_document(
    lm: LanguageModel,
    data: bytes,
    settings: Settings | None = None,
    detail: int = 0,
    progress: Callable[[int], None] | None = None,
) -> TokenScores:
    """Score every text chunk of ``data`` the way the compressor would cut it; ``detail`` top alternatives."""
    settings = settings or Settings()
    out = TokenScores()
    rows: list[list[int]] = []
    for chunk in chunks_of(data, settings):
        ids = lm.tokenize(chunk)
        if ids is None:
            out.skipped_bytes += len(chunk)
        else:
            out.n_bytes += len(chunk)
            rows.append(ids)
    # With the match model mixed in (as the compressor codes), bits come from the mixed intervals, the rest from
    # the LM alone; the rows are mixed as one segment (the compressor restarts the match model every segment).
    plan = mixing.Plan(rows, settings.batch) if settings.mix else None
    left = [np.zeros(len(ids), np.int64) for ids in rows]
    width = [np.zeros(len(ids), np.int64) for ids in rows]
    z = [np.zeros(len(ids)) for ids in rows]
    rank = [np.zeros(len(ids), np.int64) for ids in rows]
    top: list[list] = [[None] * len(ids) for ids in rows]

    def visit(row: int, first: int, logits: Tensor, tokens: Tensor) -> None:
        n = len(tokens)
        freqs = frequencies(logits)
        chosen = freqs.gather(1, tokens.view(-1, 1).to(freqs.device))
        logp = torch.log(freqs.double() / TOTAL)
        p = freqs.double() / TOTAL
        mu = (p * logp).sum(-1)
        sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
        at = slice(first, first + n)
        width[row][at] = chosen[:, 0].cpu().numpy()
        if plan is not None:
            below = freqs.cumsum(-1).gather(1, tokens.view(-1, 1).to(freqs.device)) - chosen
            left[row][at] = below[:, 0].cpu().numpy()
            guesses = torch.from_numpy(plan.guesses(row, at)).view(-1, 1).to(freqs.device)
            plan.f_predicted[row][at] = freqs.gather(1, guesses)[:, 0].cpu().numpy()
        z[row][first : first + n] = ((torch.log(chosen[:, 0].double() / TOTAL) - mu) / sigma).cpu().numpy()
        rank[row][first : first + n] = ((freqs > chosen).sum(-1) + 1).cpu().numpy()
        if detail:
            values, indices = freqs.topk(detail, dim=-1)
            for i, (vs, js) in enumerate(zip((values.double() / TOTAL).tolist(), indices.tolist())):
                top[row][first + i] = [(lm.tokenizer.decode([j]), v) for j, v in zip(js, vs)]

    score_rows(lm, rows, settings, visit, progress)
    if plan is not None:
        _, width = plan.mixed(left, width, lm.net.cfg.vocab_size)
    for row, ids in enumerate(rows):
        out.bits.extend((PRECISION_BITS - np.log2(width[row])).tolist())
        out.z.extend(z[row].tolist())
        out.rank.extend(rank[row].tolist())
        if detail:
            out.top.extend(top[row])
        out.text.extend(_token_texts(lm, ids))
    return out


def _token_texts(lm: LanguageModel, ids: list[int]) -> list[str]:
    """Each token's text; a token that ends inside a UTF-8 character leaves it to the token completing it."""
    texts, pending = [], []
    for i in ids:
        pending.append(i)
        decoded = lm.tokenizer.decode(pending, skip_special_tokens=False)
        texts.append("" if decoded.endswith("\ufffd") else decoded)
        if texts[-1]:
            pending = []
    if pending:
        texts[-1] = lm.tokenizer.decode(pending, skip_special_tokens=False)
    return texts


LOCAL_WINDOW = 128  # context of the audit's local scoring: enough for syntax, too little to copy the document


@dataclass
class Audit:
    """The novelty audit of one document: model bits beside classical bits, and membership evidence."""

    name: str
    n_bytes: int
    model_bpb: float  # with the compressor's long context
    local_bpb: float  # with a short context that cannot reach back into the document
    zlib_bpb: float
    xz_bpb: float
    min_k_pp: float  # mean of the lowest 20% token z-scores; higher = more like training data
    memorised_tokens: int  # tokens inside near-perfectly predicted spans (short context)
    spans: list[str]  # the longest such spans (text), longest first

    @property
    def ratio(self) -> float:
        """Short-context model bits over the best classical bits: low = the model knows this text, ~1 = nobody does."""
        return self.local_bpb / min(self.zlib_bpb, self.xz_bpb)


def local_settings(settings: Settings, window: int = LOCAL_WINDOW) -> Settings:
    """The audit's short context: windows of ``window`` positions that restart from their last half, and no
    match model (which would credit the document's own repetition to the model)."""
    return dataclasses.replace(settings, window=window, keep=window // 2, mix=False)


def min_k_percent_pp(z: list[float], k: float = 0.2) -> float:
    """Min-K%++ (Zhang et al. 2024): mean of the lowest k fraction of per-token z-scores."""
    if not z:
        return math.nan
    lowest = np.sort(np.asarray(z))[: max(1, int(len(z) * k))]
    return float(lowest.mean())


def memorised_spans(scores: TokenScores, min_tokens: int = 32, max_bits: float = 0.25) -> list[tuple[int, int]]:
    """Maximal runs of at least ``min_tokens`` tokens, each predicted with at least 1/2 probability, averaging
    at most ``max_bits`` bits: text the model reproduces almost verbatim (memorised, or boilerplate)."""
    spans, start = [], None
    bits = scores.bits + [math.inf]
    for i, b in enumerate(bits):
        if b <= 1.0:
            start = i if start is None else start
            continue
        if start is not None and i - start >= min_tokens and np.mean(bits[start:i]) <= max_bits:
            spans.append((start, i))
        start = None
    return spans


def audit_document(name: str, data: bytes, scores: TokenScores, local: TokenScores) -> Audit:
    """``scores`` under the compressor's context policy, ``local`` under ``local_settings``."""
    spans = sorted(memorised_spans(local), key=lambda s: s[0] - s[1])
    return Audit(
        name=name,
        n_bytes=len(data),
        model_bpb=scores.bits_per_byte,
        local_bpb=local.bits_per_byte,
        zlib_bpb=8 * len(zlib.compress(data, 9)) / max(len(data), 1),
        xz_bpb=8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / max(len(data), 1),
        min_k_pp=min_k_percent_pp(scores.z),
        memorised_tokens=sum(b - a for a, b in spans),
        spans=["".join(local.text[a:b]) for a, b in spans[:3]],
    )
