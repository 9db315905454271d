"""The public interface, shaped like Python's ``lzma`` module."""

from __future__ import annotations

import builtins
import io
import os

try:  # Python 3.14 moved the helpers of gzip, bz2 and lzma here
    from compression._common import _streams as _compression
except ImportError:
    import _compression
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .codec import format as fmt
from .codec.chunking import segment_length
from .codec.segments import decode_segment, encode_segment
from .codec.settings import Progress, Settings, Stats, Steps
from .dictionary import Dictionary
from .errors import DictionaryMismatchError, FormatError, LmpressError, ModelMismatchError, NotAnArchiveError
from .exact import ENGINE
from .exact.runner import compute_threads
from .models import LanguageModel, adapted, load_model

ModelSpec = str | os.PathLike | LanguageModel | None
DictionarySpec = str | os.PathLike | Dictionary | None


def _model(model: ModelSpec) -> LanguageModel:
    return model if isinstance(model, LanguageModel) else load_model(None if model is None else str(model))


def _dictionary(spec: DictionarySpec) -> Dictionary | None:
    return spec if spec is None or isinstance(spec, Dictionary) else Dictionary.read(spec)


_ADAPTED: dict[tuple[str, str, str], LanguageModel] = {}  # the last adapted model: building one takes seconds


def coding_model(base: LanguageModel, dictionary: Dictionary | None) -> LanguageModel:
    """The model that codes with ``dictionary``: ``base``, or ``base`` with the dictionary's adapter merged in."""
    if dictionary is None or not dictionary.adapter:
        return base
    key = (base.model_id, str(base.net.device), dictionary.id)
    if key not in _ADAPTED:
        try:
            model = adapted(base, dictionary.factors(), f"dictionary {dictionary.id}")
        except ValueError as e:
            raise FormatError(f"corrupted dictionary {dictionary.id} ({e})") from None
        if model.model_id != dictionary.adapted_id:
            raise ModelMismatchError(
                f"{base.name!r} adapted with dictionary {dictionary.id} is model {model.model_id} here, but was "
                f"{dictionary.adapted_id} where the dictionary was made: this machine's float weights of the model "
                f"differ from those (re-fetch or convert the model again)"
            )
        _ADAPTED.clear()
        _ADAPTED[key] = model
    return _ADAPTED[key]


class Compressor:
    """Incremental compressor: ``compress()`` pieces, then ``flush()`` once, as ``lzma.LZMACompressor``.

    ``level`` 1 (fastest) … 9 (smallest), default ``codec.settings.DEFAULT_LEVEL``, as ``lzma``'s ``preset``; settings
    (``window``, ``keep``, ``chunk_size``, ``batch``, ``mixer``, ``threads``, ``start_token``) are those of
    ``codec.settings.Settings`` and override the level's. The archive decodes the same on any machine, whatever the
    threads or device.
    ``dictionary``: a ``Dictionary`` or the path of a ``.lmpd`` file (``lmpress train``); decoding needs it too.
    """

    def __init__(
        self,
        model: ModelSpec = None,
        *,
        level: int | None = None,
        dictionary: DictionarySpec = None,
        progress: Progress | None = None,
        **settings: Any,
    ):
        self.dictionary = _dictionary(dictionary)
        primer = self.dictionary.tokens if self.dictionary else ()
        self.settings = Settings.at_level(level, **settings, primer=primer)
        base = _model(model)
        if self.dictionary is not None:
            self.dictionary.for_model(base)
        self.model = coding_model(base, self.dictionary)
        self.stats = Stats()
        self._progress = progress
        self._buffer = bytearray()
        self._finished = False
        self.header = fmt.Header(
            model_name=base.name,
            model_id=base.model_id,
            engine=ENGINE,
            start_token=self.settings.start(self.model),
            window=self.settings.window,
            keep=self.settings.keep,
            batch=self.settings.batch,
            dictionary=self.dictionary.id if self.dictionary else "",
            mixer=self.settings.mixer,
        )
        self._pending = self.header.to_bytes()

    def segment(self, data: bytes, offset: int) -> tuple[bytes, Stats]:
        """One segment frame of ``data``, found at ``offset`` in the input, and what it cost. A segment depends on
        nothing else, so segments may be coded anywhere, in any order (``parallel.py`` does)."""
        with compute_threads(self.settings.threads):
            segment, stats = encode_segment(self.model, data, self.settings, offset, self._progress)
        raw = segment.to_bytes()
        stats.bytes_out = len(raw)
        return raw, stats

    def _segment(self, data: bytes) -> bytes:
        raw, stats = self.segment(data, self.stats.bytes_in)
        self.stats.add(stats)
        return raw

    def compress(self, data: bytes) -> bytes:
        """Compress ``data``; returns whatever compressed output is ready (possibly b"")."""
        if self._finished:
            raise ValueError("compressor has already been flushed")
        self._buffer += data
        out, self._pending = [self._pending], b""
        out += [self._segment(piece) for piece in take_segments(self._buffer, self.settings, final=False)]
        return b"".join(out)

    def flush(self) -> bytes:
        """Compress what is left and finish the archive."""
        if self._finished:
            raise ValueError("compressor has already been flushed")
        out = [self.compress(b"")]
        out += [self._segment(piece) for piece in take_segments(self._buffer, self.settings, final=True)]
        end = fmt.End(self.stats.bytes_in).to_bytes()
        out.append(end)
        self._finished = True
        self.stats.bytes_out += len(self.header.to_bytes()) + len(end)
        return b"".join(out)


