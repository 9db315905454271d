"""``compress``, ``decompress``, ``test`` and ``list``: xz/zstd habits over the API, in this process or on workers."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .. import __version__, api, parallel
from ..codec import format as fmt
from ..codec.settings import Settings, Stats
from ..dictionary import Dictionary
from ..errors import LmpressError
from ..partial import partial
from .common import (
    BLOCK,
    DataLost,
    Interrupt,
    UserError,
    archive_bytes,
    atomic_output,
    coding_settings,
    open_input,
    output_path,
    progress_bar,
    read_blocks,
    refuse_existing,
    show_progress,
)

SUFFIX = ".lmp"


def _decoded(
    src: IO[bytes], model: str | None, progress, threads: int = 0, dictionary: str | None = None
) -> Iterator[bytes]:
    """The original bytes of the archive read from ``src``, a block at a time: memory stays bounded."""
    with api.LmpFile(src, model=model, dictionary=dictionary, progress=progress, threads=threads) as archive:
        while block := archive.read(BLOCK):
            yield block


def compress_one(args: argparse.Namespace, name: str) -> None:
    src_path = None if name == "-" else Path(name)
    if src_path is not None and src_path.suffix == SUFFIX and not args.force:
        raise UserError(f"{name}: already has the {SUFFIX} suffix; skipping (use -f to compress anyway)")
    target = output_path(args, src_path, lambda p: p.with_name(p.name + SUFFIX))
    if target is None and sys.stdout.isatty() and not args.force:
        raise UserError("compressed data cannot be written to a terminal; use -o FILE or -f")
    size = src_path.stat().st_size if src_path is not None else None
    bar, progress = progress_bar(show_progress(args), size, name)
    started = time.perf_counter()
    digest = hashlib.sha256()
    if args.verify and target is None:
        raise UserError("--verify needs an output file (not standard output)")
    refuse_existing(target, args.force)
    journal = _journal(args, name, "compress", src_path, target) if args.pool else None
    s = Stats()

    def blocks(f: IO[bytes]) -> Iterator[bytes]:
        for block in read_blocks(f):
            digest.update(block)
            s.bytes_in += len(block)
            yield block

    with (
        open_input(src_path) as src,
        atomic_output(target, args.force, journal.folder if journal else None) as (out, tmp),
        bar,
    ):
        if args.pool is None:
            comp = api.Compressor(args.model, dictionary=args.dictionary, progress=progress, **coding_settings(args))
            for block in blocks(src):
                out.write(comp.compress(block))
            out.write(comp.flush())
            s = comp.stats
        else:  # segments on the workers: the same archive
            for piece in parallel.compress(
                args.pool, blocks(src), Settings.at_level(**coding_settings(args)), journal, progress
            ):
                out.write(piece)
                s.bytes_out += len(piece)
        out.flush()
        if args.verify and target is not None and tmp is not None:  # (--verify without a file is refused above)
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
        Interrupt.check()
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
        "settings": coding_settings(args) | {"threads": 0} if command == "compress" else {},
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
        return _decoded(stack.enter_context(open_input(src)), args.model, progress, args.threads, args.dictionary)
    archive = stack.enter_context(archive_bytes(src))
    layout = list(fmt.members(archive))
    if bar is not None:
        bar.total = parallel.original_size(archive, layout)
    pieces = parallel.decompress(args.pool, archive, journal, progress, layout)
    return stack.enter_context(contextlib.closing(pieces))


def decompress_one(args: argparse.Namespace, name: str, test: bool = False) -> None:
    src_path = None if name == "-" else Path(name)

    def strip(p: Path) -> Path:
        if p.suffix != SUFFIX:
            raise UserError(f"{name}: unknown suffix (expected {SUFFIX}); use -c or -o to name the output")
        return p.with_suffix("")

    target = None if test else output_path(args, src_path, strip)
    bar, progress = progress_bar(show_progress(args), None, name)
    started = time.perf_counter()
    size = 0
    inventing = getattr(args, "seed", None) is not None or getattr(args, "json", False)
    if inventing and not getattr(args, "partial", False):
        raise UserError("--seed and --json are for what --partial invents: use them with --partial")
    if not test and args.recover:
        _recover_one(args, src_path, target, progress, bar)
        return
    if not test and args.partial:
        _partial_one(args, src_path, target, progress, bar)
        return
    if not test:
        refuse_existing(target, args.force)
    journal = _journal(args, name, "decompress", src_path, target) if args.pool and not test else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        pieces = _decoding(args, stack, src_path, bar, progress, journal)
        if test:
            for piece in pieces:
                size += len(piece)
        else:
            with atomic_output(target, args.force, journal.folder if journal else None) as (out, _):
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
        Interrupt.check()
        src_path.unlink()


def _recover_one(args: argparse.Namespace, src_path: Path | None, target: Path | None, progress, bar) -> None:
    """Write every intact segment of a damaged archive; name each stretch of lost bytes."""
    lost: list[api.Damage] = []
    with (
        archive_bytes(src_path) as archive,
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


def _partial_one(args: argparse.Namespace, src_path: Path | None, target: Path | None, progress, bar) -> None:
    """Write every intact segment of a damaged archive and, in each lost stretch of known length, what the model
    writes there; name every verified and invented byte range."""
    name = src_path or "-"
    if args.json and target is None:
        raise UserError("--json writes to standard output: write the data to a file (-o), not -c")
    with archive_bytes(src_path) as archive, atomic_output(target, args.force) as (out, _), bar:
        made = partial(
            archive,
            args.model,
            dictionary=args.dictionary,
            seed=args.seed,
            progress=progress,
            threads=args.threads,
            invented=bar.update,
        )
        out.write(made.data)
    if args.json:
        parts = [dataclasses.asdict(p) for p in made.parts]
        lost = {"lost_after": made.lost_after, "reason": made.reason} if made.lost_after is not None else {}
        print(json.dumps({"archive": str(name), "output": str(target), "parts": parts, **lost}, indent=1))
    for part in made.parts:
        print(f"lmpress: {name}: {part}", file=sys.stderr)
    if made.lost_after is not None:
        print(f"lmpress: {name}: after byte {made.lost_after:,}: lost, length unknown ({made.reason})", file=sys.stderr)
    invented = len(made.data) - made.verified
    if invented or made.lost_after is not None:
        unknown = "; the rest, of unknown length, is lost" if made.lost_after is not None else ""
        raise DataLost(f"{made.verified:,} bytes verified, {invented:,} invented by the model{unknown}")


def list_archives(args: argparse.Namespace) -> None:
    """Print an archive's header and chunk table without loading a model."""
    for name in args.files:
        with archive_bytes(None if name == "-" else Path(name)) as archive:
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
    h = fmt.whole_header(data[slice(*member.header)])
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
            frame = fmt.whole_frame(data[start:end])
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
