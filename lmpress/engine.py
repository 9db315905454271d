"""Cutting data into chunks, and coding chunks of text with the integer model.

A segment (up to ``chunk_size * max(64, max_batch)`` bytes) is cut into chunks at line breaks. Chunks of text
(valid UTF-8, at most 10% control characters) whose tokenization round-trips exactly are coded with the
language model; other chunks go to LZMA2, or are stored when that does not help.

The model's numbers are exact integers, computed the same for a token whatever else is in the batch,
so the two directions can run as each runs best:

- the encoder scores every chunk in full-sequence passes (one per context window, large products) and
  keeps each token's interval of the cumulative frequencies;
- the decoder steps the chunks of a segment in lockstep, ``max_batch`` at a time (a group), one token per
  row per step, and decodes each token from the range-coded stream as soon as its row's frequencies are known.

The stream holds the LM chunks in groups of ``max_batch`` consecutive chunks, one group after another, each
group's tokens step by step: at step t, every chunk of the group with more than t tokens, in table order. The
decoder so holds at most ``max_batch`` contexts, whatever the segment's size.

Context policy: a row sees its prefix (the start token, then a dictionary's tokens if there is one) and its
chunk's tokens so far; when ``window`` positions are full, the context restarts as the prefix plus the last
``keep`` tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import lzma
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import format as fmt
from . import mixing
from .coding import (
    PRECISION_BITS,
    TokenDecoder,
    TokenEncoder,
    code_length_bits,
    frequencies,
    max_tokens,
    token_intervals,
)
from .errors import ChecksumError, FormatError
from .llama import KVCache
from .models import LanguageModel

# Raw LZMA2 (no container) at xz's strongest preset; FORMAT.md names these exact filters.
LZMA2_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_LINE_SEARCH = 512  # bytes to look ahead for a line break when cutting
PASS_TOKENS = 4096  # positions per full-sequence pass: bounds activation memory
RESTART_TOKENS = 2048  # positions per pass of the decoder's restarts: their memory comes on top of the cache's
SEGMENT_CHUNKS = 64  # chunks per segment (or max_batch, if more): a segment's classical chunks share LZMA2's context
HEAD_ROWS = 64  # positions per slice of the output head: bounds the [rows, vocab] tensors
PREFIXES = 4  # computed context prefixes remembered per loaded model

Progress = Callable[[float, float], None]  # (bytes done, bits spent) since the last call


@dataclass(frozen=True)
class Level:
    """A point on the ratio/speed curve: what ``-1`` … ``-9`` set (``benchmarks/levels.py`` measures them).
    ``window`` × ``max_batch`` positions of cache bound the decoder's memory alike at every level."""

    chunk_size: int
    window: int
    keep: int
    max_batch: int
    mix: bool


LEVELS = {
    1: Level(4096, 1024, 256, 48, False),
    2: Level(8192, 1024, 256, 48, False),
    3: Level(8192, 2048, 512, 24, False),  # lmpress 0.2's only setting
    4: Level(8192, 2048, 512, 24, True),
    5: Level(16384, 2048, 512, 24, True),
    6: Level(32768, 2048, 512, 24, True),
    7: Level(65536, 2048, 512, 24, True),
    8: Level(65536, 2048, 1024, 24, True),
    9: Level(131072, 2048, 1024, 24, True),
}
DEFAULT_LEVEL = 4  # the strongest level that decodes (nearly) as fast as level 3 on inputs of any size
_DEFAULT = LEVELS[DEFAULT_LEVEL]