def take_segments(buffer: bytearray, settings: Settings, final: bool) -> Iterator[bytes]:
    """Cut the segments that are ready off the front of ``buffer`` (all of it when ``final``), in order."""
    while cut := segment_length(buffer, settings, final):
        piece = bytes(buffer[:cut])
        del buffer[:cut]
        yield piece


def scoring_setup(
    lm: LanguageModel, dictionary: DictionarySpec = None, **settings: Any
) -> tuple[LanguageModel, Settings]:
    """The model and settings that score documents as ``compress`` codes them (with ``dictionary``, as it codes
    with that dictionary): what ``measure``, ``audit`` and ``show`` use."""
    chosen = _dictionary(dictionary)
    if chosen is not None:
        chosen.for_model(lm)
    return coding_model(lm, chosen), Settings.at_level(**settings, primer=chosen.tokens if chosen else ())


def _settings(header: fmt.Header, dictionary: Dictionary | None) -> Settings:
    """What the decoder must reproduce of the encoder's settings."""
    primer = dictionary.tokens if dictionary else ()
    try:
        return Settings(
            header.window,
            header.keep,
            batch=header.batch,
            start_token=header.start_token,
            primer=primer,
            mixer=header.mixer,
        )
    except ValueError as e:
        raise FormatError(f"corrupted archive header ({e})") from None


def _checked_model(spec: ModelSpec, header: fmt.Header) -> LanguageModel:
    """The model to decode with; an archive made with a dictionary names it through the dictionary."""
    model = _model(spec)
    if header.model_id and model.model_id != header.model_id:
        raise ModelMismatchError(
            f"archive was made with model {header.model_name!r} (id {header.model_id}), but the loaded model "
            f"{model.name!r} has id {model.model_id}; pass the archive's model with --model"
        )
    if header.start_token >= model.net.cfg.vocab_size:
        raise FormatError(
            f"corrupted archive header (start token {header.start_token} is outside the model's "
            f"{model.net.cfg.vocab_size}-token vocabulary)"
        )
    return model


def _checked_dictionary(spec: DictionarySpec, header: fmt.Header, model: LanguageModel) -> Dictionary | None:
    """The dictionary the archive was made with (None if it needs none), or an error naming the one it needs."""
    if not header.dictionary:
        return None
    dictionary = _dictionary(spec)
    if dictionary is None:
        raise DictionaryMismatchError(
            f"archive was made with dictionary {header.dictionary}; pass its .lmpd file with -D (dictionary=)"
        )
    if dictionary.id != header.dictionary:
        raise DictionaryMismatchError(
            f"archive was made with dictionary {header.dictionary}, but the one given is {dictionary.id}"
        )
    return dictionary.for_model(model)


def decoding(model: ModelSpec, dictionary: DictionarySpec, header: fmt.Header) -> tuple[LanguageModel, Settings]:
    """The model and settings that decode an archive with this header."""
    lm = _checked_model(model, header)
    chosen = _checked_dictionary(dictionary, header, lm)
    return coding_model(lm, chosen), _settings(header, chosen)


