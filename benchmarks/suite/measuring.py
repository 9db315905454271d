"""What the benchmark measures: each compressor's round trip (size, time, peak memory, exactness), lmpress's
own figures beside the float model's code length, and the machine's exact-product roofline."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

import lmpress
from lmpress.codec.scoring import windows
from lmpress.codec.settings import Settings
from lmpress.exact.arithmetic import BITS
from lmpress.models import return_freed_memory


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
    unpacker = lmpress.Decompressor(model)
    exact = unpacker.decompress(blob) == data and unpacker.eof
    d_s = time.perf_counter() - started
    s, steps = comp.stats, unpacker.steps
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
        "model_steps": steps.passes,  # the decoder's: fewer than tokens where guesses of the next ones were right
        "guesses_checked": steps.checked,
        "guesses_right": steps.right,
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
    for count, lin in [*((layers, lin) for lin in net.layers[0].linears().values()), (1, net.head)]:
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
    lins = [(name, lin) for layer in net.layers for name, lin in layer.linears().items()] + [("head", net.head)]
    return sum(2 * lin.shape[0] * lin.shape[1] * bits[name] // 8 for name, lin in lins)


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


def script_meta(script: str) -> dict:
    """When, where and how a benchmark script measured: its command line, the time, the machine."""
    return {
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
    }


def publish(out: Path, meta: dict, results: dict, text: str, **more: object) -> None:
    """A script's results under ``out``: results.json (``meta``, ``more`` and ``results``) and results.md (``text``,
    then when, where and how it was measured), which is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, **more, "results": results}, indent=1) + "\n")
    md = text.rstrip("\n") + f"\n\n- Measured {meta['measured']} on {meta['machine']} with `{meta['command']}`.\n"
    (out / "results.md").write_text(md)
    print(md)
