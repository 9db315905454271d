"""Coding a segment: its chunks of text with the integer model, the others with LZMA2 or stored.

- the encoder scores every chunk in full-sequence passes (``scoring.py``) and keeps each token's interval of
  the cumulative frequencies;
- the decoder steps the chunks of a segment in lockstep, ``batch`` at a time (a group), one token per row per
  step, and decodes each token from the range-coded stream as soon as its row's frequencies are known; a model
  step may also check guesses of the next tokens (``drafts``), which saves the steps of those that are right.

The stream holds the LM chunks in groups of ``batch`` consecutive chunks, one group after another, each group's
tokens step by step: at step t, every chunk of the group with more than t tokens, in table order. The decoder so
holds at most ``batch`` contexts, whatever the segment's size.
"""

from __future__ import annotations

import lzma
import zlib
from collections import Counter

import numpy as np
import torch
from torch import Tensor

from ..errors import ChecksumError, FormatError
from ..exact.model import KVCache
from ..exact.ops import frequencies
from ..exact.runner import Runner
from ..models import LanguageModel
from . import drafts, mixers
from . import format as fmt
from .chunking import looks_like_text, split
from .coding import TokenDecoder, TokenEncoder, code_length_bits, max_tokens
from .scoring import code_rows, prefix_state
from .settings import Progress, Settings, Stats, Steps

# Raw LZMA2 (no container) at xz's strongest preset; FORMAT.md names these exact filters.
LZMA2_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
RESTART_TOKENS = 2048  # positions per pass of the decoder's restarts: their memory comes on top of the cache's


