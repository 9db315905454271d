"""Cutting data into chunks and coding them in lockstep: the one step function both directions share.

A segment (up to ``chunk_size * max_batch`` bytes) is cut into chunks at line
breaks. Chunks of text (valid UTF-8, at most 10% control characters) whose
tokenization round-trips exactly are coded with the language model: all of
them advance one token per step as the rows of one batch, into one range-coded
stream per segment. The decoder runs the very same loop with the very same
batch, so every probability is computed by the same operations in the same
order. Other chunks (binary data, invalid UTF-8) go to LZMA2, or are
stored when that does not help.

Context policy: a row sees the start token plus the tokens of its chunk so far.
When ``window`` positions are full, the context restarts as the start token plus
the last ``keep`` tokens (one batched prefill), so attention cost stays bounded.
"""

from __future__ import annotations

import contextlib
import lzma
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import format as fmt
from .coding import TokenDecoder, TokenEncoder, code_length_bits, probabilities
from .errors import ChecksumError, FormatError
from .models import LanguageModel

# Raw LZMA2 (no container) at xz's strongest preset; FORMAT.md names these exact filters.
LZMA2_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_LINE_SEARCH = 512  # bytes to look ahead for a line break when cutting

Progress = Callable[[float, float], None]  # (bytes done, bits spent) since the last call