@dataclass(frozen=True)
class Settings:
    """How to cut and code. ``window``, ``keep``, ``max_batch``, ``mix`` and ``start_token`` are recorded in the
    archive, and so is the dictionary whose tokens ``primer`` holds. The defaults are level ``DEFAULT_LEVEL``'s."""

    window: int = _DEFAULT.window
    keep: int = _DEFAULT.keep
    chunk_size: int = _DEFAULT.chunk_size
    max_batch: int = _DEFAULT.max_batch  # chunks decoded side by side: the decoder's contexts (~25 MB each at 2048)
    threads: int = 0  # compute threads, for speed only (0: torch's default for this machine)
    start_token: int | None = None  # None: the model's own choice
    primer: tuple[int, ...] = ()  # a dictionary's tokens: every context starts with them, after the start token
    mix: bool = _DEFAULT.mix  # mix the LM with the match model of ``mixing``

    @classmethod
    def at_level(cls, level: int | None = None, **settings: Any) -> Settings:
        """Level ``level``'s settings (the default level's if None), with ``settings`` overriding them."""
        if level is not None and level not in LEVELS:
            raise ValueError(f"level must be 1 to 9, not {level}")
        chosen = LEVELS[DEFAULT_LEVEL if level is None else level]
        return cls(**(dataclasses.asdict(chosen) | settings))

    def __post_init__(self) -> None:
        room = self.window - len(self.primer)
        if self.window < 2 or not 0 <= self.keep <= room - 2:
            dictionary = f" - {len(self.primer)} dictionary tokens" if self.primer else ""
            raise ValueError(
                f"need window >= 2 and 0 <= keep <= window{dictionary} - 2 (window={self.window}, keep={self.keep})"
            )
        if self.window > fmt.MAX_WINDOW:
            raise ValueError(f"window must be at most {fmt.MAX_WINDOW}")
        if self.chunk_size < 1 or not 1 <= self.max_batch <= fmt.MAX_CHUNKS or self.threads < 0:
            raise ValueError("chunk_size and max_batch must be positive, threads non-negative")

    @property
    def chunks_per_segment(self) -> int:
        return max(SEGMENT_CHUNKS, self.max_batch)

    @property
    def segment_size(self) -> int:
        return self.chunk_size * self.chunks_per_segment

    def start(self, lm: LanguageModel) -> int:
        return lm.start_token if self.start_token is None else self.start_token

    def prefix(self, lm: LanguageModel) -> list[int]:
        """What every context starts with: the start token and the dictionary's tokens."""
        return [self.start(lm), *self.primer]


