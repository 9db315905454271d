"""Throughput of lmpress on workers: one process, worker processes and Ray actors, on the same input in one run.

    python benchmarks/scale.py                                   # alice29.txt's first 128 KiB, 32 KiB segments
    python benchmarks/scale.py FILE --prefix 262144 --chunk-size 1024 --out benchmarks/scale

Every configuration compresses and decompresses the same input as a fresh `lmpress` process (model load and
worker start included: that is what a user waits for), checks that every archive is byte for byte the one a
single process writes and that every output is the input, and reports KiB/s each way and the speed-up over one
process with the same number of cores. Segments are the unit of work, so the input needs several of them
(``--chunk-size`` × 64 bytes each). Also reported: the bytes a segment's framing costs, and those of a member
(a whole archive's header and end marker: what concatenating archives costs). Writes results.md and
results.json under --out. Run it alone on the machine: two processes sharing cores slow each other far more.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmpress.codec import format as fmt

from suite import BENCH

CONFIGURATIONS = {  # name: (lmpress options, cores it may use)
    "1 process, 1 thread": (["-T", "1"], 1),
    "1 process, 2 threads": (["-T", "2"], 2),
    "2 worker processes (-j 2)": (["-j", "2"], 2),
    "2 Ray actors (--ray -j 2)": (["--ray", "-j", "2"], 2),
}


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lmpress", *args], capture_output=True)
    if done.returncode:
        raise SystemExit(f"lmpress {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def framing(archive: bytes) -> dict:
    """Bytes of the archive that are not payload: per member, per segment (frame and chunk table)."""
    (member,) = fmt.members(archive)
    segments = [fmt.parse_frame(archive[a:b])[0] for a, b in member.segments]
    payload = sum(sum(len(p) for p in s.payloads) + len(s.lm_stream) for s in segments)
    frames = sum(b - a for a, b in member.segments)
    return {
        "member_bytes": (member.header[1] - member.header[0]) + (member.end[1] - member.end[0]),
        "segments": len(segments),
        "segment_framing_bytes": (frames - payload) / len(segments),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", default=str(BENCH / "canterbury" / "alice29.txt"))
    parser.add_argument("--prefix", type=int, default=128 * 1024, help="bytes of the input to use (0: all)")
    parser.add_argument("--chunk-size", type=int, default=512, help="lmpress --chunk-size (segments are 64 chunks)")
    parser.add_argument("--model", help="lmpress --model (default: the default model)")
    parser.add_argument("--skip", nargs="*", default=[], help="configurations to leave out (by name)")
    parser.add_argument("--out", default="benchmarks/scale", help="folder for results.md and results.json")
    args = parser.parse_args()
    data = Path(args.input).read_bytes()[: args.prefix or None]
    model = ["--model", args.model] if args.model else []
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input"
        src.write_bytes(data)
        for name, (options, cores) in CONFIGURATIONS.items():
            if name in args.skip:
                continue
            archive, output = Path(tmp) / f"{len(rows)}.lmp", Path(tmp) / f"{len(rows)}.out"
            common = ["-q", "-f", *model, *options]
            c = timed(["compress", *common, "--chunk-size", str(args.chunk_size), "-o", str(archive), str(src)])
            d = timed(["decompress", *common, "-o", str(output), str(archive)])
            blob = archive.read_bytes()
            reference = reference or blob
            if blob != reference or output.read_bytes() != data:
                raise SystemExit(f"{name}: the archive differs from the first configuration's, or the round trip does")
            one_byte = Path(tmp) / "one"
            one_byte.write_bytes(b"x")
            start = timed(["compress", *common, "-o", str(one_byte) + ".lmp", str(one_byte)])
            rows.append({"configuration": name, "cores": cores, "compress_s": c, "decompress_s": d, "start_s": start})
            print(f"{name}: compress {c:.1f} s, decompress {d:.1f} s, a 1-byte input {start:.1f} s", flush=True)
    for row in rows:
        row["compress_kib_s"] = len(data) / 1024 / row["compress_s"]
        row["decompress_kib_s"] = len(data) / 1024 / row["decompress_s"]
    results = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}",
        "input": f"{Path(args.input).name}, first {len(data):,} bytes",
        "chunk_size": args.chunk_size,
        "archive_bytes": len(reference),
        **framing(reference),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(report(results))
    print(report(results))


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def report(r: dict) -> str:
    by_cores = {}
    for row in r["rows"]:
        by_cores.setdefault(row["cores"], row)  # the first configuration with that many cores: one process
    single = next((row for row in r["rows"] if row["configuration"] == "1 process, 1 thread"), None)
    lines = [
        f"`{r['command']}` ({r['date']}; {r['machine']})",
        "",
        f"Input: {r['input']}, `--chunk-size {r['chunk_size']}`: {r['segments']} segments, archive "
        f"{r['archive_bytes']:,} bytes, the same from every configuration (checked byte for byte).",
        "",
        "| configuration | compress KiB/s | decompress KiB/s | × 1 process, 1 thread | × 1 process, same cores "
        "| a 1-byte input |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        speedups = []
        for base in (single, by_cores[row["cores"]]):
            speedups.append(
                f"{base['compress_s'] / row['compress_s']:.2f} / {base['decompress_s'] / row['decompress_s']:.2f}"
                if base
                else "–"
            )
        lines.append(
            f"| {row['configuration']} | {row['compress_kib_s']:.2f} | {row['decompress_kib_s']:.2f} | "
            f"{speedups[0]} | {speedups[1]} | {row['start_s']:.1f} s |"
        )
    lines += [
        "",
        "Speed-ups are compress / decompress, wall clock of whole commands (model load and worker start included:",
        "the last column is that fixed cost, `compress` of a 1-byte input).",
        f"Overhead: workers add no byte (the archive is the one a single process writes). A segment's framing is "
        f"{r['segment_framing_bytes']:.1f} bytes on average (kind, length, offset, size, chunk table, two CRC-32s); "
        f"a member, i.e. each archive concatenated into another, costs {r['member_bytes']} bytes (header and end "
        f"marker).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
