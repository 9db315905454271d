"""The archive format on its own: no model involved."""

from __future__ import annotations

import dataclasses
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmpress.codec import format as fmt
from lmpress.errors import FormatError, UnsupportedVersionError

HEADER = fmt.Header(
    model_name="tiny ✓",
    model_id="0011223344556677",
    engine="int8-v1",
    start_token=7,
    window=1024,
    keep=256,
    batch=24,
)


def test_header_round_trip_and_incremental_parse():
    raw = HEADER.to_bytes()
    for cut in range(len(raw)):
        assert fmt.parse_header(raw[:cut]) is None
    assert fmt.parse_header(raw + b"rest") == (HEADER, len(raw))


def test_default_model_name_is_stored_empty():
    default = dataclasses.replace(HEADER, model_name=fmt.DEFAULT_MODEL)
    raw = default.to_bytes()
    assert len(raw) == 25  # what FORMAT.md promises for the default model and settings
    assert len(HEADER.to_bytes()) == 25 + len("tiny ✓".encode())
    assert fmt.parse_header(raw) == (default, len(raw))


def test_a_dictionary_header_names_the_dictionary_instead_of_the_model():
    made = dataclasses.replace(HEADER, model_name=fmt.DEFAULT_MODEL, dictionary="a1b2c3d4")
    raw = made.to_bytes()
    assert raw[4] == 4 and len(raw) == 25 - fmt.MODEL_ID_BYTES + fmt.DICTIONARY_ID_BYTES
    assert fmt.parse_header(raw) == (dataclasses.replace(made, model_id=""), len(raw))
    assert HEADER.to_bytes()[4] == 3  # without a dictionary, archives are written as version 3, as before
    for cut in range(len(raw)):
        assert fmt.parse_header(raw[:cut]) is None


def test_segment_round_trip():
    seg = fmt.Segment(
        1_000_000,
        400,
        zlib.crc32(b"abc"),
        [
            fmt.Chunk(fmt.METHOD_STORED, 3, 3),
            fmt.Chunk(fmt.METHOD_LM, tokens=4),
            fmt.Chunk(fmt.METHOD_XZ, 300, 2),
            fmt.Chunk(fmt.METHOD_LM, tokens=90),
        ],
        [b"abc", b"", b"xy", b""],
        b"12345678",
    )
    raw = seg.to_bytes()
    for cut in range(len(raw)):
        assert fmt.parse_frame(raw[:cut]) is None
    assert fmt.parse_frame(raw) == (seg, len(raw))
    end = fmt.End(13).to_bytes()
    assert fmt.parse_frame(end) == (fmt.End(13), len(end))


def test_bad_magic_is_reported_early():
    with pytest.raises(FormatError, match="not an lmpress archive"):
        fmt.parse_header(b"PK")


def test_newer_version_is_named():
    raw = bytearray(HEADER.to_bytes())
    raw[4] = fmt.VERSION + 1
    with pytest.raises(UnsupportedVersionError, match="newer"):
        fmt.parse_header(raw)


@pytest.mark.parametrize("position", [2, 6, 12, 20, -3])
def test_header_corruption_is_detected(position):
    raw = bytearray(HEADER.to_bytes())
    raw[position] ^= 0x10
    with pytest.raises(FormatError):
        fmt.parse_header(raw)


def test_chunk_table_must_fit_the_segment():
    """Token counts are bounded by the segment size, so a damaged table cannot make the decoder run away."""
    lm = fmt.Segment(0, 10, 0, [fmt.Chunk(fmt.METHOD_LM, tokens=11)], [b""], b"1234")
    with pytest.raises(FormatError, match="does not fit"):
        fmt.parse_frame(lm.to_bytes())
    stored = fmt.Segment(0, 3, 0, [fmt.Chunk(fmt.METHOD_STORED, 3, 3)], [b"abc"], b"!")  # a stream, but no LM chunk
    with pytest.raises(FormatError, match="add up"):
        fmt.parse_frame(stored.to_bytes())
    with pytest.raises(FormatError, match="segment of"):
        fmt.parse_frame(
            fmt.Segment(
                0, fmt.MAX_SEGMENT_BYTES + 1, 0, [fmt.Chunk(fmt.METHOD_LM, tokens=1)], [b""], b"1234"
            ).to_bytes()
        )


def test_every_damaged_byte_of_a_frame_is_caught_before_decoding():
    seg = fmt.Segment(
        0, 9, 7, [fmt.Chunk(fmt.METHOD_STORED, 3, 3), fmt.Chunk(fmt.METHOD_LM, tokens=2)], [b"abc", b""], b"wxyz"
    )
    for raw in (seg.to_bytes(), fmt.End(9).to_bytes()):
        for i in range(len(raw)):
            for bit in range(8):
                damaged = bytearray(raw)
                damaged[i] ^= 1 << bit
                try:
                    parsed = fmt.parse_frame(damaged)
                except FormatError:
                    continue
                assert parsed is None  # a damaged length can only ask for more bytes, never pass


