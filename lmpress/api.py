"""The public interface, shaped like Python's ``lzma`` module."""

from __future__ import annotations

import builtins
import io
import os
from typing import IO, Any

from . import format as fmt
from .engine import Progress, Settings, Stats, decode_segment, encode_segment, segment_length, torch_threads
from .errors import FormatError, ModelMismatchError
from .llama import ENGINE
from .models import LanguageModel, load_model

ModelSpec = str | os.PathLike | LanguageModel | None
_READ_SIZE = 1 << 16


def _model(model: ModelSpec) -> LanguageModel:
    return model if isinstance(model, LanguageModel) else load_model(None if model is None else str(model))


class Compressor:
    """Incremental compressor: ``compress()`` pieces, then ``flush()`` once, as ``lzma.LZMACompressor``.

    Settings (``window``, ``keep``, ``chunk_size``, ``max_batch``, ``threads``, ``start_token``) are those of
    ``engine.Settings``. The archive decodes the same on any machine, whatever the threads or device.
    """

    def __init__(self, model: ModelSpec = None, *, progress: Progress | None = None, **settings: Any):
        self.settings = Settings(**settings)
        self.model = _model(model)
        self.stats = Stats()
        self._progress = progress
        self._buffer = bytearray()
        self._crc = 0  # of the input coded so far
        self._finished = False
        self.header = fmt.Header(
            model_name=self.model.name,
            model_id=self.model.model_id,
            engine=ENGINE,
            start_token=self.settings.start(self.model),
            window=self.settings.window,
            keep=self.settings.keep,
            group=self.settings.max_batch,
        )
        self._pending = self.header.to_bytes()

    def _segment(self, data: bytes) -> bytes:
        with torch_threads(self.settings.threads):
            segment, stats = encode_segment(self.model, data, self.settings, self._crc, self._progress)
        self._crc = segment.crc32
        raw = segment.to_bytes()
        stats.bytes_out = len(raw)
        self.stats.add(stats)
        return raw

    def compress(self, data: bytes) -> bytes:
        """Compress ``data``; returns whatever compressed output is ready (possibly b"")."""
        if self._finished:
            raise ValueError("compressor has already been flushed")
        self._buffer += data
        out, self._pending = [self._pending], b""
        while cut := segment_length(self._buffer, self.settings, final=False):
            out.append(self._segment(bytes(self._buffer[:cut])))
            del self._buffer[:cut]
        return b"".join(out)

    def flush(self) -> bytes:
        """Compress what is left and finish the archive."""
        if self._finished:
            raise ValueError("compressor has already been flushed")
        out = [self.compress(b"")]
        while cut := segment_length(self._buffer, self.settings, final=True):
            out.append(self._segment(bytes(self._buffer[:cut])))
            del self._buffer[:cut]
        end = fmt.End(self.stats.bytes_in).to_bytes()
        out.append(end)
        self._finished = True
        self.stats.bytes_out += len(self.header.to_bytes()) + len(end)
        return b"".join(out)


class Decompressor:
    """Incremental decompressor, as ``lzma.LZMADecompressor``: feed it bytes, get bytes; ``eof`` at the end.
    ``threads``: compute threads (0: torch's default), for speed only."""

    def __init__(self, model: ModelSpec = None, *, progress: Progress | None = None, threads: int = 0):
        self._model_spec = model
        self._progress = progress
        self._threads = threads
        self.model: LanguageModel | None = None
        self.header: fmt.Header | None = None
        self.eof = False
        self.unused_data = b""
        self._buffer = bytearray()
        self._size = 0
        self._crc = 0
        self._segments = 0

    @property
    def needs_input(self) -> bool:
        return not self.eof

    def _check_model(self, header: fmt.Header) -> None:
        self.model = _model(self._model_spec)
        if self.model.model_id != header.model_id:
            raise ModelMismatchError(
                f"archive was made with model {header.model_name!r} (id {header.model_id}), but the loaded model "
                f"{self.model.name!r} has id {self.model.model_id}; pass the archive's model with --model"
            )

    def decompress(self, data: bytes) -> bytes:
        if self.eof:
            raise EOFError("already at the end of the archive")
        self._buffer += data
        out = []
        if self.header is None:
            parsed = fmt.parse_header(self._buffer)
            if parsed is None:
                return b""
            header, n = parsed
            del self._buffer[:n]
            self._check_model(header)
            self.header = header
        h = self.header
        settings = Settings(window=h.window, keep=h.keep, max_batch=h.group, start_token=h.start_token)
        while not self.eof and (parsed := fmt.parse_frame(self._buffer)) is not None:
            frame, n = parsed
            del self._buffer[:n]
            if isinstance(frame, fmt.End):
                if frame.total_size != self._size:
                    raise FormatError(
                        f"corrupted archive (end marker says {frame.total_size:,} bytes, segments hold {self._size:,})"
                    )
                self.eof = True
                self.unused_data = bytes(self._buffer)
                break
            where = f"segment {self._segments} (from byte {self._size})"
            with torch_threads(self._threads):
                piece = decode_segment(self.model, frame, settings, where, self._crc, self._progress)
            self._segments += 1
            self._size += len(piece)
            self._crc = frame.crc32
            out.append(piece)
        return b"".join(out)


