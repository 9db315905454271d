"""Cutting data into segments and chunks: at line breaks where one is near, never inside a UTF-8 character.

A segment (up to ``chunk_size * max(64, batch)`` bytes) is cut into chunks of about ``chunk_size`` bytes.
Chunks of text (valid UTF-8, at most 10% control characters) whose tokenization round-trips exactly are coded
with the language model; the others go to LZMA2, or are stored when that does not help (``segments.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

from .settings import Settings

_LINE_SEARCH = 512  # bytes to look ahead for a line break when cutting


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
