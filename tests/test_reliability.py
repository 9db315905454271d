"""Damaged archives: every corruption is caught (or harmless), and the intact segments can be recovered."""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRAINING_TEXT

import lmpress
from lmpress.codec import format as fmt
from lmpress.partial import Part, partial

TEXT = TRAINING_TEXT.encode()
SEGMENTED = {"chunk_size": 40, "batch": 64}  # 64 chunks of ~40 bytes a segment: several segments from 7 KB
ARCHIVES = {
    "empty": b"",
    "text": TEXT[:700],
    "binary": bytes(random.Random(3).randrange(256) for _ in range(600)),
    "mixed": TEXT[:300] + bytes(range(256)) + TEXT[300:600],
    # Classical segments, then the LM one: a case damaging segment k decodes segments 0..k-1 first, and the
    # model's are the slow ones (a frame's damage is caught before any of it is decoded).
    "segments": bytes(range(256)) * 12 + bytes(3000) + TEXT[:900],
}


@pytest.fixture(scope="module")
def dictionary(tiny):
    return lmpress.train(tiny, [TEXT[i : i + 120] for i in range(0, 2400, 60)], size=32)


@pytest.fixture(scope="module")
def archives(tiny, dictionary):
    out = {name: (data, lmpress.compress(data, model=tiny, **SEGMENTED)) for name, data in ARCHIVES.items()}
    # Made with a dictionary: a version 4 header, which names the dictionary instead of the model.
    out["dictionary"] = (TEXT[:700], lmpress.compress(TEXT[:700], model=tiny, dictionary=dictionary, **SEGMENTED))
    return out


def fields(blob: bytes) -> list[tuple[str, int, int]]:
    """The archive's structure as (name, start, end) byte ranges: where the matrix damages and cuts."""
    header, pos = fmt.parse_header(blob)
    out = [("header", 0, pos)]
    index = 0
    while True:
        frame, n = fmt.parse_frame(memoryview(blob)[pos:])
        if isinstance(frame, fmt.End):
            out.append(("end marker", pos, pos + n))
            return out
        body = pos + 1 + len(fmt.uvarint(n - 5 - len(fmt.uvarint(n))))  # kind, body_len
        table = body + len(fmt.uvarint(frame.offset) + fmt.uvarint(frame.raw_size) + fmt.uvarint(len(frame.chunks)))
        crc = table + sum(len(c.to_bytes()) for c in frame.chunks)
        payloads = crc + 4
        stream = payloads + sum(len(p) for p in frame.payloads)
        name = f"segment {index}"
        out += [
            (f"{name} kind and length", pos, body),
            (f"{name} offset, size, chunk count", body, table),
            (f"{name} chunk table", table, crc),
            (f"{name} crc32", crc, payloads),
            (f"{name} payloads", payloads, stream),
            (f"{name} token stream", stream, pos + n - 4),
            (f"{name} frame crc32", pos + n - 4, pos + n),
        ]
        pos, index = pos + n, index + 1


def outcome(blob: bytes, tiny, dictionary) -> bytes | str:
    try:
        return lmpress.decompress(blob, model=tiny, dictionary=dictionary)  # archives that need none ignore it
    except lmpress.LmpressError as e:
        return str(e)


def test_corruption_matrix(archives, tiny, dictionary):
    """Every byte of every structural field damaged three ways, and cuts at every field boundary: each case
    decodes exactly or fails with a one-line LmpressError (naming the segment, inside one); nothing else."""
    cases = detected = 0
    for name, (data, blob) in archives.items():
        structure = fields(blob)
        assert sum(end - start for _, start, end in structure) == len(blob)
        for field, start, end in structure:
            for position in range(start, end):
                for mask in (0x01, 0x80, 0xFF):
                    damaged = bytearray(blob)
                    damaged[position] ^= mask
                    result = outcome(bytes(damaged), tiny, dictionary)
                    cases += 1
                    if result == data:
                        continue
                    assert isinstance(result, str), f"{name}, {field}, byte {position}: wrong output"
                    assert "\n" not in result
                    if field.startswith("segment"):
                        assert field.split()[0] + " " + field.split()[1] in result, (field, result)
                    detected += 1
        cuts = {p for _, start, end in structure for p in (start, start + 1, end - 1)} - {len(blob)}
        for cut in sorted(cuts):
            result = outcome(blob[:cut], tiny, dictionary)
            assert isinstance(result, str) and "\n" not in result
            cases += 1
            detected += 1
        assert "trailing" in outcome(blob + b"\x00", tiny, dictionary)  # garbage after the archive
        assert "member 2 (from archive byte" in outcome(blob + b"LMPZ", tiny, dictionary)  # a second one cut short
        cases, detected = cases + 2, detected + 2
        assert outcome(blob + blob, tiny, dictionary) == data + data  # two archives concatenated: two members
    print(f"corruption matrix: {cases} cases, {detected} detected, {cases - detected} harmless")
    assert detected == cases  # every field is under a checksum: no damage goes unnoticed