class Decompressor:
    """Incremental decompressor, as ``lzma.LZMADecompressor``: feed it bytes, get bytes; ``eof`` at the end.
    ``threads``: compute threads (0: torch's default), for speed only; ``dictionary``: as for ``Compressor``,
    needed when the archive was made with one.

    As with lzma, ``max_length`` caps what one call returns (a few KB of archive can hold gigabytes of
    zeros); while ``needs_input`` is False, call again with b"" for the rest. Memory stays within one segment.
    """

    def __init__(
        self,
        model: ModelSpec = None,
        *,
        dictionary: DictionarySpec = None,
        progress: Progress | None = None,
        threads: int = 0,
    ):
        self._model_spec = model
        self._dictionary_spec = dictionary
        self._decode_settings: Settings | None = None
        self._progress = progress
        self._threads = threads
        self.model: LanguageModel | None = None
        self.header: fmt.Header | None = None
        self.unused_data = b""
        self._ended = False  # the end marker has been read
        self._limited = False  # the last call stopped at max_length
        self._buffer = bytearray()
        self._out = bytearray()  # decoded, not yet returned
        self._position = 0  # archive bytes consumed
        self._tally = fmt.Tally()  # the segments read so far
        self.steps = Steps()  # what decoding took: model steps, guesses checked

    @property
    def eof(self) -> bool:
        """The end marker has been read and everything before it returned."""
        return self._ended and not self._out

    @property
    def needs_input(self) -> bool:
        return not self._ended and not self._out and not self._limited

    @property
    def position(self) -> int:
        """Archive bytes consumed so far (after the end marker: the member's length)."""
        return self._position

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self.eof:
            raise EOFError("already at the end of the archive")
        self._buffer += data
        if self.header is None:
            found = fmt.parse_header(self._buffer)
            if found is None:
                return b""
            header, n = found
            self.model, self._decode_settings = decoding(self._model_spec, self._dictionary_spec, header)
            self.header = header
            del self._buffer[:n]
            self._position += n
        model, settings = self.model, self._decode_settings
        assert model is not None and settings is not None  # found with the header
        while not self._ended and not 0 <= max_length <= len(self._out) and (parsed := self._frame()) is not None:
            frame, n = parsed
            del self._buffer[:n]
            self._position += n
            if isinstance(frame, fmt.End):
                self._tally.end(frame.total_size)
                self._ended = True
                self.unused_data = bytes(self._buffer)
                break
            where = self._tally.segment(frame.offset, frame.raw_size)
            with compute_threads(self._threads):
                self._out += decode_segment(model, frame, settings, where, self._progress, self.steps)
        self._limited = 0 <= max_length <= len(self._out) and not self._ended
        n = len(self._out) if max_length < 0 else max_length
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def truncated(self) -> FormatError:
        """The error for an archive that ends here, before its end marker: it says where."""
        if self.header is None:
            return FormatError("truncated archive (it ends inside its header)" if self._buffer else "empty input")
        tally = self._tally
        where = (
            f"inside segment {tally.segments} (archive byte {self._position:,})"
            if self._buffer
            else f"after {tally.segments} segments"
        )
        return FormatError(
            f"truncated archive: it ends {where}, before its end marker, with {tally.size:,} original bytes "
            f"decoded; `lmpress decompress --recover` saves the intact segments"
        )

    def _frame(self) -> tuple[fmt.Segment | fmt.End, int] | None:
        try:
            return fmt.parse_frame(self._buffer)
        except FormatError as e:
            frame = "the end marker" if self._buffer[0] == fmt.FRAME_END else f"segment {self._tally.segments}"
            raise FormatError(
                f"{e} in {frame} at archive byte {self._position:,} (original bytes from {self._tally.size:,}); "
                f"`lmpress decompress --recover` saves the intact segments"
            ) from None


@dataclass(frozen=True)
class Damage:
    """Original bytes ``[start, end)`` that a damaged archive no longer holds (``end`` None: its size is lost too)."""

    start: int
    end: int | None
    reason: str

    def __str__(self) -> str:
        end = "the end (size unknown)" if self.end is None else f"{self.end:,}"
        return f"original bytes {self.start:,} to {end} lost: {self.reason}"


