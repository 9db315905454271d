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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import api
from ..api import DictionarySpec
from ..codec import mixers
from ..codec.scoring import score_rows
from ..codec.settings import Settings
from ..errors import LmpressError, UnsupportedArchitectureError
from ..exact import ENGINE
from ..exact.arithmetic import PRECISION_BITS, TOTAL
from ..exact.ops import frequencies
from ..models import LanguageModel, load_model
from . import float_engine
from .float_engine import FloatModel
from .scores import TokenScores, text_rows, token_texts, z_and_rank

ENGINES = ("auto", "exact", *float_engine.DTYPES)  # what --engine takes


def load_lens_model(
    spec: str | None = None, engine: str = "auto", device: str | None = None
) -> LanguageModel | FloatModel:
    """The model the lens scores with: on the exact engine (``exact``, the figures of archives), a float engine
    (``float32``, ``bfloat16``: any causal LM ``transformers`` loads), or ``auto``: the exact engine where it runs
    the model's architecture, else float32."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine in float_engine.DTYPES:
        return float_engine.load_float_model(spec, engine, device)
    try:
        return load_model(spec, device)
    except UnsupportedArchitectureError:
        if engine == "exact":
            raise
        return float_engine.load_float_model(spec, "float32", device)


def scoring_setup(
    model: LanguageModel | FloatModel, dictionary: DictionarySpec = None, **settings: Any
) -> tuple[LanguageModel | FloatModel, Settings]:
    """The model and settings that score documents: on the exact engine as ``compress`` codes them
    (``api.scoring_setup``, a dictionary's included); on the float engine the same chunks and windows."""
    if isinstance(model, FloatModel):
        if dictionary is not None:
            raise LmpressError(f"{model.name} runs on the float engine; dictionaries are for the exact engine's models")
        return model, Settings.at_level(**settings)
    return api.scoring_setup(model, dictionary, **settings)


def score_document(
    lm: LanguageModel | FloatModel,
    data: bytes,
    settings: Settings | None = None,
    detail: int = 0,
    progress: Callable[[int], None] | None = None,
    rolling: bool = False,
) -> TokenScores:
    """Score every text chunk of ``data`` the way the compressor would cut it; ``detail`` top alternatives. On the
    exact engine the bits are the archive's ideal code length (with the online models where ``settings`` mix them);
    a ``FloatModel`` scores with the float engine (``float_engine``), in ``rolling`` windows if asked."""
    if isinstance(lm, FloatModel):
        return float_engine.score_document(lm, data, settings, detail, progress, rolling)
    if rolling:
        raise LmpressError(
            f"{lm.name} runs on the exact engine, which scores as it codes; rolling windows are the float engine's "
            f"(--engine float32)"
        )
    settings = settings or Settings()
    out, rows = text_rows(lm.tokenize, data, settings, ENGINE)
    # With online models mixed in (as the compressor codes), bits come from the mixed intervals, the rest from
    # the LM alone; the rows are mixed as one segment (the compressor restarts the online models every segment).
    plan = mixers.plan(lm, settings, rows)
    left = [np.zeros(len(ids), np.int64) for ids in rows]
    width = [np.zeros(len(ids), np.int64) for ids in rows]
    z = [np.zeros(len(ids)) for ids in rows]
    rank = [np.zeros(len(ids), np.int64) for ids in rows]
    top: list[list] = [[None] * len(ids) for ids in rows]

    def visit(row: int, first: int, logits: Tensor, tokens: Tensor) -> None:
        n = len(tokens)
        freqs = frequencies(logits)
        chosen = freqs.gather(1, tokens.view(-1, 1).to(freqs.device))
        zs, ranks = z_and_rank(torch.log(freqs.double() / TOTAL), tokens)
        at = slice(first, first + n)
        width[row][at] = chosen[:, 0].cpu().numpy()
        if plan is not None:
            below = freqs.cumsum(-1).gather(1, tokens.view(-1, 1).to(freqs.device)) - chosen
            left[row][at] = below[:, 0].cpu().numpy()
            plan.record(row, at, freqs)
        z[row][at], rank[row][at] = zs.cpu().numpy(), ranks.cpu().numpy()
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
        out.text.extend(token_texts(lm.tokenizer.decode, ids))
    return out


BOOTSTRAP_RESAMPLES = 2000  # resamples of a group's documents behind its interval


def bootstrap_interval(
    bits: list[float], n_bytes: list[int], level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` percentile bootstrap interval of a group's bits per byte (its bits over its bytes), resampling
    its documents with replacement: how far the figure could move with other documents of the same kind. Seeded,
    so the same documents always give the same interval."""
    b, n = np.asarray(bits, dtype=np.float64), np.asarray(n_bytes, dtype=np.float64)
    if len(b) < 2:
        value = float(b.sum() / n.sum()) if n.sum() else math.nan
        return value, value
    return percentile_interval(np.stack([b, n], 1), lambda sums: sums[:, 0] / np.maximum(sums[:, 1], 1), level, seed)


def percentile_interval(
    rows: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` percentile bootstrap interval of ``statistic`` of the column sums of ``rows`` [n, k] (one row
    a document or window), resampling the rows with replacement ``BOOTSTRAP_RESAMPLES`` times, seeded.
    ``statistic`` maps the resampled sums [resamples, k] to one figure each."""
    picks = np.random.default_rng(seed).integers(0, len(rows), (BOOTSTRAP_RESAMPLES, len(rows)))
    values = statistic(rows[picks].sum(1).astype(np.float64))
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


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
    online models (which would credit the document's own repetition to the model)."""
    return dataclasses.replace(settings, window=window, keep=window // 2, mixer="")


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
