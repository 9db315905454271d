"""The online models an archive may mix with the language model, by the name its header records.

A mixer has two sides that compute the same numbers: an encoder's ``Plan`` (every token known: candidates first,
their frequencies recorded while the model scores, the mixed intervals last) and a decoder's ``Mixer`` (step by
step). ``""`` is the language model alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
from torch import Tensor

from . import context_mixing, mixing

if TYPE_CHECKING:
    from ..models import LanguageModel
    from .settings import Settings


class Plan(Protocol):
    def record(self, row: int, at: slice, freqs: Tensor) -> None: ...

    def mixed(
        self, left: list[np.ndarray], width: list[np.ndarray], vocab: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]: ...


class Mixer(Protocol):
    def frequencies(self, rows: list[int], freqs: np.ndarray) -> np.ndarray: ...

    def update(self, rows: list[int], tokens: np.ndarray) -> None: ...


def plan(lm: LanguageModel, settings: Settings, rows: list[list[int]]) -> Plan | None:
    """The encoder's side of ``settings.mixer`` for a segment's LM chunks ``rows`` (None: the model alone)."""
    if settings.mixer == mixing.NAME:
        return mixing.Plan(rows, settings.batch)
    if settings.mixer == context_mixing.NAME:
        return context_mixing.Plan(rows, settings.batch, lm.newlines, settings.primer)
    return None


def mixer(lm: LanguageModel, settings: Settings, lengths: list[int]) -> Mixer | None:
    """The decoder's side of ``settings.mixer`` for LM chunks of ``lengths`` tokens (None: the model alone)."""
    if settings.mixer == mixing.NAME:
        return mixing.MatchMixer(len(lengths))
    if settings.mixer == context_mixing.NAME:
        return context_mixing.ContextMixer(len(lengths), sum(lengths), lm.newlines, settings.primer)
    return None
