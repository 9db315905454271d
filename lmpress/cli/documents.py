"""The documents the lens and ``train`` read: files, folders, glob patterns, JSONL records, Parquet rows, and
Hugging Face ``datasets`` folders."""

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
    """Each document: files, folders (recursively), glob patterns, JSONL records, Parquet rows and the rows of
    Hugging Face ``datasets`` folders (``save_to_disk``'s; their ``field``). With ``group_by``, each record's value
    of that field (JSONL key, column) is its group, and a plain file's group is the folder it is in."""
    for spec in paths:
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise UserError(f"{spec}: no files match")
        for match in matches:
            path = Path(match)
            if (path / DATASET_DICT).is_file() or (path / DATASET_STATE).is_file():
                yield from _dataset(path, field, max_bytes, group_by)
                continue
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                if f.suffix == ".jsonl":
                    with f.open("rb") as lines:
                        for n, line in enumerate(lines, 1):
                            if line.strip():
                                data, group = _record(f, n, line, field, group_by)
                                yield Document(f"{f}:{n}", data[: max_bytes or None], group)
                elif f.suffix == ".parquet":
                    yield from _table(f, _parquet_batches, field, max_bytes, group_by)
                else:
                    with f.open("rb") as src:
                        yield Document(str(f), src.read(max_bytes or -1), str(f.parent) if group_by else "")


DATASET_DICT = "dataset_dict.json"  # a DatasetDict folder: {"splits": [...]}, one dataset folder a split
DATASET_STATE = "state.json"  # a Dataset folder: its Arrow files under "_data_files"


def _dataset(path: Path, field: str, max_bytes: int, group_by: str | None) -> Iterator[Document]:
    """The rows of a ``datasets`` folder (every split's, in the order the folder lists them), read from its Arrow
    files with pyarrow, as ``datasets.load_from_disk`` reads them."""
    try:
        if (path / DATASET_DICT).is_file():
            for split in json.loads((path / DATASET_DICT).read_text())["splits"]:
                yield from _dataset(path / split, field, max_bytes, group_by)
            return
        state = json.loads((path / DATASET_STATE).read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a readable datasets folder ({e})") from None
    if state.get("_indices") is not None:
        raise UserError(f"{path}: a dataset saved with an indices mapping; save it after flatten_indices()")
    n = 0
    for f in files:
        for document in _table(f, _arrow_batches, field, max_bytes, group_by):
            n += 1
            yield document._replace(name=f"{path}:{n}")


def _parquet_batches(path: Path) -> tuple[list[str], Iterator]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    return table.schema_arrow.names, table.iter_batches(batch_size=1024)


def _arrow_batches(path: Path) -> tuple[list[str], Iterator]:
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    return reader.schema.names, iter(reader)


def _table(path: Path, batches, field: str, max_bytes: int, group_by: str | None) -> Iterator[Document]:
    """The rows of a columnar file (``batches(path)``: its column names and record batches), their ``field`` as
    text, a batch of rows in memory at a time."""
    try:
        import pyarrow  # noqa: F401 (present, or say how to get it)
    except ImportError:
        raise UserError(f"{path}: reading it needs pyarrow (pip install pyarrow)") from None
    try:
        names, rows = batches(path)
        for name, option in ((field, "--field"), (group_by, "--group-by")):
            if name is not None and name not in names:
                raise UserError(f"{path}: no column {name!r} (it has {', '.join(names)}); use {option}")
        n = 0
        for batch in rows:
            values = batch.column(field).to_pylist()
            groups = batch.column(group_by).to_pylist() if group_by else [""] * len(values)
            for value, group in zip(values, groups):
                n += 1
                if value is not None:
                    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
                    yield Document(f"{path}:{n}", data[: max_bytes or None], NO_GROUP if group is None else str(group))
    except UserError:
        raise
    except Exception as e:  # pyarrow reports unreadable files with its own exception types
        raise UserError(
            f"{path}: not a readable {path.suffix[1:] or 'Arrow'} file ({' '.join(str(e).split())})"
        ) from None


def _record(path: Path, n: int, line: bytes, field: str, group_by: str | None) -> tuple[bytes, str]:
    """A JSONL record's text and group ("" without ``group_by``; a record without that field: ``NO_GROUP``)."""
    try:
        record = json.loads(line)
        value = record[field]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: not a JSON object with a {field!r} field") from None
    group = record.get(group_by) if group_by else ""
    return str(value).encode("utf-8"), NO_GROUP if group is None else str(group)
