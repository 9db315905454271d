"""The documents the lens and ``train`` read: files, folders, glob patterns, JSONL records, Parquet rows."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .common import UserError

NO_GROUP = "(none)"  # the group of a record that lacks the field, or holds null in it


class Document(NamedTuple):
    name: str
    data: bytes
    group: str = ""  # with ``group_by``: a record's value of that field, a file's folder


def documents(paths: list[str], field: str, max_bytes: int, group_by: str | None = None) -> Iterator[Document]:
    """Each document: files, folders (recursively), glob patterns, JSONL records and Parquet rows (their ``field``).
    With ``group_by``, each record's value of that field (JSONL key, Parquet column) is its group, and a plain
    file's group is the folder it is in."""
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
                                data, group = _record(f, n, line, field, group_by)
                                yield Document(f"{f}:{n}", data[: max_bytes or None], group)
                elif f.suffix == ".parquet":
                    for n, (value, group) in enumerate(_parquet_rows(f, field, group_by), 1):
                        if value is not None:
                            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
                            yield Document(f"{f}:{n}", data[: max_bytes or None], group)
                else:
                    with f.open("rb") as src:
                        yield Document(str(f), src.read(max_bytes or -1), str(f.parent) if group_by else "")


def _parquet_rows(path: Path, field: str, group_by: str | None) -> Iterator[tuple[object, str]]:
    """(the value of ``field``, that of ``group_by`` as text or "") of each row of a Parquet file, a batch of rows
    in memory at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
        columns = [field, *([group_by] if group_by else [])]
        for name, option in zip(columns, ("--field", "--group-by")):
            if name not in table.schema_arrow.names:
                has = ", ".join(table.schema_arrow.names)
                raise UserError(f"{path}: no column {name!r} (it has {has}); use {option}")
        for batch in table.iter_batches(columns=columns, batch_size=1024):
            values = batch.column(0).to_pylist()
            groups = batch.column(1).to_pylist() if group_by else [""] * len(values)
            yield from zip(values, (NO_GROUP if g is None else str(g) for g in groups))
    except UserError:
        raise
    except Exception as e:  # pyarrow reports unreadable files with its own exception types
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


def _record(path: Path, n: int, line: bytes, field: str, group_by: str | None) -> tuple[bytes, str]:
    """A JSONL record's text and group ("" without ``group_by``; a record without that field: "")."""
    try:
        record = json.loads(line)
        value = record[field]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: not a JSON object with a {field!r} field") from None
    group = record.get(group_by, NO_GROUP) if group_by else ""
    return str(value).encode("utf-8"), NO_GROUP if group is None else str(group)
