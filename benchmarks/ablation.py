"""What each online model of cm-v1 gains, file by file: the code length of the model alone, with match-v1, with
cm-v1, and with cm-v1 less one component at a time (``context_mixing.COMPONENTS``), from one scoring pass.

Code lengths are the ideal ones (Σ −log2 of each token's mixed frequency, what the range coder pays within a few
bytes) of the LM-coded chunks of each file's first segment, at the level's chunking; the time is the mixers' own
(candidates, then the mix), apart from the model's scoring, which they share.

    python benchmarks/ablation.py --out benchmarks/ablation     # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lmpress
from lmpress.codec import context_mixing, mixing
from lmpress.codec.chunking import looks_like_text, split
from lmpress.codec.scoring import score_rows
from lmpress.codec.settings import Settings
from lmpress.exact.arithmetic import PRECISION_BITS
from lmpress.exact.ops import frequencies, token_intervals

from suite import BENCH, HELD_OUT
from suite.measuring import publish, script_meta

FILES = [*HELD_OUT, "calgary/progc"]


def ablate(lm, data: bytes, settings: Settings) -> dict:
    pieces = [p for p in split(data, settings) if looks_like_text(p)]
    rows = [ids for ids in map(lm.tokenize, pieces) if ids is not None][: settings.chunks_per_segment]
    seconds: dict[str, float] = {}
    plans: dict[str, object] = {}
    for name, build in [
        ("match-v1", lambda: mixing.Plan(rows, settings.batch)),
        ("cm-v1", lambda: context_mixing.Plan(rows, settings.batch, lm.newlines)),
        *(
            (
                f"cm-v1 − {part}",
                lambda part=part: context_mixing.Plan(rows, settings.batch, lm.newlines, without=frozenset({part})),
            )
            for part in context_mixing.COMPONENTS
        ),
    ]:
        started = time.perf_counter()
        plans[name] = build()
        seconds[name] = time.perf_counter() - started
    left = [np.zeros(len(r), np.int64) for r in rows]
    width = [np.zeros(len(r), np.int64) for r in rows]

    def visit(row: int, first: int, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        at = slice(first, first + len(tokens))
        lo, f = token_intervals(logits, tokens)
        left[row][at], width[row][at] = lo.numpy(), f.numpy()
        freqs = frequencies(logits)
        for name, plan in plans.items():
            started = time.perf_counter()
            plan.record(row, at, freqs)  # type: ignore[attr-defined]
            seconds[name] += time.perf_counter() - started

    score_rows(lm, rows, settings, visit)

    def bits(widths: list[np.ndarray]) -> float:
        return float(sum((PRECISION_BITS - np.log2(w)).sum() for w in widths))

    out = {"model alone": bits(width)}
    for name, plan in plans.items():
        started = time.perf_counter()
        _, mixed = plan.mixed([x.copy() for x in left], [x.copy() for x in width], lm.net.cfg.vocab_size)  # type: ignore[attr-defined]
        seconds[name] += time.perf_counter() - started
        out[name] = bits(mixed)
    tokens = sum(len(r) for r in rows)
    return {"bytes": sum(len(p) for p in pieces[: len(rows)]), "tokens": tokens, "bits": out, "seconds": seconds}


def table(results: dict[str, dict]) -> str:
    names = list(next(iter(results.values()))["bits"])
    lines = [
        "| file | bytes | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for file, r in results.items():
        full = r["bits"]["cm-v1"]
        cells = []
        for n in names:
            b = r["bits"][n]
            cells.append(f"{b / 8:,.0f}" if n == "cm-v1" else f"{b / 8:,.0f} ({b / full - 1:+.1%})")
        lines.append(f"| {file} | {r['bytes']:,} | " + " | ".join(cells) + " |")
    lines += ["", "| file | tokens | " + " | ".join(names[1:]) + " |", "|---|---:|" + "---:|" * (len(names) - 1)]
    for file, r in results.items():
        s = r["seconds"]
        lines.append(
            f"| {file} | {r['tokens']:,} | "
            + " | ".join(f"{1e6 * s[n] / r['tokens']:.0f} µs" for n in names[1:])
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, default=[BENCH / f for f in FILES])
    p.add_argument("--prefix", type=int, default=65536, help="bytes of each file (default 64 KiB)")
    p.add_argument("--level", type=int, default=None, help="the level whose chunking to use (default: the default)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/ablation"))
    args = p.parse_args()
    lm = lmpress.load_model()
    settings = Settings.at_level(args.level)
    results = {}
    for path in args.files:
        results[path.name] = ablate(lm, path.read_bytes()[: args.prefix], settings)
        print(path.name, {k: round(v / 8) for k, v in results[path.name]["bits"].items()}, file=sys.stderr)
    text = (
        "Ideal code length in bytes of each file's LM-coded chunks (in parentheses: against cm-v1 with every "
        "component); then each mixer's own time per token (candidates, frequencies recorded, the mix).\n\n"
        + table(results)
    )
    publish(args.out, script_meta("ablation.py"), results, text)


if __name__ == "__main__":
    main()
