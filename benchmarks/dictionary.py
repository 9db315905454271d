"""Dictionaries on many small similar files: lmpress with and without one, beside zstd with and without its own.

Corpora (real data from ../shared/bench, split deterministically: every ``--every``-th record is held out, the
rest are the training samples):

- ``bib``: the records of calgary/bib (a 1980s bibliography in refer format), one file per record;
- ``swagger``: the definitions and paths of fresh/crush_swagger.json (an OpenAPI file written in 2026), one JSON
  object per file, as ``json.dumps({name: value}, indent=2)``.

Each held-out file is compressed on its own (one archive per file) by every compressor and decompressed again by
the same compressor to check it. lmpress trains its dictionary with ``lmpress.train`` on the training samples,
zstd with ``zstd --train`` on the same samples (written as files).

    python benchmarks/dictionary.py --out benchmarks/dictionary            # a few minutes a corpus on 2 cores
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import lmpress
from lmpress.dictionary import DEFAULT_TOKENS

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def corpus(name: str) -> list[bytes]:
    if name == "bib":
        text = (BENCH / "calgary" / "bib").read_bytes()
        return [r + b"\n" for r in re.split(rb"\n\n+", text) if r.strip()]
    if name == "swagger":
        spec = json.loads((BENCH / "fresh" / "crush_swagger.json").read_bytes())
        items = [*spec["definitions"].items(), *spec["paths"].items()]
        return [json.dumps({k: v}, indent=2).encode() + b"\n" for k, v in items]
    raise SystemExit(f"unknown corpus {name!r}")


def zstd(args: list[str], data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", *args], input=data, capture_output=True, check=True).stdout


def run_corpus(name: str, every: int, limit: int, size: int, lm) -> dict:
    records = corpus(name)
    held = [r for i, r in enumerate(records) if i % every == every - 1][:limit]
    train = [r for i, r in enumerate(records) if i % every != every - 1]
    print(f"{name}: {len(records)} records, {len(train)} to train on, {len(held)} held out", file=sys.stderr)

    started = time.perf_counter()
    dictionary = lmpress.train(lm, train, size)
    lm_train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, r in enumerate(train):
            path = Path(tmp) / f"{i:05}"
            path.write_bytes(r)
            files.append(str(path))
        zdict = Path(tmp) / "zstd.dict"
        started = time.perf_counter()
        subprocess.run(["zstd", "-q", "--train", *files, "-o", str(zdict)], check=True, capture_output=True)
        zstd_train_s = time.perf_counter() - started
        zdict_bytes = zdict.read_bytes()

        sizes = {k: 0 for k in ("lmpress", "lmpress -D", "zstd -19", "zstd -19 -D", "xz -9e")}
        seconds = {k: [0.0, 0.0] for k in ("lmpress", "lmpress -D")}
        for i, r in enumerate(held):
            for label, d in (("lmpress", None), ("lmpress -D", dictionary)):
                t0 = time.perf_counter()
                blob = lmpress.compress(r, model=lm, dictionary=d)
                t1 = time.perf_counter()
                assert lmpress.decompress(blob, model=lm, dictionary=d) == r, (name, i, label)
                seconds[label][0] += t1 - t0
                seconds[label][1] += time.perf_counter() - t1
                sizes[label] += len(blob)
            for label, extra in (("zstd -19", []), ("zstd -19 -D", ["-D", str(zdict)])):
                blob = zstd(["-19", *extra], r)
                assert zstd(["-d", *extra], blob) == r
                sizes[label] += len(blob)
            blob = lzma.compress(r, preset=9 | lzma.PRESET_EXTREME)
            assert lzma.decompress(blob) == r
            sizes["xz -9e"] += len(blob)
            print(f"  {i + 1}/{len(held)}: {len(r)} bytes", file=sys.stderr)
    n = len(held)
    return {
        "corpus": name,
        "records": len(records),
        "train": len(train),
        "held_out": n,
        "held_out_bytes": sum(map(len, held)),
        "sizes": sizes,
        "seconds_per_file": {k: [c / n, d / n] for k, (c, d) in seconds.items()},
        "lmpress_dictionary": {
            "tokens": len(dictionary.tokens),
            "bytes": len(dictionary.to_bytes()),
            "id": dictionary.id,
        },
        "lmpress_train_s": lm_train_s,
        "zstd_dictionary_bytes": len(zdict_bytes),
        "zstd_train_s": zstd_train_s,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| corpus | held-out files | bytes | lmpress | lmpress -D | zstd -19 | zstd -19 -D | xz -9e | gain of -D |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["sizes"]
        gain = 1 - s["lmpress -D"] / s["lmpress"]
        cells = [f"{s[k]:,}" for k in ("lmpress", "lmpress -D", "zstd -19", "zstd -19 -D", "xz -9e")]
        head = f"| {r['corpus']} | {r['held_out']} | {r['held_out_bytes']:,} | "
        lines.append(head + " | ".join(cells) + f" | {gain:.1%} |")
    lines += [
        "",
        "| corpus | dictionary | build time | compress s/file (without → with) | decompress s/file (without → with) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        d, t = r["lmpress_dictionary"], r["seconds_per_file"]
        lines.append(
            f"| {r['corpus']} | lmpress: {d['tokens']:,} tokens ({d['bytes']:,} B) | {r['lmpress_train_s']:.1f} s | "
            f"{t['lmpress'][0]:.2f} → {t['lmpress -D'][0]:.2f} | {t['lmpress'][1]:.2f} → {t['lmpress -D'][1]:.2f} |"
        )
        lines.append(f"| {r['corpus']} | zstd: {r['zstd_dictionary_bytes']:,} B | {r['zstd_train_s']:.1f} s | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", default=["bib", "swagger"])
    p.add_argument("--every", type=int, default=5, help="hold out every N-th record (default 5)")
    p.add_argument("--limit", type=int, default=40, help="held-out files per corpus at most (default 40)")
    p.add_argument("--size", type=int, default=DEFAULT_TOKENS, help="lmpress dictionary tokens")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/dictionary"))
    args = p.parse_args()
    lm = lmpress.load_model()
    results = [run_corpus(name, args.every, args.limit, args.size, lm) for name in args.corpus]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/dictionary.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "lmpress": lmpress.__version__,
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    md = table(results) + f"\n\n- Measured {meta['measured']} on {meta['machine']} with `{command}`.\n"
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