@dataclass
class Stats:
    """What coding cost, for reports and benchmarks."""

    bytes_in: int = 0
    bytes_out: int = 0
    tokens: int = 0
    ideal_bits: float = 0.0  # sum of −log2 p over LM-coded tokens
    lm_bytes_in: int = 0
    lm_bytes_out: int = 0
    chunks: dict[str, int] = field(default_factory=dict)
    lm_spans: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in the input of each LM chunk

    def add(self, other: Stats) -> None:
        offset = self.bytes_in
        for name in ("bytes_in", "bytes_out", "tokens", "ideal_bits", "lm_bytes_in", "lm_bytes_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.chunks.items():
            self.chunks[k] = self.chunks.get(k, 0) + v
        self.lm_spans.extend((offset + a, offset + b) for a, b in other.lm_spans)

    @property
    def overhead(self) -> float:
        """Actual LM payload size over the ideal code length, minus one."""
        return self.lm_bytes_out * 8 / self.ideal_bits - 1 if self.ideal_bits else 0.0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Compute with ``n`` threads (0: as before), in torch and in the compiled kernels."""
    numba = sys.modules.get("numba")
    before = torch.get_num_threads(), numba.get_num_threads() if numba else 0
    torch.set_num_threads(n or before[0])
    if numba:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS) if n else before[1])
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if numba:
            numba.set_num_threads(before[1])


# --- Cutting ------------------------------------------------------------------------------------------


def boundary(data: bytes | bytearray, target: int) -> int:
    """A cut near ``target``: just after the next line break if one is close, else at a character start."""
    nl = data.find(b"\n", target, target + _LINE_SEARCH)
    cut = nl + 1 if nl >= 0 else target
    while cut < len(data) and data[cut] & 0xC0 == 0x80:  # never split a UTF-8 sequence
        cut += 1
    return min(cut, len(data))


def looks_like_text(data: bytes) -> bool:
    """Few control characters: NUL-padded records or binary that happens to be valid UTF-8 is not worth the model."""
    controls = sum(data.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13))
    return controls <= len(data) // 10


def segment_length(buffer: bytes | bytearray, settings: Settings, final: bool) -> int:
    """Bytes of the next segment at the start of ``buffer``; 0 when more input must come first."""
    size = settings.segment_size
    if len(buffer) >= size + 8:
        return boundary(buffer, max(1, size - _LINE_SEARCH))
    return len(buffer) if final else 0


def chunks_of(data: bytes, settings: Settings) -> Iterator[bytes]:
    """The chunks a compressor cuts ``data`` into, in order (before text/binary classification)."""
    while n := segment_length(data, settings, final=True):
        yield from split(data[:n], settings)
        data = data[n:]


def split(data: bytes, settings: Settings) -> list[bytes]:
    n = min(settings.chunks_per_segment, max(1, round(len(data) / settings.chunk_size)))
    cuts = [0]
    for i in range(1, n):
        cut = boundary(data, i * len(data) // n)
        if cuts[-1] < cut < len(data):
            cuts.append(cut)
    cuts.append(len(data))
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


# --- Scoring in full-sequence passes ------------------------------------------------------------------


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

    def extend(self, lm: LanguageModel, tails: Tensor) -> Tensor:
        """Hidden states [B, T + 1, hidden] of rows that continue the prefix with ``tails`` [B, T]: the prefix's
        last one, then those of the tails, computed over the prefix's keys and values."""
        last = self.hidden.expand(len(tails), 1, -1)
        if not tails.shape[1]:
            return last
        cache = lm.net.new_cache(len(tails), len(self.tokens) + tails.shape[1])
        self.copy_into(cache)
        return torch.cat([last, lm.net.forward(tails.to(lm.net.device), cache, len(self.tokens))], dim=1)


def prefix_state(lm: LanguageModel, prefix: list[int]) -> Prefix:
    """``prefix`` computed by ``lm``, remembered while the model is loaded (the last ``PREFIXES``; ~12 KB a
    position with the default model)."""
    key = tuple(prefix)
    if key not in lm.prefixes:
        one = lm.net.new_cache(1, len(key))
        with torch.inference_mode():
            hidden = lm.net.forward(torch.tensor([key], device=lm.net.device), one, 0)[:, -1:]
            freqs = frequencies(lm.net.logits(hidden[:, 0]))
        while len(lm.prefixes) >= PREFIXES:
            del lm.prefixes[next(iter(lm.prefixes))]
        lm.prefixes[key] = Prefix(key, one, hidden, freqs)
    return lm.prefixes[key]


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
    net, prefix = lm.net, settings.prefix(lm)
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
                    hidden = net.forward(torch.cat([torch.full((len(tails), 1), prefix[0]), tails], 1).to(net.device))
                else:
                    hidden = state.extend(lm, tails)
                for b, (row, ctx, first, end) in enumerate(group):
                    targets = torch.tensor(rows[row][first:end])
                    at = first - ctx  # hidden[at] predicts token `first`
                    for a in range(0, end - first, HEAD_ROWS):
                        z = min(end - first, a + HEAD_ROWS)
                        visit(row, first + a, net.logits(hidden[b, at + a : at + z]), targets[a:z])
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
    plan = mixing.Plan(rows, settings.max_batch) if settings.mix else None

    def visit(row: int, first: int, logits: Tensor, tokens: Tensor) -> None:
        at = slice(first, first + len(tokens))
        lo, f = token_intervals(logits, tokens)
        left[row][at], width[row][at] = lo.cpu().numpy(), f.cpu().numpy()
        if plan is not None:
            guesses = torch.from_numpy(plan.guesses(row, at))
            plan.f_predicted[row][at] = token_intervals(logits, guesses)[1].cpu().numpy()
        if progress is not None:
            progress(row, len(tokens), float((PRECISION_BITS - torch.log2(f.double())).sum()))

    score_rows(lm, rows, settings, visit)
    if plan is not None:
        left, width = plan.mixed(left, width, lm.net.cfg.vocab_size)
    bits = np.array([float((PRECISION_BITS - np.log2(w)).sum()) for w in width])
    return left, width, bits


# --- Stepping in lockstep -----------------------------------------------------------------------------


class Lockstep:
    """Rows of token streams advancing one token per step, each row with its own context; a row leaves the
    batch when its last token has been read (rows do not affect each other's numbers)."""

    def __init__(self, lm: LanguageModel, lengths: list[int], settings: Settings):
        self.net = lm.net
        self.window, self.keep = settings.window, settings.keep
        self.lengths = np.asarray(lengths)
        self.rows = np.arange(len(lengths))  # still active, in table order
        self.history = torch.zeros((len(lengths), int(self.lengths.max())), dtype=torch.long)
        self.net.prepare_steps(len(lengths))
        self.cache: KVCache | None = self.net.new_cache(len(lengths), self.window)
        self.step = 0
        self.start = prefix_state(lm, settings.prefix(lm))  # the same in every row: computed once, copied in
        self.start.copy_into(self.cache)
        self._after_prefix()

    def _after_prefix(self) -> None:
        """Every active row's prediction from the prefix alone (which stays in the cache)."""
        self.freqs, self.pos = self.start.freqs.expand(len(self.rows), -1), len(self.start.tokens)

    def _forward(self, tokens: Tensor, pos: int) -> None:
        rows, device = len(tokens), self.net.device
        per_pass = max(1, RESTART_TOKENS // tokens.shape[1])  # a restart's rows, a few at a time
        with torch.inference_mode():
            last = [
                self.net.forward(tokens[a : a + per_pass].to(device), self.cache.rows(a, a + per_pass), pos)[:, -1]
                for a in range(0, rows, per_pass)
            ]
            self.freqs = frequencies(self.net.logits(torch.cat(last)))
        self.pos = pos + tokens.shape[1]

    def advance(self, tokens: np.ndarray) -> None:
        """Append this step's tokens of the active rows and compute their next frequencies."""
        self.history[self.rows, self.step] = torch.as_tensor(tokens, dtype=torch.long)
        self.step += 1
        staying = self.lengths[self.rows] > self.step
        if not staying.all():
            self.rows = self.rows[staying]
            if not len(self.rows):
                self.cache = None  # done: its memory is the next group's
                return
            self.cache.keep_rows(np.flatnonzero(staying).tolist())
        if self.pos < self.window:
            self._forward(self.history[self.rows, self.step - 1 : self.step], self.pos)
        elif self.keep:  # context full: restart from the prefix (still in the cache) and the last `keep` tokens
            self._forward(self.history[self.rows, self.step - self.keep : self.step], len(self.start.tokens))
        else:
            self._after_prefix()


# --- Segments -----------------------------------------------------------------------------------------


def _classical(data: bytes) -> tuple[int, bytes]:
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)
    return (fmt.METHOD_XZ, packed) if len(packed) < len(data) else (fmt.METHOD_STORED, data)


def groups(rows: list[int], size: int) -> list[list[int]]:
    """Consecutive groups of at most ``size`` rows: the chunks decoded side by side."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _interleave(values: list[np.ndarray]) -> np.ndarray:
    """Per-row arrays joined in stream order: step by step, at each step every row that is that long."""
    matrix = np.zeros((len(values), max(len(v) for v in values)), dtype=np.int64)
    present = np.zeros(matrix.shape, dtype=bool)
    for row, v in enumerate(values):
        matrix[row, : len(v)], present[row, : len(v)] = v, True
    return matrix.T[present.T]


def encode_segment(
    lm: LanguageModel, data: bytes, settings: Settings, start: int = 0, progress: Progress | None = None
) -> tuple[fmt.Segment, Stats]:
    """``data``, found at ``start`` in the input, as one segment."""
    # Cut, tokenise, and merge neighbouring non-text pieces into one classical chunk.
    pieces: list[tuple[bytes, list[int] | None]] = []
    for piece in split(data, settings):
        ids = lm.tokenize(piece) if looks_like_text(piece) else None
        if ids is None and pieces and pieces[-1][1] is None:
            pieces[-1] = (pieces[-1][0] + piece, None)
        else:
            pieces.append((piece, ids))
    candidates = [i for i, (_, ids) in enumerate(pieces) if ids is not None]
    rows = [pieces[i][1] for i in candidates]

    def report(row: int, tokens: int, spent: float) -> None:
        if progress is not None:
            progress(len(pieces[candidates[row]][0]) * tokens / len(rows[row]), spent)

    left, width, bits = code_rows(lm, rows, settings, report)
    # A chunk the model codes worse than LZMA2 (or than storing it) leaves the model's rows.
    classical = [_classical(p) for p, _ in pieces]
    lm_rows = [r for r, i in enumerate(candidates) if bits[r] / 8 < len(classical[i][1])]
    if settings.mix and 0 < len(lm_rows) < len(rows):
        # The match model sees the chunks of the stream: without those that left, the others code differently.
        again = code_rows(lm, [rows[r] for r in lm_rows], settings)
        for k, r in enumerate(lm_rows):
            left[r], width[r], bits[r] = again[0][k], again[1][k], again[2][k]
    stream = b""
    if lm_rows:
        encoder = TokenEncoder()
        for group in groups(lm_rows, settings.max_batch):
            encoder.encode(_interleave([left[r] for r in group]), _interleave([width[r] for r in group]))
        stream = encoder.finish()

    stats = Stats(bytes_in=len(data), ideal_bits=float(bits[lm_rows].sum()), lm_bytes_out=len(stream))
    chunks, payloads = [], []
    lm_pieces = {candidates[r] for r in lm_rows}
    offset = 0
    for i, (piece, ids) in enumerate(pieces):
        if i in lm_pieces:
            chunk, payload = fmt.Chunk(fmt.METHOD_LM, tokens=len(ids)), b""
            stats.tokens += len(ids)
            stats.lm_bytes_in += len(piece)
            stats.lm_spans.append((offset, offset + len(piece)))
        else:
            method, payload = classical[i]
            chunk = fmt.Chunk(method, raw_size=len(piece), coded_size=len(payload))
        chunks.append(chunk)
        payloads.append(payload)
        offset += len(piece)
        name = fmt.METHOD_NAMES[chunk.method]
        stats.chunks[name] = stats.chunks.get(name, 0) + 1
    return fmt.Segment(start, len(data), zlib.crc32(data), chunks, payloads, stream), stats


class _Mixer:
    """The decoder's side of ``mixing``: the match model and hit estimate of one segment, step by step."""

    def __init__(self, rows: int):
        from .kernels import mixed_frequencies  # compiled on first use

        self.model, self.estimate, self._mixed = mixing.MatchModel(rows), mixing.HitEstimate(), mixed_frequencies
        self.step: list[tuple[int, int, int]] = []  # (predicted, length, its LM frequency) of each active row

    def frequencies(self, rows: list[int], freqs: Tensor) -> Tensor:
        """The rows' mixed frequencies, from the LM's."""
        lm = freqs.cpu().numpy()
        self.step = []
        for i, row in enumerate(rows):
            predicted, length = self.model.predict(row)
            self.step.append((predicted, length, int(lm[i, predicted]) if predicted >= 0 else 0))
        p = [self.estimate.probability(length, f) if predicted >= 0 else 0 for predicted, length, f in self.step]
        return torch.from_numpy(self._mixed(lm, [s[0] for s in self.step], p))

    def update(self, rows: list[int], tokens: np.ndarray) -> None:
        for row, token, (predicted, length, f) in zip(rows, tokens.tolist(), self.step):
            if predicted >= 0:
                self.estimate.update(length, f, token == predicted)
            self.model.update(row, token, predicted)


def decode_segment(
    lm: LanguageModel,
    segment: fmt.Segment,
    settings: Settings,
    where: str,
    progress: Progress | None = None,
) -> bytes:
    """The original bytes of ``segment``, or an error naming it (``where``)."""
    chunks, payloads = segment.chunks, segment.payloads
    out: list[bytes] = [b""] * len(chunks)
    for i, (c, payload) in enumerate(zip(chunks, payloads)):
        if c.method == fmt.METHOD_STORED:
            out[i] = payload
        elif c.method == fmt.METHOD_XZ:
            unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)
            try:
                out[i] = unpacker.decompress(payload, max_length=c.raw_size + 1)
            except lzma.LZMAError as e:
                raise FormatError(f"chunk {i} of {where} is corrupted ({e})") from None
    lm_rows = [i for i, c in enumerate(chunks) if c.method == fmt.METHOD_LM]
    if lm_rows:
        try:
            decoder = TokenDecoder(segment.lm_stream)
        except ValueError as e:
            raise FormatError(f"{where} is corrupted ({e})") from None
        lengths = [chunks[i].tokens for i in lm_rows]
        if sum(lengths) > max_tokens(len(segment.lm_stream), lm.net.cfg.vocab_size):
            raise FormatError(f"{where} is corrupted (its chunk table has more tokens than its stream can hold)")
        decoded = [np.zeros(n, np.int64) for n in lengths]
        per_token = (segment.raw_size - sum(c.raw_size for c in chunks)) / sum(lengths)
        mixer = _Mixer(len(lm_rows)) if settings.mix else None
        for group in groups(list(range(len(lm_rows))), settings.max_batch):
            steps = Lockstep(lm, [lengths[r] for r in group], settings)
            for t in range(max(lengths[r] for r in group)):
                active = [group[row] for row in steps.rows]
                freqs = steps.freqs if mixer is None else mixer.frequencies(active, steps.freqs)
                try:
                    tokens = decoder.decode(freqs)
                except (AssertionError, ValueError, RuntimeError):  # constriction's word for an impossible stream
                    raise FormatError(f"the token stream of {where} is corrupted") from None
                for row, token in zip(active, tokens):
                    decoded[row][t] = token
                if mixer is not None:
                    mixer.update(active, tokens)
                if progress is not None:
                    bits = float(code_length_bits(freqs, torch.from_numpy(tokens)).sum())
                    progress(per_token * len(tokens), bits)
                steps.advance(tokens)
        for row, i in enumerate(lm_rows):
            try:
                out[i] = lm.detokenize(decoded[row].tolist())
            except Exception:  # an out-of-vocabulary id from a damaged payload
                out[i] = b""
    data = b"".join(out)
    if len(data) != segment.raw_size or zlib.crc32(data) != segment.crc32:
        methods = ", ".join(f"{n} {fmt.METHOD_NAMES[m]}" for m, n in Counter(c.method for c in chunks).items())
        raise ChecksumError(
            f"{where}: {segment.raw_size:,} bytes in {len(chunks)} chunks ({methods}) do not match their "
            f"checksum: the archive is corrupted"
        )
    return data
