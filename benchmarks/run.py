"""Benchmark lmpress against the compressors people use, side by side in one run.

    python benchmarks/run.py                     # ../shared/bench: canterbury, fresh, enwik8-prefix/enwik5
    python benchmarks/run.py --quick             # 512 bytes of every file in ../shared/bench: minutes, for CI
    python benchmarks/run.py FILE_OR_DIR ... --prefix 16384 --out benchmarks/out --readme README.md
    python benchmarks/run.py --resume            # go on with an interrupted run in --out
    python benchmarks/run.py --report --readme README.md   # tables and chart again from --out's results.json

Every compressor's output is decompressed by that compressor and compared byte for byte. Peers missing from PATH are
skipped with a note. results.json under --out is rewritten after every file (marked incomplete until the end), so a
long run that is interrupted loses one file at most and --resume continues it; at the end come results.md and
chart.png, and --readme replaces the text between the README's results markers with results.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

import lmpress
from lmpress.exact import ENGINE
from lmpress.models import load_model

from suite import BENCH
from suite.measuring import (
    PEERS,
    FloatReference,
    cpu_name,
    engine_ops_per_token,
    exact_roofline,
    flops_per_token,
    measure_lmpress,
    measure_peer,
    source_digest,
)
from suite.reporting import derive, report, summary

DEFAULT_INPUTS = ["canterbury", "fresh", "enwik8-prefix/enwik5"]


QUICK_INPUTS = ["canterbury", "calgary", "enwik8-prefix", "fresh"]


QUICK_PREFIX, QUICK_CHUNK = 512, 128


def files_of(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if not p.exists():
            sys.exit(f"benchmark: {p}: no such file or folder")
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return out


def display_name(path: Path) -> str:
    """A corpus file by its place in the corpora (``fresh/uv_CHANGELOG.md``), however it was named; others by name."""
    full = path.resolve()
    return str(full.relative_to(BENCH)) if full.is_relative_to(BENCH) else path.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: the shared corpora)")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_PREFIX} bytes of each file, small chunks")
    parser.add_argument("--prefix", type=int, default=0, help="use only the first N bytes of each file (0: all)")
    parser.add_argument("--model", action="append", help="lmpress model (repeat to compare; default: the default)")
    parser.add_argument("--chunk-size", type=int, help="lmpress chunk size (default: lmpress's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--resume", action="store_true", help="keep the files already measured in --out/results.json")
    parser.add_argument("--readme", type=Path, help="README whose results section to replace with the table")
    parser.add_argument("--report", action="store_true", help="measure nothing: tables and chart from --out's results")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--no-float", action="store_true", help="skip the float model's reference code length")
    parser.add_argument(
        "--levels", help="lmpress at each of these levels, e.g. 1,3,6,9 (one row each; default: lmpress's default)"
    )
    args = parser.parse_args()
    if not args.no_chart and importlib.util.find_spec("matplotlib") is None:
        sys.exit('benchmark: the chart needs matplotlib (pip install -e ".[bench]"), or pass --no-chart')
    results = args.out / "results.json"
    if args.report:
        return report_only(results, args)
    prefix = args.prefix or (QUICK_PREFIX if args.quick else 0)
    chunk = args.chunk_size or (QUICK_CHUNK if args.quick else None)
    default = QUICK_INPUTS if args.quick else DEFAULT_INPUTS
    inputs = files_of(args.paths or [BENCH / p for p in default if (BENCH / p).exists()])
    if not inputs:
        sys.exit("benchmark: no input files (pass files or folders)")
    settings = {"chunk_size": chunk} if chunk else {}
    levels = [int(n) for n in args.levels.split(",")] if args.levels else [None]
    peers = [p for p in PEERS if shutil.which(p.compress[0])]
    skipped = [
        f"{p.name} (`{p.compress[0]}` not on PATH" + (f"; apt-get install {p.install})" if p.install else ")")
        for p in PEERS
        if p not in peers
    ]
    started = time.perf_counter()
    models = [(spec, load_model(spec)) for spec in (args.model or [None])]
    load_s = time.perf_counter() - started
    net = models[0][1].net
    reference = FloatReference(models[0][1]) if models[0][1].source and not args.no_float else None
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmpress_version": lmpress.__version__,
        "lmpress_source": source_digest(),
        "models": {lm.name: lm.model_id for _, lm in models},
        "engine": ENGINE,
        "gemm": net.gemm.name,
        "cpu": f"{cpu_name()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "load_s": load_s,
        "prefix": prefix,
        "lmpress_settings": settings,
        "lmpress_levels": levels,
        "skipped": skipped,
        "peers": {p.name: {"compress": " ".join(p.compress), "decompress": " ".join(p.decompress)} for p in peers},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    rows = resumed_rows(results, meta) if args.resume else []
    done = {r["file"] for r in rows}
    for i, path in enumerate(inputs, 1):
        name = display_name(path)
        if name in done:
            continue
        data = path.read_bytes()[: prefix or None]
        print(f"[{i}/{len(inputs)}] {name}, {len(data):,} bytes", file=sys.stderr, flush=True)
        runs = [(spec, lm, level) for spec, lm in models for level in levels]
        for k, (spec, lm, level) in enumerate(runs):
            label = "lmpress" if spec is None else f"lmpress ({lm.name})"
            label += f" -{level}" if level else ""
            measured = measure_lmpress(lm, data, settings | {"level": level}, reference if k == 0 else None)
            rows.append(derive({"compressor": label, "file": name, "bytes": len(data), **measured}))
            r = rows[-1]
            print(
                f"  {label}: {r['bits_per_byte']:.3f} bits/byte, compress {r['compress_s']:.0f} s, "
                f"decompress {r['decompress_s']:.0f} s{'' if r['exact'] else ', NOT EXACT'}",
                file=sys.stderr,
                flush=True,
            )
        for peer in peers:
            rows.append(derive({"compressor": peer.name, "file": name, "bytes": len(data), **measure_peer(peer, data)}))
        save(results, {"meta": meta, "complete": False, "files": rows})

    roofline = exact_roofline(net)
    meta.update(
        roofline_gflops=roofline["ops_per_s"] / 1e9,
        roofline_backend=roofline["backend"],
        roofline_tokens_per_s=roofline["tokens_per_s"],
        flops_per_token=flops_per_token(net),
        engine_ops_per_token=engine_ops_per_token(net),
        finished=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    final = {"meta": meta, "complete": True, "totals": summary(rows, meta), "files": rows}
    save(results, final)
    return publish(final, args)


def report_only(path: Path, args: argparse.Namespace) -> int:
    if not path.exists():
        sys.exit(f"benchmark: {path}: no results to report (run the benchmark with this --out first)")
    done = json.loads(path.read_text())
    if not done["complete"]:
        sys.exit(f"benchmark: {path} is an unfinished run: finish it with --resume first")
    done["totals"] = summary(done["files"], done["meta"])
    return publish(done, args)


def publish(results: dict, args: argparse.Namespace) -> int:
    """Tables, chart and README section of a finished run; the exit status says whether every round trip held."""
    print(report(results, args.out, args.readme, not args.no_chart))
    return 0 if all(r["exact"] for r in results["files"]) else 1


def save(path: Path, results: dict) -> None:
    """Replace ``path`` whole, so an interrupted run leaves the last complete file list behind."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


RESUME_KEYS = ("prefix", "lmpress_settings", "models", "lmpress_source", "torch", "engine", "peers", "machine")


def resumed_rows(path: Path, meta: dict) -> list[dict]:
    """The rows of an earlier run to continue; it must have measured the same way, on the same kind of machine."""
    if not path.exists():
        return []
    before = json.loads(path.read_text())
    differs = [k for k in RESUME_KEYS if before["meta"].get(k) != meta[k]]
    if differs:
        sys.exit(f"benchmark: cannot resume {path}: it was run with other {', '.join(differs)}")
    meta["date"], meta["command"] = before["meta"]["date"], before["meta"]["command"]
    meta["resumed"] = [
        *before["meta"].get("resumed", []),
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    ]
    return before["files"]


if __name__ == "__main__":
    sys.exit(main())
