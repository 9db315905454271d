"""Benchmark lmpress against xz -9e, side by side in one run, on files or folders.

    python benchmarks/run.py                          # ../shared/bench/canterbury and fresh, when present
    python benchmarks/run.py FILE_OR_DIR ... --prefix 16384 --out benchmarks/out

Every lmpress archive is decompressed again and compared byte for byte. Prints a Markdown table and writes
results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import lmpress
from lmpress.engine import Settings
from lmpress.models import load_model

XZ_COMMAND = ["xz", "-9e", "-c", "-T1"]
DEFAULT_CORPORA = ["canterbury", "fresh"]


def default_inputs() -> list[Path]:
    bench = Path(__file__).resolve().parents[2] / "shared" / "bench"
    return [bench / name for name in DEFAULT_CORPORA if (bench / name).is_dir()]


def files_of(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return out


def is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def xz_size(data: bytes) -> int:
    if shutil.which("xz") is None:
        sys.exit("benchmark: the xz command is not installed (apt-get install xz-utils)")
    return len(subprocess.run(XZ_COMMAND, input=data, capture_output=True, check=True).stdout)


def measure(path: Path, data: bytes, model, settings: dict) -> dict:
    started = time.perf_counter()
    comp = lmpress.Compressor(model, **settings)
    blob = comp.compress(data) + comp.flush()
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    back = lmpress.decompress(blob, model=model)
    decompress_s = time.perf_counter() - started
    s = comp.stats
    return {
        "file": f"{path.parent.name}/{path.name}",
        "text": is_text(data),
        "bytes": len(data),
        "xz_bytes": xz_size(data),
        "lmpress_bytes": len(blob),
        "bits_per_byte": 8 * len(blob) / max(len(data), 1),
        "ideal_bits": s.ideal_bits,
        "lm_bytes_in": s.lm_bytes_in,
        "lm_bytes_out": s.lm_bytes_out,
        "tokens": s.tokens,
        "overhead_pct": 100 * s.overhead,
        "chunks": s.chunks,
        "compress_s": compress_s,
        "decompress_s": decompress_s,
        "exact": back == data,
    }


def total(rows: list[dict], name: str) -> dict:
    keys = ("bytes", "xz_bytes", "lmpress_bytes", "ideal_bits", "lm_bytes_out", "tokens", "compress_s", "decompress_s")
    t = {k: sum(r[k] for r in rows) for k in keys}
    t.update(file=name, exact=all(r["exact"] for r in rows), bits_per_byte=8 * t["lmpress_bytes"] / max(t["bytes"], 1))
    t["overhead_pct"] = 100 * (t["lm_bytes_out"] * 8 / t["ideal_bits"] - 1) if t["ideal_bits"] else 0.0
    return t


def table(rows: list[dict]) -> str:
    lines = [
        "| file | bytes | xz -9e bytes | lmpress bytes | bits/byte | vs xz | overhead % | compress KB/s | "
        "decompress KB/s | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['bytes']:,} | {r['xz_bytes']:,} | {r['lmpress_bytes']:,} | {r['bits_per_byte']:.3f} "
            f"| {r['lmpress_bytes'] / r['xz_bytes']:.3f}× | {r['overhead_pct']:.2f} "
            f"| {r['bytes'] / 1000 / r['compress_s']:.2f} | {r['bytes'] / 1000 / r['decompress_s']:.2f} "
            f"| {'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: shared corpora)")
    parser.add_argument("--prefix", type=int, default=0, help="use only the first N bytes of each file (0: all)")
    parser.add_argument("--model", help="model spec (default: the embedded default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--chunk-size", type=int, default=Settings().chunk_size)
    args = parser.parse_args()
    inputs = files_of(args.paths or default_inputs())
    if not inputs:
        sys.exit("benchmark: no input files (pass files or folders)")
    started = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - started
    settings = {"chunk_size": args.chunk_size}
    rows = []
    for path in inputs:
        data = path.read_bytes()
        if args.prefix:
            data = data[: args.prefix]
        rows.append(measure(path, data, model, settings))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text_rows = [r for r in rows if r["text"]]
    totals = [total(rows, "**total**")] + ([total(text_rows, "**total, text files**")] if text_rows else [])
    md = table(rows + totals)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmpress": lmpress.__version__,
        "model": model.name,
        "model_load_s": load_s,
        "xz": subprocess.run(["xz", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "xz_command": " ".join(XZ_COMMAND),
        "prefix": args.prefix,
        "settings": settings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "files": rows, "totals": totals}, indent=1))
    header = (
        f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, model {meta['model']}.\n"
        f"Command: `{command}`\n\n"
    )
    (args.out / "results.md").write_text(header + md + "\n")
    print("\n" + header + md)
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
