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
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import lmpress
from lmpress.codec.scoring import windows
from lmpress.codec.settings import Settings
from lmpress.exact import ENGINE
from lmpress.exact.arithmetic import BITS
from lmpress.models import load_model, return_freed_memory

BENCH = (Path(__file__).resolve().parents[2] / "shared" / "bench").resolve()  # resolved: ../shared may be a link
DEFAULT_INPUTS = ["canterbury", "fresh", "enwik8-prefix/enwik5"]
QUICK_INPUTS = ["canterbury", "calgary", "enwik8-prefix", "fresh"]
QUICK_PREFIX, QUICK_CHUNK = 512, 128
MARKERS = ("<!-- results -->", "<!-- /results -->")


@dataclass(frozen=True)
class Peer:
    """A compressor run as a program, on files named in ``{in}`` and ``{out}``.

    ``packs_to``/``unpacks_to``: where each direction writes: "stdout", "file" ({out}) or "dir" ({out}/input).
    """

    name: str
    compress: tuple[str, ...]
    decompress: tuple[str, ...]
    packs_to: str = "stdout"
    unpacks_to: str = "stdout"
    suffix: str = ""
    install: str = ""


PEERS = [
    Peer("xz -9e", ("xz", "-9e", "-T1", "-c", "{in}"), ("xz", "-d", "-c", "{in}"), install="xz-utils"),
    Peer(
        "zstd -22 --long=27",
        ("zstd", "--ultra", "-22", "--long=27", "-q", "-c", "{in}"),
        ("zstd", "-d", "--long=27", "-q", "-c", "{in}"),
        install="zstd",
    ),
    Peer("bzip2 -9", ("bzip2", "-9", "-c", "{in}"), ("bzip2", "-d", "-c", "{in}"), install="bzip2"),
    Peer(
        "brotli -q 11 -w 24",
        ("brotli", "-q", "11", "-w", "24", "-c", "{in}"),
        ("brotli", "-d", "-c", "{in}"),
        install="brotli",
    ),
    Peer(
        "7z PPMd o16",
        ("7z", "a", "-bso0", "-bsp0", "-t7z", "-m0=PPMd:o=16:mem=256m", "{out}", "{in}"),
        ("7z", "e", "-so", "{in}"),
        packs_to="file",
        suffix=".7z",
        install="p7zip-full",
    ),
    Peer(
        "zpaq -m5",
        ("zpaq", "a", "{out}", "{in}", "-m5"),
        ("zpaq", "x", "{in}", "-to", "{out}"),
        packs_to="file",
        unpacks_to="dir",
        suffix=".zpaq",
        install="zpaq",
    ),
    Peer("cmix", ("cmix", "-c", "{in}", "{out}"), ("cmix", "-d", "{in}", "{out}"), "file", "file"),
    Peer("paq8px -8", ("paq8px", "-8", "{in}", "{out}"), ("paq8px", "-d", "{in}", "{out}"), "file", "file"),
    Peer("ts_zip", ("ts_zip", "c", "{in}", "{out}"), ("ts_zip", "d", "{in}", "{out}"), "file", "file"),
]


def run_measured(argv: list[str], stdout_path: Path | None, cwd: Path) -> tuple[float, int]:
    """Run a program; (seconds, its peak RSS in KiB). Raises if it fails.

    GNU time reports the peak: a child forked straight from this (large) Python process would count this
    process's pages in its own peak.
    """
    report = cwd / ".rss"
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    try:
        done = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", str(report), *argv], stdout=out, stderr=subprocess.PIPE, cwd=cwd
        )
    finally:
        if stdout_path:
            out.close()
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[:200]}")
    return seconds, int(report.read_text().split()[-1])


