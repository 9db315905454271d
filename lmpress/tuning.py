"""Choosing a dictionary on the user's own data: each kind and size tried on held-out samples, the smallest kept.

What pays on records of a few KB depends on the records: how much text they share, how long they are (a primed
context takes its tokens out of every window, so a long file can lose by it), whether the model already knows
their kind. ``tune`` measures it instead of guessing: every ``HOLD_OUT``-th sample is held out, each candidate
dictionary is built from the others, every held-out sample is compressed on its own (one archive each, exactly
as ``compress`` writes it), and the smallest total wins. The winner is then built again from all the samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .api import compress
from .codec.settings import Settings
from .dictionary import (
    ADAPTER_RANK,
    ADAPTER_STEPS,
    DEFAULT_TOKENS,
    PRIMED_SIZES,
    Dictionary,
    train,
    train_adapter,
)

HOLD_OUT = 5  # every 5th sample is held out to measure on
HELD_OUT_FILES, HELD_OUT_BYTES = 32, 64 << 10  # measured on at most this many held-out samples and bytes
KINDS = ("primed", "adapter", "both")


@dataclass(frozen=True)
class Trial:
    """One candidate and what its held-out archives came to."""

    kind: str  # "none" (no dictionary), or one of KINDS
    size: int  # primed tokens (0: none)
    archive_bytes: int  # the held-out samples' archives, summed

    def __str__(self) -> str:
        if self.kind == "none":
            return "no dictionary"
        primed = f"{self.size:,} tokens of primed context"
        return {"primed": primed, "adapter": "an adapter", "both": f"an adapter and {primed}"}[self.kind]


@dataclass(frozen=True)
class Tuned:
    """The dictionary built from all the samples as the best trial says, and every trial (empty where there
    were too few samples to hold any out: then the dictionary is of the default size)."""

    dictionary: Dictionary
    chosen: Trial | None
    trials: tuple[Trial, ...] = ()
    held_out: int = 0  # samples measured on
    held_out_bytes: int = 0
    trained_on: int = 0  # samples the trials' dictionaries were built from

    @property
    def baseline(self) -> Trial | None:
        return next((t for t in self.trials if t.kind == "none"), None)

    @property
    def pays(self) -> bool:
        """Whether the chosen dictionary made the held-out archives smaller than no dictionary did."""
        return self.chosen is None or self.chosen.kind != "none"


def primed_sizes(**settings: Any) -> list[int]:
    """The primed sizes worth trying: ``PRIMED_SIZES`` up to half the level's window. (More leaves the data so
    little room that a file of a few KB restarts its context every few tokens: many times slower.)"""
    level = Settings.at_level(**settings)  # as compress codes with them
    return sorted({min(s, level.window // 2, level.window - level.keep - 2) for s in PRIMED_SIZES})


def check_size(size: int, **settings: Any) -> None:
    """Refuse a primed size that leaves the data no room in the level's window (its archives could not be made)."""
    level = Settings.at_level(**settings)  # as compress codes with them
    if size > (room := level.window - level.keep - 2):
        raise ValueError(
            f"a primed context holds at most {room:,} tokens here (window {level.window:,}, keep {level.keep:,}): "
            f"a size of {size:,} leaves the data no room"
        )


def tune(
    lm,
    samples: Sequence[bytes],
    kinds: Sequence[str] = ("primed",),
    sizes: Sequence[int] | None = None,
    steps: int = ADAPTER_STEPS,
    rank: int = ADAPTER_RANK,
    progress: Callable[[int, int], None] | None = None,
    **settings: Any,
) -> Tuned:
    """The dictionary of ``kinds`` (and primed ``sizes``: by default ``primed_sizes``) that makes the held-out
    samples' archives smallest, built again from every sample. ``settings`` are ``compress``'s (a level, say):
    the archives are measured as they will be written. ``progress(done, total)`` counts held-out archives and
    adapter steps."""
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"dictionary kinds to try: one or more of {', '.join(KINDS)}")
    adapter = "adapter" in kinds or "both" in kinds
    samples = [s for s in samples if lm.tokenize(s)]
    held = [s for i, s in enumerate(samples) if i % HOLD_OUT == HOLD_OUT - 1]
    rest = [s for i, s in enumerate(samples) if i % HOLD_OUT != HOLD_OUT - 1]
    counter = _Counter(progress)
    if not held:  # too few to hold any out: the first kind at the default size, built from all
        counter.total = steps if adapter else 0
        return Tuned(_build(lm, samples, kinds[0], DEFAULT_TOKENS, steps, rank, counter), None)
    measured: list[bytes] = []
    for s in held[:HELD_OUT_FILES]:
        if measured and sum(map(len, measured)) + len(s) > HELD_OUT_BYTES:
            break
        measured.append(s)

    primers: dict[int, tuple[int, ...]] = {}  # by size; a size whose tokens a smaller one has is not tried again
    if "primed" in kinds or "both" in kinds:  # (the samples share no more than that)
        if sizes is not None:
            check_size(max(sizes), **settings)
        for size in primed_sizes(**settings) if sizes is None else sizes:
            tokens = train(lm, rest, size).tokens
            if tokens not in primers.values():
                primers[size] = tokens
    plan = [("none", 0)] + [("primed", n) for n in primers if "primed" in kinds]
    plan += [("adapter", 0)] * ("adapter" in kinds) + [("both", n) for n in primers if "both" in kinds]
    counter.total = len(plan) * len(measured) + (2 * steps if adapter else 0)
    factors = train_adapter(lm, rest, steps, rank, progress=counter) if adapter else None
    trials = []
    for kind, size in plan:
        dictionary = None
        if kind == "primed":
            dictionary = Dictionary(lm.model_id, primers[size])
        elif factors is not None and kind != "none":
            dictionary = dataclasses.replace(factors, tokens=primers.get(size, ()))
        archive_bytes = 0
        for s in measured:
            archive_bytes += len(compress(s, model=lm, dictionary=dictionary, **settings))
            counter(1)
        trials.append(Trial(kind, size, archive_bytes))
    best = min(trials, key=lambda t: (t.archive_bytes, (("none",) + KINDS).index(t.kind), t.size))
    final = best if best.kind != "none" else min(trials[1:], key=lambda t: t.archive_bytes)  # the best that is one
    dictionary = _build(lm, samples, final.kind, final.size, steps, rank, counter)
    return Tuned(dictionary, best, tuple(trials), len(measured), sum(map(len, measured)), len(rest))


class _Counter:
    """Progress as ``progress(done, total)`` from increments."""

    def __init__(self, progress: Callable[[int, int], None] | None) -> None:
        self.progress, self.done, self.total = progress, 0, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _build(
    lm, samples: Sequence[bytes], kind: str, size: int, steps: int, rank: int, progress: Callable[[int], None]
) -> Dictionary:
    if kind == "primed":
        return train(lm, samples, size)
    return train_adapter(lm, samples, steps, rank, size if kind == "both" else 0, progress)
