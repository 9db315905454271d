"""Scoring token rows in full-sequence passes: every token's logits exactly as the decoder will compute them.

The model's numbers are exact integers, computed the same for a token whatever else is in the batch, so the
encoder (and the lens) score every chunk in large passes, one per context window, while the decoder steps.

Context policy: a row sees its prefix (the start token, then a dictionary's tokens if there is one) and its
chunk's tokens so far; when ``window`` positions are full, the context restarts as the prefix plus the last
``keep`` tokens.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..exact.arithmetic import PRECISION_BITS, intervals
from ..exact.model import KVCache
from ..exact.ops import frequencies, token_intervals
from ..exact.runner import Runner
from ..models import LanguageModel
from . import mixers
from .settings import Settings

PASS_TOKENS = 4096  # positions per full-sequence pass: bounds activation memory
HEAD_ROWS = 64  # positions per slice of the output head: bounds the [rows, vocab] tensors
PREFIXES = 4  # computed context prefixes remembered per loaded model
_PREFIXES_LOCK = threading.Lock()  # threads sharing a model share its remembered prefixes


def windows(n: int, window: int, keep: int) -> Iterator[tuple[int, int, int]]:
    """(context start, first scored, end) of each context window over n tokens, as the decoder steps them.

    The first window scores ``window`` tokens from the start token alone; each later one restarts from the
    start token plus the ``keep`` tokens before it and scores ``window - keep`` more.
    """
    start, end = 0, min(n, window)
    while start < n:
        yield max(0, start - keep) if start else 0, start, end
        start, end = end, min(n, end + window - keep)


Visit = Callable[[int, int, Tensor, Tensor], None]  # (row, first position, logits [n, V], tokens [n])


@dataclass
class Prefix:
    """The start every context shares (start token, dictionary), computed once: its keys and values for one row,
    the last hidden state and the frequencies it predicts."""

    tokens: tuple[int, ...]
    cache: KVCache
    hidden: Tensor  # [1, 1, hidden]
    freqs: Tensor  # [1, V]

    def copy_into(self, cache: KVCache) -> None:
        """Make positions 0 .. len(tokens) − 1 of every row of ``cache`` this prefix."""
        cache.copy_prefix(self.cache, len(self.tokens))

    def extend(self, run: Runner, tails: Tensor) -> Tensor:
        """Hidden states [B, T + 1, hidden] of rows that continue the prefix with ``tails`` [B, T]: the prefix's
        last one, then those of the tails, computed over the prefix's keys and values."""
        last = self.hidden.expand(len(tails), 1, -1)
        if not tails.shape[1]:
            return last
        net = run.net
        cache = net.new_cache(len(tails), len(self.tokens) + tails.shape[1])
        self.copy_into(cache)
        return torch.cat([last, run.forward(tails.to(net.device), cache, len(self.tokens))], dim=1)


def prefix_state(lm: LanguageModel, prefix: list[int]) -> Prefix:
    """``prefix`` computed by ``lm``, remembered while the model is loaded (the last ``PREFIXES``; ~12 KB a
    position with the default model). Threads sharing the model may ask at once."""
    key = tuple(prefix)
    with _PREFIXES_LOCK:
        known = lm.prefixes.get(key)
    if known is not None:
        return known
    one, run = lm.net.new_cache(1, len(key)), Runner(lm.net)
    with torch.inference_mode():
        hidden = run.forward(torch.tensor([key], device=lm.net.device), one, 0)[:, -1:]
        state = Prefix(key, one, hidden, frequencies(run.logits(hidden[:, 0])))
    with _PREFIXES_LOCK:
        while len(lm.prefixes) >= PREFIXES:
            del lm.prefixes[next(iter(lm.prefixes))]
        lm.prefixes[key] = state
    return state


def score_rows(
    lm: LanguageModel,
    rows: list[list[int]],
    settings: Settings,
    visit: Visit,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Logits of every token of every row, as the decoder will compute them, in full-sequence passes.

    Windows of equal length are batched (up to ``PASS_TOKENS`` positions a pass); ``visit`` receives slices
    of at most ``HEAD_ROWS`` consecutive positions of a row; ``progress`` the number of tokens scored.
    """
    net, prefix, run = lm.net, settings.prefix(lm), Runner(lm.net)
    primed = len(prefix) - 1  # a dictionary's tokens: computed once, then each window's own on top of them
    state = prefix_state(lm, prefix) if primed else None
    by_length: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for row, ids in enumerate(rows):
        for ctx, first, end in windows(len(ids), settings.window - primed, settings.keep):
            by_length[end - ctx].append((row, ctx, first, end))
    for length, spans in sorted(by_length.items()):
        per_pass = max(1, PASS_TOKENS // (length + primed))  # a dictionary's positions are in each row's cache
        for group in (spans[i : i + per_pass] for i in range(0, len(spans), per_pass)):
            tails = torch.tensor([rows[row][ctx : end - 1] for row, ctx, _, end in group], dtype=torch.long)
            with torch.inference_mode():
                if state is None:
                    hidden = run.forward(torch.cat([torch.full((len(tails), 1), prefix[0]), tails], 1).to(net.device))
                else:
                    hidden = state.extend(run, tails)
                for b, (row, ctx, first, end) in enumerate(group):
                    targets = torch.tensor(rows[row][first:end])
                    at = first - ctx  # hidden[at] predicts token `first`
                    for a in range(0, end - first, HEAD_ROWS):
                        z = min(end - first, a + HEAD_ROWS)
                        visit(row, first + a, run.logits(hidden[b, at + a : at + z]), targets[a:z])
                    if progress is not None:
                        progress(end - first)


def code_rows(
    lm: LanguageModel,
    rows: list[list[int]],
    settings: Settings,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Every token of ``rows`` (a segment's LM chunks, in table order) as its interval (left, width) of the
    frequencies the decoder will code it with, and each row's code length in bits. ``progress`` gets
    (row, tokens scored, bits the model alone spent on them)."""
    left = [np.zeros(len(ids), np.int64) for ids in rows]
    width = [np.zeros(len(ids), np.int64) for ids in rows]
    plan = mixers.plan(lm, settings, rows)

    def visit(row: int, first: int, logits: Tensor, tokens: Tensor) -> None:
        at = slice(first, first + len(tokens))
        if plan is None:
            lo, f = token_intervals(logits, tokens)
        else:  # the whole rows, once: the tokens' intervals and the mixer's candidates come from them
            freqs = frequencies(logits)
            lo, f = intervals(freqs, tokens)
            plan.record(row, at, freqs)
        left[row][at], width[row][at] = lo.cpu().numpy(), f.cpu().numpy()
        if progress is not None:
            progress(row, len(tokens), float((PRECISION_BITS - torch.log2(f.double())).sum()))

    score_rows(lm, rows, settings, visit)
    if plan is not None:
        left, width = plan.mixed(left, width, lm.net.cfg.vocab_size)
    bits = np.array([float((PRECISION_BITS - np.log2(w)).sum()) for w in width])
    return left, width, bits
