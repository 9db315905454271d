"""The .lmp archive format: byte layout, and a parser that is fed bytes as they arrive.

``docs/FORMAT.md`` is the specification; this module is its one implementation.
All integers are little-endian. Parsing never trusts a length it has not bounded.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import FormatError, LmpressError, NotAnArchiveError, UnsupportedVersionError
from ..exact import ENGINE, MAX_CONTEXT
from .context_mixing import NAME as CONTEXT_MIXING
from .mixing import NAME as MATCH_MIXER

Buffer = bytes | bytearray | memoryview | mmap.mmap  # what the parsers read: an archive in memory, or mapped

MAGIC = b"LMPZ"
VERSION = 4  # the newest this lmpress reads and writes; an archive without a dictionary is written as version 3
VERSIONS = (3, 4)  # 4: made with a dictionary, which the header names instead of the model
DEFAULT_MODEL = "smollm2-135m"  # what an empty model name in a header means
# The arithmetic of docs/FORMAT.md, by the number a header stores: (engine, mixer); mixer "" is the LM alone
# (a new engine or mixer gets a new number; these stay as they are)
ARITHMETIC = {1: (ENGINE, ""), 2: (ENGINE, MATCH_MIXER), 3: (ENGINE, CONTEXT_MIXING)}
MIXERS = tuple(dict.fromkeys(mixer for _, mixer in ARITHMETIC.values()))  # "" first: the model alone

FRAME_SEGMENT = 0x01
FRAME_END = 0xFF

METHOD_STORED = 0
METHOD_XZ = 1
METHOD_LM = 2
METHOD_NAMES = {METHOD_STORED: "stored", METHOD_XZ: "xz", METHOD_LM: "lm"}

MAX_FRAME_BYTES = 1 << 31
MAX_SEGMENT_BYTES = 1 << 30  # original bytes a segment may claim: bounds what one segment's decoding allocates
MAX_PARAMS_BYTES = 1024
MAX_CHUNKS = 0xFFFF
MAX_WINDOW = MAX_CONTEXT  # context positions: bounds the decoder's cache whatever a header says
MODEL_ID_BYTES = 8
DICTIONARY_ID_BYTES = 4

_PREFIX = struct.Struct("<4sB")  # magic, version
_CRC = struct.Struct("<I")
_MAX_VARINT = 10


class _NeedMore(Exception):
    """The buffer ends inside the item being parsed."""


def uvarint(n: int) -> bytes:
    """LEB128: seven bits per byte, least significant first, high bit set on all but the last byte."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_uvarint(buf, offset: int) -> tuple[int, int]:
    """The varint at ``offset`` and the offset after it."""
    value = 0
    for i in range(_MAX_VARINT):
        if offset + i >= len(buf):
            raise _NeedMore
        byte = buf[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, offset + i + 1
    raise FormatError("corrupted archive (varint longer than 10 bytes)")


def _read_u32(buf, offset: int) -> tuple[int, int]:
    if offset + 4 > len(buf):
        raise _NeedMore
    return _CRC.unpack_from(buf, offset)[0], offset + 4


def _sealed(frame: bytes) -> bytes:
    """A frame followed by the crc32 of its bytes: damage is caught before anything is decoded from it."""
    return frame + _CRC.pack(zlib.crc32(frame))


@dataclass(frozen=True)
class Header:
    """Everything the decoder must reproduce: which model, which arithmetic, which context policy.

    ``model_id`` (hex) names the quantised model and tokenizer together; ``model_name`` is informative, and
    is stored empty for the default model. An archive made with a dictionary (version 4) names the dictionary
    instead (``dictionary``, hex): a dictionary holds the id of its model, so it names the model too, and the
    parsed header's ``model_id`` is empty.
    """

    model_name: str
    model_id: str
    engine: str
    start_token: int
    window: int
    keep: int
    batch: int  # LM chunks decoded side by side: the decoder holds this many contexts at most
    dictionary: str = ""  # id (hex) of the dictionary every context starts from; "" for none
    mixer: str = ""  # the online models mixed with the LM's frequencies ("match-v1", "cm-v1"), "" for none

    @property
    def version(self) -> int:
        return 4 if self.dictionary else 3

    def to_bytes(self) -> bytes:
        name = "" if self.model_name == DEFAULT_MODEL else self.model_name
        engine = {v: k for k, v in ARITHMETIC.items()}[self.engine, self.mixer]
        params = b"".join(
            [
                bytes.fromhex(self.dictionary or self.model_id),
                *(uvarint(n) for n in (engine, self.start_token, self.window, self.keep, self.batch)),
                name.encode("utf-8"),
            ]
        )
        return _sealed(_PREFIX.pack(MAGIC, self.version) + uvarint(len(params)) + params)

    @classmethod
    def from_params(cls, params: bytes, version: int = 3) -> Header:
        offset = DICTIONARY_ID_BYTES if version == 4 else MODEL_ID_BYTES
        if len(params) < offset:
            raise ValueError("parameters cut short")
        named = params[:offset].hex()
        engine, offset = read_uvarint(params, offset)
        start, offset = read_uvarint(params, offset)
        window, offset = read_uvarint(params, offset)
        keep, offset = read_uvarint(params, offset)
        batch, offset = read_uvarint(params, offset)
        if engine not in ARITHMETIC:
            raise UnsupportedVersionError(
                f"archive needs arithmetic engine {engine}, which this lmpress does not have; upgrade lmpress"
            )
        if not 2 <= window <= MAX_WINDOW or not 0 <= keep <= window - 2:
            raise ValueError(f"window {window} with keep {keep}")
        if not 1 <= batch <= MAX_CHUNKS:
            raise ValueError(f"batch of {batch} chunks")
        name = params[offset:].decode("utf-8") or DEFAULT_MODEL
        model_id, dictionary = ("", named) if version == 4 else (named, "")
        engine_name, mixer = ARITHMETIC[engine]
        return cls(name, model_id, engine_name, start, window, keep, batch, dictionary, mixer)


@dataclass(frozen=True)
class Chunk:
    """One entry of a chunk table. LM chunks record their token count, the others their sizes."""

    method: int
    raw_size: int = 0  # original bytes; 0 (not recorded) for LM chunks, whose tokens decode to them
    coded_size: int = 0  # payload bytes: raw_size for stored chunks, 0 for LM chunks
    tokens: int = 0  # LM chunks only

    def to_bytes(self) -> bytes:
        if self.method == METHOD_LM:
            return uvarint(self.tokens << 2 | METHOD_LM)
        entry = uvarint(self.raw_size << 2 | self.method)
        return entry + uvarint(self.coded_size) if self.method == METHOD_XZ else entry


@dataclass(frozen=True)
class Segment:
    """A chunk table, the other chunks' payloads, and the range-coded tokens of all LM chunks.

    ``offset`` is where the segment's original bytes start in the input, ``crc32`` the CRC-32 of those bytes:
    each segment checks out on its own, so a damaged one costs only its own bytes.
    ``payloads[i]`` is chunk i's own bytes (empty for LM chunks).
    """

    offset: int
    raw_size: int
    crc32: int
    chunks: list[Chunk]
    payloads: list[bytes]
    lm_stream: bytes

    def to_bytes(self) -> bytes:
        body = b"".join(
            [
                uvarint(self.offset),
                uvarint(self.raw_size),
                uvarint(len(self.chunks)),
                *(c.to_bytes() for c in self.chunks),
                _CRC.pack(self.crc32),
                *self.payloads,
                self.lm_stream,
            ]
        )
        return _sealed(bytes([FRAME_SEGMENT]) + uvarint(len(body)) + body)


@dataclass(frozen=True)
class End:
    total_size: int

    def to_bytes(self) -> bytes:
        return _sealed(bytes([FRAME_END]) + uvarint(self.total_size))


def parse_header(buf: Buffer) -> tuple[Header, int] | None:
    """The header at the start of ``buf`` and its length, or None if more bytes are needed."""
    if len(buf) < _PREFIX.size:
        if not MAGIC.startswith(bytes(buf[:4])):
            raise NotAnArchiveError("not an lmpress archive (bad magic bytes)")
        return None
    magic, version = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise NotAnArchiveError("not an lmpress archive (bad magic bytes)")
    if version > VERSION:
        raise UnsupportedVersionError(
            f"archive format version {version} is newer than this lmpress reads ({VERSION}); upgrade lmpress"
        )
    if version not in VERSIONS:
        raise UnsupportedVersionError(
            f"archive format version {version} was written by lmpress 0.1, whose float arithmetic only the "
            f"machine that wrote it can reproduce; this lmpress reads versions 3 and 4. Decompress it with "
            f"lmpress 0.1 on that machine"
            if version == 2
            else f"archive format version {version} was written by a pre-release lmpress and is no longer read"
            if version == 1
            else f"corrupted archive header (version {version})"
        )
    try:
        n, offset = read_uvarint(buf, _PREFIX.size)
    except _NeedMore:
        return None
    if n > MAX_PARAMS_BYTES:
        raise FormatError(f"corrupted archive header ({n}-byte parameters)")
    end = offset + n + 4
    if len(buf) < end:
        return None
    (crc,) = _CRC.unpack_from(buf, end - 4)
    if crc != zlib.crc32(buf[: end - 4]):
        raise FormatError("corrupted archive header (checksum mismatch)")
    try:
        header = Header.from_params(bytes(buf[offset : end - 4]), version)
    except UnsupportedVersionError:
        raise
    except (ValueError, IndexError, _NeedMore) as e:
        raise FormatError(f"corrupted archive header ({e or 'parameters cut short'})") from None
    return header, end


def whole_header(buf: Buffer) -> Header:
    """The header that ``buf`` holds whole (a member's header range of ``members``)."""
    parsed = parse_header(buf)
    if parsed is None:
        raise FormatError("truncated archive (it ends inside its header)")
    return parsed[0]


def whole_frame(buf: Buffer) -> Segment | End:
    """The frame that ``buf`` holds whole (a frame's range of ``members``), checked."""
    parsed = parse_frame(buf)
    if parsed is None:
        raise FormatError("truncated archive (it ends inside a frame)")
    return parsed[0]


def whole_end(buf: Buffer) -> End:
    """The end marker that ``buf`` holds whole, checked."""
    frame = whole_frame(buf)
    if not isinstance(frame, End):
        raise FormatError("corrupted archive (a segment where its end marker should be)")
    return frame


def _frame_extent(buf: Buffer) -> tuple[int, int, int, int] | None:
    """(kind, body_len or total_size, body offset, frame length) of the frame at the start of ``buf``, read from
    its kind and length alone; None if more bytes are needed to know its length."""
    if not buf:
        return None
    kind = buf[0]
    if kind not in (FRAME_SEGMENT, FRAME_END):
        raise FormatError(f"corrupted archive (unknown frame type 0x{kind:02x})")
    try:
        value, offset = read_uvarint(buf, 1)
    except _NeedMore:
        return None
    body_len = 0 if kind == FRAME_END else value
    if body_len > MAX_FRAME_BYTES:
        raise FormatError(f"corrupted archive (frame of {body_len} bytes)")
    return kind, value, offset, offset + body_len + _CRC.size


def parse_frame(buf: Buffer) -> tuple[Segment | End, int] | None:
    """The frame at the start of ``buf`` and its length, or None if more bytes are needed."""
    extent = _frame_extent(buf)
    if extent is None:
        return None
    kind, value, offset, end = extent
    if len(buf) < end:
        return None
    (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
    if crc != zlib.crc32(memoryview(buf)[: end - _CRC.size]):
        raise FormatError("corrupted archive (frame checksum mismatch)")
    if kind == FRAME_END:
        return End(value), end
    try:
        return _parse_segment(memoryview(buf)[offset : end - _CRC.size]), end
    except _NeedMore:
        raise FormatError("corrupted archive (segment contents overrun its frame)") from None


@dataclass(frozen=True)
class MemberLayout:
    """Where one member of an archive lies, as [start, end) byte ranges: its header, each segment frame, its end
    frame. Members are complete archives; an archive file is one or more of them, one after another."""

    header: tuple[int, int]
    segments: list[tuple[int, int]]
    end: tuple[int, int]


def members(buf: Buffer) -> Iterator[MemberLayout]:
    """The layout of every member of an archive, found from the headers and the frames' length fields alone.

    Nothing else is read or checked (a frame's checksum is checked by whoever decodes it), so a parallel reader
    splits an archive of any size into its segments at the cost of a few bytes a segment.
    """
    view, position, index = memoryview(buf), 0, 0
    while position < len(view) or not index:
        start = position
        try:
            parsed = parse_header(view[position:])
        except NotAnArchiveError:
            if index:
                raise trailing_data(position) from None
            raise
        if parsed is None:
            cut = FormatError("truncated archive (it ends inside its header)" if len(view) else "empty input")
            raise in_member(cut, index, start)
        header = (position, position + parsed[1])
        position, segments = header[1], []
        while True:
            try:
                extent = _frame_extent(view[position:])
            except FormatError as e:
                raise in_member(FormatError(f"{e} at archive byte {position:,}"), index, start) from None
            if extent is None or position + extent[3] > len(view):
                cut = FormatError(f"truncated archive (it ends inside a frame, at archive byte {position:,})")
                raise in_member(cut, index, start)
            frame = (position, position + extent[3])
            position = frame[1]
            if extent[0] == FRAME_END:
                break
            segments.append(frame)
        yield MemberLayout(header, segments, frame)
        index += 1


def in_member(error: LmpressError, index: int, start: int) -> LmpressError:
    """``error``, naming member ``index`` (from 0) of an archive, which starts at archive byte ``start``: "member N
    (from archive byte X): …" from the second member on, so that the errors of a one-member archive (nearly all)
    read as they would without members."""
    return type(error)(f"member {index + 1} (from archive byte {start:,}): {error}") if index else error


def trailing_data(start: int) -> FormatError:
    """The error for bytes after a member that do not start another one."""
    return FormatError(f"trailing data after the archive (from archive byte {start:,}), not another member")


def segment_name(index: int, offset: int, raw_size: int) -> str:
    """How errors name a segment: its index in its member and the original bytes it holds."""
    return f"segment {index} (original bytes {offset:,} to {offset + raw_size:,})"


class Tally:
    """What one member's segments have accounted for, in order: each segment must start at the original byte
    where the ones before it end, and the end marker must hold their total. A segment that is missing, repeated
    or out of place (each frame checks out on its own) is caught here, by every reader the same way."""

    def __init__(self) -> None:
        self.size = 0  # original bytes
        self.segments = 0

    def segment(self, offset: int, raw_size: int) -> str:
        """Count the next segment in, which holds original bytes [offset, offset + raw_size); its name for errors."""
        where = segment_name(self.segments, offset, raw_size)
        if offset != self.size:
            raise FormatError(
                f"corrupted archive ({where} follows original byte {self.size:,}: a segment is missing or out of order)"
            )
        self.size += raw_size
        self.segments += 1
        return where

    def end(self, total_size: int) -> None:
        if total_size != self.size:
            raise FormatError(f"corrupted archive (end marker says {total_size:,} bytes, segments hold {self.size:,})")


def segment_position(frame: Buffer) -> tuple[int, int]:
    """(offset, raw_size) of a whole segment frame, read from the start of its body alone (not checked)."""
    extent = _frame_extent(frame)
    if extent is None:
        raise FormatError("truncated archive (it ends inside a frame)")
    offset = extent[2]
    position, offset = read_uvarint(frame, offset)
    raw_size, _ = read_uvarint(frame, offset)
    return position, raw_size


def find_frame(buf: Buffer, start: int) -> int | None:
    """The first position from ``start`` where a whole frame checks out: where decoding resumes after damage."""
    view = memoryview(buf)
    for position in range(start, len(view)):
        if view[position] in (FRAME_SEGMENT, FRAME_END):
            try:
                if parse_frame(view[position:]) is not None:
                    return position
            except FormatError:
                pass
    return None


def _parse_segment(body: memoryview) -> Segment:
    start, offset = read_uvarint(body, 0)
    raw_size, offset = read_uvarint(body, offset)
    if not 0 < raw_size <= MAX_SEGMENT_BYTES:
        raise FormatError(f"corrupted archive (segment of {raw_size} bytes)")
    n, offset = read_uvarint(body, offset)
    if not 0 < n <= MAX_CHUNKS:
        raise FormatError(f"corrupted archive ({n} chunks in a segment)")
    chunks = []
    for _ in range(n):
        entry, offset = read_uvarint(body, offset)
        method, size = entry & 3, entry >> 2
        if method == METHOD_LM:
            chunk = Chunk(method, tokens=size)
        elif method == METHOD_XZ:
            coded, offset = read_uvarint(body, offset)
            chunk = Chunk(method, raw_size=size, coded_size=coded)
        elif method == METHOD_STORED:
            chunk = Chunk(method, raw_size=size, coded_size=size)
        else:
            raise FormatError(f"corrupted archive (unknown chunk method {method})")
        chunks.append(chunk)
    # Every token decodes to at least one byte, so this bounds the decoder's work by the segment's size.
    if sum(c.raw_size + c.tokens for c in chunks) > raw_size or any(
        c.method == METHOD_LM and not c.tokens for c in chunks
    ):
        raise FormatError("corrupted archive (chunk table does not fit the segment size)")
    crc, offset = _read_u32(body, offset)
    payloads = []
    for c in chunks:
        if offset + c.coded_size > len(body):
            raise _NeedMore
        payloads.append(bytes(body[offset : offset + c.coded_size]))
        offset += c.coded_size
    lm_stream = bytes(body[offset:])
    if bool(lm_stream) != any(c.method == METHOD_LM for c in chunks):
        raise FormatError("corrupted archive (chunk sizes do not add up to the frame size)")
    return Segment(start, raw_size, crc, chunks, payloads, lm_stream)
