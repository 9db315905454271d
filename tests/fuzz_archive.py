#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that reads an archive, with the tiny test model.

    python tests/fuzz_archive.py fuzz-corpus -atheris_runs=1000000    # a long run (seeds made on first use)
    PATH=.venv/bin:$PATH tests/fuzz_archive.py fuzz-corpus -jobs=2 -workers=2   # one process a core; stop with ^C
    python tests/fuzz_archive.py fuzz-corpus -atheris_runs=3000       # what the test suite runs

The first byte of each input chooses how the rest is read: fed to ``Decompressor`` whole or in pieces; with
its checksums left as they are (what damage looks like) or recomputed first, so that mutations get past the
checksums into the chunk table, LZMA2 and the range-coded token stream; and through ``salvage`` (--recover)
and the ``list`` parser too. Every input must end in output or an ``LmpressError``: any other exception is a
crash, and libFuzzer keeps the input as crash-* (add it to tests/test_reliability.py as a regression test).

A process's memory grows about 1 KB an input under atheris's tracing (not without it: lmpress itself holds
nothing from one input to the next), so runs of millions of inputs a process need ``-rss_limit_mb=4096``.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

# One thread per fuzzer process, set before torch and numba start theirs: the inputs are tiny, and two
# processes' spinning thread pools on the same cores make every parallel kernel wait for a descheduled thread.
os.environ.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

import atheris  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TRAINING_TEXT, build_tiny_model  # noqa: E402

# Every module that reads archive bytes is imported here, so that its branches guide the fuzzer (lmpress imports
# them lazily, which would be after instrumentation); not kernels.py, whose compiled code cannot be traced.
with atheris.instrument_imports(include=["lmpress"]):
    import lmpress
    from lmpress import api  # noqa: F401
    from lmpress.codec import coding, segments  # noqa: F401
    from lmpress.codec import format as fmt
    from lmpress.models import load_model

MAX_CLAIMED_TOKENS = 500  # inputs whose tables claim more are skipped (seeds claim up to 225): see claimed_tokens
SETTINGS = {"chunk_size": 48, "batch": 3, "window": 24, "keep": 8}  # small: many chunks, groups, restarts


def seeds(model, dictionary) -> dict[str, bytes]:
    """Real archives of every kind of content, one byte of mode in front (0: as it is, in one piece)."""
    text = TRAINING_TEXT.encode()
    data = {
        "empty": b"",
        "text": text[:400],
        "binary": bytes(range(256)) * 2,
        "mixed": text[:150] + bytes(range(0, 256, 3)) + text[150:300],
        "segments": bytes(range(256)) * 8 + text[:300],
    }
    out = {name: bytes([0]) + lmpress.compress(d, model=model, **SETTINGS) for name, d in data.items()}
    out["dictionary"] = bytes([0]) + lmpress.compress(text[:300], model=model, dictionary=dictionary, **SETTINGS)
    return out


def training_dictionary(model):
    """A small dictionary, so that version 4 archives (made with one) are decoded, not just refused."""
    text = TRAINING_TEXT.encode()
    return lmpress.train(model, [text[i : i + 120] for i in range(0, 1200, 60)], size=8)


def reseal(archive: bytes) -> bytes:
    """``archive`` with its header and frame checksums recomputed, wherever its length fields lead."""
    out = bytearray(archive)
    try:
        _, offset = fmt.read_uvarint(out, 5)
        n, offset = fmt.read_uvarint(out, 5)
        end = offset + n
        if end + 4 > len(out):
            return bytes(out)
        struct.pack_into("<I", out, end, zlib.crc32(out[:end]))
        position = end + 4
        while position < len(out):
            length, offset = fmt.read_uvarint(out, position + 1)
            end = offset + (0 if out[position] == fmt.FRAME_END else length)
            if end + 4 > len(out):
                break
            struct.pack_into("<I", out, end, zlib.crc32(out[position:end]))
            position = end + 4
    except Exception:  # a length that runs off the end (the parser's "need more"): leave the rest as it is
        pass
    return bytes(out)


def claimed_tokens(archive: bytes) -> int:
    """Tokens the chunk tables of every frame that checks out claim, wherever it lies: what the decoder, or
    ``salvage`` resynchronising after damage, may step through.

    The decoder's work is bounded by that claim (docs/FORMAT.md, Limits), but with the tiny model's 320-token
    vocabulary the bound allows millions of steps from a few stream bytes: seconds an input, on code that
    smaller claims run as well. Skipping those keeps the fuzzer at hundreds of inputs a second.
    """
    view = memoryview(archive)
    try:
        parsed = fmt.parse_header(view)
    except lmpress.LmpressError:
        return 0
    total, position = 0, parsed[1] if parsed else len(archive)
    while (position := fmt.find_frame(view, position)) is not None:
        frame, n = fmt.parse_frame(view[position:])
        if isinstance(frame, fmt.End):
            break
        total += sum(c.tokens for c in frame.chunks)
        position += n
    return total


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, archive = data[0], data[1:]
    if mode & 1:
        archive = reseal(archive)
    if claimed_tokens(archive) > MAX_CLAIMED_TOKENS:
        return
    try:
        if mode & 2:
            for _ in lmpress.salvage(archive, MODEL, dictionary=DICTIONARY):
                pass
            return
        decoder = lmpress.Decompressor(MODEL, dictionary=DICTIONARY)
        step = 1 + (mode >> 2) * 7 if mode & 0xFC else len(archive) or 1
        for start in range(0, len(archive), step):
            if decoder.eof:
                break
            decoder.decompress(archive[start : start + step])
    except lmpress.LmpressError:
        pass


def main() -> None:
    global MODEL, DICTIONARY
    # One layer: the decoder's code is the same with more, and each input decodes in half the time.
    folder = Path(tempfile.gettempdir()) / "lmpress-fuzz-model-1-layer"
    if not folder.exists():  # built aside and renamed: a fuzzer killed meanwhile leaves no half-built model
        os.replace(build_tiny_model(Path(tempfile.mkdtemp(dir=folder.parent)) / "tiny", layers=1), folder)
    MODEL = load_model(str(folder))
    DICTIONARY = training_dictionary(MODEL)
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not any(corpus.glob("*")):
        corpus.mkdir(parents=True, exist_ok=True)
        for name, seed in seeds(MODEL, DICTIONARY).items():
            (corpus / name).write_bytes(seed)
            (corpus / f"{name}-resealed").write_bytes(bytes([1]) + seed[1:])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


MODEL = DICTIONARY = None

if __name__ == "__main__":
    main()