def salvage(
    archive: fmt.Buffer,
    model: ModelSpec = None,
    *,
    dictionary: DictionarySpec = None,
    progress: Progress | None = None,
    threads: int = 0,
) -> Generator[bytes | Damage, None, None]:
    """The intact segments of a damaged archive, in order, with a ``Damage`` for each stretch of lost bytes.

    Every frame carries its own checksum, so after damage the next intact frame is found by trying each later
    position; each segment's bytes are checked against its crc32 and are never returned otherwise. A member's
    header must be intact: it says how the model was run. A member that follows an intact end marker is read on.
    """
    view = memoryview(archive)
    head = fmt.parse_header(view)
    if head is None:
        raise FormatError("truncated archive header: nothing can be recovered")
    base, position = 0, 0  # original bytes before this member; archive byte of its header
    while head is not None:
        header, n = head
        lm, settings = decoding(model, dictionary, header)
        size, index, position = base, 0, position + n  # original bytes accounted for; segments seen
        while True:
            try:
                parsed = fmt.parse_frame(view[position:])
            except FormatError:
                parsed = None
            if parsed is None:
                found = fmt.find_frame(view, position + 1)
                if found is None:
                    yield Damage(size, None, f"the archive is damaged or cut short from its byte {position:,} on")
                    return
                position = found
                continue
            frame, n = parsed
            position += n
            if isinstance(frame, fmt.End):
                if base + frame.total_size > size:
                    yield Damage(size, base + frame.total_size, "damaged segments before the end marker")
                base += frame.total_size
                break
            if base + frame.offset < size:
                continue  # a frame that checks out but is not where it claims to be: not this member's
            if base + frame.offset > size:
                yield Damage(size, base + frame.offset, "damaged or missing segments")
            where = fmt.segment_name(index, frame.offset, frame.raw_size)
            try:
                with compute_threads(threads):
                    piece = decode_segment(lm, frame, settings, where, progress)
            except FormatError as e:
                yield Damage(base + frame.offset, base + frame.offset + frame.raw_size, str(e))
            else:
                yield piece
            size, index = base + frame.offset + frame.raw_size, index + 1
        try:  # another member after this one's end marker
            head = fmt.parse_header(view[position:]) if position < len(view) else None
        except FormatError:
            head = None
        if head is None and position < len(view):
            yield Damage(base, None, f"{len(view) - position:,} bytes after an end marker are not a readable member")
            return


def recover(
    archive: bytes, model: ModelSpec = None, *, dictionary: DictionarySpec = None
) -> tuple[bytes, list[Damage]]:
    """Every intact segment's bytes of a damaged archive, concatenated, and what was lost (see ``salvage``)."""
    pieces: list[bytes] = []
    damage: list[Damage] = []
    for piece in salvage(archive, model, dictionary=dictionary):
        if isinstance(piece, Damage):
            damage.append(piece)
        else:
            pieces.append(piece)
    return b"".join(pieces), damage


def compress(data: bytes, model: ModelSpec = None, *, dictionary: DictionarySpec = None, **settings: Any) -> bytes:
    """Compress ``data`` into a complete .lmp archive."""
    c = Compressor(model, dictionary=dictionary, **settings)
    return c.compress(data) + c.flush()


def decompress(data: bytes, model: ModelSpec = None, *, dictionary: DictionarySpec = None) -> bytes:
    """Decompress a complete .lmp archive, or several concatenated (members, as ``cat a.lmp b.lmp`` makes);
    errors unless each is whole and nothing else follows."""
    with LmpFile(io.BytesIO(data), model=model, dictionary=dictionary) as f:
        return f.read()


class _Members(_compression.DecompressReader):
    """The original bytes of every member of an archive, one ``Decompressor`` after another, as Python's own
    readers go through concatenated streams. Unlike theirs, bytes after a member that do not start another are an
    error, not ignored, and every error names the member it is in (``format.in_member``)."""

    def __init__(self, fp: IO[bytes], **decoding: Any):
        self._decompressor: Decompressor | None = None
        self._member, self._member_start = -1, 0  # which member is read (from 0), and its first archive byte
        super().__init__(fp, self._next_member, **decoding)

    def _next_member(self, **decoding: Any) -> Decompressor:
        if self._decompressor is not None:
            self._member_start += self._decompressor.position
        self._member += 1
        return Decompressor(**decoding)

    def _rewind(self) -> None:
        self._decompressor, self._member, self._member_start = None, -1, 0
        super()._rewind()

    def read(self, size: int = -1) -> bytes:
        try:
            return super().read(size)
        except EOFError:  # the file ends before the member's end marker
            assert self._decompressor is not None
            raise fmt.in_member(self._decompressor.truncated(), self._member, self._member_start) from None
        except NotAnArchiveError:
            if self._member:
                raise fmt.trailing_data(self._member_start) from None
            raise
        except LmpressError as e:
            raise fmt.in_member(e, self._member, self._member_start) from None


