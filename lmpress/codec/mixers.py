"""The online models an archive may mix with the language model, by the name its header records.

A mixer has two sides that compute the same numbers: an encoder's ``Plan`` (every token known: candidates first,
their frequencies recorded while the model scores, the mixed intervals last) and a decoder's ``Mixer`` (step by
step). ``""`` is the language model alone.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import context_mixing, mixing

NAMES = ("", mixing.NAME, context_mixing.NAME)  # in the order they were made; "" is the model alone


class Plan(Protocol):
    def guesses(self, row: int, at: slice) -> np.ndarray: ...

    def record(self, row: int, at: slice, freqs: np.ndarray) -> None: ...

    def mixed(
        self, left: list[np.ndarray], width: list[np.ndarray], vocab: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]: ...


class Mixer(Protocol):
    def frequencies(self, rows: list[int], freqs: np.ndarray) -> np.ndarray: ...

    def update(self, rows: list[int], tokens: np.ndarray) -> None: ...


def plan(name: str, rows: list[list[int]], group: int, primer: tuple[int, ...] = ()) -> Plan | None:
    """The encoder's side of mixer ``name`` for a segment's LM chunks ``rows`` (None: the model alone)."""
    if name == mixing.NAME:
        return mixing.Plan(rows, group)
    if name == context_mixing.NAME:
        return context_mixing.Plan(rows, group, primer)
    return None


def mixer(name: str, lengths: list[int], primer: tuple[int, ...] = ()) -> Mixer | None:
    """The decoder's side of mixer ``name`` for LM chunks of ``lengths`` tokens (None: the model alone)."""
    if name == mixing.NAME:
        return mixing.MatchMixer(len(lengths))
    if name == context_mixing.NAME:
        return context_mixing.ContextMixer(len(lengths), sum(lengths), primer)
    return None