def compress(data: bytes, model: ModelSpec = None, **settings: Any) -> bytes:
    """Compress ``data`` into a complete .lmp archive."""
    c = Compressor(model, **settings)
    return c.compress(data) + c.flush()


def decompress(data: bytes, model: ModelSpec = None) -> bytes:
    """Decompress a complete .lmp archive; errors unless it is whole and nothing follows it."""
    d = Decompressor(model)
    out = d.decompress(data)
    if not d.eof:
        raise FormatError("truncated archive (it ends before its end marker)")
    if d.unused_data:
        raise FormatError(f"{len(d.unused_data)} bytes of trailing data after the archive")
    return out


class LmpFile(io.BufferedIOBase):
    """A file object over an .lmp archive: read plain bytes from it, or write plain bytes into it."""

    def __init__(
        self, filename: str | os.PathLike | IO[bytes], mode: str = "rb", *, model: ModelSpec = None, **settings: Any
    ):
        if mode in ("r", "rb"):
            self._mode = "r"
        elif mode in ("w", "wb", "x", "xb"):
            self._mode = "w"
        else:
            raise ValueError(f"invalid mode: {mode!r}")
        if isinstance(filename, (str, bytes, os.PathLike)):
            self._fp = builtins.open(filename, self._mode + "b" if "x" not in mode else "xb")  # noqa: SIM115 (closed by close())
            self._owns = True
        elif hasattr(filename, "read" if self._mode == "r" else "write"):
            self._fp, self._owns = filename, False
        else:
            raise TypeError("filename must be a path or a file object")
        if self._mode == "r":
            self._decoder = Decompressor(model)
            self._out = bytearray()
        else:
            self._encoder = Compressor(model, **settings)

    def readable(self) -> bool:
        return self._mode == "r" and not self.closed

    def writable(self) -> bool:
        return self._mode == "w" and not self.closed

    def _fill(self) -> bool:
        if self._decoder.eof:
            return False
        data = self._fp.read(_READ_SIZE)
        if not data:
            raise FormatError("truncated archive (it ends before its end marker)")
        self._out += self._decoder.decompress(data)
        if self._decoder.eof and (self._decoder.unused_data or self._fp.read(1)):
            raise FormatError("trailing data after the archive")
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self.readable():
            raise io.UnsupportedOperation("not open for reading")
        while (size is None or size < 0 or len(self._out) < size) and self._fill():
            pass
        n = len(self._out) if size is None or size < 0 else size
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        if not self.writable():
            raise io.UnsupportedOperation("not open for writing")
        data = bytes(data)
        self._fp.write(self._encoder.compress(data))
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._mode == "w":
                self._fp.write(self._encoder.flush())
        finally:
            try:
                if self._owns:
                    self._fp.close()
            finally:
                super().close()


def open(
    filename,
    mode: str = "rb",
    *,
    model: ModelSpec = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    **settings: Any,
):
    """Open an .lmp archive in binary ('rb', 'wb', 'xb') or text ('rt', 'wt', 'xt') mode, like ``lzma.open``."""
    if "t" in mode:
        binary = LmpFile(filename, mode.replace("t", ""), model=model, **settings)
        return io.TextIOWrapper(binary, encoding, errors, newline)
    if encoding is not None or errors is not None or newline is not None:
        raise ValueError("encoding, errors and newline apply to text mode only")
    return LmpFile(filename, mode, model=model, **settings)