class LmpFile(_compression.BaseStream):
    """A file object over an .lmp archive: read plain bytes from it, or write plain bytes into it, as
    ``lzma.LZMAFile``.

    Reading goes on through every member of an archive made by concatenating archives, as gzip, xz and zstd
    readers do; anything else after a member is an error. Reading seeks (forward by decoding, backward by decoding
    again from the start), as ``LZMAFile`` does. ``progress`` (reading) is called as the decoder's is;
    ``settings`` are the Compressor's (writing), or ``threads`` (reading).
    """

    def __init__(
        self,
        filename: str | os.PathLike | IO[bytes],
        mode: str = "rb",
        *,
        model: ModelSpec = None,
        dictionary: DictionarySpec = None,
        progress: Progress | None = None,
        **settings: Any,
    ):
        self._mode = "closed"  # until everything below is in place: close() then has nothing to do
        if mode in ("r", "rb"):
            reading = True
        elif mode in ("w", "wb", "x", "xb"):
            reading = False
        else:
            raise ValueError(f"invalid mode: {mode!r}")
        if not reading:  # before the file is created: bad settings leave no empty file behind
            self._encoder = Compressor(model, dictionary=dictionary, progress=progress, **settings)
            self._pos = 0  # plain bytes written
        self._fp: IO[bytes]
        if isinstance(filename, (str, bytes, os.PathLike)):
            self._fp = builtins.open(filename, "rb" if reading else "xb" if "x" in mode else "wb")  # noqa: SIM115 (closed by close())
            self._owns = True
        elif hasattr(filename, "read" if reading else "write"):
            self._fp, self._owns = filename, False
        else:
            raise TypeError("filename must be a path or a file object")
        if reading:
            try:
                raw = _Members(self._fp, model=model, dictionary=dictionary, progress=progress, **settings)
            except TypeError:  # an argument Decompressor does not take
                if self._owns:
                    self._fp.close()
                raise
            self._buffer = io.BufferedReader(raw)
        self._mode = "r" if reading else "w"

    def close(self) -> None:
        if self._mode == "closed":
            return
        try:
            if self._mode == "r":
                self._buffer.close()
            else:
                self._fp.write(self._encoder.flush())
        finally:
            try:
                if self._owns:
                    self._fp.close()
            finally:
                self._mode = "closed"
                super().close()

    @property
    def closed(self) -> bool:
        return self._mode == "closed"

    def fileno(self) -> int:
        self._check_not_closed()
        return self._fp.fileno()

    def readable(self) -> bool:
        self._check_not_closed()
        return self._mode == "r"

    def writable(self) -> bool:
        self._check_not_closed()
        return self._mode == "w"

    def seekable(self) -> bool:
        return self.readable() and self._buffer.seekable()

    def peek(self, size: int = -1) -> bytes:
        self._check_can_read()
        return self._buffer.peek(size)

    def read(self, size: int | None = -1) -> bytes:
        self._check_can_read()
        return self._buffer.read(size)

    def read1(self, size: int = -1) -> bytes:
        self._check_can_read()
        return self._buffer.read1(io.DEFAULT_BUFFER_SIZE if size < 0 else size)

    def readinto(self, b) -> int:
        self._check_can_read()
        return self._buffer.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        self._check_can_read()
        return self._buffer.readline(size)

    def write(self, data) -> int:
        self._check_can_write()
        data = bytes(data)  # any buffer: its bytes
        self._fp.write(self._encoder.compress(data))
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_can_seek()
        return self._buffer.seek(offset, whence)

    def tell(self) -> int:
        self._check_not_closed()
        return self._buffer.tell() if self._mode == "r" else self._pos


def open(
    filename,
    mode: str = "rb",
    *,
    model: ModelSpec = None,
    dictionary: DictionarySpec = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    **settings: Any,
):
    """Open an .lmp archive in binary ('rb', 'wb', 'xb') or text ('rt', 'wt', 'xt') mode, like ``lzma.open``."""
    if "t" in mode:
        binary = LmpFile(filename, mode.replace("t", ""), model=model, dictionary=dictionary, **settings)
        return io.TextIOWrapper(binary, encoding, errors, newline)
    if encoding is not None or errors is not None or newline is not None:
        raise ValueError("encoding, errors and newline apply to text mode only")
    return LmpFile(filename, mode, model=model, dictionary=dictionary, **settings)