class Lockstep:
    """Rows of token streams advancing one token per step, each row with its own context; a row leaves the
    batch when its last token has been read (rows do not affect each other's numbers).

    Given ``guess`` (``drafts``), a step also feeds guesses of the tokens after the one it feeds, as many as
    ``drafts.draft_length`` finds worth checking: while the decoded tokens equal the guesses of every row, the
    next steps' predictions are already computed, and no model step is taken."""

    def __init__(self, lm: LanguageModel, lengths: list[int], settings: Settings, guess: drafts.Guess | None = None):
        self.net, self.run = lm.net, Runner(lm.net, len(lengths))
        self.window, self.keep = settings.window, settings.keep
        self.lengths = np.asarray(lengths)
        self.rows = np.arange(len(lengths))  # still active, in table order
        self.history = torch.zeros((len(lengths), int(self.lengths.max())), dtype=torch.long)
        self.cache: KVCache | None = self.net.new_cache(len(lengths), self.window)
        self.step = 0
        self.guess = guess
        self.first = self.later = drafts.HIT_START  # how often a step's first guess is right, and its later ones
        self.guesses = np.zeros((len(lengths), 0), np.int64)  # guesses of the next steps' tokens [rows, n] ...
        self.ahead: Tensor | None = None  # ... the logits after the first `fed` of them [rows, fed, vocab]
        self.fed = self.confirmed = 0  # (and how many have been confirmed)
        self.tally = Steps()
        self.start = prefix_state(lm, settings.prefix(lm))  # the same in every row: computed once, copied in
        self.start.copy_into(self.cache)
        self._after_prefix()

    def _after_prefix(self) -> None:
        """Every active row's prediction from the prefix alone (which stays in the cache)."""
        self.freqs, self.pos = self.start.freqs.expand(len(self.rows), -1), len(self.start.tokens)

    def _forward(self, tokens: Tensor, pos: int) -> None:
        """The next frequencies of the active rows after ``tokens`` [rows, T] at positions pos .. pos+T−1: a
        restart's pass over the kept tokens."""
        assert self.cache is not None
        rows, t, device = len(tokens), tokens.shape[1], self.net.device
        self.tally.passes += 1
        with torch.inference_mode():
            per_pass = max(1, RESTART_TOKENS // t)  # a restart's rows, a few at a time
            parts = []
            for a in range(0, rows, per_pass):
                cache = self.cache.rows(a, a + per_pass)
                parts.append(self.run.forward(tokens[a : a + per_pass].to(device), cache, pos)[:, -1])
            self.freqs = frequencies(self.run.logits(torch.cat(parts)))
        self.pos = pos + t

    def _step(self) -> None:
        """A model step: the active rows' last tokens, and as many guesses of the tokens after them as are worth
        checking (none without ``guess``; within the window)."""
        assert self.cache is not None
        fed = 0
        if self.guess is not None:
            most = min(drafts.MOST, drafts.POSITIONS // len(self.rows) - 1, self.window - 1 - self.pos)
            fed = drafts.draft_length(self.first, self.later, len(self.rows), most) if most > 0 else 0
            guessed = [self.guess(int(row), fed + 1) for row in self.rows]  # one more than fed: to learn from
            n = min(len(g) for g in guessed)
            self.guesses = np.array([g[:n] for g in guessed], np.int64).reshape(len(guessed), n)
            fed = min(fed, n)
        last = self.history[self.rows, self.step - 1 : self.step]
        tokens = torch.cat([last, torch.from_numpy(self.guesses[:, :fed])], 1) if fed else last
        self.tally.passes += 1
        with torch.inference_mode():
            hidden = self.run.step(tokens.to(self.net.device), self.cache, self.pos)
            logits = self.run.logits(hidden.flatten(0, 1)).view(len(tokens), fed + 1, -1)  # the head read once
            self.freqs = frequencies(logits[:, 0])
        self.ahead, self.fed, self.confirmed = logits[:, 1:], fed, 0
        self.pos += 1

    def advance(self, tokens: np.ndarray) -> None:
        """Append this step's tokens of the active rows and compute their next frequencies."""
        right, checked = False, self.confirmed < self.fed
        if self.confirmed < self.guesses.shape[1]:  # the hit rates learn from every guess that can be compared
            right = bool((self.guesses[:, self.confirmed] == tokens).all())
            if self.confirmed:
                self.later += (right - self.later) / drafts.HIT_MEMORY
            else:
                self.first += (right - self.first) / drafts.HIT_MEMORY
        self.tally.tokens += len(tokens)
        self.tally.checked += checked
        self.tally.right += checked and right
        self.history[self.rows, self.step] = torch.as_tensor(tokens, dtype=torch.long)
        self.step += 1
        staying = self.lengths[self.rows] > self.step
        if not staying.all():
            self.rows = self.rows[staying]
            if not len(self.rows):
                self.cache = self.ahead = None  # done: its memory is the next group's, and so is the packed copy's
                self.run.release()
                return
            assert self.cache is not None  # None only once every row has left
            self.cache.keep_rows(np.flatnonzero(staying).tolist())
            self.guesses = self.guesses[staying]
            if self.ahead is not None:
                self.ahead = self.ahead[torch.from_numpy(staying)]
        if right and checked:  # computed by the last step, which fed the guess just confirmed
            assert self.ahead is not None
            self.freqs = frequencies(self.ahead[:, self.confirmed])
            self.confirmed += 1
            self.pos += 1
            return
        self.guesses, self.ahead, self.fed, self.confirmed = self.guesses[:, :0], None, 0, 0
        if self.pos < self.window:
            self._step()
        elif self.keep:  # context full: restart from the prefix (still in the cache) and the last `keep` tokens
            self._forward(self.history[self.rows, self.step - self.keep : self.step], len(self.start.tokens))
        else:
            self._after_prefix()


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
    rows = [ids for _, ids in pieces if ids is not None]  # candidates' tokens

    def report(row: int, tokens: int, spent: float) -> None:
        if progress is not None:
            progress(len(pieces[candidates[row]][0]) * tokens / len(rows[row]), spent)

    left, width, bits = code_rows(lm, rows, settings, report)
    # A chunk the model codes worse than LZMA2 (or than storing it) leaves the model's rows.
    classical = [_classical(p) for p, _ in pieces]
    lm_rows = [r for r, i in enumerate(candidates) if bits[r] / 8 < len(classical[i][1])]
    if settings.mixer and 0 < len(lm_rows) < len(rows):
        # The online models see the chunks of the stream: without those that left, the others code differently.
        again = code_rows(lm, [rows[r] for r in lm_rows], settings)
        for k, r in enumerate(lm_rows):
            left[r], width[r], bits[r] = again[0][k], again[1][k], again[2][k]
    stream = b""
    if lm_rows:
        encoder = TokenEncoder()
        for group in groups(lm_rows, settings.batch):
            encoder.encode(_interleave([left[r] for r in group]), _interleave([width[r] for r in group]))
        stream = encoder.finish()

    stats = Stats(bytes_in=len(data), ideal_bits=float(bits[lm_rows].sum()), lm_bytes_out=len(stream))
    chunks, payloads = [], []
    lm_pieces = {candidates[r] for r in lm_rows}
    offset = 0
    for i, (piece, ids) in enumerate(pieces):
        if i in lm_pieces and ids is not None:
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


def decode_segment(
    lm: LanguageModel,
    segment: fmt.Segment,
    settings: Settings,
    where: str,
    progress: Progress | None = None,
    tally: Steps | None = None,
) -> bytes:
    """The original bytes of ``segment``, or an error naming it (``where``); what its decoding took is added to
    ``tally``."""
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
        mixer = mixers.mixer(lm, settings, lengths)
        successors = drafts.Successors(len(lengths), settings.primer)
        for group in groups(list(range(len(lm_rows))), settings.batch):
            guess = lambda row, most, group=group: successors.guess(group[row], most)  # noqa: E731
            steps = Lockstep(lm, [lengths[r] for r in group], settings, guess)
            for t in range(max(lengths[r] for r in group)):
                active = [group[row] for row in steps.rows]
                freqs = steps.freqs
                if mixer is not None:
                    freqs = torch.from_numpy(mixer.frequencies(active, freqs.cpu().numpy()))
                try:
                    tokens = decoder.decode(freqs)
                except (AssertionError, ValueError, RuntimeError):  # constriction's word for an impossible stream
                    raise FormatError(f"the token stream of {where} is corrupted") from None
                for row, token in zip(active, tokens.tolist()):
                    decoded[row][t] = token
                    successors.add(row, token)
                if mixer is not None:
                    mixer.update(active, tokens)
                if progress is not None:
                    bits = float(code_length_bits(freqs, torch.from_numpy(tokens)).sum())
                    progress(per_token * len(tokens), bits)
                steps.advance(tokens)
            if tally is not None:
                tally.add(steps.tally)
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
