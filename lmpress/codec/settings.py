"""How to cut and code: the levels ``-1`` … ``-9``, the settings an archive records, and what coding cost.

``window`` × ``batch`` positions of cache bound the decoder's memory alike at every level. A level's settings
are recorded in the archive (the chunk size in its chunk table), so decoding needs no flag.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import format as fmt
from .context_mixing import NAME as CONTEXT_MIXING

if TYPE_CHECKING:
    from ..models import LanguageModel

SEGMENT_CHUNKS = 64  # chunks per segment (or batch, if more): a segment's classical chunks share LZMA2's context

Progress = Callable[[float, float], None]  # (bytes done, bits spent) since the last call


@dataclass(frozen=True)
class Level:
    """A point on the ratio/speed curve: what ``-1`` … ``-9`` set (``benchmarks/run.py --levels`` measures them).
    ``window`` × ``batch`` positions of cache bound the decoder's memory alike at every level."""

    chunk_size: int
    window: int
    keep: int
    batch: int
    mixer: str


LEVELS = {
    1: Level(4096, 1024, 256, 48, ""),
    2: Level(8192, 1024, 256, 48, ""),
    3: Level(8192, 2048, 512, 24, ""),  # lmpress 0.2's only setting
    4: Level(8192, 2048, 512, 24, CONTEXT_MIXING),
    5: Level(16384, 2048, 512, 24, CONTEXT_MIXING),
    6: Level(32768, 2048, 512, 24, CONTEXT_MIXING),
    7: Level(65536, 2048, 512, 24, CONTEXT_MIXING),
    8: Level(65536, 2048, 1024, 24, CONTEXT_MIXING),
    9: Level(131072, 2048, 1024, 24, CONTEXT_MIXING),
}
DEFAULT_LEVEL = 4  # the strongest level that decodes (nearly) as fast as level 3 on inputs of any size
_DEFAULT = LEVELS[DEFAULT_LEVEL]


@dataclass(frozen=True)
class Settings:
    """How to cut and code. ``window``, ``keep``, ``batch``, ``mixer`` and ``start_token`` are recorded in the
    archive, and so is the dictionary whose tokens ``primer`` holds. The defaults are level ``DEFAULT_LEVEL``'s."""

    window: int = _DEFAULT.window
    keep: int = _DEFAULT.keep
    chunk_size: int = _DEFAULT.chunk_size
    batch: int = _DEFAULT.batch  # chunks decoded side by side: the decoder's contexts (~25 MB each at 2048)
    threads: int = 0  # compute threads, for speed only (0: torch's default for this machine)
    start_token: int | None = None  # None: the model's own choice
    primer: tuple[int, ...] = ()  # a dictionary's tokens: every context starts with them, after the start token
    mixer: str = _DEFAULT.mixer  # the online models mixed with the LM (``format.MIXERS``; "" for none)

    @classmethod
    def at_level(cls, level: int | None = None, **settings: Any) -> Settings:
        """Level ``level``'s settings (the default level's if None), with ``settings`` overriding them; a ``window``
        given without ``keep`` keeps the level's share of it (a quarter), not its count."""
        if level is not None and level not in LEVELS:
            raise ValueError(f"level must be 1 to 9, not {level}")
        if "max_batch" in settings:  # lmpress 0.3's name for ``batch``
            warnings.warn("the setting max_batch is now called batch", DeprecationWarning, stacklevel=3)
            settings["batch"] = settings.pop("max_batch")
        if "mix" in settings:  # lmpress 0.4's switch: the match model or nothing
            warnings.warn("the setting mix is now mixer (a name, or '')", DeprecationWarning, stacklevel=3)
            settings["mixer"] = CONTEXT_MIXING if settings.pop("mix") else ""
        chosen = LEVELS[DEFAULT_LEVEL if level is None else level]
        if settings.get("window") is not None and settings.get("keep") is None:
            settings["keep"] = chosen.keep * settings["window"] // chosen.window  # the level's share of a window
        return cls(**(dataclasses.asdict(chosen) | settings))

    def __post_init__(self) -> None:
        room = self.window - len(self.primer)
        if self.window < 2 or not 0 <= self.keep <= room - 2:
            dictionary = f" - {len(self.primer)} dictionary tokens" if self.primer else ""
            raise ValueError(
                f"need window >= 2 and 0 <= keep <= window{dictionary} - 2 (window={self.window}, keep={self.keep})"
            )
        if self.window > fmt.MAX_WINDOW:
            raise ValueError(f"window must be at most {fmt.MAX_WINDOW}")
        if self.mixer not in fmt.MIXERS:
            raise ValueError(f"mixer must be one of {', '.join(repr(m) for m in fmt.MIXERS)}, not {self.mixer!r}")
        if self.chunk_size < 1 or not 1 <= self.batch <= fmt.MAX_CHUNKS or self.threads < 0:
            raise ValueError("chunk_size and batch must be positive, threads non-negative")

    @property
    def chunks_per_segment(self) -> int:
        return max(SEGMENT_CHUNKS, self.batch)

    @property
    def segment_size(self) -> int:
        return self.chunk_size * self.chunks_per_segment

    def start(self, lm: LanguageModel) -> int:
        return lm.start_token if self.start_token is None else self.start_token

    def prefix(self, lm: LanguageModel) -> list[int]:
        """What every context starts with: the start token and the dictionary's tokens."""
        return [self.start(lm), *self.primer]


@dataclass
class Stats:
    """What coding cost, for reports and benchmarks."""

    bytes_in: int = 0
    bytes_out: int = 0
    tokens: int = 0
    ideal_bits: float = 0.0  # sum of −log2 p over LM-coded tokens
    lm_bytes_in: int = 0
    lm_bytes_out: int = 0
    chunks: dict[str, int] = field(default_factory=dict)
    lm_spans: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in the input of each LM chunk

    def add(self, other: Stats) -> None:
        offset = self.bytes_in
        for name in ("bytes_in", "bytes_out", "tokens", "ideal_bits", "lm_bytes_in", "lm_bytes_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.chunks.items():
            self.chunks[k] = self.chunks.get(k, 0) + v
        self.lm_spans.extend((offset + a, offset + b) for a, b in other.lm_spans)

    @property
    def overhead(self) -> float:
        """Actual LM payload size over the ideal code length, minus one."""
        return self.lm_bytes_out * 8 / self.ideal_bits - 1 if self.ideal_bits else 0.0


@dataclass
class Steps:
    """What decoding took: tokens decoded, model steps taken (restarts included), and the guesses of the next
    tokens that steps checked (``drafts``; for a group of rows, a guess is right when every row's is)."""

    tokens: int = 0
    passes: int = 0
    checked: int = 0
    right: int = 0

    def add(self, other: Steps) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
