"""The lens's two engines on one model, side by side: the exact engine (the model alone, no match model: what
archives would code without mixing) and the float engines, on the same chunks and windows, with their speeds.

    python benchmarks/engines.py ../shared/bench/canterbury/alice29.txt ../shared/bench/fresh/uv_CHANGELOG.md \\
        --prefix 65536 --out benchmarks/engines

Prints a Markdown table and writes it, with the figures as JSON and a chart (bits per byte by file and engine,
``lmpress measure --chart``'s), under --out; ``--report`` draws them again from --out's results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmpress.codec.settings import Settings
from lmpress.lens.analysis import load_lens_model, score_document
from lmpress.lens.charts import bits_chart

ENGINES = ("exact", "float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", help="a model both engines run (default: the default model)")
    parser.add_argument("--prefix", type=int, default=0, help="score only the first N bytes of each file")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated (default {','.join(ENGINES)})")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/engines"))
    parser.add_argument("--report", action="store_true", help="measure nothing: the chart from --out's results")
    args = parser.parse_args()
    if args.report:
        draw(json.loads((args.out / "results.json").read_text()), args.out / "chart.png", args.model)
        return
    engines = args.engines.split(",")
    settings = Settings.at_level(mixer="")  # the model alone on both engines
    rows = []
    for engine in engines:
        model = load_lens_model(args.model, engine)
        score_document(model, b"warm up: load and compile once before timing", settings)
        for path in args.files:
            data = path.read_bytes()[: args.prefix or None]
            started = time.perf_counter()
            scores = score_document(model, data, settings)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "file": path.name,
                    "engine": scores.engine,
                    "bytes": scores.n_bytes,
                    "tokens": len(scores.bits),
                    "bits_per_byte": scores.bits_per_byte,
                    "seconds": seconds,
                }
            )
            print(f"{path.name} {scores.engine}: {scores.bits_per_byte:.4f} bits/byte, {seconds:.1f} s", flush=True)
    exact = {r["file"]: r["bits_per_byte"] for r in rows if r["engine"] not in ("float32", "bfloat16")}
    lines = [
        f"Model {args.model or 'smollm2-135m'} alone (no match model), torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads; "
        f"`python benchmarks/engines.py {' '.join(str(f) for f in args.files)} --prefix {args.prefix}`",
        "",
        "| file | engine | bytes | tokens | bits/byte | vs exact | KB/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs = f"{100 * (r['bits_per_byte'] / exact[r['file']] - 1):+.2f} %" if r["file"] in exact else "–"
        lines.append(
            f"| {r['file']} | {r['engine']} | {r['bytes']:,} | {r['tokens']:,} | {r['bits_per_byte']:.4f} | {vs} | "
            f"{r['bytes'] / 1000 / r['seconds']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    draw(rows, args.out / "chart.png", args.model)


def draw(rows: list[dict], path: Path, model: str | None) -> None:
    """Bits per byte of each file (a group of the chart) on each engine."""
    name = model or "smollm2-135m"
    bits_chart([{"group": r["file"], "model": name, **r} for r in rows], path)


if __name__ == "__main__":
    main()