def measure_peer(peer: Peer, data: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "input").write_bytes(data)
        packed = work / f"packed{peer.suffix}"
        argv = [a.format(**{"in": "input", "out": packed.name}) for a in peer.compress]
        c_s, c_rss = run_measured(argv, packed if peer.packs_to == "stdout" else None, work)
        size = packed.stat().st_size
        (work / "input").unlink()
        out = {"stdout": "restored", "file": "restored", "dir": "x"}[peer.unpacks_to]
        argv = [a.format(**{"in": packed.name, "out": out}) for a in peer.decompress]
        d_s, d_rss = run_measured(argv, work / out if peer.unpacks_to == "stdout" else None, work)
        restored = work / "x" / "input" if peer.unpacks_to == "dir" else work / "restored"
        exact = restored.exists() and restored.read_bytes() == data
    return {"bytes_out": size, "compress_s": c_s, "decompress_s": d_s, "rss_kib": max(c_rss, d_rss), "exact": exact}


def reset_peak_rss() -> None:
    """Forget this process's peak RSS (Linux), so that the next reading is one file's: model plus coding."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def measure_lmpress(model, data: bytes, settings: dict, reference: FloatReference | None) -> dict:
    reset_peak_rss()
    started = time.perf_counter()
    comp = lmpress.Compressor(model, **settings)
    blob = comp.compress(data) + comp.flush()
    c_s = time.perf_counter() - started
    started = time.perf_counter()
    exact = lmpress.decompress(blob, model=model) == data
    d_s = time.perf_counter() - started
    s = comp.stats
    rss = peak_rss_kib()
    float_bits = reference.bits(data, s.lm_spans, Settings.at_level(**settings)) if reference else None
    return {
        "bytes_out": len(blob),
        "compress_s": c_s,
        "decompress_s": d_s,
        "exact": exact,
        "rss_kib": rss,
        "float_ideal_bits": float_bits,  # the float model on the same chunks: what lmpress 0.1 coded at best
        "tokens": s.tokens,
        "ideal_bits": s.ideal_bits,
        "lm_bytes_in": s.lm_bytes_in,
        "lm_bytes_out": s.lm_bytes_out,
        "overhead_pct": 100 * s.overhead,
        "chunks": s.chunks,
    }


class FloatReference:
    """The float32 model lmpress 0.1 coded with (through transformers), for the ideal code length of the same
    chunks with the same context windows: what the float engine's archives held, less its coder's overhead.
    Loaded for each file after lmpress's own figures and freed again, so lmpress's peak memory is its own."""

    def __init__(self, lm):
        self.lm = lm

    def model(self):
        from safetensors.torch import load_file
        from transformers import LlamaConfig, LlamaForCausalLM

        config = json.loads((self.lm.source / "config.json").read_text())
        model = LlamaForCausalLM(LlamaConfig.from_dict(config)).eval()
        state = {}
        for f in sorted(self.lm.source.glob("*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"float reference: weights do not fit ({missing[:3]}, {unexpected[:3]})")
        model.tie_weights()
        return model

    def bits(self, data: bytes, spans: list[tuple[int, int]], settings: Settings) -> float:
        if not spans:
            return 0.0
        model, total, start = self.model(), 0.0, settings.start(self.lm)
        for a, b in spans:
            ids = self.lm.tokenize(data[a:b])
            for ctx, first, end in windows(len(ids), settings.window, settings.keep):
                with torch.inference_mode():
                    logits = model(torch.tensor([[start, *ids[ctx : end - 1]]])).logits[0, first - ctx :]
                    logp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids[first:end])[:, None])
                total -= float(logp.sum()) / math.log(2)
        del model
        return_freed_memory()
        return total


def exact_roofline(net, rows: int = 512) -> dict:
    """The machine's exact-product roofline: the model's weight products (8-bit operands, ``rows`` at a time,
    the best of three) by the fastest exact route, the backend lmpress chose or its own packed weights on AMX
    tiles (where the CPU has them), as operations and tokens per second."""
    layers = len(net.layers)
    gen = torch.Generator().manual_seed(0)
    routes = {net.gemm.name: lambda lin, a, w: net.gemm.mm(a, w.t())}
    if net.tiles:
        routes["amx-tiles"] = lambda lin, a, w: lin.product(net.gemm, a)
    fastest = dict.fromkeys(routes, 0.0)
    for count, lin in [*((layers, lin) for lin in vars(net.layers[0]).values()), (1, net.head)]:
        a = torch.randint(-127, 128, (rows, lin.shape[1]), dtype=torch.int8, generator=gen).to(net.device)
        w = lin.plain()
        for name, route in routes.items():
            route(lin, a, w)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                route(lin, a, w)
                best = min(best, time.perf_counter() - started)
            fastest[name] += count * best / rows
    backend = min(fastest, key=fastest.get)
    per_token = fastest[backend]
    return {"backend": backend, "tokens_per_s": 1 / per_token, "ops_per_s": flops_per_token(net) / per_token}


def flops_per_token(net) -> int:
    """The model's own operations per token: 2 × the parameters of every weight product (not the embedding)."""
    return engine_ops_per_token(net, dict.fromkeys(BITS, 8))


