"""The documents the lens and ``train`` read: files, folders, glob patterns, JSONL records, Parquet rows."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from .common import UserError


def documents(paths: list[str], field: str, max_bytes: int) -> Iterator[tuple[str, bytes]]:
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
