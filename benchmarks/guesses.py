"""What checking guesses of the next tokens (``codec.drafts``) saves the decoder, file by file: each archive decoded
with guesses and without (``drafts.MOST`` = 0), alternately in one process, the best of ``--repeats`` each, with
the model steps taken, the guesses checked and right, and compression's time for the decompress / compress ratio.

The model is loaded and the kernels warmed first, so the times are the coding's alone.

    python benchmarks/guesses.py --out benchmarks/guesses     # ~20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lmpress
from lmpress.codec import drafts

from suite import BENCH, HELD_OUT
from suite.measuring import publish, script_meta


def decode(lm, blob: bytes, data: bytes, most: int) -> tuple[float, lmpress.Decompressor]:
    drafts.MOST, before = most, drafts.MOST
    try:
        started = time.perf_counter()
        unpacker = lmpress.Decompressor(lm)
        if unpacker.decompress(blob) != data:
            raise SystemExit("a round trip was not exact")
        return time.perf_counter() - started, unpacker
    finally:
        drafts.MOST = before


def measure(lm, data: bytes, repeats: int) -> dict:
    started = time.perf_counter()
    blob = lmpress.compress(data, lm)
    compress_s = time.perf_counter() - started
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(repeats):
        times["without"].append(decode(lm, blob, data, 0)[0])
        seconds, unpacker = decode(lm, blob, data, drafts.MOST)
        times["with"].append(seconds)
    s = unpacker.steps
    best = {k: min(v) for k, v in times.items()}
    steps = {"passes": s.passes, "checked": s.checked, "right": s.right}
    return {"bytes": len(data), "compress_s": compress_s, "decompress_s": best, "tokens": s.tokens, "steps": steps}


def row(name: str, r: dict) -> str:
    without, with_ = r["decompress_s"]["without"], r["decompress_s"]["with"]
    steps = r["steps"]
    return (
        f"| {name} | {r['bytes']:,} | {r['tokens']:,} | {steps['passes']:,} ({r['tokens'] / steps['passes']:.2f}) | "
        f"{steps['right']:,} / {steps['checked']:,} | {without:.1f} s | {with_:.1f} s | {without / with_:.2f}× | "
        f"{r['compress_s'] / without:.2f} → {r['compress_s'] / with_:.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, default=[BENCH / f for f in HELD_OUT])
    p.add_argument("--sizes", default="4096,16384", help="bytes of each file to code, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/guesses"))
    args = p.parse_args()
    lm = lmpress.load_model()
    warm = b'{"warm": "the kernels up"}\n' * 20
    assert lmpress.decompress(lmpress.compress(warm, lm), lm) == warm
    results, lines = {}, []
    for path in args.files:
        for size in map(int, args.sizes.split(",")):
            data = path.read_bytes()[:size]
            r = measure(lm, data, args.repeats)
            results[f"{path.name}:{len(data)}"] = r
            lines.append(row(path.name, r))
            print(lines[-1], file=sys.stderr)
    text = "\n".join(
        [
            "Decoding at the default level with and without checking guesses (best of "
            f"{args.repeats} each; model steps: restarts included, in parentheses tokens per step, where a step codes "
            "a token of every row of its group; a guess is right when every row's is).",
            "",
            "| file | bytes | tokens | model steps | guesses right / checked | decompress without | with | speed-up | "
            "decompress / compress speed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *lines,
        ]
    )
    publish(args.out, script_meta("guesses.py"), results, text)


if __name__ == "__main__":
    main()