def engine_ops_per_token(net, bits: dict[str, int] = BITS) -> int:
    """The operations of lmpress's own weight products per token, with activations of ``bits``
    (``exact.arithmetic.BITS``): a 16-bit activation is two int8 operand rows, so its products count twice."""
    lins = [(name, lin) for layer in net.layers for name, lin in vars(layer).items()] + [("head", net.head)]
    return sum(2 * lin.shape[0] * lin.shape[1] * bits[name] // 8 for name, lin in lins)


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


def totals(rows: list[dict], name: str, label: str) -> dict:
    keys = ("bytes", "bytes_out", "compress_s", "decompress_s", "tokens", "ideal_bits", "lm_bytes_out")
    t = {k: sum(r.get(k, 0) or 0 for r in rows) for k in keys}
    t.update(compressor=name, file=label, files=len(rows), exact=all(r["exact"] for r in rows))
    t["rss_kib"] = max(r["rss_kib"] for r in rows)
    return derive(t)


def groups(rows: list[dict]) -> dict[str, set[str]]:
    """The sets of files totalled: all; the text files (of which the first lmpress coded at least half the bytes
    with the model); the fresh files (2026 text, which no model can have memorised), when there are any."""
    first = rows[0]["compressor"]
    files = {r["file"] for r in rows}
    out = {"total": files}
    text = {r["file"] for r in rows if r["compressor"] == first and r["lm_bytes_in"] >= r["bytes"] / 2}
    if text and text != files:
        out["total (text files)"] = text
    fresh = {f for f in files if f.startswith("fresh/")}
    if fresh and fresh != files:
        out["total (fresh/, 2026)"] = fresh
    return out


def summary(rows: list[dict], meta: dict) -> list[dict]:
    """Totals per group and compressor; the first lmpress total also gets its coding overhead and roofline share."""
    compressors = list(dict.fromkeys(r["compressor"] for r in rows))
    out = [
        totals([r for r in rows if r["compressor"] == c and r["file"] in files], c, label)
        for label, files in groups(rows).items()
        for c in compressors
    ]
    lm = out[0]
    lm["overhead_pct"] = 100 * (lm["lm_bytes_out"] * 8 / lm["ideal_bits"] - 1) if lm["ideal_bits"] else 0.0
    lm["flops_per_byte"] = meta["flops_per_token"] * lm["tokens"] / max(lm["bytes"], 1)
    for key, seconds in (("roofline_pct", "compress_s"), ("decode_roofline_pct", "decompress_s")):
        lm[key] = 100 * meta["flops_per_token"] * lm["tokens"] / lm[seconds] / meta["roofline_gflops"] / 1e9
    if "engine_ops_per_token" in meta:  # results of older runs lack it
        at_roofline = meta["engine_ops_per_token"] * lm["tokens"] / meta["roofline_gflops"] / 1e9
        lm["products_share_pct"] = 100 * at_roofline / lm["compress_s"]
    mine = [r for r in rows if r["compressor"] == lm["compressor"]]
    if all(r.get("float_ideal_bits") is not None for r in mine):
        lm["float_ideal_bits"] = sum(r["float_ideal_bits"] for r in mine)
        lm["lm_bytes_in"] = sum(r["lm_bytes_in"] for r in mine)
        lm["float_bits_per_byte"] = lm["float_ideal_bits"] / max(lm["lm_bytes_in"], 1)
    return out


def derive(r: dict) -> dict:
    r["bits_per_byte"] = 8 * r["bytes_out"] / max(r["bytes"], 1)
    r["compress_kbps"] = r["bytes"] / 1000 / max(r["compress_s"], 1e-9)
    r["decompress_kbps"] = r["bytes"] / 1000 / max(r["decompress_s"], 1e-9)
    return r


def full_table(rows: list[dict], xz: dict[str, int]) -> str:
    """One line per compressor and file (or total): every measured figure."""
    lines = [
        "| compressor | file | bytes | compressed | bits/byte | vs xz -9e | compress KB/s | decompress KB/s | "
        "peak RSS MiB | exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        vs = r["bytes_out"] / xz[r["file"]] if xz.get(r["file"]) else float("nan")
        lines.append(
            f"| {r['compressor']} | {r['file']} | {r['bytes']:,} | {r['bytes_out']:,} | "
            f"{r['bits_per_byte']:.3f} | {vs:.3f}× | {r['compress_kbps']:.2f} | {r['decompress_kbps']:.2f} | "
            f"{r['rss_kib'] / 1024:.0f} | {'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def bits_table(rows: list[dict], total_rows: list[dict], xz: dict[str, int]) -> str:
    """Files down, compressors across, bits per byte in the cells; the smallest of each line in bold."""
    compressors = list(dict.fromkeys(r["compressor"] for r in rows))
    cell = {(r["file"], r["compressor"]): r for r in total_rows + rows}
    first = compressors[0]
    lines = [
        f"| file | bytes | {' | '.join(compressors)} | {first} vs xz -9e |",
        "|---|---:|" + "---:|" * (len(compressors) + 1),
    ]
    for name in dict.fromkeys(r["file"] for r in total_rows + rows):
        line = [cell.get((name, c)) for c in compressors]
        best = min(r["bytes_out"] for r in line if r)
        bits = [
            "–"
            if r is None
            else f"**{r['bits_per_byte']:.3f}**"
            if r["bytes_out"] == best
            else f"{r['bits_per_byte']:.3f}"
            for r in line
        ]
        vs = f"{line[0]['bytes_out'] / xz[name]:.3f}×" if line[0] and xz.get(name) else "–"
        label = f"**{name}**" if name.startswith("total") else name
        lines.append(f"| {label} | {line[0]['bytes'] if line[0] else 0:,} | {' | '.join(bits)} | {vs} |")
    return "\n".join(lines)


def notes(meta: dict, lm: dict) -> str:
    out = [
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}`"
        + (f" (first {meta['prefix']:,} bytes of each file)" if meta["prefix"] else "")
        + (f", resumed {', '.join(meta['resumed'])}" if meta.get("resumed") else "")
        + f"; finished {meta['finished']}. Every output was decompressed by its own compressor and compared.",
        "Text files: those of which lmpress coded at least half the bytes with the model (on the others it falls "
        "back to LZMA2). fresh/: files written in 2026, which a model trained before then cannot have memorised.",
        f"lmpress {meta['lmpress_version']} (engine {meta['engine']}), model {lm['model']} (loaded in "
        f"{meta['load_s']:.1f} s), torch {meta['torch']}, {meta['cpu']}: {lm['tokens']:,} tokens, ideal code length "
        f"{lm['ideal_bits'] / 8:,.0f} bytes, range-coder overhead {lm['overhead_pct']:.2f}%.",
        f"Exact-product roofline of this machine: {meta['roofline_gflops']:.0f} GOP/s "
        f"({meta.get('roofline_backend', meta['gemm'])}, the model's "
        f"weight products with 8-bit operands), {meta['flops_per_token'] / 1e6:.0f} MOP per token; lmpress at "
        f"{lm['roofline_pct']:.1f}% of it compressing and {lm['decode_roofline_pct']:.1f}% decompressing"
        + (
            f". Its own products, with its 16-bit activations counted as two int8 rows each, are "
            f"{meta['engine_ops_per_token'] / 1e6:.0f} MOP per token: at the roofline's rate they alone would take "
            f"{lm['products_share_pct']:.0f}% of the compressing time."
            if "products_share_pct" in lm
            else "."
        ),
        *(
            [
                f"The float model (float32, what lmpress 0.1 coded with) on the same chunks: "
                f"{lm['float_bits_per_byte']:.4f} bits/byte of model-coded text against the integer engine's "
                f"{lm['ideal_bits'] / max(lm['lm_bytes_in'], 1):.4f} ideal and "
                f"{8 * lm['lm_bytes_out'] / max(lm['lm_bytes_in'], 1):.4f} coded: "
                f"{100 * (lm['lm_bytes_out'] * 8 / lm['float_ideal_bits'] - 1):+.2f}% bits."
            ]
            if lm.get("float_ideal_bits")
            else []
        ),
    ]
    out += [f"Skipped: {s}." for s in meta["skipped"]]
    return "\n".join(f"- {n}" for n in out)


def report(results: dict, out: Path, readme: Path | None, draw: bool) -> str:
    """results.md (summary, bits-per-byte table, every figure), chart.png, and the README's results section."""
    rows = sorted(results["files"], key=lambda r: r["file"])  # stable: compressors keep their order per file
    total_rows, meta = results["totals"], results["meta"]
    xz = {r["file"]: r["bytes_out"] for r in total_rows + rows if r["compressor"] == "xz -9e"}
    lm = {**total_rows[0], "model": next(iter(meta["models"]))}
    overall = [t for t in total_rows if t["file"] == "total"]
    summary_md = f"{full_table(overall, xz)}\n\nBits per byte (lower is better):\n\n{bits_table(rows, total_rows, xz)}"
    (out / "results.md").write_text(
        f"{summary_md}\n\n{notes(meta, lm)}\n\nEvery total and file:\n\n{full_table(total_rows + rows, xz)}\n"
    )
    if draw:
        chart(rows, overall, out / "chart.png")
    if readme:
        text = readme.read_text()
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        readme.write_text(f"{text[:start]}\n{summary_md}\n\n{notes(meta, lm)}\n{text[end:]}")
    return summary_md


def chart(rows: list[dict], totals_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = plt.get_cmap("tab10" if len(totals_rows) <= 10 else "tab20").colors  # a colour of its own each
    for i, t in enumerate(totals_rows):
        c = colours[i % len(colours)]
        mine = [r for r in rows if r["compressor"] == t["compressor"]]
        ax.scatter([r["compress_kbps"] for r in mine], [r["bits_per_byte"] for r in mine], s=10, color=c, alpha=0.35)
        ax.scatter([t["compress_kbps"]], [t["bits_per_byte"]], s=70, color=c, label=t["compressor"], edgecolor="k")
    ax.set_xscale("log")
    ax.set_xlabel("compression throughput, KB/s (log scale)")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Compressors on the benchmark files (large: total, small: per file)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def source_digest() -> str:
    """sha256 of lmpress's own source files: a resumed run must measure the same code."""
    h = hashlib.sha256()
    root = Path(lmpress.__file__).parent
    for f in sorted(root.rglob("*.py")):  # every package's modules, by their path in the package
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


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
