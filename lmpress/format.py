"""The .lmp archive format: byte layout, and a parser that is fed bytes as they arrive.

``docs/FORMAT.md`` is the specification; this module is its one implementation.
All integers are little-endian. Parsing never trusts a length it has not bounded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import FormatError, UnsupportedVersionError

MAGIC = b"LMPZ"
VERSION = 1

FRAME_SEGMENT = 0x01
FRAME_END = 0xFF

METHOD_STORED = 0
METHOD_XZ = 1
METHOD_LM = 2
METHOD_NAMES = {METHOD_STORED: "stored", METHOD_XZ: "xz", METHOD_LM: "lm"}

MAX_FRAME_BYTES = 1 << 31
MAX_CHUNKS = 0xFFFF

_PREFIX = struct.Struct("<4sBH")  # magic, version, params length
_PARAMS = struct.Struct("<IBHIIB")  # start token, dtype, threads, window, keep, precision
_FRAME_HEAD = struct.Struct("<BI")  # kind, body length
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
    return struct.unpack_from("<I", buf, offset)[0], offset + 4


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Header:
    """Everything the decoder must reproduce: which model, and how it was run.

    Hashes are the first 16 bytes of the sha256 digests, stored raw (hex here).
    """

    model_name: str
    weights_sha256: str
    tokenizer_sha256: str
    start_token: int
    dtype: str
    threads: int
    window: int
    keep: int
    precision: int
    lmpress_version: str
    torch_version: str

    def to_bytes(self) -> bytes:
        params = b"".join(
            [
                bytes.fromhex(self.weights_sha256[:32]),
                bytes.fromhex(self.tokenizer_sha256[:32]),
                _PARAMS.pack(
                    self.start_token, DTYPES.index(self.dtype), self.threads, self.window, self.keep, self.precision
                ),
                *(_short_string(s) for s in (self.model_name, self.lmpress_version, self.torch_version)),
            ]
        )
        head = _PREFIX.pack(MAGIC, VERSION, len(params)) + params
        return head + struct.pack("<I", zlib.crc32(head))

    @classmethod
    def from_params(cls, params: bytes) -> Header:
        start, dtype, threads, window, keep, precision = _PARAMS.unpack_from(params, 32)
        strings, offset = [], 32 + _PARAMS.size
        for _ in range(3):
            n = params[offset]
            strings.append(params[offset + 1 : offset + 1 + n].decode("utf-8"))
            offset += 1 + n
        if offset != len(params) or dtype >= len(DTYPES):
            raise ValueError("malformed parameters")
        return cls(
            strings[0],
            params[:16].hex(),
            params[16:32].hex(),
            start,
            DTYPES[dtype],
            threads,
            window,
            keep,
            precision,
            strings[1],
            strings[2],
        )


def _short_string(s: str) -> bytes:
    raw = s.encode("utf-8")[:255].decode("utf-8", "ignore").encode("utf-8")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True)
class Chunk:
    method: int
    raw_size: int
    coded_size: int
    tokens: int
    crc32: int


@dataclass(frozen=True)
class Segment:
    """A chunk table, the range-coded tokens of all LM chunks, and the other chunks' payloads.

    ``payloads[i]`` is chunk i's own bytes (empty for LM chunks, whose ``coded_size`` is 0).
    """

    chunks: list[Chunk]
    lm_stream: bytes
    payloads: list[bytes]

    def to_bytes(self) -> bytes:
        table = uvarint(len(self.chunks)) + b"".join(
            bytes([c.method])
            + uvarint(c.raw_size)
            + uvarint(c.tokens if c.method == METHOD_LM else c.coded_size)
            + struct.pack("<I", c.crc32)
            for c in self.chunks
        )
        body = b"".join(
            [table, struct.pack("<I", zlib.crc32(table)), uvarint(len(self.lm_stream)), self.lm_stream, *self.payloads]
        )
        return _FRAME_HEAD.pack(FRAME_SEGMENT, len(body)) + body


@dataclass(frozen=True)
class End:
    total_size: int
    crc32: int

    def to_bytes(self) -> bytes:
        return bytes([FRAME_END]) + uvarint(self.total_size) + struct.pack("<I", self.crc32)


def parse_header(buf: bytes | bytearray) -> tuple[Header, int] | None:
    """The header at the start of ``buf`` and its length, or None if more bytes are needed."""
    if len(buf) < _PREFIX.size:
        if not MAGIC.startswith(bytes(buf[:4])):
            raise FormatError("not an lmpress archive (bad magic bytes)")
        return None
    magic, version, n = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError("not an lmpress archive (bad magic bytes)")
    if version > VERSION:
        raise UnsupportedVersionError(
            f"archive format version {version} is newer than this lmpress reads ({VERSION}); upgrade lmpress"
        )
    if version != VERSION:
        raise FormatError(f"corrupted archive header (version {version}, {n}-byte parameters)")
    end = _PREFIX.size + n + 4
    if len(buf) < end:
        return None
    (crc,) = struct.unpack_from("<I", buf, end - 4)
    if crc != zlib.crc32(bytes(buf[: end - 4])):
        raise FormatError("corrupted archive header (checksum mismatch)")
    try:
        header = Header.from_params(bytes(buf[_PREFIX.size : end - 4]))
    except (ValueError, IndexError, struct.error) as e:
        raise FormatError(f"corrupted archive header ({e})") from None
    return header, end


def parse_frame(buf: bytes | bytearray) -> tuple[Segment | End, int] | None:
    """The frame at the start of ``buf`` and its length, or None if more bytes are needed."""
    if not buf:
        return None
    kind = buf[0]
    if kind == FRAME_END:
        try:
            total, offset = read_uvarint(buf, 1)
            crc, offset = _read_u32(buf, offset)
        except _NeedMore:
            return None
        return End(total, crc), offset
    if kind != FRAME_SEGMENT:
        raise FormatError(f"corrupted archive (unknown frame type 0x{kind:02x})")
    if len(buf) < _FRAME_HEAD.size:
        return None
    _, body_len = _FRAME_HEAD.unpack_from(buf)
    if body_len > MAX_FRAME_BYTES:
        raise FormatError(f"corrupted archive (frame of {body_len} bytes)")
    end = _FRAME_HEAD.size + body_len
    if len(buf) < end:
        return None
    try:
        return _parse_segment(memoryview(buf)[_FRAME_HEAD.size : end]), end
    except _NeedMore:
        raise FormatError("corrupted archive (segment contents overrun its frame)") from None


def _parse_segment(body: memoryview) -> Segment:
    n, offset = read_uvarint(body, 0)
    if n > MAX_CHUNKS:
        raise FormatError(f"corrupted archive ({n} chunks in a segment)")
    chunks = []
    for _ in range(n):
        if offset >= len(body):
            raise _NeedMore
        method = body[offset]
        raw_size, offset = read_uvarint(body, offset + 1)
        size_or_tokens, offset = read_uvarint(body, offset)
        crc, offset = _read_u32(body, offset)
        if method not in METHOD_NAMES:
            raise FormatError(f"corrupted archive (unknown chunk method {method})")
        if method == METHOD_LM:
            chunks.append(Chunk(method, raw_size, 0, size_or_tokens, crc))
        else:
            chunks.append(Chunk(method, raw_size, size_or_tokens, 0, crc))
    table_crc, table_end = _read_u32(body, offset)
    if table_crc != zlib.crc32(body[:offset]):
        raise FormatError("corrupted archive (chunk table checksum mismatch)")
    lm_len, offset = read_uvarint(body, table_end)
    if offset + lm_len > len(body):
        raise _NeedMore
    lm_stream = bytes(body[offset : offset + lm_len])
    offset += lm_len
    payloads = []
    for c in chunks:
        if offset + c.coded_size > len(body):
            raise _NeedMore
        payloads.append(bytes(body[offset : offset + c.coded_size]))
        offset += c.coded_size
    if offset != len(body):
        raise FormatError("corrupted archive (chunk sizes do not add up to the frame size)")
    return Segment(chunks, lm_stream, payloads)