def test_every_segment_is_checked_on_its_own(archives, tiny):
    """A segment moved, dropped or repeated is named, even though each frame checks out."""
    _, blob = archives["segments"]
    structure = fields(blob)
    starts = [s for f, s, _ in structure if f.endswith("kind and length")] + [structure[-1][1]]
    header, first, second = blob[: starts[0]], blob[starts[0] : starts[1]], blob[starts[1] : starts[2]]
    rest = blob[starts[2] :]
    for reordered in (header + second + first + rest, header + second + rest, header + first + first + second + rest):
        with pytest.raises(lmpress.FormatError, match="missing or out of order"):
            lmpress.decompress(reordered, model=tiny)


def test_recover_returns_every_intact_segment(archives, tiny):
    data, blob = archives["segments"]
    structure = fields(blob)
    assert sum(f.endswith("kind and length") for f, _, _ in structure) >= 3
    pieces = list(lmpress.salvage(blob, model=tiny))
    assert b"".join(pieces) == data
    for damaged_field in ("segment 1 token stream", "segment 1 chunk table", "segment 1 kind and length"):
        start, end = next((s, e) for f, s, e in structure if f == damaged_field)
        damaged = bytearray(blob)
        damaged[(start + end) // 2] ^= 0x40
        out, lost = lmpress.recover(bytes(damaged), model=tiny)
        lo, hi = len(pieces[0]), len(pieces[0]) + len(pieces[1])
        assert [(d.start, d.end) for d in lost] == [(lo, hi)], (damaged_field, lost)
        assert out == data[:lo] + data[hi:]
    cut = blob[: structure[-2][1]]  # the last segment's frame crc and the end marker are gone
    out, lost = lmpress.recover(cut, model=tiny)
    lo = sum(map(len, pieces[:-1]))
    assert out == data[:lo] and [(d.start, d.end) for d in lost] == [(lo, None)]


def test_recover_reads_on_through_every_member(archives, tiny):
    """In an archive of several members, damage in one costs its own segments, not the members after it."""
    (first, one), (second, two) = archives["segments"], archives["text"]
    structure = fields(one)
    start, end = next((s, e) for f, s, e in structure if f == "segment 1 token stream")
    damaged = bytearray(one + two)
    damaged[(start + end) // 2] ^= 0x40
    out, lost = lmpress.recover(bytes(damaged), model=tiny)
    pieces = list(lmpress.salvage(one, model=tiny))
    lo, hi = len(pieces[0]), len(pieces[0]) + len(pieces[1])
    assert out == first[:lo] + first[hi:] + second and [(d.start, d.end) for d in lost] == [(lo, hi)]
    out, lost = lmpress.recover(one + two + b"junk", model=tiny)
    assert out == first + second and [(d.start, d.end) for d in lost] == [(len(first + second), None)]


def test_recover_command_writes_what_is_intact(archives, tiny, tiny_model_dir, tmp_path):
    data, blob = archives["segments"]
    start, end = next((s, e) for f, s, e in fields(blob) if f == "segment 0 payloads")
    damaged = bytearray(blob)
    damaged[start + 5] ^= 0x01
    (tmp_path / "d.lmp").write_bytes(damaged)
    run = [sys.executable, "-m", "lmpress", "decompress", "--model", str(tiny_model_dir), str(tmp_path / "d.lmp")]
    plain = subprocess.run(run, capture_output=True, timeout=300)
    assert plain.returncode == 1 and b"--recover" in plain.stderr and not (tmp_path / "d").exists()
    r = subprocess.run([*run, "--recover"], capture_output=True, timeout=300)
    lost = len(lmpress.decompress(blob, model=tiny)) - len((tmp_path / "d").read_bytes())
    assert r.returncode == 3, r.stderr
    assert b"original bytes 0 to" in r.stderr and b"Traceback" not in r.stderr
    assert (tmp_path / "d").read_bytes() == data[lost:]


def test_list_and_recover_of_damaged_archives_are_one_line(archives, tiny_model_dir, tmp_path):
    _, blob = archives["segments"]
    cases = {"damaged": blob[:40] + bytes([blob[40] ^ 1]) + blob[41:], "short": blob[:20]}
    for name, data in cases.items():
        (tmp_path / f"{name}.lmp").write_bytes(data)
        for args in (["list"], ["decompress", "--recover", "-c", "--model", str(tiny_model_dir)]):
            command = [sys.executable, "-m", "lmpress", *args, str(tmp_path / f"{name}.lmp")]
            r = subprocess.run(command, capture_output=True, timeout=300)
            assert r.returncode in (1, 3) and b"Traceback" not in r.stderr, (name, args, r.stderr)


def test_chunk_table_cannot_claim_more_tokens_than_the_stream_holds(tiny):
    """A table whose checksums are right but whose token count is absurd (a crafted archive) is refused
    before the model runs."""
    data = TEXT[:200]
    blob = lmpress.compress(data, model=tiny)
    header, pos = fmt.parse_header(blob)
    segment, n = fmt.parse_frame(blob[pos:])
    assert segment.chunks[0].method == fmt.METHOD_LM
    bloated = fmt.Segment(
        0, fmt.MAX_SEGMENT_BYTES, segment.crc32, [fmt.Chunk(fmt.METHOD_LM, tokens=10**8)], [b""], segment.lm_stream
    )
    crafted = blob[:pos] + bloated.to_bytes() + fmt.End(fmt.MAX_SEGMENT_BYTES).to_bytes()
    with pytest.raises(lmpress.FormatError, match="more tokens than its stream can hold"):
        lmpress.decompress(crafted, model=tiny)


def test_short_fuzz_pass(tmp_path):
    """CI's share of the fuzzing (tests/fuzz_archive.py): 3,000 inputs grown from real archives, no crash."""
    pytest.importorskip("atheris")
    fuzzer = Path(__file__).with_name("fuzz_archive.py")
    # libFuzzer reads the process's peak RSS, which Linux carries over from the process that started it: this
    # test process's, grown by every model loaded before it. Its default 2 GB limit then fails at the first input
    # (seen in CI), so the limit here is for the fuzzer's own growth over a short run, not the parent's.
    limit = 2048 + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    command = [sys.executable, str(fuzzer), str(tmp_path / "corpus"), "-atheris_runs=3000", f"-rss_limit_mb={limit}"]
    r = subprocess.run([*command, f"-artifact_prefix={tmp_path}/"], capture_output=True, timeout=900)
    assert r.returncode == 0 and b"Done 3000" in r.stderr, r.stderr[-3000:].decode(errors="replace")


def test_fuzzer_findings(tiny):
    """Inputs the fuzzer found crashing, as regression tests: each must be a clear LmpressError."""
    header = fmt.Header(tiny.name, tiny.model_id, "int8-v1", start_token=3065, window=64, keep=8, batch=2)
    segment = lmpress.compress(TEXT[:100], model=tiny, window=64, keep=8, batch=2)[len(header.to_bytes()) :]
    with pytest.raises(lmpress.FormatError, match="start token 3065 is outside"):
        lmpress.decompress(header.to_bytes() + segment, model=tiny)


@pytest.fixture(scope="module")
def text_segments(tiny):
    """Text in several segments: a lost one is invented by the model from the text before it."""
    data = TEXT[:1900]
    blob = lmpress.compress(data, model=tiny, chunk_size=10)  # 640 bytes a segment
    assert sum(f.endswith("kind and length") for f, _, _ in fields(blob)) >= 3
    return data, blob


def check_partial(made, data: bytes) -> None:
    """Every byte said to be verified is the original's; the parts cover the output in order; the output has
    the original length unless the archive lost where it ends."""
    assert [p.start for p in made.parts] == [0, *(p.end for p in made.parts)][: len(made.parts)]
    assert (made.parts[-1].end if made.parts else 0) == len(made.data)
    for part in made.parts:
        if part.verified:
            assert made.data[part.start : part.end] == data[part.start : part.end]
        else:
            assert part.reason and part.end > part.start
    assert len(made.data) == len(data) if made.lost_after is None else made.lost_after == len(made.data)


def test_partial_decoding_of_archives_damaged_and_cut_at_many_points(text_segments, tiny):
    data, blob = text_segments
    whole = partial(blob, tiny)
    assert whole.data == data and whole.parts == (Part(0, len(data), True),) and whole.lost_after is None
    lost = 0
    for field, start, end in fields(blob):  # (the header must be intact: it says how the model was run)
        if not field.startswith(("segment 0 ", "segment 1 ", "end marker")):
            continue
        damaged = bytearray(blob)
        damaged[(start + end) // 2] ^= 0x40
        made = partial(bytes(damaged), tiny)
        check_partial(made, data)
        lost += made.verified < len(data)
        if field.startswith("segment 1 "):  # its bytes invented, the rest verified
            assert [p.verified for p in made.parts] == [True, False, True], field
    assert lost >= 10
    for cut in range(len(blob) // 5, len(blob), len(blob) // 5):
        made = partial(blob[:cut], tiny)
        check_partial(made, data)
        assert made.lost_after is not None and all(p.verified for p in made.parts)  # nothing says how much is lost
    with pytest.raises(lmpress.FormatError, match="header"):
        partial(blob[:5], tiny)


def test_invented_bytes_are_the_same_each_time_and_a_seed_samples_others(text_segments, tiny):
    data, blob = text_segments
    start, end = next((s, e) for f, s, e in fields(blob) if f == "segment 1 token stream")
    damaged = bytearray(blob)
    damaged[start + 3] ^= 0x01
    greedy, again = partial(bytes(damaged), tiny), partial(bytes(damaged), tiny)
    sampled = [partial(bytes(damaged), tiny, seed=s) for s in (1, 1, 2)]
    assert greedy.data == again.data and sampled[0].data == sampled[1].data != sampled[2].data
    check_partial(sampled[2], data)
    lo, hi = greedy.parts[1].start, greedy.parts[1].end
    assert greedy.data[lo:hi] != data[lo:hi] and greedy.data[:lo] == data[:lo] and greedy.data[hi:] == data[hi:]


def test_partial_command_names_every_part(text_segments, tiny, tiny_model_dir, tmp_path):
    data, blob = text_segments
    start, end = next((s, e) for f, s, e in fields(blob) if f == "segment 1 chunk table")
    damaged = bytearray(blob)
    damaged[start] ^= 0x10
    (tmp_path / "d.lmp").write_bytes(damaged)
    command = [sys.executable, "-m", "lmpress", "decompress", "--model", str(tiny_model_dir), str(tmp_path / "d.lmp")]
    r = subprocess.run([*command, "--partial", "--seed", "3"], capture_output=True, timeout=300)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.decode().splitlines()
    assert "verified" in lines[0] and "invented by the model" in lines[1] and "verified" in lines[2]
    assert "bytes verified" in lines[-1] and "Traceback" not in r.stderr.decode()
    made = partial(bytes(damaged), tiny, seed=3)
    assert (tmp_path / "d").read_bytes() == made.data
    r = subprocess.run([*command, "-f", "--partial", "--seed", "3", "--json"], capture_output=True, timeout=300)
    described = json.loads(r.stdout)
    assert r.returncode == 3 and described["parts"] == [dataclasses.asdict(p) for p in made.parts]
    assert "lost_after" not in described and described["output"] == str(tmp_path / "d")
    r = subprocess.run([*command, "-c", "--seed", "3"], capture_output=True, timeout=300)
    assert r.returncode == 1 and b"--seed and --json are for what --partial invents" in r.stderr
    r = subprocess.run([*command, "-c", "--partial", "--json"], capture_output=True, timeout=300)
    assert r.returncode == 1 and b"not -c" in r.stderr
    r = subprocess.run([*command, "-c", "--partial", "--recover"], capture_output=True, timeout=300)
    assert r.returncode == 2 and b"not allowed with" in r.stderr