def test_find_frame_skips_damage():
    seg = fmt.Segment(5, 3, 7, [fmt.Chunk(fmt.METHOD_STORED, 3, 3)], [b"\x01\xff\x01"], b"").to_bytes()
    junk = b"\x01\x05\xff\x00\x01garbage\xff"
    assert fmt.find_frame(junk + seg + fmt.End(8).to_bytes(), 0) == len(junk)
    assert fmt.find_frame(junk + seg, len(junk) + 1) is None
    assert fmt.find_frame(seg + fmt.End(8).to_bytes(), 1) == len(seg)


def test_old_versions_are_named():
    raw = bytearray(HEADER.to_bytes())
    raw[4] = 1
    with pytest.raises(FormatError, match="pre-release"):
        fmt.parse_header(raw)
    raw[4] = 2  # the float engine's archives: readable only where they were made
    with pytest.raises(UnsupportedVersionError, match="lmpress 0.1.*on that machine"):
        fmt.parse_header(raw)


def test_unknown_engine_and_oversized_window_are_refused():
    params = bytes.fromhex(HEADER.model_id) + bytes([9, 7]) + fmt.uvarint(1024) + fmt.uvarint(256) + bytes([24])
    head = fmt.MAGIC + bytes([3]) + fmt.uvarint(len(params)) + params  # a version 3 block: the model id first
    with pytest.raises(UnsupportedVersionError, match="engine 9"):
        fmt.parse_header(head + zlib.crc32(head).to_bytes(4, "little"))
    with pytest.raises(FormatError, match="window"):
        fmt.parse_header(dataclasses.replace(HEADER, window=fmt.MAX_WINDOW + 1).to_bytes())
    with pytest.raises(FormatError, match="batch"):
        fmt.parse_header(dataclasses.replace(HEADER, batch=0).to_bytes())


def test_unknown_frame_type():
    with pytest.raises(FormatError, match="frame type"):
        fmt.parse_frame(b"\x07abc")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200), st.binary(max_size=8))
def test_parser_never_fails_unclearly(junk, position, patch):
    """Any bytes, or a valid archive with bytes overwritten: a parse result, "need more", or a FormatError."""
    seg = fmt.Segment(
        0, 12, 5, [fmt.Chunk(fmt.METHOD_XZ, 4, 3), fmt.Chunk(fmt.METHOD_LM, tokens=2)], [b"xyz", b""], b"\x00" * 8
    )
    valid = bytearray(HEADER.to_bytes() + seg.to_bytes() + fmt.End(12).to_bytes())
    valid[position : position + len(patch)] = patch
    for buf in (junk, fmt.MAGIC + junk, bytes(valid)):
        try:
            parsed, offset = fmt.parse_header(buf), 0
            while parsed is not None and not isinstance(parsed[0], fmt.End):
                offset += parsed[1]
                parsed = fmt.parse_frame(memoryview(buf)[offset:])
        except FormatError:
            pass


def test_impossible_context_settings_are_a_format_error():
    for window, keep in [(1, 0), (64, 63)]:
        with pytest.raises(FormatError, match="window"):
            fmt.parse_header(dataclasses.replace(HEADER, window=window, keep=keep).to_bytes())


def test_members_are_found_from_lengths_alone():
    seg = fmt.Segment(0, 3, 7, [fmt.Chunk(fmt.METHOD_STORED, 3, 3)], [b"abc"], b"").to_bytes()
    one = HEADER.to_bytes() + seg + seg + fmt.End(6).to_bytes()  # the layout reads no offset
    two = HEADER.to_bytes() + fmt.End(0).to_bytes()
    layout = list(fmt.members(one + two))
    h = len(HEADER.to_bytes())
    assert [m.header for m in layout] == [(0, h), (len(one), len(one) + h)]
    assert layout[0].segments == [(h, h + len(seg)), (h + len(seg), h + 2 * len(seg))] and layout[1].segments == []
    assert layout[1].end == (len(one) + h, len(one + two))
    assert fmt.segment_position(seg) == (0, 3)
    damaged = bytearray(one)
    damaged[h + 6] ^= 0xFF  # inside a payload: only the frame's checksum, which this does not read, would tell
    assert len(list(fmt.members(bytes(damaged)))) == 1
    with pytest.raises(FormatError, match="trailing data"):
        list(fmt.members(one + b"xyz"))
    with pytest.raises(FormatError, match=r"member 2 \(from archive byte [\d,]+\): truncated archive \(it ends inside"):
        list(fmt.members(one + two[:7]))
    with pytest.raises(FormatError, match="ends inside a frame"):
        list(fmt.members(one[:-2]))
    with pytest.raises(FormatError, match="unknown frame type 0x07\\) at archive byte"):
        list(fmt.members(HEADER.to_bytes() + b"\x07"))
