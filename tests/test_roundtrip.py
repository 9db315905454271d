"""Round trips through the whole codec with a tiny model built in the test."""

from __future__ import annotations

import io
import random

import pytest
import torch
from conftest import TRAINING_TEXT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmpress
from lmpress.codec import format as fmt
from lmpress.codec import segments
from lmpress.codec.chunking import split
from lmpress.codec.settings import Settings
from lmpress.models import load_model

SMALL = {"chunk_size": 300, "batch": 4}  # several chunks and segments from small inputs


BYTE_CLASSES = {
    "empty": b"",
    "one byte": b"x",
    "ascii text": TRAINING_TEXT.encode()[:2500],
    "unicode": "Größe naïve café 東京 данные 🙂 ∑∫ — ‘quotes’\n".encode() * 30,
    "crlf": b"line one\r\nline two\r\n" * 60,
    "bom": b"\xef\xbb\xbfhello with a byte order mark\n" * 20,
    "nul": b"text\x00with\x00nuls\n" * 40,
    "long line": b"a very long line without breaks " * 200,
    "invalid utf8": b"caf\xe9 latin-1 \xff\xfe mixed with valid text\n" * 40,
    "special token text": b"<|endoftext|> looks special but is text <|endoftext|>\n" * 20,
    "binary": bytes(random.Random(0).randrange(256) for _ in range(3000)),
    "zeros": bytes(5000),
    "mixed": TRAINING_TEXT.encode()[:1200] + bytes(range(256)) * 4 + TRAINING_TEXT.encode()[:1200],
}


