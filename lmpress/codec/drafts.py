"""Guesses of the tokens a decoder will decode next, so that one model step checks several positions at once.

The integer model gives a position the same numbers whether it is computed alone or together with the positions
after it, so a decoding step may feed a row's last token *and* guesses of the tokens that follow: the weights are
read once for all of them, and every guess that turns out right (the decoded token equals it) saves a step. A
wrong guess costs only its share of the step's products; what is decoded never depends on the guesses, so they
are no part of the format, and a decoder may guess as it likes.

Guesses come from what the segment has already decoded: the token that last followed the longest of the row's
last ``ORDERS`` tokens, then the token that followed that one, and so on (records, keys and repeated lines are
guessed well; prose rarely). ``draft_length`` chooses how many to check from how often they have been right.
"""

from __future__ import annotations

from collections.abc import Callable

ORDERS = (4, 3, 2)  # contexts a guess is looked up by, longest first
MOST = 12  # guesses checked in one step at most ...
POSITIONS = 64  # ... and positions (rows × (1 + guesses)) in one step: its logits' memory, 12 MB with the default
STEP_COST = 6  # a step's cost that does not grow with its positions, in units of one position's
HIT_START = 1 / 4  # the estimated rates of right guesses before any was checked
HIT_MEMORY = 16  # the estimate moves by 1/HIT_MEMORY of its error at each checked guess


Guess = Callable[[int, int], list[int]]  # (row, most) -> up to ``most`` guesses of the row's next tokens


class Successors:
    """The successor of each recent context of ``ORDERS`` lengths in the tokens decoded so far (in any row; a
    dictionary's tokens first): ``guess`` follows them from a row's last tokens."""

    def __init__(self, rows: int, primer: tuple[int, ...] = ()) -> None:
        self.recent: list[list[int]] = [[] for _ in range(rows + 1)]  # the last row: the dictionary's
        self.follows: dict[tuple[int, ...], int] = {}
        for token in primer:
            self.add(rows, token)

    def add(self, row: int, token: int) -> None:
        """``row`` decoded ``token``."""
        recent = self.recent[row]
        for n in ORDERS:
            if len(recent) >= n:
                self.follows[tuple(recent[-n:])] = token
        recent.append(token)
        del recent[: -max(ORDERS)]

    def guess(self, row: int, most: int) -> list[int]:
        """Up to ``most`` tokens that may follow ``row``'s decoded tokens, each the successor of the longest known
        context ending with the guesses before it; fewer where no context is known."""
        context, out = list(self.recent[row]), list[int]()
        while len(out) < most:
            token = next((t for n in ORDERS if (t := self.follows.get(tuple(context[-n:]))) is not None), None)
            if token is None:
                break
            out.append(token)
            context.append(token)
        return out


def draft_length(first: float, later: float, rows: int, most: int) -> int:
    """How many guesses a step of ``rows`` rows should check (0 .. ``most``): the number that gives the most
    decoded tokens per unit of the step's cost, if a step's first guess is right with probability ``first`` and each
    later one, after right ones, with ``later`` (for every row at once: guesses come in runs, along a repeated
    record, so the two differ), and a step costs ``STEP_COST`` plus one a position."""
    best, best_value, expected, reach = 0, 0.0, 1.0, first
    for k in range(most + 1):
        if k:
            expected += reach  # tokens decoded if the first k guesses are checked
            reach *= later
        value = expected * rows / (STEP_COST + rows * (k + 1))
        if value > best_value:
            best, best_value = k, value
    return best
