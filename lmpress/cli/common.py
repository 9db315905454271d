"""What every command shares: one-line user errors, Ctrl-C remembered, progress bars, inputs, and outputs
that appear whole or not at all."""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

BLOCK = 1 << 20


class UserError(Exception):
    """A problem with what the user asked for, reported as one line."""


class DataLost(Exception):
    """``--recover`` wrote what it could; the message says what is missing."""


def progress_bar(enabled: bool, total: int | None, desc: str) -> tuple[tqdm, Callable[[float, float], None]]:
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
        Interrupt.check()
        seen["bytes"] += n_bytes
        seen["bits"] += bits
        bar.update(n_bytes)
        if seen["bytes"]:
            bar.set_postfix_str(f"{seen['bits'] / seen['bytes']:.3f} bits/byte", refresh=False)

    return bar, update


class Interrupt:
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


def refuse_existing(target: Path | None, force: bool) -> None:
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
    refuse_existing(target, force)
    fd, tmp = tempfile.mkstemp(dir=folder or target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would create it; callers may narrow it
        with os.fdopen(fd, "wb") as out:
            yield out, tmp
            out.flush()
            os.fsync(out.fileno())
        Interrupt.check()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        yield block


def scoring_settings(args: argparse.Namespace) -> dict:
    """The level, and the settings given that override it (``Settings.at_level``'s arguments)."""
    given = {"window": args.window, "keep": args.keep_tokens, "chunk_size": args.chunk_size}
    given["batch"] = getattr(args, "batch", None)
    if (mixer := getattr(args, "mixer", None)) is not None:
        given["mixer"] = "" if mixer == "none" else mixer
    return {"level": args.level} | {k: v for k, v in given.items() if v is not None}


def coding_settings(args: argparse.Namespace) -> dict:
    return scoring_settings(args) | {"threads": args.threads}


def show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and (args.verbose or sys.stderr.isatty())


def output_path(args: argparse.Namespace, src: Path | None, rename: Callable[[Path], Path]) -> Path | None:
    if args.stdout:
        return None
    if args.output:
        return None if args.output == "-" else Path(args.output)
    return None if src is None else rename(src)


@contextlib.contextmanager
def open_input(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdin.buffer
        return
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    with path.open("rb") as f:
        yield f


@contextlib.contextmanager
def archive_bytes(path: Path | None) -> Iterator[bytes | mmap.mmap]:
    """A whole archive to search, mapped rather than read when it is a regular file (it may be larger than memory);
    read whole from standard input (None), a pipe or a device."""
    if path is None:
        yield sys.stdin.buffer.read()
        return
    with open_input(path) as f:
        status = os.fstat(f.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_size == 0:
            yield f.read()
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            with contextlib.suppress(BufferError):  # a view still held by an error's traceback: unmapped with it
                mapped.close()
