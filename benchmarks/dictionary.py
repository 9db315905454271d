"""Dictionaries on many small similar files: lmpress with and without one, beside zstd with and without its own.

Corpora (real data from ../shared/bench, split deterministically: every ``--every``-th record is held out, the
rest are the training samples):

- ``bib``: the records of calgary/bib (a 1980s bibliography in refer format), one file per record;
- ``swagger``: the definitions and paths of fresh/crush_swagger.json (an OpenAPI file written in 2026), one JSON
  object per file, as ``json.dumps({name: value}, indent=2)``;
- ``releases``: the versions of fresh/eol_gitlab.json (release data of 2026), 25 consecutive ones a file (~1.7 KB),
  as ``json.dumps(..., indent=2)``: records of one schema.

Each held-out file is compressed on its own (one archive per file) by every compressor and decompressed again by
the same compressor to check it. lmpress builds its dictionaries on the training samples, each kind in turn: a
primed context (``lmpress.train``, ``--size`` tokens), one whose size ``lmpress.tune`` chose on the training samples
(as ``lmpress train`` does by default: every 5th of them held out), an adapter (``train_adapter``,
``--adapter-steps``), and both together (the same adapter and primed context); zstd trains with ``zstd --train``
on the same samples (written as files).

    python benchmarks/dictionary.py --out benchmarks/dictionary    # ~15 minutes a corpus on 2 cores (adapters)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmpress
from lmpress.dictionary import DEFAULT_TOKENS, train_adapter

from suite import BENCH
from suite.measuring import publish, script_meta


def corpus(name: str) -> list[bytes]:
    if name == "bib":
        text = (BENCH / "calgary" / "bib").read_bytes()
        return [r + b"\n" for r in re.split(rb"\n\n+", text) if r.strip()]
    if name == "swagger":
        spec = json.loads((BENCH / "fresh" / "crush_swagger.json").read_bytes())
        items = [*spec["definitions"].items(), *spec["paths"].items()]
        return [json.dumps({k: v}, indent=2).encode() + b"\n" for k, v in items]
    if name == "releases":
        versions = list(json.loads((BENCH / "fresh" / "eol_gitlab.json").read_bytes())["versions"].items())
        return [json.dumps(dict(versions[i : i + 25]), indent=2).encode() + b"\n" for i in range(0, len(versions), 25)]
    raise SystemExit(f"unknown corpus {name!r}")


def zstd(args: list[str], data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", *args], input=data, capture_output=True, check=True).stdout


def run_corpus(
    name: str, every: int, limit: int, size: int, steps: int, kinds: list[str], lm, mixer: str | None
) -> dict:
    records = corpus(name)
    held = [r for i, r in enumerate(records) if i % every == every - 1][:limit]
    train = [r for i, r in enumerate(records) if i % every != every - 1]
    print(f"{name}: {len(records)} records, {len(train)} to train on, {len(held)} held out", file=sys.stderr)

    dictionaries, build_s = {"none": None}, {}
    started = time.perf_counter()
    primed = lmpress.train(lm, train, size)
    build_s["primed"] = time.perf_counter() - started
    if "primed" in kinds:
        dictionaries["primed"] = primed
    tuned_size = 0
    if "tuned" in kinds:
        started = time.perf_counter()
        tuned = lmpress.tune(lm, train)
        build_s["tuned"] = time.perf_counter() - started
        dictionaries["tuned"], tuned_size = tuned.dictionary, len(tuned.dictionary.tokens)
    if "adapter" in kinds or "both" in kinds:
        started = time.perf_counter()
        adapter = train_adapter(lm, train, steps)
        build_s["adapter"] = time.perf_counter() - started
        build_s["both"] = build_s["primed"] + build_s["adapter"]
        if "adapter" in kinds:
            dictionaries["adapter"] = adapter
        if "both" in kinds:
            dictionaries["both"] = dataclasses.replace(adapter, tokens=primed.tokens)

    sizes, seconds, once = {}, {}, {}
    for kind, d in dictionaries.items():  # one kind at a time: an adapted model is built once, not per file
        label = "lmpress" if d is None else f"lmpress -D {kind}"
        sizes[label], seconds[label] = 0, [0.0, 0.0]
        started = time.perf_counter()  # once a process: the adapted model, the prefix's keys and values
        assert lmpress.decompress(lmpress.compress(b"warm up\n", model=lm, dictionary=d), lm, dictionary=d)
        once[label] = time.perf_counter() - started
        for i, r in enumerate(held):
            t0 = time.perf_counter()
            blob = lmpress.compress(r, model=lm, dictionary=d, **({} if mixer is None else {"mixer": mixer}))
            t1 = time.perf_counter()
            assert lmpress.decompress(blob, model=lm, dictionary=d) == r, (name, i, label)
            seconds[label][0] += t1 - t0
            seconds[label][1] += time.perf_counter() - t1
            sizes[label] += len(blob)
        print(f"  {label}: {sizes[label]:,} bytes", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, r in enumerate(train):
            path = Path(tmp) / f"{i:05}"
            path.write_bytes(r)
            files.append(str(path))
        zdict = Path(tmp) / "zstd.dict"
        started = time.perf_counter()
        subprocess.run(["zstd", "-q", "--train", *files, "-o", str(zdict)], check=True, capture_output=True)
        build_s["zstd"] = time.perf_counter() - started
        zdict_bytes = zdict.stat().st_size
        sizes.update({"zstd -19": 0, "zstd -19 -D": 0, "xz -9e": 0})
        for r in held:
            for label, extra in (("zstd -19", []), ("zstd -19 -D", ["-D", str(zdict)])):
                blob = zstd(["-19", *extra], r)
                assert zstd(["-d", *extra], blob) == r
                sizes[label] += len(blob)
            blob = lzma.compress(r, preset=9 | lzma.PRESET_EXTREME)
            assert lzma.decompress(blob) == r
            sizes["xz -9e"] += len(blob)
    n = len(held)
    return {
        "corpus": name,
        "records": len(records),
        "train": len(train),
        "held_out": n,
        "held_out_bytes": sum(map(len, held)),
        "sizes": sizes,
        "seconds_per_file": {k: [c / n, d / n] for k, (c, d) in seconds.items()},
        "seconds_once": once,
        "dictionary_bytes": {k: len(d.to_bytes()) for k, d in dictionaries.items() if d} | {"zstd": zdict_bytes},
        "primed_tokens": len(primed.tokens),
        "tuned_tokens": tuned_size,
        "adapter_steps": steps,
        "build_s": build_s,
    }


def table(results: list[dict]) -> str:
    labels = [k for k in results[0]["sizes"] if k.startswith("lmpress")] + ["zstd -19", "zstd -19 -D", "xz -9e"]
    lines = [
        "| corpus | held-out files | bytes | " + " | ".join(labels) + " |",
        "|---|---:|---:|" + "---:|" * len(labels),
    ]
    for r in results:
        s = r["sizes"]
        best = min(s[k] for k in labels)
        cells = [f"**{s[k]:,}**" if s[k] == best else f"{s[k]:,}" for k in labels]
        lines.append(f"| {r['corpus']} | {r['held_out']} | {r['held_out_bytes']:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| corpus | dictionary | its size | build time | gain | once a process | compress s/file | decompress s/file |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s, t = r["sizes"], r["seconds_per_file"]
        for label in labels[:-3]:
            kind = label.removeprefix("lmpress -D ") if label != "lmpress" else None
            size = f"{r['dictionary_bytes'][kind]:,} B" if kind else "–"
            build = f"{r['build_s'][kind]:.1f} s" if kind else "–"
            gain = f"{1 - s[label] / s['lmpress']:.1%}" if kind else "–"
            what = {
                None: "none",
                "primed": f"primed context, {r['primed_tokens']:,} tokens",
                "tuned": f"primed context, {r.get('tuned_tokens', 0):,} tokens (size chosen by `lmpress train`)",
                "adapter": f"adapter, {r['adapter_steps']} steps",
                "both": "adapter and primed context",
            }[kind]
            lines.append(
                f"| {r['corpus']} | {what} | {size} | {build} | {gain} | {r['seconds_once'][label]:.1f} s | "
                f"{t[label][0]:.2f} | {t[label][1]:.2f} |"
            )
        zstd_size, zstd_s = r["dictionary_bytes"]["zstd"], r["build_s"]["zstd"]
        lines.append(f"| {r['corpus']} | zstd --train | {zstd_size:,} B | {zstd_s:.1f} s | | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", default=["bib", "swagger", "releases"])
    p.add_argument("--every", type=int, default=5, help="hold out every N-th record (default 5)")
    p.add_argument("--limit", type=int, default=40, help="held-out files per corpus at most (default 40)")
    p.add_argument("--size", type=int, default=DEFAULT_TOKENS, help="primed context tokens")
    kinds = ["primed", "tuned", "adapter", "both"]
    p.add_argument("--kinds", nargs="+", default=kinds, choices=kinds)
    p.add_argument("--adapter-steps", type=int, default=60, help="adapter training steps (default 60: ~5 minutes)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/dictionary"))
    p.add_argument("--mixer", help="lmpress's mixer (default: the default level's), e.g. match-v1 to compare")
    args = p.parse_args()
    lm = lmpress.load_model()
    results = [
        run_corpus(name, args.every, args.limit, args.size, args.adapter_steps, args.kinds, lm, args.mixer)
        for name in args.corpus
    ]
    meta = script_meta("dictionary.py") | {"lmpress": lmpress.__version__}
    publish(args.out, meta, results, table(results))


if __name__ == "__main__":
    main()
