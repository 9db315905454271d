"""Peak memory of `lmpress compress`, `decompress` and `list` as the input grows: it must not grow with it.

    python benchmarks/memory.py --model MODEL_FOLDER --sizes 16 1024      # MiB of input each

Each size is a fresh input (binary records with some repetition: LZMA2 chunks, so a tiny model is enough),
each command a fresh process, and its peak RSS the kernel's own figure for it (wait4). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECORD = bytes(range(256)) * 16  # 4 KiB


def write_input(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        for i in range(mib * 256):
            f.write(i.to_bytes(8, "little") + RECORD[8:])


def peak(args: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (MiB) of one lmpress command."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lmpress", *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"lmpress {' '.join(args)} failed")
    return time.perf_counter() - started, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="lmpress model (a small one: the input is binary)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 1024], help="input sizes in MiB")
    args = parser.parse_args()
    print("| input | compress s | compress MiB | decompress s | decompress MiB | list MiB | archive bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        src, lmp, out = Path(tmp) / "in", Path(tmp) / "in.lmp", Path(tmp) / "out"
        for mib in args.sizes:
            write_input(src, mib)
            c = peak(["compress", "-q", "-f", "--model", args.model, "-o", str(lmp), str(src)])
            d = peak(["decompress", "-q", "-f", "--model", args.model, "-o", str(out), str(lmp)])
            ls = peak(["list", str(lmp)])
            if out.stat().st_size != src.stat().st_size or out.read_bytes() != src.read_bytes():
                raise SystemExit(f"{mib} MiB: round trip differs")
            print(
                f"| {mib:,} MiB | {c[0]:.0f} | {c[1]:,} | {d[0]:.0f} | {d[1]:,} | {ls[1]:,} | {lmp.stat().st_size:,} |",
                flush=True,
            )
            for p in (src, lmp, out):
                p.unlink()


if __name__ == "__main__":
    main()
