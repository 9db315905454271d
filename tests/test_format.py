"""The archive format on its own: no model involved."""

from __future__ import annotations

import zlib

import pytest

from lmpress import format as fmt
from lmpress.errors import FormatError, UnsupportedVersionError

HEADER = fmt.Header(
    model_name="tiny ✓",
    weights_sha256="00112233445566778899aabbccddeeff",
    tokenizer_sha256="ffeeddccbbaa99887766554433221100",
    start_token=7,
    dtype="float32",
    threads=2,
    window=1024,
    keep=256,
    precision=24,
    lmpress_version="0.1.0",
    torch_version="2.13.0+cpu",
)


def test_header_round_trip_and_incremental_parse():
    raw = HEADER.to_bytes()
    for cut in range(len(raw)):
        assert fmt.parse_header(raw[:cut]) is None
    assert fmt.parse_header(raw + b"rest") == (HEADER, len(raw))


def test_segment_round_trip():
    seg = fmt.Segment(
        [fmt.Chunk(fmt.METHOD_STORED, 3, 3, 0, zlib.crc32(b"abc")), fmt.Chunk(fmt.METHOD_LM, 10, 0, 4, 1)],
        b"12345678",
        [b"abc", b""],
    )
    raw = seg.to_bytes()
    for cut in range(len(raw)):
        assert fmt.parse_frame(raw[:cut]) is None
    assert fmt.parse_frame(raw) == (seg, len(raw))
    end = fmt.End(13, 99).to_bytes()
    assert fmt.parse_frame(end) == (fmt.End(13, 99), len(end))


def test_bad_magic_is_reported_early():
    with pytest.raises(FormatError, match="not an lmpress archive"):
        fmt.parse_header(b"PK")


def test_newer_version_is_named():
    raw = bytearray(HEADER.to_bytes())
    raw[4] = fmt.VERSION + 1
    with pytest.raises(UnsupportedVersionError, match="newer"):
        fmt.parse_header(raw)


@pytest.mark.parametrize("position", [2, 12, 40, -3])
def test_header_corruption_is_detected(position):
    raw = bytearray(HEADER.to_bytes())
    raw[position] ^= 0x10
    with pytest.raises(FormatError):
        fmt.parse_header(raw)


def test_chunk_table_corruption_is_detected():
    raw = bytearray(fmt.Segment([fmt.Chunk(fmt.METHOD_STORED, 3, 3, 0, 0)], b"", [b"abc"]).to_bytes())
    raw[8] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        fmt.parse_frame(raw)


def test_unknown_frame_type():
    with pytest.raises(FormatError, match="frame type"):
        fmt.parse_frame(b"\x07abc")
