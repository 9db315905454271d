"""Partial decoding: what a damaged archive still holds, and what the model invents where it holds nothing.

``salvage`` gives back every intact segment, each checked against its crc32, and names each stretch of lost
bytes. Where the archive still records how long a lost stretch was (the segments around it, or the end marker,
say where it starts and ends), the model writes that many bytes itself, continuing the bytes before it: greedy
(the most probable token each step), or sampled from its exact integer frequencies with a seed. The result marks
every byte as *verified* or *invented*; invented bytes are never mixed silently into a normal output.

A stretch whose length the archive no longer records (an archive cut short loses its end marker) is not
invented: the output ends where the intact data ends. Tokens that a damaged segment might still give before the
damage are not returned either: nothing checks them (its crc32 covers the whole segment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .api import DictionarySpec, ModelSpec, decoding, salvage
from .codec import format as fmt
from .codec.segments import Lockstep
from .codec.settings import Progress, Settings
from .errors import FormatError
from .models import LanguageModel

CONTEXT_SHARE = 4  # an invention continues at most the last window/4 tokens before it


@dataclass(frozen=True)
class Part:
    """Output bytes ``[start, end)``: verified (an intact segment, its crc32 checked) or invented by the model
    (``reason``: why the archive's own bytes are lost)."""

    start: int
    end: int
    verified: bool
    reason: str = ""

    def __str__(self) -> str:
        span = f"bytes {self.start:,} to {self.end:,}"
        return f"{span} verified" if self.verified else f"{span} invented by the model ({self.reason})"


@dataclass(frozen=True)
class Partial:
    """What ``partial`` made: the bytes, their parts in order, and where the archive stopped saying anything
    (``lost_after``: the output's length when the end is lost, with ``reason``; None when it is known)."""

    data: bytes
    parts: tuple[Part, ...]
    lost_after: int | None = None
    reason: str = ""

    @property
    def verified(self) -> int:
        return sum(p.end - p.start for p in self.parts if p.verified)


def partial(
    archive: fmt.Buffer,
    model: ModelSpec = None,
    *,
    dictionary: DictionarySpec = None,
    seed: int | None = None,
    progress: Progress | None = None,
    invented: Callable[[int], None] | None = None,
    threads: int = 0,
) -> Partial:
    """The intact segments of a damaged archive, with every lost stretch of known length written by the model
    (greedy, or sampled with ``seed``). ``invented(n)`` is told of each invented byte count as it grows."""
    head = fmt.parse_header(memoryview(archive))
    if head is None:
        raise FormatError("truncated archive header: nothing can be recovered")
    lm, settings = decoding(model, dictionary, head[0])
    out = bytearray()
    parts: list[Part] = []
    for piece in salvage(archive, model, dictionary=dictionary, progress=progress, threads=threads):
        start = len(out)
        if not isinstance(piece, bytes):
            if piece.end is None:
                return Partial(bytes(out), tuple(parts), start, piece.reason)
            if piece.end == start:
                continue
            out += continuation(lm, settings, bytes(out), piece.end - start, seed, invented)
            parts.append(Part(start, len(out), False, piece.reason))
        elif piece:
            out += piece
            if parts and parts[-1].verified:  # segments one after another: one part
                parts[-1] = Part(parts[-1].start, len(out), True)
            else:
                parts.append(Part(start, len(out), True))
    return Partial(bytes(out), tuple(parts))


def continuation(
    lm: LanguageModel,
    settings: Settings,
    before: bytes,
    size: int,
    seed: int | None = None,
    invented: Callable[[int], None] | None = None,
) -> bytes:
    """``size`` bytes the model writes after ``before`` (its last tokens, after the settings' prefix: the start
    token and a dictionary's tokens), as the decoder runs it: the same on any machine."""
    context = _tail_tokens(lm, before, settings.window // CONTEXT_SHARE)
    budget = len(context) + size + 1  # every token stands for at least one byte
    steps: Lockstep

    def guess(row: int, most: int) -> list[int]:  # the context is known: fed several tokens a step
        return context[steps.step : steps.step + most]

    steps = Lockstep(lm, [budget], settings, guess)
    for token in context:
        steps.advance(np.array([token]))
    rng = None if seed is None else np.random.default_rng(seed)
    made: list[int] = []
    counted = 0  # bytes of the tokens made, one by one (a character cut between two tokens counts apart)
    while True:
        freqs = steps.freqs[0].numpy().astype(np.int64)
        if rng is None:
            token = int(np.argmax(freqs))  # the first of equals
        else:
            token = int(np.searchsorted(np.cumsum(freqs), rng.integers(0, int(freqs.sum())), side="right"))
        made.append(token)
        length = len(lm.detokenize([token]))
        counted += length
        if invented is not None:
            invented(length)
        if counted >= size:
            text = lm.detokenize(made)
            if len(text) >= size:
                return text[:size]
            counted = len(text)
        if steps.step + 1 >= budget:  # tokens that stand for no bytes (cannot be coded): nothing more to say
            return (lm.detokenize(made) + bytes(size))[:size]
        steps.advance(np.array([token]))


def _tail_tokens(lm: LanguageModel, data: bytes, most: int) -> list[int]:
    """The tokens of the end of ``data`` (at most ``most``): of its last bytes that the tokenizer gives back
    exactly, a character cut at either end left out (none if the end is not text)."""
    tail = data[-4 * most :]
    for skip in range(min(len(tail), 4)):
        for cut in range(min(len(tail) - skip, 4)):
            ids = lm.tokenize(tail[skip : len(tail) - cut])
            if ids:
                return ids[-most:]
    return []
