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

_CHUNK = struct.Struct("<BIIII")  # method, raw size, coded size, tokens, crc32
_PREFIX = struct.Struct("<4sBH")  # magic, version, params length
_PARAMS = struct.Struct("<IBHIIB")  # start token, dtype, threads, window, keep, precision
_FRAME_HEAD = struct.Struct("<BI")  # kind, body length
_END = struct.Struct("<BQI")  # kind, total size, crc32 of everything


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
        table = struct.pack("<H", len(self.chunks)) + b"".join(
            _CHUNK.pack(c.method, c.raw_size, c.coded_size, c.tokens, c.crc32) for c in self.chunks
        )
        body = b"".join(
            [table, struct.pack("<II", zlib.crc32(table), len(self.lm_stream)), self.lm_stream, *self.payloads]
        )
        return _FRAME_HEAD.pack(FRAME_SEGMENT, len(body)) + body


@dataclass(frozen=True)
class End:
    total_size: int
    crc32: int

    def to_bytes(self) -> bytes:
        return _END.pack(FRAME_END, self.total_size, self.crc32)


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
        if len(buf) < _END.size:
            return None
        _, total, crc = _END.unpack_from(buf)
        return End(total, crc), _END.size
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
    body = memoryview(buf)[_FRAME_HEAD.size : end]
    if body_len < 10:
        raise FormatError("corrupted archive (frame too short)")
    (n,) = struct.unpack_from("<H", body)
    table_end = 2 + n * _CHUNK.size
    if table_end + 8 > body_len:
        raise FormatError("corrupted archive (chunk table overruns its frame)")
    crc, lm_len = struct.unpack_from("<II", body, table_end)
    if crc != zlib.crc32(body[:table_end]):
        raise FormatError("corrupted archive (chunk table checksum mismatch)")
    chunks = [Chunk(*_CHUNK.unpack_from(body, 2 + i * _CHUNK.size)) for i in range(n)]
    offset = table_end + 8 + lm_len
    if offset > body_len:
        raise FormatError("corrupted archive (token stream overruns its frame)")
    lm_stream = bytes(body[table_end + 8 : offset])
    payloads = []
    for c in chunks:
        if c.method not in METHOD_NAMES or (c.method == METHOD_LM and c.coded_size):
            raise FormatError(f"corrupted archive (bad chunk entry: method {c.method}, {c.coded_size} bytes)")
        payloads.append(bytes(body[offset : offset + c.coded_size]))
        offset += c.coded_size
    if offset != body_len:
        raise FormatError("corrupted archive (chunk sizes do not add up to the frame size)")
    return Segment(chunks, lm_stream, payloads), end