@pytest.mark.parametrize("name", BYTE_CLASSES)
def test_round_trip_byte_classes(tiny, name):
    data = BYTE_CLASSES[name]
    blob = lmpress.compress(data, model=tiny, **SMALL)
    assert lmpress.decompress(blob, model=tiny) == data
    assert len(blob) <= len(data) + 200 + 40 * (len(data) // 1000 + 1)


def test_text_goes_through_the_model(tiny):
    data = TRAINING_TEXT.encode()[:4000]
    comp = lmpress.Compressor(tiny, **SMALL)
    blob = comp.compress(data) + comp.flush()
    assert comp.stats.chunks.get("lm", 0) > 0
    assert comp.stats.tokens > 0
    segments = -(-len(data) // (SMALL["chunk_size"] * SMALL["batch"]))
    # The range coder costs at most a few words per segment above the ideal code length.
    assert comp.stats.ideal_bits * 0.99 <= comp.stats.lm_bytes_out * 8 <= comp.stats.ideal_bits + 64 * segments
    assert lmpress.decompress(blob, model=tiny) == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_round_trip_arbitrary_bytes(tiny, data):
    blob = lmpress.compress(data, model=tiny, chunk_size=100, batch=3)
    assert lmpress.decompress(blob, model=tiny) == data


def test_incremental_objects_and_many_segments(tiny):
    data = TRAINING_TEXT.encode() * 2
    comp = lmpress.Compressor(tiny, chunk_size=200, batch=3)
    pieces = [comp.compress(data[i : i + 777]) for i in range(0, len(data), 777)]
    blob = b"".join(pieces) + comp.flush()
    dec = lmpress.Decompressor(tiny)
    out = b"".join(dec.decompress(blob[i : i + 501]) for i in range(0, len(blob), 501))
    assert dec.eof and out == data
    with pytest.raises(ValueError):
        comp.compress(b"more")


def test_max_length_bounds_each_call_as_in_lzma(tiny):
    data = bytes(200_000) + TRAINING_TEXT.encode()[:500]  # a few archive bytes that expand enormously
    blob = lmpress.compress(data, model=tiny, chunk_size=1000)
    dec = lmpress.Decompressor(tiny)
    out = [dec.decompress(blob, max_length=40_000)]
    while not dec.eof:
        assert not dec.needs_input
        out.append(dec.decompress(b"", max_length=40_000))
    assert max(map(len, out)) == 40_000 and b"".join(out) == data and dec.unused_data == b""
    with pytest.raises(EOFError):
        dec.decompress(b"")


@pytest.mark.parametrize("keep", [0, 8, 22])
def test_context_restarts_round_trip(tiny, keep):
    data = TRAINING_TEXT.encode()[:3000]
    comp = lmpress.Compressor(tiny, window=24, keep=keep, chunk_size=1000)
    blob = comp.compress(data) + comp.flush()
    assert comp.stats.tokens > 3 * 24  # every chunk restarts its context more than once
    assert lmpress.decompress(blob, model=tiny) == data


def test_decoding_at_other_thread_settings(tiny):
    data = TRAINING_TEXT.encode()[:2000]
    blob = lmpress.compress(data, model=tiny, threads=2, **SMALL)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert lmpress.decompress(blob, model=tiny) == data
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


def test_wrong_model_is_refused(tiny, other_model_dir):
    blob = lmpress.compress(b"some text for the model\n" * 10, model=tiny)
    with pytest.raises(lmpress.ModelMismatchError, match="tiny"):
        lmpress.decompress(blob, model=str(other_model_dir))


def test_pickle_weights_are_never_loaded(tiny_model_dir, tmp_path):
    """A folder whose weights are a pickle (pytorch_model.bin) is refused, with what to do instead."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(lmpress.ModelUnavailableError, match="no .safetensors weights.*pickle"):
        load_model(str(folder))


def test_truncated_and_trailing(tiny):
    blob = lmpress.compress(TRAINING_TEXT.encode()[:1000], model=tiny, **SMALL)
    for cut in (0, 3, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(lmpress.FormatError):
            lmpress.decompress(blob[:cut], model=tiny)
    with pytest.raises(lmpress.FormatError, match="trailing"):
        lmpress.decompress(blob + b"x", model=tiny)


def test_every_reader_names_a_member_the_same_way(tiny):
    """The streaming reader and the layout walk of parallel readers say the same of what follows a member."""
    blob = lmpress.compress(b"two members", model=tiny, **SMALL)
    for after in (b"xyz", blob[:7]):
        with pytest.raises(lmpress.FormatError) as streamed:
            lmpress.decompress(blob + after, model=tiny)
        with pytest.raises(lmpress.FormatError) as walked:
            list(fmt.members(blob + after))
        assert str(streamed.value) == str(walked.value)
        assert f"archive byte {len(blob):,}" in str(streamed.value)
    with pytest.raises(lmpress.NotAnArchiveError):
        lmpress.decompress(b"PK\x03\x04 a zip file", model=tiny)


def test_corrupted_payload_names_the_segment(tiny):
    data = TRAINING_TEXT.encode()[:2000]
    blob = bytearray(lmpress.compress(data, model=tiny, **SMALL))
    blob[-10] ^= 0x55  # inside the last segment's token stream
    with pytest.raises(lmpress.LmpressError, match=r"frame checksum mismatch\) in segment \d+ at archive byte"):
        lmpress.decompress(bytes(blob), model=tiny)


def test_fuzzed_archives_never_give_wrong_output(tiny):
    data = TRAINING_TEXT.encode()[:1500] + bytes(range(200))
    blob = lmpress.compress(data, model=tiny, **SMALL)
    rng = random.Random(1)
    for _ in range(60):
        damaged = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.3:
            del damaged[rng.randrange(len(damaged)) :]
        try:
            out = lmpress.decompress(bytes(damaged), model=tiny)
        except lmpress.LmpressError:
            continue
        assert out == data


def test_file_objects(tiny, tmp_path):
    path = tmp_path / "f.lmp"
    data = TRAINING_TEXT.encode()[:1500]
    with lmpress.open(path, "wb", model=tiny, **SMALL) as f:
        f.write(data[:700])
        f.write(data[700:])
    with lmpress.open(path, "rb", model=tiny) as f:
        assert f.read(10) == data[:10] and f.tell() == 10
        assert f.peek(1)[:1] == data[10:11] and f.read1(5) == data[10:15]
        assert f.read() == data[15:]
        assert f.seek(-5, io.SEEK_END) == len(data) - 5 and f.read() == data[-5:]
        assert f.seek(3) == 3 and f.read(4) == data[3:7]  # backwards: decoded again from the start
    with pytest.raises(ValueError, match="closed"):
        f.read()
    with lmpress.open(path, "rt", model=tiny, encoding="utf-8") as f:
        assert f.readline() == data.decode().splitlines(keepends=True)[0]
    buf = io.BytesIO()
    with lmpress.open(buf, "wb", model=tiny) as f:
        f.write(b"to a file object")
    assert lmpress.decompress(buf.getvalue(), model=tiny) == b"to a file object"
    with pytest.raises(ValueError):
        lmpress.open(path, "ab")


def test_split_respects_lines_and_characters():
    data = ("ünïcödé line\n" * 100).encode()
    pieces = split(data, Settings(chunk_size=97, batch=64))
    assert b"".join(pieces) == data and len(pieces) > 1
    for p in pieces:
        p.decode("utf-8")


def test_bad_settings():
    with pytest.raises(ValueError):
        Settings(window=10, keep=9)


def test_start_token_is_taken_from_the_archive(tiny):
    data = TRAINING_TEXT.encode()[:1500]
    comp = lmpress.Compressor(tiny, start_token=5, **SMALL)
    blob = comp.compress(data) + comp.flush()
    assert comp.header.start_token == 5 != tiny.start_token
    assert comp.stats.chunks.get("lm", 0) > 0
    assert lmpress.decompress(blob, model=tiny) == data


def test_chunks_are_decoded_in_groups(tiny, monkeypatch):
    """A segment of many chunks decodes batch of them at a time: that many contexts, whatever its size."""
    data = TRAINING_TEXT.encode()[:3000]
    comp = lmpress.Compressor(tiny, chunk_size=150, batch=3)
    blob = comp.compress(data) + comp.flush()
    assert comp.stats.chunks["lm"] > 6
    seen = []
    original = segments.Lockstep.__init__

    def spy(self, lm, lengths, settings, guess=None):
        seen.append(len(lengths))
        original(self, lm, lengths, settings, guess)

    monkeypatch.setattr(segments.Lockstep, "__init__", spy)
    assert lmpress.decompress(blob, model=tiny) == data
    assert max(seen) == 3 and sum(seen) == comp.stats.chunks["lm"]


@pytest.mark.parametrize("mixer", ["", "match-v1", "cm-v1"])
def test_repeated_records_decode_in_fewer_model_steps(tiny, monkeypatch, mixer):
    """Lines that repeat are guessed (``codec.drafts``), several tokens checked by one model step: the bytes are
    the same, with fewer steps, in one row at a time and in several side by side."""
    data = TRAINING_TEXT.encode()[:2400]
    made = []
    original = segments.Lockstep.__init__

    def spy(self, *args):
        made.append(self)
        original(self, *args)

    monkeypatch.setattr(segments.Lockstep, "__init__", spy)
    for chunk_size, batch in ((150, 1), (150, 4)):
        blob = lmpress.compress(data, tiny, chunk_size=chunk_size, batch=batch, mixer=mixer)
        made.clear()
        assert lmpress.decompress(blob, tiny) == data
        assert sum(s.tally.passes for s in made) < 0.6 * sum(s.step for s in made)


def test_the_old_name_of_batch_still_works(tiny):
    """``max_batch`` (lmpress 0.3's name) is read as ``batch``, with a warning that names the new one."""
    with pytest.warns(DeprecationWarning, match="now called batch"):
        blob = lmpress.compress(TRAINING_TEXT.encode()[:600], tiny, chunk_size=200, max_batch=2)
    assert lmpress.decompress(blob, tiny) == TRAINING_TEXT.encode()[:600]
    assert blob == lmpress.compress(TRAINING_TEXT.encode()[:600], tiny, chunk_size=200, batch=2)