@dataclass(frozen=True)
class Settings:
    """How to cut and code. ``window``/``keep``/``threads`` are recorded in the archive."""

    window: int = 2048
    keep: int = 512
    chunk_size: int = 8192
    max_batch: int = 64
    threads: int = 0  # 0: torch's default for this machine
    start_token: int | None = None  # None: the model's own choice (recorded in the archive either way)

    def __post_init__(self) -> None:
        if self.window < 2 or not 0 <= self.keep <= self.window - 2:
            raise ValueError(f"need window >= 2 and 0 <= keep <= window - 2 (window={self.window}, keep={self.keep})")
        if self.chunk_size < 1 or not 1 <= self.max_batch <= fmt.MAX_CHUNKS or self.threads < 0:
            raise ValueError("chunk_size and max_batch must be positive, threads non-negative")

    @property
    def segment_size(self) -> int:
        return self.chunk_size * self.max_batch

    def start(self, lm: LanguageModel) -> int:
        return lm.start_token if self.start_token is None else self.start_token


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

    def add(self, other: Stats) -> None:
        for name in ("bytes_in", "bytes_out", "tokens", "ideal_bits", "lm_bytes_in", "lm_bytes_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.chunks.items():
            self.chunks[k] = self.chunks.get(k, 0) + v

    @property
    def overhead(self) -> float:
        """Actual LM payload size over the ideal code length, minus one."""
        return self.lm_bytes_out * 8 / self.ideal_bits - 1 if self.ideal_bits else 0.0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    n = min(settings.max_batch, max(1, round(len(data) / settings.chunk_size)))
    cuts = [0]
    for i in range(1, n):
        cut = boundary(data, i * len(data) // n)
        if cuts[-1] < cut < len(data):
            cuts.append(cut)
    cuts.append(len(data))
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


class Lockstep:
    """Rows of token streams advancing one token per step through one batched forward pass."""

    def __init__(self, lm: LanguageModel, lengths: list[int], settings: Settings):
        self.net, self.start = lm.net, settings.start(lm)
        window, keep = settings.window, settings.keep
        self.lengths = np.asarray(lengths)
        self.window, self.keep = window, keep
        self.history = torch.full((len(lengths), int(self.lengths.max())), self.start, dtype=torch.long)
        self.cache = self.net.new_cache(len(lengths), window)
        self.step = 0
        self._forward(torch.full((len(lengths), 1), self.start, dtype=torch.long), 0)

    def _forward(self, tokens: torch.Tensor, pos: int) -> None:
        with torch.inference_mode():
            self.logits = self.net(tokens, self.cache, pos)
        self.pos = pos + tokens.shape[1]

    @property
    def active(self) -> np.ndarray:
        return self.lengths > self.step

    def probabilities(self) -> np.ndarray:
        return probabilities(self.logits)

    def advance(self, tokens: np.ndarray) -> None:
        """Append this step's tokens (rows already finished get the start token) and predict the next."""
        fed = torch.as_tensor(np.where(self.active, tokens, self.start), dtype=torch.long)
        self.history[:, self.step] = fed
        self.step += 1
        if self.step == self.history.shape[1]:
            return
        if self.pos < self.window:
            self._forward(fed[:, None], self.pos)
        else:  # context full: restart from the start token and the last `keep` tokens
            kept = self.history[:, self.step - self.keep : self.step]
            start = torch.full((len(kept), 1), self.start, dtype=torch.long)
            self._forward(torch.cat([start, kept], dim=1), 0)


def run_lockstep(
    lm: LanguageModel,
    lengths: list[int],
    settings: Settings,
    code: Callable[[np.ndarray, np.ndarray], np.ndarray],
    progress: Progress | None = None,
    bytes_per_token: np.ndarray | None = None,
) -> None:
    """Drive the rows to their lengths; ``code(rows, probs)`` returns each listed row's token."""
    steps = Lockstep(lm, lengths, settings)
    tokens = np.zeros(len(lengths), dtype=np.int64)
    for _ in range(max(lengths)):
        rows = np.flatnonzero(steps.active)
        probs = steps.probabilities()
        tokens[rows] = code(rows, probs)
        if progress is not None:
            progress(float(bytes_per_token[rows].sum()), float(code_length_bits(probs[rows], tokens[rows]).sum()))
        steps.advance(tokens)


def _classical(data: bytes) -> tuple[int, bytes]:
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA2_FILTERS)
    return (fmt.METHOD_XZ, packed) if len(packed) < len(data) else (fmt.METHOD_STORED, data)


def _lm_encode(lm, texts, token_ids, settings, progress) -> tuple[bytes, np.ndarray]:
    """One range-coded stream of all rows' tokens (step by step, rows in order) and each row's ideal bits."""
    lengths = [len(t) for t in token_ids]
    matrix = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        matrix[row, : len(ids)] = ids
    encoder = TokenEncoder()
    bits = np.zeros(len(lengths))
    step = iter(range(matrix.shape[1]))

    def code(rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
        chosen = matrix[rows, next(step)]
        encoder.encode(chosen, probs[rows])
        bits[rows] += code_length_bits(probs[rows], chosen)
        return chosen

    per_token = np.array([len(x) / n for x, n in zip(texts, lengths)])
    run_lockstep(lm, lengths, settings, code, progress, per_token)
    return encoder.finish(), bits


def encode_segment(
    lm: LanguageModel, data: bytes, settings: Settings, crc: int = 0, progress: Progress | None = None
) -> tuple[fmt.Segment, Stats]:
    """``data`` as one segment; ``crc`` is the running CRC-32 of the input before it."""
    # Cut, tokenise, and merge neighbouring non-text pieces into one classical chunk.
    pieces: list[tuple[bytes, list[int] | None]] = []
    for piece in split(data, settings):
        ids = lm.tokenize(piece) if looks_like_text(piece) else None
        if ids is None and pieces and pieces[-1][1] is None:
            pieces[-1] = (pieces[-1][0] + piece, None)
        else:
            pieces.append((piece, ids))
    classical = [_classical(p) if ids is None else None for p, ids in pieces]
    lm_rows = [i for i, (_, ids) in enumerate(pieces) if ids is not None]
    stream, bits = b"", np.zeros(0)
    while lm_rows:
        stream, bits = _lm_encode(
            lm, [pieces[i][0] for i in lm_rows], [pieces[i][1] for i in lm_rows], settings, progress
        )
        # A chunk the model codes worse than LZMA2 (or than storing it) leaves the batch, which is then
        # coded again: the decoder must see exactly the batch the encoder ran.
        for i in lm_rows:  # each chunk's LZMA2 alternative is computed once, whatever the number of passes
            classical[i] = classical[i] or _classical(pieces[i][0])
        losers = {i for row, i in enumerate(lm_rows) if bits[row] / 8 >= len(classical[i][1])}
        if not losers:
            break
        lm_rows = [i for i in lm_rows if i not in losers]
    if not lm_rows:
        stream, bits = b"", np.zeros(0)

    stats = Stats(bytes_in=len(data), ideal_bits=float(bits.sum()), lm_bytes_out=len(stream))
    chunks, payloads = [], []
    for i, (piece, ids) in enumerate(pieces):
        if i in lm_rows:
            chunk, payload = fmt.Chunk(fmt.METHOD_LM, tokens=len(ids)), b""
            stats.tokens += len(ids)
            stats.lm_bytes_in += len(piece)
        else:
            method, payload = classical[i]
            chunk = fmt.Chunk(method, raw_size=len(piece), coded_size=len(payload))
        chunks.append(chunk)
        payloads.append(payload)
        name = fmt.METHOD_NAMES[chunk.method]
        stats.chunks[name] = stats.chunks.get(name, 0) + 1
    return fmt.Segment(len(data), zlib.crc32(data, crc), chunks, payloads, stream), stats


def decode_segment(
    lm: LanguageModel,
    segment: fmt.Segment,
    settings: Settings,
    where: str,
    crc: int = 0,
    hint: str = "",
    progress: Progress | None = None,
) -> bytes:
    """The original bytes of ``segment``, or an error naming it (``where``); ``crc`` as for ``encode_segment``."""
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
        decoded = np.zeros((len(lm_rows), max(lengths)), dtype=np.int64)
        step = iter(range(max(lengths)))

        def code(rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
            t = next(step)
            try:
                decoded[rows, t] = decoder.decode(probs[rows])
            except (AssertionError, ValueError, RuntimeError):  # constriction's word for an impossible stream
                raise FormatError(f"the token stream of {where} is corrupted") from None
            return decoded[rows, t]

        lm_bytes = segment.raw_size - sum(c.raw_size for c in chunks)
        per_token = np.full(len(lm_rows), lm_bytes / sum(lengths))
        run_lockstep(lm, lengths, settings, code, progress, per_token)
        for row, i in enumerate(lm_rows):
            try:
                out[i] = lm.detokenize(decoded[row, : lengths[row]].tolist())
            except Exception:  # an out-of-vocabulary id from a damaged payload
                out[i] = b""
    data = b"".join(out)
    if len(data) != segment.raw_size or zlib.crc32(data, crc) != segment.crc32:
        methods = ", ".join(f"{n} {fmt.METHOD_NAMES[m]}" for m, n in Counter(c.method for c in chunks).items())
        raise ChecksumError(
            f"{where}: {segment.raw_size:,} bytes in {len(chunks)} chunks ({methods}) do not match their "
            f"checksum: the archive is corrupted{hint}"
        )
    return data
